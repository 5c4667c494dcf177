"""``from fastnn import np``: the active backend's array module, cheap enough to replace ``numpy``.

On the numpy and numba backends it is ``numpy``; on cupy it is ``cupy``. ``fastnn.use(...)`` and
``with fastnn.using(...):`` take effect in code that imported it earlier, and a ``using`` scope
in one thread is not seen by another. Beyond the module's own names it always has
``np.asnumpy(x)`` (a host copy) and ``np.asarray(data)`` (onto the backend's device).

NumPy idioms that CuPy lacks are translated or refused with the replacement named:

- ``np.add.at(a, idx, v)`` (scatter-add): on CuPy it runs ``cupyx.scatter_add`` (``fastnn.backend.scatter_add``).
- ``int(x)``, ``range(x)``, ``f"{x}"`` on a device array: use ``int(x.item())`` or ``np.asnumpy(x)``;
  CuPy raises for implicit host conversions of arrays with more than one element.
- ``np.random.choice(n, k, replace=False)`` with a large ``n``: draws a permutation; prefer
  ``np.random.permutation(n)[:k]`` (the same on both, and cheaper to read).

How a lookup stays cheap (a book loop does millions of them), in two stages:

- While every backend ever made active computes with NumPy (numpy and numba, in any mix of
  ``use`` and ``using``: the CPU case), every answer is NumPy's, so the first ``np.exp`` stores
  ``numpy.exp`` in this module's own ``__dict__`` and from then on ``np.exp`` costs what
  ``numpy.exp`` does (about 20-40 ns). ``fastnn.backend`` tells this module (``_on_foreign``)
  before a backend with another array module (CuPy) becomes active through ``use`` or ``using``,
  or when code writes ``fastnn.backend._default`` directly; the stored names then move, for the
  rest of the process, to the second stage. (A name stored this way is NumPy's value when first
  used: reassigning ``numpy.exp`` itself afterwards does not show through ``np.exp``.)
- From then on, the first ``np.exp`` goes through the module's ``__getattr__``, which installs a
  ``property`` named ``exp`` on this module's class. That property reads the ``using`` scope (a
  ``ContextVar``, so per thread and per context) and, outside any scope, compares the process
  default set by ``use(...)`` by identity with the one it resolved last (``FASTNN_BACKEND`` is read
  once, at import); only when that changed does it ask ``fastnn.backend.current()`` again. The
  value is then one lookup in the array module's own ``__dict__`` (live: patching ``cupy.exp``
  shows through). That is about 75-130 ns against 20-40 ns for ``numpy.exp`` (one Python call,
  where resolving the backend at every access cost 2-7 µs).

``bench/test_bench_np_proxy.py`` measures both the lookups and a book loop. Assigning
``np.exp = f`` shadows the backend's name as on any module; assigning the backend's own value
back (``monkeypatch``'s undo) or ``del np.exp`` makes it follow the backend again.
"""
import sys
import threading
import types

import numpy

from fastnn import backend as _backend

_scoped_get = _backend._scoped.get  # the ``using`` scope: None outside any ``with using(...)``
_UNSET = object()
# What the process default resolved to: (backend._default, vars(xp), ops). One tuple, replaced
# whole, so a thread never pairs one field of a newer state with one of an older.
# ``FASTNN_BACKEND`` (``config.BACKEND``) is read once at import, so the default name alone decides.
_state = (_UNSET, None, None)
# The first stage (module docstring): True until a backend whose array module is not NumPy may be
# active; ``_stored`` names the entries of this module's ``__dict__`` that hold NumPy's values (a
# user's own ``np.x = ...`` is never among them). ``_stage_lock`` orders storing against leaving.
_numpy_only = True
_stored = set()
_stage_lock = threading.RLock()


def _refresh():
    """Resolve the process default again (after ``use(...)`` or at first use) and remember it."""
    global _state
    default = _backend._default  # read before resolving: a racing use() makes the next access resolve again
    ops = _backend.current()
    state = (default, vars(ops.xp), ops)
    _state = state
    return state


def _ops():
    """The active backend (``current()``), without re-resolving an unchanged default."""
    ops = _scoped_get()
    if ops is not None:
        return ops
    state = _state
    if _backend._default is not state[0]:
        state = _refresh()
    return state[2]


def _lookup(name, xp=None):
    """``np.<name>`` the slow way: the active backend's attribute, translated where CuPy needs it."""
    xp = _ops().xp if xp is None else xp
    value = getattr(xp, name)
    if name == "add" and xp is not numpy and not hasattr(value, "at"):
        value = _add_with_at(value)
    return value


def _getter(name):
    """The fast path of ``np.<name>``: a property getter bound to one name."""

    def get(module):
        ops = _scoped_get()
        if ops is None:
            state = _state
            if _backend._default is state[0]:  # the default has not changed since it was resolved
                try:
                    return state[1][name]
                except KeyError:  # a name its module serves lazily, or one it lacks
                    pass
        else:
            try:
                return ops.xp.__dict__[name]
            except (KeyError, AttributeError):
                pass
        return _lookup(name)

    get.__name__ = get.__qualname__ = name
    return get


def _add_getter(module, _get_add=_getter("add")):
    value = _get_add(module)
    return value if hasattr(value, "at") else _add_with_at(value)


_add_wrappers = {}


def _add_with_at(ufunc):
    wrapper = _add_wrappers.get(id(ufunc))
    if wrapper is None or wrapper._ufunc is not ufunc:
        wrapper = _add_wrappers[id(ufunc)] = _AddWithAt(ufunc)
    return wrapper


class _AddWithAt:
    """``np.add`` on CuPy, with NumPy's ``add.at`` scatter-add mapped to ``cupyx.scatter_add``."""

    def __init__(self, ufunc):
        self._ufunc = ufunc

    def __call__(self, *args, **kwargs):
        return self._ufunc(*args, **kwargs)

    def at(self, a, indices, b=None):
        _backend.scatter_add(a, indices, b)

    def __getattr__(self, name):
        return getattr(self._ufunc, name)


def asnumpy(x):
    """A host ``numpy.ndarray`` copy of ``x`` (from any backend)."""
    return _backend.to_host(x)


def asarray(a, dtype=None, **kwargs):
    """``a`` as an array of the current backend, on its device."""
    ops = _ops()
    if ops.xp is numpy:  # a host backend: exactly numpy.asarray (a device array is copied over first)
        return numpy.asarray(asnumpy(a) if _backend.is_device_array(a) else a, dtype=dtype, **kwargs)
    if kwargs:  # order=, copy=, ...: NumPy applies them on the host, then the backend moves the result
        a = numpy.asarray(asnumpy(a), dtype=dtype, **kwargs)
    return ops.asarray(a, dtype=dtype)


def _property(name):
    return property(_add_getter if name == "add" else _getter(name))


def _leave_numpy_only():
    """A backend with another array module may become active (``fastnn.backend._on_foreign``): every
    stored name gets its property (which wins over the stored value at once), then the values go."""
    global _numpy_only
    with _stage_lock:
        if not _numpy_only:
            return
        _numpy_only = False
        for name in _stored:
            if name not in _ArrayModule.__dict__:
                setattr(_ArrayModule, name, _property(name))
        own = globals()
        for name in _stored:
            own.pop(name, None)
        _stored.clear()


_backend._on_foreign.append(_leave_numpy_only)


def __getattr__(name):
    """First access to ``np.<name>``: resolve it, then store it (NumPy only) or install its property."""
    if name.startswith("__") and name != "__version__":  # module protocol names stay fastnn.np's
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    xp = _ops().xp
    value = _lookup(name, xp)  # AttributeError (the backend module's own message) when it has no such name
    if xp is not numpy:  # e.g. auto resolved to CuPy at this first use
        _leave_numpy_only()
    with _stage_lock:
        if _numpy_only:
            globals()[name] = value
            _stored.add(name)
        elif name not in _ArrayModule.__dict__:
            setattr(_ArrayModule, name, _property(name))
    return value


class _ArrayModule(types.ModuleType):
    """This module's class: it gains one property per name used (see the module docstring)."""

    def __setattr__(self, name, value):
        # ``np.exp = f`` (monkeypatching, mock.patch) shadows the backend's name: drop the property
        # so the module's own dict answers. Setting the backend's own value (monkeypatch's undo)
        # clears the shadow instead, so ``np.exp`` follows the backend again.
        with _stage_lock:
            _stored.discard(name)  # from now on the value is the user's (or gone)
            if not name.startswith("__") and name not in ("asnumpy", "asarray"):
                try:
                    restore = value is _lookup(name)
                except Exception:  # no such name, or no backend can run: a plain assignment
                    restore = False
                if restore:
                    self.__dict__.pop(name, None)
                    return
            if isinstance(_ArrayModule.__dict__.get(name), property):
                delattr(_ArrayModule, name)
            super().__setattr__(name, value)

    def __delattr__(self, name):
        with _stage_lock:
            _stored.discard(name)
            super().__delattr__(name)

    def __dir__(self):
        return sorted(set(dir(_ops().xp)) | {"asnumpy", "asarray"})

    def __repr__(self):
        ops = _ops()
        xp = ops.xp
        return f"<fastnn.np: stands for {xp.__name__} {getattr(xp, '__version__', '')} (backend {ops.name})>"


sys.modules[__name__].__class__ = _ArrayModule

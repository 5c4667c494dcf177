"""``from fastnn import np``: the active backend's array module, looked up at every attribute access.

On the numpy and numba backends it is ``numpy``; on cupy it is ``cupy``. ``fastnn.use(...)`` and
``with fastnn.using(...):`` take effect in code that imported it earlier, and a ``using`` scope
in one thread is not seen by another. Beyond the module's own names it always has
``np.asnumpy(x)`` (a host copy) and ``np.asarray(data)`` (onto the backend's device).

NumPy idioms that CuPy lacks are translated or refused with the replacement named:

- ``np.add.at(a, idx, v)`` (scatter-add): on CuPy it runs ``cupyx.scatter_add``.
- ``int(x)``, ``range(x)``, ``f"{x}"`` on a device array: use ``int(x.item())`` or ``np.asnumpy(x)``;
  CuPy raises for implicit host conversions of arrays with more than one element.
- ``np.random.choice(n, k, replace=False)`` with a large ``n``: draws a permutation; prefer
  ``np.random.permutation(n)[:k]`` (the same on both, and cheaper to read).
"""
from __future__ import annotations

import sys
import types

import numpy


def _xp():
    from fastnn.backend import current

    return current().xp


def asnumpy(x):
    """A host ``numpy.ndarray`` copy of ``x`` (from any backend)."""
    return x.get() if hasattr(x, "get") and not isinstance(x, numpy.ndarray) else numpy.asarray(x)


def asarray(a, dtype=None, **kwargs):
    """``a`` as an array of the current backend, on its device."""
    from fastnn.backend import current

    ops = current()
    if ops.name == "cupy":
        return ops.asarray(asnumpy(a) if kwargs else a, dtype=dtype)
    return numpy.asarray(asnumpy(a) if hasattr(a, "get") and not isinstance(a, numpy.ndarray) else a,
                         dtype=dtype, **kwargs)


class _AddWithAt:
    """``np.add`` on CuPy, with NumPy's ``add.at`` scatter-add mapped to ``cupyx.scatter_add``."""

    def __init__(self, ufunc):
        self._ufunc = ufunc

    def __call__(self, *args, **kwargs):
        return self._ufunc(*args, **kwargs)

    def at(self, a, indices, b=None):
        import cupyx

        cupyx.scatter_add(a, indices, b)

    def __getattr__(self, name):
        return getattr(self._ufunc, name)


class _ArrayModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name not in ("__version__",):  # module protocol names stay fastnn.np's
            raise AttributeError(name)
        xp = _xp()
        value = getattr(xp, name)
        if name == "add" and xp is not numpy and not hasattr(value, "at"):
            return _AddWithAt(value)
        return value

    def __dir__(self):
        return sorted(set(dir(_xp())) | {"asnumpy", "asarray"})

    def __repr__(self):
        xp = _xp()
        return f"<fastnn.np: stands for {xp.__name__} {getattr(xp, '__version__', '')} (backend {_current_name()})>"


def _current_name():
    from fastnn.backend import current

    return current().name


sys.modules[__name__].__class__ = _ArrayModule

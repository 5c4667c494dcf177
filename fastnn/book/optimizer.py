"""The book's ``common/optimizer.py``: ``SGD``, ``Momentum``, ``Nesterov``, ``AdaGrad``, ``RMSprop``, ``Adam``.

Same signatures and defaults as the book (``RMSprop(lr=0.01, decay_rate=0.99)``,
``Adam(lr=0.001, beta1=0.9, beta2=0.999)``, ``eps = 1e-7`` everywhere) and the same state, kept
per key in dicts shaped like the parameters (``v``, ``h``, ``m``, ``iter``). ``update(params, grads)``
updates every array of ``params`` in place with the backend's fused ``*_step`` primitive; a
parameter that is a Python (or NumPy) number, as in the book's ``optimizer_compare_naive``, is
computed on the host and its dict entry replaced by the new number.

The book's formulas, and the primitive that computes each one exactly:

- SGD: ``p -= lr * g`` (``sgd_step``)
- Momentum: ``v = momentum*v - lr*g; p += v`` (``momentum_step``)
- Nesterov (the book's form of Bengio et al. 2012, arXiv:1212.0901):
  ``p += momentum^2 * v - (1 + momentum) * lr * g; v = momentum*v - lr*g``. This is PyTorch's
  Nesterov with velocity ``u = -v / lr``; ``momentum_step(nesterov=True)`` runs it on ``u`` and
  ``v`` reads it back (rescaled when ``lr`` changes, so a changed ``lr`` is the book's too).
- AdaGrad (Duchi et al. 2011): ``h += g^2; p -= lr * g / (sqrt(h) + 1e-7)``
- RMSprop: ``h = decay_rate*h + (1 - decay_rate)*g^2; p -= lr * g / (sqrt(h) + 1e-7)``

  These two are written with the array module's in-place operations: the ``adagrad_step`` and
  ``rmsprop_step`` primitives follow Keras 3 (``sqrt(h + eps)``), which is not the book's
  ``sqrt(h) + eps`` (they differ by about ``eps / (2 sqrt(h))`` relative, visible where ``h`` is small).
- Adam (Kingma & Ba 2015, arXiv:1412.6980), the book's (and Keras's) placement of epsilon:
  ``lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t); p -= lr_t * m / (sqrt(v) + 1e-7)``; that is
  ``adam_step`` (PyTorch's placement) with epsilon ``1e-7 / sqrt(1 - beta2^t)``.

As in fastnn's primitives, state values below the smallest normal float are flushed to zero.
"""
from __future__ import annotations

import math
import numbers

import numpy

from fastnn.backend import follow, get_ops

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"]

_EPS = 1e-7


def _is_number(p):
    return isinstance(p, numbers.Number)


class _BookOptimizer:
    """``update(params, grads)``: state per key, one primitive call per array."""

    slots = ()

    def _state(self, ops, key, p):
        """This key's state arrays (the book's dict entries), made at the first update."""
        first = getattr(self, self.slots[0])
        if first is None:
            for name in self.slots:
                setattr(self, name, {})
        store = [getattr(self, name) for name in self.slots]
        if key not in store[0] or tuple(store[0][key].shape) != tuple(numpy.shape(p)) or \
                store[0][key].dtype != _dtype(p):
            for d in store:
                d[key] = (ops.alloc(numpy.shape(p), _dtype(p)) if not _is_number(p)
                          else numpy.zeros((), numpy.float64))
        return [d[key].reshape(-1) for d in store]

    def update(self, params, grads):
        """Update every entry of ``params`` from ``grads`` (dicts with the same keys), in place."""
        missing = [k for k in params if k not in grads]
        if missing:
            raise KeyError(f"{type(self).__name__}.update: grads has no entry for {missing} "
                           f"(params keys: {list(params)})")
        owner = type(self).__name__
        self._check_hyper()
        prepared = {key: _check(owner, key, params[key], grads[key]) for key in list(params)}  # all keys first
        self._begin()
        for key, (ops, g) in prepared.items():
            p = params[key]
            if ops is None:
                params[key] = self._update_number(key, p, g)
                continue
            flat = p.reshape(-1)
            copied = not p.flags.c_contiguous
            if copied:
                flat = flat.copy()
            self._step(ops, flat, g.reshape(-1), self._state(ops, key, p))
            if copied:
                p[...] = flat.reshape(p.shape)

    def _update_number(self, key, p, g):
        """A number parameter: the same primitive on a 1-element host array; returns the new number."""
        ops = get_ops("numpy")
        arr = numpy.array([float(p)])
        grad = numpy.array([float(g)])
        self._step(ops, arr, grad, self._state(ops, key, p))
        value = arr[0]
        return type(p)(value) if isinstance(p, (float, numpy.floating)) else float(value)

    def _check_hyper(self):
        """The settings (``lr``, ``momentum``, ...) as ``update`` will use them: finite real numbers in
        range, or an error naming the setting, before anything changes (they may be set at any time)."""
        for name, (low, high, closed) in _HYPER.items():
            if name not in vars(self):
                continue
            v = getattr(self, name)
            ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) and v >= low and (
                high is None or v < high or (closed and v == high))
            if not ok:
                where = ">= 0" if high is None else f"in [0, {high}{']' if closed else ')'}"
                raise ValueError(f"{type(self).__name__}: {name} must be a finite number {where}, got {v!r}")

    def _begin(self):
        """Once per ``update`` call, before the first array."""

    def _step(self, ops, p, g, state):
        raise NotImplementedError


# name -> (low, high or None, whether high itself is allowed): beta 1 would divide by zero in Adam's correction
_HYPER = {"lr": (0, None, False), "momentum": (0, 1, True), "decay_rate": (0, 1, True), "beta1": (0, 1, False),
          "beta2": (0, 1, False)}


def _dtype(p):
    return p.dtype if hasattr(p, "dtype") and not _is_number(p) else numpy.dtype(numpy.float64)


def _check(owner, key, p, g):
    """``(ops, g as p's array)`` for an array parameter, ``(None, g)`` for a number; refuses, by name,
    what ``update`` cannot train (checked for every key before any parameter changes)."""
    if _is_number(p):
        if isinstance(p, (bool, complex)) or isinstance(g, complex) or not _is_number(g) and \
                getattr(getattr(g, "dtype", None), "kind", "f") == "c":
            raise TypeError(f"{owner}.update: params[{key!r}] and grads[{key!r}] must be real numbers, got "
                            f"{p!r} and {g!r}")
        if not _is_number(g) and (getattr(getattr(g, "dtype", None), "kind", None) not in ("f", "i", "u", "b")
                                  or numpy.size(g) != 1):
            raise TypeError(f"{owner}.update: params[{key!r}] is a number, so grads[{key!r}] must be one too, got "
                            f"{type(g).__name__} of shape {numpy.shape(g)}")
        return None, g
    if not hasattr(p, "dtype") or not hasattr(p, "shape"):
        raise TypeError(f"{owner}.update: params[{key!r}] must be an array or a number, got {type(p).__name__}")
    ops = follow(p)
    if not ops.owns(p):
        raise TypeError(f"{owner}.update: params[{key!r}] must be an array or a number, got {type(p).__name__}")
    if p.dtype.kind != "f":
        raise TypeError(f"{owner}.update: params[{key!r}] has dtype {p.dtype}; only float arrays can be "
                        f"trained (cast it with .astype(float) first)")
    if not getattr(p.flags, "writeable", True):   # CuPy's flags have no writeable: device arrays always are
        raise ValueError(f"{owner}.update: params[{key!r}] is read-only; pass a writeable array")
    if getattr(getattr(g, "dtype", None), "kind", None) == "c" or isinstance(g, complex):
        raise TypeError(f"{owner}.update: grads[{key!r}] is complex; its imaginary part would be dropped")
    if not _is_number(g) and getattr(getattr(g, "dtype", None), "kind", None) not in ("f", "i", "u", "b"):
        raise TypeError(f"{owner}.update: grads[{key!r}] must be a real numeric array, got {type(g).__name__} of "
                        f"dtype {getattr(g, 'dtype', None)}")
    return ops, _like(ops, p, g, key, owner)


def _like(ops, p, g, key, owner):
    """``g`` as an array of ``p``'s backend, dtype and shape."""
    if _is_number(g):
        g = numpy.full(p.shape, float(g))
    if not ops.owns(g):
        g = ops.asarray(g)
    if tuple(g.shape) != tuple(p.shape):
        raise ValueError(f"{owner}.update: params[{key!r}] has shape {tuple(p.shape)} but grads[{key!r}] has "
                         f"{tuple(g.shape)}")
    if g.dtype != p.dtype:
        from fastnn.validation import check_in_range

        check_in_range(f"{owner}.update", g, f"grads[{key!r}]", p.dtype)  # 1e39 would become inf in float32
        g = g.astype(p.dtype)
    return g


def _divide_step(ops, p, g, h, lr):
    """``p -= lr * g / (sqrt(h) + 1e-7)`` in place, in ``p``'s dtype."""
    dt = p.dtype.type
    denom = ops.xp.sqrt(h)
    denom += dt(_EPS)
    p -= dt(lr) * g / denom


class SGD(_BookOptimizer):
    """Stochastic gradient descent: ``p -= lr * g``."""

    def __init__(self, lr=0.01):
        self.lr = lr

    def _state(self, ops, key, p):
        return []

    def _step(self, ops, p, g, state):
        ops.sgd_step(p, g, self.lr)


class Momentum(_BookOptimizer):
    """Momentum SGD: ``v = momentum*v - lr*g; p += v`` (``v`` per key, zeros at first)."""

    slots = ("v",)

    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def _step(self, ops, p, g, state):
        ops.momentum_step(p, g, state[0], self.lr, self.momentum)


class Nesterov(_BookOptimizer):
    """Nesterov's accelerated gradient, the book's form (see the module docstring):
    ``p += momentum^2 * v - (1 + momentum)*lr*g; v = momentum*v - lr*g``."""

    slots = ("_u",)

    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self._u = None  # PyTorch's velocity u = -v / lr
        self._u_lr = None  # the lr that u is scaled for

    @property
    def v(self):
        """The book's velocity per key, ``-lr * u`` (a fresh dict; ``None`` before the first update)."""
        if self._u is None:
            return None
        lr = self._u_lr if self._u_lr is not None else self.lr
        return {key: u * u.dtype.type(-lr) for key, u in self._u.items()}

    def _begin(self):
        if self._u is not None and self._u_lr is not None and self._u_lr != self.lr and self.lr != 0:
            for u in self._u.values():  # keep v = -lr*u the book's velocity across an lr change
                u *= u.dtype.type(self._u_lr / self.lr)
        self._u_lr = self.lr

    def _step(self, ops, p, g, state):
        ops.momentum_step(p, g, state[0], self.lr, self.momentum, nesterov=True)


class AdaGrad(_BookOptimizer):
    """AdaGrad: ``h += g^2; p -= lr * g / (sqrt(h) + 1e-7)``."""

    slots = ("h",)

    def __init__(self, lr=0.01):
        self.lr = lr
        self.h = None

    def _step(self, ops, p, g, state):
        h = state[0]
        h += g * g
        _divide_step(ops, p, g, h, self.lr)


class RMSprop(_BookOptimizer):
    """RMSprop: ``h = decay_rate*h + (1 - decay_rate)*g^2; p -= lr * g / (sqrt(h) + 1e-7)``."""

    slots = ("h",)

    def __init__(self, lr=0.01, decay_rate=0.99):
        self.lr = lr
        self.decay_rate = decay_rate
        self.h = None

    def _step(self, ops, p, g, state):
        h, dt = state[0], p.dtype.type
        h *= dt(self.decay_rate)
        h += dt(1 - self.decay_rate) * (g * g)
        h[ops.xp.abs(h) < numpy.finfo(h.dtype).tiny] = 0  # no subnormals: they are slow on x86 CPUs
        _divide_step(ops, p, g, h, self.lr)


class Adam(_BookOptimizer):
    """Adam, the book's form: ``m += (1-beta1)*(g - m); v += (1-beta2)*(g^2 - v)``;
    ``p -= lr*sqrt(1-beta2^t)/(1-beta1^t) * m / (sqrt(v) + 1e-7)``, ``t = iter`` (one per ``update``)."""

    slots = ("m", "v")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.iter = 0
        self.m = None
        self.v = None

    def _begin(self):
        self.iter += 1

    def _step(self, ops, p, g, state):
        t = self.iter
        eps_t = _EPS / numpy.sqrt(1.0 - self.beta2 ** t)  # the book's eps on sqrt(v) before bias correction
        ops.adam_step(p, g, state[0], state[1], self.lr, self.beta1, self.beta2, float(eps_t), t)

"""The functions "from scratch" learners know, by the names they know them.

Each takes arrays of any backend (NumPy or CuPy) and computes with that array's module; scalars
keep the array's dtype. ``mean_squared_error`` and ``cross_entropy_error`` are the book's
definitions (a sum with 0.5; a ``1e-7`` inside the log); the layers and ``compile(loss=...)``
compute their losses stably instead.

Inputs are real numbers: float, int and bool arrays (or lists of numbers). Complex, object and
string arrays are a ``TypeError`` naming the function, the argument, the dtype and the shape (a
dtype check, no scan); the losses refuse an empty batch. ``numerical_gradient`` and
``gradient_descent`` also refuse NaN/inf in ``x`` and in what ``f`` returns, and a bad step ``h``.
"""
from __future__ import annotations

import math
import numbers

import numpy

from fastnn.backend import array_module, is_device_array, to_host

__all__ = [
    "step_function", "sigmoid", "relu", "tanh", "leaky_relu", "elu", "softplus", "softmax",
    "mean_squared_error", "cross_entropy_error", "numerical_gradient", "gradient_descent",
    "get_array_module",
]


# ``cupy`` for a CuPy array, else ``numpy`` (CuPy is never imported for host arrays): the book's name
# for ``fastnn.backend.array_module``.
get_array_module = array_module


# ---------------------------------------------------------------- argument checks
# Shared by the book's modules, datasets and gradcheck. Array checks look at the dtype's kind only
# (no scan of the values), so they cost well under a microsecond on the book's per-step calls.
_KIND_HINTS = {
    "c": "; fastnn computes in real numbers: pass {arg}.real if the imaginary part is to be dropped",
    "O": "; convert it first, e.g. numpy.asarray({arg}, dtype=float)",
    "U": "; parse the strings into numbers first",
    "S": "; parse the strings into numbers first",
}


def check_real(owner, arg, a):
    """``a`` (an array, or a list or scalar of numbers, made an array) holding real numbers: float,
    int or bool. Anything else (complex, object, strings, dates) is a ``TypeError`` naming ``owner``,
    ``arg``, the dtype and the shape."""
    dtype = getattr(a, "dtype", None)
    if dtype is None:
        try:
            a = numpy.asarray(a)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{owner}: {arg} must be an array of real numbers, got {type(a).__name__} "
                            f"({exc})") from None
        dtype = a.dtype
    if dtype.kind not in "fiub":
        hint = _KIND_HINTS.get(dtype.kind, "").format(arg=arg)
        raise TypeError(f"{owner}: {arg} must hold real numbers (float, int or bool), got dtype {dtype} "
                        f"of shape {tuple(a.shape)}{hint}")
    return a


def check_finite(owner, arg, a):
    """No NaN or inf in the float array ``a`` (one reduction); the first bad index and value are named."""
    if a.dtype.kind == "f" and not bool(get_array_module(a).isfinite(a).all()):
        h = to_host(a)
        idx = tuple(int(i) for i in numpy.argwhere(~numpy.isfinite(h))[0])
        raise ValueError(f"{owner}: {arg} contains NaN or infinite values (first at index {idx}: {float(h[idx])!r})")
    return a


def check_number(owner, arg, v, low=None, strict=False):
    """A finite real number (not a bool, a string or a 0-d array), ``>= low`` (``> low`` if ``strict``)."""
    ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if strict else v >= low
    if not ok:
        what = "a finite real number" if low is None else f"a finite number {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{owner}: {arg} must be {what}, got {v!r}")
    return v


def check_int(owner, arg, v, low=1):
    """An integer (Python or NumPy, not a bool or a whole float) ``>= low``, as an ``int``."""
    if isinstance(v, bool) or not isinstance(v, (int, numpy.integer)) or v < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{owner}: {arg} must be {what}, got {v!r}")
    return int(v)


def check_flag(owner, arg, v):
    """``True`` or ``False`` (a NumPy bool too), as a ``bool``: a string such as ``"False"`` would be true."""
    if not isinstance(v, (bool, numpy.bool_)):
        raise TypeError(f"{owner}: {arg} must be True or False, got {v!r}")
    return bool(v)


def real_array(owner, x, arg="x"):
    """``x`` as an array of its own backend after ``check_real`` (skipped, for speed, when the dtype is fine)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or dtype.kind not in "fiub":
        x = check_real(owner, arg, x)
    return get_array_module(x).asarray(x)


def _arr(x, owner, arg="x"):
    """``(xp, x)``: ``x`` as an array of its backend, integers and bools as float64."""
    x = real_array(owner, x, arg)
    if x.dtype.kind != "f":
        x = x.astype(numpy.float64)
    return get_array_module(x), x


def step_function(x):
    """1 where ``x > 0``, else 0, in ``x``'s float dtype (int for integer input)."""
    x = real_array("step_function", x)
    return (x > 0).astype(x.dtype if x.dtype.kind == "f" else numpy.int64)


def sigmoid(x):
    """``1 / (1 + exp(-x))``, computed as ``0.5 * tanh(0.5 x) + 0.5`` so it never overflows."""
    xp, x = _arr(x, "sigmoid")
    half = x.dtype.type(0.5)
    return half * xp.tanh(half * x) + half


def relu(x):
    """``max(0, x)``."""
    xp, x = _arr(x, "relu")
    return xp.maximum(x, x.dtype.type(0))


def tanh(x):
    """Hyperbolic tangent."""
    xp, x = _arr(x, "tanh")
    return xp.tanh(x)


def leaky_relu(x, alpha=0.01):
    """``x`` where positive, ``alpha * x`` elsewhere."""
    check_number("leaky_relu", "alpha", alpha)
    xp, x = _arr(x, "leaky_relu")
    return xp.where(x > 0, x, x.dtype.type(alpha) * x)


def elu(x, alpha=1.0):
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere."""
    check_number("elu", "alpha", alpha)
    xp, x = _arr(x, "elu")
    return xp.where(x > 0, x, x.dtype.type(alpha) * xp.expm1(xp.minimum(x, 0)))


def softplus(x):
    """``log(1 + exp(x))``, as ``max(x, 0) + log1p(exp(-|x|))`` (finite for any x)."""
    xp, x = _arr(x, "softplus")
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def softmax(x):
    """Softmax of a 1-D ``x``, or of each row of a 2-D ``x`` (along the last axis); max-subtracted,
    so inputs around 1000 stay finite."""
    xp, x = _arr(x, "softmax")
    if x.ndim not in (1, 2):
        raise ValueError(f"softmax: expected a 1-D or 2-D array, got shape {x.shape}")
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mean_squared_error(y, t):
    """The book's ``0.5 * sum((y - t)^2)`` over all elements (a batch too: no division by N)."""
    return _squared_error(y, t, "mean_squared_error")


def _squared_error(y, t, owner):
    xp, y = _arr(y, owner, "y")
    t = real_array(owner, t, "t")
    if y.shape != t.shape:
        raise ValueError(f"{owner}: y and t must have one shape, got y {y.shape} and t {t.shape}")
    if y.size == 0:
        raise ValueError(f"{owner}: y and t are empty (shape {y.shape}); a loss needs at least one sample "
                         f"(an empty batch usually comes from slicing past the end of the data)")
    d = y - t.astype(y.dtype, copy=False)
    return y.dtype.type(0.5) * xp.sum(d * d)


def cross_entropy_error(y, t):
    """The book's cross-entropy ``-sum(log(y[t] + 1e-7)) / N`` of probabilities ``y``.

    ``y`` is 1-D (one sample) or ``(N, C)``; ``t`` is one-hot (same shape as ``y``) or class
    indices (``(N,)`` or a scalar); both give the same value. The mean is over the batch, so an
    empty batch (N = 0) is refused, as are complex, object and string arrays.
    """
    owner = "cross_entropy_error"
    xp, y = _arr(y, owner, "y")
    t = real_array(owner, t, "t")
    if y.ndim == 1:
        if y.size == 0:
            raise ValueError(f"{owner}: y has no classes (shape {y.shape})")
        y = y.reshape(1, -1)
        t = t.reshape(1, -1) if t.size == y.size else t.reshape(1)
    if y.ndim != 2:
        raise ValueError(f"{owner}: y must be 1-D (one sample) or (N, C), got shape {y.shape}")
    if y.shape[0] == 0:
        raise ValueError(f"{owner}: y has no rows (N=0, shape {y.shape}); the loss is a mean over the batch "
                         f"and divides by N")
    if t.size == y.size and t.ndim == 2:
        t = t.argmax(axis=1)
    t = t.reshape(-1)
    n, c = y.shape
    if t.shape[0] != n:
        raise ValueError(f"{owner}: y has {n} rows but t has {t.shape[0]} labels")
    if t.dtype.kind == "f":
        if not bool(xp.all(t == xp.floor(t))):
            raise ValueError(f"{owner}: class-index labels t must be whole numbers")
    t = t.astype(numpy.int64)
    if int(t.min()) < 0 or int(t.max()) >= c:
        raise ValueError(f"{owner}: labels must be in [0, {c - 1}], got min {int(t.min())}, max {int(t.max())}")
    return -xp.sum(xp.log(y[xp.arange(n), t] + y.dtype.type(1e-7))) / y.dtype.type(n)


def _value(v, idx, sign):
    """``f``'s value as a host float64 array (one host sync per evaluation): a real, finite number,
    or one per row."""
    if is_device_array(v):
        v = to_host(v)
    a = v if isinstance(v, numpy.ndarray) else numpy.asarray(v)
    if a.dtype.kind not in "fiub":
        of = f" of dtype {a.dtype}" if isinstance(v, numpy.ndarray) else ""
        raise TypeError(f"numerical_gradient: f must return a real number (or one per row), got "
                        f"{type(v).__name__}{of}")
    a = a.astype(numpy.float64, copy=False)
    if not numpy.isfinite(a).all():
        bad = float(a[~numpy.isfinite(a)][0])
        raise ValueError(f"numerical_gradient: f returned {bad!r} at x[{idx}] {sign} h; a central difference "
                         f"needs finite values on both sides")
    return a


def numerical_gradient(f, x, h=1e-4):
    """Central-difference gradient of ``f`` at ``x``, computed as the book does.

    Each element of ``x`` is perturbed *in place* by ``+h`` and ``-h``, ``f(x)`` evaluated, and
    the element restored; so ``numerical_gradient(lambda W: net.loss(x, t), net.params["W1"])``
    differentiates weights that a layer holds by reference. ``x`` may have any shape and must be
    a finite float array (its dtype is kept); ``f`` must return finite real values. When ``f`` of a
    2-D ``x`` returns one value per row, the result is each row's gradient (the batched form used
    to plot gradient fields).
    """
    xp = get_array_module(x)
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise TypeError("numerical_gradient: x must be a float array that f reads (it is perturbed in place), "
                        f"got {type(x).__name__} of dtype {getattr(x, 'dtype', None)}")
    check_number("numerical_gradient", "h", h, low=0, strict=True)
    check_finite("numerical_gradient", "x", x)
    if not getattr(getattr(x, "flags", None), "writeable", True):
        raise ValueError("numerical_gradient: x is read-only; it is perturbed in place, so pass a writeable array")
    plus, minus, steps = _steps(x, h)
    grad = xp.zeros_like(x)
    flat_shape = x.shape
    for idx in numpy.ndindex(*flat_shape):
        saved = x[idx].copy() if hasattr(x[idx], "copy") else x[idx]
        try:
            x[idx] = plus[idx]
            f_plus = _value(f(x), idx, "+")
            x[idx] = minus[idx]
            f_minus = _value(f(x), idx, "-")
        finally:  # f may raise (a bad label): x, often a network's weights, is left as it was
            x[idx] = saved
        if f_plus.ndim == 0:
            diff = f_plus - f_minus
        elif x.ndim == 2 and f_plus.shape == (x.shape[0],):
            diff = f_plus[idx[0]] - f_minus[idx[0]]
        else:
            raise ValueError(f"numerical_gradient: f must return a scalar (or one value per row of a 2-D x), "
                             f"got shape {f_plus.shape} for x of shape {x.shape}")
        grad[idx] = diff / steps[idx]
    return grad


def _steps(x, h):
    """``(x + h, x - h, step)`` on the host, in ``x``'s dtype, and the step each element really takes:
    ``2 h``, the book's divisor, unless ``x``'s dtype cannot hold ``x + h`` and ``x - h`` that precisely
    (float32 or float16 ``x`` far from 0), where the difference of the two values is the step. A step
    of 0 (``h`` below the spacing of ``x``'s values) is refused before ``x`` is touched."""
    host = to_host(x)
    plus, minus = host + h, host - h  # as the element loop computes them (x's dtype)
    steps = plus.astype(numpy.float64) - minus.astype(numpy.float64)
    if (steps == 0).any():
        i = tuple(int(k) for k in numpy.argwhere(steps == 0)[0])
        raise ValueError(f"numerical_gradient: h={h!r} is below the precision of {x.dtype} at x[{i}] = "
                         f"{float(host[i])!r} (x + h rounds back to x); use a float64 x or a larger h")
    exact = numpy.abs(steps - 2 * h) <= 1e-6 * (2 * h)
    return plus, minus, numpy.where(exact, 2 * h, steps)


def gradient_descent(f, init_x, lr=0.01, step_num=100):
    """Plain gradient descent with numerical gradients: ``x -= lr * numerical_gradient(f, x)``.

    Returns ``(x, history)`` where ``history[i]`` is ``x`` before step ``i``
    (shape ``(step_num, *x.shape)``). ``init_x`` (real, finite numbers) is copied, not modified.
    """
    owner = "gradient_descent"
    init_x = real_array(owner, init_x, "init_x")
    check_finite(owner, "init_x", init_x)
    check_number(owner, "lr", lr)
    step_num = check_int(owner, "step_num", step_num, low=0)
    xp = get_array_module(init_x)
    x = xp.array(init_x, dtype=init_x.dtype if init_x.dtype.kind == "f" else numpy.float64)
    history = xp.empty((step_num,) + x.shape, dtype=x.dtype)
    for i in range(step_num):
        history[i] = x
        x -= x.dtype.type(lr) * numerical_gradient(f, x)
    return x, history

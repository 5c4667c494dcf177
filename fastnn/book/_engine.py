"""What the book modules share: the random source, flat parameter buffers, safe ``.pkl`` loading.

Randomness follows DESIGN "Randomness" for the book's namespace: ``seed=`` gives a private
``numpy.random.Generator``; else ``fastnn.set_seed(n)`` does; else the draws come from NumPy's
global generator itself, as the book's ``np.random.randn`` / ``np.random.choice`` do, so a book
script that starts with ``np.random.seed(n)`` gets the book's very weights and batches.
"""
from __future__ import annotations

import io
import math
import numbers
import pickle
from collections.abc import Mapping, Sequence

import numpy

from fastnn import random as _random
from fastnn.backend import current, get_ops
from fastnn.functions import check_int, check_number


def book_rng(seed=None):
    """An object with ``standard_normal(shape)``, ``choice(n, k)``, ``permutation(n)`` and ``integers``-like
    seeding (see the module docstring): a Generator for ``seed=``/``set_seed``, else ``numpy.random``."""
    if seed is not None or _random._global_seq is not None:
        return _random.make_rng(seed)
    return numpy.random


def draw_seed(rng):
    """A 63-bit seed for a dropout stream, from a Generator or from ``numpy.random``."""
    if rng is numpy.random:
        return int(numpy.random.randint(0, 2**63 - 1, dtype=numpy.int64))
    return _random.draw_seed(rng)


def net_ops(backend=None):
    return get_ops(backend) if backend is not None else current()


def host(a):
    """A host NumPy array of any backend's array (or scalar)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, numpy.ndarray) else numpy.asarray(a)


def flat_views(ops, dtype, arrays):
    """``(flat, {key: view})``: the host ``arrays`` copied into one flat buffer of ``ops`` (views keep their shapes)."""
    size = sum(int(numpy.prod(a.shape)) for a in arrays.values())
    flat = ops.alloc((size,), dtype)
    views, offset = {}, 0
    for key, a in arrays.items():
        n = int(numpy.prod(a.shape))
        view = flat[offset:offset + n].reshape(a.shape)
        view[...] = ops.asarray(numpy.asarray(a, dtype=dtype))
        views[key] = view
        offset += n
    return flat, views


# ---------------------------------------------------------------- constructor arguments
# The networks check every argument before drawing a weight, so a bad value never advances the
# random stream or builds half a network; each message names the class, the argument and the value.
_INIT_NAMES = {"relu": 2.0, "he": 2.0, "sigmoid": 1.0, "xavier": 1.0}  # name -> gain: std = sqrt(gain / fan_in)
_CONV_KEYS = ("filter_num", "filter_size", "pad", "stride")


def check_size_list(owner, arg, sizes):
    """A list (or tuple, or 1-D array) of positive integers, such as ``hidden_size_list``."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (Sequence, numpy.ndarray)):
        raise ValueError(f"{owner}: {arg} must be a list of positive integers (e.g. [100, 100]), got {sizes!r}")
    return [check_int(owner, f"{arg}[{i}]", size) for i, size in enumerate(sizes)]


def check_init_std(owner, weight_init_std, names=True):
    """``weight_init_std``: a finite number >= 0, or (``names``) the book's ``'relu'``/``'he'`` and
    ``'sigmoid'``/``'xavier'`` in any case."""
    if names and isinstance(weight_init_std, str) and weight_init_std.lower() in _INIT_NAMES:
        return weight_init_std
    v = weight_init_std
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
        spellings = ", or 'relu'/'he' or 'sigmoid'/'xavier'" if names else " (the standard deviation of the weights)"
        raise ValueError(f"{owner}: weight_init_std must be a number >= 0 (finite){spellings}, got {v!r}")
    return v


def init_scale(owner, weight_init_std, fan_in):
    """The book's scale: a number, ``'relu'``/``'he'`` (sqrt(2/n)) or ``'sigmoid'``/``'xavier'`` (sqrt(1/n))."""
    check_init_std(owner, weight_init_std)
    if isinstance(weight_init_std, str):
        return math.sqrt(_INIT_NAMES[weight_init_std.lower()] / fan_in)
    return float(weight_init_std)


def check_decay(owner, weight_decay_lambda):
    """The book's L2 strength: a finite number >= 0 (0 turns it off)."""
    return check_number(owner, "weight_decay_lambda", weight_decay_lambda, low=0)


def check_ratio(owner, arg, ratio):
    """A dropout ratio: a number in [0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= ratio < 1:
        raise ValueError(f"{owner}: {arg} must be a number in [0, 1), got {ratio!r}")
    return ratio


def check_input_dim(owner, input_dim):
    """``(C, H, W)`` of positive integers."""
    if (isinstance(input_dim, (str, bytes)) or not isinstance(input_dim, (Sequence, numpy.ndarray))
            or len(input_dim) != 3):
        raise ValueError(f"{owner}: input_dim must be (C, H, W), got {input_dim!r}")
    return tuple(check_int(owner, f"input_dim[{i}]", v) for i, v in enumerate(input_dim))


def check_conv_param(owner, arg, conv_param):
    """A book ``conv_param`` dict: ``filter_num``, ``filter_size``, ``stride`` positive, ``pad`` >= 0."""
    if not isinstance(conv_param, Mapping):
        raise ValueError(f"{owner}: {arg} must be a dict with keys {', '.join(_CONV_KEYS)}, got {conv_param!r}")
    for key in _CONV_KEYS:
        if key not in conv_param:
            raise ValueError(f"{owner}: {arg} is missing {key!r} (it needs {', '.join(_CONV_KEYS)})")
    for key in conv_param:
        if key not in _CONV_KEYS:
            raise ValueError(f"{owner}: {arg} has unknown key {key!r}; its keys are {', '.join(_CONV_KEYS)}")
    return {key: check_int(owner, f"{arg}[{key!r}]", conv_param[key], low=0 if key == "pad" else 1)
            for key in _CONV_KEYS}


def conv_pool_shape(owner, hw, cp, where, pool=False):
    """``(h, w)`` after a convolution with ``cp`` (and the book's 2x2, stride-2 pooling when ``pool``),
    refused when the filter or the pooling window does not fit (``where`` names the input in the message)."""
    (h, w), f, p, s = hw, cp["filter_size"], cp["pad"], cp["stride"]
    if h + 2 * p < f or w + 2 * p < f:
        raise ValueError(f"{owner}: a {f}x{f} filter does not fit {where} with pad {p}")
    h, w = (h + 2 * p - f) // s + 1, (w + 2 * p - f) // s + 1
    if pool and min(h, w) < 2:
        raise ValueError(f"{owner}: {where} gives a {h}x{w} convolution output, too small for the 2x2 pooling")
    return ((h - 2) // 2 + 1, (w - 2) // 2 + 1) if pool else (h, w)


# ---------------------------------------------------------------- safe .pkl parameter files
def _numpy_global(module, name):
    """NumPy 2 moved ``numpy.core`` to ``numpy._core``; resolve either spelling without the deprecation shim."""
    try:
        core = __import__("numpy._core.multiarray", fromlist=[name])
    except ImportError:  # NumPy 1.x
        core = __import__("numpy.core.multiarray", fromlist=[name])
    return getattr(core, name)


_ALLOWED = {
    ("numpy", "ndarray"): lambda: numpy.ndarray,
    ("numpy", "dtype"): lambda: numpy.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_global("", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_global("", "scalar"),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_global("", "scalar"),
    ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
}


class _ParamsUnpickler(pickle.Unpickler):
    """Admits only what a parameter file holds: dicts, NumPy arrays, dtypes and scalars."""

    def find_class(self, module, name):
        make = _ALLOWED.get((module, name))
        if make is None and module == "numpy.dtypes" and name.endswith("DType"):
            return getattr(__import__("numpy.dtypes", fromlist=[name]), name)
        if make is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a parameter file: only dicts of NumPy arrays are "
                f"admitted (a .pkl file can run arbitrary code when unpickled)")
        return make()


def load_params_file(file_name):
    """``{str: numpy.ndarray}`` from a book-style parameter pickle, without unpickling arbitrary objects."""
    with open(file_name, "rb") as f:
        data = f.read()
    params = _ParamsUnpickler(io.BytesIO(data)).load()
    if not isinstance(params, dict):
        raise ValueError(f"{file_name}: expected a dict of parameter arrays, got {type(params).__name__}")
    for key, val in params.items():
        if not isinstance(key, str) or not isinstance(val, numpy.ndarray) or val.dtype.kind not in "fiub":
            raise ValueError(f"{file_name}: entry {key!r} is {type(val).__name__} "
                             f"{getattr(val, 'dtype', '')}; expected numeric NumPy arrays under string keys")
    return params


def save_params_file(params, file_name):
    """Write ``{key: host array}`` as the book's ``save_params`` does (a pickled dict)."""
    with open(file_name, "wb") as f:
        pickle.dump({key: host(val).copy() for key, val in params.items()}, f)


def assign_params(owner, ops, params, loaded):
    """Copy ``loaded`` into the arrays of ``params`` in place (they stay views of the flat buffer)."""
    unknown = sorted(set(loaded) - set(params))
    if unknown:
        raise ValueError(f"{owner}: the file has parameters {unknown} that this network does not have "
                         f"(it has {sorted(params)})")
    for key, val in loaded.items():
        p = params[key]
        if tuple(val.shape) != tuple(p.shape):
            raise ValueError(f"{owner}: parameter {key} has shape {tuple(p.shape)} but the file holds "
                             f"{tuple(val.shape)}; build the network with the arguments it was saved with")
        p[...] = ops.asarray(numpy.asarray(val, dtype=p.dtype))

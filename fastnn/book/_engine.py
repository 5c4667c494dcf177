"""What the book modules share: the random source, flat parameter buffers, safe ``.pkl`` loading.

Randomness follows DESIGN "Randomness" for the book's namespace: ``seed=`` gives a private
``numpy.random.Generator``; else ``fastnn.set_seed(n)`` does; else the draws come from NumPy's
global generator itself, as the book's ``np.random.randn`` / ``np.random.choice`` do, so a book
script that starts with ``np.random.seed(n)`` gets the book's very weights and batches.
"""
from __future__ import annotations

import io
import pickle

import numpy

from fastnn import random as _random
from fastnn.backend import current, get_ops


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

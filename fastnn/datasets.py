"""Datasets that never download: scikit-learn's bundled digits, MNIST from files you have, spirals.

Every loader returns host NumPy arrays; models and layers move them to their backend once.
"""
from __future__ import annotations

import gzip
import math
import os
import stat
import struct
import zlib

import numpy

from fastnn.backend import follow, is_device_array
from fastnn.functions import check_int, check_number

__all__ = ["load_digits", "load_mnist", "make_spiral", "train_test_split", "one_hot", "to_categorical", "read_idx",
           "DataLoader"]


def one_hot(t, classes=None, dtype=numpy.float32):
    """``(N,)`` class indices -> ``(N, classes)`` one-hot rows. Indices must be whole numbers in
    ``[0, classes)``; anything else is refused, naming the first bad value. ``dtype`` is a real
    numeric type (float, int or bool)."""
    return _one_hot(t, classes, dtype, "one_hot", "classes")


def _one_hot(t, classes, dtype, owner, classes_arg):
    dtype = numpy.dtype(dtype)
    if dtype.kind not in "fiub":
        raise TypeError(f"{owner}: dtype must be a real numeric type (float, int or bool), got {dtype}")
    t = numpy.asarray(t)
    if t.dtype == object or t.dtype.kind not in "biuf":
        raise TypeError(f"{owner}: class indices must be numbers, got dtype {t.dtype}")
    t = t.ravel()
    if t.dtype.kind == "f":
        bad = ~numpy.isfinite(t) | (t != numpy.floor(t))
        if bad.any():
            raise ValueError(f"{owner}: class indices must be whole numbers, got {float(t[bad][0])!r}")
    t = t.astype(numpy.int64)
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, (int, numpy.integer))
                                or classes < 1):
        raise ValueError(f"{owner}: {classes_arg} must be a positive integer, got {classes!r}")
    if t.size and t.min() < 0:
        raise ValueError(f"{owner}: class indices must be >= 0, got {int(t.min())}")
    classes = (int(t.max()) + 1 if t.size else 0) if classes is None else int(classes)
    if t.size and t.max() >= classes:
        raise ValueError(f"{owner}: class index {int(t.max())} is out of range for {classes} classes")
    out = numpy.zeros((t.size, classes), dtype=dtype)
    out[numpy.arange(t.size), t] = 1
    return out


def to_categorical(y, num_classes=None, dtype="float32"):
    """Keras's ``to_categorical``: class indices of any shape (a trailing axis of 1 is dropped) to
    one-hot rows, ``y.shape + (num_classes,)``."""
    y = numpy.asarray(y)
    shape = y.shape[:-1] if y.ndim > 1 and y.shape[-1] == 1 else y.shape
    rows = _one_hot(y, num_classes, dtype, "to_categorical", "num_classes")
    return rows.reshape(shape + (rows.shape[-1],))


def train_test_split(x, t, test_size=0.2, seed=0, stratify=True):
    """Split ``(x, t)`` into ``(x_train, t_train), (x_test, t_test)`` reproducibly for ``seed``.

    ``test_size`` is a fraction in (0, 1) or a count. With ``stratify`` (the default) and index
    labels, every class keeps its proportion (scikit-learn's splitter).
    """
    from sklearn.model_selection import train_test_split as _split

    x = numpy.asarray(x)
    t = numpy.asarray(t)
    if len(x) != len(t):
        raise ValueError(f"train_test_split: x has {len(x)} samples but t has {len(t)}")
    strat = t if stratify and t.ndim == 1 else (t.argmax(1) if stratify and t.ndim == 2 else None)
    x_tr, x_te, t_tr, t_te = _split(x, t, test_size=test_size, random_state=seed, stratify=strat)
    return (x_tr, t_tr), (x_te, t_te)


def load_digits(one_hot_label=False, test_size=360, dtype=numpy.float32, one_hot=None, flatten=True):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images), scaled to [0, 1].

    Returns ``(x_train, t_train), (x_test, t_test)`` with a fixed stratified split (1437 / 360
    samples). ``x`` is ``(N, 64)`` (``flatten=False``: ``(N, 1, 8, 8)``, NCHW); ``t`` holds class
    indices, or one-hot rows with ``one_hot_label=True`` (``one_hot=`` is a synonym).
    """
    from sklearn.datasets import load_digits as _load

    if one_hot is not None:
        one_hot_label = one_hot
    data = _load()
    x = (data.data / 16.0).astype(dtype)
    t = data.target.astype(numpy.int64)
    (x_tr, t_tr), (x_te, t_te) = train_test_split(x, t, test_size=test_size, seed=0)
    if not flatten:
        x_tr, x_te = x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8)
    if one_hot_label:
        t_tr, t_te = globals()["one_hot"](t_tr, 10, dtype), globals()["one_hot"](t_te, 10, dtype)
    return (x_tr, t_tr), (x_te, t_te)


_IDX_DTYPES = {0x08: numpy.uint8, 0x09: numpy.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_FILES = {
    "train_img": "train-images-idx3-ubyte", "train_label": "train-labels-idx1-ubyte",
    "test_img": "t10k-images-idx3-ubyte", "test_label": "t10k-labels-idx1-ubyte",
}
# deflate never expands data more than 1032:1, so a .gz of n bytes holds at most ~1032 n bytes:
# a header declaring more is refused before a single large read
_GZIP_MAX_RATIO = 1032
_REDOWNLOAD = "download it again"


def read_idx(path):
    """Read one IDX file (raw or ``.gz``) into a NumPy array, checking its header against its size.

    Every problem is a ``ValueError`` that names the file and what is wrong with it: not a regular
    file (a FIFO or a device would block or never end), a corrupt or cut-short gzip stream, a bad
    magic number, or a data size that disagrees with the header's shape.
    """
    return _read_idx(path, "read_idx")


def _read_idx(path, owner):
    path = os.fspath(path)
    where = f"{owner}: {path}"
    st = os.stat(path)  # FileNotFoundError / PermissionError already name the path
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{where}: not a regular file (IDX data must be a file, not a FIFO, device or folder)")
    gz = path.endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                what = "the file is empty" if not head else f"bad magic number {head!r}"
                raise ValueError(f"{where}: not an IDX file ({what}); {_REDOWNLOAD} or check the file name")
            ndim = head[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{where}: IDX header declares {ndim} dimensions but the file has "
                                 f"{4 + len(dims)} bytes; {_REDOWNLOAD}")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = numpy.dtype(_IDX_DTYPES[head[2]])
            expected = math.prod(shape) * dtype.itemsize
            if gz and expected > _GZIP_MAX_RATIO * st.st_size:
                raise ValueError(f"{where}: IDX header declares shape {shape} ({expected} bytes), more than a "
                                 f"{st.st_size}-byte gzip file can hold; the header is corrupt: {_REDOWNLOAD}")
            held = None if gz else st.st_size - 4 - 4 * ndim  # a raw file's size is known before reading
            data = f.read(expected + 1) if held is None or held == expected else b""
            if held is None and len(data) > expected:  # count the excess without keeping it
                held = len(data) + sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        why = ("the gzip stream is cut short (the file is truncated)" if isinstance(exc, EOFError)
               else f"corrupt or not a gzip file ({exc})")
        raise ValueError(f"{where}: {why}; {_REDOWNLOAD}") from None
    held = len(data) if held is None else held
    if held != expected:
        raise ValueError(f"{where}: IDX header declares shape {shape} ({expected} bytes) but the file holds "
                         f"{held} bytes of data; {_REDOWNLOAD}")
    return numpy.frombuffer(data, dtype=dtype).reshape(shape)


def _find(folder, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"load_mnist: {stem} (or {stem}.gz) not found in {folder}; fastnn never downloads "
                            f"data: put the four MNIST IDX files there")


def _mnist_array(path, kind):
    """One MNIST file's array, checked for what its name promises: unsigned bytes, images ``(N, rows,
    cols)`` or labels ``(N,)`` in [0, 9]; every message names the file."""
    a = _read_idx(path, "load_mnist")
    where = f"load_mnist: {path}"
    if a.dtype != numpy.uint8:
        raise ValueError(f"{where}: expected unsigned bytes (IDX type 0x08, as the file names say: ubyte), "
                         f"got {a.dtype.str}")
    if kind == "img" and a.ndim != 3:
        raise ValueError(f"{where}: expected images of shape (N, rows, cols), got shape {a.shape}")
    if kind == "label":
        if a.ndim != 1:
            raise ValueError(f"{where}: expected labels of shape (N,), got shape {a.shape}")
        if a.size and int(a.max()) > 9:
            i = int(numpy.argmax(a > 9))
            raise ValueError(f"{where}: labels must be in [0, 9], got {int(a[i])} at index {i}")
    return a


def load_mnist(path, normalize=True, flatten=True, one_hot_label=False, dtype=numpy.float32):
    """MNIST (or Fashion-MNIST) from the four standard IDX files in folder ``path`` (raw or .gz).

    Returns ``(x_train, t_train), (x_test, t_test)`` as the book's ``load_mnist`` does: ``x`` in
    [0, 1] when ``normalize``, ``(N, 784)`` when ``flatten`` else ``(N, 1, 28, 28)``. A corrupt,
    truncated or mislabelled file is a ``ValueError`` naming the file and what is wrong with it.
    """
    paths = {key: _find(path, stem) for key, stem in _MNIST_FILES.items()}
    arrays = {key: _mnist_array(p, key.split("_")[1]) for key, p in paths.items()}
    out = []
    for split in ("train", "test"):
        x, t = arrays[f"{split}_img"], arrays[f"{split}_label"].astype(numpy.int64)
        if len(x) != len(t):
            raise ValueError(f"load_mnist: {paths[f'{split}_img']} holds {len(x)} images but "
                             f"{paths[f'{split}_label']} holds {len(t)} labels")
        x = x.astype(dtype)
        if normalize:
            x /= dtype(255.0) if isinstance(dtype, type) else numpy.dtype(dtype).type(255.0)
        x = x.reshape(len(x), -1) if flatten else x.reshape(len(x), 1, *x.shape[1:])
        out.append((x, one_hot(t, 10, dtype) if one_hot_label else t))
    return tuple(out)


def make_spiral(samples_per_class=100, classes=3, noise=0.2, seed=0, dtype=numpy.float32):
    """The classic 2-D spiral toy problem: ``x: (samples_per_class*classes, 2)``, index labels ``t``."""
    check_int("make_spiral", "samples_per_class", samples_per_class)
    check_int("make_spiral", "classes", classes)
    check_number("make_spiral", "noise", noise, low=0)
    rng = numpy.random.default_rng(seed)
    n = samples_per_class
    x = numpy.empty((n * classes, 2), dtype=numpy.float64)
    t = numpy.empty(n * classes, dtype=numpy.int64)
    for c in range(classes):
        r = numpy.linspace(0.0, 1.0, n)
        theta = numpy.linspace(c * 4.0, (c + 1) * 4.0, n) + rng.standard_normal(n) * noise
        x[c * n:(c + 1) * n] = numpy.c_[r * numpy.sin(theta), r * numpy.cos(theta)]
        t[c * n:(c + 1) * n] = c
    return x.astype(dtype), t


class DataLoader:
    """Mini-batches ``(x_batch, t_batch)`` for hand-written loops, reshuffled each pass.

    ``for x_batch, t_batch in DataLoader(x, t, batch_size=100): ...`` visits every sample once per
    pass (the last batch may be smaller unless ``drop_last``). Arrays of any backend work: indices
    are drawn on the host, batches are gathered where the data lives.
    """

    def __init__(self, x, t, batch_size=32, shuffle=True, seed=None, drop_last=False):
        from fastnn.random import make_rng

        if len(x) != len(t):
            raise ValueError(f"DataLoader: x has {len(x)} samples but t has {len(t)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, numpy.integer)) or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        self.x, self.t = x, t
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.rng = make_rng(seed)

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        order = self.rng.permutation(n) if self.shuffle else numpy.arange(n)
        ops = follow(self.x) if is_device_array(self.x) else None  # gather where the data lives
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if ops is not None:
                idx = ops.asarray(idx)
            yield self.x[idx], self.t[idx]

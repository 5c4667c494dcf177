"""What the chapter scripts in ``examples/book/`` share: their command line, the 28x28 digits, figures.

The book's scripts start with ``sys.path.append(os.pardir)`` to reach its ``common`` package; these
reach ``examples/_common.py`` (figures) the same way, and take fastnn's names from ``fastnn.book``.

Options: ``--quick`` (a CI-sized run of a few seconds), ``--out DIR`` (PNG and parameter files,
default ``examples/out/book/``), ``--backend NAME`` (``fastnn.use``; default ``FASTNN_BACKEND``, else
``auto``) and ``--seed N`` (``np.random.seed(N)``, which the book's classes draw from; default 0).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # examples/, for _common

import fastnn  # noqa: E402
from fastnn import config  # noqa: E402

from _common import DEFAULT_OUT, new_figure, save  # noqa: E402,F401  (re-exported for the scripts)

__all__ = ["BOOK_OUT", "parse_args", "new_figure", "save", "to_host", "mnist_like", "filter_grid"]

BOOK_OUT = os.path.join(DEFAULT_OUT, "book")


def parse_args(description, argv=None, params=None):
    """Parse the shared options, make the output folder, seed NumPy's generator and select the backend.

    ``params`` names a parameter file the script reads (``--params``, default ``OUT/params``).
    Returns the ``argparse.Namespace`` with ``quick``, ``out``, ``backend``, ``seed``, ``ops``
    (the backend's ``Ops``) and, with ``params``, ``params``.
    """
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run for CI (a few seconds)")
    parser.add_argument("--out", default=BOOK_OUT, help="folder for the output files (default: %(default)s)")
    parser.add_argument("--backend", default=config.BACKEND or "auto",
                        help="fastnn backend: auto, cpu, numpy, numba, cupy, cuda:N "
                             "(default: FASTNN_BACKEND, else auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of NumPy's global generator (default: %(default)s)")
    if params:
        parser.add_argument("--params", default=None,
                            help=f"parameter file to read (default: OUT/{params}; trained and written when missing)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if params and args.params is None:
        args.params = os.path.join(args.out, params)
    numpy.random.seed(args.seed)
    args.ops = fastnn.use(args.backend)
    return args


def to_host(a):
    """A host NumPy array of any backend's array (CuPy arrays are copied back)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, numpy.ndarray) else numpy.asarray(a)


def _resize_matrix(src, dst):
    """``(dst, src)`` linear-interpolation weights, pixel centres aligned (as image resizing does)."""
    pos = (numpy.arange(dst) + 0.5) * src / dst - 0.5
    lo = numpy.clip(numpy.floor(pos).astype(int), 0, src - 1)
    hi = numpy.clip(lo + 1, 0, src - 1)
    frac = numpy.clip(pos - lo, 0.0, 1.0)
    m = numpy.zeros((dst, src))
    m[numpy.arange(dst), lo] += 1 - frac
    m[numpy.arange(dst), hi] += frac
    return m


def mnist_like(x):
    """8x8 digits ``(N, 1, 8, 8)`` as MNIST-shaped images ``(N, 1, 28, 28)``, same dtype.

    As MNIST's digits sit in a 20x20 box centred in 28x28, each digit is resized to 20x20
    (bilinear) and padded with 4 zero pixels a side; values stay in [0, 1]. The book's
    ``SimpleConvNet`` and ``DeepConvNet`` take 28x28 inputs (``DeepConvNet``'s ``64*4*4`` affine
    input only fits them).
    """
    m = _resize_matrix(8, 20)
    big = numpy.einsum("ij,ncjk,lk->ncil", m, x.astype(numpy.float64), m)
    out = numpy.zeros(x.shape[:2] + (28, 28))
    out[:, :, 4:24, 4:24] = big
    return out.astype(x.dtype)


def filter_grid(fig, filters, rows, cols, title=None, top=1.0, bottom=0.0, left=0.0, right=1.0):
    """``filters[i, 0]`` as grey images (``gray_r``, as the book's ``filter_show``) in a ``rows x cols`` grid."""
    grid = fig.add_gridspec(rows, cols, top=top, bottom=bottom, left=left, right=right, hspace=0.08, wspace=0.08)
    for i in range(min(len(filters), rows * cols)):
        ax = fig.add_subplot(grid[i // cols, i % cols], xticks=[], yticks=[])
        ax.imshow(filters[i, 0], cmap="gray_r", interpolation="nearest")
    if title:
        fig.text((left + right) / 2, min(top + 0.01, 0.99), title, ha="center", va="bottom")

"""What every example script shares: its command line, its backend and how it saves a figure.

Each example takes ``--quick`` (a CI-sized run of a few seconds), ``--out DIR`` (where the PNGs
go, default ``examples/out/``) and ``--backend NAME`` (given to ``fastnn.use``; default
``FASTNN_BACKEND``, else ``auto``). Figures use matplotlib's object API only: a ``Figure`` with its
own ``FigureCanvasAgg``, no pyplot state and no ``matplotlib.use``.
"""
from __future__ import annotations

import argparse
import os

import fastnn
from fastnn import config

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def parse_args(description, argv=None):
    """Parse the shared options, make the output folder and select the backend.

    Returns the ``argparse.Namespace`` with ``quick``, ``out``, ``backend`` and ``ops`` (the
    backend's ``Ops`` object) set.
    """
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a small run for CI (a few seconds), not the full figure")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNG files (default: %(default)s)")
    parser.add_argument("--backend", default=config.BACKEND or "auto",
                        help="fastnn backend: auto, cpu, numpy, numba, cupy, cuda:N "
                             "(default: FASTNN_BACKEND, else auto)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    args.ops = fastnn.use(args.backend)
    return args


def new_figure(width, height):
    """A matplotlib ``Figure`` attached to an Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save(fig, out, name, dpi=100):
    """Write ``fig`` as ``out/name`` and return the path."""
    path = os.path.join(out, name)
    fig.savefig(path, dpi=dpi)
    return path

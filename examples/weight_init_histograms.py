"""Weight initialisation: activation histograms of a 5-layer, 100-unit network.

Reproduces the "from scratch" book's ``weight_init_activation_histogram.py``: 1000 random inputs
(standard normal, 100 features) go through five ``Affine`` layers of 100 units (zero bias) with
the same activation after each, for four weight scales: ``std 1``, ``std 0.01``, Xavier
(``1/sqrt(n)``) and He (``sqrt(2/n)``), and three activations: sigmoid, tanh and ReLU. The
layers are fastnn's (``fastnn.layers.Affine`` and ``Sigmoid``/``Tanh``/``Relu``), so the
forward passes run on the chosen backend's kernels.

Writes ``weight_init_histograms.png``: one row per weight scale, one block per activation, one
histogram per layer (its standard deviation above it). With std 1 sigmoid and tanh saturate at
their ends (vanishing gradients); with std 0.01 everything collapses to one value (no
expressiveness; for ReLU the activations shrink towards zero); Xavier keeps sigmoid and tanh
spread out, He keeps ReLU's scale from layer to layer. For ReLU the histogram shows the
positive outputs; the share of exact zeros is printed beside it.

    python examples/weight_init_histograms.py [--quick] [--out DIR] [--backend NAME]
"""
from __future__ import annotations

import math
import sys

import numpy

import fastnn
from fastnn.layers import Affine, Relu, Sigmoid, Tanh

from _common import new_figure, parse_args, save

UNITS = 100
LAYERS = 5
SCALES = {"std 1": lambda n: 1.0, "std 0.01": lambda n: 0.01,
          "Xavier": lambda n: math.sqrt(1.0 / n), "He": lambda n: math.sqrt(2.0 / n)}
ACTIVATIONS = {"sigmoid": Sigmoid, "tanh": Tanh, "ReLU": Relu}


def activations(x, scale, activation, seed=0):
    """Outputs of the five layers for input ``x`` (a backend array): a list of host arrays."""
    rng = numpy.random.default_rng(seed)  # same weights on every backend
    outputs = []
    for i in range(LAYERS):
        W = scale(UNITS) * rng.standard_normal((UNITS, UNITS))
        affine = Affine(fastnn.asarray(W), fastnn.asarray(numpy.zeros(UNITS)), name=f"Affine{i + 1}")
        x = ACTIVATIONS[activation]().forward(affine.forward(x, train_flg=False), train_flg=False)
        outputs.append(fastnn.asnumpy(x))
    return outputs


def hist_range(activation, outputs):
    """A shared x range for one block, so growth or shrinkage across the layers shows."""
    if activation == "sigmoid":
        return 0.0, 1.0
    if activation == "tanh":
        return -1.0, 1.0
    top = max(float(numpy.percentile(a[a > 0], 99.5)) if (a > 0).any() else 0.0 for a in outputs)
    return 0.0, top if top > 0 else 1.0


def draw_block(fig, cell, activation, outputs, bins, first_row):
    """Five histograms side by side in one gridspec cell."""
    lo, hi = hist_range(activation, outputs)
    axes = cell.subgridspec(1, LAYERS, wspace=0.08).subplots(sharey=True)
    for i, (ax, a) in enumerate(zip(axes, outputs)):
        values = a[a > 0] if activation == "ReLU" else a.ravel()
        ax.hist(values, bins=bins, range=(lo, hi), color=f"C{list(ACTIVATIONS).index(activation)}")
        title = f"L{i + 1} σ={a.std():.2g}"
        if activation == "ReLU":
            title += f"\n0s: {(a <= 0).mean():.0%}"
        ax.set_title(title, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.locator_params(axis="x", nbins=2)
        if i:
            ax.tick_params(labelleft=False)
    if first_row:
        axes[LAYERS // 2].annotate(activation, xy=(0.5, 1.0), xycoords="axes fraction", xytext=(0, 28),
                                   textcoords="offset points", ha="center", fontsize=12, weight="bold")
    return axes


def main(argv=None):
    args = parse_args(__doc__, argv)
    samples, bins = (300, 20) if args.quick else (1000, 30)
    x = fastnn.asarray(numpy.random.default_rng(1).standard_normal((samples, UNITS)))

    fig = new_figure(20, 13)
    grid = fig.add_gridspec(len(SCALES), len(ACTIVATIONS), hspace=0.55, wspace=0.12,
                            left=0.06, right=0.99, top=0.92, bottom=0.04)
    print(f"backend {args.ops.name}: {samples} inputs, {LAYERS} layers of {UNITS} units; std of each layer's output")
    for row, (scale_name, scale) in enumerate(SCALES.items()):
        for col, activation in enumerate(ACTIVATIONS):
            outputs = activations(x, scale, activation)
            axes = draw_block(fig, grid[row, col], activation, outputs, bins, row == 0)
            if col == 0:
                axes[0].set_ylabel(scale_name, fontsize=12, weight="bold")
            print(f"  {scale_name:8s} {activation:7s} " + " ".join(f"{a.std():9.3g}" for a in outputs))
    fig.suptitle(f"Activations of a {LAYERS}-layer, {UNITS}-unit network for {samples} random inputs, by weight "
                 f"scale (rows) and activation (blocks); one histogram per layer", fontsize=14)
    print(f"wrote {save(fig, args.out, 'weight_init_histograms.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Initialisation schemes, and batch normalisation versus none: training loss per iteration.

Reproduces two experiments of the "from scratch" book on the bundled digits
(``fastnn.datasets.load_digits``), each written as the book's hand-written loop
``grads = net.gradient(x, t); opt.update(net.params, grads)`` with plain SGD (lr 0.01) and
mini-batches of 128 drawn from the training digits:

1. ``weight_init_compare.py``: a ``MultiLayerNet`` (64 -> 4 x 100 ReLU -> 10) initialised with
   ``std 0.01``, Xavier (``"sigmoid"``) and He (``"relu"``). Writes ``init_schemes.png``: the
   loss per iteration (thin) and its moving average (thick). With std 0.01 the signal vanishes
   and the loss stays at ln 10 (dotted); He learns fastest, Xavier follows.
2. ``batch_norm_test.py``: a ``MultiLayerNetExtend`` (64 -> 5 x 100 ReLU -> 10) trained on 1000
   training digits with and without ``use_batchnorm`` for several weight scales (``std``, from
   1 down to 1e-3). Writes ``batch_norm.png``: one panel per scale, loss per iteration with and
   without batch norm. Batch norm trains at every scale; without it only scales near He's
   (sqrt(2/100) ~ 0.14: here 0.3 and 0.1) train, std 1 overflows to NaN within a few steps and
   std <= 0.03 leaves the loss stuck at ln 10.

    python examples/init_and_batchnorm.py [--quick] [--out DIR] [--backend NAME]
"""
from __future__ import annotations

import math
import sys

import numpy

import fastnn
from fastnn.datasets import load_digits
from fastnn.networks import MultiLayerNet, MultiLayerNetExtend
from fastnn.optimizers import SGD

from _common import new_figure, parse_args, save

LR = 0.01
BATCH = 128
INIT_SCHEMES = {"std 0.01": 0.01, "Xavier": "sigmoid", "He": "relu"}


def train_losses(net, x, t, iters, seed=0):
    """The book's loop: ``iters`` SGD steps on random mini-batches; each batch's loss, on the host.

    The loss recorded is the one ``net.gradient`` computed in training mode for the step
    (``net.last_layer.loss``, no weight decay here). Calling ``net.loss(x, t)`` after the update
    instead would run batch norm in inference mode on running statistics that are still
    warming up (they start at zero), which shows spikes that training never saw.
    """
    rng = numpy.random.default_rng(seed)
    opt = SGD(lr=LR)
    x, t = fastnn.asarray(x), fastnn.asarray(t)
    losses = []
    for _ in range(iters):
        idx = fastnn.asarray(rng.choice(len(x), BATCH))
        x_batch, t_batch = x[idx], t[idx]
        grads = net.gradient(x_batch, t_batch)
        losses.append(float(net.last_layer.loss))  # one host sync per step, as in the book's loop
        opt.update(net.params, grads)
    return numpy.array(losses)


def smooth(y, window):
    """Moving average (NaN-aware enough for plotting: NaN and inf spread where they occur)."""
    window = max(1, min(window, len(y)))
    return numpy.convolve(y, numpy.ones(window) / window, mode="valid")


def plot_losses(ax, curves, iters, styles, title, window):
    for (name, losses), style in zip(curves.items(), styles):
        if not numpy.isfinite(losses).all():
            name += f" (diverged at iteration {int(numpy.argmin(numpy.isfinite(losses))) + 1})"
        steps = numpy.arange(1, len(losses) + 1)
        ax.plot(steps, losses, lw=0.6, alpha=0.35, **style)
        s = smooth(losses, window)
        ax.plot(steps[window - 1:window - 1 + len(s)], s, lw=1.8, label=name, **style)
    ax.axhline(math.log(10), color="0.5", lw=0.8, ls=":")
    smoothed = numpy.concatenate([smooth(c, window) for c in curves.values()])
    finite = smoothed[numpy.isfinite(smoothed)]
    top = min(float(finite.max()) if finite.size else 2.5, 20.0)  # room for the moving averages
    ax.set(xlim=(0, iters), ylim=(0, max(top * 1.05, 2.5)), xlabel="iteration", ylabel="training loss", title=title)
    ax.grid(alpha=0.3)


def init_schemes(x, t, iters, out):
    """Experiment 1: loss per iteration for std 0.01, Xavier and He."""
    curves = {}
    for name, std in INIT_SCHEMES.items():
        net = MultiLayerNet(x.shape[1], [100] * 4, 10, weight_init_std=std, seed=0)
        curves[name] = train_losses(net, x, t, iters)
    fig = new_figure(8, 5)
    ax = fig.add_subplot(1, 1, 1)
    window = max(5, iters // 40)
    plot_losses(ax, curves, iters, [{"color": f"C{i}"} for i in range(len(curves))],
                f"MultiLayerNet 64-[100x4]-10, SGD lr={LR}: weight initialisation", window)
    ax.legend(title=f"init (thick: mean of {window})")
    fig.tight_layout()
    for name, c in curves.items():
        print(f"  init {name:8s} loss: first {c[0]:.3f}, last {window} mean {c[-window:].mean():.3f}")
    return save(fig, out, "init_schemes.png")


def batch_norm(x, t, iters, scales, out):
    """Experiment 2: batch norm versus none for each weight scale."""
    cols = min(3, len(scales))
    rows = math.ceil(len(scales) / cols)
    fig = new_figure(4.6 * cols, 3.6 * rows)
    window = max(5, iters // 30)
    for i, std in enumerate(scales):
        curves = {}
        for use_bn, label in ((True, "batch norm"), (False, "no batch norm")):
            net = MultiLayerNetExtend(x.shape[1], [100] * 5, 10, weight_init_std=std, use_batchnorm=use_bn, seed=0)
            with numpy.errstate(over="ignore", invalid="ignore"):  # std 1 without batch norm overflows: shown as such
                curves[label] = train_losses(net, x, t, iters)
        ax = fig.add_subplot(rows, cols, i + 1)
        plot_losses(ax, curves, iters, [{"color": "C0"}, {"color": "C1", "ls": "--"}], f"weight std {std:g}", window)
        ax.legend(fontsize=8)
        if i % cols:
            ax.set_ylabel("")
        print(f"  std {std:<7g} last {window} mean loss: " +
              ", ".join(f"{k} {v[-window:].mean():.3f}" for k, v in curves.items()))
    fig.suptitle(f"MultiLayerNetExtend 64-[100x5]-10 on {len(x)} digits, SGD lr={LR}: batch norm vs none")
    fig.tight_layout()
    return save(fig, out, "batch_norm.png")


def main(argv=None):
    args = parse_args(__doc__, argv)
    (x_train, t_train), _ = load_digits()  # training digits only: this example reports training loss
    if args.quick:
        init_iters, bn_iters, scales = 100, 60, [1.0, 0.01]
    else:
        init_iters, bn_iters, scales = 2000, 1000, [1.0, 0.3, 0.1, 0.03, 0.01, 0.001]
    print(f"backend {args.ops.name}")
    print(f"wrote {init_schemes(x_train, t_train, init_iters, args.out)}")
    print(f"wrote {batch_norm(x_train[:1000], t_train[:1000], bn_iters, scales, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

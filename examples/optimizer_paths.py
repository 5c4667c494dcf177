"""The paths of SGD, Momentum, AdaGrad, RMSprop and Adam on f(x, y) = x^2/20 + y^2.

Reproduces the "from scratch" book's optimizer comparison: each optimizer starts at (-7, 2) and
takes 30 steps with the book-style ``opt.update(params, grads)`` of ``fastnn.optimizers`` on dicts
of 0-d arrays of the active backend (``{"x": ..., "y": ...}``, updated in place). The
gradient ``(x / 10, 2 y)`` is written out. Learning rates are the book's: SGD 0.95, Momentum 0.1,
AdaGrad 1.5, Adam 0.3; RMSprop, which the book leaves out, gets 0.3. Writes
``optimizer_paths.png``: one contour panel per optimizer and a sixth with ``f`` per step.

    python examples/optimizer_paths.py [--quick] [--out DIR] [--backend NAME]
"""
from __future__ import annotations

import sys

import numpy

import fastnn
from fastnn.optimizers import SGD, AdaGrad, Adam, Momentum, RMSprop

from _common import new_figure, parse_args, save

START = (-7.0, 2.0)
STEPS = 30


def f(x, y):
    return x ** 2 / 20.0 + y ** 2


def df(x, y):
    return x / 10.0, 2.0 * y


def optimizers():
    return {
        "SGD": SGD(lr=0.95),
        "Momentum": Momentum(lr=0.1),
        "AdaGrad": AdaGrad(lr=1.5, initial_accumulator_value=0.0),  # the book's h starts at 0 (Keras's at 0.1)
        "RMSprop": RMSprop(lr=0.3),
        "Adam": Adam(lr=0.3),
    }


def run(optimizer, steps=STEPS):
    """The ``(steps + 1, 2)`` host array of points visited from ``START``."""
    params = {"x": fastnn.asarray(numpy.array(START[0])), "y": fastnn.asarray(numpy.array(START[1]))}
    path = [START]
    for _ in range(steps):
        gx, gy = df(params["x"], params["y"])
        optimizer.update(params, {"x": gx, "y": gy})
        path.append((float(fastnn.asnumpy(params["x"])), float(fastnn.asnumpy(params["y"]))))
    return numpy.array(path)


def main(argv=None):
    args = parse_args(__doc__, argv)
    paths = {name: run(opt) for name, opt in optimizers().items()}
    lrs = {name: opt.lr for name, opt in optimizers().items()}

    n = 100 if args.quick else 400
    X, Y = numpy.meshgrid(numpy.linspace(-10, 10, n), numpy.linspace(-5, 5, n))
    Z = f(X, Y)
    Z[Z > 7] = 0  # the book's trick: flatten the far contours so the valley stands out

    fig = new_figure(15, 8.5)
    axes = fig.subplots(2, 3)
    for ax, (name, path) in zip(axes.flat, paths.items()):
        ax.contour(X, Y, Z, colors="#999999", linewidths=0.8)
        ax.plot(path[:, 0], path[:, 1], "o-", color="red", ms=3, lw=1)
        ax.plot(0, 0, "+", color="black", ms=12)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_title(f"{name} (lr {lrs[name]:g})")
    ax = axes.flat[-1]
    for name, path in paths.items():
        ax.semilogy(numpy.arange(STEPS + 1), f(path[:, 0], path[:, 1]) + 1e-16, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("f(x, y)")
    ax.set_title("f along each path")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.suptitle(f"Optimizers on f(x, y) = x²/20 + y² from (-7, 2), {STEPS} steps (backend {args.ops.name})")
    fig.tight_layout()
    out = save(fig, args.out, "optimizer_paths.png")

    finals = ", ".join(f"{k} {f(*p[-1]):.2e}" for k, p in paths.items())
    print(f"optimizer_paths: wrote {out}; f after {STEPS} steps: {finals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

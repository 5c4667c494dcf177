"""The gradient field of f(x0, x1) = x0^2 + x1^2 and a gradient-descent path on it.

Reproduces two figures a "from scratch" learner knows: arrows of the negative gradient
``-grad f`` on a grid (computed by ``fastnn.functions.numerical_gradient`` in its batched form:
``x`` holds one grid point per row and ``f`` returns one value per row), and the points that
``fastnn.functions.gradient_descent`` visits from (-3, 4) with lr 0.1 for 20 steps, over the
contours of ``f``. Writes ``gradient_field.png`` (both panels side by side).

    python examples/gradient_field.py [--quick] [--out DIR] [--backend NAME]
"""
from __future__ import annotations

import sys

import numpy

import fastnn
from fastnn.functions import gradient_descent, numerical_gradient

from _common import new_figure, parse_args, save


def function_2(x):
    """x0^2 + x1^2 of one point ``x: (2,)`` (a scalar) or of each row of ``x: (N, 2)`` (N values)."""
    if x.ndim == 1:
        return (x ** 2).sum()
    return (x ** 2).sum(axis=1)


def gradient_grid(step):
    """Grid points ``X, Y`` on [-2, 2] and the gradient of ``function_2`` at each, as host arrays."""
    ticks = numpy.arange(-2.0, 2.0 + step / 2, step)
    X, Y = numpy.meshgrid(ticks, ticks)
    points = fastnn.asarray(numpy.stack([X.ravel(), Y.ravel()], axis=1), dtype=numpy.float64)  # (N, 2)
    grad = fastnn.asnumpy(numerical_gradient(function_2, points))  # (N, 2): one gradient per row
    return X, Y, grad[:, 0].reshape(X.shape), grad[:, 1].reshape(X.shape)


def main(argv=None):
    args = parse_args(__doc__, argv)
    X, Y, gx, gy = gradient_grid(0.5 if args.quick else 0.25)

    init_x = fastnn.asarray(numpy.array([-3.0, 4.0]), dtype=numpy.float64)
    lr, step_num = 0.1, 20
    x_final, history = gradient_descent(function_2, init_x, lr=lr, step_num=step_num)
    path = fastnn.asnumpy(history)
    x_final = fastnn.asnumpy(x_final)

    fig = new_figure(13, 6)
    ax_field, ax_path = fig.subplots(1, 2)

    ax_field.quiver(X, Y, -gx, -gy, angles="xy", color="#666666")
    ax_field.plot(0, 0, "r+", ms=12)
    ax_field.set_xlim(-2.2, 2.2)
    ax_field.set_ylim(-2.2, 2.2)
    ax_field.set_aspect("equal")
    ax_field.set_xlabel("x0")
    ax_field.set_ylabel("x1")
    ax_field.grid(alpha=0.3)
    ax_field.set_title("-grad f of f(x0, x1) = x0² + x1² (numerical_gradient)")

    cx, cy = numpy.meshgrid(numpy.linspace(-4.5, 4.5, 181), numpy.linspace(-4.5, 4.5, 181))
    ax_path.contour(cx, cy, cx ** 2 + cy ** 2, levels=[0.25, 1, 2.25, 4, 6.25, 9, 12.25, 16, 20.25, 25],
                    colors="#bbbbbb", linewidths=0.8)
    ax_path.plot([-5, 5], [0, 0], "--b", lw=0.8)
    ax_path.plot([0, 0], [-5, 5], "--b", lw=0.8)
    ax_path.plot(path[:, 0], path[:, 1], "-", color="#ff7f0e", lw=0.8)
    ax_path.plot(path[:, 0], path[:, 1], "o", color="#1f77b4", ms=5)
    ax_path.annotate("start (-3, 4)", xy=path[0], xytext=(-3.3, 4.2), fontsize=9)
    ax_path.set_xlim(-3.5, 3.5)
    ax_path.set_ylim(-4.5, 4.5)
    ax_path.set_aspect("equal")
    ax_path.set_xlabel("x0")
    ax_path.set_ylabel("x1")
    ax_path.set_title(f"gradient_descent from (-3, 4): lr {lr}, {step_num} steps")

    fig.suptitle(f"Gradients and gradient descent (backend {args.ops.name})")
    fig.tight_layout()
    out = save(fig, args.out, "gradient_field.png")

    print(f"gradient_field: wrote {out}; {X.size} arrows; gradient descent from (-3, 4) ends at "
          f"({x_final[0]:.2e}, {x_final[1]:.2e}), f = {float((x_final ** 2).sum()):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

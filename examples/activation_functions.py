"""The activation functions and their derivatives, as a "from scratch" book draws them.

Reproduces the figures of step, sigmoid, tanh, ReLU, leaky ReLU, ELU and softplus on [-5, 5],
each with its derivative. The derivatives are central differences from
``fastnn.functions.numerical_gradient`` (the batched form: ``x`` is a column ``(N, 1)`` and ``f``
returns one value per row), checked against the closed forms; the summary line prints the largest
difference for each function. Writes ``activation_functions.png``.

    python examples/activation_functions.py [--quick] [--out DIR] [--backend NAME]
"""
from __future__ import annotations

import sys

import numpy

import fastnn
from fastnn import functions as F

from _common import new_figure, parse_args, save

ALPHA_LEAKY = 0.1  # larger than the usual 0.01 so the slope on the left is visible
ALPHA_ELU = 1.0


def closed_form_derivatives(xp):
    """Each activation's derivative written out, computed with the array's module ``xp``."""
    return {
        "step": lambda x: xp.zeros_like(x),  # 0 everywhere but x = 0, where it is undefined
        "sigmoid": lambda x: F.sigmoid(x) * (1 - F.sigmoid(x)),
        "tanh": lambda x: 1 - F.tanh(x) ** 2,
        "relu": lambda x: F.step_function(x),
        "leaky_relu": lambda x: xp.where(x > 0, 1.0, ALPHA_LEAKY),
        "elu": lambda x: xp.where(x > 0, 1.0, F.elu(x, ALPHA_ELU) + ALPHA_ELU),
        "softplus": lambda x: F.sigmoid(x),
    }


ACTIVATIONS = {
    "step": F.step_function,
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, ALPHA_LEAKY),
    "elu": lambda x: F.elu(x, ALPHA_ELU),
    "softplus": F.softplus,
}


def numerical_derivative(act, x):
    """d act / dx at every point of the 1-D ``x``: ``numerical_gradient`` of a column, one value per row."""
    column = x.reshape(-1, 1).copy()  # perturbed in place, so never the caller's array
    return F.numerical_gradient(lambda z: act(z)[:, 0], column).reshape(-1)


def main(argv=None):
    args = parse_args(__doc__, argv)
    # An even number of points keeps every sample more than h = 1e-4 away from the kinks at 0,
    # where a central difference of step or ReLU would report a spike instead of a slope.
    n = 100 if args.quick else 400
    x = fastnn.asarray(numpy.linspace(-5.0, 5.0, n), dtype=numpy.float64)
    xp = fastnn.get_array_module(x)
    exact = closed_form_derivatives(xp)

    curves, errors = {}, {}
    for name, act in ACTIVATIONS.items():
        y = act(x)
        dy = numerical_derivative(act, x)
        errors[name] = float(xp.abs(dy - exact[name](x)).max())
        curves[name] = (fastnn.asnumpy(y), fastnn.asnumpy(dy))
    xs = fastnn.asnumpy(x)

    fig = new_figure(16, 7.5)
    axes = fig.subplots(2, 4)
    for ax, (name, (y, dy)) in zip(axes.flat, curves.items()):
        ax.plot(xs, y, lw=2, label=f"{name}(x)")
        ax.plot(xs, dy, "--", lw=2, label="derivative")
        ax.axhline(0, color="grey", lw=0.6)
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.set_ylim(-1.5, 2.5)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=9)
    axes[0, 0].annotate("derivative: 0, undefined at x = 0", xy=(0, 0), xytext=(-4.8, -1.2), fontsize=8,
                        arrowprops={"arrowstyle": "->", "color": "grey"})
    last = axes.flat[-1]
    for name, (y, _) in curves.items():
        last.plot(xs, y, lw=1.5, label=name)
    last.set_title("all together")
    last.set_xlabel("x")
    last.set_ylim(-1.5, 2.5)
    last.grid(alpha=0.3)
    last.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Activation functions and their derivatives (numerical_gradient; backend {args.ops.name})")
    fig.tight_layout()
    path = save(fig, args.out, "activation_functions.png")

    worst = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    print(f"activation_functions: wrote {path}; max |numerical - closed-form derivative|: {worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

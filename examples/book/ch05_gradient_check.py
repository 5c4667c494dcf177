"""Chapter 5, ``gradient_check.py``: backpropagation against numerical gradients.

The book's check on chapter 5's ``TwoLayerNet`` (``fastnn.book.two_layer_net``: Affine-Relu-Affine-
SoftmaxWithLoss, float64): ``network.numerical_gradient`` (central differences, ``h = 1e-4``) and
``network.gradient`` (backpropagation) of the loss of the first 3 training digits (one-hot labels),
compared parameter by parameter. The book prints the mean absolute difference; this prints that
and the largest one too. The network is the book's ``TwoLayerNet(input_size, hidden_size=50,
output_size=10)`` with 64 inputs for the 8x8 digits.

The differences come out near 1e-9 for the weights and 1e-7 for ``b2``, above the 1e-10 to 1e-13
the book shows: the book's loss (``common/functions.py``) is ``-log(y + 1e-7)``, whose derivative
is ``1e-7 / y`` (relative) off the exact ``y - t`` that backpropagation computes, and with ``y``
about 0.1 at the start that is ~1e-6 of each gradient. A NumPy transcription of the book's code
gives these same numbers on these digits; without the ``1e-7`` it gives 1e-10 (``b2``) to 1e-13.
A hidden unit whose input lands within ``h`` of ReLU's kink spoils its column of W1 and its b1
entry (``--seed 9``: 4.5e-4, in the book's code as here); the default seed 0 has none.

Prints ``max_abs_diff KEY VALUE``, ``mean_abs_diff KEY VALUE`` and ``max_abs_grad KEY VALUE`` (the
size of the gradient itself, for scale) for W1, b1, W2, b2. Writes ``ch05_gradient_check.png``:
the differences per parameter on a log scale.

    python examples/book/ch05_gradient_check.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import sys

import numpy as np

from fastnn.book.two_layer_net import TwoLayerNet
from fastnn.datasets import load_digits

from _book import new_figure, parse_args, save, to_host


def main(argv=None):
    args = parse_args(__doc__, argv)  # --quick changes nothing here: the check takes about a second
    (x_train, t_train), (x_test, t_test) = load_digits(one_hot_label=True)

    network = TwoLayerNet(input_size=64, hidden_size=50, output_size=10)

    x_batch = x_train[:3]
    t_batch = t_train[:3]

    grad_numerical = network.numerical_gradient(x_batch, t_batch)
    grad_backprop = network.gradient(x_batch, t_batch)

    rows = []
    for key in grad_numerical.keys():
        diff = np.abs(to_host(grad_backprop[key]) - to_host(grad_numerical[key]))
        scale = float(np.abs(to_host(grad_backprop[key])).max())
        print(f"{key}:{np.average(diff)}")  # the book's line
        print(f"max_abs_diff {key} {diff.max():.3e}")
        print(f"mean_abs_diff {key} {np.average(diff):.3e}")
        print(f"max_abs_grad {key} {scale:.3e}")
        rows.append((key, float(diff.max()), float(np.average(diff)), scale))

    fig = new_figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    pos = np.arange(len(rows))
    floor = 1e-20  # an exact zero difference, drawn at the bottom
    ax.bar(pos - 0.27, [max(r[3], floor) for r in rows], 0.27, label="max |backprop gradient|", color="0.6")
    ax.bar(pos, [max(r[1], floor) for r in rows], 0.27, label="max |backprop - numerical|", color="C3")
    ax.bar(pos + 0.27, [max(r[2], floor) for r in rows], 0.27, label="mean |backprop - numerical|", color="C0")
    ax.set_yscale("log")
    ax.set_xticks(pos)
    ax.set_xticklabels([r[0] for r in rows])
    ax.set_ylabel("absolute value")
    ax.set_title("ch05 TwoLayerNet 64-50-10 (float64): backprop vs central differences (h = 1e-4)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    print(f"wrote {save(fig, args.out, 'ch05_gradient_check.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

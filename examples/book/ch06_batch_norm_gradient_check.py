"""Chapter 6, ``batch_norm_gradient_check.py``: batch normalization's backpropagation against numerical gradients.

The book's check: ``MultiLayerNetExtend(input_size, hidden_size_list=[100, 100], output_size=10,
use_batchnorm=True)`` (``fastnn.book.multi_layer_net_extend``, float64), the gradients of the loss of
the first training digit (one-hot label; ``gradient`` and ``numerical_gradient`` both run the layers
in training mode), compared parameter by parameter. On a 1-sample batch each batch norm subtracts
the sample from itself, so its output is ``beta`` whatever comes in, and every gradient upstream of
the last batch norm (W1, b1, gamma1, beta1, W2, b2, gamma2) is exactly zero on both sides; W3's is
zero too, as ``beta2`` starts at zero and ``relu(0) = 0``. That leaves b3, and beta2, which sits on
ReLU's kink: backpropagation takes the book's ``relu'(0) = 0`` (its mask is ``x <= 0``) while the
central difference sees half the slope, so beta2 differs by about 0.3 in the book's code as here.
The same check on a batch of the first 10 digits, where batch norm's own backward pass carries
every gradient, follows (not in the book). Both use the book's loss, ``-log(y + 1e-7)``, whose
derivative is ``1e-7 / y`` (relative) off the exact one that backpropagation computes: that, not
the method, sets the differences of about 1e-6 to 1e-5 of the gradient's size.

``--quick`` uses hidden sizes [20, 20] (the numerical gradient evaluates the loss twice for each
of the ~1,900 parameters instead of ~17,500). Prints ``max_abs_diff N KEY VALUE`` and
``max_abs_grad N KEY VALUE`` for each parameter and batch size N, after the book's lines
(``KEY:mean abs diff``). Writes ``ch06_batch_norm_gradient_check.png``.

    python examples/book/ch06_batch_norm_gradient_check.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import sys

import numpy as np

from fastnn.book.multi_layer_net_extend import MultiLayerNetExtend
from fastnn.datasets import load_digits

from _book import new_figure, parse_args, save, to_host


def check(network, x_batch, t_batch):
    """``{key: (max |backprop - numerical|, mean of it, max |backprop|)}``, printing the book's lines."""
    grad_backprop = network.gradient(x_batch, t_batch)
    grad_numerical = network.numerical_gradient(x_batch, t_batch)
    result = {}
    for key in grad_numerical.keys():
        diff = np.abs(to_host(grad_backprop[key]) - to_host(grad_numerical[key]))
        print(key + ":" + str(np.average(diff)))
        result[key] = (float(diff.max()), float(np.average(diff)), float(np.abs(to_host(grad_backprop[key])).max()))
    return result


def main(argv=None):
    args = parse_args(__doc__, argv)
    (x_train, t_train), (x_test, t_test) = load_digits(one_hot_label=True)
    hidden = [20, 20] if args.quick else [100, 100]

    network = MultiLayerNetExtend(input_size=64, hidden_size_list=hidden, output_size=10, use_batchnorm=True)
    results = {}
    for n in (1, 10):
        print(f"=== batch of {n} ===")
        results[n] = check(network, x_train[:n], t_train[:n])
    for n, res in results.items():
        for key, (mx, _, scale) in res.items():
            print(f"max_abs_diff {n} {key} {mx:.3e}")
            print(f"max_abs_grad {n} {key} {scale:.3e}")

    fig = new_figure(11, 4.5)
    floor = 1e-20
    for col, (n, res) in enumerate(results.items()):
        ax = fig.add_subplot(1, 2, col + 1)
        keys = list(res)
        pos = np.arange(len(keys))
        ax.bar(pos - 0.2, [max(res[k][2], floor) for k in keys], 0.4, color="0.6", label="max |backprop gradient|")
        ax.bar(pos + 0.2, [max(res[k][0], floor) for k in keys], 0.4, color="C3", label="max |backprop - numerical|")
        ax.set_yscale("log")
        ax.set_ylim(floor / 2, 1e6)  # room for the legend above the bars
        ax.set_xticks(pos)
        ax.set_xticklabels(keys, rotation=60, fontsize=8)
        ax.set_title(f"batch of {n}" + (" (the book's check; zeros drawn at 1e-20)" if n == 1 else ""))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"MultiLayerNetExtend 64-{hidden}-10 with batch norm (float64): backprop vs central differences")
    fig.tight_layout()
    print(f"wrote {save(fig, args.out, 'ch06_batch_norm_gradient_check.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

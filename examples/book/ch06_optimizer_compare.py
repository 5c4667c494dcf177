"""Chapter 6, ``optimizer_compare_mnist.py``: SGD, Momentum, AdaGrad and Adam training one network each.

Four ``MultiLayerNet(input_size, hidden_size_list=[100, 100, 100, 100], output_size=10)`` (ReLU, He
initial weights: the book's defaults) are trained on the same mini-batches of 128 training digits,
each with one of the book's optimizers at its default settings (``SGD()`` lr 0.01, ``Momentum()``
lr 0.01 momentum 0.9, ``AdaGrad()`` lr 0.01, ``Adam()`` lr 0.001), for 2000 iterations as in the
book (``--quick``: 300). The loss of each batch is recorded after the update, as the book does, and
plotted through the book's ``smooth_curve``.

As in the book, SGD is the slowest; Momentum, AdaGrad and Adam reach a low loss much sooner.
Prints the loss of the current batch every 100 iterations (the book's lines), then
``final_loss NAME VALUE`` (the mean of the last 50 batch losses) and ``first_loss NAME VALUE``
(the first 10). Writes ``ch06_optimizer_compare.png``.

    python examples/book/ch06_optimizer_compare.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import sys

import numpy as np

from fastnn.book.multi_layer_net import MultiLayerNet
from fastnn.book.optimizer import SGD, AdaGrad, Adam, Momentum
from fastnn.book.util import smooth_curve
from fastnn.datasets import load_digits

from _book import new_figure, parse_args, save


def main(argv=None):
    args = parse_args(__doc__, argv)
    (x_train, t_train), (x_test, t_test) = load_digits()

    train_size = x_train.shape[0]
    batch_size = 128
    max_iterations = 300 if args.quick else 2000

    optimizers = {}
    optimizers["SGD"] = SGD()
    optimizers["Momentum"] = Momentum()
    optimizers["AdaGrad"] = AdaGrad()
    optimizers["Adam"] = Adam()

    networks = {}
    train_loss = {}
    for key in optimizers.keys():
        networks[key] = MultiLayerNet(input_size=64, hidden_size_list=[100, 100, 100, 100], output_size=10)
        train_loss[key] = []

    for i in range(max_iterations):
        batch_mask = np.random.choice(train_size, batch_size)
        x_batch = x_train[batch_mask]
        t_batch = t_train[batch_mask]

        for key in optimizers.keys():
            grads = networks[key].gradient(x_batch, t_batch)
            optimizers[key].update(networks[key].params, grads)

            loss = float(networks[key].loss(x_batch, t_batch))
            train_loss[key].append(loss)

        if i % 100 == 0:
            print("===========" + "iteration:" + str(i) + "===========")
            for key in optimizers.keys():
                print(key + ":" + str(train_loss[key][-1]))

    for key in optimizers.keys():
        print(f"first_loss {key} {np.mean(train_loss[key][:10]):.4f}")
        print(f"final_loss {key} {np.mean(train_loss[key][-50:]):.4f}")
    for key in optimizers.keys():
        print(f"test_acc {key} {networks[key].accuracy(x_test, t_test):.4f}")

    markers = {"SGD": "o", "Momentum": "x", "AdaGrad": "s", "Adam": "D"}
    fig = new_figure(8, 5)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(max_iterations)
    for key in optimizers.keys():
        ax.plot(x, smooth_curve(train_loss[key]), marker=markers[key], markevery=max(1, max_iterations // 20),
                label=key)
    ax.set(xlabel="iterations", ylabel="loss", ylim=(0, 1.5 if args.quick else 1),
           title="MultiLayerNet 64-[100x4]-10 on the digits: loss (smooth_curve) per optimizer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    print(f"wrote {save(fig, args.out, 'ch06_optimizer_compare.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chapter 5, ``train_neuralnet.py``: the ReLU ``TwoLayerNet`` trained by backpropagation.

The book's loop, unchanged but for the data: chapter 5's ``TwoLayerNet(input_size, hidden_size=50,
output_size=10)`` (``fastnn.book.two_layer_net``) on the 1437 training digits with one-hot labels,
mini-batches of 100 drawn with ``np.random.choice``, ``grad = network.gradient(x_batch, t_batch)``
and ``params[key] -= learning_rate * grad[key]`` with the book's learning rate 0.1; the train and
test accuracy (360 test digits) once an epoch. ``--quick`` runs 600 iterations, the full run the
book's 10000. Over seeds 0-9 the quick run ends at test accuracy 0.93-0.94.

Prints ``loss_first`` and ``loss_last`` (means of the first and last tenth of the batch losses),
``train_acc`` and ``test_acc``. Writes ``ch05_train_neuralnet.png``: the batch loss per iteration
and the accuracies per epoch.

    python examples/book/ch05_train_neuralnet.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import sys

import numpy as np

from fastnn.book.two_layer_net import TwoLayerNet
from fastnn.datasets import load_digits

from _book import new_figure, parse_args, save


def main(argv=None):
    args = parse_args(__doc__, argv)
    (x_train, t_train), (x_test, t_test) = load_digits(one_hot_label=True)

    network = TwoLayerNet(input_size=64, hidden_size=50, output_size=10)

    iters_num = 600 if args.quick else 10000
    train_size = x_train.shape[0]
    batch_size = 100
    learning_rate = 0.1

    train_loss_list = []
    train_acc_list = []
    test_acc_list = []
    # the book's train_size / batch_size is whole for MNIST's 60000 images; for 1437 digits ``i % 14.37``
    # is 0 only at i = 0, so an epoch here is the whole number of batches
    iter_per_epoch = max(train_size // batch_size, 1)

    for i in range(iters_num):
        batch_mask = np.random.choice(train_size, batch_size)
        x_batch = x_train[batch_mask]
        t_batch = t_train[batch_mask]

        grad = network.gradient(x_batch, t_batch)

        for key in ("W1", "b1", "W2", "b2"):
            network.params[key] -= learning_rate * grad[key]

        loss = float(network.loss(x_batch, t_batch))
        train_loss_list.append(loss)

        if i % iter_per_epoch == 0:
            train_acc = network.accuracy(x_train, t_train)
            test_acc = network.accuracy(x_test, t_test)
            train_acc_list.append(train_acc)
            test_acc_list.append(test_acc)
            print(f"epoch {i // iter_per_epoch:3d}: train acc, test acc | {train_acc:.4f}, {test_acc:.4f}")

    train_acc = network.accuracy(x_train, t_train)
    test_acc = network.accuracy(x_test, t_test)
    tenth = max(1, iters_num // 10)
    print(f"loss_first {np.mean(train_loss_list[:tenth]):.4f}")
    print(f"loss_last {np.mean(train_loss_list[-tenth:]):.4f}")
    print(f"train_acc {train_acc:.4f}")
    print(f"test_acc {test_acc:.4f}")

    fig = new_figure(11, 4)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(np.arange(1, iters_num + 1), train_loss_list, lw=0.8)
    ax.set(xlabel="iteration", ylabel="loss", title="batch loss (backpropagation)")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    x = np.arange(len(train_acc_list))
    ax.plot(x, train_acc_list, marker="o", label="train acc")
    ax.plot(x, test_acc_list, marker="s", label="test acc", linestyle="--")
    ax.set(xlabel="epochs", ylabel="accuracy", ylim=(0, 1.0))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.suptitle(f"ch05 TwoLayerNet 64-50-10 (ReLU), SGD lr {learning_rate}, {iters_num} iterations")
    fig.tight_layout()
    print(f"wrote {save(fig, args.out, 'ch05_train_neuralnet.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

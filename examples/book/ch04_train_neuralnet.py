"""Chapter 4, ``train_neuralnet.py``: the sigmoid ``TwoLayerNet`` trained by numerical gradients.

The book's loop on chapter 4's network (``fastnn.book.ch04.TwoLayerNet``: no layers, ``predict``
gives softmax probabilities): draw a mini-batch of 100 with ``np.random.choice``, take
``network.numerical_gradient(x_batch, t_batch)`` (central differences, two forward passes per
parameter), step ``params[key] -= learning_rate * grad[key]``, record the batch loss, and at each
epoch the train and test accuracy. Labels are one-hot, as the book loads them.

Numerical gradients are slow (the book's own run uses ``gradient``, the hand-written backward pass,
to get through 10000 iterations), so this trains on a small subset of the 8x8 digits: with
``--quick`` 300 training images, 64-10-10 and 50 iterations (1520 loss evaluations a step, about
4 s); without it 1000 images, the book's hidden size 50 and 500 iterations (several minutes).
With so few steps the book's settings (``weight_init_std=0.01``, learning rate 0.1) leave the
loss near ln 10 on the sigmoid plateau, so the network is built with ``weight_init_std=0.1`` (a
constructor argument the book has) and trained with learning rate 3.0.

Prints ``loss_first`` and ``loss_last`` (means of the first and last tenth of the batch losses),
``train_acc`` and ``test_acc`` at the end. Writes ``ch04_train_neuralnet.png``: the batch loss
per iteration, and the train and test accuracy per epoch.

    python examples/book/ch04_train_neuralnet.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import sys

import numpy as np

from fastnn.book.ch04 import TwoLayerNet
from fastnn.datasets import load_digits

from _book import new_figure, parse_args, save


def main(argv=None):
    args = parse_args(__doc__, argv)
    (x_train, t_train), (x_test, t_test) = load_digits(one_hot_label=True)
    train_samples, hidden_size, iters_num = (300, 10, 50) if args.quick else (1000, 50, 500)
    x_train, t_train = x_train[:train_samples], t_train[:train_samples]

    network = TwoLayerNet(input_size=64, hidden_size=hidden_size, output_size=10, weight_init_std=0.1)

    train_size = x_train.shape[0]
    batch_size = 100
    learning_rate = 3.0

    train_loss_list = []
    train_acc_list = []
    test_acc_list = []
    iter_per_epoch = max(train_size / batch_size, 1)

    for i in range(iters_num):
        batch_mask = np.random.choice(train_size, batch_size)
        x_batch = x_train[batch_mask]
        t_batch = t_train[batch_mask]

        grad = network.numerical_gradient(x_batch, t_batch)

        for key in ("W1", "b1", "W2", "b2"):
            network.params[key] -= learning_rate * grad[key]

        loss = float(network.loss(x_batch, t_batch))
        train_loss_list.append(loss)

        if i % iter_per_epoch == 0:
            train_acc = network.accuracy(x_train, t_train)
            test_acc = network.accuracy(x_test, t_test)
            train_acc_list.append(train_acc)
            test_acc_list.append(test_acc)
            print(f"iteration {i:4d}: loss {loss:.4f} | train acc, test acc | {train_acc:.4f}, {test_acc:.4f}")

    train_acc = network.accuracy(x_train, t_train)
    test_acc = network.accuracy(x_test, t_test)
    tenth = max(1, iters_num // 10)
    print(f"loss_first {np.mean(train_loss_list[:tenth]):.4f}")
    print(f"loss_last {np.mean(train_loss_list[-tenth:]):.4f}")
    print(f"train_acc {train_acc:.4f}")
    print(f"test_acc {test_acc:.4f}")

    fig = new_figure(11, 4)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(np.arange(1, iters_num + 1), train_loss_list)
    ax.set(xlabel="iteration", ylabel="loss", title="batch loss (numerical gradient)")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    x = np.arange(len(train_acc_list))
    ax.plot(x, train_acc_list, marker="o", label="train acc")
    ax.plot(x, test_acc_list, marker="s", label="test acc", linestyle="--")
    ax.set(xlabel="epochs", ylabel="accuracy", ylim=(0, 1.0))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.suptitle(f"ch04 TwoLayerNet 64-{hidden_size}-10 (sigmoid) on {train_size} digits, lr {learning_rate}")
    fig.tight_layout()
    print(f"wrote {save(fig, args.out, 'ch04_train_neuralnet.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

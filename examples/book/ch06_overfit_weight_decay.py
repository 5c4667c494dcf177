"""Chapter 6, ``overfit_weight_decay.py``: over-fitting on 300 images, and L2 weight decay against it.

The book's experiment on ``fastnn.book``: a deep ``MultiLayerNet(input_size, hidden_size_list=[100] * 6,
output_size=10, weight_decay_lambda=...)`` (ReLU, He initial weights) trained with the book's
``SGD(lr=0.01)`` on mini-batches of 100 drawn from only the first 300 training digits, the train and
test accuracy (360 test digits) recorded once an epoch. The book runs the script twice, editing
``weight_decay_lambda`` between 0 and 0.1; this runs both settings on the same batches (the same
initial weights too: ``np.random.seed`` is reset before each network is built) and draws them side
by side. ``--quick`` trains 100 epochs, the full run the book's 201.

Without decay the network fits its 300 training digits (95-99 % after 100 epochs, 99.7 % after
201) while the test accuracy stays near 87 %. With ``weight_decay_lambda=0.1`` (the book's
``0.5 * lambda * sum(W^2)`` on every ``W``) the sum of squared weights stays at about 55 % of the
undecayed one and the training accuracy at 80-89 %. On MNIST the book sees the train-test gap
narrow; on the 8x8 digits, with 64 inputs, lambda 0.1 is strong enough to cost test accuracy too
(about 0.78 against 0.87), and the gap narrows for most seeds but not all (averaged over the last
10 of 100 epochs: seed 0 0.10 -> 0.06, seed 1 0.10 -> 0.11). ``examples/overfitting.py`` does this
with ``fastnn.models`` and a weaker L2.

Prints the book's epoch lines, then ``final LAMBDA train_acc VALUE``, ``final LAMBDA test_acc VALUE``
and ``final LAMBDA sum_w2 VALUE`` (sum of squared weights) for each lambda. Writes
``ch06_overfit_weight_decay.png``.

    python examples/book/ch06_overfit_weight_decay.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import sys

import numpy as np

from fastnn.book.multi_layer_net import MultiLayerNet
from fastnn.book.optimizer import SGD
from fastnn.datasets import load_digits

from _book import new_figure, parse_args, save, to_host


def main(argv=None):
    args = parse_args(__doc__, argv)
    (x_train, t_train), (x_test, t_test) = load_digits()
    x_train = x_train[:300]
    t_train = t_train[:300]

    lambdas = [0, 0.1]  # the book's two settings: weight decay off, then weight_decay_lambda = 0.1
    networks, optimizers = {}, {}
    for weight_decay_lambda in lambdas:
        np.random.seed(args.seed)  # the same initial weights for both
        networks[weight_decay_lambda] = MultiLayerNet(input_size=64, hidden_size_list=[100, 100, 100, 100, 100, 100],
                                                      output_size=10, weight_decay_lambda=weight_decay_lambda)
        optimizers[weight_decay_lambda] = SGD(lr=0.01)

    max_epochs = 100 if args.quick else 201
    train_size = x_train.shape[0]
    batch_size = 100

    train_acc_list = {lam: [] for lam in lambdas}
    test_acc_list = {lam: [] for lam in lambdas}
    iter_per_epoch = max(train_size / batch_size, 1)
    epoch_cnt = 0

    for i in range(1000000000):
        batch_mask = np.random.choice(train_size, batch_size)
        x_batch = x_train[batch_mask]
        t_batch = t_train[batch_mask]

        for lam, network in networks.items():
            grads = network.gradient(x_batch, t_batch)
            optimizers[lam].update(network.params, grads)

        if i % iter_per_epoch == 0:
            for lam, network in networks.items():
                train_acc = network.accuracy(x_train, t_train)
                test_acc = network.accuracy(x_test, t_test)
                train_acc_list[lam].append(train_acc)
                test_acc_list[lam].append(test_acc)
                print("lambda " + str(lam) + ", epoch:" + str(epoch_cnt) + ", train acc:" + str(train_acc)
                      + ", test acc:" + str(test_acc))

            epoch_cnt += 1
            if epoch_cnt >= max_epochs:
                break

    for lam, network in networks.items():
        sum_w2 = sum(float((to_host(w) ** 2).sum()) for key, w in network.params.items() if key.startswith("W"))
        print(f"final {lam} train_acc {train_acc_list[lam][-1]:.4f}")
        print(f"final {lam} test_acc {test_acc_list[lam][-1]:.4f}")
        print(f"final {lam} sum_w2 {sum_w2:.2f}")

    fig = new_figure(11, 4.2)
    x = np.arange(max_epochs)
    for col, lam in enumerate(lambdas):
        ax = fig.add_subplot(1, 2, col + 1)
        ax.plot(x, train_acc_list[lam], marker="o", label="train", markevery=10)
        ax.plot(x, test_acc_list[lam], marker="s", label="test", markevery=10)
        ax.set(xlabel="epochs", ylabel="accuracy", ylim=(0, 1.0),
               title=f"weight_decay_lambda = {lam}: train {train_acc_list[lam][-1]:.3f}, "
                     f"test {test_acc_list[lam][-1]:.3f}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle("MultiLayerNet 64-[100x6]-10 on 300 digits, SGD lr 0.01")
    fig.tight_layout()
    print(f"wrote {save(fig, args.out, 'ch06_overfit_weight_decay.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chapter 6, ``batch_norm_test.py``: training accuracy with and without batch normalization, by weight scale.

The book's experiment on ``fastnn.book``: for each initial weight scale ``w`` (the book's
``np.logspace(0, -4, num=16)``; ``--quick``: 1, 0.1, 0.01, 0.001) two
``MultiLayerNetExtend(input_size, hidden_size_list=[100] * 5, output_size=10, weight_init_std=w)``
are trained side by side on the same mini-batches of 100 from the first 1000 training digits with
the book's ``SGD(lr=0.01)``, one with ``use_batchnorm=True``; the training accuracy (on those 1000)
is recorded once an epoch for ``max_epochs`` = 20 epochs (``--quick``: 10).

``examples/init_and_batchnorm.py`` draws the training *loss* of the same setting with
``fastnn.networks``; this is the book's own script, on the book's classes, with its accuracy
curves. With batch norm the network learns at every scale; without it only scales near He's
(``sqrt(2/100)`` ~ 0.14) learn, large ones blow up and small ones stay at chance.

Prints the book's ``epoch:N | acc - bn_acc`` lines, then ``final_acc SCALE plain VALUE`` and
``final_acc SCALE batchnorm VALUE`` per scale. Writes ``ch06_batch_norm_test.png``.

    python examples/book/ch06_batch_norm_test.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import math
import sys

import numpy as np

from fastnn.book.multi_layer_net_extend import MultiLayerNetExtend
from fastnn.book.optimizer import SGD
from fastnn.datasets import load_digits

from _book import new_figure, parse_args, save

batch_size = 100
learning_rate = 0.01


def __train(weight_init_std, x_train, t_train, max_epochs):
    bn_network = MultiLayerNetExtend(input_size=64, hidden_size_list=[100, 100, 100, 100, 100], output_size=10,
                                     weight_init_std=weight_init_std, use_batchnorm=True)
    network = MultiLayerNetExtend(input_size=64, hidden_size_list=[100, 100, 100, 100, 100], output_size=10,
                                  weight_init_std=weight_init_std)
    optimizer = SGD(lr=learning_rate)

    train_acc_list = []
    bn_train_acc_list = []
    train_size = x_train.shape[0]
    iter_per_epoch = max(train_size / batch_size, 1)
    epoch_cnt = 0

    for i in range(1000000000):
        batch_mask = np.random.choice(train_size, batch_size)
        x_batch = x_train[batch_mask]
        t_batch = t_train[batch_mask]

        for _network in (bn_network, network):
            grads = _network.gradient(x_batch, t_batch)
            optimizer.update(_network.params, grads)

        if i % iter_per_epoch == 0:
            train_acc = network.accuracy(x_train, t_train)
            bn_train_acc = bn_network.accuracy(x_train, t_train)
            train_acc_list.append(train_acc)
            bn_train_acc_list.append(bn_train_acc)

            print("epoch:" + str(epoch_cnt) + " | " + str(train_acc) + " - " + str(bn_train_acc))

            epoch_cnt += 1
            if epoch_cnt >= max_epochs:
                break

    return train_acc_list, bn_train_acc_list


def main(argv=None):
    args = parse_args(__doc__, argv)
    (x_train, t_train), (x_test, t_test) = load_digits()
    x_train, t_train = x_train[:1000], t_train[:1000]

    weight_scale_list = np.logspace(0, -3, num=4) if args.quick else np.logspace(0, -4, num=16)
    max_epochs = 10 if args.quick else 20
    x = np.arange(max_epochs)
    cols = 4
    rows = math.ceil(len(weight_scale_list) / cols)
    fig = new_figure(3.2 * cols, 2.6 * rows + 0.6)
    finals = []
    # an overflowing network without batch norm (w = 1) is part of the picture, as in the book
    with np.errstate(over="ignore", invalid="ignore"):
        for i, w in enumerate(weight_scale_list):
            print("============== " + str(i + 1) + "/" + str(len(weight_scale_list)) + " ==============")
            train_acc_list, bn_train_acc_list = __train(w, x_train, t_train, max_epochs)
            finals.append((w, train_acc_list[-1], bn_train_acc_list[-1]))

            ax = fig.add_subplot(rows, cols, i + 1)
            ax.set_title("W:" + f"{w:.4g}", fontsize=9)
            ax.plot(x, bn_train_acc_list, label="Batch Normalization")
            ax.plot(x, train_acc_list, linestyle="--", label="Normal(without BatchNorm)")
            ax.set_ylim(0, 1.0)
            if i % cols:
                ax.set_yticklabels([])
            else:
                ax.set_ylabel("accuracy")
            if i >= len(weight_scale_list) - cols:
                ax.set_xlabel("epochs")
            else:
                ax.set_xticklabels([])
            ax.grid(alpha=0.3)
            if i == len(weight_scale_list) - 1:
                ax.legend(loc="lower right", fontsize=7)
    for w, acc, bn_acc in finals:
        print(f"final_acc {w:.4g} plain {acc:.4f}")
        print(f"final_acc {w:.4g} batchnorm {bn_acc:.4f}")
    fig.suptitle(f"MultiLayerNetExtend 64-[100x5]-10 on 1000 digits, SGD lr {learning_rate}: "
                 "training accuracy with and without batch norm")
    fig.tight_layout()
    print(f"wrote {save(fig, args.out, 'ch06_batch_norm_test.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

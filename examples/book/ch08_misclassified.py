"""Chapter 8, ``misclassified_mnist.py``: the test digits the trained ``DeepConvNet`` gets wrong.

As the book: ``DeepConvNet()`` loads its trained weights (``network.load_params``, from
``OUT/deep_convnet_params.pkl`` written by ``ch08_train_deepnet.py``, whose training runs first
when the file is missing), predicts the test images in batches of 100 with
``network.predict(tx, train_flg=False)`` and ``np.argmax``, and shows the first 20 it gets wrong
with their ``(label, inference)`` pairs. The images are the 360 test digits as 28x28
(``_book.mnist_like``). The book's loop runs ``int(x_test.shape[0] / batch_size)`` batches, which
for MNIST's 10000 covers every image; here the last partial batch (60 of 360) is predicted too.

Prints ``test_acc``, ``misclassified COUNT`` and the book's ``{view index: (label, inference), ...}`` dict. Writes
``ch08_misclassified.png``.

    python examples/book/ch08_misclassified.py [--quick] [--out DIR] [--backend NAME] [--seed N] [--params FILE]
"""
from __future__ import annotations

import os
import sys

import numpy as np

from fastnn.book.deep_convnet import DeepConvNet

from _book import new_figure, parse_args, save, to_host
from ch08_train_deepnet import PARAMS, load_mnist_like, train_deepnet


def main(argv=None):
    args = parse_args(__doc__, argv, params=PARAMS)
    _, (x_test, t_test) = load_mnist_like()

    network = DeepConvNet()
    if not os.path.exists(args.params):
        print(f"{args.params} not found: training DeepConvNet first (ch08_train_deepnet.py)")
        train_deepnet(network, args.quick)
        network.save_params(args.params)
    network.load_params(args.params)

    print("calculating test accuracy ... ")
    classified_ids = []
    acc = 0.0
    batch_size = 100
    for i in range(0, x_test.shape[0], batch_size):
        tx = x_test[i:i + batch_size]
        tt = t_test[i:i + batch_size]
        y = to_host(network.predict(tx, train_flg=False))
        y = np.argmax(y, axis=1)
        classified_ids.append(y)
        acc += np.sum(y == tt)
    acc = acc / x_test.shape[0]
    print(f"test_acc {acc:.4f}")

    classified_ids = np.concatenate(classified_ids)
    wrong = np.flatnonzero(classified_ids != t_test)
    print(f"misclassified {len(wrong)}")

    max_view = 20
    fig = new_figure(8, 7.4)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, hspace=0.35, wspace=0.1)
    mis_pairs = {}
    for current_view, i in enumerate(wrong[:max_view], start=1):
        ax = fig.add_subplot(4, 5, current_view, xticks=[], yticks=[])
        ax.imshow(x_test[i].reshape(28, 28), cmap="gray_r", interpolation="nearest")
        mis_pairs[current_view] = (int(t_test[i]), int(classified_ids[i]))
        ax.set_title(f"{current_view}: label {t_test[i]}, got {classified_ids[i]}", fontsize=9)
    fig.suptitle(f"DeepConvNet: first {min(max_view, len(wrong))} of {len(wrong)} misclassified test digits "
                 f"(test accuracy {acc:.3f})")

    print("======= misclassified result =======")
    print("{view index: (label, inference), ...}")
    print(mis_pairs)
    print(f"wrote {save(fig, args.out, 'ch08_misclassified.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

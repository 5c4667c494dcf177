"""Chapter 7, ``visualize_filter.py`` (with ``train_convnet.py``): the first layer's filters before and after training.

The book's ``SimpleConvNet()`` with its defaults (``input_dim=(1, 28, 28)``, 30 filters of 5x5,
hidden 100, ``weight_init_std=0.01``; ``fastnn.book.simple_convnet``), shown first as initialised,
then after training. The book reads the trained weights from ``params.pkl``, written by its
``train_convnet.py``; here the training runs first, as ``train_convnet.py`` does it: the book's
``Trainer`` with ``optimizer='Adam'``, ``optimizer_param={'lr': 0.001}``, mini-batches of 100 and
``evaluate_sample_num_per_epoch=1000``, for 20 epochs (``--quick``: 3). The images are the 8x8
digits resized to 20x20 and centred in 28x28 as MNIST's are (``_book.mnist_like``), the first 1400
of them (``Trainer``'s ``i % (train_size / batch_size) == 0`` marks epochs only when the batch size
divides the training set, as MNIST's 60000 does). The trained weights are saved with
``network.save_params`` to ``OUT/simple_convnet_params.pkl``, which ``ch07_apply_filter.py`` reads.

Random filters are noise; trained ones turn into smooth blobs and edge detectors, so neighbouring
taps of a filter become correlated. Prints ``test_acc``, ``neighbour_corr initial VALUE`` and
``neighbour_corr trained VALUE`` (the mean correlation between horizontally and vertically
adjacent taps over the 30 filters). Writes ``ch07_filters.png``.

    python examples/book/ch07_visualize_filter.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import sys

from fastnn.book.simple_convnet import SimpleConvNet
from fastnn.book.trainer import Trainer
from fastnn.datasets import load_digits

from _book import filter_grid, mnist_like, new_figure, parse_args, save, to_host

PARAMS = "simple_convnet_params.pkl"


def train_convnet(network, quick):
    """The book's ``train_convnet.py`` on the 28x28 digits; returns the test accuracy."""
    (x_train, t_train), (x_test, t_test) = load_digits(flatten=False)
    x_train, x_test = mnist_like(x_train[:1400]), mnist_like(x_test)
    t_train = t_train[:1400]
    trainer = Trainer(network, x_train, t_train, x_test, t_test,
                      epochs=3 if quick else 20, mini_batch_size=100,
                      optimizer="Adam", optimizer_param={"lr": 0.001},
                      evaluate_sample_num_per_epoch=1000, verbose=False)
    trainer.train()
    for epoch, (train_acc, test_acc) in enumerate(zip(trainer.train_acc_list, trainer.test_acc_list), start=1):
        print(f"=== epoch:{epoch}, train acc:{train_acc}, test acc:{test_acc} ===")
    return network.accuracy(x_test, t_test)


def neighbour_corr(filters):
    """Mean correlation of horizontally and vertically adjacent taps, over all filters."""
    w = filters[:, 0]
    w = (w - w.mean(axis=(1, 2), keepdims=True)) / (w.std(axis=(1, 2), keepdims=True) + 1e-12)
    return float(0.5 * ((w[:, :, 1:] * w[:, :, :-1]).mean() + (w[:, 1:, :] * w[:, :-1, :]).mean()))


def main(argv=None):
    args = parse_args(__doc__, argv, params=PARAMS)
    network = SimpleConvNet()
    initial = to_host(network.params["W1"]).copy()  # random initial weights

    test_acc = train_convnet(network, args.quick)
    network.save_params(args.params)
    trained = to_host(network.params["W1"]).copy()  # trained weights
    print(f"saved {args.params}")
    print(f"test_acc {test_acc:.4f}")
    print(f"neighbour_corr initial {neighbour_corr(initial):.3f}")
    print(f"neighbour_corr trained {neighbour_corr(trained):.3f}")

    fig = new_figure(10, 6)
    filter_grid(fig, initial, 4, 8, "random initial weights (std 0.01)", top=0.93, bottom=0.53, left=0.02, right=0.48)
    filter_grid(fig, trained, 4, 8, f"after training (test accuracy {test_acc:.3f})", top=0.93, bottom=0.53,
                left=0.52, right=0.98)
    ax = fig.add_axes([0.08, 0.08, 0.84, 0.36])
    ax.hist([initial.ravel(), trained.ravel()], bins=40, label=["initial", "trained"])
    ax.set(xlabel="weight", ylabel="count", title="SimpleConvNet conv1 weights (30 filters, 5x5)")
    ax.legend()
    print(f"wrote {save(fig, args.out, 'ch07_filters.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

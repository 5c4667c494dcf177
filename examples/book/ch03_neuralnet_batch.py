"""Chapter 3, ``neuralnet_mnist.py`` / ``neuralnet_mnist_batch.py``: inference with a 3-layer sigmoid network.

The book's forward pass, written out with ``np.dot`` and ``fastnn.book.functions``' ``sigmoid`` and
``softmax`` (the names the book's script imports from ``common.functions``): ``x -> sigmoid(x W1 + b1)
-> sigmoid(. W2 + b2) -> softmax(. W3 + b3)`` with the book's layer sizes 50 and 100, run one image
at a time and then in batches of 100, and the accuracy counted with ``np.argmax``.

The book loads trained weights from ``sample_weight.pkl`` (784-50-100-10, trained on MNIST). That
file does not fit the 8x8 digits, so ``init_network`` makes the weights here instead: it trains a
``fastnn.book.multi_layer_net.MultiLayerNet(64, [50, 100], 10, activation="sigmoid")`` (the same
Affine-Sigmoid-Affine-Sigmoid-Affine stack) with the book's ``Adam`` on the 1437 training digits,
and hands over its ``params`` as the book's dict ``{'W1', 'b1', ..., 'b3'}``.

Prints ``accuracy_single``, ``accuracy_batch`` (the same number, as in the book), the seconds each
took, and ``max_abs_diff_vs_network`` (this hand-written forward pass against
``softmax(network.predict(x))``). Writes ``ch03_predictions.png``: the first 30 test digits with
the predicted class (red where wrong).

    python examples/book/ch03_neuralnet_batch.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import sys
import time

import numpy as np

from fastnn.book.functions import sigmoid, softmax
from fastnn.book.multi_layer_net import MultiLayerNet  # only to make the weights (see init_network)
from fastnn.book.optimizer import Adam
from fastnn.datasets import load_digits

from _book import new_figure, parse_args, save, to_host


def get_data():
    (x_train, t_train), (x_test, t_test) = load_digits()
    return (x_train, t_train), (x_test, t_test)


def init_network(x_train, t_train, iters):
    """The weights the book reads from ``sample_weight.pkl``, trained here instead (see the module docstring)."""
    net = MultiLayerNet(input_size=64, hidden_size_list=[50, 100], output_size=10,
                        activation="sigmoid", weight_init_std="sigmoid")
    optimizer = Adam(lr=0.01)
    for _ in range(iters):
        batch_mask = np.random.choice(x_train.shape[0], 100)
        grads = net.gradient(x_train[batch_mask], t_train[batch_mask])
        optimizer.update(net.params, grads)
    network = {key: to_host(value).copy() for key, value in net.params.items()}
    return network, net


def predict(network, x):
    W1, W2, W3 = network["W1"], network["W2"], network["W3"]
    b1, b2, b3 = network["b1"], network["b2"], network["b3"]
    a1 = np.dot(x, W1) + b1
    z1 = sigmoid(a1)
    a2 = np.dot(z1, W2) + b2
    z2 = sigmoid(a2)
    a3 = np.dot(z2, W3) + b3
    y = softmax(a3)
    return y


def main(argv=None):
    args = parse_args(__doc__, argv)
    (x_train, t_train), (x, t) = get_data()
    x = x.astype(np.float64)  # the book's weights and images are float64
    network, net = init_network(x_train, t_train, iters=150 if args.quick else 1000)
    print("sample_weight: trained here with fastnn.book MultiLayerNet(64, [50, 100], 10, sigmoid), "
          "Adam lr 0.01 (the book loads sample_weight.pkl)")

    start = time.perf_counter()
    accuracy_cnt = 0
    for i in range(len(x)):  # neuralnet_mnist.py: one image at a time
        y = predict(network, x[i])
        p = np.argmax(y)
        if p == t[i]:
            accuracy_cnt += 1
    single_s = time.perf_counter() - start
    accuracy_single = float(accuracy_cnt) / len(x)

    start = time.perf_counter()
    batch_size = 100
    accuracy_cnt = 0
    predictions = []
    for i in range(0, len(x), batch_size):  # neuralnet_mnist_batch.py
        x_batch = x[i:i + batch_size]
        y_batch = predict(network, x_batch)
        p = np.argmax(y_batch, axis=1)
        predictions.append(p)
        accuracy_cnt += np.sum(p == t[i:i + batch_size])
    batch_s = time.perf_counter() - start
    accuracy_batch = float(accuracy_cnt) / len(x)
    predictions = np.concatenate(predictions)

    diff = float(np.abs(predict(network, x) - to_host(softmax(net.predict(x)))).max())
    print(f"accuracy_single {accuracy_single:.4f}")
    print(f"accuracy_batch {accuracy_batch:.4f}")
    print(f"seconds_single {single_s:.4f}")
    print(f"seconds_batch {batch_s:.4f}")
    print(f"max_abs_diff_vs_network {diff:.3e}")

    fig = new_figure(10, 4.4)
    for i in range(30):
        ax = fig.add_subplot(3, 10, i + 1, xticks=[], yticks=[])
        ax.imshow(x[i].reshape(8, 8), cmap="gray_r", interpolation="nearest")
        ax.set_title(f"{predictions[i]}", color="black" if predictions[i] == t[i] else "red", fontsize=11)
    fig.suptitle(f"3-layer sigmoid network (64-50-100-10), batch inference: test accuracy {accuracy_batch:.3f}")
    fig.tight_layout()
    print(f"wrote {save(fig, args.out, 'ch03_predictions.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

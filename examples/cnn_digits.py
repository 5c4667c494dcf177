"""A small CNN on the 8x8 digits, against the Keras example's MLP: test accuracy and training curves.

The CNN (NCHW layout, so inputs are ``(N, 1, 8, 8)`` from ``load_digits(flatten=False)``)::

    Conv2D(16, 3, padding="same", relu) -> MaxPooling2D(2) -> Conv2D(32, 3, padding="same", relu)
    -> Flatten -> Dense(10, softmax)

trained 30 epochs with RMSprop (lr 0.002, batch 32); the MLP is Keras's example (Dense 64 relu,
Dropout 0.2, Dense 64 relu, Dropout 0.2, Dense 10 softmax; RMSprop lr 0.002, 60 epochs, batch 32).
Over seeds 0-9 the CNN reaches 0.975 / 0.980 (min / mean) test accuracy, the MLP 0.969 / 0.974.
Writes ``cnn_digits.png`` (loss and accuracy per epoch, train and test, for both models, via
``History.plot``'s layout) and prints the two accuracies.

    python examples/cnn_digits.py [--quick] [--out DIR] [--backend NAME]
"""
from __future__ import annotations

import os
import sys

import numpy

from fastnn.datasets import load_digits
from fastnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from fastnn.models import Sequential
from fastnn.optimizers import RMSprop

from _common import new_figure, parse_args, save


def build_cnn(seed=0):
    model = Sequential([Conv2D(16, 3, padding="same", activation="relu", input_shape=(1, 8, 8)), MaxPooling2D(2),
                        Conv2D(32, 3, padding="same", activation="relu"), Flatten(), Dense(10, "softmax")],
                       seed=seed, name="cnn")
    model.compile(optimizer=RMSprop(lr=0.002), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def build_mlp(seed=0):
    model = Sequential([Dense(64, "relu", input_shape=(64,)), Dropout(0.2), Dense(64, "relu"), Dropout(0.2),
                        Dense(10, "softmax")], seed=seed, name="mlp")
    model.compile(optimizer=RMSprop(lr=0.002), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(argv=None):
    args = parse_args(__doc__, argv)
    cnn_epochs, mlp_epochs = (3, 6) if args.quick else (30, 60)
    (x_img, t_train), (x_img_test, t_test) = load_digits(flatten=False)
    x_flat, x_flat_test = x_img.reshape(len(x_img), -1), x_img_test.reshape(len(x_img_test), -1)

    cnn, mlp = build_cnn(), build_mlp()
    runs = {"CNN": (cnn, x_img, x_img_test, cnn_epochs), "MLP": (mlp, x_flat, x_flat_test, mlp_epochs)}
    histories, accuracies = {}, {}
    for name, (model, x, x_test, epochs) in runs.items():
        history = model.fit(x, t_train, batch_size=32, epochs=epochs, verbose=0, validation_data=(x_test, t_test))
        histories[name] = history
        accuracies[name] = model.evaluate(x_test, t_test, verbose=0)[1]

    # each model's own curves, as History.plot draws them
    for name, history in histories.items():
        history.plot(os.path.join(args.out, f"cnn_digits_{name.lower()}_history.png"),
                     title=f"{name} on the 8x8 digits")
    fig = new_figure(11, 4)
    for i, key in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, history in histories.items():
            h = history.history
            epochs = numpy.arange(1, len(h[key]) + 1)
            line, = ax.plot(epochs, h[key], label=f"{name} train")
            ax.plot(epochs, h[f"val_{key}"], ls="--", color=line.get_color(), label=f"{name} test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"CNN ({cnn.count_params():,} params, test {accuracies['CNN']:.3f}) vs MLP "
                 f"({mlp.count_params():,} params, test {accuracies['MLP']:.3f}), backend {args.ops.name}")
    fig.tight_layout()
    out = save(fig, args.out, "cnn_digits.png")
    print(f"cnn_digits: wrote {out}; test accuracy CNN {accuracies['CNN']:.4f} ({cnn_epochs} epochs) vs "
          f"MLP {accuracies['MLP']:.4f} ({mlp_epochs} epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

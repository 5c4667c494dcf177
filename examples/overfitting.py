"""Over-fitting, and what Dropout and L2 weight decay do to it: train and test accuracy per epoch.

Reproduces the "from scratch" book's over-fitting experiment with ``fastnn.models.Sequential``:
a deep network (6 hidden ``Dense(100, "relu")`` layers) trained by SGD on only 300 of the
training digits from ``fastnn.datasets.load_digits`` reaches 100 % on them while the 360 test
digits (``validation_data``) stay well below. The same network is trained three times: as is,
with ``Dropout(0.2)`` after each hidden layer, and with ``kernel_regularizer=l2(...)`` on every
weight matrix. Writes ``overfitting.png``: train and test accuracy per epoch for each setting
(top), then the gap between them and the sum of squared weights per epoch for all three (bottom).

On the 8x8 digits the gap is modest (about 7 points without regularization); Dropout closes most
of it, while L2 at this strength keeps the weights small with little change to the accuracies.

    python examples/overfitting.py [--quick] [--out DIR] [--backend NAME]
"""
from __future__ import annotations

import sys

import numpy

from fastnn.callbacks import LambdaCallback
from fastnn.datasets import load_digits
from fastnn.layers import Dense, Dropout
from fastnn.models import Sequential
from fastnn.optimizers import SGD
from fastnn.regularizers import l2

from _common import new_figure, parse_args, save

TRAIN_SAMPLES = 300
HIDDEN = [100] * 6
LR = 0.05
BATCH = 100
DROPOUT = 0.2
L2 = 0.005  # Keras's l2: c * sum(W^2); the book's weight_decay_lambda = 2 c = 0.01


def build(dropout=0.0, regularizer=None, seed=0):
    """The over-fitting MLP: 64 -> 6 x 100 (ReLU, He init) -> 10 (softmax)."""
    layers = []
    for i, units in enumerate(HIDDEN):
        layers.append(Dense(units, "relu", input_shape=(64,) if i == 0 else None,
                            kernel_initializer="he_normal", kernel_regularizer=regularizer))
        if dropout:
            layers.append(Dropout(dropout))
    layers.append(Dense(10, "softmax", kernel_initializer="he_normal", kernel_regularizer=regularizer))
    model = Sequential(layers, seed=seed)
    model.compile(optimizer=SGD(lr=LR), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


SETTINGS = {
    "no regularization": {},
    f"Dropout({DROPOUT})": {"dropout": DROPOUT},
    f"L2 (l2({L2}))": {"regularizer": l2(L2)},
}


def main(argv=None):
    args = parse_args(__doc__, argv)
    epochs = 30 if args.quick else 300
    (x_train, t_train), (x_test, t_test) = load_digits()
    x_train, t_train = x_train[:TRAIN_SAMPLES], t_train[:TRAIN_SAMPLES]

    histories, norms = {}, {}
    for name, kwargs in SETTINGS.items():
        model = build(**kwargs)
        sq = norms[name] = []
        record = LambdaCallback(on_epoch_end=lambda epoch, logs, model=model, sq=sq: sq.append(
            sum(float((w.astype(numpy.float64) ** 2).sum()) for w in model.get_weights() if w.ndim == 2)))
        history = model.fit(x_train, t_train, batch_size=BATCH, epochs=epochs, verbose=0,
                            validation_data=(x_test, t_test), seed=0, callbacks=[record])
        histories[name] = history.history

    fig = new_figure(15, 9)
    grid = fig.add_gridspec(2, 6)
    x = numpy.arange(1, epochs + 1)
    for col, (name, h) in enumerate(histories.items()):
        ax = fig.add_subplot(grid[0, 2 * col:2 * col + 2])
        ax.plot(x, h["accuracy"], label="train")
        ax.plot(x, h["val_accuracy"], label="test")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}\ntrain {h['accuracy'][-1]:.3f}, test {h['val_accuracy'][-1]:.3f}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    gap = fig.add_subplot(grid[1, :3])
    weights = fig.add_subplot(grid[1, 3:])
    for name, h in histories.items():
        gap.plot(x, numpy.array(h["accuracy"]) - numpy.array(h["val_accuracy"]), label=name)
        weights.plot(x, norms[name], label=name)
    gap.axhline(0, color="grey", lw=0.6)
    gap.set_title("train accuracy - test accuracy")
    gap.set_xlabel("epoch")
    gap.grid(alpha=0.3)
    gap.legend()
    weights.set_title("sum of squared weights (every W)")
    weights.set_xlabel("epoch")
    weights.grid(alpha=0.3)
    weights.legend()
    fig.suptitle(f"Over-fitting: {len(HIDDEN)} x {HIDDEN[0]} ReLU MLP, {TRAIN_SAMPLES} training digits, "
                 f"SGD lr {LR}, {epochs} epochs (backend {args.ops.name})")
    fig.tight_layout()
    out = save(fig, args.out, "overfitting.png")

    summary = "; ".join(f"{k}: train {h['accuracy'][-1]:.3f} test {h['val_accuracy'][-1]:.3f}"
                        for k, h in histories.items())
    print(f"overfitting: wrote {out}; after {epochs} epochs: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Learning rate too small, about right, too large: the loss curves of one small model.

Reproduces the classic figure of the effect of the learning rate: the same
``fastnn.models.Sequential`` (64 -> ``Dense(64, "relu")`` -> ``Dense(10, "softmax")``, one seed,
so the same initial weights) trained with plain SGD on ``fastnn.datasets.load_digits`` at three
learning rates. Too small: the loss creeps down. About right: it drops fast and the test accuracy
passes 95 %. Too large: the first steps overshoot, the ReLUs die and the loss stalls at chance
level, ln 10. Writes ``learning_rates.png``: the loss of each of the first batches (read from
``logs["batch_loss"]`` by a ``LambdaCallback``), then training loss and test accuracy per epoch.

    python examples/learning_rates.py [--quick] [--out DIR] [--backend NAME]
"""
from __future__ import annotations

import math
import sys

import numpy

from fastnn.callbacks import LambdaCallback
from fastnn.datasets import load_digits
from fastnn.layers import Dense
from fastnn.models import Sequential
from fastnn.optimizers import SGD

from _common import new_figure, parse_args, save

LEARNING_RATES = {"too small": 0.001, "about right": 0.3, "too large": 3.0}
BATCH = 32
FIRST_STEPS = 120  # batches shown one by one in the first panel


def build(lr, seed=0):
    """The small model, compiled with SGD at ``lr``; the same ``seed`` gives the same initial weights."""
    model = Sequential([Dense(64, "relu", input_shape=(64,)), Dense(10, "softmax")], seed=seed)
    model.compile(optimizer=SGD(lr=lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(argv=None):
    args = parse_args(__doc__, argv)
    epochs = 10 if args.quick else 50
    (x_train, t_train), (x_test, t_test) = load_digits()

    histories, batch_losses = {}, {}
    for label, lr in LEARNING_RATES.items():
        model = build(lr)
        losses = batch_losses[label] = []
        record = LambdaCallback(on_batch_end=lambda batch, logs, losses=losses: losses.append(logs["batch_loss"])
                                if len(losses) < FIRST_STEPS else None)
        history = model.fit(x_train, t_train, batch_size=BATCH, epochs=epochs, verbose=0,
                            validation_data=(x_test, t_test), seed=0, callbacks=[record])
        histories[label] = history.history

    fig = new_figure(18, 5)
    ax_steps, ax_loss, ax_acc = fig.subplots(1, 3)
    x = numpy.arange(1, epochs + 1)
    for label, h in histories.items():
        name = f"lr {LEARNING_RATES[label]:g} ({label})"
        ax_steps.semilogy(numpy.arange(1, len(batch_losses[label]) + 1), batch_losses[label], lw=1, label=name)
        ax_loss.semilogy(x, h["loss"], "o-", ms=3, label=name)
        ax_acc.plot(x, h["val_accuracy"], "o-", ms=3, label=name)
    ax_loss.axhline(math.log(10), color="grey", ls="--", lw=0.8)
    ax_loss.annotate("chance level: ln 10", xy=(x[-1], math.log(10)), xytext=(0, 4),
                     textcoords="offset points", ha="right", fontsize=8, color="grey")
    ax_steps.axhline(math.log(10), color="grey", ls="--", lw=0.8)
    ax_steps.set_title(f"loss of each of the first {FIRST_STEPS} batches")
    ax_steps.set_xlabel("step")
    ax_steps.grid(alpha=0.3, which="both")
    ax_steps.legend()
    ax_loss.set_title("training loss per epoch")
    ax_loss.set_xlabel("epoch")
    ax_loss.grid(alpha=0.3, which="both")
    ax_loss.legend()
    ax_acc.set_title("test accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="center left")
    fig.suptitle(f"SGD learning rate on digits: 64-64-10 ReLU MLP, batch {BATCH}, {epochs} epochs "
                 f"(backend {args.ops.name})")
    fig.tight_layout()
    out = save(fig, args.out, "learning_rates.png")

    summary = "; ".join(f"lr {LEARNING_RATES[k]:g}: loss {h['loss'][-1]:.3f}, test accuracy {h['val_accuracy'][-1]:.3f}"
                        for k, h in histories.items())
    print(f"learning_rates: wrote {out}; after {epochs} epochs: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

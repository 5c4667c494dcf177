"""The quick-start demo: Keras's MLP example on scikit-learn's bundled 8x8 digits, on the best backend here."""
from __future__ import annotations

import time

import fastnn
from fastnn.callbacks import LambdaCallback
from fastnn.datasets import load_digits
from fastnn.layers import Dense, Dropout
from fastnn.models import Sequential
from fastnn.optimizers import RMSprop


def run(backend="auto", epochs=60, seed=0, batch_size=32, lr=0.002):
    """Train, print the backend and why, one line per epoch, and the final test accuracy; returns it."""
    fastnn.use(backend)
    print(f"fastnn {fastnn.__version__}: {fastnn.describe(backend)}")
    (x_train, t_train), (x_test, t_test) = load_digits()
    print(f"data: {len(x_train)} training and {len(x_test)} test images of 8x8 digits (bundled with scikit-learn)")
    model = Sequential([
        Dense(64, activation="relu", input_shape=(64,)), Dropout(0.2),
        Dense(64, activation="relu"), Dropout(0.2),
        Dense(10, activation="softmax"),
    ], seed=seed)
    model.compile(optimizer=RMSprop(lr=lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    clock = {"start": time.perf_counter()}

    def report(epoch, logs):
        now = time.perf_counter()
        print(f"epoch {epoch + 1:3d}/{epochs}  loss {logs['loss']:.4f}  train acc {logs['accuracy']:.4f}  "
              f"test acc {logs['val_accuracy']:.4f}  ({(now - clock['start']) * 1000:.0f} ms)", flush=True)
        clock["start"] = now

    model.fit(x_train, t_train, batch_size=batch_size, epochs=epochs, verbose=0,
              validation_data=(x_test, t_test), callbacks=[LambdaCallback(on_epoch_end=report)])
    loss, acc = model.evaluate(x_test, t_test)
    print(f"final test accuracy: {acc:.4f} (loss {loss:.4f}) on {len(x_test)} held-out digits, "
          f"backend {model.ops.name}")
    return acc

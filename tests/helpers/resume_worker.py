"""A training run for the kill-and-resume tests: ``python resume_worker.py DIR BACKEND OPTIMIZER DROPOUT SAVE_FREQ OUT``.

Trains a small model on synthetic data with ``fit(checkpoint_dir=DIR, resume=True)``; prints
``step N`` after every optimizer step (so the parent knows when to kill it) and writes the final
weights to OUT as .npz. Run again after a kill, it resumes from the newest backup.
"""
import sys

import numpy

import fastnn
from fastnn import optimizers
from fastnn.callbacks import LambdaCallback
from fastnn.layers import Dense, Dropout
from fastnn.models import Sequential

OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(lr=0.05),
    "momentum": lambda: optimizers.Momentum(lr=0.02),
    "nesterov": lambda: optimizers.Nesterov(lr=0.02),
    "adagrad": lambda: optimizers.AdaGrad(lr=0.05),
    "rmsprop": lambda: optimizers.RMSprop(lr=0.005),
    "adam": lambda: optimizers.Adam(lr=optimizers.CosineDecay(0.01, 200)),
    "adamw": lambda: optimizers.AdamW(lr=0.01, weight_decay=0.01),
}


def main(folder, backend, opt, dropout, save_freq, out):
    fastnn.use(backend)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((300, 10)).astype(numpy.float32)
    t = (x[:, :3].sum(1) > 0).astype(numpy.int64) + (x[:, 3] > 1)
    layers = [Dense(16, activation="relu", input_shape=(10,))]
    if dropout == "1":
        layers.append(Dropout(0.3))
    layers += [Dense(16, activation="tanh"), Dense(3, activation="softmax")]
    model = Sequential(layers, seed=1)
    model.compile(optimizer=OPTIMIZERS[opt](), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    tick = LambdaCallback(on_batch_end=lambda b, logs: print(f"step {model.optimizer.iterations}", flush=True))
    freq = "epoch" if save_freq == "epoch" else int(save_freq)
    model.fit(x, t, batch_size=32, epochs=6, verbose=0, validation_split=0.1, checkpoint_dir=folder,
              save_freq=freq, keep=2, callbacks=[tick])
    numpy.savez(out, *model.get_weights(), *(fastnn.asnumpy(s) for s in model.optimizer.flat_slots or ()))
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

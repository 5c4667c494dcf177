"""Data-parallel training runs for tests/test_distributed.py: ``mpiexec -n N python dist_train.py MODE ...``
(or with plain ``python`` for the single-process reference: the same code, one rank).

Modes (each rank writes ``OUT/rank<r>-<case>.npz``; only what the parent compares):

- ``matrix OUT DTYPES OPTIMIZERS [EPOCHS]``: ``fit`` a small MLP with dropout on 41 samples, global batch 10
  (so 2 or 3 ranks get uneven shards and the last batch of one sample leaves some ranks empty),
  validation on 13 samples; saves weights, optimizer slots and the History.
- ``collectives OUT``: the communicator's primitives on float32/float64 arrays and objects.
- ``raise STEP``: rank ``size - 1`` raises at optimizer step STEP (the job must end within seconds).
- ``mismatch``: the last rank builds a wider model (``fit`` must fail with a clear message).
- ``logread``: a callback reads the batch logs on rank 0 only (as a progress display would).
- ``ckpt OUT DIR EPOCHS CRASH_AT SAVE_FREQ [RANKDIR]``: ``fit(checkpoint_dir=DIR)``; every rank raises after step
  CRASH_AT (0: never). RANKDIR=1 gives rank r>0 its own ``DIR-r<r>`` (to check that nothing is written there).
"""
import json
import os
import sys

import numpy

import fastnn
from fastnn import distributed, optimizers
from fastnn.callbacks import LambdaCallback
from fastnn.layers import Dense, Dropout
from fastnn.models import Sequential

OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(lr=0.1),
    "momentum": lambda: optimizers.Momentum(lr=0.05),
    "nesterov": lambda: optimizers.Nesterov(lr=0.05),
    "adagrad": lambda: optimizers.AdaGrad(lr=0.05),
    "rmsprop": lambda: optimizers.RMSprop(lr=0.01),
    "adam": lambda: optimizers.Adam(lr=0.01),
    "adamw": lambda: optimizers.AdamW(lr=0.01, weight_decay=0.01),
}
N_TRAIN, N_VAL, BATCH = 41, 13, 10


def data():
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((N_TRAIN + N_VAL, 6))
    t = (x[:, :3].sum(1) > 0).astype(numpy.int64) + (x[:, 3] > 0.8)
    return (x[:N_TRAIN], t[:N_TRAIN]), (x[N_TRAIN:], t[N_TRAIN:])


def build(opt, dtype, dropout=True, width=16):
    layers = [Dense(width, activation="relu", input_shape=(6,))]
    if dropout:
        layers.append(Dropout(0.25))
    layers += [Dense(width, activation="tanh"), Dense(3, activation="softmax")]
    model = Sequential(layers, dtype=dtype, seed=1)
    model.compile(optimizer=OPTIMIZERS[opt](), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def save(out, case, model, history):
    comm = distributed.get()
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"s{i}": fastnn.asnumpy(s) for i, s in enumerate(model.optimizer.flat_slots or ())})
    arrays["history"] = numpy.array(json.dumps({"history": history.history, "epoch": history.epoch}))
    arrays["meta"] = numpy.array(json.dumps({"rank": comm.rank, "size": comm.size, "kind": comm.kind,
                                             "iterations": int(model.optimizer.iterations),
                                             "threads": getattr(comm, "threads", None)}))
    numpy.savez(os.path.join(out, f"rank{comm.rank}-{case}.npz"), **arrays)


def matrix(out, dtypes, opts, epochs="2"):
    (x, t), val = data()
    for dtype in dtypes.split(","):
        for opt in opts.split(","):
            model = build(opt, dtype)
            history = model.fit(x, t, batch_size=BATCH, epochs=int(epochs), verbose=0, validation_data=val, seed=3)
            save(out, f"{dtype}-{opt}", model, history)


def collectives(out):
    comm = distributed.init()
    r, n = comm.rank, comm.size
    for dtype in (numpy.float32, numpy.float64):
        a = numpy.arange(7, dtype=dtype) * (r + 1)
        ptr = a.__array_interface__["data"][0]
        assert comm.allreduce_sum_(a) is a and a.__array_interface__["data"][0] == ptr
        numpy.testing.assert_array_equal(a, numpy.arange(7, dtype=dtype) * (n * (n + 1) // 2))
        b = numpy.full(5, r, dtype=dtype)
        comm.bcast_(b, root=n - 1)
        numpy.testing.assert_array_equal(b, numpy.full(5, n - 1, dtype=dtype))
        c = numpy.arange(12, dtype=dtype).reshape(3, 4)[:, ::2] * (r + 1)  # not contiguous
        comm.allreduce_sum_(c)
        numpy.testing.assert_array_equal(c, numpy.arange(12, dtype=dtype).reshape(3, 4)[:, ::2] * (n * (n + 1) // 2))
    h = comm.allreduce_host([1.0, r])
    assert h.dtype == numpy.float64 and list(h) == [n, n * (n - 1) / 2], h
    assert comm.bcast_obj({"r": r}) == {"r": 0}
    assert comm.allgather_obj(r) == list(range(n))
    comm.barrier()
    assert comm.kind == "mpi" and distributed.get() is comm and distributed.init("mpi") is comm
    assert 0 <= comm.local_rank < comm.local_size
    with open(os.path.join(out, f"rank{r}.json"), "w") as f:
        json.dump({"rank": r, "size": n, "local": [comm.local_rank, comm.local_size], "threads": comm.threads,
                   "omp": os.environ.get("OMP_NUM_THREADS")}, f)


def fail(mode, step="3"):
    (x, t), val = data()
    comm = distributed.init()
    last = comm.rank == comm.size - 1
    model = build("adam", "float64", width=24 if mode == "mismatch" and last else 16)

    def boom(batch, logs):
        if mode == "raise" and last and model.optimizer.iterations == int(step):
            raise RuntimeError(f"rank {comm.rank} fails on purpose at step {step}")

    print(f"rank {comm.rank} training", flush=True)
    model.fit(x, t, batch_size=BATCH, epochs=1000, verbose=0, seed=3, callbacks=[LambdaCallback(on_batch_end=boom)])


def logread():
    (x, t), val = data()
    comm = distributed.init()
    model = build("sgd", "float64")

    def show(batch, logs):
        if comm.rank == 0:  # e.g. a progress display on rank 0
            print(f"batch {batch}: loss {logs['loss']:.4f}", flush=True)

    model.fit(x, t, batch_size=BATCH, epochs=2, verbose=0, seed=3, callbacks=[LambdaCallback(on_batch_end=show)])


def ckpt(out, folder, epochs, crash_at, save_freq, rankdir="0"):
    (x, t), val = data()
    comm = distributed.init()
    if rankdir == "1" and comm.rank > 0:
        folder = f"{folder}-r{comm.rank}"
    model = build("adam", "float64")

    def crash(batch, logs):
        if int(crash_at) and model.optimizer.iterations == int(crash_at):
            raise RuntimeError(f"rank {comm.rank}: simulated crash after step {crash_at}")

    freq = "epoch" if save_freq == "epoch" else int(save_freq)
    history = model.fit(x, t, batch_size=BATCH, epochs=int(epochs), verbose=0, validation_data=val, seed=3,
                        checkpoint_dir=folder, save_freq=freq, keep=2, callbacks=[LambdaCallback(on_batch_end=crash)])
    save(out, "ckpt", model, history)


if __name__ == "__main__":
    fastnn.use(os.environ.get("FASTNN_TEST_BACKEND", "numpy"))
    mode, args = sys.argv[1], sys.argv[2:]
    {"matrix": matrix, "collectives": collectives, "ckpt": ckpt, "logread": logread,
     "raise": lambda *a: fail("raise", *a), "mismatch": lambda: fail("mismatch")}[mode](*args)

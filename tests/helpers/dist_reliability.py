"""Run under ``mpiexec -n 2`` by ``tests/test_distributed_reliability.py``: ranks that disagree, and ranks
that fail inside ``fit`` while a ``try`` catches the exception.

Modes (``python dist_reliability.py MODE [ARG]``):
- ``differ SETTING``: the last rank calls ``fit`` with another SETTING; every rank catches what ``fit``
  raises and prints it, then all run one matching ``fit`` (the job must go on and end with 0).
- ``early``: the last rank passes an out-of-range label (``fit`` fails before training on that rank only).
- ``caught STEP``: the last rank raises at optimizer step STEP inside a ``try`` that catches it, then returns
  normally (the job must end within seconds, non-zero).
- ``everywhere STEP``: every rank raises at step STEP and catches it; then a matching ``fit`` (exit 0).
- ``savefail``: rank 0's final backup write fails (OSError); every rank must raise it from ``fit``
  and the job go on.
- ``stop WHERE``: only the last rank sets ``model.stop_training`` (``epoch``: at the end of epoch 1;
  ``batch``: after optimizer step 5); every rank must stop at the same point with the same weights.
"""
import os
import sys
import time

import numpy

import fastnn
from fastnn import distributed, optimizers
from fastnn.callbacks import LambdaCallback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dist_train import BATCH, build, data  # noqa: E402


def say(comm, text):
    # one line per message: mpiexec interleaves the ranks' output line by line
    text = str(text).replace("\n", " | ")
    print(f"rank {comm.rank}: {text}", flush=True)


def recover(comm):
    """A matching fit after a failure: the communicator must still work and the replicas agree."""
    (x, t), val = data()
    model = build("adam", "float64")
    model.fit(x, t, batch_size=BATCH, epochs=1, verbose=0, seed=3, validation_data=val)
    digests = comm.allgather_obj(distributed.checksum(*model.get_weights()))
    assert len(set(digests)) == 1, digests
    say(comm, "recovered")


def differ(setting):
    (x, t), val = data()
    comm = distributed.init()
    last = comm.rank == comm.size - 1
    kw = dict(batch_size=BATCH, epochs=2, verbose=0, seed=3, validation_data=val, shuffle=True, initial_epoch=0)
    lr = None
    if last:
        if setting == "samples":
            x, t = x[:-3], t[:-3]
        elif setting == "data":
            x = x + 1.0
        elif setting == "validation":
            kw["validation_data"] = None
        elif setting == "batch_size":
            kw["batch_size"] = BATCH + 2
        elif setting == "epochs":
            kw["epochs"] = 3
        elif setting == "initial_epoch":
            kw["initial_epoch"] = 1
        elif setting == "shuffle":
            kw["shuffle"] = False
        elif setting == "lr":
            lr = 0.02
        else:
            raise SystemExit(f"unknown setting {setting}")
    model = build("adam", "float64")
    if lr is not None:  # the same optimizer class with another learning rate: the replicas would drift apart
        model.compile(optimizer=optimizers.Adam(lr=lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    try:
        model.fit(x, t, **kw)
    except Exception as e:
        say(comm, f"caught {type(e).__name__}: {e}")
    else:
        say(comm, "fit returned")
    recover(comm)


def early():
    (x, t), val = data()
    comm = distributed.init()
    if comm.rank == comm.size - 1:
        t = t.copy()
        t[5] = 7  # 3 classes
    model = build("adam", "float64")
    try:
        model.fit(x, t, batch_size=BATCH, epochs=2, verbose=0, seed=3)
    except Exception as e:
        say(comm, f"caught {type(e).__name__}: {e}")
    recover(comm)


def failing(step, everywhere):
    (x, t), val = data()
    comm = distributed.init()
    model = build("adam", "float64")
    fails = everywhere or comm.rank == comm.size - 1

    def boom(batch, logs):
        if fails and model.optimizer.iterations == int(step):
            say(comm, f"fails on purpose at step {step} at {time.time():.3f}")
            raise RuntimeError(f"rank {comm.rank} fails on purpose at step {step}")

    try:
        model.fit(x, t, batch_size=BATCH, epochs=1000, verbose=0, seed=3, callbacks=[LambdaCallback(on_batch_end=boom)])
    except RuntimeError as e:
        say(comm, f"caught {e}")
    if everywhere:
        recover(comm)
    else:
        say(comm, "returns normally after catching")


def stop(where):
    (x, t), val = data()
    comm = distributed.init()
    model = build("adam", "float64")
    last = comm.rank == comm.size - 1

    def at_epoch(epoch, logs):
        if last and epoch == 1:
            model.stop_training = True

    def at_batch(batch, logs):
        if last and model.optimizer.iterations == 5:
            model.stop_training = True
    cb = LambdaCallback(on_epoch_end=at_epoch) if where == "epoch" else LambdaCallback(on_batch_end=at_batch)
    history = model.fit(x, t, batch_size=BATCH, epochs=50, verbose=0, seed=3, callbacks=[cb])
    digests = comm.allgather_obj(distributed.checksum(*model.get_weights()))
    assert len(set(digests)) == 1, digests
    say(comm, f"stopped after {len(history.epoch)} epochs and {model.optimizer.iterations} steps")


def savefail():
    import tempfile

    from fastnn.callbacks import BackupAndRestore

    (x, t), val = data()
    comm = distributed.init()
    model = build("adam", "float64")
    folder = comm.bcast_obj(tempfile.mkdtemp() if comm.rank == 0 else None)
    if comm.rank == 0:  # only the final (completed) backup fails, and only where rank 0 writes
        import fastnn.checkpoint as ck

        real = ck.BackupFolder.write

        def full_disk(self, model, training, completed=False):
            if completed:
                raise OSError(28, "No space left on device")
            return real(self, model, training, completed)
        ck.BackupFolder.write = full_disk
    try:
        model.fit(x, t, batch_size=BATCH, epochs=2, verbose=0, seed=3, callbacks=[BackupAndRestore(folder)])
    except OSError as e:
        say(comm, f"caught OSError: {e}")
    else:
        say(comm, "fit returned")
    recover(comm)


if __name__ == "__main__":
    fastnn.use(os.environ.get("FASTNN_TEST_BACKEND", "numpy"))
    mode, args = sys.argv[1], sys.argv[2:]
    {"differ": differ, "early": early, "caught": lambda step: failing(step, False),
     "everywhere": lambda step: failing(step, True), "stop": stop, "savefail": savefail}[mode](*args)

"""Files fastnn writes load back; checkpoint folders are safe to share; the loader is bounded
(issue 16: High 1, High 4, Medium 5, Medium 8, and the two Low items about saved files)."""
import io as _io
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import zipfile

import numpy
import pytest

import fastnn
from fastnn import callbacks as C
from fastnn import checkpoint, saving
from fastnn import io as fio
from fastnn import optimizers
from fastnn.errors import CheckpointMismatchError, FolderInUseError, FormatError
from fastnn.layers import Dense, Dropout
from fastnn.models import Sequential, load_model

pytestmark = pytest.mark.filterwarnings("ignore:fastnn. falling back to CPU:RuntimeWarning")

OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(lr=0.05),
    "momentum": lambda: optimizers.Momentum(lr=0.02),
    "nesterov": lambda: optimizers.Nesterov(lr=0.02),
    "adagrad": lambda: optimizers.AdaGrad(lr=0.05),
    "rmsprop": lambda: optimizers.RMSprop(lr=0.005),
    "adam": lambda: optimizers.Adam(lr=optimizers.CosineDecay(0.01, 200)),
    "adamw": lambda: optimizers.AdamW(lr=0.01, weight_decay=0.01),
}
ENV = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_data(n=64, features=10, classes=3, seed=0):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(numpy.float32), rng.integers(0, classes, n)


def small_model(opt="adam", seed=1, units=16, lr=None):
    m = Sequential([Dense(units, activation="relu", input_shape=(10,)), Dropout(0.2), Dense(3, activation="softmax")],
                   seed=seed, backend="numpy")
    m.compile(optimizer=OPTIMIZERS[opt]() if lr is None else optimizers.Adam(lr=lr),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def big_model(opt, frozen):
    """Over 1 MiB of optimizer slots, so a ratio check would judge them: fresh, every slot is zero;
    with its 600x800 part frozen, all but the head's 801 numbers of each slot stay zero forever."""
    m = Sequential([Dense(800, activation="relu", input_shape=(600,)), Dense(1, activation="sigmoid")],
                   seed=3, backend="numpy")
    if frozen:
        m.layers[0].trainable = False
    m.compile(optimizer=OPTIMIZERS[opt](), loss="binary_crossentropy")
    return m


def slots(m):
    return [fastnn.asnumpy(s) for s in m.optimizer.flat_slots or ()]


def assert_same(a, b):
    for u, v in zip(a.get_weights(), b.get_weights()):
        numpy.testing.assert_array_equal(u, v)


class Stop(Exception):
    pass


# ---------------------------------------------------------------- High 1: every file fastnn writes loads back
@pytest.mark.parametrize("state", ["fresh", "trained", "frozen"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_every_file_fastnn_writes_loads_back(tmp_path, opt, state):
    m = big_model(opt, frozen=state == "frozen")
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((16, 600)).astype(numpy.float32), rng.integers(0, 2, (16, 1)).astype(numpy.float32)
    if state != "fresh":
        m.fit(x, t, batch_size=8, epochs=1, verbose=0)
    # save / load_model
    m.save(tmp_path / "m.fastnn")
    loaded = load_model(tmp_path / "m.fastnn")
    assert_same(m, loaded)
    assert loaded.optimizer.iterations == m.optimizer.iterations
    for u, v in zip(slots(m), slots(loaded)):
        numpy.testing.assert_array_equal(u, v)
    # save_weights / load_weights
    m.save_weights(tmp_path / "w.npz")
    other = big_model(opt, frozen=False)
    other.load_weights(tmp_path / "w.npz")
    assert_same(m, other)
    # ModelCheckpoint, whole model and weights only
    for weights_only, name in ((False, "mc-{epoch}.fastnn"), (True, "mc-{epoch}.npz")):
        cb = C.ModelCheckpoint(str(tmp_path / name), save_weights_only=weights_only, monitor="loss")
        cb.set_model(m)
        cb.on_epoch_end(0, {"loss": 1.0})
    assert_same(m, load_model(tmp_path / "mc-1.fastnn"))
    other.load_weights(tmp_path / "mc-1.npz")
    assert_same(m, other)
    # a checkpoint: restored into a fresh model of the same architecture
    m.training_loop = type("Loop", (), {"snapshot": lambda self: {"epoch": 1, "batch": 0, "sampler_state": None,
                                                          "sums": {}, "count": 0, "model_step": 0,
                                                          "history": None}})()
    backup = C.BackupAndRestore(tmp_path / "ckpt")
    backup.set_model(m)
    backup._save()
    getattr(backup, "release", lambda: None)()  # the folder's lock
    path = backup.latest()
    target = big_model(opt, frozen=state == "frozen")
    target.build()
    checkpoint.restore_checkpoint(target, path)
    assert_same(m, target)
    for u, v in zip(slots(m), slots(target)):
        numpy.testing.assert_array_equal(u, v)


def _zip(members):
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _huge_config_file(tmp_path, weights_bytes):
    """A small file whose config claims an 8000x8000 layer."""
    m = Sequential([Dense(4, input_shape=(3,))], seed=0, backend="numpy")
    m.build()
    with zipfile.ZipFile(_io.BytesIO(saving.model_zip_bytes(m, include_optimizer=False))) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["input_shape"] = [8000]
    config["config"]["layers"][0]["config"].update(units=8000, input_shape=[8000])
    members["config.json"] = json.dumps(config).encode()
    members["weights.npz"] = weights_bytes
    path = tmp_path / "huge.fastnn"
    path.write_bytes(_zip(members))
    return path


def test_sizes_are_judged_from_the_config_before_anything_is_built(tmp_path):
    small = fio.npz_bytes({"000-W": numpy.zeros((3, 4), numpy.float32), "001-b": numpy.zeros(4, numpy.float32)})
    path = _huge_config_file(tmp_path, small)
    assert path.stat().st_size < 20_000
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="too few"):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"the loader allocated {peak} bytes for a {path.stat().st_size}-byte file"
    # a zip bomb: weights.npz declaring more than the architecture's weights can take
    bomb = fio.npz_bytes({"000-W": numpy.zeros((3, 4), numpy.float32), "001-b": numpy.zeros(4, numpy.float32),
                           "pad": numpy.zeros(1 << 20, numpy.float64)})
    m = Sequential([Dense(4, input_shape=(3,))], seed=0, backend="numpy")
    m.build()
    with zipfile.ZipFile(_io.BytesIO(saving.model_zip_bytes(m, include_optimizer=False))) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["weights.npz"] = bomb
    (tmp_path / "bomb.fastnn").write_bytes(_zip(members))
    with pytest.raises(FormatError, match="take at most"):
        load_model(tmp_path / "bomb.fastnn")


def test_load_runs_no_initializer(tmp_path, monkeypatch):
    m = small_model()
    m.build()
    m.save(tmp_path / "m.fastnn")
    from fastnn import initializers

    def refuse(*a, **k):
        raise AssertionError("an initializer ran while loading")

    monkeypatch.setattr(initializers, "get", refuse)
    assert_same(m, load_model(tmp_path / "m.fastnn"))


# ---------------------------------------------------------------- Medium 5: loader bounds
def test_a_fifo_is_refused_by_name_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.fastnn"
    os.mkfifo(fifo)
    result = {}

    def load():
        try:
            load_model(fifo)
        except Exception as exc:
            result["exc"] = exc

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # unblock the reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail("load_model blocked on a FIFO")
    assert isinstance(result.get("exc"), FormatError) and "FIFO" in str(result["exc"])


def test_dev_zero_is_refused_by_name():
    code = textwrap.dedent("""
        import resource, fastnn
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from fastnn.models import Sequential, load_model
        from fastnn.layers import Dense
        for call in (lambda: load_model("/dev/zero"),
                     lambda: Sequential([Dense(2, input_shape=(2,))], backend="numpy").load_weights("/dev/zero")):
            try:
                call()
            except fastnn.FormatError as exc:
                print("refused:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=ENV)
    assert out.stdout.count("character device") == 2, out.stdout + out.stderr


# ---------------------------------------------------------------- High 4: one checkpoint folder, one run
HOLDER = textwrap.dedent("""
    import sys, time, numpy, fastnn
    from fastnn.callbacks import LambdaCallback
    from fastnn.layers import Dense
    from fastnn.models import Sequential
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((64, 10)).astype(numpy.float32), rng.integers(0, 3, 64)
    m = Sequential([Dense(16, activation="relu", input_shape=(10,)), Dense(3, activation="softmax")], seed=1,
                   backend="numpy")
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    def hold(batch, logs):
        print("training", flush=True)
        time.sleep(60)
    m.fit(x, t, batch_size=16, epochs=2, verbose=0, checkpoint_dir=sys.argv[1],
          callbacks=[LambdaCallback(on_batch_end=hold)])
""")


def test_a_second_run_on_a_live_folder_is_refused_and_a_dead_ones_lock_is_gone(tmp_path):
    folder = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout.readline().strip() == "training"
        x, t = small_data()
        m = small_model()
        with pytest.raises(FolderInUseError, match=f"in use by PID {proc.pid}"):
            m.fit(x, t, batch_size=16, epochs=1, verbose=0, checkpoint_dir=folder)
    finally:
        proc.kill()
        proc.wait()
    # the kernel dropped the dead run's lock; the same process may use the folder again after a failure
    m = small_model()
    with pytest.raises(Stop):
        m.fit(x, t, batch_size=16, epochs=1, verbose=0, checkpoint_dir=folder,
              callbacks=[C.LambdaCallback(on_batch_end=lambda b, logs: (_ for _ in ()).throw(Stop()))])
    m.fit(x, t, batch_size=16, epochs=1, verbose=0, checkpoint_dir=folder, resume=False)


def test_a_starting_run_deletes_only_provably_stale_temporaries(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        host = getattr(fio, "_HOST", "00000000")  # this host's token in a temporary's name
        live_tmp = folder / f"{fio.TMP_PREFIX}{host}-{live.pid}-abc"
        dead_tmp = folder / f"{fio.TMP_PREFIX}{host}-{dead.pid}-abc"
        live_tmp.write_bytes(b"a live writer's half-written checkpoint")
        dead_tmp.write_bytes(b"left by a SIGKILL")
        x, t = small_data()
        small_model().fit(x, t, batch_size=16, epochs=1, verbose=0, checkpoint_dir=folder)
        assert live_tmp.exists()
        assert not dead_tmp.exists()
    finally:
        live.kill()
        live.wait()


def _interrupted_run(folder, epochs_done, **fit):
    """A run killed (here: an exception) after ``epochs_done`` epochs were backed up."""
    x, t = small_data()
    m = small_model(**{k: fit.pop(k) for k in ("seed", "units", "lr") if k in fit})

    def stop(epoch, logs):
        if epoch == epochs_done:
            raise Stop()

    with pytest.raises(Stop):
        m.fit(x, t, epochs=5, verbose=0, checkpoint_dir=folder, keep=5,
              callbacks=[C.LambdaCallback(on_epoch_begin=stop)], **{"batch_size": 16, **fit})
    return m


@pytest.mark.parametrize("change", ["seed", "fit_seed", "batch_size", "lr", "samples"])
def test_a_resume_of_another_run_is_refused_with_how_to_start_fresh(tmp_path, change):
    folder = tmp_path / "ckpt"
    _interrupted_run(folder, 1)
    x, t = small_data()
    kwargs = {"batch_size": 16}
    model_kwargs = {"seed": 1}
    if change == "seed":
        model_kwargs["seed"] = 2
    elif change == "fit_seed":
        kwargs["seed"] = 7
    elif change == "batch_size":
        kwargs["batch_size"] = 32
    elif change == "lr":
        model_kwargs["lr"] = 0.5
    elif change == "samples":
        x, t = x[:48], t[:48]
    m = small_model(**model_kwargs)
    before = m.get_weights()
    with pytest.raises(CheckpointMismatchError, match="different run") as info:
        m.fit(x, t, epochs=3, verbose=0, checkpoint_dir=folder, **kwargs)
    assert "resume=False" in str(info.value) and "delete the folder" in str(info.value)
    for u, v in zip(before, m.get_weights()):
        numpy.testing.assert_array_equal(u, v)  # refused before any weight changed
    # the way out the message names: a fresh run that replaces the folder's backups
    m.fit(x, t, epochs=1, verbose=0, checkpoint_dir=folder, resume=False, **kwargs)
    assert json.loads(zipfile.ZipFile(checkpoint.backup_files(folder)[-1]).read("training.json"))["completed"]


def test_the_same_run_still_resumes(tmp_path):
    folder = tmp_path / "ckpt"
    _interrupted_run(folder, 2)
    x, t = small_data()
    m = small_model()
    m.fit(x, t, batch_size=16, epochs=5, verbose=0, checkpoint_dir=folder)
    ref = small_model()
    ref.fit(x, t, batch_size=16, epochs=5, verbose=0)
    assert_same(m, ref)


# ---------------------------------------------------------------- Medium 8: checkpoint restore
def test_a_corrupt_newest_backup_falls_back_to_an_older_good_one(tmp_path):
    folder = tmp_path / "ckpt"
    _interrupted_run(folder, 3)
    files = checkpoint.backup_files(folder)
    assert len(files) == 3
    data = bytearray(open(files[-1], "rb").read())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # a torn write on a disk that lied about fsync
    open(files[-1], "wb").write(bytes(data))
    x, t = small_data()
    m = small_model()
    with pytest.warns(RuntimeWarning, match="skipped unreadable newer backup"):
        m.fit(x, t, batch_size=16, epochs=5, verbose=0, checkpoint_dir=folder)
    ref = small_model()
    ref.fit(x, t, batch_size=16, epochs=5, verbose=0)
    assert_same(m, ref)


@pytest.mark.parametrize("field,value,message", [
    ("epoch", "2", "epoch must be a non-negative integer"),
    ("model_step", -1, "model_step must be"),
    ("sampler_state", {"bit_generator": "PCG64", "state": "x"}, "sampler_state is not a valid PCG64"),
    ("sampler_state", "abc", "sampler_state must be"),
    ("sums", {"loss": "1.0"}, "sums must map"),
    ("history", {"history": 5}, "history must be"),
    ("completed", "yes", "completed must be"),
])
def test_training_json_is_checked_before_any_weight_changes(tmp_path, field, value, message):
    folder = tmp_path / "ckpt"
    _interrupted_run(folder, 1)
    path = checkpoint.backup_files(folder)[-1]
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    training = json.loads(members["training.json"])
    training[field] = value
    members["training.json"] = json.dumps(training).encode()
    with open(path, "wb") as f:
        f.write(_zip(members))
    m = small_model(seed=5)
    m.build()
    before, lr = m.get_weights(), m.optimizer.lr
    with pytest.raises(FormatError, match=message):
        checkpoint.restore_checkpoint(m, path)
    for u, v in zip(before, m.get_weights()):
        numpy.testing.assert_array_equal(u, v)
    assert m.optimizer.lr == lr


# ---------------------------------------------------------------- Low: saved files
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_saved_files_follow_the_umask(tmp_path, mask):
    m = small_model()
    m.build()
    old = os.umask(mask)
    try:
        m.save(tmp_path / "m.fastnn")
        m.save_weights(tmp_path / "w.npz")
    finally:
        os.umask(old)
    for name in ("m.fastnn", "w.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~mask
    os.chmod(tmp_path / "m.fastnn", 0o640)
    m.save(tmp_path / "m.fastnn")  # as open() does: an existing file keeps its mode
    assert stat.S_IMODE(os.stat(tmp_path / "m.fastnn").st_mode) == 0o640


KILLED_MID_SAVE = textwrap.dedent("""
    import os, signal, sys
    from fastnn.layers import Dense
    from fastnn.models import Sequential
    m = Sequential([Dense(300, input_shape=(300,))], seed=0, backend="numpy")
    m.build()
    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)  # after the temporary is written, before the rename
    os.replace = die
    m.save(sys.argv[1])
""")


def test_a_sigkill_mid_save_leaves_no_temporary_behind_for_long(tmp_path):
    out = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(tmp_path / "m.fastnn")], env=ENV, timeout=30)
    assert out.returncode == -signal.SIGKILL
    left = [n for n in os.listdir(tmp_path) if n.startswith(fio.TMP_PREFIX)]
    assert len(left) == 1 and os.path.getsize(tmp_path / left[0]) > 100_000
    m = small_model()
    m.build()
    m.save(tmp_path / "other.fastnn")  # the next write into the folder removes the dead writer's temporary
    assert not [n for n in os.listdir(tmp_path) if n.startswith(fio.TMP_PREFIX)]


# ---------------------------------------------------------------- review follow-ups
def test_an_interrupted_run_with_a_learning_rate_callback_fits_again_from_its_backups(tmp_path):
    """The fingerprint names the optimizer as compiled: a LearningRateScheduler that changed the
    learning rate before an interrupt must not make the run refuse its own backups."""
    x, y = small_data()

    class Interrupt(C.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    model = small_model()
    sched = C.LearningRateScheduler(lambda epoch: 1e-3 * 0.5 ** epoch)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=16, epochs=4, verbose=0, seed=2, checkpoint_dir=tmp_path, callbacks=[sched,
                                                                                                        Interrupt()])
    assert model.optimizer.lr != 1e-3
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0, seed=2, checkpoint_dir=tmp_path, callbacks=[sched])
    assert history.epoch == [0, 1, 2, 3]   # the restored epochs and the two it trained


def test_files_that_are_not_backups_are_never_read_pruned_or_deleted(tmp_path):
    x, y = small_data()
    other = small_model()
    other.save(tmp_path / "ckpt-best.fastnn")
    (tmp_path / "ckpt-notes.fastnn").write_text("my notes")
    for resume in (True, False):
        model = small_model()
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, seed=2, checkpoint_dir=tmp_path, resume=resume, keep=1)
    assert (tmp_path / "ckpt-notes.fastnn").read_text() == "my notes"
    assert load_model(tmp_path / "ckpt-best.fastnn").get_weights()[0].shape == other.get_weights()[0].shape

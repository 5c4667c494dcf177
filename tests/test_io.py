"""Save/load: round trips on and across backends, atomic writes, and a loader that refuses anything odd
with a FormatError (a bounded mutation test)."""
import io
import json
import os
import random
import subprocess
import sys
import time
import zipfile

import numpy
import pytest

import fastnn
from fastnn import callbacks as C
from fastnn import checkpoint, saving
from fastnn import io as fio
from fastnn import optimizers, regularizers
from fastnn.errors import FormatError
from fastnn.layers import BatchNormalization, Dense, Dropout, LeakyRelu
from fastnn.models import Sequential, load_model
from fastnn.testing import host


def make_model(backend=None, seed=0):
    m = Sequential([Dense(8, activation="relu", input_shape=(6,), kernel_regularizer=regularizers.l2(1e-3)),
                    BatchNormalization(), LeakyRelu(0.2), Dropout(0.1), Dense(3, activation="softmax")],
                   seed=seed, backend=backend)
    m.compile(optimizer=optimizers.Adam(lr=optimizers.CosineDecay(0.01, 100)), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


def data():
    rng = numpy.random.default_rng(0)
    return rng.random((40, 6)).astype(numpy.float32), rng.integers(0, 3, 40)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    x, t = data()
    m = make_model("numpy")
    m.fit(x, t, epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("saved") / "model.fastnn"
    m.save(path)
    return path, m


@pytest.mark.parametrize("source", ["numpy", "numba"])
def test_round_trip_on_and_across_backends(tmp_path, backend, source):
    if source == "numba" and not fastnn.testing.has_numba():
        pytest.skip("needs numba")
    x, t = data()
    m = make_model(source)
    m.fit(x, t, epochs=2, verbose=0)
    path = tmp_path / "m.fastnn"
    m.save(path)
    loaded = load_model(path, backend=backend)
    assert loaded.ops.name == backend
    for a, b in zip(m.get_weights(), loaded.get_weights()):
        numpy.testing.assert_array_equal(a, b)
    assert loaded.optimizer.iterations == m.optimizer.iterations
    for a, b in zip(m.optimizer.flat_slots, loaded.optimizer.flat_slots):
        numpy.testing.assert_array_equal(host(a), host(b))
    numpy.testing.assert_allclose(loaded.predict(x), m.predict(x), rtol=1e-5, atol=1e-6)
    loaded.fit(x, t, epochs=1, verbose=0)  # and training continues


def test_save_and_load_weights_and_safetensors(tmp_path):
    x, t = data()
    a, b = make_model(seed=0), make_model(seed=1)
    a.fit(x, t, epochs=1, verbose=0)
    a.save_weights(tmp_path / "w.npz")
    b.build()
    b.load_weights(tmp_path / "w.npz")
    for u, v in zip(a.get_weights(), b.get_weights()):
        numpy.testing.assert_array_equal(u, v)
    pytest.importorskip("safetensors")
    c = make_model(seed=2)
    saving.export_safetensors(a, tmp_path / "w.safetensors")
    c.build()
    saving.import_safetensors(c, tmp_path / "w.safetensors")
    for u, v in zip(a.get_weights(), c.get_weights()):
        numpy.testing.assert_array_equal(u, v)
    other = Sequential([Dense(4, input_shape=(6,))])
    with pytest.raises(FormatError, match="tensors do not match the model"):
        saving.import_safetensors(other, tmp_path / "w.safetensors")


def test_load_weights_refuses_another_architecture(tmp_path):
    a = make_model()
    a.save_weights(tmp_path / "w.npz")
    other = Sequential([Dense(5, input_shape=(6,)), Dense(3)])
    with pytest.raises(FormatError, match="w.npz: (unexpected array|missing arrays|array .* has shape)"):
        other.load_weights(tmp_path / "w.npz")


def rewrite(path, out, members):
    """Write a zip at ``out`` with ``members`` ({name: bytes}) in order (duplicates allowed via a list)."""
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)


def members_of(path):
    with zipfile.ZipFile(path) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def npz_with(arrays, allow_pickle=False):
    buf = io.BytesIO()
    numpy.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_specific_refusals_name_file_member_and_problem(tmp_path, saved):
    path, model = saved
    good = members_of(path)
    weights = dict(numpy.load(io.BytesIO(dict(good)["weights.npz"])))
    first = sorted(weights)[0]
    cases = {
        "traversal": ([("../evil.json", b"{}")] + good, r"unsafe name"),
        "absolute": ([("/etc/passwd", b"x")] + good, r"unsafe name"),
        "duplicate": (good + [("config.json", dict(good)["config.json"])], r"appears twice"),
        "missing": ([m for m in good if m[0] != "weights.npz"], r"member 'weights.npz' is missing"),
        "extra": (good + [("run.py", b"print('x')")], r"unexpected member 'run.py'"),
        "object dtype": ([(n, npz_with({**weights, first: numpy.array([{"a": 1}], dtype=object)}) if n == "weights.npz" else d)
                          for n, d in good], r"has dtype object"),
        "wrong shape": ([(n, npz_with({**weights, first: numpy.zeros((2, 2), numpy.float32)}) if n == "weights.npz" else d)
                         for n, d in good], r"has shape \(2, 2\), the architecture needs"),
        "unknown layer": ([(n, d.replace(b'"Dense"', b'"os.system"', 1) if n == "config.json" else d) for n, d in good],
                          r"unknown layer class 'os.system'"),
        "bad json": ([(n, b"{not json" if n == "config.json" else d) for n, d in good], r"not valid JSON"),
        "newer format": ([(n, json.dumps({"format": "fastnn", "format_version": 99}).encode() if n == "metadata.json" else d)
                          for n, d in good], r"newer than this fastnn reads"),
    }
    for name, (members, pattern) in cases.items():
        out = tmp_path / f"{name.replace(' ', '_')}.fastnn"
        rewrite(path, out, members)
        with pytest.raises(FormatError, match=pattern) as info:
            load_model(out)
        assert str(out) in str(info.value), name
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(FormatError, match="not a readable zip"):
        load_model(tmp_path / "plain.txt")
    with pytest.raises(FormatError, match="cannot read the file"):
        load_model(tmp_path / "absent.fastnn")


def huge_shape_npy():
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100000), }"
    header = header + " " * (63 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\x00" * 16


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_loader_mutation_only_ever_raises_format_error(tmp_path, saved):
    """A few hundred mutants: truncations, flipped bytes, dropped/renamed/duplicated members, huge shapes,
    pickled arrays, traversal names. Loading each raises FormatError (or loads a model), nothing else,
    and writes no file anywhere."""
    path, model = saved
    raw = path.read_bytes()
    good = members_of(path)
    rng = random.Random(1234)
    mutants = []
    for _ in range(120):  # truncations and byte flips of the whole file
        cut = rng.randrange(len(raw))
        mutants.append(raw[:cut])
        flipped = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(flipped))
            flipped[i] ^= 1 << rng.randrange(8)
        mutants.append(bytes(flipped))
    pickled = npz_with({"000-x-W": numpy.array([object()], dtype=object)})
    for i in range(60):  # structural mutants
        members = list(good)
        kind = i % 6
        if kind == 0:
            members.pop(rng.randrange(len(members)))
        elif kind == 1:
            j = rng.randrange(len(members))
            members[j] = (rng.choice(["../x", "a/../../b", "/abs", "weights.npz", "config.json", "x\\..\\y"]), members[j][1])
        elif kind == 2:
            members.append(members[rng.randrange(len(members))])
        elif kind == 3:
            members = [(n, npz_with({"000-huge": numpy.zeros(1)})[:30] + huge_shape_npy() if n == "weights.npz" else d)
                       for n, d in members]
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w") as zf:
                zf.writestr("000-dense_1-W.npy", huge_shape_npy())
            members = [(n, inner.getvalue() if n == "weights.npz" else d) for n, d in members]
        elif kind == 4:
            members = [(n, pickled if n == "weights.npz" else d) for n, d in members]
        else:
            j = rng.randrange(len(members))
            data = bytearray(members[j][1])
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            members[j] = (members[j][0], bytes(data))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for n, d in members:
                zf.writestr(n, d)
        mutants.append(buf.getvalue())
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path.parent))
    refused = 0
    for k, data in enumerate(mutants):
        target = tmp_path / "mutant.fastnn"
        target.write_bytes(data)
        try:
            load_model(target, backend="numpy")
        except FormatError:
            refused += 1
        except Exception as exc:  # pragma: no cover - the failure this test exists to catch
            pytest.fail(f"mutant {k} raised {type(exc).__name__}: {exc}")
    target.unlink()
    assert len(mutants) >= 300 and refused >= len(mutants) * 0.9
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path.parent))) == before


def test_a_writer_that_fails_halfway_leaves_the_previous_file(tmp_path, monkeypatch):
    x, t = data()
    m = make_model()
    path = tmp_path / "m.fastnn"
    m.save(path)
    first = path.read_bytes()
    m.fit(x, t, epochs=1, verbose=0)

    class Boom(OSError):
        pass

    real_fsync = os.fsync

    def failing_fsync(fd):
        raise Boom("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(Boom):
        m.save(path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == first
    assert load_model(path).count_params() == m.count_params()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(fio.TMP_PREFIX)]
    (tmp_path / (fio.TMP_PREFIX + "stale")).write_bytes(b"half")  # its writer is unknown: not provably stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"{fio.TMP_PREFIX}{fio._HOST}-{dead.pid}-x").write_bytes(b"half")  # its writer is gone
    assert fio.clean_stale_temporaries(tmp_path) == 1
    assert (tmp_path / (fio.TMP_PREFIX + "stale")).exists()
    # under the folder's lock, one last written before the lock was taken is stale too
    assert fio.clean_stale_temporaries(tmp_path, locked_since=time.time() + 1) == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_leaves_the_last_good_checkpoint(tmp_path):
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((64, 6)).astype(numpy.float32) * 1e3, rng.integers(0, 3, 64)
    m = Sequential([Dense(8, activation="relu", input_shape=(6,)), Dense(3, activation="softmax")], seed=0)
    m.compile(optimizer=optimizers.SGD(lr=1e6), loss="sparse_categorical_crossentropy")
    with pytest.raises(FloatingPointError, match="TerminateOnNaN"):
        m.fit(x, t, epochs=20, batch_size=8, verbose=0, checkpoint_dir=tmp_path, save_freq=1,
              callbacks=[C.TerminateOnNaN(raise_error=True)])
    files = sorted(p for p in os.listdir(tmp_path) if p.endswith(".fastnn"))
    assert files
    restored, training = saving.load_model(tmp_path / files[-1], _with_training=True)
    assert all(numpy.isfinite(w).all() for w in restored.get_weights())
    assert not training["completed"]


def test_model_checkpoint_best_only(tmp_path):
    x, t = data()
    m = make_model()
    ckpt = C.ModelCheckpoint(str(tmp_path / "best-{epoch:02d}.fastnn"), monitor="loss", save_best_only=True)
    m.fit(x, t, epochs=3, verbose=0, callbacks=[ckpt])
    names = sorted(os.listdir(tmp_path))
    assert names and all(n.startswith("best-") for n in names)
    assert load_model(tmp_path / names[-1]).count_params() == m.count_params()


def test_backup_rotation_keeps_the_newest(tmp_path):
    x, t = data()
    m = make_model()
    m.fit(x, t, epochs=4, batch_size=8, verbose=0, checkpoint_dir=tmp_path, save_freq=2, keep=3)
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".fastnn"))
    assert len(names) == 3 and names[-1] == "ckpt-e00004-b0000000.fastnn"
    assert checkpoint.read_training_state(tmp_path / names[-1])["completed"] is True
    # a later fit does not resume a finished run: it starts anew on the model in memory
    before = m.get_weights()
    m.fit(x, t, epochs=1, batch_size=8, verbose=0, checkpoint_dir=tmp_path, save_freq=2, keep=3)
    assert not all(numpy.array_equal(a, b) for a, b in zip(before, m.get_weights()))

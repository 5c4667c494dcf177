"""Issue 18, "wrong results": each against Keras 3's documented behaviour.

1. Keras 3's batch hooks (``on_train_batch_*``, ``on_test_batch_*``, ``on_predict_batch_*``) are called
   from ``fit``/``evaluate``/``predict`` with ``(batch index, logs)``, and ``stop_training`` set in a
   batch hook stops training after that batch, on the eager and the CUDA-graph step alike.
2. ``binary_crossentropy`` refuses targets outside [0, 1], once per call.
3. ``RMSprop`` and ``AdaGrad`` compute Keras 3's formulas with Keras 3's defaults (epsilon inside the
   square root, Adagrad's accumulator starting at 0.1, decoupled ``weight_decay``), checked against
   hand-written formulas and the values Keras documents.
4. Progress and epoch lines go to stdout, and a live line keeps every metric visible at 80 columns.
"""
import io
import os
import subprocess
import sys
import textwrap
import warnings

import numpy
import pytest

import fastnn
from fastnn import callbacks as C
from fastnn import optimizers as O
from fastnn import training, validation
from fastnn.layers import Dense
from fastnn.models import Sequential
from fastnn.params import FlatParams
from fastnn.testing import assert_close, host


def data(n=320, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(numpy.float32)
    t = (x[:, 0] + x[:, 1] > 0).astype(numpy.int64)
    return x, t


def model(backend="numpy", seed=0):
    m = Sequential([Dense(8, activation="relu", input_shape=(4,)), Dense(2, activation="softmax")], seed=seed,
                   backend=backend)
    m.compile(optimizer=O.SGD(lr=0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


# ---------------------------------------------------------------- 1. batch hooks
class Recorder(C.Callback):
    """Overrides only Keras 3's names."""

    def __init__(self, stop_at=None, stop_in="end"):
        super().__init__()
        self.events, self.stop_at, self.stop_in = [], stop_at, stop_in

    def on_train_batch_begin(self, batch, logs=None):
        self.events.append(("train_begin", batch))
        if self.stop_in == "begin" and batch == self.stop_at:
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(("train_end", batch, dict(logs)))
        if self.stop_in == "end" and batch == self.stop_at:
            self.model.stop_training = True

    def on_test_begin(self, logs=None): self.events.append(("test_start",))
    def on_test_batch_begin(self, batch, logs=None): self.events.append(("test_begin", batch))
    def on_test_batch_end(self, batch, logs=None): self.events.append(("test_end", batch, dict(logs)))
    def on_test_end(self, logs=None): self.events.append(("test_stop", dict(logs)))
    def on_predict_begin(self, logs=None): self.events.append(("predict_start",))
    def on_predict_batch_begin(self, batch, logs=None): self.events.append(("predict_begin", batch))
    def on_predict_batch_end(self, batch, logs=None): self.events.append(("predict_end", batch, logs["outputs"]))
    def on_predict_end(self, logs=None): self.events.append(("predict_stop",))


def test_train_batch_hooks_are_called_with_the_batch_index_and_running_logs():
    x, t = data(80)
    rec = Recorder()
    model().fit(x, t, epochs=2, batch_size=32, verbose=0, callbacks=[rec])
    train = [e for e in rec.events if e[0].startswith("train")]
    assert [e[:2] for e in train] == [("train_begin", 0), ("train_end", 0), ("train_begin", 1), ("train_end", 1),
                                      ("train_begin", 2), ("train_end", 2)] * 2
    logs = train[1][2]
    assert {"loss", "accuracy"} <= set(logs) and numpy.isfinite(logs["loss"]) and 0 <= logs["accuracy"] <= 1


@pytest.mark.parametrize("stop_in", ["end", "begin"])
def test_stop_training_in_a_batch_hook_stops_after_that_batch(stop_in):
    """Keras: ``self.model.stop_training = True`` at batch 3 ends training after batch 3 (4 steps)."""
    x, t = data(320)  # 10 batches of 32 per epoch
    m = model()
    h = m.fit(x, t, epochs=5, batch_size=32, verbose=0, callbacks=[Recorder(stop_at=3, stop_in=stop_in)])
    assert m.optimizer.iterations == 4 and h.epoch == [0]


def test_older_names_are_still_called_through_the_new_hooks():
    x, t = data(64)
    seen = []

    class Old(C.Callback):
        def on_batch_begin(self, batch, logs=None): seen.append(("begin", batch))
        def on_batch_end(self, batch, logs=None): seen.append(("end", batch))

    class Both(C.Callback):  # Keras: an override of on_train_batch_end replaces the forwarding
        def on_train_batch_end(self, batch, logs=None): seen.append(("new", batch))
        def on_batch_end(self, batch, logs=None): seen.append(("old", batch))

    lam = C.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(("lambda", batch)))
    model().fit(x, t, epochs=1, batch_size=32, verbose=0, callbacks=[Old(), Both(), lam])
    assert seen == [("begin", 0), ("end", 0), ("new", 0), ("lambda", 0),
                    ("begin", 1), ("end", 1), ("new", 1), ("lambda", 1)]


def test_no_per_batch_work_when_no_callback_overrides_a_batch_hook(monkeypatch):
    """History, and a callback overriding only epoch hooks, make the loop skip batch logs entirely."""
    made = []
    real = training.loop.BatchLogs
    monkeypatch.setattr(training.loop, "BatchLogs", lambda *a: made.append(1) or real(*a))
    x, t = data(96)
    model().fit(x, t, epochs=2, batch_size=32, verbose=0, callbacks=[C.LambdaCallback(on_epoch_end=lambda e, l: 0)])
    assert made == []
    assert C.CallbackList([C.History(), C.Callback()], None).hooks("on_train_batch_end") == []
    model().fit(x, t, epochs=1, batch_size=32, verbose=0, callbacks=[Recorder()])
    assert len(made) == 3


def test_test_batch_hooks_in_evaluate_and_in_fit_validation():
    x, t = data(80)
    m = model()
    rec = Recorder()
    result = m.evaluate(x, t, batch_size=32, verbose=0, return_dict=True, callbacks=[rec])
    assert [e[:2] for e in rec.events] == [("test_start",), ("test_begin", 0), ("test_end", 0), ("test_begin", 1),
                                           ("test_end", 1), ("test_begin", 2), ("test_end", 2), ("test_stop", result)]
    assert rec.events[-2][2] == pytest.approx(result)  # the last batch's running means are the result
    assert rec.events[1 + 1][2]["loss"] != pytest.approx(result["loss"])  # after batch 0: that batch's own
    rec.events.clear()
    m.fit(x, t, epochs=2, batch_size=32, verbose=0, validation_data=(x[:40], t[:40]), callbacks=[rec])
    kinds = [e[0] for e in rec.events]
    assert kinds.count("test_start") == 2 and kinds.count("test_end") == 4 and kinds.count("test_stop") == 2


def test_predict_batch_hooks_get_each_batch_outputs():
    x, _ = data(70)
    rec = Recorder()
    m = model()
    out = m.predict(x, batch_size=32, callbacks=[rec])
    ends = [e for e in rec.events if e[0] == "predict_end"]
    assert rec.events[0] == ("predict_start",) and rec.events[-1] == ("predict_stop",)
    assert [e[1] for e in ends] == [0, 1, 2] and [e[2].shape for e in ends] == [(32, 2), (32, 2), (6, 2)]
    numpy.testing.assert_array_equal(numpy.concatenate([e[2] for e in ends]), out)


def test_stop_evaluating_and_stop_predicting_stop_after_the_batch():
    x, t = data(96)
    m = model()
    stop_eval = C.LambdaCallback(on_test_batch_end=lambda b, logs: setattr(m, "stop_evaluating", b == 0))
    first = m.evaluate(x[:32], t[:32], verbose=0, return_dict=True)
    assert m.evaluate(x, t, batch_size=32, verbose=0, return_dict=True, callbacks=[stop_eval]) == first
    stop_pred = C.LambdaCallback(on_predict_batch_end=lambda b, logs: setattr(m, "stop_predicting", True))
    assert m.predict(x, batch_size=32, callbacks=[stop_pred]).shape == (32, 2)


@pytest.fixture
def fake_gpu(monkeypatch):
    """The CPU stand-in for CuPy's streams and CUDA graphs (see tests/test_graphs_plumbing.py)."""
    from fastnn.backend import cupy_ops, graphs
    from fastnn.kernels.gpu import cublas
    from helpers import fake_cuda

    monkeypatch.setenv("FASTNN_DEVICE_DATA", "device")
    monkeypatch.setattr(fake_cuda.FakeGpuOps, "make_transfer", lambda ops: fake_cuda.Transfer(ops))
    monkeypatch.setattr(cupy_ops, "cupy_matmul", fake_cuda.cupy_matmul)
    monkeypatch.setattr(cublas, "Cublas", fake_cuda.FakeCublas)
    monkeypatch.setattr(fake_cuda.Graph, "launches", 0)
    replays, launch = [], graphs._Captured.launch
    monkeypatch.setattr(graphs._Captured, "launch", lambda self, stream: replays.append(1) or launch(self, stream))
    ops = fake_cuda.FakeGpuOps()
    ops.replays = replays
    return ops


def test_batch_hooks_and_stop_training_on_the_cuda_graph_step(fake_gpu):
    x, t = data(320)
    rec = Recorder(stop_at=6)
    m = model(backend=fake_gpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a graph given up would run eagerly
        h = m.fit(x, t, epochs=3, batch_size=32, verbose=0, cuda_graph=True, callbacks=[rec])
    assert fake_gpu.replays  # the steps were replayed graphs
    assert [e[1] for e in rec.events if e[0] == "train_end"] == list(range(7))
    assert m.optimizer.iterations == 7 and h.epoch == [0]


# ---------------------------------------------------------------- 2. binary cross-entropy targets
def binary_model():
    m = Sequential([Dense(1, activation="sigmoid", input_shape=(4,))], seed=0, backend="numpy")
    m.compile(optimizer="adam", loss="binary_crossentropy")
    return m


def test_binary_crossentropy_refuses_targets_outside_0_1():
    x, _ = data(100)
    digits = numpy.arange(100) % 10
    m = binary_model()
    with pytest.raises(ValueError, match=r"binary_crossentropy.*\[0, 1\].*2, 3, 4, 5, 6, 7, \.\.\. \(8 distinct"):
        m.fit(x, digits, verbose=0)
    with pytest.raises(ValueError, match=r"binary_crossentropy.*-0\.5"):
        m.evaluate(x, numpy.full(100, -0.5), verbose=0)
    with pytest.raises(ValueError, match=r"binary_crossentropy.*validation y.*1\.5"):
        m.fit(x, digits > 4, verbose=0, validation_data=(x, numpy.full(100, 1.5)))
    h = m.fit(x, numpy.linspace(0, 1, 100), epochs=2, verbose=0)  # probabilities are targets too
    assert min(h.history["loss"]) > 0


def test_binary_target_range_is_checked_once_per_call(monkeypatch):
    calls = []
    real = validation.check_target_range
    monkeypatch.setattr(validation, "check_target_range", lambda *a: calls.append(1) or real(*a))
    x, t = data(320)
    m = binary_model()
    m.fit(x, t, epochs=3, batch_size=16, verbose=0, validation_data=(x, t))
    assert len(calls) == 2  # training targets, validation targets: not per batch or epoch
    m.evaluate(x, t, batch_size=16, verbose=0)
    assert len(calls) == 3


# ---------------------------------------------------------------- 3. optimizers as Keras 3
def keras_rmsprop(p, grads, lr=0.001, rho=0.9, eps=1e-7, wd=0.0):
    """Keras 3's RMSprop, written from its documented formula (float64)."""
    p, h = p.astype(numpy.float64).copy(), numpy.zeros(p.shape)
    for g in grads:
        p = p - p * wd * lr  # Keras's weight decay, before the step
        h = rho * h + (1 - rho) * g ** 2
        p = p - lr * g / numpy.sqrt(h + eps)
    return p


def keras_adagrad(p, grads, lr=0.001, initial=0.1, eps=1e-7, wd=0.0):
    """Keras 3's Adagrad, written from its documented formula (float64)."""
    p, h = p.astype(numpy.float64).copy(), numpy.full(p.shape, initial)
    for g in grads:
        p = p - p * wd * lr
        h = h + g ** 2
        p = p - lr * g / numpy.sqrt(h + eps)
    return p


def test_rmsprop_and_adagrad_defaults_are_keras_3s():
    r, a = O.RMSprop(), O.AdaGrad()
    assert (r.lr, r.rho, r.eps, r.weight_decay) == (0.001, 0.9, 1e-7, 0.0)
    assert (a.lr, a.initial_accumulator_value, a.eps, a.weight_decay) == (0.001, 0.1, 1e-7, 0.0)


def test_rmsprop_keras_docstring_example(backend):
    """Keras's RMSprop docstring: learning_rate=0.1, var 10.0, loss var^2/2, one step -> 9.683772."""
    with fastnn.using(backend) as ops:
        var = {"v": ops.asarray(numpy.array([10.0], dtype=numpy.float32))}
        O.RMSprop(learning_rate=0.1).update(var, {"v": ops.asarray(numpy.array([10.0], dtype=numpy.float32))})
        assert host(var["v"])[0] == pytest.approx(9.683772, abs=1e-6)


def test_rmsprop_first_step_on_tiny_gradients_is_keras_size(backend):
    """Epsilon inside the root: with g = 1e-4 the first step is lr*g/sqrt(0.1 g^2 + 1e-7), about 3.1e-4,
    not the 3.1e-3 of epsilon added outside."""
    with fastnn.using(backend) as ops:
        p = {"w": ops.asarray(numpy.zeros(3))}
        O.RMSprop().update(p, {"w": ops.asarray(numpy.full(3, 1e-4))})
        want = -1e-3 * 1e-4 / numpy.sqrt(0.1 * 1e-8 + 1e-7)
        assert_close(p["w"], numpy.full(3, want), rtol=1e-12)
        assert abs(want) < 4e-4


@pytest.mark.parametrize("name", ["rmsprop", "adagrad"])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_dict_and_flat_paths_follow_the_keras_formula(backend, dtype, name, wd):
    """A few steps on small random arrays against the hand-written formula, on every backend, in the
    book's dict path and in a model's flat path (one fused kernel)."""
    rng = numpy.random.default_rng(7)
    make = {"rmsprop": lambda: O.RMSprop(lr=0.01, rho=0.8, weight_decay=wd),
            "adagrad": lambda: O.AdaGrad(lr=0.05, weight_decay=wd)}[name]
    formula = {"rmsprop": lambda p, gs: keras_rmsprop(p, gs, lr=0.01, rho=0.8, wd=wd),
               "adagrad": lambda p, gs: keras_adagrad(p, gs, lr=0.05, wd=wd)}[name]
    tol = {numpy.float32: dict(rtol=2e-5, atol=1e-6), numpy.float64: dict(rtol=1e-11, atol=1e-13)}[numpy.dtype(dtype).type]
    with fastnn.using(backend) as ops:
        layer = Dense(3, dtype=dtype)
        layer.rng = rng
        layer.build((None, 4))
        start = {k: host(v).astype(numpy.float64) for k, v in layer.params.items()}
        grads = [{k: rng.standard_normal(v.shape) for k, v in start.items()} for _ in range(4)]
        params = {k: ops.asarray(v.astype(dtype)) for k, v in start.items()}
        flat, opt_dict, opt_flat = FlatParams([layer], ops, dtype), make(), make()
        for step in grads:
            opt_dict.update(params, {k: ops.asarray(g.astype(dtype)) for k, g in step.items()})
            for k, g in step.items():
                getattr(layer, "d" + k)[...] = ops.asarray(g.astype(dtype))
            opt_flat.step_flat(flat)
        for k in start:
            want = formula(start[k], [step[k].astype(dtype).astype(numpy.float64) for step in grads])
            assert_close(params[k], want, **tol)
            assert_close(getattr(layer, k), want, **tol)


def test_adagrad_matches_keras_on_a_worked_example():
    """Keras's Adagrad, learning_rate=0.5, variables [1, 2, 3, 4], gradients [1, 6, 7, 2], one step:
    h = 0.1 + g^2, so p - 0.5 g / sqrt(0.1 + g^2 + 1e-7) = [0.5233, 1.5007, 2.5005, 3.5061]."""
    p = {"v": numpy.array([1.0, 2.0, 3.0, 4.0])}
    with fastnn.using("numpy"):
        O.AdaGrad(learning_rate=0.5).update(p, {"v": numpy.array([1.0, 6.0, 7.0, 2.0])})
    numpy.testing.assert_allclose(p["v"], [0.5233, 1.5007, 2.5005, 3.5061], atol=1e-4)


def test_adagrad_accumulator_starts_at_initial_accumulator_value_in_a_model():
    m = Sequential([Dense(2, input_shape=(3,))], backend="numpy")
    m.compile(optimizer=O.AdaGrad(initial_accumulator_value=0.25), loss="mse")
    m.build()
    (h,) = m.optimizer.flat_slots
    numpy.testing.assert_array_equal(h, numpy.full(h.shape, 0.25, dtype=h.dtype))
    assert m.optimizer.get_config()["initial_accumulator_value"] == 0.25


# ---------------------------------------------------------------- 4. progress output
def test_epoch_lines_go_to_stdout(capsys):
    x, t = data(64)
    model().fit(x, t, epochs=2, verbose=2, validation_data=(x, t))
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2") and "val_accuracy: " in lines[1]
    assert captured.err == ""
    model().evaluate(x, t, verbose=1)
    assert "accuracy: " in capsys.readouterr().out


def test_redirected_stdout_captures_every_epoch(tmp_path):
    """``python train.py > train.log`` keeps the epoch lines (Keras writes progress to stdout)."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import numpy
        from fastnn.layers import Dense
        from fastnn.models import Sequential
        x = numpy.random.default_rng(0).standard_normal((64, 4)).astype("float32")
        t = (x[:, 0] > 0).astype("int64")
        m = Sequential([Dense(2, activation="softmax", input_shape=(4,))], backend="numpy")
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        m.fit(x, t, epochs=3, validation_split=0.25)
    """))
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, str(script)], stdout=out, stderr=subprocess.PIPE, text=True,
                              timeout=300, env={**os.environ, "FASTNN_BACKEND": "numpy"})
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("val_accuracy: " in line for line in lines) and "epoch" not in proc.stderr


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_live_line_keeps_validation_metrics_at_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    x, t = data(320)
    tty = Terminal()
    model().fit(x, t, epochs=2, batch_size=32, verbose=0, validation_data=(x, t),
                callbacks=[C.ProgressBar(verbose=1, stream=tty, refresh_seconds=0)])
    epochs = tty.getvalue().split("\n")
    assert epochs[-1] == "" and len(epochs) == 3
    for i, written in enumerate(epochs[:2]):
        *refreshes, final = written.split("\r")[1:]
        assert final.startswith(f"epoch {i + 1}/2 ")
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert f" {key}: " in final and final.split(f" {key}: ")[1][:6].replace(".", "").isdigit()
        assert refreshes and all(len(r) < 80 for r in refreshes)  # live refreshes never wrap


def test_the_bar_gives_way_to_the_metrics():
    bar = C.ProgressBar()
    bar.epochs, bar.samples, bar._epoch, bar._seen = 10, 60000, 0, 30000
    short = bar.line({"loss": 0.25}, 1.0, final=False, columns=80)
    assert "[" in short and len(short) < 80 and short.endswith("loss: 0.2500")
    logs = {"accuracy": 0.9, "loss": 0.25, "val_accuracy": 0.875, "val_loss": 0.3125}
    final = bar.line(logs, 2.0, final=True, columns=80)
    assert "[" not in final and final.endswith("val_accuracy: 0.8750 - val_loss: 0.3125")
    assert "[" in bar.line(logs, 2.0, final=True, columns=200)

"""``fit(cuda_graph=True)`` end to end on the CPU, against a stand-in for CuPy's streams and graphs.

No GPU here, so this cannot show what a real capture freezes; the ``gpu`` tests in
``test_cuda_graphs.py`` do. What it does show is everything around the capture in
``fastnn.graphs`` and ``Sequential.fit``: the warm-up step, the capture (in "split" mode: no
cuBLAS handle without a GPU), the input slots filled by ``take(out=)``, each step's dropout masks
drawn into the captured buffers, the first replay checked against eager, the batch statistics
copied out of the graph's buffers, the step counter, the ragged last batch run eagerly, reuse
across ``fit`` calls, re-capture after an out-of-memory retry, and the fallback when capture or
replay raises. The stand-in "graph" re-runs the captured ``Sequential._grad_step`` with the same
arguments and writes its results into the arrays returned at capture, which is what a correct
capture does; a run on it must equal eager training on the NumPy backend bit for bit.
"""
import types
import warnings

import numpy
import pytest

from fastnn import feeding, optimizers, regularizers
from fastnn.backend.ops import Ops
from fastnn.graphs import StepGraphs
from fastnn.layers import BatchNormalization, Dense, Dropout
from fastnn.models import Sequential


class _Event:
    pass


class _Stream:
    current = None

    def __init__(self, non_blocking=False):
        self.capturing, self.step, self.captures = False, None, 0

    def __enter__(self):
        self._previous, _Stream.current = _Stream.current, self
        return self

    def __exit__(self, *exc):
        _Stream.current = self._previous

    def begin_capture(self):
        assert not self.capturing, "begin_capture while capturing"
        self.capturing, self.step = True, None
        self.captures += 1

    def end_capture(self):
        assert self.capturing, "end_capture without begin_capture"
        self.capturing = False
        graph, self.step = _Graph(self.step), None
        return graph

    def is_capturing(self):
        return self.capturing

    def record(self, event=None):
        return _Event()

    def wait_event(self, event):
        assert isinstance(event, _Event)

    def synchronize(self):
        pass


_Stream.null = _Stream()


class _Graph:
    launches = 0

    def __init__(self, step):
        self.step = step

    def launch(self, stream=None):
        _Graph.launches += 1
        if self.step is not None:
            self.step()

    def debug_dot_str(self):
        return "digraph { graph_0_node_0 }" if self.step is not None else "digraph { }"


class _Pool:
    def malloc(self, nbytes):
        raise AssertionError("the stand-in never allocates through the pool")


class _Device:
    def __init__(self, device_id=0):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _using_allocator:
    def __init__(self, malloc):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _FakeCupy(types.ModuleType):
    """NumPy under CuPy's name, with the ``cuda`` pieces ``fastnn.graphs`` uses."""

    def __init__(self):
        super().__init__("fakecupy")
        self.cuda = types.SimpleNamespace(Stream=_Stream, MemoryPool=_Pool, using_allocator=_using_allocator,
                                          Device=_Device)
        self.ndarray = numpy.ndarray

    def __getattr__(self, name):
        return getattr(numpy, name)

    @staticmethod
    def asnumpy(a):
        return numpy.asarray(a)


class FakeGpuOps(Ops):
    """The NumPy reference kernels behind a CuPy-shaped backend (``name == "cupy"``)."""

    name = "cupy"
    device = "cuda:0"
    device_id = 0

    def __init__(self):
        self.xp = _FakeCupy()
        self.capture = None

    def gemm(self, a, b, *, trans_a=False, trans_b=False, out=None):
        if self.capture is not None:
            return self.capture.gemm(a, b, trans_a, trans_b, out)
        return super().gemm(a, b, trans_a=trans_a, trans_b=trans_b, out=out)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Patch ``StepGraphs._captured_step`` (called only under capture) so that the stand-in graph
    records it; like a real capture it leaves no trace: the parameters (with BatchNormalization's
    statistics) and the optimizer's slots are restored, and its (unused) values may be garbage."""
    monkeypatch.setenv("FASTNN_DEVICE_DATA", "device")
    monkeypatch.setattr(feeding, "make_transfer", lambda ops: feeding.NumpyTransfer(ops))  # staging, host feeding
    original = StepGraphs._captured_step
    rehearsals = []

    def captured_step(self, *args):
        stream = _Stream.current
        assert stream is not None, "the captured step runs on the capture stream"
        if not stream.capturing:      # the eager rehearsal before the capture
            rehearsals.append(1)
            return original(self, *args)
        model = self.model
        saved = [model.flat.p, *model.optimizer.flat_slots]
        before = [a.copy() for a in saved]
        with numpy.errstate(all="ignore"):   # split mode: the recorder's GEMM outputs are not computed
            stats = {k: numpy.array(v) for k, v in original(self, *args).items()}  # 0-d arrays, as CuPy gives
        for a, b in zip(saved, before):
            a[...] = b

        def replay():
            for k, v in original(self, *args).items():
                stats[k][...] = v
        stream.step = replay
        return stats
    monkeypatch.setattr(StepGraphs, "_captured_step", captured_step)
    _Graph.launches = 0
    return FakeGpuOps()


def _data(n=203, seed=0):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((n, 12)).astype(numpy.float32), rng.integers(0, 4, size=n)


def _model(backend, optimizer="adam", regularizer=None):
    if callable(optimizer):
        optimizer = optimizer()
    model = Sequential([Dense(32, activation="relu", input_shape=(12,), kernel_regularizer=regularizer),
                        BatchNormalization(), Dropout(0.3), Dense(16, activation="tanh"), Dropout(0.2),
                        Dense(4, activation="softmax")], seed=3, backend=backend)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(0.05),
    "momentum": lambda: optimizers.Momentum(0.05),
    "nesterov-wd": lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adagrad": lambda: optimizers.AdaGrad(0.05),
    "rmsprop-schedule": lambda: optimizers.RMSprop(optimizers.ExponentialDecay(0.01, 3, 0.5)),
    "adamw": lambda: optimizers.AdamW(0.01, weight_decay=0.05),
    "adam-clipnorm": lambda: optimizers.Adam(0.01, clipnorm=0.5),
}


def _assert_same(model, history, ref, ref_history):
    assert history.history == ref_history.history
    for a, b in zip(model.get_weights(), ref.get_weights()):
        numpy.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_graph_plumbing_trains_exactly_as_eager(fake_gpu, optimizer):
    """Every optimizer (its update captured with scalars from the staging buffer; with clipnorm,
    eager after the replay), an L2 regularizer, BatchNormalization, two Dropout layers."""
    x, y = _data()          # 6 full batches of 32 and a ragged 11 per epoch
    reg = regularizers.l2(1e-3)
    ref = _model("numpy", OPTIMIZERS[optimizer], reg)
    h_ref = ref.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=5, validation_split=0.1)
    model = _model(fake_gpu, OPTIMIZERS[optimizer], reg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        h = model.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=5, validation_split=0.1, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    graphs = model._graphs[2]
    assert graphs.mode == "split" and graphs.disabled is None and graphs.captured.checks_left == 0
    assert (graphs.captured.pieces is None) == optimizer.endswith("clipnorm")   # update in the graph or eager
    assert len(graphs.captured.masks) == 2
    assert graphs.stream.captures >= 1
    full_batches = 3 * (int(203 * 0.9) // 32)
    assert _Graph.launches == full_batches - 1      # all but the warm-up step replayed the graph
    assert model._step == 3 * 6                     # one dropout step per batch, graph or not


def test_graph_is_reused_across_fit_calls_and_recaptured_after_oom(fake_gpu, monkeypatch):
    x, y = _data()
    ref, model = _model("numpy"), _model(fake_gpu)
    h_ref = [ref.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=s) for s in (1, 2)]
    h = [model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=1, cuda_graph=True)]
    graphs = model._graphs[2]
    captured = graphs.captured
    h.append(model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=2, cuda_graph=True))
    for a, b in zip(h, h_ref):
        assert a.history == b.history
    assert model._graphs[2] is graphs and graphs.captured is captured   # replayed, not captured again
    assert _Graph.launches == 2 * 6 - 1

    # one simulated device OOM in the third fit's first batch: freed, retried, re-captured later
    def flaky(layer):
        real = layer.forward
        state = {"calls": 0}

        def forward(*args, **kwargs):
            state["calls"] += 1
            if state["calls"] == 1:
                raise MemoryError("simulated")
            return real(*args, **kwargs)
        return forward
    monkeypatch.setattr(ref.layers[3], "forward", flaky(ref.layers[3]))
    h_ref3 = ref.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=3)
    forwards = {"n": 0}
    real3 = model.layers[3].forward

    def counted(*args, **kwargs):          # the graph replays do not call forward: count only eager ones
        forwards["n"] += 1
        if forwards["n"] == 1:
            raise MemoryError("simulated")
        return real3(*args, **kwargs)
    monkeypatch.setattr(model.layers[3], "forward", counted)
    model._graphs[2].reset()                # so the first step of this fit is eager (and fails once)
    h3 = model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=3, cuda_graph=True)
    assert h3.history == h_ref3.history
    for a, b in zip(model.get_weights(), ref.get_weights()):
        numpy.testing.assert_array_equal(a, b)
    assert model._graphs[2] is graphs and graphs.captured is not None and graphs.captured is not captured


def test_capture_failure_warns_and_trains_eagerly(fake_gpu, monkeypatch):
    x, y = _data()
    ref = _model("numpy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu)

    def no_capture(self):
        raise RuntimeError("cudaErrorStreamCaptureUnsupported (simulated)")
    monkeypatch.setattr(_Stream, "begin_capture", no_capture)
    with pytest.warns(RuntimeWarning, match=r"capturing the step failed \(RuntimeError: cudaErrorStreamCapture"
                                            r"Unsupported \(simulated\)\); training continues eagerly on cuda:0"):
        h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    assert _Graph.launches == 0


def test_replay_mismatch_gives_up_the_graph(fake_gpu, monkeypatch):
    """A graph whose replay differs from the eager step (here: it computes nothing) is dropped at
    its first replay, with the size of the difference in the warning; training stays exact."""
    x, y = _data()
    ref = _model("numpy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu)
    monkeypatch.setattr(_Graph, "launch", lambda self, stream=None: None)
    with pytest.warns(RuntimeWarning, match=r"replayed step's \w+ differ from the eager step's \(relative "
                                            r"difference .* > 1e-04\)"):
        h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    assert model._graphs is None or model._graphs[2].disabled is not None


def test_host_fed_batches_through_the_graph(fake_gpu, monkeypatch):
    """``FASTNN_DEVICE_DATA=host``: batches come from ``HostBatches`` and are copied into the slots."""
    monkeypatch.setenv("FASTNN_DEVICE_DATA", "host")
    x, y = _data()
    ref = _model("numpy")
    h_ref = ref.fit(x.astype(numpy.float64), y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu)
    h = model.fit(x.astype(numpy.float64), y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    assert _Graph.launches == 2 * 6 - 1


def test_second_check_catches_a_value_frozen_at_capture(fake_gpu, monkeypatch):
    """Staging that stops updating after the first replay (a per-step value frozen): the first
    check passes, the second sees the stale dropout streams and learning rate and gives up; the
    kept results are the eager ones, so training stays exact."""
    x, y = _data()
    ref = _model("numpy", OPTIMIZERS["rmsprop-schedule"])
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu, OPTIMIZERS["rmsprop-schedule"])
    original = StepGraphs._write_scalars
    calls = []

    def first_only(self, cap, step, words):
        calls.append(step)
        if len(calls) == 1:
            original(self, cap, step, words)
    monkeypatch.setattr(StepGraphs, "_write_scalars", first_only)
    with pytest.warns(RuntimeWarning, match=r"replayed step's .* differ from the eager step's"):
        h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    assert len(calls) == 2 and model._graphs[2].disabled is not None


def test_a_wrong_learning_rate_in_the_graph_is_caught(fake_gpu, monkeypatch):
    from fastnn.optimizers import Optimizer

    x, y = _data()
    ref = _model("numpy", OPTIMIZERS["sgd"])
    h_ref = ref.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=5)
    model = _model(fake_gpu, OPTIMIZERS["sgd"])
    original = Optimizer.graph_scalars

    def off_by_5_percent(self, flat, pieces):
        rows = original(self, flat, pieces)
        rows[:, 0] *= 1.05   # the reference packs lr first
        return rows
    monkeypatch.setattr(Optimizer, "graph_scalars", off_by_5_percent)
    with pytest.warns(RuntimeWarning,
                      match=r"replayed step.s parameters differ .*relative difference [0-9.]+e-02 > 1e-02"):
        h = model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)


def test_weight_decay_changed_between_fits_reaches_the_cached_graph(fake_gpu):
    x, y = _data()
    ref, model = _model("numpy", OPTIMIZERS["adamw"]), _model(fake_gpu, OPTIMIZERS["adamw"])
    ref.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=1)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=1, cuda_graph=True)
    graphs = model._graphs[2]
    for m in (ref, model):
        m.optimizer.weight_decay = 0.2
    h_ref = ref.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=2)
    h = model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=2, cuda_graph=True)
    assert model._graphs[2] is graphs and graphs.disabled is None
    _assert_same(model, h, ref, h_ref)


def test_interrupted_fit_resumed_in_the_same_process_replays_correctly(fake_gpu, tmp_path):
    """A run stopped by an exception and resumed from its backup in the same process: the restore
    writes the optimizer's slots in place, so the cached graph still updates the live ones."""
    from fastnn.callbacks import Callback

    class Stop(Callback):
        def on_batch_end(self, batch, logs=None):
            if self.model._step == 9:
                raise KeyboardInterrupt

    x, y = _data()
    ref = _model("numpy", OPTIMIZERS["adamw"])
    h_ref = ref.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=5, checkpoint_dir=tmp_path / "ref", save_freq=1)
    model = _model(fake_gpu, OPTIMIZERS["adamw"])
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=5, checkpoint_dir=tmp_path / "run", save_freq=1,
                  cuda_graph=True, callbacks=[Stop()])
    graphs = model._graphs[2]
    slots = model.optimizer.flat_slots
    h = model.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=5, checkpoint_dir=tmp_path / "run", save_freq=1,
                  cuda_graph=True)
    assert model.optimizer.flat_slots is slots and model._graphs[2] is graphs and graphs.disabled is None
    _assert_same(model, h, ref, h_ref)


def test_out_of_memory_in_a_replay_is_retried_through_the_guard(fake_gpu, monkeypatch):
    """A MemoryError from a replay reaches ``Sequential._guard_memory``, which frees, resets the
    captured step (re-captured later) and retries; training stays exact."""
    x, y = _data()
    ref = _model("numpy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu)
    real_launch, launches = _Graph.launch, []

    def launch_fails_once(self, stream=None):
        launches.append(1)
        if len(launches) == 4:
            raise MemoryError("simulated out of device memory")
        return real_launch(self, stream)
    monkeypatch.setattr(_Graph, "launch", launch_fails_once)
    captures = []
    real_capture = StepGraphs._capture
    monkeypatch.setattr(StepGraphs, "_capture", lambda self, *a: captures.append(1) or real_capture(self, *a))
    h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    assert len(captures) == 2 and model._graphs[2].disabled is None


def test_cache_key_sees_dropout_rates_and_rebuilt_optimizer_slots(fake_gpu):
    x, y = _data()
    model = _model(fake_gpu)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, cuda_graph=True)
    first = model._graphs[2]
    model.layers[2].rate = 0.1
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, cuda_graph=True)
    second = model._graphs[2]
    assert second is not first
    model.optimizer.build(model.flat)          # new slot arrays: the old graph would update the old ones
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, cuda_graph=True)
    assert model._graphs[2] is not second
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert model._graphs is None               # a new compile lets the captured step go

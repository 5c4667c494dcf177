"""``fit(cuda_graph=True)`` end to end on the CPU, against a strict stand-in for CuPy's streams and
CUDA graphs and for fastnn's cuBLAS handle (``tests/helpers/fake_cuda.py``).

The stand-in records what a real capture records: every kernel launched while the stream captures
(each backend primitive, each array operation, each array fill, each GEMM of the stand-in
``libcublas``) with its array arguments as pointers, read live at each replay, and its other
arguments copied, frozen at capture. Nothing it ran at capture survives the capture: arrays that
existed before are put back, arrays made during it hold NaN until a replay writes them. A host read
of a device value during capture raises, as does CuPy's own cuBLAS path. So a per-step value passed
by value (a dropout stream start, a scheduled learning rate, Adam's step count) repeats at every
replay here as it would on a GPU, and the planted-bug tests below show that this fails the "trains
exactly as eager" check.

The training tests run in both capture modes of ``fastnn.backend.graphs``: "full" (the GEMMs captured through
fastnn's own ``Cublas`` code on the stand-in ``libcublas``) and "split" (no handle: eager GEMMs
between graphs). What is shown: the warm-up step, the capture, the input slots filled by
``take(out=)``, each step's dropout masks and optimizer scalars through the staging buffer, the
replay checks against eager, the batch statistics copied out of the graph's buffers, the step
counter, the ragged last batch run eagerly, reuse across ``fit`` calls, re-capture after an
out-of-memory retry, and the fallbacks when capture or replay fails. A run on the stand-in must
equal eager training on the NumPy backend bit for bit. What it cannot show (what CuPy and the
driver really accept, cuBLAS's own results, timing) is for the ``gpu`` tests in
``test_cuda_graphs.py`` and ``bench/probes/graph_capture.py``.
"""
import warnings

import numpy
import pytest

from fastnn import optimizers, regularizers
from fastnn.backend import cupy_ops, graphs
from fastnn.backend.graphs import StepGraphs
from fastnn.kernels.gpu import cublas
from fastnn.layers import BatchNormalization, Dense, Dropout
from fastnn.models import Sequential
from helpers import fake_cuda  # tests/helpers/fake_cuda.py


@pytest.fixture(params=["full", "split"])
def fake_gpu(request, monkeypatch):
    """A ``FakeGpuOps`` backend, with ``fastnn.backend.graphs`` in the mode of the parameter; its
    ``replays`` list grows by one per replayed step.

    Nothing here needs CuPy: split mode's eager GEMMs (``fastnn.backend.graphs._eager_gemm``) go through
    ``cupy_ops.cupy_matmul``, which sets the real CuPy's compute type, so the stand-in's replaces it;
    the cuBLAS handle ``fastnn.backend.graphs`` makes is the stand-in's (full) or one that cannot be made
    (split), whatever the machine has."""
    monkeypatch.setenv("FASTNN_DEVICE_DATA", "device")
    monkeypatch.setattr(fake_cuda.FakeGpuOps, "make_transfer", lambda ops: fake_cuda.Transfer(ops))  # staging copies
    monkeypatch.setattr(cupy_ops, "cupy_matmul", fake_cuda.cupy_matmul)
    monkeypatch.setattr(cublas, "Cublas", fake_cuda.FakeCublas if request.param == "full" else fake_cuda.NoCublas)
    monkeypatch.setattr(fake_cuda.Graph, "launches", 0)
    replays, launch = [], graphs._Captured.launch

    def counted(self, stream):
        replays.append(1)
        return launch(self, stream)
    monkeypatch.setattr(graphs._Captured, "launch", counted)
    ops = fake_cuda.FakeGpuOps()
    ops.mode, ops.replays = request.param, replays
    return ops


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
    "adam": lambda: optimizers.Adam(0.01),
    "adamw": lambda: optimizers.AdamW(0.01, weight_decay=0.05),
    "adam-clipnorm": lambda: optimizers.Adam(0.01, clipnorm=0.5),
}


def _assert_same(model, history, ref, ref_history):
    assert history.history == ref_history.history
    for a, b in zip(model.get_weights(), ref.get_weights()):
        numpy.testing.assert_array_equal(a, b)


def _trains_exactly_as_eager(fake_gpu, optimizer, epochs=3):
    """Train on the stand-in with graphs and on NumPy eagerly; any RuntimeWarning (a graph given
    up) raises, and the histories and weights must be equal. Returns the model."""
    x, y = _data()          # 6 full batches of 32 and a ragged 11 per epoch, 5 and 14 after the split
    reg = regularizers.l2(1e-3)
    ref = _model("numpy", OPTIMIZERS[optimizer], reg)
    h_ref = ref.fit(x, y, batch_size=32, epochs=epochs, verbose=0, seed=5, validation_split=0.1)
    model = _model(fake_gpu, OPTIMIZERS[optimizer], reg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        h = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, seed=5, validation_split=0.1,
                      cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    return model


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_graph_plumbing_trains_exactly_as_eager(fake_gpu, optimizer):
    """Every optimizer (its update captured with scalars from the staging buffer; with clipnorm,
    eager after the replay), an L2 regularizer, BatchNormalization, two Dropout layers."""
    model = _trains_exactly_as_eager(fake_gpu, optimizer)
    graphs_ = model._train_step.graphs
    assert graphs_.mode == fake_gpu.mode and graphs_.disabled is None and graphs_.captured.checks_left == 0
    assert (graphs_.captured.pieces is None) == optimizer.endswith("clipnorm")   # update in the graph or eager
    assert len(graphs_.captured.masks) == 2
    program = graphs_.captured.program
    if fake_gpu.mode == "full":     # one graph holding every GEMM, none run eagerly
        assert len(program) == 1 and graphs_.stream.captures == 2   # the step, and the fit's batch gather
        # 3 forward, 5 backward (dW of each Dense, dx of all but the first)
        assert sum(node.name.startswith("cublas") for node in program[0].nodes) == 8
        assert sum(captured for _, captured in graphs_._cublas.lib.calls) == 8
    else:                           # graphs with eager GEMMs between them
        assert sum(callable(item) for item in program) == 8 and graphs_.stream.captures == 9 + 1
    full_batches = 3 * (int(203 * 0.9) // 32)
    assert len(fake_gpu.replays) == full_batches - 1      # all but the warm-up step replayed the graph
    assert model._step == 3 * 6                          # one dropout step per batch, graph or not


# ------------------------------------------------------------------ planted bugs: by-value per-step values
def _dropout_step_by_value(monkeypatch):
    """The captured masks take their stream start ``dropout_base(seed, step)`` by value (the eager
    ``dropout_mask``, step read on the host at capture) instead of from the staging buffer."""
    real = StepGraphs._captured_step

    def captured_step(self, x_slot, y_slot, n_global, row0, masks, bases, pieces, hyper, w_slot=None):
        ops, layer_of = self.ops, {id(mask): layer for layer, mask in masks}

        def by_value(shape, rate, base, row0=0, *, dtype, out):
            return ops.dropout_mask(shape, rate, layer_of[id(out)].seed, self.model._step, row0, dtype=dtype,
                                    out=out)
        ops.dropout_mask_dev = by_value
        try:
            return real(self, x_slot, y_slot, n_global, row0, masks, bases, pieces, hyper, w_slot)
        finally:
            del ops.dropout_mask_dev
    monkeypatch.setattr(StepGraphs, "_captured_step", captured_step)


def _update_scalars_by_value(monkeypatch):
    """The captured update takes the learning rate and the step count ``t`` by value (the eager
    ``<rule>_step``, as ``step_flat`` calls it) instead of from the staging rows."""
    def step_flat_dev(self, flat, pieces, rows):
        lr, t = self.lr, self.iterations + 1      # host values at capture
        for a, b, wd in pieces:
            self._apply(flat.ops, flat.p[a:b], flat.g[a:b], tuple(s[a:b] for s in self.flat_slots), lr, wd, 1.0, t)
    monkeypatch.setattr(optimizers.Optimizer, "step_flat_dev", step_flat_dev)


PLANTED = {   # name: (plant, optimizer, whether a per-step value is then frozen)
    "dropout step": (_dropout_step_by_value, "sgd", True),
    "Adam's t": (_update_scalars_by_value, "adam", True),
    "scheduled lr": (_update_scalars_by_value, "rmsprop-schedule", True),
    "constant lr (control)": (_update_scalars_by_value, "sgd", False),
}


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_a_per_step_value_passed_by_value_fails_trains_exactly_as_eager(fake_gpu, monkeypatch, planted):
    """The replay check: the first replay runs in the capture's own step (frozen values still right),
    the second sees them repeat and gives the graph up, so the "trains exactly" check fails on its
    RuntimeWarning. A by-value constant (SGD's fixed lr) is right at every replay and passes."""
    plant, optimizer, frozen = PLANTED[planted]
    plant(monkeypatch)
    if not frozen:
        _trains_exactly_as_eager(fake_gpu, optimizer)
        return
    with pytest.raises(RuntimeWarning, match=r"replayed step's (gradients|parameters|optimizer state \d) differ "
                                             r"from the eager step's \(relative difference"):
        _trains_exactly_as_eager(fake_gpu, optimizer)


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_a_per_step_value_passed_by_value_diverges_without_the_replay_checks(fake_gpu, monkeypatch, planted):
    """The same plants with the replay checks off: every replay is the graph's own result, and the
    training differs from eager (histories or weights), which the checks are there to prevent."""
    plant, optimizer, frozen = PLANTED[planted]
    plant(monkeypatch)
    init = graphs._Captured.__init__

    def unchecked(self, *args):
        init(self, *args)
        self.checks_left = 0
    monkeypatch.setattr(graphs._Captured, "__init__", unchecked)
    if not frozen:
        _trains_exactly_as_eager(fake_gpu, optimizer)
        return
    with pytest.raises(AssertionError):
        _trains_exactly_as_eager(fake_gpu, optimizer)


def test_without_a_plant_the_unchecked_graph_trains_exactly_as_eager(fake_gpu, monkeypatch):
    """The control for the test above: with the checks off and no plant, replays alone are exact."""
    init = graphs._Captured.__init__

    def unchecked(self, *args):
        init(self, *args)
        self.checks_left = 0
    monkeypatch.setattr(graphs._Captured, "__init__", unchecked)
    for optimizer in ("adam", "rmsprop-schedule"):
        _trains_exactly_as_eager(fake_gpu, optimizer, epochs=2)


def _book_loss_model(backend):
    """A model whose loss is the book's ``SoftmaxWithLoss``, which reads its labels on the host."""
    from fastnn.losses import SoftmaxWithLoss

    model = Sequential([Dense(16, activation="relu", input_shape=(12,)), Dropout(0.2), Dense(4)], seed=3,
                       backend=backend)
    model.compile(optimizer="adam", loss=SoftmaxWithLoss())
    return model


def test_a_host_read_in_the_step_fails_the_capture_and_trains_eagerly(fake_gpu):
    """A book loss layer (``SoftmaxWithLoss``, wrapped in ``CustomLoss``) reads its labels' range on
    the host every call: the capture fails with the stand-in's error, training goes on eagerly. (The
    layer follows its inputs' backend, here the current one: pinned to NumPy, whatever CuPy the
    machine has.)"""
    from fastnn.backend import using

    x, y = _data()
    models = [_book_loss_model(backend) for backend in ("numpy", fake_gpu)]
    with using("numpy"):
        h_ref = models[0].fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5)
        with pytest.warns(RuntimeWarning, match=r"capturing the step failed \(CaptureError: cudaErrorStreamCapture"
                                                r"Unsupported: float\(\) reads device memory"):
            h = models[1].fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(models[1], h, models[0], h_ref)
    assert not fake_gpu.replays


# ------------------------------------------------------------------ reuse, re-capture, fallbacks
def test_graph_is_reused_across_fit_calls_and_recaptured_after_oom(fake_gpu, monkeypatch):
    x, y = _data()
    ref, model = _model("numpy"), _model(fake_gpu)
    h_ref = [ref.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=s) for s in (1, 2)]
    h = [model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=1, cuda_graph=True)]
    graphs = model._train_step.graphs
    captured = graphs.captured
    h.append(model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=2, cuda_graph=True))
    for a, b in zip(h, h_ref):
        assert a.history == b.history
    assert model._train_step.graphs is graphs and graphs.captured is captured   # replayed, not captured again
    assert len(fake_gpu.replays) == 2 * 6 - 1

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
    model._train_step.graphs.reset()                # so the first step of this fit is eager (and fails once)
    h3 = model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=3, cuda_graph=True)
    assert h3.history == h_ref3.history
    for a, b in zip(model.get_weights(), ref.get_weights()):
        numpy.testing.assert_array_equal(a, b)
    assert model._train_step.graphs is graphs and graphs.captured is not None and graphs.captured is not captured


def test_capture_failure_warns_and_trains_eagerly(fake_gpu, monkeypatch):
    x, y = _data()
    ref = _model("numpy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu)

    def no_capture(self):
        raise RuntimeError("cudaErrorStreamCaptureUnsupported (simulated)")
    monkeypatch.setattr(fake_cuda.Stream, "begin_capture", no_capture)
    with pytest.warns(RuntimeWarning, match=r"capturing the step failed \(RuntimeError: cudaErrorStreamCapture"
                                            r"Unsupported \(simulated\)\); training continues eagerly on cuda:0"):
        h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    assert fake_cuda.Graph.launches == 0 and not fake_gpu.replays


def test_replay_mismatch_gives_up_the_graph(fake_gpu, monkeypatch):
    """A graph whose replay differs from the eager step (here: it computes nothing) is dropped at
    its first replay, with the size of the difference in the warning; training stays exact."""
    x, y = _data()
    ref = _model("numpy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu)
    monkeypatch.setattr(fake_cuda.Graph, "launch", lambda self, stream=None: None)
    with pytest.warns(RuntimeWarning, match=r"replayed step's \w+ differ from the eager step's \(relative "
                                            r"difference .* > 1e-0[24]\)"):
        h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    assert model._train_step is None or model._train_step.graphs is None or model._train_step.graphs.disabled is not None


def test_host_fed_batches_through_the_graph(fake_gpu, monkeypatch):
    """``FASTNN_DEVICE_DATA=host``: batches come from ``HostBatches`` and are copied into the slots."""
    monkeypatch.setenv("FASTNN_DEVICE_DATA", "host")
    x, y = _data()
    ref = _model("numpy")
    h_ref = ref.fit(x.astype(numpy.float64), y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu)
    h = model.fit(x.astype(numpy.float64), y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    assert len(fake_gpu.replays) == 2 * 6 - 1


def test_second_check_catches_a_value_frozen_at_capture(fake_gpu, monkeypatch):
    """Staging that stops updating after the first replay (a per-step value frozen): the first
    check passes, the second sees the stale dropout streams and learning rate and gives up; the
    kept results are the eager ones, so training stays exact."""
    x, y = _data()
    ref = _model("numpy", OPTIMIZERS["rmsprop-schedule"])
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu, OPTIMIZERS["rmsprop-schedule"])
    original = StepGraphs._write_step
    calls = []

    def first_only(self, cap, step, index, words):   # the batch's rows still travel: only the values freeze
        calls.append(step)
        if len(calls) == 1:
            original(self, cap, step, index, words)
        else:
            words[-self.rows:].view(numpy.int64)[...] = index
    monkeypatch.setattr(StepGraphs, "_write_step", first_only)
    with pytest.warns(RuntimeWarning, match=r"replayed step's .* differ from the eager step's"):
        h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    assert len(calls) == 2 and model._train_step.graphs.disabled is not None


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
    graphs = model._train_step.graphs
    for m in (ref, model):
        m.optimizer.weight_decay = 0.2
    h_ref = ref.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=2)
    h = model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=2, cuda_graph=True)
    assert model._train_step.graphs is graphs and graphs.disabled is None
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
    graphs = model._train_step.graphs
    slots = model.optimizer.flat_slots
    h = model.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=5, checkpoint_dir=tmp_path / "run", save_freq=1,
                  cuda_graph=True)
    assert model.optimizer.flat_slots is slots and model._train_step.graphs is graphs and graphs.disabled is None
    _assert_same(model, h, ref, h_ref)


def test_out_of_memory_in_a_replay_is_retried_through_the_guard(fake_gpu, monkeypatch):
    """A MemoryError from a replay reaches ``Sequential._guard_memory``, which frees, resets the
    captured step (re-captured later) and retries; training stays exact."""
    x, y = _data()
    ref = _model("numpy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu)
    real_launch, launches = graphs._Captured.launch, []

    def launch_fails_once(self, stream):   # before any of the step's graphs runs
        launches.append(1)
        if len(launches) == 4:
            raise MemoryError("simulated out of device memory")
        return real_launch(self, stream)
    monkeypatch.setattr(graphs._Captured, "launch", launch_fails_once)
    captures = []
    real_capture = StepGraphs._capture
    monkeypatch.setattr(StepGraphs, "_capture", lambda self, *a: captures.append(1) or real_capture(self, *a))
    h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    assert len(captures) == 2 and model._train_step.graphs.disabled is None


def test_cache_key_sees_dropout_rates_and_rebuilt_optimizer_slots(fake_gpu):
    x, y = _data()
    model = _model(fake_gpu)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, cuda_graph=True)
    first = model._train_step.graphs
    model.layers[2].rate = 0.1
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, cuda_graph=True)
    second = model._train_step.graphs
    assert second is not first
    model.optimizer.build(model.flat)          # new slot arrays: the old graph would update the old ones
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, cuda_graph=True)
    assert model._train_step.graphs is not second
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert model._train_step is None               # a new compile lets the captured step go


@pytest.mark.parametrize("fake_gpu", ["full"], indirect=True)
def test_a_cublas_handle_that_fails_its_check_means_split_mode(fake_gpu, monkeypatch, caplog):
    """fastnn's handle is checked eagerly before its first capture; a wrong GEMM sends the step to
    "split" mode (CuPy's GEMMs between graphs), said once in the log, and training stays exact."""
    class OffCublas(fake_cuda.FakeCublas):
        def gemm(self, a, b, out, trans_a=False, trans_b=False, precision="float32"):
            super().gemm(a, b, out, trans_a, trans_b, precision)
            out *= out.dtype.type(1.01)
            return out
    monkeypatch.setattr(cublas, "Cublas", OffCublas)
    with caplog.at_level("INFO", logger="fastnn"):
        model = _trains_exactly_as_eager(fake_gpu, "adam", epochs=1)
    assert model._train_step.graphs.mode == "split" and len(fake_gpu.replays) == 4
    assert "direct cuBLAS unavailable (RuntimeError: its float32 GEMM (trans_a=False, trans_b=False) is off by " \
           "1.00e-02 (relative)); GEMMs run eagerly between graphs" in caplog.text


# ------------------------------------------------------------------ the stand-in itself
def _stand_in():
    ops = fake_cuda.FakeGpuOps()
    return ops, ops.xp, ops.xp.cuda.Stream(non_blocking=True)


def test_stand_in_replays_by_value_arguments_frozen_and_arrays_live():
    ops, xp, stream = _stand_in()
    p, g = xp.asarray([1.0, 2.0]), xp.asarray([0.5, 0.25])
    hyper = {"lr": 0.5}
    with stream:
        stream.begin_capture()
        ops.sgd_step(p, g, hyper["lr"])     # one kernel: p and g by pointer, lr by value
        q = p * 2                           # made during the capture: each replay writes it again
        graph = stream.end_capture()
    assert ops.asnumpy(p).tolist() == [1.0, 2.0]     # nothing the capture ran is left
    assert numpy.isnan(ops.asnumpy(q)).all()         # q is garbage until a replay
    hyper["lr"] = 100.0
    g[...] = xp.asarray([1.0, 1.0])
    graph.launch(stream)
    assert ops.asnumpy(p).tolist() == [0.5, 1.5]     # g as it is now, lr as it was at capture
    assert ops.asnumpy(q).tolist() == [1.0, 3.0]
    graph.launch(stream)
    assert ops.asnumpy(p).tolist() == [0.0, 1.0] and ops.asnumpy(q).tolist() == [0.0, 2.0]
    assert [node.name for node in graph.nodes] == ["ops.sgd_step", "multiply.__call__"]


@pytest.mark.parametrize("read", ["float", "item", "bool", "asnumpy", "get", "synchronize", "mask index",
                                  "host array", "host to device", "cupy's cuBLAS"])
def test_stand_in_refuses_host_reads_and_cublas_during_capture(read):
    ops, xp, stream = _stand_in()
    a = xp.asarray([1.0, -2.0])
    reads = {"float": lambda: float(a.sum()), "item": lambda: a.max().item(), "bool": lambda: bool(a.min() < 0),
             "asnumpy": lambda: ops.asnumpy(a), "get": a.get, "synchronize": ops.synchronize,
             "mask index": lambda: a[a > 0], "host array": lambda: a + numpy.ones(2),
             "host to device": lambda: xp.asarray([3.0, 4.0]), "cupy's cuBLAS": lambda: ops.gemm(a[None], a[:, None])}
    reads[read]()                           # all fine outside a capture
    with stream:
        stream.begin_capture()
        if read == "cupy's cuBLAS":
            with pytest.raises(NotImplementedError, match="calling cuBLAS API during stream capture is currently "
                                                          "unsupported"):
                reads[read]()
            stream.end_capture()
            return
        with pytest.raises(fake_cuda.CaptureError):
            reads[read]()
        with pytest.raises(fake_cuda.CaptureError, match="cudaErrorStreamCaptureInvalidated"):
            stream.end_capture()


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_stand_in_cublas_runs_fastnn_gemm_code_and_captures_it(dtype):
    """``FakeCublas`` is ``fastnn.kernels.gpu.cublas.Cublas`` (its operand swap and leading
    dimensions) on a column-major GEMM over raw pointers: equal to ``Ops.gemm`` bit for bit in every
    layout; captured, it reads and writes its operands' memory live at each replay."""
    ops, xp, stream = _stand_in()
    handle, rng = fake_cuda.FakeCublas(stream), numpy.random.default_rng(0)
    for trans_a, trans_b in ((False, False), (True, False), (False, True), (True, True)):
        a = xp.asarray(rng.standard_normal((3, 5) if trans_a else (5, 3)), dtype=dtype)
        b = xp.asarray(rng.standard_normal((4, 3) if trans_b else (3, 4)), dtype=dtype)
        out = xp.empty((5, 4), dtype=dtype)
        assert handle.gemm(a, b, out, trans_a, trans_b) is out
        numpy.testing.assert_array_equal(ops.asnumpy(out), ops.asnumpy(ops.gemm(a, b, trans_a=trans_a,
                                                                                 trans_b=trans_b)))
    before = ops.asnumpy(out)
    with stream:
        stream.begin_capture()
        handle.gemm(a, b, out, True, True)
        graph = stream.end_capture()
    numpy.testing.assert_array_equal(ops.asnumpy(out), before)
    a *= dtype(3)
    graph.launch(stream)
    numpy.testing.assert_array_equal(ops.asnumpy(out), ops.asnumpy(ops.gemm(a, b, trans_a=True, trans_b=True)))
    name = "cublasDgemm_v2" if dtype == numpy.float64 else "cublasSgemm_v2"
    assert [node.name for node in graph.nodes] == [name] and handle.lib.calls[-1] == (name, True)


def test_stand_in_replay_needs_its_buffers_alive():
    """A graph holds addresses: a buffer freed after the capture fails the replay (on a GPU it would
    read reused memory); buffers made during the capture live as long as the private pool."""
    ops, xp, stream = _stand_in()
    a, out = xp.ones(3), xp.zeros(3)
    pool = xp.cuda.MemoryPool()
    with stream, xp.cuda.using_allocator(pool.malloc):
        stream.begin_capture()
        ops.mul(a * 2, a, out=out)          # ``a * 2``: a temporary from the pool
        graph = stream.end_capture()
    graph.launch(stream)
    assert ops.asnumpy(out).tolist() == [2.0, 2.0, 2.0]
    del a
    with pytest.raises(fake_cuda.CaptureError, match="cudaErrorIllegalAddress"):
        graph.launch(stream)


# ------------------------------------------------------------------ a NaN in the replay check
def test_a_graph_whose_loss_comes_out_nan_is_caught_by_the_replay_check(fake_gpu, monkeypatch):
    """The graph computes the update right but never writes the loss it returns (garbage: NaN on
    the stand-in); the check compares it with the eager loss and must give the graph up."""
    real = StepGraphs._captured_step

    def captured_step(self, *args):
        stats = real(self, *args)
        if fake_cuda.capturing():   # the returned loss is a fresh buffer no captured kernel writes
            stats["loss"] = self.ops.xp.empty((), dtype=stats["loss"].dtype)
        return stats
    monkeypatch.setattr(StepGraphs, "_captured_step", captured_step)
    x, y = _data()
    model = _model(fake_gpu)
    with pytest.warns(RuntimeWarning, match=r"replayed step's loss differ from the eager step's"):
        h = model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=5, cuda_graph=True)
    assert numpy.isfinite(h.history["loss"]).all()



# ------------------------------------------------------------------ cuda_graph="auto", the default
def _auto_fit(model, x, y, **kw):
    """``fit`` with the default ``cuda_graph``; any warning raises (the default never warns about graphs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return model.fit(x, y, batch_size=32, verbose=0, seed=5, **kw)


def test_auto_captures_in_full_mode_and_trains_exactly_as_eager(fake_gpu, caplog):
    """The default captures where the whole step can be captured ("full" mode): the same history and
    weights as eager NumPy, bit for bit; where fastnn's cuBLAS handle is unusable ("split" mode under
    ``cuda_graph=True``) it trains eagerly and says why once, at INFO, and does not try again."""
    x, y = _data()
    ref = _model("numpy")
    h_ref = [ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5) for _ in range(2)]
    model = _model(fake_gpu)
    with caplog.at_level("INFO", logger="fastnn"):
        h = [_auto_fit(model, x, y, epochs=2) for _ in range(2)]
    for a, b in zip(h, h_ref):
        assert a.history == b.history
    for a, b in zip(model.get_weights(), ref.get_weights()):
        numpy.testing.assert_array_equal(a, b)
    said = [r.getMessage() for r in caplog.records if "without a CUDA graph" in r.getMessage()]
    if fake_gpu.mode == "full":
        graphs_ = model._train_step.graphs
        assert graphs_.auto and graphs_.mode == "full" and graphs_.disabled is None
        # the step captured once and kept; the batch gather once per fit (it holds the fit's data address)
        assert len(fake_gpu.replays) == 2 * 2 * 6 - 1 and graphs_.stream.captures == 1 + 2
        assert not said
    else:
        assert not fake_gpu.replays and fake_cuda.Graph.launches == 0
        assert len(said) == 1 and "fastnn's direct cuBLAS handle is unavailable" in said[0], said


def test_auto_says_once_why_it_does_not_capture_and_never_warns(fake_gpu, monkeypatch, caplog):
    """Too few full-size steps, a step that cannot be captured (a host read), a device whose streams
    do not capture: eager training equal to NumPy's, no warning, and one INFO line per reason."""
    from fastnn.backend import using

    x, y = _data()
    cases = {
        "few steps": (lambda m: _auto_fit(m, x[:100], y[:100], epochs=1), "3 full-size step(s) in this fit"),
    }
    for name, (run, why) in cases.items():
        ref, model = _model("numpy"), _model(fake_gpu)
        with caplog.at_level("INFO", logger="fastnn"):
            caplog.clear()
            h_ref, h = run(ref), run(model)
            run(model)
        assert h.history == h_ref.history, name
        said = [r.getMessage() for r in caplog.records if "without a CUDA graph" in r.getMessage()]
        assert len(said) == 1 and why in said[0], (name, said)
        assert not fake_gpu.replays, name

    # a host read in the step: the capture fails, said once at INFO; the next fit does not try again
    models = [_book_loss_model(backend) for backend in ("numpy", fake_gpu)]
    captures = []
    real_capture = StepGraphs._capture
    monkeypatch.setattr(StepGraphs, "_capture", lambda self, *a: captures.append(1) or real_capture(self, *a))
    with using("numpy"), caplog.at_level("INFO", logger="fastnn"):
        caplog.clear()
        h_ref = [models[0].fit(x, y, batch_size=32, epochs=1, verbose=0, seed=s) for s in (5, 6)]
        h = [_auto_fit(models[1], x, y, epochs=1)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            h.append(models[1].fit(x, y, batch_size=32, epochs=1, verbose=0, seed=6))
    assert [a.history for a in h] == [b.history for b in h_ref]
    said = [r.getMessage() for r in caplog.records if "without a CUDA graph" in r.getMessage()]
    full = fake_gpu.mode == "full"   # in split mode the cuBLAS check refuses first, without trying a capture
    want = "capturing the step failed (CaptureError" if full else "direct cuBLAS handle is unavailable"
    assert len(said) == 1 and want in said[0], said
    assert len(captures) == full and not fake_gpu.replays

    # a device whose streams cannot capture (CuPy's CPU emulator): asked once per backend object
    def no_capture(self):
        raise RuntimeError("graph capture is not emulated (simulated)")
    monkeypatch.setattr(fake_cuda.Stream, "begin_capture", no_capture)
    ops = fake_cuda.FakeGpuOps()
    ref, model = _model("numpy"), _model(ops)
    with caplog.at_level("INFO", logger="fastnn"):
        caplog.clear()
        h_ref, h = ref.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=5), _auto_fit(model, x, y, epochs=1)
    assert h.history == h_ref.history
    assert "do not capture (RuntimeError: graph capture is not emulated (simulated))" in caplog.text
    assert ops._capture_refusal is not None and model._train_step.graphs is None


def test_auto_does_not_reuse_a_split_mode_graph_of_cuda_graph_true(fake_gpu):
    """A step captured in "split" mode under ``cuda_graph=True`` is not replayed by a later default fit."""
    if fake_gpu.mode != "split":
        pytest.skip("about split mode")
    x, y = _data()
    model = _model(fake_gpu)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=5, cuda_graph=True)
    assert model._train_step.graphs.mode == "split"
    replays = len(fake_gpu.replays)
    _auto_fit(model, x, y, epochs=1)
    assert len(fake_gpu.replays) == replays


def test_a_wrong_captured_batch_gather_is_caught_and_the_takes_run_eagerly(fake_gpu, monkeypatch):
    """The step's replay check reads the input slots the gather filled, so it cannot see a wrong
    gather; the gather graph is checked on its own at each fit's first replay against the eager
    takes. Here its replay fills nothing: caught, warned, the takes run eagerly, training stays exact."""
    x, y = _data()
    ref = _model("numpy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5)
    model = _model(fake_gpu)
    real = StepGraphs._capture_gather

    def broken(self, cap, fill):
        graph = real(self, cap, fill)
        return (fake_cuda.Graph([]), graph[1])   # replays nothing
    monkeypatch.setattr(StepGraphs, "_capture_gather", broken)
    with pytest.warns(RuntimeWarning, match="the captured batch gather differs from the eager one"):
        h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    _assert_same(model, h, ref, h_ref)
    graphs_ = model._train_step.graphs
    assert graphs_.disabled is None and len(fake_gpu.replays) == 2 * 6 - 1   # the step graph itself is fine


def test_a_dropout_rate_changed_mid_fit_ends_the_replays(fake_gpu):
    """A callback that changes a Dropout rate during ``fit``: the captured kernels keep the rate they
    were captured with, so the graph is given up (with a warning) and the rest trains eagerly at the
    new rate, exactly as eager training does."""
    from fastnn.callbacks import Callback

    class Lower(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                self.model.layers[2].rate = 0.1

    x, y = _data()
    ref = _model("numpy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, callbacks=[Lower()])
    model = _model(fake_gpu)
    with pytest.warns(RuntimeWarning, match=r"staging the step's values failed \(RuntimeError: dropout\w*'s rate "
                                            r"changed from 0.3 to 0.1 since capture\)"):
        h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True, callbacks=[Lower()])
    _assert_same(model, h, ref, h_ref)
    assert model._train_step.graphs.disabled is not None


def test_a_regularizer_factor_changed_mid_fit_ends_the_replays(fake_gpu):
    """A callback that changes a weight regularizer's factor during ``fit``: a captured update adds the
    penalty's gradient with the factor it was captured with, so the graph is given up (with a warning
    naming the factors) and the rest trains eagerly with the new factor, exactly as eager training
    does."""
    from fastnn.callbacks import Callback

    class Raise(Callback):
        def __init__(self, reg):
            super().__init__()
            self.reg = reg

        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                self.reg.l2 = 5e-2

    x, y = _data()
    reg_ref, reg = regularizers.l2(1e-3), regularizers.l2(1e-3)
    ref = _model("numpy", regularizer=reg_ref)
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, callbacks=[Raise(reg_ref)])
    model = _model(fake_gpu, regularizer=reg)
    with pytest.warns(RuntimeWarning, match=r"the weight regularizers changed since capture: "
                                            r"dense\w*/W l1=0 l2=0.001 then, dense\w*/W l1=0 l2=0.05 now"):
        h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True, callbacks=[Raise(reg)])
    assert model._train_step.graphs.disabled is not None and len(fake_gpu.replays) >= 1
    _assert_same(model, h, ref, h_ref)


def test_a_dropout_rate_raised_from_zero_mid_fit_ends_the_replays_quietly_by_default(fake_gpu, caplog):
    """A Dropout captured at rate 0 is the identity in the graph; a callback raising its rate must
    end the replays too. Under the default ``cuda_graph="auto"`` that is said at INFO, not warned."""
    from fastnn.callbacks import Callback

    class Raise(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                self.model.layers[2].rate = 0.3

    def model_(backend):
        model = Sequential([Dense(32, activation="relu", input_shape=(12,)), BatchNormalization(), Dropout(0.0),
                            Dense(4, activation="softmax")], seed=3, backend=backend)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    x, y = _data()
    ref = model_("numpy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, callbacks=[Raise()])
    model = model_(fake_gpu)
    with caplog.at_level("INFO", logger="fastnn"):
        h = _auto_fit(model, x, y, epochs=2, callbacks=[Raise()])
    _assert_same(model, h, ref, h_ref)
    if fake_gpu.mode == "full":
        assert model._train_step.graphs.disabled is not None and len(fake_gpu.replays) >= 1
        assert "rate changed from 0.0 to 0.3 since capture" in caplog.text


@pytest.mark.parametrize("fake_gpu", ["full"], indirect=True)
def test_reset_after_out_of_memory_lets_the_old_captured_step_go(fake_gpu):
    """``TrainStep.guarded`` resets the graph to free memory after an out-of-memory error: nothing
    (the fit's batch-gather graph included) may keep the old captured step, its private pool and its
    buffers alive."""
    import gc
    import weakref

    from fastnn.callbacks import Callback

    seen = {}

    class Reset(Callback):
        def on_train_batch_end(self, batch, logs=None):
            graphs_ = self.model._train_step.graphs
            if batch == 4 and graphs_.captured is not None:
                seen["ref"] = weakref.ref(graphs_.captured)
                graphs_.reset()
                gc.collect()
                seen["alive"] = seen["ref"]() is not None

    x, y = _data()
    model = _model(fake_gpu)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=5, callbacks=[Reset()])
    assert seen and not seen["alive"]


@pytest.mark.parametrize("fake_gpu", ["full"], indirect=True)
def test_auto_tries_again_next_fit_after_running_out_of_memory_in_capture(fake_gpu, monkeypatch, caplog):
    """Out of memory while capturing: that fit trains eagerly (said at INFO, no warning); unlike a
    capture that cannot work, the next fit tries again, and captures."""
    real = StepGraphs._capture
    calls = []

    def flaky(self, *args):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("out of memory allocating 1,048,576 bytes (simulated)")
        return real(self, *args)
    monkeypatch.setattr(StepGraphs, "_capture", flaky)
    x, y = _data()
    ref, model = _model("numpy"), _model(fake_gpu)
    h_ref = [ref.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=s) for s in (5, 6)]
    with caplog.at_level("INFO", logger="fastnn"):
        h = [_auto_fit(model, x, y, epochs=1)]
        assert not fake_gpu.replays and "capturing the step failed (MemoryError" in caplog.text
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            h.append(model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=6))
    assert [a.history for a in h] == [b.history for b in h_ref]
    assert len(calls) == 2 and len(fake_gpu.replays) == 6 - 1   # the second fit: a warm-up step, then 5 replays


@pytest.mark.parametrize("feed", ["device", "host"])
@pytest.mark.parametrize("weights", ["sample_weight", "class_weight"])
def test_weighted_steps_are_captured_and_train_exactly_as_eager(fake_gpu, monkeypatch, feed, weights):
    """Sample and class weights: a third input slot, gathered with x and y (on the device, or from
    the host batches), read by the captured weighted loss; bit for bit the eager NumPy training, by
    default and without a warning."""
    monkeypatch.setenv("FASTNN_DEVICE_DATA", feed)
    x, y = _data()
    x = x.astype(numpy.float64) if feed == "host" else x
    kw = ({"sample_weight": numpy.random.default_rng(4).random(len(x)).astype(numpy.float32) + 0.25}
          if weights == "sample_weight" else {"class_weight": {0: 0.5, 1: 2.0, 2: 1.0, 3: 1.5}})
    ref = _model("numpy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, **kw)
    model = _model(fake_gpu)
    h = _auto_fit(model, x, y, epochs=2, **kw)
    _assert_same(model, h, ref, h_ref)
    if fake_gpu.mode == "full":
        graphs_ = model._train_step.graphs
        assert graphs_.weighted and graphs_.disabled is None and graphs_.captured.w_slot is not None
        assert len(fake_gpu.replays) == 2 * 6 - 1
    else:  # auto does not take split mode
        assert not fake_gpu.replays

"""``fit(cuda_graph=True)``, ``set_matmul_precision`` and the direct cuBLAS handle.

CPU part (runs everywhere): on a CPU backend ``cuda_graph=True`` warns once, naming the backend,
and trains exactly as without it; precision values are checked; the model step split that the
graph captures: ``TrainStep.grad`` gives the numerical gradient, ``TrainStep.apply`` the SGD update.
GPU part (marker ``gpu``): graph replay equals eager training (MLP with Dropout and
BatchNormalization, Adam, ragged last batch), in both capture modes; a capture that cannot work
falls back to eager with a warning; the cuBLAS handle's GEMMs equal ``cupy.matmul`` in every
layout and dtype; TF32 is opt-in.
"""
import json
import subprocess
import sys
import warnings

import numpy
import pytest

import fastnn
import fastnn.feeding
from fastnn import backend as fbackend
from fastnn import optimizers as _opt
from fastnn.backend import select
from fastnn.layers import BatchNormalization, Dense, Dropout
from fastnn.layers.base import StepContext
from fastnn.models import Sequential
from fastnn.testing import has_gpu, host
from fastnn.training import TrainStep



def gpu_only(test):
    """Marker ``gpu``, skipped with the probe's reason where no CUDA GPU answers."""
    reason = "needs CuPy and a CUDA GPU: " + select.probe_cupy(0).reason
    return pytest.mark.gpu(pytest.mark.skipif(not has_gpu(), reason=reason)(test))


def _data(n=203, d=12, k=4, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(numpy.float32)
    y = rng.integers(0, k, size=n)
    return x, y


def _model(backend, dtype="float32", dropout=True, bn=True, optimizer="adam"):
    layers = [Dense(32, activation="relu", input_shape=(12,))]
    if bn:
        layers.append(BatchNormalization())
    if dropout:
        layers.append(Dropout(0.3))
    layers += [Dense(16, activation="tanh"), Dense(4, activation="softmax")]
    model = Sequential(layers, dtype=dtype, seed=3, backend=backend)
    if callable(optimizer):
        optimizer = optimizer()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


# ------------------------------------------------------------------------------------ CPU
@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not select.probe_numba().ok, reason="needs numba"))])
def test_cuda_graph_on_cpu_warns_and_trains_identically(backend):
    x, y = _data()
    plain = _model(backend)
    h_plain = plain.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=1)
    graphed = _model(backend)
    with pytest.warns(RuntimeWarning, match=rf"fit\(cuda_graph=True\) needs the CuPy backend.*runs on {backend}"):
        h_graph = graphed.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=1, cuda_graph=True)
    assert h_graph.history == h_plain.history
    for a, b in zip(graphed.get_weights(), plain.get_weights()):
        numpy.testing.assert_array_equal(a, b)


def test_without_cuda_graph_no_warning():
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _model("numpy").fit(x, y, batch_size=32, epochs=1, verbose=0)


def test_grad_step_gives_the_numerical_gradient_and_apply_step_the_sgd_update():
    """The split the graph captures, checked against what it must compute (not against the eager
    step, which runs the same two functions): ``TrainStep.grad`` leaves the flat gradient buffer equal
    to the central-difference gradient of the batch loss (float64, h = 1e-4), and ``TrainStep.apply``
    with SGD(lr) then moves every parameter by exactly ``-lr * g``."""
    x, y = _data()
    model = _model("numpy", dtype="float64", dropout=False, optimizer=lambda: _opt.SGD(0.1))
    model.build((None, 12))
    trainer = TrainStep.of(model)
    context = StepContext(0)  # workspaces reused, as in a training step
    context.__enter__()
    xb, yb = model.ops.asarray(x[:32], dtype=model.dtype), model.ops.asarray(y[:32])
    p = model.flat.p
    p0 = p.copy()
    stats = trainer.grad(xb, yb, 32, 32)
    g = model.flat.g.copy()
    assert set(stats) == {"loss", "accuracy"}

    def loss_at(i, delta):
        p[...] = p0
        p[i] += delta
        return float(trainer.grad(xb, yb, 32, 32)["loss"])

    h = 1e-4   # the step's "loss" statistic is the batch's sum; the gradient is of the batch mean
    numeric = numpy.array([(loss_at(i, h) - loss_at(i, -h)) / (2 * h) for i in range(p.size)]) / 32
    p[...] = p0
    numpy.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-8)
    trainer.grad(xb, yb, 32, 32)            # the gradient at p0 again (BatchNormalization's running
    p1 = p.copy()                           # statistics, in the buffer but not trained, move), then
    trainer.apply(stats, 32, None)          # one update
    context.__exit__(None, None, None)
    numpy.testing.assert_allclose(p, p1 - 0.1 * g, rtol=0, atol=1e-15)
    assert (p != p1).sum() == (g != 0).sum() > 1000


def test_dropout_premade_mask_uses_the_filled_buffer():
    ops = fastnn.get_ops("numpy")
    layer = Dropout(0.5, seed=11)
    x = numpy.random.default_rng(0).standard_normal((6, 10))
    with fastnn.using("numpy"):   # NumPy arrays throughout, whichever backend is the default here
        with StepContext(0):
            fresh = layer.forward(x, True).copy()   # draws the mask for step 0
            mask = layer.fill_mask(ops, (6, 10), x.dtype, StepContext(7))   # step 7's mask into the workspace
        with StepContext(0, premade_masks=True):
            y = layer.forward(x, True)
    numpy.testing.assert_array_equal(y, x * mask)
    assert not numpy.array_equal(y, fresh)


@pytest.mark.parametrize("bad", ["fp16", "TF32 ", "", None, 32])
def test_set_matmul_precision_rejects_unknown_values(bad):
    with pytest.raises(ValueError, match=r"precision must be one of 'float32', 'tf32', got"):
        fastnn.set_matmul_precision(bad)
    assert fastnn.get_matmul_precision() == "float32"


def test_use_precision_sets_and_default_is_exact():
    assert fastnn.get_matmul_precision() == "float32"
    try:
        fastnn.use("numpy", precision="tf32")
        assert fastnn.get_matmul_precision() == "tf32"
        x, y = _data()
        m = _model("numpy", dropout=False, bn=False)
        h = m.fit(x, y, epochs=1, verbose=0, seed=1)  # CPU: accepted, computes exactly (no TF32 on CPU BLAS)
        fastnn.set_matmul_precision("float32")
        exact = _model("numpy", dropout=False, bn=False)
        assert exact.fit(x, y, epochs=1, verbose=0, seed=1).history == h.history
        for a, b in zip(m.get_weights(), exact.get_weights()):
            numpy.testing.assert_array_equal(a, b)
    finally:
        fastnn.set_matmul_precision("float32")
        fbackend._default = None


def test_precision_environment_variable_is_checked():
    code = "import fastnn"
    bad = subprocess.run([sys.executable, "-c", code], env={"FASTNN_MATMUL_PRECISION": "half", "PATH": ""},
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert "FASTNN_MATMUL_PRECISION must be one of 'float32', 'tf32', got 'half'" in bad.stderr
    good = subprocess.run([sys.executable, "-c", code + "; print(fastnn.get_matmul_precision())"],
                          env={"FASTNN_MATMUL_PRECISION": "TF32", "PATH": ""}, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "tf32"


def test_cublas_module_imports_without_a_gpu():
    from fastnn.kernels.gpu import cublas

    assert cublas.WORKSPACE_BYTES == 32 << 20
    found = cublas.find_libcublas()
    assert found is None or "libcublas" in found


# ------------------------------------------------------------------------------------ GPU
def _history_close(h_graph, h_eager, rtol):
    assert h_graph.history.keys() == h_eager.history.keys()
    for k in h_eager.history:
        numpy.testing.assert_allclose(h_graph.history[k], h_eager.history[k], rtol=rtol, atol=rtol, err_msg=k)


@gpu_only
@pytest.mark.parametrize("mode", ["full", "split"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "nesterov", "rmsprop-schedule", "adam-clipnorm"])
def test_graph_training_equals_eager(mode, dtype, optimizer, monkeypatch):
    from fastnn.backend.graphs import StepGraphs

    if mode == "split":
        def no_handle(self, *args):
            self.mode, self._cublas = "split", None
            return None
        monkeypatch.setattr(StepGraphs, "_handle", no_handle)
    make = {"adam": lambda: _opt.Adam(0.01), "sgd": lambda: _opt.SGD(0.05),
            "nesterov": lambda: _opt.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
            "rmsprop-schedule": lambda: _opt.RMSprop(_opt.ExponentialDecay(0.01, 3, 0.5)),
            "adam-clipnorm": lambda: _opt.Adam(0.01, clipnorm=0.5)}[optimizer]
    x, y = _data(n=203)   # 6 full batches of 32 and a ragged 11
    eager = _model("cupy", dtype, optimizer=make)
    h_eager = eager.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=5, cuda_graph=False)
    graphed = _model("cupy", dtype, optimizer=make)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn: fail instead
        h_graph = graphed.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=5, cuda_graph=True)
    graphs = graphed._train_step.graphs
    assert graphs.disabled is None and graphs.captured.checks_left == 0 and graphs.mode == mode
    assert (graphs.captured.pieces is None) == optimizer.endswith("clipnorm")
    rtol = 2e-4 if dtype == "float32" else 1e-9
    _history_close(h_graph, h_eager, rtol)
    for a, b in zip(graphed.get_weights(), eager.get_weights()):
        numpy.testing.assert_allclose(a, b, rtol=rtol * 10, atol=rtol * 10)


@gpu_only
@pytest.mark.parametrize("feed", ["device", "host"])
@pytest.mark.parametrize("weights", ["sample_weight", "class_weight"])
def test_weighted_graph_training_equals_eager(weights, feed, monkeypatch):
    """Sample and class weights through the default graphs (a third input slot): as eager training,
    with resident and host-fed data, and no fallback."""
    monkeypatch.setenv("FASTNN_DEVICE_DATA", feed)
    x, y = _data(n=203)
    kw = ({"sample_weight": numpy.random.default_rng(4).random(len(x)).astype(numpy.float32) + 0.25}
          if weights == "sample_weight" else {"class_weight": {0: 0.5, 1: 2.0, 2: 1.0, 3: 1.5}})
    eager = _model("cupy")
    h_eager = eager.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=5, cuda_graph=False, **kw)
    graphed = _model("cupy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        h_graph = graphed.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=5, **kw)
    graphs = graphed._train_step.graphs
    assert graphs.weighted and graphs.disabled is None and graphs.captured.checks_left == 0
    _history_close(h_graph, h_eager, 2e-4)
    for a, b in zip(graphed.get_weights(), eager.get_weights()):
        numpy.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)


@gpu_only
def test_graph_capture_failure_falls_back_with_a_warning(monkeypatch):
    x, y = _data()
    model = _model("cupy")
    original = TrainStep.grad

    def syncing(self, *args):   # a host sync inside the step invalidates any capture
        stats = original(self, *args)
        float(stats["loss"])
        return stats
    monkeypatch.setattr(TrainStep, "grad", syncing)
    with pytest.warns(RuntimeWarning, match=r"fit\(cuda_graph=True\): capturing the step failed.*continues eagerly on cuda"):
        h = model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=True)
    monkeypatch.setattr(TrainStep, "grad", original)
    ref = _model("cupy")
    h_ref = ref.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=5, cuda_graph=False)
    _history_close(h, h_ref, 1e-6)


@gpu_only
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True)], ids=["nn", "tn", "nt"])
def test_cublas_handle_gemm_matches_cupy(dtype, trans):
    import cupy

    from fastnn.kernels.gpu.cublas import Cublas

    stream = cupy.cuda.Stream(non_blocking=True)
    handle = Cublas(stream)
    rng = numpy.random.default_rng(0)
    m, k, n = 129, 257, 65
    a = rng.standard_normal((k, m) if trans[0] else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans[1] else (k, n)).astype(dtype)
    want = (a.T if trans[0] else a).astype(numpy.float64) @ (b.T if trans[1] else b).astype(numpy.float64)
    with stream:
        out = cupy.full((m, n), numpy.nan, dtype=dtype)
        handle.gemm(cupy.asarray(a), cupy.asarray(b), out, *trans)
    stream.synchronize()
    numpy.testing.assert_allclose(host(out), want, rtol=1e-4 if dtype == numpy.float32 else 1e-12, atol=1e-3)
    with pytest.raises(ValueError, match="shapes do not chain"):
        handle.gemm(cupy.asarray(a), cupy.asarray(b), cupy.empty((m + 1, n), dtype), *trans)


@gpu_only
def test_tf32_is_opt_in():
    ops = fastnn.get_ops("cupy")
    rng = numpy.random.default_rng(1)
    a = rng.standard_normal((512, 1024)).astype(numpy.float32)
    b = rng.standard_normal((1024, 256)).astype(numpy.float32)
    exact = a.astype(numpy.float64) @ b.astype(numpy.float64)
    scale = numpy.linalg.norm(exact)
    default = host(ops.gemm(ops.asarray(a), ops.asarray(b)))
    assert numpy.linalg.norm(default - exact) / scale < 1e-6       # float32: ~1e-7
    try:
        fastnn.set_matmul_precision("tf32")
        tf32 = host(ops.gemm(ops.asarray(a), ops.asarray(b)))
    finally:
        fastnn.set_matmul_precision("float32")
    err = numpy.linalg.norm(tf32 - exact) / scale
    assert 1e-5 < err < 5e-3                                       # TF32's 10-bit mantissa: ~1e-4


# ------------------------------------------------------------------------------------ host-fed fit
@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not select.probe_numba().ok, reason="needs numba"))])
@pytest.mark.parametrize("split", [0.0, 0.2], ids=["no-val", "val-split"])
def test_fit_fed_from_host_equals_resident_fit(backend, split, monkeypatch):
    """``FASTNN_DEVICE_DATA=host`` routes every batch through ``HostBatches`` (double-buffered
    slots, ragged last batch): training must be bit for bit the same as with resident data."""
    x, y = _data(n=203)
    x64 = x.astype(numpy.float64)   # cast on the host by the feeder
    plain = _model(backend)
    h_plain = plain.fit(x64, y, batch_size=32, epochs=3, verbose=0, seed=2, validation_split=split)
    monkeypatch.setenv("FASTNN_DEVICE_DATA", "host")
    fed = _model(backend)
    calls = []
    original = fastnn.feeding.HostBatches.get

    def counting(self, idx):
        calls.append(len(idx))
        return original(self, idx)
    monkeypatch.setattr(fastnn.feeding.HostBatches, "get", counting)
    h_fed = fed.fit(x64, y, batch_size=32, epochs=3, verbose=0, seed=2, validation_split=split)
    n_train = 203 - int(203 * split)
    sizes = [32] * (n_train // 32) + ([n_train % 32] if n_train % 32 else [])
    assert calls == sizes * 3
    assert h_fed.history == h_plain.history
    for a, b in zip(fed.get_weights(), plain.get_weights()):
        numpy.testing.assert_array_equal(a, b)


@gpu_only
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
def test_gpu_fit_fed_from_host_matches_resident(cuda_graph, monkeypatch):
    x, y = _data(n=203)
    resident = _model("cupy")
    h_res = resident.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=2, cuda_graph=cuda_graph)
    monkeypatch.setenv("FASTNN_DEVICE_DATA", "host")
    fed = _model("cupy")
    h_fed = fed.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=2, cuda_graph=cuda_graph)
    _history_close(h_fed, h_res, 1e-6)


@gpu_only
def test_graph_is_reused_by_later_fit_calls():
    x, y = _data(n=203)
    model = _model("cupy")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=5, cuda_graph=True)
    graphs = model._train_step.graphs
    captured = graphs.captured
    assert captured is not None and captured.checks_left == 0 and graphs.disabled is None
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=6, cuda_graph=True)
    assert model._train_step.graphs is graphs and graphs.captured is captured   # replayed, not captured again
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=6, cuda_graph=True)
    assert model._train_step.graphs is not graphs                                # new loss/metrics: new capture


_OOM_SCRIPT = """
import json, numpy, cupy, fastnn
from fastnn.layers import Dense
from fastnn.models import Sequential
x = numpy.random.default_rng(0).random((4096, 784), dtype=numpy.float32)
y = numpy.random.default_rng(1).integers(0, 10, 4096)
model = Sequential([Dense(4096, activation="relu", input_shape=(784,)), Dense(10, activation="softmax")],
                   seed=0, backend="cupy")
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
model.build()
before = model.get_weights()
pool = cupy.get_default_memory_pool()
pool.set_limit(size=pool.total_bytes() + 16 * 4096 * 784 + (8 << 20))   # the data fits, a 4096-row batch does not
try:
    model.fit(x, y, batch_size=4096, epochs=1, verbose=0)
    answer = {"raised": None}
except Exception as exc:
    answer = {"raised": type(exc).__name__, "is_fastnn": isinstance(exc, fastnn.OutOfMemoryError),
              "message": str(exc)}
finally:
    pool.set_limit(size=0)
answer["backend"] = model.ops.name
answer["unchanged"] = all(bool((a == b).all()) for a, b in zip(before, model.get_weights()))
print(json.dumps(answer))
"""


@gpu_only
def test_out_of_memory_on_the_gpu_names_sizes_and_remedies():
    """A real device OOM under ``MemoryPool.set_limit``: freed once, retried, then
    ``fastnn.OutOfMemoryError`` with the batch size and the two remedies; no silent device switch.

    In a fresh process: in one that ran other GPU tests, CuPy's pool holds free blocks inside partly
    used chunks that can serve the batch under any limit above the bytes it holds (on the H200,
    2026-12-04, the test failed twice that way)."""
    proc = subprocess.run([sys.executable, "-c", _OOM_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["raised"] == "OutOfMemoryError" and answer["is_fastnn"], answer
    message = answer["message"]
    assert "out of memory on cuda:0 training batches of 4096" in message
    assert "smaller batch_size (e.g. 2048)" in message and "backend='cpu'" in message
    assert "memory pool:" in message
    assert answer["backend"] == "cupy"
    assert answer["unchanged"], "a failed step changed the weights"


@gpu_only
def test_gpu_evaluate_and_predict_from_host_batches_match_resident(monkeypatch):
    """With ``FASTNN_DEVICE_DATA=host`` evaluation and prediction move one batch at a time."""
    x, y = _data(n=203)
    model = _model("cupy")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=2)
    resident = model.evaluate(x, y, batch_size=50, verbose=0), model.predict(x, batch_size=50)
    monkeypatch.setenv("FASTNN_DEVICE_DATA", "host")
    fed = model.evaluate(x, y, batch_size=50, verbose=0), model.predict(x, batch_size=50)
    numpy.testing.assert_allclose(fed[0], resident[0], rtol=1e-6)
    numpy.testing.assert_array_equal(fed[1], resident[1])


# ------------------------------------------------------------------------------------ cuBLAS mapping (CPU)
class _HostArray:
    """A NumPy array dressed as the CuPy array ``Cublas.gemm`` reads (``.data.ptr`` and flags)."""

    def __init__(self, a):
        self.a = a
        self.shape, self.dtype, self.flags = a.shape, a.dtype, a.flags
        self.data = type("Ptr", (), {"ptr": a.ctypes.data})()

    def fill(self, v):
        self.a.fill(v)


class _ColumnMajorBlas:
    """cuBLAS's column-major GEMM contract, computed by NumPy on the memory behind the pointers:
    ``C = alpha op(A) op(B) + beta C`` with ``op(A)`` m x k, element (i, j) of an ld-matrix at
    ``i + j * ld``. A wrong operand order, dimension or leading dimension in ``Cublas.gemm`` gives
    a wrong product (or a read out of bounds, caught by the size checks here)."""

    def __init__(self, sizes):
        self.sizes, self.calls = sizes, []

    def _view(self, ptr, rows, cols, ld, ctype, dtype):
        import ctypes

        assert ld >= rows and ld * (cols - 1) + rows <= self.sizes[ptr], "leading dimension out of bounds"
        flat = numpy.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctype)), shape=(self.sizes[ptr],))
        return flat[:ld * cols].reshape(cols, ld).T[:rows].view(dtype)

    def _gemm(self, name, ctype, dtype, h, opa, opb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        self.calls.append(name)
        a = self._view(A.value, *((k, m) if opa else (m, k)), lda, ctype, dtype)
        b = self._view(B.value, *((n, k) if opb else (k, n)), ldb, ctype, dtype)
        c = self._view(C.value, m, n, ldc, ctype, dtype)
        prod = alpha._obj.value * ((a.T if opa else a) @ (b.T if opb else b))
        c[...] = prod if beta._obj.value == 0 else prod + beta._obj.value * c   # beta 0: C is not read
        return 0

    def cublasSgemm_v2(self, *args):
        import ctypes
        return self._gemm("sgemm", ctypes.c_float, numpy.float32, *args)

    def cublasDgemm_v2(self, *args):
        import ctypes
        return self._gemm("dgemm", ctypes.c_double, numpy.float64, *args)

    def cublasGemmEx(self, h, opa, opb, m, n, k, alpha, A, atype, lda, B, btype, ldb, beta, C, ctype_, ldc,
                     compute, algo):
        import ctypes
        assert (atype, btype, ctype_, compute) == (0, 0, 0, 77)   # CUDA_R_32F x3, COMPUTE_32F_FAST_TF32
        return self._gemm("gemmex-tf32", ctypes.c_float, numpy.float32, h, opa, opb, m, n, k, alpha, A, lda, B,
                          ldb, beta, C, ldc)


@pytest.mark.parametrize("dtype,precision,call", [(numpy.float32, "float32", "sgemm"),
                                                  (numpy.float64, "float32", "dgemm"),
                                                  (numpy.float64, "tf32", "dgemm"),
                                                  (numpy.float32, "tf32", "gemmex-tf32")])
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["nn", "tn", "nt", "tt"])
def test_cublas_row_major_mapping_against_the_column_major_contract(dtype, precision, call, trans):
    """``Cublas.gemm`` issues row-major ``out = op(a) @ op(b)`` as column-major ``out^T = op(b)^T op(a)^T``."""
    import ctypes

    from fastnn.kernels.gpu.cublas import Cublas

    rng = numpy.random.default_rng(7)
    m, k, n = 5, 7, 3
    a = rng.standard_normal((k, m) if trans[0] else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans[1] else (k, n)).astype(dtype)
    out = numpy.full((m, n), numpy.nan, dtype=dtype)
    arrays = [_HostArray(v) for v in (a, b, out)]
    handle = Cublas.__new__(Cublas)
    handle.lib = _ColumnMajorBlas({x.data.ptr: x.a.size for x in arrays})
    handle.handle = ctypes.c_void_p()
    handle._one = {numpy.dtype(numpy.float32): ctypes.c_float(1.0), numpy.dtype(numpy.float64): ctypes.c_double(1.0)}
    handle._zero = {numpy.dtype(numpy.float32): ctypes.c_float(0.0), numpy.dtype(numpy.float64): ctypes.c_double(0.0)}
    handle.gemm(*arrays, *trans, precision)
    assert handle.lib.calls == [call]
    want = (a.T if trans[0] else a).astype(numpy.float64) @ (b.T if trans[1] else b).astype(numpy.float64)
    numpy.testing.assert_allclose(out, want, rtol=1e-5)
    with pytest.raises(ValueError, match=r"op\(a\) is 5x7, op\(b\) 7x3, out 6x3: the shapes do not chain"):
        handle.gemm(arrays[0], arrays[1], _HostArray(numpy.zeros((6, n), dtype)), *trans)
    with pytest.raises(ValueError, match="must be a C-contiguous"):
        handle.gemm(arrays[0], arrays[1], _HostArray(numpy.zeros((n, m), dtype).T), *trans)
    handle.handle = ctypes.c_void_p()   # nothing to destroy


# ------------------------------------------------------------------------------------ dev primitives (CPU)

DEV_OPTIMIZERS = {
    "sgd": lambda: _opt.SGD(0.05, weight_decay=0.01),
    "momentum": lambda: _opt.Momentum(0.05),
    "nesterov": lambda: _opt.SGD(0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda: _opt.AdaGrad(0.05, weight_decay=0.01),
    "rmsprop": lambda: _opt.RMSprop(_opt.StepDecay(0.01, 2, 0.5)),
    "adam": lambda: _opt.Adam(0.01),
    "adamw": lambda: _opt.AdamW(0.01, weight_decay=0.05),
}


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not select.probe_numba().ok, reason="needs numba"))])
@pytest.mark.parametrize("name", sorted(DEV_OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dev_update_equals_step_flat(backend, name, dtype):
    """``graph_scalars`` + ``step_flat_dev`` (what a captured update runs, scalars through a buffer)
    is ``step_flat`` bit for bit, step after step (the schedule and Adam's t advance)."""
    rng = numpy.random.default_rng(0)
    models = []
    for _ in range(2):
        m = Sequential([Dense(7, activation="relu", input_shape=(5,)), Dense(3, activation="softmax")], dtype=dtype,
                       seed=1, backend=backend)
        m.compile(optimizer=DEV_OPTIMIZERS[name](), loss="sparse_categorical_crossentropy")
        m.build()
        models.append(m)
    eager, dev = models
    pieces = dev.optimizer._pieces(dev.flat)
    for _ in range(4):
        g = rng.standard_normal(eager.flat.size).astype(dtype)
        eager.flat.g[...] = g
        dev.flat.g[...] = g
        eager.optimizer.step_flat(eager.flat)
        rows = dev.ops.asarray(dev.optimizer.graph_scalars(dev.flat, pieces))   # "copied to the device"
        dev.optimizer.step_flat_dev(dev.flat, pieces, rows)
        dev.optimizer.iterations += 1
        numpy.testing.assert_array_equal(host(dev.flat.p), host(eager.flat.p))
        for a, b in zip(dev.optimizer.flat_slots, eager.optimizer.flat_slots):
            numpy.testing.assert_array_equal(host(a), host(b))


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not select.probe_numba().ok, reason="needs numba"))])
def test_dropout_mask_dev_equals_dropout_mask(backend):
    from fastnn.kernels import dropout_base

    ops = fastnn.get_ops(backend)
    for seed, step, row0, shape in [(1, 0, 0, (7, 13)), (123, 45, 5, (3, 1)), (2**40 + 7, 10**6, 17, (33, 65))]:
        base = numpy.array([dropout_base(seed, step)], dtype=numpy.uint64)
        out = numpy.empty(shape, numpy.float32)
        got = ops.dropout_mask_dev(shape, 0.3, base, row0, dtype=numpy.float32, out=out)
        assert got is out
        numpy.testing.assert_array_equal(out, ops.dropout_mask(shape, 0.3, seed, step, row0, dtype=numpy.float32))
    with pytest.raises(ValueError, match="dropout_mask_dev: out is required"):
        ops.dropout_mask_dev((2, 2), 0.3, base, 0, dtype=numpy.float32)


# ------------------------------------------------------------------------------------ review follow-ups (CPU)
@pytest.mark.parametrize("value", ["no", "Auto", 1, None])
def test_cuda_graph_must_be_a_bool_or_auto(value):
    x, y = _data()
    with pytest.raises(TypeError, match=rf"cuda_graph must be True, False or 'auto', got {value!r}"):
        _model("numpy").fit(x, y, epochs=1, verbose=0, cuda_graph=value)


def test_cuda_graph_auto_is_the_default_and_silent_on_a_cpu_backend():
    """The default captures nothing on a CPU backend and, unlike ``cuda_graph=True``, says nothing."""
    import inspect

    assert inspect.signature(Sequential.fit).parameters["cuda_graph"].default == "auto"
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = _model("numpy")
        ref.fit(x, y, epochs=2, verbose=0, seed=1, cuda_graph=False)
        model = _model("numpy")
        model.fit(x, y, epochs=2, verbose=0, seed=1)
    assert model._train_step.graphs is None
    for a, b in zip(model.get_weights(), ref.get_weights()):
        numpy.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(), (None,), "abc", (12, 0), (12.0,)])
def test_build_rejects_shapes_that_are_not_one_sample(shape):
    model = Sequential([Dense(3)])
    with pytest.raises(ValueError, match=r"build\(\) takes the shape of one sample"):
        model.build(shape)


def test_build_accepts_an_int_and_a_batch_axis():
    for shape in (12, (None, 12), (12,)):
        model = Sequential([Dense(3)])
        model.build(shape)
        assert model.input_shape == (12,)


def test_host_feeding_with_a_batch_larger_than_the_data(monkeypatch):
    """The feeder's pinned buffers hold at most the number of samples, not ``batch_size`` rows."""
    monkeypatch.setenv("FASTNN_DEVICE_DATA", "host")
    x, y = _data(n=50)
    made = []
    real = fastnn.feeding.HostBatches.__init__

    def record(self, x, y, dtype, batch_size, transfer):
        made.append(batch_size)
        real(self, x, y, dtype, batch_size, transfer)
    monkeypatch.setattr(fastnn.feeding.HostBatches, "__init__", record)
    h = _model("numpy", dropout=False, bn=False).fit(x, y, batch_size=10**8, epochs=1, verbose=0)
    assert made == [50] and len(h.history["loss"]) == 1


def test_use_with_precision_changes_nothing_when_the_backend_is_unavailable():
    from fastnn.errors import BackendUnavailableError

    if has_gpu():
        pytest.skip("a GPU answers here: cupy is available")
    with pytest.raises(BackendUnavailableError):
        fastnn.use("cupy", precision="tf32")
    assert fastnn.get_matmul_precision() == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        fastnn.use("numpy", precision="bf16")
    assert fbackend._default is None


def test_precision_names_are_case_insensitive():
    try:
        fastnn.set_matmul_precision("TF32")
        assert fastnn.get_matmul_precision() == "tf32"
    finally:
        fastnn.set_matmul_precision("Float32")
    assert fastnn.get_matmul_precision() == "float32"

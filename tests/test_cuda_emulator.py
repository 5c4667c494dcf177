"""The CUDA-on-CPU harness (``tests/cudaemu``): its own checks, planted bugs it must catch, and the
``cupy`` backend's kernel, layer, optimizer and fit tests run on it.

The real ``kernels/gpu/*.cu`` are compiled with the host C++ compiler and launched through the
real launchers. What this cannot prove (streams, graphs, cuBLAS, the memory pool, the GPU math
library's ulps, speed) is left to ``bench/probes/gpu_check.sh`` on a lent GPU.

The planted bugs are each a one-line change to the real sources or launch, made here in memory:
a missing ``__syncthreads`` in the column reduction, a kernel argument of the wrong C type, a
full-mask shuffle in a partial warp, a ``__syncthreads`` that some threads skip.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from fastnn.kernels.gpu import _loader
from fastnn.kernels.gpu import activations as act_launchers

HERE = Path(__file__).resolve().parent
CXX = shutil.which(os.environ.get("CXX", "g++"))
pytestmark = pytest.mark.skipif(CXX is None, reason="the CUDA emulator needs a C++17 compiler (g++; set CXX)")

if CXX is not None:
    sys.path.insert(0, str(HERE))
    from cudaemu import build, fakecupy   # noqa: E402  (the emulated cupy, not installed as "cupy" here)

# The tests that run on the emulator in a subprocess: every cupy-parametrised kernel test, the
# GPU kernel files, layers, optimizers, models (fit end to end) and conv layers. The "big" and
# "wide" shapes (sized for a real GPU's grid) are left to the device check.
EMULATED = ["tests/kernels", "tests/test_gpu_dev_launchers.py", "tests/test_layers.py", "tests/test_optimizers.py",
            "tests/test_models.py", "tests/test_conv_layers.py", "tests/test_cupy_structure.py", "tests/book",
            "tests/test_np_proxy.py", "tests/test_keras_wrong_results.py", "tests/test_keras_losses.py",
            "tests/test_keras_optimizers.py", "tests/test_keras_layers_more.py", "tests/test_channels_last.py"]
SELECT = "(cupy or gpu) and not big and not wide"


def _module(family, code=None):
    kernels = __import__(f"fastnn.kernels.gpu.{family}", fromlist=["KERNELS"]).KERNELS
    return fakecupy.RawModule(code=code if code is not None else _loader.source(family),
                              options=_loader.COMPILE_OPTIONS,
                              name_expressions=_loader.name_expressions(kernels))


def _reset_loader():
    """Forget the launchers' per-device caches (modules, kernels, SM counts, tilings, buffers)."""
    _loader.clear_caches()
    _loader._unused.clear()


def _dev(a):
    return fakecupy.asarray(a)


def _bias_grad(module, dz, block=_loader.COL_BLOCK, grid=None):
    n, d = dz.shape
    db = fakecupy.zeros(d, dtype=dz.dtype)
    module.get_function(f"fastnn_bias_grad<{_loader.CTYPES[dz.dtype]}>")(   # one row tile of n rows
        (grid or -(-d // 32),), block, (_dev(dz), db, numpy.int64(n), numpy.int64(d), numpy.int64(n),
                                        fakecupy.zeros(1, dtype=numpy.float64)))
    return db.get()


@pytest.fixture(params=["index", "reverse", "random:1", "random:2"])
def order(request):
    from cudaemu import set_order

    set_order(request.param)
    yield request.param
    set_order("index")


def test_real_kernel_runs_and_matches_numpy(order):
    dz = numpy.random.default_rng(0).standard_normal((37, 70)).astype(numpy.float32)
    got = _bias_grad(_module("activations"), dz, grid=2)      # 3 column groups on 2 blocks: the loop wraps
    numpy.testing.assert_allclose(got, dz.astype(numpy.float64).sum(0), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("thread_order", ["index", "random:1", "random:2"])
def test_planted_missing_barrier_is_caught(thread_order):
    """Drop the barrier between writing the partial sums and reading them in the column
    reduction (common.cuh): a reading thread that runs before its writer sees the poisoned (NaN)
    shared memory. Index order and random orders catch it (reverse order happens to run every
    writer first, which is why CI runs random orders too)."""
    from cudaemu import set_order

    set_order(thread_order)
    source = _loader.source("activations")
    bug = "    part[threadIdx.y][threadIdx.x] = acc;\n    __syncthreads();\n"
    assert bug in source
    planted = source.replace(bug, "    part[threadIdx.y][threadIdx.x] = acc;\n")
    dz = numpy.random.default_rng(1).standard_normal((37, 70)).astype(numpy.float32)
    good = _bias_grad(_module("activations"), dz)
    try:
        bad = _bias_grad(_module("activations", planted), dz)
    finally:
        set_order("index")
    assert not numpy.array_equal(bad, good, equal_nan=True)


def test_planted_wrong_argument_type_is_refused():
    """n passed as int32 (and as a Python float) where the kernel takes long long: CuPy would pass
    the bytes along; the emulator names the argument and the kernel's signature."""
    k = _module("activations").get_function("fastnn_bias_grad<float>")
    dz, db = fakecupy.zeros((4, 3), dtype=numpy.float32), fakecupy.zeros(3, dtype=numpy.float32)
    tile, part = numpy.int64(4), fakecupy.zeros(1, dtype=numpy.float64)
    with pytest.raises(build.EmulatorError, match=r"argument 2 is int32 .* parameter 2 is int64 "
                                                  r"\(signature: float\*, float\*, int64, int64, int64, double\*\)"):
        k((1,), (32, 8), (dz, db, numpy.int32(4), numpy.int64(3), tile, part))
    with pytest.raises(build.EmulatorError, match=r"argument 3 is double"):
        k((1,), (32, 8), (dz, db, numpy.int64(4), 3.0, tile, part))
    with pytest.raises(build.EmulatorError, match=r"argument 1 is an array of float64 \(double\*\)"):
        k((1,), (32, 8), (dz, fakecupy.zeros(3, dtype=numpy.float64), numpy.int64(4), numpy.int64(3), tile, part))
    with pytest.raises(build.EmulatorError, match=r"2 arguments given, the kernel takes 6"):
        k((1,), (32, 8), (dz, db))
    with pytest.raises(build.EmulatorError, match=r"non-contiguous"):
        k((1,), (32, 8), (fakecupy.zeros((3, 4), dtype=numpy.float32).T, db, numpy.int64(4), numpy.int64(3),
                          tile, part))
    with pytest.raises(build.EmulatorError, match=r"host NumPy array"):
        k((1,), (32, 8), (numpy.zeros((4, 3), numpy.float32), db, numpy.int64(4), numpy.int64(3), tile, part))


def test_planted_full_mask_shuffle_in_a_partial_warp_is_caught():
    """softmax runs one warp per row with 0xffffffff shuffles: launched with 48 threads, its second
    warp has 16 lanes, and the emulator stops the kernel with a message."""
    k = _module("activations").get_function("fastnn_softmax<float>")
    x = _dev(numpy.random.default_rng(2).standard_normal((3, 5)).astype(numpy.float32))
    y = fakecupy.zeros((3, 5), dtype=numpy.float32)
    with pytest.raises(build.EmulatorError, match=r"__shfl_xor_sync with mask 0xffffffff in a partial warp: "
                                                  r"warp 1 .* has only 16 lanes"):
        k((1,), (48,), (x, y, numpy.int64(3), numpy.int64(5)))
    k((1,), (64,), (x, y, numpy.int64(3), numpy.int64(5)))      # whole warps: fine
    e = numpy.exp(x.get() - x.get().max(1, keepdims=True))
    numpy.testing.assert_allclose(y.get(), e / e.sum(1, keepdims=True), rtol=1e-6)


PLANTED_DIVERGENCE = r"""
template <typename T>
__global__ void fastnn_early_exit(T* __restrict__ out, long long n) {
    __shared__ T s[256];
    if (threadIdx.x >= n) return;            // planted: these threads skip the barrier below
    s[threadIdx.x] = T(threadIdx.x);
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % n];
}

template <typename T>
__global__ void fastnn_two_barriers(T* __restrict__ out, long long n) {
    if (threadIdx.x & 1) {   // planted: odd and even threads wait at different barriers
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = T(1);
}
"""


def test_planted_barrier_divergence_is_caught():
    mod = fakecupy.RawModule(code=PLANTED_DIVERGENCE, name_expressions=["fastnn_early_exit<float>",
                                                                         "fastnn_two_barriers<float>"])
    out = fakecupy.zeros(64, dtype=numpy.float32)
    with pytest.raises(build.EmulatorError, match=r"barrier divergence .* 54 have exited"):
        mod.get_function("fastnn_early_exit<float>")((1,), (64,), (out, numpy.int64(10)))
    mod.get_function("fastnn_early_exit<float>")((1,), (64,), (out, numpy.int64(64)))   # all reach it: fine
    assert out.get().tolist() == [float((i + 1) % 64) for i in range(64)]
    with pytest.raises(build.EmulatorError, match=r"barrier divergence .* waits at __syncthreads"):
        mod.get_function("fastnn_two_barriers<float>")((1,), (64,), (out, numpy.int64(64)))


def test_float_kernels_flush_subnormals_double_kernels_keep_them():
    """CuPy compiles with -ftz=true: float arithmetic flushes subnormals, double does not."""
    mod = _module("activations")
    for dtype, flushed in ((numpy.float32, True), (numpy.float64, False)):
        tiny = numpy.finfo(dtype).tiny
        x = _dev(numpy.full(4, tiny, dtype))
        half = _dev(numpy.full(4, 0.5, dtype))
        out = fakecupy.zeros(4, dtype=dtype)
        mod.get_function(f"fastnn_mul<{_loader.CTYPES[numpy.dtype(dtype)]}>")(
            (1,), (256,), (x, half, out, numpy.int64(4)))
        assert (out.get() == 0).all() == flushed


def test_name_expressions_are_enforced():
    mod = _module("activations")
    with pytest.raises(build.EmulatorError, match="not among the module's name_expressions"):
        mod.get_function("fastnn_bias_grad<int>")


def test_launchers_through_the_emulated_module_match_the_reference():
    """The real launcher (kernels/gpu/activations.py) with the emulated CuPy swapped in for it."""
    saved = _loader._cupy
    _loader._cupy = lambda: fakecupy
    _reset_loader()
    try:
        dz = numpy.random.default_rng(3).standard_normal((300, 45))
        got = act_launchers.bias_grad(_dev(dz)).get()
        numpy.testing.assert_allclose(got, dz.sum(0), rtol=1e-12, atol=1e-12)
        out = fakecupy.zeros((45, 300)).T          # a strided out= view: written through a temporary
        y = act_launchers.bias_act(_dev(dz), _dev(numpy.ones(45)), 1, out=out)
        assert y is out
        numpy.testing.assert_array_equal(out.get(), numpy.maximum(dz + 1, 0))
    finally:
        _loader._cupy = saved
        _reset_loader()


@pytest.mark.parametrize("n, d, tiling", [(2100, 45, (4, 528)), (3000, 3, (8, 376)), (1000, 45, (1, 1000)),
                                           (1100, 300, (1, 1100)), (0, 5, (1, 1))])
def test_column_reductions_on_a_2d_grid_match_the_reference(n, d, tiling):
    """The launchers split the rows into tiles when the column groups alone leave SMs idle (the
    emulated device has 2 SMs: 8 blocks wanted), sum each tile's partials in a float64 buffer that
    the loader keeps, and add them in tile order; the result is the reference's sum."""
    from fastnn.kernels import GELU, RELU

    saved = _loader._cupy
    _loader._cupy = lambda: fakecupy
    _reset_loader()
    try:
        assert _loader.column_tiles(n, d) == tiling
        rng = numpy.random.default_rng(n + d)
        dz, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
        numpy.testing.assert_allclose(act_launchers.bias_grad(_dev(dz)).get(), dz.sum(0), rtol=1e-12, atol=1e-12)
        db = fakecupy.zeros(d) + numpy.nan
        g = act_launchers.act_backward_bias_grad(_dev(dz), _dev(y), RELU, db=db).get()
        numpy.testing.assert_array_equal(g, dz * (y > 0))
        numpy.testing.assert_allclose(db.get(), g.sum(0), rtol=1e-12, atol=1e-12)
        db32 = fakecupy.zeros(d, dtype=numpy.float32) + numpy.float32(numpy.nan)
        g32 = act_launchers.act_backward_bias_grad(_dev(dz.astype(numpy.float32)), _dev(y.astype(numpy.float32)),
                                                   GELU, db=db32, z=_dev(y.astype(numpy.float32))).get()
        numpy.testing.assert_allclose(db32.get(), g32.astype(numpy.float64).sum(0), rtol=2e-6, atol=1e-5)
        first = _loader.column_partials(1)
        act_launchers.bias_grad(_dev(dz))
        assert _loader.column_partials(1) is first   # one buffer, kept: graphs hold its address
    finally:
        _loader._cupy = saved
        _reset_loader()
        _loader._partials.clear()


@pytest.mark.parametrize("n, d, tiled", [(2100, 45, True), (300, 45, False)])
def test_batchnorm_on_a_2d_grid_matches_the_reference(n, d, tiled):
    """Batch normalization's training statistics and gradients by row tiles (with many rows; the
    emulated device has 2 SMs) and its inference pass on the same grid, against the NumPy reference."""
    from fastnn.backend import get_ops
    from fastnn.kernels.gpu import normalization as bn

    ref = get_ops("numpy")
    saved = _loader._cupy
    _loader._cupy = lambda: fakecupy
    _reset_loader()
    try:
        assert (_loader.column_tiles(n, d)[0] > 1) == tiled
        rng = numpy.random.default_rng(n)
        x = rng.standard_normal((n, d)) * 2 + 0.5
        gamma, beta, dout = rng.standard_normal(d), rng.standard_normal(d), rng.standard_normal((n, d))
        rm, rv = rng.standard_normal(d), rng.random(d) + 0.5
        for train in (True, False):
            rm_d, rv_d = _dev(rm), _dev(rv)
            want = ref.batchnorm_forward(x, gamma, beta, rm.copy() if train else rm, rv.copy() if train else rv,
                                         0.9, 1e-5, train)
            rm_ref, rv_ref = rm.copy(), rv.copy()
            if train:
                ref.batchnorm_forward(x, gamma, beta, rm_ref, rv_ref, 0.9, 1e-5, True)
            got = bn.batchnorm_forward(_dev(x), _dev(gamma), _dev(beta), rm_d, rv_d, 0.9, 1e-5, train)
            for g, w in zip(got, want):
                numpy.testing.assert_allclose(g.get(), w, rtol=1e-12, atol=1e-12)
            numpy.testing.assert_allclose(rm_d.get(), rm_ref, rtol=1e-12, atol=1e-12)
            numpy.testing.assert_allclose(rv_d.get(), rv_ref, rtol=1e-12, atol=1e-12)
        _, xhat, inv_std = ref.batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), 0.9, 1e-5, True)
        dg_ref, db_ref = numpy.empty(d), numpy.empty(d)
        dx_ref = ref.batchnorm_backward(dout, xhat, inv_std, gamma, dgamma=dg_ref, dbeta=db_ref)
        dg, db = fakecupy.zeros(d) + numpy.nan, fakecupy.zeros(d) + numpy.nan
        dx = bn.batchnorm_backward(_dev(dout), _dev(xhat), _dev(inv_std), _dev(gamma), dgamma=dg, dbeta=db)
        numpy.testing.assert_allclose(dx.get(), dx_ref, rtol=1e-10, atol=1e-12)
        numpy.testing.assert_allclose(dg.get(), dg_ref, rtol=1e-12, atol=1e-12)
        numpy.testing.assert_allclose(db.get(), db_ref, rtol=1e-12, atol=1e-12)
        dx_only = bn.batchnorm_backward(_dev(dout), _dev(xhat), _dev(inv_std), _dev(gamma))
        numpy.testing.assert_allclose(dx_only.get(), dx_ref, rtol=1e-10, atol=1e-12)
    finally:
        _loader._cupy = saved
        _reset_loader()
        _loader._partials.clear()


def test_narrow_and_wide_index_arithmetic_agree(monkeypatch):
    """The kernels that divide indices run a 32-bit body when the launcher finds every size below
    2^31 (``L.narrow``) and a 64-bit one otherwise: both give the reference's results (the wide
    body forced by lowering the limit, since arrays of 2^31 elements do not fit the emulator)."""
    from fastnn.backend import get_ops
    from fastnn.kernels import GELU, RELU
    from fastnn.kernels.gpu import conv

    ref = get_ops("numpy")
    saved = _loader._cupy
    _loader._cupy = lambda: fakecupy
    _reset_loader()
    try:
        rng = numpy.random.default_rng(5)
        x4, x2, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((9, 5)), rng.standard_normal(5)
        z4, bc = rng.standard_normal((3, 2, 7, 6)), rng.standard_normal(3)
        for limit in (_loader.NARROW_LIMIT, 0):
            monkeypatch.setattr(_loader, "NARROW_LIMIT", limit)
            assert _loader.narrow(10) == (limit > 10)
            numpy.testing.assert_allclose(act_launchers.bias_act(_dev(x2), _dev(b), RELU).get(),
                                          ref.bias_act(x2, b, RELU), rtol=1e-15)
            zb = fakecupy.zeros((9, 5))
            numpy.testing.assert_allclose(act_launchers.bias_act(_dev(x2), _dev(b), GELU, z_out=zb).get(),
                                          ref.bias_act(x2, b, GELU), rtol=1e-15)
            numpy.testing.assert_allclose(zb.get(), x2 + b, rtol=1e-15)
            for fn in ("im2col", "im2col_t"):
                col = getattr(conv, fn)(_dev(x4), 3, 2, stride=2, pad=1)
                numpy.testing.assert_array_equal(col.get(), getattr(ref, fn)(x4, 3, 2, 2, 1))
                back = getattr(conv, fn.replace("im2col", "col2im"))(col, x4.shape, 3, 2, stride=2, pad=1)
                numpy.testing.assert_allclose(back.get(), getattr(ref, fn.replace("im2col", "col2im"))(
                    col.get(), x4.shape, 3, 2, 2, 1), rtol=1e-14)
            y, arg = conv.maxpool_forward(_dev(x4), 2, 3, stride=1, pad=0)
            y_ref, arg_ref = ref.maxpool_forward(x4, 2, 3, 1, 0)
            numpy.testing.assert_array_equal(y.get(), y_ref)
            numpy.testing.assert_array_equal(arg.get(), arg_ref)
            numpy.testing.assert_allclose(conv.conv_bias_act(_dev(z4), _dev(bc), RELU).get(),
                                          ref.conv_bias_act(z4, bc, RELU), rtol=1e-15)
            out = conv.conv_act_backward(_dev(x4), _dev(numpy.abs(x4)), RELU)
            numpy.testing.assert_allclose(out.get(), ref.conv_act_backward(x4, numpy.abs(x4), RELU), rtol=1e-15)
    finally:
        _loader._cupy = saved
        _reset_loader()


def test_column_partials_are_per_thread():
    """Two threads launching on one stream could interleave one reduction's tile kernel and finish
    with another's: each thread gets its own partial-sum buffer, and keeps it."""
    import threading

    saved = _loader._cupy
    _loader._cupy = lambda: fakecupy
    try:
        mine = _loader.column_partials(64)
        theirs = []
        worker = threading.Thread(target=lambda: theirs.append(_loader.column_partials(64)))
        worker.start()
        worker.join()
        assert theirs[0] is not mine and _loader.column_partials(64) is mine
    finally:
        _loader._cupy = saved
        _loader._partials.clear()


@pytest.mark.parametrize("thread_order", ["index", "random:11", "random:12"])
def test_cupy_backend_suite_on_the_emulator(thread_order):
    """The cupy-parametrised kernel, layer, optimizer, model (fit) and conv tests, with the cupy
    backend running the real kernels on the emulator: in thread-index order and two random orders."""
    env = dict(os.environ, FASTNN_CUDA_EMULATOR="1", FASTNN_CUDAEMU_ORDER=thread_order,
               FASTNN_CUDAEMU_SMS="2")
    args = [sys.executable, "-m", "pytest", *EMULATED, "-q", "-p", "no:cacheprovider", "-k", SELECT,
            "-p", "no:warnings", "-x" if thread_order != "index" else "--maxfail=20"]
    # The README's command runs the venv's pytest script from the repository root (the installed
    # layout); do the same so fastnn.kernels resolves as installed.
    pytest_script = Path(sys.executable).with_name("pytest")
    if pytest_script.exists():
        args = [str(pytest_script), *args[3:]]
    proc = subprocess.run(args, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=1500)
    tail = proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = re.findall(r"(\d+) (passed|failed|error)", proc.stdout.splitlines()[-1] if proc.stdout else "")
    counts = {k: int(v) for v, k in summary}
    print(f"emulated cupy suite ({thread_order}): {counts}")
    assert proc.returncode == 0, tail
    assert counts.get("passed", 0) > 1000, tail      # the selection really ran on the emulator

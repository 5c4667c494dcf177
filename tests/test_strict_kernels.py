"""Strict kernels (``FASTNN_STRICT_KERNELS=1``, which ``tests/conftest.py`` sets for every run).

A fast backend (numba, cupy) that would run the NumPy reference of a hot primitive instead of its
kernel raises ``KernelFallbackError`` naming the primitive, the backend and its arguments, unless
the test declares the fallback (``fastnn.testing.allow_fallback()`` or
``@pytest.mark.allow_fallback``). So a kernel that is never reached fails its test: a planted
always-fallback in ``NumbaOps.rmsprop_step``, ``sigmoid_bce`` and ``batchnorm_backward`` fails the
kernel tests under strict mode, and (the blind spot this switch closes) passes them without it.
"""
import contextlib
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy
import pytest

from fastnn.backend import HOT_PRIMITIVES, get_ops
from fastnn.backend.ops import Ops
from fastnn.testing import (KernelFallbackError, allow_fallback, assert_close, has_numba, strict_kernels,
                            strict_kernels_enabled)

ROOT = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not has_numba(), reason="needs numba")
PLANTED = ("rmsprop_step", "sigmoid_bce", "batchnorm_backward")


def _always_fall_back(cls, name):
    """The planted bug: ``cls.<name>`` whose body is ``return super().<name>(...)``."""

    def method(self, *args, **kwargs):
        return getattr(super(cls, self), name)(*args, **kwargs)

    method.__name__ = name
    return method


def _rand(shape, dtype, seed):
    return numpy.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.fixture(autouse=True)
def _strict():
    """These tests check the switch itself, so it is on for them even under FASTNN_STRICT_KERNELS=0."""
    with strict_kernels(True):
        yield


def test_the_test_suite_runs_with_strict_kernels():
    if os.environ.get("FASTNN_STRICT_KERNELS") == "0":
        pytest.skip("strict kernels turned off for this run by FASTNN_STRICT_KERNELS=0")
    assert os.environ.get("FASTNN_STRICT_KERNELS") == "1"
    assert strict_kernels_enabled()
    for name in HOT_PRIMITIVES:
        assert hasattr(getattr(Ops, name), "__wrapped__"), name


def test_reference_backend_never_refuses():
    ops = get_ops("numpy")
    x = _rand((3, 4), numpy.float16, 0)  # no fast backend, nothing to fall back from
    assert ops.bias_act(x, None, 0).dtype == numpy.float16


def test_off_means_plain_methods_and_silent_fallbacks(monkeypatch):
    """Off (the default outside tests), Ops's methods are the undecorated functions: nothing costs."""
    from fastnn.backend import cupy_ops
    from fastnn.kernels.gpu import _loader

    for name in HOT_PRIMITIVES:
        assert hasattr(vars(cupy_ops.CupyOps)[name], "__wrapped__"), name
    assert _loader.function is cupy_ops._counting_function
    with strict_kernels(False):
        assert not strict_kernels_enabled()
        for name in HOT_PRIMITIVES:
            assert not hasattr(getattr(Ops, name), "__wrapped__"), name
            assert not hasattr(vars(cupy_ops.CupyOps)[name], "__wrapped__"), name
        assert _loader.function is cupy_ops._PLAIN_FUNCTION
        if has_numba():
            from fastnn.backend.numba_ops import NumbaOps

            monkeypatch.setattr(NumbaOps, "rmsprop_step", _always_fall_back(NumbaOps, "rmsprop_step"))
            p, g, h = (numpy.ones(5, numpy.float32) for _ in range(3))
            get_ops("numba").rmsprop_step(p, g, h, 0.01, 0.9, 1e-7)  # runs the reference silently
    assert strict_kernels_enabled()


@needs_numba
@pytest.mark.parametrize("name", PLANTED)
def test_planted_fallback_raises_naming_primitive_and_backend(monkeypatch, name):
    from fastnn.backend.numba_ops import NumbaOps

    monkeypatch.setattr(NumbaOps, name, _always_fall_back(NumbaOps, name))
    ops, f = get_ops("numba"), numpy.float32
    x = _rand((6, 5), f, 1)
    call = {
        "rmsprop_step": lambda: ops.rmsprop_step(x.copy(), x, numpy.abs(x), 0.01, 0.9, 1e-7),
        "sigmoid_bce": lambda: ops.sigmoid_bce(x, (x > 0).astype(f)),
        "batchnorm_backward": lambda: ops.batchnorm_backward(x, x, numpy.ones(5, f), numpy.ones(5, f)),
    }[name]
    with pytest.raises(KernelFallbackError) as err:
        call()
    msg = str(err.value)
    assert f"NumbaOps.{name}" in msg and "'numba'" in msg and "FASTNN_STRICT_KERNELS=1" in msg, msg
    assert "float32 (6, 5)" in msg and "unconditional super() call" in msg, msg
    assert "allow_fallback" in msg, msg
    with allow_fallback():
        call()  # declared: the reference runs


@needs_numba
@pytest.mark.parametrize("case,why", [
    ("float16", "dtype float16"),
    ("mixed", "mixed dtypes float32, float64"),
    ("empty", "dz empty"),
    ("broadcast", "x: float32 (4, 3), y: float32 (3,)"),
])
def test_intended_fallbacks_raise_with_the_reason_unless_declared(ref, case, why):
    ops = get_ops("numba")
    x32 = _rand((4, 3), numpy.float32, 2)
    call, args = {
        "float16": (ops.softmax, (x32.astype(numpy.float16),)),
        "mixed": (ops.mul, (x32, x32.astype(numpy.float64))),
        "empty": (ops.bias_grad, (numpy.zeros((0, 3), numpy.float32),)),
        "broadcast": (ops.mul, (x32, x32[0])),
    }[case]
    with pytest.raises(KernelFallbackError, match=r"NumbaOps\.\w+ \(backend 'numba'\)") as err:
        call(*args)
    assert why in str(err.value), str(err.value)
    with allow_fallback():
        got = call(*args)
    want = getattr(ref, call.__name__)(*args)
    assert got.dtype == want.dtype
    assert_close(got, want)


@needs_numba
@pytest.mark.allow_fallback
def test_allow_fallback_marker_declares_the_whole_test():
    ops = get_ops("numba")
    x = _rand((4, 3), numpy.float16, 3)
    assert ops.softmax(x).dtype == numpy.float16


def test_allow_fallback_nests():
    from fastnn.backend import ops as ops_module

    with allow_fallback():
        with allow_fallback():
            assert ops_module._allowed == 2
        assert ops_module._allowed == 1
    assert ops_module._allowed == 0


@pytest.mark.parametrize("name", ["rmsprop_step", "bias_act"])
def test_cupy_primitive_it_does_not_define_raises(monkeypatch, name):
    """CupyOps calls its launchers with no fallback branch; a hot primitive it does not define would run
    the reference on CuPy arrays: under strict kernels that raises (checked without CuPy or a GPU)."""
    from fastnn.backend.cupy_ops import CupyOps

    monkeypatch.delattr(CupyOps, name)
    ops = object.__new__(CupyOps)  # __init__ imports CuPy; the check runs before any array is touched
    with pytest.raises(KernelFallbackError, match=rf"CupyOps\.{name} \(backend 'cupy'\).*CupyOps does not define "
                                                  rf"{name}, so it inherits the reference"):
        getattr(ops, name)(numpy.ones(3, numpy.float32), None, 0)


def test_cupy_override_calling_super_raises(monkeypatch):
    from fastnn.backend.cupy_ops import CupyOps

    monkeypatch.setattr(CupyOps, "sigmoid_bce", _always_fall_back(CupyOps, "sigmoid_bce"))
    ops = object.__new__(CupyOps)
    ops._cupy = type("cupy", (), {"ndarray": numpy.ndarray})
    ops.device_id = 0
    ops.owns = lambda a: True  # stands in for CuPy arrays on this device
    x = _rand((3, 2), numpy.float32, 4)
    with pytest.raises(KernelFallbackError, match=r"CupyOps\.sigmoid_bce \(backend 'cupy'\).*x: float32 \(3, 2\)"):
        ops.sigmoid_bce(x, x)


def _bare_cupy_ops():
    """A CupyOps without CuPy: its methods' launchers are monkeypatched, its arrays are NumPy's."""
    from fastnn.backend.cupy_ops import CupyOps

    ops = object.__new__(CupyOps)
    ops.owns = lambda a: True
    ops.device_id = 0
    ops._cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda i: contextlib.nullcontext(),
                                                                 runtime=types.SimpleNamespace(getDevice=lambda: 0)))
    return ops


def test_cupy_launcher_that_never_launches_its_kernel_raises(monkeypatch):
    """A launcher-level fallback (here: mul computed by a generic array operation) fails under strict kernels."""
    from fastnn.backend import cupy_ops

    monkeypatch.setattr(cupy_ops._act, "mul", lambda x, y, *, out=None: numpy.multiply(x, y, out=out))
    monkeypatch.setattr(cupy_ops._drop, "dropout_mask", lambda shape, *a, dtype, out=None, **k: numpy.ones(shape, dtype))
    ops = _bare_cupy_ops()
    x = _rand((3, 2), numpy.float32, 5)
    with pytest.raises(KernelFallbackError, match=r"CupyOps\.mul \(backend 'cupy'\) returned without launching a "
                                                  r"fastnn CUDA kernel.*x: float32 \(3, 2\), y: float32 \(3, 2\)"):
        ops.mul(x, x)
    with pytest.raises(KernelFallbackError, match=r"CupyOps\.dropout_mask .*returned without launching"):
        ops.dropout_mask((3, 2), 0.5, 1, 2)
    with allow_fallback():
        assert_close(ops.mul(x, x), x * x)
    e = numpy.zeros((0, 2), numpy.float32)
    assert ops.mul(e, e).shape == (0, 2)  # nothing to compute: no launch needed


def test_cupy_launches_through_the_loader_are_counted(monkeypatch):
    from fastnn.backend import cupy_ops
    from fastnn.kernels.gpu import _loader as L

    launched = []
    monkeypatch.setattr(cupy_ops, "_PLAIN_FUNCTION",
                        lambda family, kernels, name, dtype: lambda grid, block, args: launched.append(name))

    def mul(x, y, *, out=None):
        L.function("activations", (), "fastnn_mul", x.dtype)((1,), (32,), (x, y))
        return x * y

    monkeypatch.setattr(cupy_ops._act, "mul", mul)
    x = _rand((3, 2), numpy.float32, 6)
    assert_close(_bare_cupy_ops().mul(x, x), x * x)
    assert launched == ["fastnn_mul"]


def test_switch_is_read_from_the_environment_once_at_import():
    code = ("import fastnn.config as c, fastnn.backend.ops as o; "
            "print(c.STRICT_KERNELS, o.strict_kernels_enabled(), hasattr(o.Ops.mul, '__wrapped__'))")
    outs = {}
    for value in ("1", "0", "", "bogus"):
        env = {k: v for k, v in os.environ.items() if k != "FASTNN_STRICT_KERNELS"}
        if value:
            env["FASTNN_STRICT_KERNELS"] = value
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                              timeout=120)
        outs[value] = (proc.returncode, proc.stdout.strip(), proc.stderr)
    assert outs["1"][:2] == (0, "True True True"), outs["1"]
    assert outs["0"][:2] == (0, "False False False"), outs["0"]
    assert outs[""][:2] == (0, "False False False"), outs[""]
    assert outs["bogus"][0] != 0 and "FASTNN_STRICT_KERNELS must be 1 or 0" in outs["bogus"][2], outs["bogus"]


PLANT_PLUGIN = textwrap.dedent("""
    # loaded with -p before the tests: NumbaOps.{rmsprop_step, sigmoid_bce, batchnorm_backward} always fall back
    from fastnn.backend.numba_ops import NumbaOps

    def _always_fall_back(name):
        def method(self, *args, **kwargs):
            return getattr(super(NumbaOps, self), name)(*args, **kwargs)
        return method

    for _name in NAMES:
        setattr(NumbaOps, _name, _always_fall_back(_name))
""")


def _run_kernel_tests_with_planted_fallbacks(tmp_path, strict):
    (tmp_path / "planted_fallbacks.py").write_text(f"NAMES = {PLANTED!r}\n" + PLANT_PLUGIN)
    env = dict(os.environ, FASTNN_STRICT_KERNELS=strict, COLUMNS="1000",  # whole summary lines
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "planted_fallbacks", "-p", "no:randomly", "-rf",
           "tests/kernels/test_cpu_optimizers.py::test_step_matches_reference",
           "tests/kernels/test_cpu_losses.py::test_sigmoid_bce_matches_reference",
           "tests/kernels/test_cpu_misc.py::test_batchnorm_backward_matches_reference",
           "-k", "numba and (rmsprop or sigmoid_bce or batchnorm_backward) and f32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@needs_numba
def test_planted_always_fallback_fails_the_kernel_tests(tmp_path):
    """The issue's measurement, reproduced and closed: with the three primitives forced to fall back, the
    kernel tests fail under strict kernels (each primitive's test), and pass (the blind spot) without."""
    rc, out = _run_kernel_tests_with_planted_fallbacks(tmp_path, "1")
    assert rc == 1, out
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    for name, test in (("rmsprop_step", "test_step_matches_reference[numba-f32-"),
                       ("sigmoid_bce", "test_sigmoid_bce_matches_reference[numba-f32-"),
                       ("batchnorm_backward", "test_batchnorm_backward_matches_reference[numba-f32-")):
        hits = [line for line in failed if test in line]
        assert hits and all("KernelFallbackError" in line and f"NumbaOps.{name}" in line for line in hits), out
    assert " passed" not in out.splitlines()[-1], out  # every selected test fails

    rc, out = _run_kernel_tests_with_planted_fallbacks(tmp_path, "0")
    assert rc == 0 and "failed" not in out.splitlines()[-1], out

"""Structure of the cupy backend, checked without a GPU and without CuPy.

- ``CupyOps`` defines every hot primitive itself, with the base signature exactly (inspected on
  the class: nothing is instantiated, so CuPy is never imported).
- ``fastnn.kernels.gpu`` and ``fastnn.backend.cupy_ops`` import where CuPy cannot be imported,
  and importing them does not import CuPy (checked in a subprocess that blocks ``import cupy``).
- The launchers' argument checks raise before any CuPy call, so their messages are tested here
  on NumPy arrays (they read only ``dtype``, ``shape`` and ``flags``).
"""
import inspect
import subprocess
import sys
import textwrap

import numpy
import pytest

from fastnn.backend.ops import HOT_PRIMITIVES, Ops
from fastnn.kernels import RELU
from fastnn.testing import BLOCK_CUPY_IMPORTS

GPU_MODULES = ("_loader", "activations", "losses", "dropout", "normalization", "optimizers")


def _cupy_ops_class():
    from fastnn.backend.cupy_ops import CupyOps
    return CupyOps


@pytest.mark.parametrize("name", HOT_PRIMITIVES)
def test_cupy_defines_hot_primitive_with_base_signature(name):
    cls = _cupy_ops_class()
    assert name in vars(cls), f"CupyOps inherits {name} from the reference instead of defining it"
    assert inspect.signature(vars(cls)[name]) == inspect.signature(getattr(Ops, name))


# That each override really launches a fastnn kernel is tested by behaviour, not by reading its
# source: under FASTNN_STRICT_KERNELS=1 a CupyOps hot primitive that returns without launching one
# raises, and the cupy kernel tests run that way on the CPU emulator (tests/test_cuda_emulator.py).


BLOCK_CUPY = BLOCK_CUPY_IMPORTS + textwrap.dedent("""
    import importlib
    for mod in MODULES:
        importlib.import_module(mod)
    import fastnn.backend.cupy_ops
    assert not any(m == "cupy" or m.startswith("cupy.") for m in sys.modules), sorted(
        m for m in sys.modules if m.startswith("cupy"))
    print("imported without cupy")
""")


def test_gpu_modules_import_without_cupy():
    modules = [f"fastnn.kernels.gpu.{m}" for m in GPU_MODULES]
    code = f"MODULES = {modules!r}\n" + BLOCK_CUPY
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "imported without cupy" in proc.stdout, proc.stdout + proc.stderr


def test_launchers_list_their_kernels():
    import importlib

    for mod in GPU_MODULES[1:]:
        m = importlib.import_module(f"fastnn.kernels.gpu.{mod}")
        assert m.FAMILY == mod and m.KERNELS and all(k.startswith("fastnn_") for k in m.KERNELS)


def test_name_expressions_cover_float_and_double():
    from fastnn.kernels.gpu import _loader

    assert _loader.name_expressions(["fastnn_mul"]) == ["fastnn_mul<float>", "fastnn_mul<double>"]


# ---------------------------------------------------------------------------- error messages
f32, f64 = numpy.float32, numpy.float64


def _a(shape, dtype=f32):
    return numpy.ones(shape, dtype=dtype)


def test_bias_act_rejects_integer_dtype():
    from fastnn.kernels.gpu import activations

    with pytest.raises(TypeError, match=r"bias_act.*int32"):
        activations.bias_act(_a((2, 3), numpy.int32), None, RELU)


def test_act_backward_rejects_mixed_dtypes():
    from fastnn.kernels.gpu import activations

    with pytest.raises(TypeError, match=r"act_backward.*float32.*float64"):
        activations.act_backward(_a((2, 3)), _a((2, 3), f64), RELU)


def test_bias_act_rejects_wrong_bias_shape():
    from fastnn.kernels.gpu import activations

    with pytest.raises(ValueError, match=r"bias_act: expected b of shape \(3,\)"):
        activations.bias_act(_a((2, 3)), _a(4), RELU)


def test_bias_act_rejects_unknown_activation():
    from fastnn.kernels.gpu import activations

    with pytest.raises(ValueError, match="unknown activation code 99"):
        activations.bias_act(_a((2, 3)), None, 99)


# Launchers that write arrays the caller gives (outputs, in-place state): (module, name) -> those names.
WRITERS = {
    ("activations", "bias_act"): ("out", "z_out"), ("activations", "act_backward"): ("out",),
    ("activations", "bias_grad"): ("out",), ("activations", "act_backward_bias_grad"): ("out", "db"),
    ("activations", "softmax"): ("out",), ("activations", "mul"): ("out",),
    ("losses", "softmax_xent"): ("y", "dx"), ("losses", "softmax_xent_backward"): ("out",),
    ("losses", "sigmoid_bce"): ("y", "dx"), ("losses", "mse"): ("dx",),
    ("dropout", "dropout_mask"): ("out",),
    ("optimizers", "sgd_step"): ("p",), ("optimizers", "momentum_step"): ("p", "v"),
    ("optimizers", "adagrad_step"): ("p", "h"), ("optimizers", "rmsprop_step"): ("p", "h"),
    ("optimizers", "adam_step"): ("p", "m", "v"),
    ("normalization", "batchnorm_forward"): ("running_mean", "running_var", "out"),
    ("normalization", "batchnorm_backward"): ("dx", "dgamma", "dbeta"),
    ("conv", "im2col"): ("out",), ("conv", "col2im"): ("out",), ("conv", "im2col_t"): ("out",),
    ("conv", "col2im_t"): ("out",), ("conv", "maxpool_forward"): ("out", "argmax"),
    ("conv", "maxpool_backward"): ("out",), ("conv", "conv_bias_act"): ("out", "z_out"),
    ("conv", "conv_act_backward"): ("out", "db"),
}


@pytest.mark.parametrize("family,name", sorted(WRITERS), ids=lambda v: v)
def test_launchers_write_strided_buffers_through_a_contiguous_copy(family, name):
    """Every eager launcher that writes a caller's array accepts a strided view of it (the shared
    kernel tests check the values on the emulator): it is wrapped by ``_loader.writes`` with exactly
    the parameters it writes."""
    import importlib

    fn = getattr(importlib.import_module(f"fastnn.kernels.gpu.{family}"), name)
    assert getattr(fn, "__wrapped__", None) is not None, f"{family}.{name} is not wrapped by _loader.writes"
    assert fn.__closure__ is not None
    names = next(c.cell_contents for c in fn.__closure__ if isinstance(c.cell_contents, tuple))
    assert names == WRITERS[family, name]
    params = inspect.signature(fn).parameters
    assert all(n in params for n in names)


def test_writes_copies_in_runs_on_the_copy_and_copies_back(monkeypatch):
    from fastnn.kernels.gpu import _loader as L

    monkeypatch.setattr(L, "_cupy", lambda: numpy)   # host arrays stand in for device arrays
    seen = []

    @L.writes("v", "out")
    def launcher(x, v, *, out=None):
        seen.append((x.flags.c_contiguous, v.flags.c_contiguous, out.flags.c_contiguous))
        v += x                                  # in-place state: reads its old values
        out[...] = 2 * x
        return out, v

    x = numpy.arange(4.0)
    v_base, out_base = numpy.ones(8), numpy.zeros((4, 3))
    v, out = v_base[::2], out_base[:, 1]
    got_out, got_v = launcher(x, v, out=out)
    assert seen == [(True, True, True)]
    assert got_out is out and got_v is v        # the caller's views come back, not the copies
    numpy.testing.assert_array_equal(v_base, [1, 1, 2, 1, 3, 1, 4, 1])
    numpy.testing.assert_array_equal(out_base[:, 1], 2 * x)
    assert (out_base[:, [0, 2]] == 0).all()
    seen.clear()
    launcher(x, numpy.ones(4), out=numpy.zeros(4))  # all contiguous: called as it is
    assert seen == [(True, True, True)]


def test_graph_variants_still_refuse_strided_buffers():
    """The *_dev launchers run inside a captured CUDA graph: no hidden copies there."""
    from fastnn.kernels.gpu import dropout, optimizers

    for fn in (dropout.dropout_mask_dev, optimizers.sgd_step_dev, optimizers.adam_step_dev):
        assert not hasattr(fn, "__wrapped__")


def test_out_buffer_shape_and_dtype_are_checked():
    from fastnn.kernels.gpu import activations

    with pytest.raises(ValueError, match=r"mul: out must have shape \(2, 3\)"):
        activations.mul(_a((2, 3)), _a((2, 3)), out=_a((3, 2)))
    with pytest.raises(TypeError, match=r"mul: out must have dtype float32"):
        activations.mul(_a((2, 3)), _a((2, 3)), out=_a((2, 3), f64))


def test_softmax_xent_rejects_bad_targets():
    from fastnn.kernels.gpu import losses

    with pytest.raises(ValueError, match=r"softmax_xent: class indices t must have shape \(4,\)"):
        losses.softmax_xent(_a((4, 3)), numpy.zeros(5, numpy.int64))
    with pytest.raises(ValueError, match=r"one-hot t must have shape \(4, 3\)"):
        losses.softmax_xent(_a((4, 3)), _a((4, 2)))


def test_dropout_mask_checks_rate_dtype_and_shape():
    from fastnn.kernels.gpu import dropout

    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        dropout.dropout_mask((2, 3), 1.0, seed=0, step=0)
    with pytest.raises(TypeError, match="dropout_mask.*float16"):
        dropout.dropout_mask((2, 3), 0.5, 0, 0, dtype=numpy.float16)
    with pytest.raises(ValueError, match=r"expected shape \(N, D\)"):
        dropout.dropout_mask((2, 3, 4), 0.5, 0, 0)


def test_optimizer_state_must_be_contiguous_and_match():
    from fastnn.kernels.gpu import optimizers

    p, g = _a(8), _a(8)
    with pytest.raises(ValueError, match=r"adam_step: m must have shape \(8,\)"):
        optimizers.adam_step(p, g, _a(7), _a(8), 1e-3, 0.9, 0.999, 1e-8, t=1)
    with pytest.raises(TypeError, match=r"sgd_step.*float32.*float64"):
        optimizers.sgd_step(p, _a(8, f64), 0.1)
    with pytest.raises(ValueError, match=r"adam_step: the step number t counts from 1"):
        optimizers.adam_step(p, g, _a(8), _a(8), 1e-3, 0.9, 0.999, 1e-8, t=0)


def test_batchnorm_checks_parameter_shapes():
    from fastnn.kernels.gpu import normalization

    x = _a((4, 3))
    with pytest.raises(ValueError, match=r"batchnorm_forward: expected gamma of shape \(3,\)"):
        normalization.batchnorm_forward(x, _a(2), _a(3), _a(3), _a(3), 0.9, 1e-5, True)
    with pytest.raises(TypeError, match=r"batchnorm_backward: gamma must have the dtype of x"):
        normalization.batchnorm_backward(x, x, _a(3), _a(3, f64))

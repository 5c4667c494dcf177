"""Structure of the numba backend: every hot primitive is its own, kernels are serial, cached and
never compute float32 data in float64."""
import inspect

import numpy
import pytest

from fastnn.backend import HOT_PRIMITIVES, Ops
from fastnn.testing import has_numba

pytestmark = pytest.mark.skipif(not has_numba(), reason="needs numba")

KERNEL_MODULES = ("activations", "losses", "dropout", "normalization", "optimizers")


def _numba_ops_class():
    from fastnn.backend.numba_ops import NumbaOps
    return NumbaOps


def _dispatchers():
    import importlib

    from numba.core.registry import CPUDispatcher

    for mod in KERNEL_MODULES:
        m = importlib.import_module(f"fastnn.kernels.cpu.{mod}")
        for name, obj in vars(m).items():
            if isinstance(obj, CPUDispatcher):
                yield f"{mod}.{name}", obj


@pytest.mark.parametrize("name", HOT_PRIMITIVES)
def test_numba_defines_hot_primitive_with_base_signature(name):
    cls = _numba_ops_class()
    assert name in vars(cls), f"NumbaOps inherits {name} from the reference instead of defining it"
    assert inspect.signature(vars(cls)[name]) == inspect.signature(getattr(Ops, name))


def test_every_kernel_module_has_kernels_with_the_agreed_options():
    found = dict(_dispatchers())
    assert len(found) >= 20, sorted(found)
    for name, disp in found.items():
        opts = disp.targetoptions
        assert opts.get("error_model") == "numpy", name
        assert not opts.get("parallel"), name
        assert not opts.get("fastmath"), name
        assert type(disp._cache).__name__ != "NullCache", f"{name} is not cache=True"


def _run_every_primitive_in_float32():
    from fastnn.backend import get_ops
    from fastnn.kernels import ACTIVATIONS

    ops = get_ops("numba")
    f = numpy.float32
    rng = numpy.random.default_rng(0)
    x, dout = rng.standard_normal((5, 4)).astype(f), rng.standard_normal((5, 4)).astype(f)
    b = rng.standard_normal(4).astype(f)
    for act in ACTIVATIONS.values():
        z = numpy.empty_like(x)
        y = ops.bias_act(x, b, act, 0.1)
        ops.bias_act(x, b, act, 0.1, z_out=z)
        ops.act_backward(dout, y, act, 0.1, z=z)
        ops.act_backward_bias_grad(dout, y, act, 0.1, db=numpy.empty(4, f), z=z)
    ops.bias_grad(dout)
    ops.softmax(x)
    ops.mul(x, dout)
    ops.dropout_mask((5, 4), 0.5, 1, 2, dtype=f)
    onehot = numpy.eye(4, dtype=f)[[0, 1, 2, 3, 0]]
    for t in (numpy.array([0, 1, 2, 3, 0]), onehot):
        ops.softmax_xent(x, t, y=numpy.empty_like(x), dx=numpy.empty_like(x))
        ops.softmax_xent_backward(ops.softmax(x), t, 0.5)
    ops.sigmoid_bce(x, onehot, y=numpy.empty_like(x), dx=numpy.empty_like(x))
    ops.mse(x, dout, 0.1, dx=numpy.empty_like(x))
    for train in (True, False):
        _, xhat, inv = ops.batchnorm_forward(x, b, b.copy(), b.copy(), numpy.abs(b) + 1, 0.9, 1e-5, train)
    ops.batchnorm_backward(dout, xhat, inv, b)
    p, g, m, v = (rng.random(9).astype(f) for _ in range(4))
    ops.sq_norm(p)
    ops.sgd_step(p, g, 0.1, 0.01, 0.5)
    ops.momentum_step(p, g, m, 0.1, 0.9, 0.01, 0.5, True)
    ops.adagrad_step(p, g, v, 0.1, 1e-7, 0.01, 0.5)
    ops.rmsprop_step(p, g, v, 0.1, 0.9, 1e-7, 0.01, 0.5)
    ops.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 3, 0.01, 0.5, True)


def test_float32_kernels_take_no_float64_argument():
    from numba import types

    _run_every_primitive_in_float32()
    checked = 0
    for name, disp in _dispatchers():
        for sig in disp.nopython_signatures:
            args = list(sig.args)
            if not any(isinstance(a, types.Array) and a.dtype == types.float32 for a in args):
                continue
            checked += 1
            bad = [a for a in args + [sig.return_type]
                   if a == types.float64 or (isinstance(a, types.Array) and a.dtype == types.float64)
                   or (isinstance(a, types.BaseTuple) and types.float64 in tuple(a))]
            assert not bad, f"{name}{sig.args} -> {sig.return_type} computes in float64"
    assert checked >= 15, f"only {checked} float32 kernel signatures were found"


def test_dropout_kernel_stays_in_uint64():
    from numba import types

    from fastnn.kernels.cpu import dropout

    _run_every_primitive_in_float32()
    for sig in dropout.dropout_mask.nopython_signatures:
        assert sig.args[1] == types.uint64 and sig.args[2] == types.uint64, sig

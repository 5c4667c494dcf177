"""The host side of the CUDA kernels' graph-capture ("dev") variants, checked without a GPU or CuPy.

``kernels/gpu/optimizers.py``: ``<rule>_scalars`` returns, as float64, exactly the typed scalars
that ``<rule>_step`` passes by value (the private ``_<rule>_scalars`` both share), in the order
``fastnn_<rule>_step_dev`` reads them from ``s``; the launchers hand the kernels the same
arguments apart from ``s`` (recorded through a stand-in for the kernel); the argument checks raise
before any CuPy call. ``kernels/gpu/dropout.py``:
``dropout_mask_dev`` shares ``dropout_mask``'s checks and arguments, ``base`` aside. The bitwise
equality of the kernels themselves is tested by running them (``tests/kernels/test_gpu_kernels.py``, on a
GPU and on the CPU emulator).
"""
import inspect
import subprocess
import sys
import textwrap

import numpy
import pytest

from fastnn.testing import BLOCK_CUPY_IMPORTS

from fastnn.kernels import dropout_base
from fastnn.kernels.gpu import _loader as L
from fastnn.kernels.gpu import dropout as drop
from fastnn.kernels.gpu import optimizers as opt

F32, F64 = numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)
DTYPES = [F32, F64]
RULES = ("sgd", "momentum", "adagrad", "rmsprop", "adam", "amsgrad", "nadam", "adamax")
COUNTS = {"sgd": 7, "momentum": 9, "adagrad": 8, "rmsprop": 10, "adam": 15, "amsgrad": 15, "nadam": 14, "adamax": 11}
STATE = {"sgd": (), "momentum": ("v",), "adagrad": ("h",), "rmsprop": ("h",), "adam": ("m", "v"),
         "amsgrad": ("m", "v", "v_hat"), "nadam": ("m", "v"), "adamax": ("m", "u")}
GRAD_OPTIONS = [dict(), dict(weight_decay=0.01), dict(scale=0.5), dict(weight_decay=3e-4, scale=1 / 3),
                dict(clipvalue=0.7), dict(weight_decay=3e-4, scale=1 / 3, clipvalue=1 / 7)]
GRAD_IDS = ["plain", "wd", "scale", "wd+scale", "clip", "wd+scale+clip"]
CASES = [  # (id, rule, hyperparameters, as each launcher takes them by keyword)
    ("sgd", "sgd", dict(lr=0.1)),
    ("sgd-odd-lr", "sgd", dict(lr=1 / 3)),
    ("momentum", "momentum", dict(lr=0.1, momentum=0.9)),
    ("nesterov", "momentum", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("adagrad", "adagrad", dict(lr=0.01, eps=1e-7)),
    ("rmsprop", "rmsprop", dict(lr=0.01, rho=0.99, eps=1e-7)),
    ("adam-t1", "adam", dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=1)),
    ("adam-t7", "adam", dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=7)),
    ("adamw-t1", "adam", dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=1, decoupled=True)),
    ("adamw-t7", "adam", dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=7, decoupled=True)),
    ("adam-t1000", "adam", dict(lr=3e-4, beta1=0.8, beta2=0.99, eps=1e-6, t=1000)),
    ("amsgrad-t1", "amsgrad", dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=1)),
    ("amsgradw-t7", "amsgrad", dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=7, decoupled=True)),
    ("nadam-t1", "nadam", dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, t=1, mu_product=0.9 * 0.52)),
    ("nadam-t9", "nadam", dict(lr=1e-3, beta1=0.8, beta2=0.99, eps=1e-7, t=9, mu_product=1 / 3)),
    ("adamax-t1", "adamax", dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-7, t=1)),
    ("adamax-t50", "adamax", dict(lr=2e-3, beta1=0.8, beta2=0.99, eps=1e-6, t=50)),
]
CASE_IDS = [c[0] for c in CASES]


def _typed(rule, dtype, **kw):
    return getattr(opt, f"_{rule}_scalars")(dtype, **kw)


def _bits(x):
    a = numpy.asarray(x)
    return a.view({4: numpy.uint32, 8: numpy.uint64}[a.dtype.itemsize])


class FakeDeviceArray:
    """What the launchers' checks read from a CuPy array (``dtype``, ``ndim``, ``shape``, ``size``,
    ``flags``), without being a ``numpy.ndarray``: lets the dev launchers run to the kernel call."""

    def __init__(self, a):
        self.array = a
        self.dtype, self.ndim, self.shape, self.size, self.flags = a.dtype, a.ndim, a.shape, a.size, a.flags


# ---------------------------------------------------------------------------- <rule>_scalars
@pytest.mark.parametrize("opts", GRAD_OPTIONS, ids=GRAD_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_scalars_are_the_by_value_scalars_as_float64(dtype, case, opts):
    _, rule, hyper = case
    typed = _typed(rule, dtype, **hyper, **opts)
    s = getattr(opt, f"{rule}_scalars")(dtype, **hyper, **opts)
    assert type(s) is numpy.ndarray and s.dtype == F64 and s.shape == (COUNTS[rule],) and s.flags.c_contiguous
    assert len(typed) == COUNTS[rule] == opt.SCALAR_COUNTS[rule]
    for i, (x, v) in enumerate(zip(typed, s)):
        if isinstance(x, numpy.integer):
            assert x.dtype == numpy.int32 and int(x) in (0, 1), (i, x)
            assert v == int(x), (i, x, v)
        else:
            assert x.dtype == dtype, (i, x)
            assert v == float(x), (i, x, v)
            # the dev kernel's (T)s[i]: converts back to exactly the by-value scalar's bits
            assert _bits(dtype.type(v)) == _bits(x), (i, x, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_scalar_layouts(dtype):
    """The documented order of ``s`` (= the by-value kernel's scalar parameters after ``n``); every
    layout ends with ``clip, use_clip`` (0, 0 without clipping)."""
    dt = dtype.type
    f = lambda x: float(dt(x))  # noqa: E731
    assert list(opt.sgd_scalars(dtype, 0.1, 0.01, 2.0)) == [f(0.1), f(0.01), 2.0, 1, 1, 0.0, 0]
    assert list(opt.sgd_scalars(dtype, 0.1)) == [f(0.1), 0.0, 1.0, 0, 0, 0.0, 0]
    assert list(opt.sgd_scalars(dtype, 0.1, clipvalue=0.3)) == [f(0.1), 0.0, 1.0, 0, 0, f(0.3), 1]
    assert list(opt.momentum_scalars(dtype, 0.1, 0.9, 0.0, 0.5, True)) == [f(0.1), f(0.9), 0.0, 0.5, 0, 1, 1, 0.0, 0]
    # AdaGrad and RMSprop (Keras): decoupled decay p *= 1 - lr*wd, [.., decay, scale, use_decay, use_scale]
    assert list(opt.adagrad_scalars(dtype, 0.01, 1e-7, 0.02)) == [f(0.01), f(1e-7), f(1.0 - 0.01 * 0.02), 1.0, 1, 0,
                                                                  0.0, 0]
    assert list(opt.rmsprop_scalars(dtype, 0.01, 0.9, 1e-7, clipvalue=2.5)) == [
        f(0.01), f(0.9), f(1 - 0.9), f(1e-7), 1.0, 1.0, 0, 0, 2.5, 1]
    lr, b1, b2, eps, t = 1e-3, 0.9, 0.999, 1e-8, 3
    step_size, inv_sqrt_bc2 = f(lr / (1.0 - b1 ** t)), f(1.0 / numpy.sqrt(1.0 - b2 ** t))
    assert list(opt.adam_scalars(dtype, lr, b1, b2, eps, t, 0.01)) == [
        f(b1), f(1 - b1), f(b2), f(1 - b2), f(eps), step_size, inv_sqrt_bc2, f(0.01), 1.0, 1.0, 1, 0, 0, 0.0, 0]
    # AdamW: the gradient is not decayed (use_wd = 0, wd = 0); p *= 1 - lr*wd (use_decay = 1)
    assert list(opt.adam_scalars(dtype, lr, b1, b2, eps, t, 0.01, 2.0, True)) == [
        f(b1), f(1 - b1), f(b2), f(1 - b2), f(eps), step_size, inv_sqrt_bc2, 0.0, 2.0, f(1.0 - lr * 0.01), 0, 1, 1,
        0.0, 0]
    assert list(opt.adam_scalars(dtype, lr, b1, b2, eps, t, 0.0, 1.0, True))[-6:] == [1.0, 0, 0, 0, 0.0, 0]
    assert list(opt.amsgrad_scalars(dtype, lr, b1, b2, eps, t, 0.01, 2.0, True, 0.25)) == \
        list(opt.adam_scalars(dtype, lr, b1, b2, eps, t, 0.01, 2.0, True, 0.25))
    # Nadam: c_m = lr*mu_{t+1}/(1 - P*mu_{t+1}), c_g = lr*(1 - mu_t)/(1 - P), mu_i = b1*(1 - 0.5*0.96^i)
    P = 0.3
    mu_t, mu_next = b1 * (1 - 0.5 * 0.96 ** t), b1 * (1 - 0.5 * 0.96 ** (t + 1))
    assert list(opt.nadam_scalars(dtype, lr, b1, b2, 1e-7, t, P, 0.02, 0.5, 0.1)) == [
        f(lr * mu_next / (1 - P * mu_next)), f(lr * (1 - mu_t) / (1 - P)), f(b1), f(1 - b1), f(b2), f(1 - b2),
        f(1e-7), inv_sqrt_bc2, f(1 - lr * 0.02), 0.5, 1, 1, f(0.1), 1]
    assert list(opt.adamax_scalars(dtype, lr, b1, b2, 1e-7, t)) == [
        step_size, f(b1), f(1 - b1), f(b2), f(1e-7), 1.0, 1.0, 0, 0, 0.0, 0]


def test_scalars_accept_any_dtype_spelling_and_reject_others():
    for spelling in (numpy.float32, "float32", F32):
        numpy.testing.assert_array_equal(opt.sgd_scalars(spelling, 0.1), opt.sgd_scalars(F32, 0.1))
    for rule, args in (("sgd", (0.1,)), ("momentum", (0.1, 0.9)), ("adagrad", (0.1, 1e-7)),
                       ("rmsprop", (0.1, 0.9, 1e-7)), ("adam", (0.1, 0.9, 0.999, 1e-8, 1)),
                       ("amsgrad", (0.1, 0.9, 0.999, 1e-8, 1)), ("nadam", (0.1, 0.9, 0.999, 1e-8, 1, 0.5)),
                       ("adamax", (0.1, 0.9, 0.999, 1e-8, 1))):
        with pytest.raises(TypeError, match=rf"{rule}_scalars: .*float32 or float64.*float16"):
            getattr(opt, f"{rule}_scalars")(numpy.float16, *args)


def test_adam_scalars_reject_step_zero():
    with pytest.raises(ValueError, match=r"adam_scalars: the step number t counts from 1, got 0"):
        opt.adam_scalars(F32, 1e-3, 0.9, 0.999, 1e-8, 0)
    with pytest.raises(ValueError, match=r"adam_step: the step number t counts from 1, got 0"):
        opt._adam_scalars(F32, 1e-3, 0.9, 0.999, 1e-8, 0)
    for rule, extra in (("amsgrad", ()), ("nadam", (0.5,)), ("adamax", ())):
        with pytest.raises(ValueError, match=rf"{rule}_scalars: the step number t counts from 1, got 0"):
            getattr(opt, f"{rule}_scalars")(F32, 1e-3, 0.9, 0.999, 1e-8, 0, *extra)
        with pytest.raises(ValueError, match=rf"{rule}_step: the step number t counts from 1, got 0"):
            getattr(opt, f"{rule}_step")(*[numpy.ones(3, F32)] * (2 + len(STATE[rule])), 1e-3, 0.9, 0.999, 1e-8, 0,
                                         *extra)


# ---------------------------------------------------------------------------- the kernels' arguments
@pytest.fixture
def recorded(monkeypatch):
    """Kernel launches recorded as ``(kernel name, dtype, grid, block, args)`` instead of run."""
    calls = []

    def fn(name, dtype):
        return lambda grid, block, args: calls.append((name, numpy.dtype(dtype), grid, block, args))

    monkeypatch.setattr(opt, "_fn", fn)
    monkeypatch.setattr(L, "_device_id", lambda: 0)  # no CuPy here: the launch's device is looked up first
    monkeypatch.setattr(L, "grid_1d", lambda n, block=L.BLOCK, dev=None: 3)
    monkeypatch.setattr(L, "function", lambda family, kernels, name, dtype, dev=None: fn(name, dtype))
    return calls


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_by_value_and_dev_launchers_pass_the_same_arguments(recorded, dtype, case):
    _, rule, hyper = case
    hyper = dict(hyper, weight_decay=0.01, scale=0.5, clipvalue=0.25)
    n = 11
    arrays = [numpy.ones(n, dtype) for _ in range(2 + len(STATE[rule]))]
    getattr(opt, f"{rule}_step")(*arrays, **hyper)
    s = FakeDeviceArray(getattr(opt, f"{rule}_scalars")(dtype, **hyper))
    getattr(opt, f"{rule}_step_dev")(*arrays, s)
    (name, dt, grid, block, args), (dname, ddt, dgrid, dblock, dargs) = recorded
    assert (name, dname) == (f"fastnn_{rule}_step", f"fastnn_{rule}_step_dev")
    assert dname in opt.KERNELS and name in opt.KERNELS
    assert dt == ddt == dtype and (grid, block) == (dgrid, dblock) == ((3,), (L.BLOCK,))
    k = len(arrays)
    assert all(a is b for a, b in zip(args[:k], arrays)) and all(a is b for a, b in zip(dargs[:k], arrays))
    assert type(args[k]) is numpy.int64 and args[k] == n and type(dargs[k]) is numpy.int64 and dargs[k] == n
    assert len(dargs) == k + 2 and dargs[k + 1] is s
    by_value = args[k + 1:]
    typed = _typed(rule, dtype, **hyper)
    assert [type(x) for x in by_value] == [type(x) for x in typed]
    assert [_bits(x).item() for x in by_value] == [_bits(x).item() for x in typed]
    assert [float(x) for x in by_value] == list(s.array)


def test_launchers_skip_empty_buffers_after_checking(recorded):
    e = numpy.ones(0, F32)
    opt.adam_step_dev(e, e, e, e, FakeDeviceArray(opt.adam_scalars(F32, 1e-3, 0.9, 0.999, 1e-8, 1)))
    opt.sgd_step(e, e, 0.1)
    assert recorded == []
    with pytest.raises(ValueError, match="sgd_step_dev: s must hold the 7 scalars"):
        opt.sgd_step_dev(e, e, FakeDeviceArray(numpy.zeros(4)))


def test_dropout_launchers_pass_the_same_arguments(recorded):
    for dtype in DTYPES:
        for seed, step, row0, shape, rate in [(3, 9, 0, (7, 13), 0.3), (2**40 + 3, 123456, 5, (4, 1), 0.9)]:
            recorded.clear()
            out, out_dev = numpy.empty(shape, dtype), numpy.empty(shape, dtype)
            assert drop.dropout_mask(shape, rate, seed, step, row0, dtype=dtype, out=out) is out
            base = FakeDeviceArray(numpy.array([dropout_base(seed, step)], numpy.uint64))
            assert drop.dropout_mask_dev(shape, rate, base, row0, dtype=dtype, out=out_dev) is out_dev
            (name, dt, grid, block, args), (dname, ddt, dgrid, dblock, dargs) = recorded
            assert (name, dname) == ("fastnn_dropout_mask", "fastnn_dropout_mask_dev")
            assert dt == ddt == dtype and (grid, block) == (dgrid, dblock)
            assert args[0] is out and dargs[0] is out_dev and dargs[2] is base
            assert type(args[2]) is numpy.uint64 and args[2] == dropout_base(seed, step)
            rest, drest = args[1:2] + args[3:], dargs[1:2] + dargs[3:]
            assert [type(x) for x in rest] == [type(x) for x in drest] == [
                numpy.int64, numpy.uint64, numpy.float64, dtype.type]
            assert [_bits(x).item() if isinstance(x, numpy.floating) else int(x) for x in rest] == \
                   [_bits(x).item() if isinstance(x, numpy.floating) else int(x) for x in drest]
            assert drest[0] == shape[0] * shape[1] and drest[1] == row0 * shape[1]


# ---------------------------------------------------------------------------- argument checks (no CuPy)
def _state_args(rule, n=8, dtype=F32):
    return [numpy.ones(n, dtype) for _ in range(2 + len(STATE[rule]))]


@pytest.mark.parametrize("rule", RULES)
def test_dev_launchers_check_s(rule):
    launch = getattr(opt, f"{rule}_step_dev")
    args = _state_args(rule)
    count = COUNTS[rule]
    with pytest.raises(ValueError, match=rf"{rule}_step_dev: s must hold the {count} scalars of {rule}_scalars, "
                                         rf"got length {count - 1}"):
        launch(*args, FakeDeviceArray(numpy.zeros(count - 1)))
    with pytest.raises(ValueError, match=rf"{rule}_step_dev: s must hold the {count} scalars.*length {count + 1}"):
        launch(*args, FakeDeviceArray(numpy.zeros(count + 1)))
    with pytest.raises(TypeError, match=rf"{rule}_step_dev: s must have dtype float64.*got float32"):
        launch(*args, FakeDeviceArray(numpy.zeros(count, numpy.float32)))
    with pytest.raises(TypeError, match=rf"{rule}_step_dev: s must have dtype float64.*got uint64"):
        launch(*args, FakeDeviceArray(numpy.zeros(count, numpy.uint64)))
    with pytest.raises(ValueError, match=rf"{rule}_step_dev: s must be 1-D, got shape \(1, {count}\)"):
        launch(*args, FakeDeviceArray(numpy.zeros((1, count))))
    with pytest.raises(ValueError, match=rf"{rule}_step_dev: s must be C-contiguous"):
        launch(*args, FakeDeviceArray(numpy.zeros(2 * count)[::2]))
    with pytest.raises(ValueError, match=rf"{rule}_step_dev: s .* is required"):
        launch(*args, None)
    with pytest.raises(TypeError, match=rf"{rule}_step_dev: s must be a float64 device array, got list"):
        launch(*args, [0.0] * count)
    with pytest.raises(TypeError, match=rf"{rule}_step_dev: s must be a device \(CuPy\) array"):
        launch(*args, numpy.zeros(count))


@pytest.mark.parametrize("rule", RULES)
def test_dev_launchers_check_p_g_and_state(rule):
    launch = getattr(opt, f"{rule}_step_dev")
    s = FakeDeviceArray(numpy.zeros(COUNTS[rule]))
    args = _state_args(rule)
    with pytest.raises(TypeError, match=rf"{rule}_step_dev.*float32.*float64"):
        launch(args[0], numpy.ones(8, F64), *args[2:], s)
    with pytest.raises(ValueError, match=rf"{rule}_step_dev: g must have the shape of p"):
        launch(args[0], numpy.ones(9, F32), *args[2:], s)
    with pytest.raises(ValueError, match=rf"{rule}_step_dev: p must be C-contiguous"):
        launch(numpy.ones(16, F32)[::2], *args[1:], s)
    for i, name in enumerate(STATE[rule]):
        bad = list(args)
        bad[2 + i] = numpy.ones(7, F32)
        with pytest.raises(ValueError, match=rf"{rule}_step_dev: {name} must have shape \(8,\)"):
            launch(*bad, s)


def test_dropout_mask_dev_checks():
    base = FakeDeviceArray(numpy.array([dropout_base(1, 2)], numpy.uint64))
    out = numpy.empty((2, 3), F32)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: out is required"):
        drop.dropout_mask_dev((2, 3), 0.5, base)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: rate must be in \[0, 1\)"):
        drop.dropout_mask_dev((2, 3), 1.0, base, out=out)
    with pytest.raises(TypeError, match=r"dropout_mask_dev.*float16"):
        drop.dropout_mask_dev((2, 3), 0.5, base, dtype=numpy.float16, out=out)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: expected shape \(N, D\)"):
        drop.dropout_mask_dev((2, 3, 4), 0.5, base, out=out)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: shape and row0 must be non-negative"):
        drop.dropout_mask_dev((2, 3), 0.5, base, -1, out=out)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: out must have shape \(2, 3\)"):
        drop.dropout_mask_dev((2, 3), 0.5, base, out=numpy.empty((3, 2), F32))
    with pytest.raises(TypeError, match=r"dropout_mask_dev: out must have dtype float64"):
        drop.dropout_mask_dev((2, 3), 0.5, base, dtype=F64, out=out)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: out must be C-contiguous"):
        drop.dropout_mask_dev((2, 3), 0.5, base, out=numpy.empty((2, 6), F32)[:, ::2])
    with pytest.raises(TypeError, match=r"dropout_mask_dev: base must have dtype uint64, got int64"):
        drop.dropout_mask_dev((2, 3), 0.5, FakeDeviceArray(numpy.zeros(1, numpy.int64)), out=out)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: base must hold exactly one element.*got 2"):
        drop.dropout_mask_dev((2, 3), 0.5, FakeDeviceArray(numpy.zeros(2, numpy.uint64)), out=out)
    with pytest.raises(TypeError, match=r"dropout_mask_dev: base must be a device \(CuPy\) array"):
        drop.dropout_mask_dev((2, 3), 0.5, numpy.zeros(1, numpy.uint64), out=out)
    with pytest.raises(TypeError, match=r"dropout_mask_dev: base must be a one-element uint64 device array"):
        drop.dropout_mask_dev((2, 3), 0.5, 12345, out=out)
    # the by-value launcher's messages are unchanged
    with pytest.raises(ValueError, match=r"dropout_mask: rate must be in \[0, 1\)"):
        drop.dropout_mask((2, 3), 1.0, 0, 0)


# What the .cu files do with these arguments (each dev kernel reading the by-value kernel's
# scalars from s in order, both dropout kernels drawing the same hash) is tested by running them:
# tests/kernels/test_gpu_kernels.py's *_dev_bitwise_equal_to_by_value tests, on a GPU and on the CPU
# emulator in every CI run (tests/test_cuda_emulator.py).


# ---------------------------------------------------------------------------- CupyOps and no CuPy
def test_cupy_ops_step_scalars_are_the_launchers_for_every_rule():
    """``CupyOps.step_scalars(rule, dtype, *args)`` packs exactly what the rule's launcher packs, for the
    arguments ``<rule>_step`` takes after its slots (the optimizers' one description); a wrong count
    or an unknown rule is refused by name."""
    from fastnn.backend.cupy_ops import CupyOps
    from fastnn.backend.ops import HOT_PRIMITIVES, Ops

    ops = CupyOps.__new__(CupyOps)
    slots = {rule: len(STATE[rule]) for rule in RULES}
    assert set(Ops.STEP_ARGS) == set(RULES) == set(opt.SCALAR_COUNTS)
    for rule in RULES:
        params = list(inspect.signature(getattr(Ops, rule + "_step")).parameters)[3 + slots[rule]:]
        assert len(params) == len(Ops.STEP_ARGS[rule]), rule
        values = {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.01, "scale": 0.5, "nesterov": True, "eps": 1e-6,
                  "rho": 0.95, "beta1": 0.85, "beta2": 0.99, "t": 3, "decoupled": True, "mu_product": 0.4,
                  "clipvalue": 0.5}
        assert params[-1] == "clipvalue", rule
        args = tuple(values[name] for name in params)
        for dt in (F32, numpy.float64):
            numpy.testing.assert_array_equal(ops.step_scalars(rule, dt, *args), getattr(opt, rule + "_scalars")(dt, *args))
        with pytest.raises(ValueError, match=rf"{rule}_step takes {len(args)} arguments"):
            ops.step_scalars(rule, F32, *args[:-1])
    with pytest.raises(ValueError, match="unknown optimizer primitive 'lion'"):
        ops.step_scalars("lion", F32, 0.1)
    assert "step_dev" not in HOT_PRIMITIVES and "dropout_mask_dev" not in HOT_PRIMITIVES


def test_cupy_ops_scalars_need_no_gpu():
    """``CupyOps.step_scalars`` is host code: callable without a device (no ``__init__`` ran)."""
    from fastnn.backend.cupy_ops import CupyOps

    s = CupyOps.__new__(CupyOps).step_scalars("adam", F32, 1e-3, 0.9, 0.999, 1e-8, 2, 0.01, 1.0, True, 0.5)
    numpy.testing.assert_array_equal(s, opt.adam_scalars(F32, 1e-3, 0.9, 0.999, 1e-8, 2, 0.01, 1.0, True, 0.5))


NO_CUPY = BLOCK_CUPY_IMPORTS + textwrap.dedent("""
    import numpy
    from fastnn.kernels.gpu import optimizers as opt, dropout as drop
    for dt in (numpy.float32, numpy.float64):
        assert len(opt.sgd_scalars(dt, 0.1, 0.01, 2.0)) == 7
        assert len(opt.momentum_scalars(dt, 0.1, 0.9, nesterov=True)) == 9
        assert len(opt.adagrad_scalars(dt, 0.1, 1e-7)) == 8
        assert len(opt.rmsprop_scalars(dt, 0.1, 0.9, 1e-7)) == 10
        assert len(opt.adam_scalars(dt, 1e-3, 0.9, 0.999, 1e-8, 5, 0.01, decoupled=True)) == 15
        assert len(opt.amsgrad_scalars(dt, 1e-3, 0.9, 0.999, 1e-8, 5, 0.01, decoupled=True)) == 15
        assert len(opt.nadam_scalars(dt, 1e-3, 0.9, 0.999, 1e-8, 5, 0.2, clipvalue=1.0)) == 14
        assert len(opt.adamax_scalars(dt, 1e-3, 0.9, 0.999, 1e-8, 5)) == 11
    one = numpy.ones(4, numpy.float32)
    for call in (lambda: opt.sgd_step_dev(one, one, numpy.zeros(4)),
                 lambda: opt.adam_step_dev(one, one, one, one, numpy.zeros(15)),
                 lambda: opt.nadam_step_dev(one, one, one, one, numpy.zeros(14)),
                 lambda: drop.dropout_mask_dev((2, 2), 0.5, numpy.zeros(1, numpy.uint64))):
        try:
            call()
        except (TypeError, ValueError):
            pass
        else:
            raise AssertionError("expected an argument error")
    assert not any(m == "cupy" or m.startswith("cupy.") for m in sys.modules)
    print("scalars without cupy")
""")


def test_scalars_and_checks_run_without_cupy():
    proc = subprocess.run([sys.executable, "-c", NO_CUPY], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "scalars without cupy" in proc.stdout, proc.stdout + proc.stderr



def test_adam_scalars_made_once_per_setting_keep_the_sign_of_zero():
    """``_adam_scalars`` keeps its step-independent scalars per setting: a setting met again gives the
    same bits as a fresh one, and -0.0 (an equal dict key to 0.0) is not served 0.0's scalars."""
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        opt._ADAM_FIXED.clear()
        a = opt._adam_scalars(F32, 1e-3, first, 0.999, 1e-7, 3)
        b = opt._adam_scalars(F32, 1e-3, second, 0.999, 1e-7, 3)
        assert numpy.signbit(a[0]) == numpy.signbit(first) and numpy.signbit(b[0]) == numpy.signbit(second)
        assert numpy.signbit(a[1]) == numpy.signbit(b[1]) == False  # noqa: E712 (1 - beta1 = 1.0 either way)
    opt._ADAM_FIXED.clear()
    fresh = opt._adam_scalars(F64, 2e-3, 0.9, 0.99, 1e-8, 7, 0.01, 0.5, True, 0.25)
    again = opt._adam_scalars(F64, 2e-3, 0.9, 0.99, 1e-8, 7, 0.01, 0.5, True, 0.25)
    assert [type(x) for x in again] == [type(x) for x in fresh]
    assert [_bits(x).item() for x in again] == [_bits(x).item() for x in fresh]

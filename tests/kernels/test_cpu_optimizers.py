"""Optimizer primitives (flat buffers, in place) of each fast backend against the NumPy reference.

Each backend gets fresh copies of every argument; every array written is compared. The Numba
kernels follow the reference operation by operation, so on ``numba`` they must agree bit for bit.
"""
import numpy
import pytest

from fastnn.backend import get_ops
from fastnn.testing import assert_close, host

SIZES = [1, 7, 1000, 4099]


def _rand(n, dtype, seed, scale=1.0, positive=False):
    x = numpy.random.default_rng(seed).standard_normal(n) * scale
    return (numpy.abs(x) if positive else x).astype(dtype)


def _tol(backend):
    return {"rtol": 0, "atol": 0} if backend == "numba" else {}


def _run(ops, name, arrays, kwargs, steps=3):
    """Run ``steps`` updates on device copies of ``arrays``; return host copies of every array."""
    dev = [ops.asarray(a.copy()) for a in arrays]
    for _ in range(steps):
        ret = getattr(ops, name)(*dev, **kwargs)
        assert ret is None
    return [host(a) for a in dev]


CASES = [
    ("sgd_step", 1, dict(lr=0.1)),
    ("sgd_step", 1, dict(lr=0.05, weight_decay=1e-2, scale=0.7)),
    ("momentum_step", 2, dict(lr=0.1, momentum=0.9)),
    ("momentum_step", 2, dict(lr=0.1, momentum=0.9, weight_decay=1e-3, scale=0.5)),
    ("momentum_step", 2, dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("momentum_step", 2, dict(lr=0.1, momentum=0.8, weight_decay=1e-2, scale=2.0, nesterov=True)),
    ("adagrad_step", 2, dict(lr=0.01, eps=1e-7)),
    ("adagrad_step", 2, dict(lr=0.01, eps=1e-7, weight_decay=1e-3, scale=0.3)),
    ("rmsprop_step", 2, dict(lr=0.01, rho=0.9, eps=1e-7)),
    ("rmsprop_step", 2, dict(lr=0.01, rho=0.99, eps=1e-8, weight_decay=1e-3, scale=0.3)),
    ("adam_step", 3, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=1)),
    ("adam_step", 3, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=7, weight_decay=1e-2, scale=0.5)),
    ("adam_step", 3, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=3, weight_decay=1e-2,
                          decoupled=True)),
    ("adam_step", 3, dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-7, t=100, scale=3.0, decoupled=True)),
]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name,nstate,kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_step_matches_reference(fast_backend, ref, dtype, n, name, nstate, kwargs):
    ops = get_ops(fast_backend)
    p, g = _rand(n, dtype, 1), _rand(n, dtype, 2, 0.1)
    # velocity is signed; AdaGrad/RMSprop h and Adam's (m, v): v must be >= 0
    state = [_rand(n, dtype, 3 + k, 0.01, positive=(name != "momentum_step" and k == nstate - 2))
             for k in range(nstate - 1)]
    arrays = [p, g] + state
    expected = _run(ref, name, arrays, kwargs)
    got = _run(ops, name, arrays, kwargs)
    for k, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == dtype
        assert_close(a, e, dtype, err_msg=f"{name} array {k}", **_tol(fast_backend))
    assert not numpy.array_equal(got[0], p), "p was not updated"
    numpy.testing.assert_array_equal(got[1], g, err_msg="g was written")


@pytest.mark.parametrize("name,nstate,kwargs", CASES[::2], ids=[f"{c[0]}-{2 * i}" for i, c in enumerate(CASES[::2])])
def test_step_on_non_contiguous_views(fast_backend, ref, dtype, name, nstate, kwargs):
    ops = get_ops(fast_backend)
    n = 301
    base = [_rand(2 * n, dtype, 10 + k, 0.1, positive=True) for k in range(nstate + 1)]
    expected = _run(ref, name, [b.copy()[::2] for b in base], kwargs, steps=1)
    dev = [ops.asarray(b.copy())[::2] for b in base]
    getattr(ops, name)(*dev, **kwargs)
    for k, (a, e) in enumerate(zip(dev, expected)):
        assert_close(a, e, dtype, err_msg=f"{name} array {k}", **_tol(fast_backend))


@pytest.mark.parametrize("name,kwargs,slots", [
    ("momentum_step", dict(lr=0.1, momentum=0.5), [0]),
    ("adagrad_step", dict(lr=0.1, eps=1e-7), [0]),
    ("rmsprop_step", dict(lr=0.1, rho=0.5, eps=1e-7), [0]),
    ("adam_step", dict(lr=0.1, beta1=0.5, beta2=0.5, eps=1e-7, t=2), [0, 1]),
])
def test_state_below_tiny_is_flushed_to_zero(fast_backend, ref, dtype, name, kwargs, slots):
    ops = get_ops(fast_backend)
    tiny = numpy.finfo(dtype).tiny
    n = 64
    p, g = _rand(n, dtype, 20), _rand(n, dtype, 21, 0.1)
    g[:8] = 0  # dead units: their state only decays
    state = [_rand(n, dtype, 22 + k, 0.01, positive=True) for k in range(len(slots))]
    for s in state:
        s[:4] = dtype.type(1.5 * tiny)   # decays to 0.75 tiny: a subnormal unless flushed
        s[4:8] = dtype.type(0.5 * tiny)  # already subnormal
    expected = _run(ref, name, [p, g] + state, kwargs, steps=1)
    got = _run(ops, name, [p, g] + state, kwargs, steps=1)
    for k in range(len(slots)):
        s = got[2 + k]
        if name == "adagrad_step":  # h only grows: 1.5 tiny stays, the subnormal goes
            assert (s[:4] == dtype.type(1.5 * tiny)).all() and (s[4:8] == 0).all(), s[:8]
        else:
            assert (s[:8] == 0).all(), f"{name} state {k}: {s[:8]}"
        assert (numpy.abs(s[8:]) >= tiny).all()
        assert_close(s, expected[2 + k], dtype, **_tol(fast_backend))


@pytest.mark.parametrize("n", [1, 7, 1000, 100003])
def test_sq_norm_matches_reference(fast_backend, ref, dtype, n):
    ops = get_ops(fast_backend)
    x = _rand(n, dtype, 30)
    got = ops.sq_norm(ops.asarray(x))
    assert host(got).shape == () and host(got).dtype == dtype
    assert_close(got, ref.sq_norm(x), dtype)
    assert_close(ops.sq_norm(ops.asarray(x.reshape(-1, 1)[::2])), ref.sq_norm(x[::2]), dtype)

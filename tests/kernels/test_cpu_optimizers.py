"""Optimizer primitives (flat buffers, in place) of each fast backend against the NumPy reference.

Each backend gets fresh copies of every argument; every array written is compared. The Numba
kernels follow the reference operation by operation, so on ``numba`` they must agree bit for bit.
"""
import numpy
import pytest

from fastnn.backend import get_ops
from fastnn.testing import assert_close, host

SIZES = [1, 7, 1003, 4099]
MOMENTS = ("adam_step", "amsgrad_step", "nadam_step", "adamax_step")  # first slot m: signed


def _rand(n, dtype, seed, scale=1.0, positive=False):
    x = numpy.random.default_rng(seed).standard_normal(n) * scale
    return (numpy.abs(x) if positive else x).astype(dtype)


def _tol(backend):
    return {"rtol": 0, "atol": 0} if backend == "numba" else {}


def _mu_product(t, beta1=0.9):
    """Nadam's ``mu_1 * ... * mu_t``, ``mu_i = beta1 * (1 - 0.5 * 0.96**i)``."""
    return float(numpy.prod([beta1 * (1 - 0.5 * 0.96 ** i) for i in range(1, t + 1)]))


def _positive(name, k):
    """Whether state slot ``k`` of ``name`` holds non-negative values (all but velocity and m)."""
    return not (name == "momentum_step" or (name in MOMENTS and k == 0))


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
    ("amsgrad_step", 4, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=1)),
    ("amsgrad_step", 4, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=7, weight_decay=1e-2, scale=0.5)),
    ("amsgrad_step", 4, dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-7, t=3, weight_decay=1e-2, decoupled=True,
                             clipvalue=0.05)),
    ("nadam_step", 3, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, t=1, mu_product=_mu_product(1))),
    ("nadam_step", 3, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, t=9, mu_product=_mu_product(9),
                           weight_decay=1e-2, scale=0.5)),
    ("nadam_step", 3, dict(lr=2e-3, beta1=0.8, beta2=0.99, eps=1e-6, t=4, mu_product=_mu_product(4, 0.8),
                           clipvalue=0.05)),
    ("adamax_step", 3, dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-7, t=1)),
    ("adamax_step", 3, dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-7, t=12, weight_decay=1e-2, scale=0.5)),
    ("adamax_step", 3, dict(lr=2e-3, beta1=0.8, beta2=0.99, eps=1e-7, t=3, scale=2.0, clipvalue=0.05)),
    # clipvalue on the existing rules (0.05: about 60% of the N(0, 0.1) gradient elements are clipped)
    ("sgd_step", 1, dict(lr=0.05, weight_decay=1e-2, scale=0.7, clipvalue=0.05)),
    ("momentum_step", 2, dict(lr=0.1, momentum=0.8, weight_decay=1e-2, nesterov=True, clipvalue=0.05)),
    ("adagrad_step", 2, dict(lr=0.01, eps=1e-7, clipvalue=0.05)),
    ("rmsprop_step", 2, dict(lr=0.01, rho=0.9, eps=1e-7, weight_decay=1e-3, clipvalue=0.05)),
    ("adam_step", 3, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=7, weight_decay=1e-2, scale=2.0,
                          clipvalue=0.05)),
]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name,nstate,kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_step_matches_reference(fast_backend, ref, dtype, n, name, nstate, kwargs):
    ops = get_ops(fast_backend)
    p, g = _rand(n, dtype, 1), _rand(n, dtype, 2, 0.1)
    # velocity and m are signed; h, v, v_hat and u are >= 0
    state = [_rand(n, dtype, 3 + k, 0.01, positive=_positive(name, k)) for k in range(nstate - 1)]
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
    ("nadam_step", dict(lr=0.1, beta1=0.5, beta2=0.5, eps=1e-7, t=2, mu_product=_mu_product(2, 0.5)), [0, 1]),
    ("adamax_step", dict(lr=0.1, beta1=0.5, beta2=0.5, eps=1e-7, t=2), [0, 1]),
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


def test_amsgrad_keeps_its_maximum_and_flushes_the_rest(fast_backend, ref, dtype):
    """AMSGrad's ``v_hat`` is a running maximum: 1.5 tiny stays (it never decays), a subnormal goes;
    ``m`` and ``v`` of dead units decay and are flushed as Adam's are."""
    ops = get_ops(fast_backend)
    tiny = numpy.finfo(dtype).tiny
    n = 64
    p, g = _rand(n, dtype, 40), _rand(n, dtype, 41, 0.1)
    g[:8] = 0
    m, v, vh = (_rand(n, dtype, 42 + k, 0.01, positive=k > 0) for k in range(3))
    for s in (m, v, vh):
        s[:4], s[4:8] = dtype.type(1.5 * tiny), dtype.type(0.5 * tiny)
    kwargs = dict(lr=0.1, beta1=0.5, beta2=0.5, eps=1e-7, t=2)
    expected = _run(ref, "amsgrad_step", [p, g, m, v, vh], kwargs, steps=1)
    got = _run(ops, "amsgrad_step", [p, g, m, v, vh], kwargs, steps=1)
    assert (got[2][:8] == 0).all() and (got[3][:8] == 0).all(), (got[2][:8], got[3][:8])
    assert (got[4][:4] == dtype.type(1.5 * tiny)).all() and (got[4][4:8] == 0).all(), got[4][:8]
    assert (got[4] >= got[3]).all(), "v_hat must stay at least v"
    for k in range(5):
        assert_close(got[k], expected[k], dtype, err_msg=f"array {k}", **_tol(fast_backend))


@pytest.mark.parametrize("name,nstate,kwargs", [
    ("sgd_step", 1, dict(lr=0.1, clipvalue=0.5)),
    ("adam_step", 3, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=2, clipvalue=0.5)),
    ("amsgrad_step", 4, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=2)),
    ("adamax_step", 3, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=2, clipvalue=0.5)),
    ("nadam_step", 3, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=2, mu_product=_mu_product(2),
                           clipvalue=0.5)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_nan_gradients_stay_nan_as_in_the_reference(fast_backend, ref, dtype, name, nstate, kwargs):
    """Clipping and the max of Adamax/AMSGrad must not swallow a NaN (comparisons, not fmin/fmax)."""
    ops = get_ops(fast_backend)
    n = 33
    p, g = _rand(n, dtype, 50), _rand(n, dtype, 51)
    g[::5] = numpy.nan
    state = [_rand(n, dtype, 52 + k, 0.01, positive=_positive(name, k)) for k in range(nstate - 1)]
    if name == "amsgrad_step":
        state[2][1::5] = numpy.nan  # a NaN already in v_hat survives the max
    expected = _run(ref, name, [p, g] + state, kwargs, steps=1)
    got = _run(ops, name, [p, g] + state, kwargs, steps=1)
    assert numpy.isnan(got[0][::5]).all()
    for k, (a, e) in enumerate(zip(got, expected)):
        numpy.testing.assert_array_equal(numpy.isnan(a), numpy.isnan(e), err_msg=f"{name} array {k}: NaN pattern")
        assert_close(a, e, dtype, err_msg=f"{name} array {k}", **_tol(fast_backend))


@pytest.mark.parametrize("name,nstate,kwargs", [c for c in CASES if "clipvalue" in c[2]],
                         ids=[c[0] for c in CASES if "clipvalue" in c[2]])
def test_clipvalue_clips_the_gradient_before_the_update(ref, dtype, name, nstate, kwargs):
    """The reference with ``clipvalue`` is the reference without it given the clipped gradient
    (``clip(scale*g)``; the L2 term ``wd*p`` of SGD/Adam is added after, unclipped)."""
    n = 257
    p, g = _rand(n, dtype, 60), _rand(n, dtype, 61, 0.1)
    state = [_rand(n, dtype, 62 + k, 0.01, positive=_positive(name, k)) for k in range(nstate - 1)]
    rest = {k: v for k, v in kwargs.items() if k not in ("clipvalue", "scale")}
    c, scale = kwargs["clipvalue"], kwargs.get("scale", 1.0)
    clipped = numpy.clip(g * dtype.type(scale), dtype.type(-c), dtype.type(c))
    assert 0.2 < numpy.mean(numpy.abs(clipped) == dtype.type(c)) < 0.9  # the case clips, but not everything
    got = _run(ref, name, [p, g] + state, kwargs, steps=1)
    want = _run(ref, name, [p, clipped] + state, rest, steps=1)
    for k in [0] + list(range(2, len(got))):
        assert_close(got[k], want[k], dtype, err_msg=f"{name} array {k}")


@pytest.mark.parametrize("name", ["amsgrad_step", "nadam_step", "adamax_step"])
def test_new_kernels_compute_float32_in_float32(name):
    """No float64 argument reaches a float32 kernel (Python floats would promote the arithmetic)."""
    pytest.importorskip("numba")
    from numba import types

    from fastnn.kernels.cpu import optimizers as ko

    ops = get_ops("numba")
    f = numpy.float32
    case = next(c for c in CASES if c[0] == name)
    for kwargs in (case[2], dict(case[2], clipvalue=0.5)):
        arrays = [_rand(9, f, k, positive=k > 2) for k in range(case[1] + 1)]
        getattr(ops, name)(*arrays, **kwargs)
    kernel = getattr(ko, name)
    sigs = [sig for sig in kernel.nopython_signatures if sig.args[0] == types.float32[::1]]
    assert len(sigs) >= 2, sigs  # with and without clipvalue
    for sig in sigs:
        assert types.float64 not in sig.args, sig

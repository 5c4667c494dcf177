"""Dropout masks and batch normalization of each fast backend against the NumPy reference."""
import numpy
import pytest

from fastnn.backend import get_ops
from fastnn.testing import assert_close, host

SHAPES = [(1, 1), (3, 7), (129, 65), (257, 33)]


def _rand(shape, dtype, seed, scale=1.0, loc=0.0):
    rng = numpy.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + loc).astype(dtype)


# ------------------------------------------------------------------ dropout
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.9, 0.3333333])
@pytest.mark.parametrize("seed,step,row0", [(0, 0, 0), (42, 7, 0), (2**40 + 3, 123456, 1000)])
def test_dropout_mask_bitwise_equals_reference(fast_backend, ref, dtype, shape, rate, seed, step, row0):
    ops = get_ops(fast_backend)
    expected = ref.dropout_mask(shape, rate, seed, step, row0, dtype=dtype)
    got = host(ops.dropout_mask(shape, rate, seed, step, row0, dtype=dtype))
    assert got.dtype == dtype and got.shape == shape
    numpy.testing.assert_array_equal(got, expected)


def test_dropout_mask_keep_rate_and_scale(fast_backend, dtype):
    ops = get_ops(fast_backend)
    rate = 0.3
    mask = host(ops.dropout_mask((1000, 1000), rate, seed=5, step=1, dtype=dtype))
    kept = mask != 0
    assert abs(kept.mean() - (1 - rate)) < 0.002  # 5 sigma at 1e6 draws
    assert (mask[kept] == dtype.type(1 / (1 - rate))).all()
    # columns and rows are not correlated: each column keeps about the same share
    assert numpy.abs(kept.mean(axis=0) - (1 - rate)).max() < 0.08


def test_dropout_mask_changes_with_step_and_seed(fast_backend):
    ops = get_ops(fast_backend)
    base = host(ops.dropout_mask((64, 64), 0.5, 1, 1))
    assert not numpy.array_equal(base, host(ops.dropout_mask((64, 64), 0.5, 1, 2)))
    assert not numpy.array_equal(base, host(ops.dropout_mask((64, 64), 0.5, 2, 1)))
    numpy.testing.assert_array_equal(base, host(ops.dropout_mask((64, 64), 0.5, 1, 1)))


@pytest.mark.parametrize("a,b", [(0, 10), (3, 17), (50, 64)])
def test_dropout_mask_row0_is_a_slice_of_the_full_mask(fast_backend, dtype, a, b):
    ops = get_ops(fast_backend)
    full = host(ops.dropout_mask((64, 33), 0.4, 9, 3, dtype=dtype))
    part = host(ops.dropout_mask((b - a, 33), 0.4, 9, 3, row0=a, dtype=dtype))
    numpy.testing.assert_array_equal(part, full[a:b])


def test_dropout_mask_out_buffer(fast_backend, ref, dtype):
    ops = get_ops(fast_backend)
    out = ops.alloc((17, 9), dtype)
    assert ops.dropout_mask((17, 9), 0.25, 3, 4, dtype=dtype, out=out) is out
    numpy.testing.assert_array_equal(host(out), ref.dropout_mask((17, 9), 0.25, 3, 4, dtype=dtype))
    strided = ops.alloc((9, 17), dtype).T
    assert ops.dropout_mask((17, 9), 0.25, 3, 4, dtype=dtype, out=strided) is strided
    numpy.testing.assert_array_equal(host(strided), host(out))


# ------------------------------------------------------------------ batch normalization
def _bn_args(shape, dtype, seed):
    d = shape[1]
    return (_rand(shape, dtype, seed, 2.0, 0.5), _rand(d, dtype, seed + 1, 0.5, 1.0),
            _rand(d, dtype, seed + 2), _rand(d, dtype, seed + 3),
            numpy.abs(_rand(d, dtype, seed + 4)) + dtype.type(0.5))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
def test_batchnorm_forward_matches_reference(fast_backend, ref, dtype, shape, train):
    ops = get_ops(fast_backend)
    args = _bn_args(shape, dtype, 1)
    ref_args = [a.copy() for a in args]
    y_ref, xhat_ref, inv_ref = ref.batchnorm_forward(*ref_args, 0.9, 1e-5, train)
    dev = [ops.asarray(a.copy()) for a in args]
    out = ops.alloc(shape, dtype)
    y, xhat, inv_std = ops.batchnorm_forward(*dev, 0.9, 1e-5, train, out=out)
    assert y is out
    for name, a, e in (("y", y, y_ref), ("xhat", xhat, xhat_ref), ("inv_std", inv_std, inv_ref),
                       ("running_mean", dev[3], ref_args[3]), ("running_var", dev[4], ref_args[4])):
        assert host(a).dtype == dtype, name
        assert_close(a, e, dtype, err_msg=name)
    for a, orig in zip(dev[:3], args[:3]):
        numpy.testing.assert_array_equal(host(a), orig)
    if not train:
        numpy.testing.assert_array_equal(host(dev[3]), args[3])
    y2, _, _ = ops.batchnorm_forward(ops.asarray(args[0]), *(ops.asarray(a.copy()) for a in args[1:]),
                                     0.9, 1e-5, train)
    assert_close(y2, y_ref, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batchnorm_backward_matches_reference(fast_backend, ref, dtype, shape):
    ops = get_ops(fast_backend)
    x, gamma, beta, rm, rv = _bn_args(shape, dtype, 2)
    _, xhat, inv_std = ref.batchnorm_forward(x, gamma, beta, rm, rv, 0.9, 1e-5, True)
    dout = _rand(shape, dtype, 3)
    dg_ref, db_ref = numpy.empty_like(gamma), numpy.empty_like(gamma)
    dx_ref = ref.batchnorm_backward(dout, xhat, inv_std, gamma, dgamma=dg_ref, dbeta=db_ref)
    dev = [ops.asarray(a) for a in (dout, xhat, inv_std, gamma)]
    dx, dg, db = ops.alloc(shape, dtype), ops.alloc(shape[1], dtype), ops.alloc(shape[1], dtype)
    assert ops.batchnorm_backward(*dev, dx=dx, dgamma=dg, dbeta=db) is dx
    # dx subtracts three terms of similar size: allow a few ulps of cancellation in float32
    tol = dict(atol=1e-5) if dtype == numpy.float32 else {}
    assert_close(dx, dx_ref, dtype, **tol)
    assert_close(dg, dg_ref, dtype)
    assert_close(db, db_ref, dtype)
    assert_close(ops.batchnorm_backward(*dev), dx_ref, dtype, **tol)
    for a, orig in zip(dev, (dout, xhat, inv_std, gamma)):
        numpy.testing.assert_array_equal(host(a), orig)


# ------------------------------------------------------------------ input checks (validation's first_beyond)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (129, 65), (1000, 9)], ids=str)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "big", "none"])
def test_first_beyond_matches_reference(backend, dtype, shape, bad):
    """The first element not within ``limit`` (NaN, +-inf, beyond), as numpy finds it; several bad
    elements at random places, the earliest named; chunk edges included (2048-element passes)."""
    ops = get_ops(backend)
    rng = numpy.random.default_rng([*shape, len(bad), ord(bad[-1])])  # fixed per case (hash() is salted)
    a = _rand(shape, dtype, 3, scale=1e3)
    limit = float(numpy.finfo(dtype).max) if bad != "big" else 1e30
    value = {"nan": numpy.nan, "inf": numpy.inf, "-inf": -numpy.inf, "big": -2e30, "none": None}[bad]
    flat = a.reshape(-1)
    spots = sorted({0, flat.size - 1, min(2047, flat.size - 1), min(2048, flat.size - 1),
                    *rng.integers(0, flat.size, 3).tolist()})
    for first in spots:
        b = flat.copy()
        if value is not None:
            b[first:] = numpy.where(rng.random(b.size - first) < 0.3, value, b[first:])
            b[first] = value
        b = b.reshape(shape)
        expected = numpy.flatnonzero(~(numpy.abs(b) <= limit))
        expected = int(expected[0]) if expected.size else -1
        assert expected == (first if value is not None else -1)
        assert ops.first_beyond(b, limit) == expected
        if b.ndim == 2 and b.shape[1] > 1:  # a strided view: the reference path, the same answer
            view = b[:, ::2]
            want = numpy.flatnonzero(~(numpy.abs(view) <= limit))
            assert ops.first_beyond(view, limit) == (int(want[0]) if want.size else -1)


def test_first_beyond_limit_past_the_dtype_still_fails_inf(backend):
    """A limit beyond float32's range (float64's max) must not let float32 inf through."""
    ops = get_ops(backend)
    a = _rand((5, 6), numpy.float32, 4)
    a[2, 3] = numpy.inf
    assert ops.first_beyond(a, float(numpy.finfo(numpy.float64).max)) == 2 * 6 + 3

"""Loss primitives of each fast backend against the NumPy reference."""
import numpy
import pytest

from fastnn.backend import get_ops
from fastnn.testing import assert_close, host

SHAPES = [(1, 1), (3, 7), (129, 65), (257, 33)]


def _rand(shape, dtype, seed, scale=3.0):
    rng = numpy.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _labels(shape, kind, dtype, seed):
    rng = numpy.random.default_rng(seed)
    idx = rng.integers(0, shape[1], shape[0])
    if kind == "onehot":
        return numpy.eye(shape[1], dtype=dtype)[idx]
    if kind == "soft":  # rows of probabilities (label smoothing)
        p = rng.random(shape) + 0.1
        return (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    return idx.astype({"int64": numpy.int64, "int32": numpy.int32, "float": numpy.float64}[kind])


LABELS = ["int64", "int32", "float", "onehot", "soft"]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", LABELS)
@pytest.mark.parametrize("buffers", ["y_dx", "dx", "y", "none"])
def test_softmax_xent_matches_reference(fast_backend, ref, dtype, shape, kind, buffers):
    ops = get_ops(fast_backend)
    x, t = _rand(shape, dtype, 1), _labels(shape, kind, dtype, 2)
    y_ref, dx_ref = numpy.empty(shape, dtype), numpy.empty(shape, dtype)
    loss_ref = ref.softmax_xent(x, t, y=y_ref, dx=dx_ref)
    y = ops.alloc(shape, dtype) if "y" in buffers else None
    dx = ops.alloc(shape, dtype) if "dx" in buffers else None
    loss = ops.softmax_xent(ops.asarray(x), ops.asarray(t), y=y, dx=dx)
    assert host(loss).shape == () and host(loss).dtype == dtype
    assert_close(loss, loss_ref, dtype)
    if y is not None:
        assert_close(y, y_ref, dtype)
    if dx is not None:
        assert_close(dx, dx_ref, dtype)


@pytest.mark.parametrize("kind", ["int64", "onehot"])
def test_softmax_xent_large_logits_stay_finite(fast_backend, ref, dtype, kind):
    ops = get_ops(fast_backend)
    x = _rand((64, 10), dtype, 3, 1.0) + dtype.type(1000)
    x[::3, 4] = -1000
    t = _labels(x.shape, kind, dtype, 4)
    y, dx = ops.alloc(x.shape, dtype), ops.alloc(x.shape, dtype)
    loss = ops.softmax_xent(ops.asarray(x), ops.asarray(t), y=y, dx=dx)
    y_ref, dx_ref = numpy.empty_like(x), numpy.empty_like(x)
    assert numpy.isfinite(host(loss)) and numpy.isfinite(host(y)).all() and numpy.isfinite(host(dx)).all()
    # the loss is ~1 around logits of 1000: the float32 ulp of 1000 is 6e-5
    assert_close(loss, ref.softmax_xent(x, t, y=y_ref, dx=dx_ref), dtype,
                 rtol=1e-4 if dtype == numpy.float32 else None)
    assert_close(y, y_ref, dtype)
    assert_close(dx, dx_ref, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", LABELS)
@pytest.mark.parametrize("dout", [1.0, 0.37])
def test_softmax_xent_backward_matches_reference(fast_backend, ref, dtype, shape, kind, dout):
    ops = get_ops(fast_backend)
    y = ref.softmax(_rand(shape, dtype, 5))
    t = _labels(shape, kind, dtype, 6)
    expected = ref.softmax_xent_backward(y, t, dout)
    out = ops.alloc(shape, dtype)
    assert ops.softmax_xent_backward(ops.asarray(y), ops.asarray(t), dout, out=out) is out
    assert_close(out, expected, dtype)
    assert_close(ops.softmax_xent_backward(ops.asarray(y), ops.asarray(t), dout), expected, dtype)


@pytest.mark.parametrize("shape", SHAPES + [(1000,)], ids=str)
@pytest.mark.parametrize("buffers", ["y_dx", "none"])
def test_sigmoid_bce_matches_reference(fast_backend, ref, dtype, shape, buffers):
    ops = get_ops(fast_backend)
    x = _rand(shape, dtype, 7)
    t = numpy.random.default_rng(8).random(shape).astype(dtype)
    t[..., ::3] = numpy.round(t[..., ::3])  # hard labels too
    y_ref, dx_ref = numpy.empty(shape, dtype), numpy.empty(shape, dtype)
    loss_ref = ref.sigmoid_bce(x, t, y=y_ref, dx=dx_ref)
    y = dx = None
    if buffers == "y_dx":
        y, dx = ops.alloc(shape, dtype), ops.alloc(shape, dtype)
    loss = ops.sigmoid_bce(ops.asarray(x), ops.asarray(t), y=y, dx=dx)
    assert host(loss).shape == () and host(loss).dtype == dtype
    assert_close(loss, loss_ref, dtype)
    if y is not None:
        assert_close(y, y_ref, dtype)
        assert_close(dx, dx_ref, dtype)


@pytest.mark.parametrize("shape", SHAPES + [(1000,)], ids=str)
@pytest.mark.parametrize("scale", ["keras", "book"])
def test_mse_matches_reference(fast_backend, ref, dtype, shape, scale):
    ops = get_ops(fast_backend)
    y, t = _rand(shape, dtype, 9), _rand(shape, dtype, 10)
    s = 1.0 / y.size if scale == "keras" else 0.5 / shape[0]
    dx_ref = numpy.empty(shape, dtype)
    loss_ref = ref.mse(y, t, s, dx=dx_ref)
    dx = ops.alloc(shape, dtype)
    loss = ops.mse(ops.asarray(y), ops.asarray(t), s, dx=dx)
    assert host(loss).shape == () and host(loss).dtype == dtype
    assert_close(loss, loss_ref, dtype)
    assert_close(dx, dx_ref, dtype)
    assert_close(ops.mse(ops.asarray(y), ops.asarray(t), s), loss_ref, dtype)


def test_loss_inputs_unchanged_and_non_contiguous(fast_backend, ref, dtype):
    ops = get_ops(fast_backend)
    big = _rand((30, 24), dtype, 11)
    hx = big[::2, ::2]  # (15, 12), not contiguous
    ht = _labels((15, 12), "onehot", dtype, 12)
    hidx = numpy.arange(30)[::2] % 12
    x, t, idx = ops.asarray(hx), ops.asarray(ht), ops.asarray(hidx)
    for tt, htt in ((t, ht), (idx, hidx)):
        dx = ops.alloc((12, 15), dtype).T  # non-contiguous buffer
        dx_ref = numpy.empty((15, 12), dtype)
        assert_close(ops.softmax_xent(x, tt, dx=dx), ref.softmax_xent(hx, htt, dx=dx_ref), dtype)
        assert_close(dx, dx_ref, dtype)
    assert_close(ops.mse(x, t, 0.5, dx=None), ref.mse(hx, ht, 0.5), dtype)
    assert_close(ops.sigmoid_bce(x, t), ref.sigmoid_bce(hx, ht), dtype)
    numpy.testing.assert_array_equal(host(x), hx)
    numpy.testing.assert_array_equal(host(t), ht)

"""Activation primitives of each fast backend against the NumPy reference."""
import numpy
import pytest

from fastnn.backend import get_ops
from fastnn.kernels import ACTIVATIONS
from fastnn.testing import allow_fallback, assert_close, assert_sum_close, host

SHAPES = [(1, 1), (3, 7), (129, 65), (257, 33)]
ACTS = sorted(ACTIVATIONS.items(), key=lambda kv: kv[1])
ALPHA = 0.3


def _rand(shape, dtype, seed, scale=3.0):
    rng = numpy.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,act", ACTS, ids=[n for n, _ in ACTS])
def test_bias_act_matches_reference(fast_backend, ref, dtype, shape, name, act):
    ops = get_ops(fast_backend)
    x, b = _rand(shape, dtype, 1), _rand(shape[1:], dtype, 2)
    expected = ref.bias_act(x, b, act, ALPHA)
    got = ops.bias_act(ops.asarray(x), ops.asarray(b), act, ALPHA)
    assert host(got).dtype == dtype
    assert_close(got, expected, dtype)
    assert_close(ops.bias_act(ops.asarray(x), None, act, ALPHA), ref.bias_act(x, None, act, ALPHA), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,act", ACTS, ids=[n for n, _ in ACTS])
def test_act_backward_matches_reference(fast_backend, ref, dtype, shape, name, act):
    ops = get_ops(fast_backend)
    z = _rand(shape, dtype, 3)  # the pre-activation: gelu's and swish's derivative read it, the others ignore it
    y = ref.bias_act(z, None, act, ALPHA)
    dout = _rand(shape, dtype, 4)
    assert_close(ops.act_backward(ops.asarray(dout), ops.asarray(y), act, ALPHA, z=ops.asarray(z)),
                 ref.act_backward(dout, y, act, ALPHA, z=z), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,act", ACTS, ids=[n for n, _ in ACTS])
def test_act_backward_bias_grad_matches_reference(fast_backend, ref, dtype, shape, name, act):
    ops = get_ops(fast_backend)
    z = _rand(shape, dtype, 5)
    y = ref.bias_act(z, None, act, ALPHA)
    dout = _rand(shape, dtype, 6)
    db_ref = numpy.empty(shape[1], dtype)
    dz_ref = ref.act_backward_bias_grad(dout, y, act, ALPHA, db=db_ref, z=z)
    out, db = ops.alloc(shape, dtype), ops.alloc(shape[1], dtype)
    zd = ops.asarray(z)
    dz = ops.act_backward_bias_grad(ops.asarray(dout), ops.asarray(y), act, ALPHA, out=out, db=db, z=zd)
    assert dz is out
    assert_close(dz, dz_ref, dtype)
    assert_sum_close(db, dz_ref, db_ref)   # a column sum: bounded by eps * sum|dz|, against float64
    assert_close(ops.act_backward_bias_grad(ops.asarray(dout), ops.asarray(y), act, ALPHA, z=zd), dz_ref, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bias_grad_matches_reference(fast_backend, ref, dtype, shape):
    ops = get_ops(fast_backend)
    dz = _rand(shape, dtype, 7)
    assert_sum_close(ops.bias_grad(ops.asarray(dz)), dz, ref.bias_grad(dz))


@pytest.mark.parametrize("shape", SHAPES + [(4, 1000)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_softmax_matches_reference(fast_backend, ref, dtype, shape, scale):
    ops = get_ops(fast_backend)
    x = _rand(shape, dtype, 8, scale)
    got = host(ops.softmax(ops.asarray(x)))
    assert numpy.isfinite(got).all()
    assert_close(got, ref.softmax(x), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mul_matches_reference(fast_backend, ref, dtype, shape):
    ops = get_ops(fast_backend)
    x, y = _rand(shape, dtype, 9), _rand(shape, dtype, 10)
    assert_close(ops.mul(ops.asarray(x), ops.asarray(y)), ref.mul(x, y), dtype)
    # broadcasting is part of the contract too (numba leaves it to the reference on purpose)
    with allow_fallback():
        assert_close(ops.mul(ops.asarray(x), ops.asarray(y[0])), ref.mul(x, y[0]), dtype)


def _calls(ops, x, b, y, dout):
    """Each activation primitive as (name, call with out=, call without)."""
    a = ACTIVATIONS["elu"]
    return [
        ("bias_act", lambda out: ops.bias_act(x, b, a, ALPHA, out=out), x.shape),
        ("act_backward", lambda out: ops.act_backward(dout, y, a, ALPHA, out=out), x.shape),
        ("bias_grad", lambda out: ops.bias_grad(dout, out=out), x.shape[1:]),
        ("act_backward_bias_grad", lambda out: ops.act_backward_bias_grad(dout, y, a, ALPHA, out=out), x.shape),
        ("softmax", lambda out: ops.softmax(x, out=out), x.shape),
        ("mul", lambda out: ops.mul(x, dout, out=out), x.shape),
    ]


def test_out_buffers_are_returned_and_inputs_kept(fast_backend, ref, dtype):
    ops = get_ops(fast_backend)
    hx, hb, hdout = _rand((33, 17), dtype, 11), _rand(17, dtype, 12), _rand((33, 17), dtype, 13)
    hy = ref.bias_act(hx, hb, ACTIVATIONS["elu"], ALPHA)
    x, b, y, dout = (ops.asarray(a) for a in (hx, hb, hy, hdout))
    for (name, call, shape), (_, ref_call, _) in zip(_calls(ops, x, b, y, dout), _calls(ref, hx, hb, hy, hdout)):
        out = ops.alloc(shape, dtype)
        assert call(out) is out, name
        assert_close(out, ref_call(None), dtype, err_msg=name)
        assert_close(call(None), ref_call(None), dtype, err_msg=name)
        for arr, orig in ((x, hx), (b, hb), (y, hy), (dout, hdout)):
            numpy.testing.assert_array_equal(host(arr), orig, err_msg=f"{name} wrote an input")


def test_non_contiguous_arrays(fast_backend, ref, dtype):
    ops = get_ops(fast_backend)
    big = _rand((40, 30), dtype, 14)
    hx, hdout = big[::2, 1::2], big.T[:20, :15]  # (20, 15) views, neither contiguous
    hb = _rand(30, dtype, 15)[::2]
    x, b, dout = ops.asarray(hx), ops.asarray(hb), ops.asarray(hdout)
    a = ACTIVATIONS["tanh"]
    assert_close(ops.bias_act(x, b, a), ref.bias_act(hx, hb, a), dtype)
    assert_close(ops.softmax(x), ref.softmax(hx), dtype)
    assert_close(ops.mul(x, dout), ref.mul(hx, hdout), dtype)
    out = ops.alloc((15, 20), dtype).T  # a non-contiguous out buffer is written too
    assert ops.act_backward(dout, x, a, out=out) is out
    assert_close(out, ref.act_backward(hdout, hx, a), dtype)


def test_unknown_activation_is_an_error(fast_backend, dtype):
    ops = get_ops(fast_backend)
    x = ops.asarray(_rand((2, 3), dtype, 16))
    with pytest.raises(ValueError, match="unknown activation"):
        ops.bias_act(x, None, 99)


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "linear"])
def test_numba_tanh_family_is_the_reference_bit_for_bit_and_writes_out(ref, dtype, name):
    """NumbaOps computes tanh and sigmoid through NumPy's vectorised tanh (far faster than a compiled
    loop over the C library's scalar tanh), and linear as NumPy's add: the reference's own formula, so
    bit for bit, into ``out`` (also in place) without allocating."""
    pytest.importorskip("numba")
    ops, act = get_ops("numba"), ACTIVATIONS[name]
    x, b = _rand((33, 17), dtype, 5), _rand((17,), dtype, 6)
    out = numpy.empty_like(x)
    assert ops.bias_act(x, b, act, out=out) is out
    numpy.testing.assert_array_equal(out, ref.bias_act(x, b, act))
    inplace = x.copy()
    ops.bias_act(inplace, None, act, out=inplace)
    numpy.testing.assert_array_equal(inplace, ref.bias_act(x, None, act))


@pytest.mark.parametrize("name", ["relu", "linear", "sigmoid", "tanh"])
def test_numba_dedicated_loops_equal_the_reference_exactly(ref, dtype, name):
    """The codes the book's separate layers use most (``Affine`` is linear, ``Relu`` has no bias,
    ``Convolution`` is linear) run loops of their own in the kernels instead of the generic loop that
    tests the code per element (3-16x slower than NumPy): the same expressions, so exactly the
    reference's values, with and without a bias, 2-D and NCHW, forward and backward; inf and NaN included."""
    pytest.importorskip("numba")
    from fastnn.kernels.cpu import activations as ka

    ops, act = get_ops("numba"), ACTIVATIONS[name]
    x, b, dout = _rand((37, 19), dtype, 21), _rand((19,), dtype, 22), _rand((37, 19), dtype, 23)
    x[0, :4] = [-0.0, numpy.inf, -numpy.inf, numpy.nan]
    dout[1, :4] = [-0.0, numpy.inf, -numpy.inf, numpy.nan]
    one, zero = x.dtype.type(1), x.dtype.type(0)
    for bias in (b, None):
        want = ref.bias_act(x, bias, act)
        if name in ("relu", "linear"):  # the kernel itself (NumbaOps sends linear to NumPy's add)
            got = numpy.empty_like(x)
            ka.bias_act(x, b, bias is not None, act, zero, one, got)
            numpy.testing.assert_array_equal(got, want)
        numpy.testing.assert_array_equal(ops.bias_act(x, bias, act), want)
    y = ref.bias_act(x, b, act)
    numpy.testing.assert_array_equal(ops.act_backward(dout, y, act), ref.act_backward(dout, y, act))
    z, zb = _rand((5, 4, 3, 6), dtype, 24), _rand((5,), dtype, 25)  # (C, N, H, W)
    for bias in (zb, None) if name in ("relu", "linear") else ():  # conv's sigmoid/tanh: the generic loop
        numpy.testing.assert_array_equal(ops.conv_bias_act(z, bias, act), ref.conv_bias_act(z, bias, act))
    yc, dc = numpy.abs(_rand((4, 5, 3, 6), dtype, 26)) % 1, _rand((4, 5, 3, 6), dtype, 27)  # (N, C, H, W)
    numpy.testing.assert_array_equal(ops.conv_act_backward(dc, yc, act), ref.conv_act_backward(dc, yc, act))

"""im2col/col2im (and the transposed im2col_t/col2im_t) and max pooling of each fast backend against
the NumPy reference (``Ops``), on random data (never zeros), float32 and float64, odd shapes,
strides 1-3 and asymmetric padding; plus the properties that pin the reference itself
(adjointness, output buffers, errors)."""
import numpy
import pytest

from fastnn.backend import get_ops
from fastnn.kernels import ACTIVATION_NAMES
from fastnn.testing import ATOL, RTOL, allow_fallback, has_numba, host

# (x shape, window, stride, pad)
CASES = [
    ((1, 1, 1, 1), (1, 1), 1, 0),
    ((2, 3, 7, 5), (3, 3), 1, 0),
    ((2, 3, 7, 5), (3, 3), 2, 1),
    ((3, 2, 9, 8), (2, 3), (2, 1), (1, 0)),
    ((1, 4, 8, 8), (2, 2), 2, (0, 1, 0, 1)),
    ((2, 1, 13, 11), (5, 4), 3, 2),
]
IDS = ["1x1", "3x3s1", "3x3s2p1", "2x3s21p10", "same-asym", "5x4s3p2"]
POOL_CASES = [c for c in CASES if max(numpy.atleast_1d(c[3])) * 2 <= min(c[1])]
POOL_IDS = [i for c, i in zip(CASES, IDS) if c in POOL_CASES]
# the transposed layout, also on an odd shape at strides 1 and 2, pads 0 and 1 in each combination
T_CASES = CASES + [((3, 2, 9, 7), (3, 3), s, p) for s in (1, 2) for p in (0, 1)]
T_IDS = IDS + [f"3x3s{s}p{p}-odd" for s in (1, 2) for p in (0, 1)]
# col2im sums up to FH*FW terms in another order than the reference
SUM_RTOL = {numpy.dtype(numpy.float32): 1e-5, numpy.dtype(numpy.float64): 1e-12}


def rand(shape, dtype, seed):
    return (numpy.random.default_rng(seed).standard_normal(shape) + 0.1).astype(dtype)


@pytest.mark.parametrize("x_shape,win,stride,pad", CASES, ids=IDS)
def test_im2col_equals_reference(fast_backend, ref, dtype, x_shape, win, stride, pad):
    ops = get_ops(fast_backend)
    x = rand(x_shape, dtype, 1)
    got = ops.im2col(ops.asarray(x), *win, stride, pad)
    assert host(got).dtype == dtype
    numpy.testing.assert_array_equal(host(got), ref.im2col(x, *win, stride, pad))


@pytest.mark.parametrize("x_shape,win,stride,pad", CASES, ids=IDS)
def test_col2im_matches_reference(fast_backend, ref, dtype, x_shape, win, stride, pad):
    ops = get_ops(fast_backend)
    cols = ref.im2col(rand(x_shape, dtype, 1), *win, stride, pad)
    col = rand(cols.shape, dtype, 2)
    got = host(ops.col2im(ops.asarray(col), x_shape, *win, stride, pad))
    assert got.dtype == dtype and got.shape == x_shape
    numpy.testing.assert_allclose(got, ref.col2im(col, x_shape, *win, stride, pad), rtol=SUM_RTOL[dtype],
                                  atol=SUM_RTOL[dtype])


@pytest.mark.parametrize("x_shape,win,stride,pad", CASES, ids=IDS)
def test_col2im_is_the_adjoint_of_im2col(ref, x_shape, win, stride, pad):
    """<im2col(x), c> == <x, col2im(c)> for random x, c (float64): what backward relies on."""
    x = rand(x_shape, numpy.float64, 3)
    col = ref.im2col(x, *win, stride, pad)
    c = rand(col.shape, numpy.float64, 4)
    assert numpy.isclose((col * c).sum(), (x * ref.col2im(c, x_shape, *win, stride, pad)).sum(), rtol=1e-12)


@pytest.mark.parametrize("x_shape,win,stride,pad", T_CASES, ids=T_IDS)
def test_im2col_t_equals_reference(fast_backend, ref, dtype, x_shape, win, stride, pad):
    ops = get_ops(fast_backend)
    x = rand(x_shape, dtype, 1)
    got = ops.im2col_t(ops.asarray(x), *win, stride, pad)
    want = ref.im2col_t(x, *win, stride, pad)
    assert host(got).dtype == dtype
    numpy.testing.assert_array_equal(host(got), want)
    numpy.testing.assert_array_equal(want, ref.im2col(x, *win, stride, pad).T)  # the contract: im2col's transpose


@pytest.mark.parametrize("x_shape,win,stride,pad", T_CASES, ids=T_IDS)
def test_col2im_t_matches_reference(fast_backend, ref, dtype, x_shape, win, stride, pad):
    ops = get_ops(fast_backend)
    colT = rand(ref.im2col_t(rand(x_shape, dtype, 1), *win, stride, pad).shape, dtype, 2)
    got = host(ops.col2im_t(ops.asarray(colT), x_shape, *win, stride, pad))
    want = ref.col2im_t(colT, x_shape, *win, stride, pad)
    assert got.dtype == dtype and got.shape == x_shape
    numpy.testing.assert_allclose(got, want, rtol=SUM_RTOL[dtype], atol=SUM_RTOL[dtype])
    numpy.testing.assert_allclose(want, ref.col2im(numpy.ascontiguousarray(colT.T), x_shape, *win, stride, pad),
                                  rtol=SUM_RTOL[dtype], atol=SUM_RTOL[dtype])


@pytest.mark.parametrize("x_shape,win,stride,pad", T_CASES, ids=T_IDS)
def test_col2im_t_is_the_adjoint_of_im2col_t(ops, x_shape, win, stride, pad):
    """<col2im_t(c), x> == <c, im2col_t(x)> for random x, c (float64), on every backend."""
    x = rand(x_shape, numpy.float64, 3)
    colT = host(ops.im2col_t(ops.asarray(x), *win, stride, pad))
    c = rand(colT.shape, numpy.float64, 4)
    dx = host(ops.col2im_t(ops.asarray(c), x_shape, *win, stride, pad))
    assert numpy.isclose((dx * x).sum(), (c * colT).sum(), rtol=1e-12)


def test_transposed_out_buffers_are_written_and_returned(fast_backend, ref, dtype):
    ops = get_ops(fast_backend)
    x_shape = (2, 3, 7, 5)
    x = ops.asarray(rand(x_shape, dtype, 8))
    colT = ops.alloc((27, 2 * 4 * 3), dtype)
    assert ops.im2col_t(x, 3, 3, 2, 1, out=colT) is colT
    numpy.testing.assert_array_equal(host(colT), ref.im2col_t(host(x), 3, 3, 2, 1))
    dx = ops.alloc(x_shape, dtype)
    assert ops.col2im_t(colT, x_shape, 3, 3, 2, 1, out=dx) is dx
    numpy.testing.assert_allclose(host(dx), ref.col2im_t(host(colT), x_shape, 3, 3, 2, 1), rtol=SUM_RTOL[dtype])


def test_transposed_non_contiguous_inputs_are_read_correctly(fast_backend, ref, dtype):
    ops = get_ops(fast_backend)
    x = rand((2, 5, 7, 3), dtype, 9).transpose(0, 3, 1, 2)  # an NHWC array viewed as NCHW
    got = host(ops.im2col_t(ops.asarray(x) if fast_backend != "cupy" else ops.xp.asarray(x), 2, 2, 1, 1))
    numpy.testing.assert_array_equal(got, ref.im2col_t(numpy.ascontiguousarray(x), 2, 2, 1, 1))
    c = rand((2 * 6 * 8, 3 * 2 * 2), dtype, 10).T  # (C*FH*FW, N*OH*OW), Fortran-ordered
    got = host(ops.col2im_t(ops.asarray(c) if fast_backend != "cupy" else ops.xp.asarray(c), x.shape, 2, 2, 1, 1))
    numpy.testing.assert_allclose(got, ref.col2im_t(numpy.ascontiguousarray(c), x.shape, 2, 2, 1, 1),
                                  rtol=SUM_RTOL[dtype], atol=SUM_RTOL[dtype])


@pytest.mark.parametrize("x_shape,win,stride,pad", POOL_CASES, ids=POOL_IDS)
def test_maxpool_forward_equals_reference(fast_backend, ref, dtype, x_shape, win, stride, pad):
    ops = get_ops(fast_backend)
    x = rand(x_shape, dtype, 5)
    y, idx = ops.maxpool_forward(ops.asarray(x), *win, stride, pad)
    ry, ridx = ref.maxpool_forward(x, *win, stride, pad)
    assert host(idx).dtype == numpy.int64 and host(y).dtype == dtype
    numpy.testing.assert_array_equal(host(y), ry)
    numpy.testing.assert_array_equal(host(idx), ridx)


def test_maxpool_ties_and_nan_follow_the_reference(fast_backend, ref, dtype):
    ops = get_ops(fast_backend)
    x = numpy.array([[[[1, 1, 2, 2], [1, 1, 2, 2], [0, numpy.nan, 3, 3], [numpy.nan, 0, 3, 4]]]], dtype=dtype)
    y, idx = ops.maxpool_forward(ops.asarray(x), 2, 2, 2, 0)
    ry, ridx = ref.maxpool_forward(x, 2, 2, 2, 0)
    numpy.testing.assert_array_equal(host(y), ry)
    numpy.testing.assert_array_equal(host(idx), ridx)
    numpy.testing.assert_array_equal(ridx.ravel(), [0, 2, 9, 15])


@pytest.mark.parametrize("x_shape,win,stride,pad", POOL_CASES, ids=POOL_IDS)
def test_maxpool_backward_matches_reference(fast_backend, ref, dtype, x_shape, win, stride, pad):
    ops = get_ops(fast_backend)
    _, idx = ref.maxpool_forward(rand(x_shape, dtype, 6), *win, stride, pad)
    dout = rand(idx.shape, dtype, 7)
    got = host(ops.maxpool_backward(ops.asarray(dout), ops.asarray(idx), x_shape))
    assert got.dtype == dtype and got.shape == x_shape
    numpy.testing.assert_allclose(got, ref.maxpool_backward(dout, idx, x_shape), rtol=RTOL[dtype], atol=ATOL[dtype])


def test_out_buffers_are_written_and_returned(fast_backend, ref, dtype):
    ops = get_ops(fast_backend)
    x_shape = (2, 3, 7, 5)
    x = ops.asarray(rand(x_shape, dtype, 8))
    col = ops.alloc((2 * 5 * 3, 27), dtype)
    assert ops.im2col(x, 3, 3, 1, 0, out=col) is col
    numpy.testing.assert_array_equal(host(col), ref.im2col(host(x), 3, 3, 1, 0))
    dx = ops.alloc(x_shape, dtype)
    assert ops.col2im(col, x_shape, 3, 3, 1, 0, out=dx) is dx
    numpy.testing.assert_allclose(host(dx), ref.col2im(host(col), x_shape, 3, 3, 1, 0), rtol=SUM_RTOL[dtype])
    y, idx = ops.alloc((2, 3, 3, 2), dtype), ops.alloc((2, 3, 3, 2), numpy.int64)
    ry, ridx = ops.maxpool_forward(x, 2, 2, 2, 0, out=y, argmax=idx)
    assert ry is y and ridx is idx
    dx2 = ops.alloc(x_shape, dtype)
    assert ops.maxpool_backward(y, idx, x_shape, out=dx2) is dx2


def test_non_contiguous_input_is_read_correctly(fast_backend, ref, dtype):
    ops = get_ops(fast_backend)
    x = rand((2, 5, 7, 3), dtype, 9).transpose(0, 3, 1, 2)  # an NHWC array viewed as NCHW
    got = host(ops.im2col(ops.asarray(x) if fast_backend != "cupy" else ops.xp.asarray(x), 2, 2, 1, 1))
    numpy.testing.assert_array_equal(got, ref.im2col(numpy.ascontiguousarray(x), 2, 2, 1, 1))


# ---------------------------------------------------------------- geometry errors (every backend)
def test_geometry_errors(ops):
    x = ops.asarray(rand((1, 1, 4, 4), numpy.float32, 1))
    with pytest.raises(ValueError, match=r"im2col: a 5x5 window does not fit"):
        ops.im2col(x, 5, 5)
    with pytest.raises(ValueError, match=r"im2col: expected x of shape \(N, C, H, W\)"), allow_fallback():
        ops.im2col(x[0], 2, 2)  # numba leaves a 3-D x to the reference, which raises
    with pytest.raises(ValueError, match=r"stride must be an int or 2 ints"):
        ops.im2col(x, 2, 2, stride=(1, 2, 3))
    with pytest.raises(ValueError, match=r"maxpool_forward: pad .* at most half"):
        ops.maxpool_forward(x, 2, 2, 1, 2)
    with pytest.raises(ValueError, match=r"col2im: expected col of shape \(9, 4\)"):
        ops.col2im(ops.asarray(rand((8, 4), numpy.float32, 2)), (1, 1, 4, 4), 2, 2)
    with pytest.raises(ValueError, match=r"im2col_t: a 5x5 window does not fit"):
        ops.im2col_t(x, 5, 5)
    with pytest.raises(ValueError, match=r"col2im_t: expected colT of shape \(4, 9\)"):
        ops.col2im_t(ops.asarray(rand((9, 4), numpy.float32, 2)), (1, 1, 4, 4), 2, 2)


@pytest.mark.skipif(not has_numba(), reason="needs numba")
def test_numba_maxpool_backward_rejects_indices_outside_the_plane():
    ops = get_ops("numba")
    dout = numpy.ones((1, 1, 1, 1), numpy.float32)
    with pytest.raises(IndexError, match="outside the 2x2 input plane"):
        ops.maxpool_backward(dout, numpy.array([[[[4]]]]), (1, 1, 2, 2))


@pytest.mark.skipif(not has_numba(), reason="needs numba")
def test_conv_kernels_are_serial_cached_and_stay_in_float32():
    from numba import types

    from fastnn.kernels.cpu import conv

    ops = get_ops("numba")
    x = rand((2, 3, 6, 5), numpy.float32, 1)
    col = ops.im2col(x, 3, 3, 1, 1)
    ops.col2im(col, x.shape, 3, 3, 1, 1)
    ops.col2im_t(ops.im2col_t(x, 3, 3, 1, 1), x.shape, 3, 3, 1, 1)
    y, idx = ops.maxpool_forward(x, 2, 2, 2, 0)
    ops.maxpool_backward(y, idx, x.shape)
    for name in ("im2col", "col2im", "im2col_t", "col2im_t", "maxpool_forward", "maxpool_backward"):
        disp = getattr(conv, name)
        opts = disp.targetoptions
        assert opts.get("error_model") == "numpy" and not opts.get("parallel") and not opts.get("fastmath"), name
        assert type(disp._cache).__name__ != "NullCache", name
        f32 = [s for s in disp.nopython_signatures
               if any(isinstance(a, types.Array) and a.dtype == types.float32 for a in s.args)]
        assert f32, name
        for sig in f32:
            bad = [a for a in sig.args if a == types.float64 or (isinstance(a, types.Array) and a.dtype == types.float64)]
            assert not bad, f"{name}{sig.args} computes in float64"


def test_gpu_launcher_checks_run_before_any_cuda_call():
    """The CUDA launchers check arguments before touching CuPy, so this runs without a GPU."""
    from fastnn.kernels.gpu import conv

    with pytest.raises(TypeError, match=r"im2col.*int32"):
        conv.im2col(numpy.ones((1, 1, 3, 3), numpy.int32), 2, 2)
    with pytest.raises(TypeError, match=r"im2col_t.*int32"):
        conv.im2col_t(numpy.ones((1, 1, 3, 3), numpy.int32), 2, 2)
    with pytest.raises(ValueError, match=r"col2im_t: expected colT of shape \(4, 4\)"):
        conv.col2im_t(numpy.ones((4, 5), numpy.float32), (1, 1, 3, 3), 2, 2)
    with pytest.raises(TypeError, match=r"maxpool_backward: argmax must be int64"):
        conv.maxpool_backward(numpy.ones((1, 1, 1, 1), numpy.float32), numpy.zeros((1, 1, 1, 1), numpy.int32),
                              (1, 1, 2, 2))


# ---------------------------------------------------------------------------- conv_bias_act / conv_act_backward
ACT_CASES = [(1, 1, 1, 1), (2, 3, 7, 5), (3, 5, 4, 9)]


@pytest.mark.parametrize("shape", ACT_CASES, ids=["1", "2x3x7x5", "3x5x4x9"])
@pytest.mark.parametrize("act", sorted(ACTIVATION_NAMES))
@pytest.mark.parametrize("has_b", [True, False], ids=["bias", "nobias"])
def test_conv_bias_act_matches_reference(fast_backend, ref, dtype, shape, act, has_b):
    ops = get_ops(fast_backend)
    z = rand(shape, dtype, 5)  # (C, N, H, W)
    b = rand(shape[:1], dtype, 6) if has_b else None
    want = ref.conv_bias_act(z, b, act, 0.1)
    assert want.shape == (shape[1], shape[0]) + shape[2:]
    got = ops.conv_bias_act(ops.asarray(z), None if b is None else ops.asarray(b), act, 0.1)
    assert host(got).dtype == dtype
    numpy.testing.assert_allclose(host(got), want, rtol=RTOL[dtype], atol=ATOL[dtype])
    out = ops.asarray(numpy.zeros(want.shape, dtype))
    assert ops.conv_bias_act(ops.asarray(z), None if b is None else ops.asarray(b), act, 0.1, out=out) is out
    numpy.testing.assert_allclose(host(out), want, rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("shape", ACT_CASES, ids=["1", "2x3x7x5", "3x5x4x9"])
@pytest.mark.parametrize("act", sorted(ACTIVATION_NAMES))
def test_conv_act_backward_matches_reference(fast_backend, ref, dtype, shape, act):
    ops = get_ops(fast_backend)
    dout, y = rand(shape, dtype, 7), rand(shape, dtype, 8)  # (N, C, H, W)
    if act in (1, 2):  # sigmoid's output lies in (0, 1)
        y = numpy.abs(y) % 1
    z = rand((shape[1], shape[0]) + shape[2:], dtype, 9)  # (C, N, H, W): gelu and swish read it, the rest ignore it
    db_ref = numpy.zeros(shape[1], dtype)
    want = ref.conv_act_backward(dout, y, act, 0.1, db=db_ref, z=z)
    assert want.shape == (shape[1], shape[0]) + shape[2:]
    db = ops.asarray(numpy.full(shape[1], 7, dtype))
    out = ops.asarray(numpy.zeros(want.shape, dtype))
    zd = ops.asarray(z)
    got = ops.conv_act_backward(ops.asarray(dout), ops.asarray(y), act, 0.1, out=out, db=db, z=zd)
    assert got is out and host(got).dtype == dtype
    numpy.testing.assert_allclose(host(got), want, rtol=RTOL[dtype], atol=ATOL[dtype])
    numpy.testing.assert_allclose(host(db), db_ref, rtol=SUM_RTOL[dtype] * 10, atol=SUM_RTOL[dtype] * 10)
    numpy.testing.assert_allclose(host(ops.conv_act_backward(ops.asarray(dout), ops.asarray(y), act, 0.1, z=zd)),
                                  want, rtol=RTOL[dtype], atol=ATOL[dtype])


def test_conv_primitives_are_the_transposed_bias_act(ref):
    """conv_bias_act is bias_act on the NHWC-ordered rows, moved to NCHW; conv_act_backward likewise."""
    z = rand((4, 3, 5, 6), numpy.float64, 9)  # (C, N, H, W)
    b = rand((4,), numpy.float64, 10)
    rows = z.transpose(1, 2, 3, 0).reshape(-1, 4)
    want = ref.bias_act(rows, b, 1).reshape(3, 5, 6, 4).transpose(0, 3, 1, 2)
    numpy.testing.assert_array_equal(ref.conv_bias_act(z, b, 1), want)

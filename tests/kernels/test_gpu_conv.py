"""The CUDA conv kernels against the NumPy reference, at sizes whose grid-stride loops wrap
(more elements than the launcher's capped grid covers), float32 and float64. The odd shapes and
edge cases run on the GPU through ``fast_backend`` in ``test_cpu_conv.py``; without CuPy and a
device everything here skips with the reason."""
import numpy
import pytest

from fastnn.backend import get_ops, select
from fastnn.testing import ATOL, RTOL, has_gpu, host

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not has_gpu(), reason="needs CuPy and a CUDA GPU: " + select.probe_cupy(0).reason)]

# 128 x 3 x 37 x 29 input, 3x3 windows: ~3.7 M col entries, > 132 SMs * 8 blocks * 256 threads
BIG = (128, 3, 37, 29)
SUM_RTOL = {numpy.dtype(numpy.float32): 1e-5, numpy.dtype(numpy.float64): 1e-12}


@pytest.fixture(scope="module")
def gpu():
    return get_ops("cupy")


def rand(shape, dtype, seed):
    return (numpy.random.default_rng(seed).standard_normal(shape) + 0.1).astype(dtype)


@pytest.mark.parametrize("stride,pad", [(1, 0), (2, (0, 1, 1, 0))])
def test_big_im2col_col2im_match_reference(gpu, ref, dtype, stride, pad):
    x = rand(BIG, dtype, 1)
    col = gpu.im2col(gpu.asarray(x), 3, 3, stride, pad)
    numpy.testing.assert_array_equal(host(col), ref.im2col(x, 3, 3, stride, pad))
    c = rand(col.shape, dtype, 2)
    numpy.testing.assert_allclose(host(gpu.col2im(gpu.asarray(c), BIG, 3, 3, stride, pad)),
                                  ref.col2im(c, BIG, 3, 3, stride, pad), rtol=SUM_RTOL[dtype], atol=SUM_RTOL[dtype])


@pytest.mark.parametrize("stride,pad", [(1, 0), (1, 1), (2, 0), (2, (0, 1, 1, 0))])
def test_big_im2col_t_col2im_t_match_reference(gpu, ref, dtype, stride, pad):
    x = rand(BIG, dtype, 1)
    colT = gpu.im2col_t(gpu.asarray(x), 3, 3, stride, pad)
    numpy.testing.assert_array_equal(host(colT), ref.im2col_t(x, 3, 3, stride, pad))
    c = rand(colT.shape, dtype, 2)
    numpy.testing.assert_allclose(host(gpu.col2im_t(gpu.asarray(c), BIG, 3, 3, stride, pad)),
                                  ref.col2im_t(c, BIG, 3, 3, stride, pad), rtol=SUM_RTOL[dtype], atol=SUM_RTOL[dtype])


def test_big_col2im_t_is_the_adjoint_of_im2col_t(gpu):
    """<col2im_t(c), x> == <c, im2col_t(x)> in float64 at a size whose grid-stride loops wrap."""
    x = rand(BIG, numpy.float64, 3)
    colT = gpu.im2col_t(gpu.asarray(x), 3, 3, 2, 1)
    c = gpu.asarray(rand(colT.shape, numpy.float64, 4))
    dx = gpu.col2im_t(c, BIG, 3, 3, 2, 1)
    assert numpy.isclose(float((dx * gpu.asarray(x)).sum()), float((c * colT).sum()), rtol=1e-12)


@pytest.mark.parametrize("win,stride", [((2, 2), 2), ((3, 3), 1)])
def test_big_maxpool_matches_reference(gpu, ref, dtype, win, stride):
    x = rand(BIG, dtype, 3)
    y, idx = gpu.maxpool_forward(gpu.asarray(x), *win, stride, 0)
    ry, ridx = ref.maxpool_forward(x, *win, stride, 0)
    numpy.testing.assert_array_equal(host(y), ry)
    numpy.testing.assert_array_equal(host(idx), ridx)
    dout = rand(ry.shape, dtype, 4)
    numpy.testing.assert_allclose(host(gpu.maxpool_backward(gpu.asarray(dout), idx, BIG)),
                                  ref.maxpool_backward(dout, ridx, BIG), rtol=RTOL[dtype], atol=ATOL[dtype])


def test_conv2d_layer_on_gpu_matches_numpy(gpu, ref):
    import fastnn
    from fastnn.layers import Conv2D

    x = rand((4, 3, 11, 9), numpy.float64, 5)
    outs = {}
    for name in ("numpy", "cupy"):
        with fastnn.using(name):
            layer = Conv2D(5, 3, strides=2, padding="same", activation="relu", dtype="float64")
            layer.rng = numpy.random.default_rng(0)
            y = layer.forward(x)
            dx = layer.backward(fastnn.asarray(rand(y.shape, numpy.float64, 6)))
            outs[name] = [host(a) for a in (y, dx, layer.dW, layer.db)]
    for a, b in zip(outs["cupy"], outs["numpy"]):
        numpy.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


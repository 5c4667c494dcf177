"""fastnn.book.layers, functions, gradient and util against the book's published formulas.

Expected values are written from the formulas (plain NumPy on the host), never from fastnn's output;
every backward is checked against central differences in float64 on every backend.
"""
import inspect
import math

import numpy
import pytest

from fastnn.book import functions as F
from fastnn.book import gradient as G
from fastnn.book import layers as L
from fastnn.book import util as U
from fastnn.gradcheck import check_layer
from fastnn.testing import host

RNG = numpy.random.default_rng(7)


def away_from_zero(shape, seed=0):
    """Random values with |x| >= 0.05 (off ReLU's kink)."""
    x = numpy.random.default_rng(seed).standard_normal(shape)
    return numpy.where(numpy.abs(x) < 0.05, 0.5, x)


def conv_reference(x, W, b, stride, pad):
    """The book's convolution written as loops: out[n, f, i, j] = sum(x_pad[n, :, window] * W[f]) + b[f]."""
    n, c, h, w = x.shape
    fn, _, fh, fw = W.shape
    xp = numpy.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    oh, ow = (h + 2 * pad - fh) // stride + 1, (w + 2 * pad - fw) // stride + 1
    out = numpy.empty((n, fn, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * stride:i * stride + fh, j * stride:j * stride + fw]
            out[:, :, i, j] = numpy.tensordot(win, W, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


# ---------------------------------------------------------------- gradients, every layer, every backend
def test_relu_gradient(ops):
    check_layer(L.Relu(), ops.asarray(away_from_zero((4, 7))))


def test_sigmoid_gradient(ops):
    check_layer(L.Sigmoid(), ops.asarray(RNG.standard_normal((4, 7))))


def test_affine_gradient_with_4d_input(ops):
    layer = L.Affine(ops.asarray(RNG.standard_normal((12, 5))), ops.asarray(RNG.standard_normal(5)))
    check_layer(layer, ops.asarray(RNG.standard_normal((3, 3, 2, 2))))


def test_dropout_gradient(ops):
    layer = L.Dropout(0.3, seed=3)
    check_layer(layer, ops.asarray(RNG.standard_normal((6, 9))))


@pytest.mark.parametrize("shape", [(5, 4), (4, 2, 3, 3)], ids=["2d", "4d_per_feature"])
def test_batchnorm_gradient(ops, shape):
    size = int(numpy.prod(shape[1:]))
    layer = L.BatchNormalization(ops.asarray(RNG.uniform(0.5, 1.5, size)), ops.asarray(RNG.standard_normal(size)))
    check_layer(layer, ops.asarray(RNG.standard_normal(shape)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stride,pad", [(1, 0), (2, 1)])
def test_convolution_gradient(ops, stride, pad):
    layer = L.Convolution(ops.asarray(RNG.standard_normal((3, 2, 3, 3))), ops.asarray(RNG.standard_normal(3)),
                          stride, pad)
    check_layer(layer, ops.asarray(RNG.standard_normal((2, 2, 6, 6))))


def test_pooling_gradient(ops):
    x = numpy.random.default_rng(1).permutation(2 * 3 * 6 * 6).reshape(2, 3, 6, 6) / 10.0  # distinct: no ties
    check_layer(L.Pooling(2, 2), ops.asarray(x))


# ---------------------------------------------------------------- the book's formulas and defaults
def test_dropout_is_not_inverted(ops):
    x = RNG.standard_normal((50, 40))
    layer = L.Dropout(0.3, seed=11)
    y = host(layer.forward(ops.asarray(x)))
    mask = host(layer.mask)
    assert set(numpy.unique(mask)) <= {0.0, 1.0}, "the book's mask is 0/1, not 1/(1 - ratio)"
    numpy.testing.assert_array_equal(y, x * mask)  # training: x * mask, no rescaling
    assert abs(mask.mean() - 0.7) < 0.05
    numpy.testing.assert_allclose(host(layer.forward(ops.asarray(x), train_flg=False)), x * (1 - 0.3), rtol=1e-15)
    dout = RNG.standard_normal(x.shape)
    numpy.testing.assert_array_equal(host(layer.backward(ops.asarray(dout))), dout * mask)
    assert inspect.signature(L.Dropout).parameters["dropout_ratio"].default == 0.5


def test_batchnorm_one_sample_batch(ops):
    """The book's batch_norm_gradient_check trains on x_train[:1]: x - mu = 0, so out = beta and dx = 0."""
    gamma, beta = RNG.uniform(0.5, 1.5, 6), RNG.standard_normal(6)
    layer = L.BatchNormalization(ops.asarray(gamma), ops.asarray(beta))
    x = RNG.standard_normal((1, 6))
    numpy.testing.assert_allclose(host(layer.forward(ops.asarray(x))), beta[None], rtol=1e-12, atol=1e-12)
    dout = RNG.standard_normal((1, 6))
    numpy.testing.assert_allclose(host(layer.backward(ops.asarray(dout))), 0.0, atol=1e-12)
    numpy.testing.assert_allclose(host(layer.dbeta), dout[0], rtol=1e-12)
    numpy.testing.assert_allclose(host(layer.dgamma), 0.0, atol=1e-12)
    numpy.testing.assert_allclose(host(layer.running_mean), 0.1 * x[0], rtol=1e-12)  # 0.9 * 0 + 0.1 * mu


def test_batchnorm_formula_and_defaults(ops):
    gamma, beta = RNG.uniform(0.5, 1.5, 3), RNG.standard_normal(3)
    x = RNG.standard_normal((5, 3))
    layer = L.BatchNormalization(ops.asarray(gamma), ops.asarray(beta))
    mu, var = x.mean(axis=0), ((x - x.mean(axis=0)) ** 2).mean(axis=0)
    expected = gamma * (x - mu) / numpy.sqrt(var + 10e-7) + beta
    numpy.testing.assert_allclose(host(layer.forward(ops.asarray(x))), expected, rtol=1e-12)
    numpy.testing.assert_allclose(host(layer.running_var), 0.1 * var, rtol=1e-12)
    rm, rv = 0.1 * mu, 0.1 * var
    numpy.testing.assert_allclose(host(layer.forward(ops.asarray(x), train_flg=False)),
                                  gamma * (x - rm) / numpy.sqrt(rv + 10e-7) + beta, rtol=1e-12)
    params = inspect.signature(L.BatchNormalization).parameters
    assert (params["momentum"].default, params["running_mean"].default, params["running_var"].default) == (0.9, None, None)


def test_convolution_scalar_bias(ops):
    """ch07/apply_filter: Convolution(w, 0) with a float32 image and float64 filters."""
    w = RNG.standard_normal((1, 1, 3, 3))
    img = RNG.random((1, 1, 7, 8)).astype(numpy.float32)
    layer = L.Convolution(ops.asarray(w), 0)
    out = layer.forward(ops.asarray(img))
    assert out.dtype == numpy.float64 and out.shape == (1, 1, 5, 6)
    numpy.testing.assert_allclose(host(out), conv_reference(img.astype(numpy.float64), w, numpy.zeros(1), 1, 0),
                                  rtol=1e-12, atol=1e-12)
    layer.backward(ops.asarray(numpy.ones(out.shape)))
    numpy.testing.assert_allclose(host(layer.db), [30.0])  # db = sum(dout) per filter
    assert host(L.Convolution(ops.asarray(w), 0.5).forward(ops.asarray(img)))[0, 0, 0, 0] == pytest.approx(
        conv_reference(img.astype(numpy.float64), w, numpy.zeros(1), 1, 0)[0, 0, 0, 0] + 0.5)


@pytest.mark.parametrize("stride,pad", [(1, 0), (2, 1), (1, 2)])
def test_convolution_matches_loops(ops, stride, pad):
    W, b, x = RNG.standard_normal((4, 3, 3, 3)), RNG.standard_normal(4), RNG.standard_normal((2, 3, 7, 6))
    out = L.Convolution(ops.asarray(W), ops.asarray(b), stride, pad).forward(ops.asarray(x))
    numpy.testing.assert_allclose(host(out), conv_reference(x, W, b, stride, pad), rtol=1e-12, atol=1e-12)


def test_pooling_default_stride_is_the_books_2(ops):
    """The book's common/layers.py: Pooling(pool_h, pool_w, stride=2, pad=0) (since its commit 77a0807)."""
    params = inspect.signature(L.Pooling).parameters
    assert (params["stride"].default, params["pad"].default) == (2, 0)
    x = RNG.standard_normal((2, 3, 6, 4))
    y = host(L.Pooling(2, 2).forward(ops.asarray(x)))
    assert y.shape == (2, 3, 3, 2)
    numpy.testing.assert_array_equal(y, x.reshape(2, 3, 3, 2, 2, 2).max(axis=(3, 5)))


def test_affine_formula_and_shape(ops):
    W, b, x = RNG.standard_normal((6, 4)), RNG.standard_normal(4), RNG.standard_normal((3, 2, 3))
    layer = L.Affine(ops.asarray(W), ops.asarray(b))
    numpy.testing.assert_allclose(host(layer.forward(ops.asarray(x))), x.reshape(3, 6) @ W + b, rtol=1e-12)
    assert layer.original_x_shape == (3, 2, 3)
    dout = RNG.standard_normal((3, 4))
    dx = host(layer.backward(ops.asarray(dout)))
    numpy.testing.assert_allclose(dx, (dout @ W.T).reshape(3, 2, 3), rtol=1e-12)
    numpy.testing.assert_allclose(host(layer.dW), x.reshape(3, 6).T @ dout, rtol=1e-12)
    numpy.testing.assert_allclose(host(layer.db), dout.sum(axis=0), rtol=1e-12)


def test_relu_and_sigmoid_formulas(ops):
    x = away_from_zero((3, 5), seed=4)
    relu = L.Relu()
    numpy.testing.assert_array_equal(host(relu.forward(ops.asarray(x))), numpy.maximum(0, x))
    numpy.testing.assert_array_equal(host(relu.mask), x <= 0)
    dout = RNG.standard_normal(x.shape)
    d = ops.asarray(dout.copy())
    numpy.testing.assert_array_equal(host(relu.backward(d)), numpy.where(x > 0, dout, 0))
    numpy.testing.assert_array_equal(host(d), dout)  # dout is not written
    sig = L.Sigmoid()
    s = 1 / (1 + numpy.exp(-x))
    numpy.testing.assert_allclose(host(sig.forward(ops.asarray(x))), s, rtol=1e-14)
    numpy.testing.assert_allclose(host(sig.backward(ops.asarray(dout))), dout * (1 - s) * s, rtol=1e-13)


@pytest.mark.parametrize("one_hot", [False, True])
def test_softmax_with_loss_is_the_books(ops, one_hot):
    x, idx = RNG.standard_normal((4, 5)) * 3, numpy.array([0, 3, 4, 1])
    t = numpy.eye(5)[idx] if one_hot else idx
    e = numpy.exp(x - x.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    layer = L.SoftmaxWithLoss()
    loss = float(layer.forward(ops.asarray(x), ops.asarray(t)))
    assert loss == pytest.approx(-numpy.log(y[numpy.arange(4), idx] + 1e-7).sum() / 4, rel=1e-13)
    numpy.testing.assert_allclose(host(layer.backward()), (y - numpy.eye(5)[idx]) / 4, rtol=1e-12, atol=1e-15)
    exact = L.SoftmaxWithLoss(exact=True).forward(ops.asarray(x), ops.asarray(t))
    assert float(exact) == pytest.approx(-numpy.log(y[numpy.arange(4), idx]).sum() / 4, rel=1e-13)


def test_layers_follow_input_dtype(ops):
    x32 = ops.asarray(RNG.standard_normal((3, 4)).astype(numpy.float32))
    assert L.Relu().forward(x32).dtype == numpy.float32
    assert L.Sigmoid().forward(x32).dtype == numpy.float32
    assert L.Dropout(0.5, seed=1).forward(x32).dtype == numpy.float32
    assert L.Affine(ops.asarray(numpy.ones((4, 2))), ops.asarray(numpy.zeros(2))).forward(x32).dtype == numpy.float64


# ---------------------------------------------------------------- functions and gradient
def test_functions_are_the_books():
    x = numpy.array([-1.0, 0.0, 2.0])
    assert F.step_function(x).dtype.kind == "i" and F.step_function(x).tolist() == [0, 0, 1]
    assert F.identity_function(x) is x
    numpy.testing.assert_array_equal(F.relu_grad(x), [0.0, 1.0, 1.0])  # the book counts x == 0 as passing
    numpy.testing.assert_array_equal(F.relu(numpy.array([-2, 3])), [0, 3])
    s = 1 / (1 + numpy.exp(-x))
    numpy.testing.assert_allclose(F.sigmoid(x), s, rtol=1e-15)
    numpy.testing.assert_allclose(F.sigmoid_grad(x), (1 - s) * s, rtol=1e-14)
    x3 = RNG.standard_normal((2, 3, 4))
    e = numpy.exp(x3 - x3.max(axis=-1, keepdims=True))
    numpy.testing.assert_allclose(F.softmax(x3), e / e.sum(axis=-1, keepdims=True), rtol=1e-14)
    y, t = numpy.array([0.1, 0.6, 0.3]), numpy.array([0.0, 1.0, 0.0])
    assert F.sum_squared_error(y, t) == pytest.approx(0.5 * (0.01 + 0.16 + 0.09))
    assert F.cross_entropy_error(y, t) == pytest.approx(-math.log(0.6 + 1e-7))
    assert F.softmax_loss(numpy.log(y)[None], numpy.array([1])) == pytest.approx(-math.log(0.6 + 1e-7))


def test_numerical_gradient_formulas():
    x = numpy.array([3.0, 4.0])
    numpy.testing.assert_allclose(G.numerical_gradient(lambda v: v[0] ** 2 + v[1] ** 2, x), [6.0, 8.0], rtol=1e-8)
    X = numpy.array([[3.0, 4.0], [0.0, 2.0]])
    numpy.testing.assert_allclose(G.numerical_gradient_2d(lambda v: numpy.sum(v ** 2), X), 2 * X, atol=1e-8)
    numpy.testing.assert_allclose(G.numerical_gradient_2d(lambda v: numpy.sum(v ** 2), x), 2 * x, rtol=1e-8)


# ---------------------------------------------------------------- util
def test_im2col_matches_the_books_definition(ops):
    x, fh, fw, stride, pad = RNG.standard_normal((2, 3, 5, 4)), 3, 2, 2, 1
    col = host(U.im2col(ops.asarray(x), fh, fw, stride, pad))
    xp = numpy.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    oh, ow = (5 + 2 * pad - fh) // stride + 1, (4 + 2 * pad - fw) // stride + 1
    rows = [xp[n, :, i * stride:i * stride + fh, j * stride:j * stride + fw].reshape(-1)
            for n in range(2) for i in range(oh) for j in range(ow)]
    numpy.testing.assert_array_equal(col, numpy.array(rows))
    c = RNG.standard_normal(col.shape)  # col2im is im2col's adjoint: <im2col(x), c> = <x, col2im(c)>
    dx = host(U.col2im(ops.asarray(c), x.shape, fh, fw, stride, pad))
    assert dx.shape == x.shape
    assert numpy.vdot(col, c) == pytest.approx(numpy.vdot(x, dx), rel=1e-12)
    assert U.conv_output_size(28, 5, 1, 0) == 24.0


def test_smooth_curve_and_shuffle_dataset():
    assert numpy.allclose(U.smooth_curve(numpy.full(30, 2.5)), 2.5)
    x = numpy.arange(30.0) ** 2
    w = numpy.kaiser(11, 2)
    smooth = U.smooth_curve(x)
    assert smooth.shape == (30,)
    padded = numpy.r_[x[10:0:-1], x, x[-1:-11:-1]]
    assert smooth[12] == pytest.approx(numpy.dot(w / w.sum(), padded[12 + 5:12 + 16][::-1]))
    xs, ts = numpy.arange(20.0).reshape(10, 2), numpy.arange(10)
    numpy.random.seed(3)
    a, b = U.shuffle_dataset(xs, ts)
    numpy.random.seed(3)
    perm = numpy.random.permutation(10)
    numpy.testing.assert_array_equal(a, xs[perm])
    numpy.testing.assert_array_equal(b, ts[perm])


# ---------------------------------------------------------------- ch05/layer_naive.py
def test_mul_and_add_layers_on_scalars_and_arrays(ops):
    from fastnn.book.layer_naive import AddLayer, MulLayer

    mul, add = MulLayer(), AddLayer()
    assert mul.forward(100, 2) == 200 and mul.backward(1.1) == pytest.approx((2.2, 110))
    assert add.forward(200, 450) == 650 and add.backward(1.1) == (1.1, 1.1)
    x, y, dout = (away_from_zero((3, 4), seed=s) for s in (1, 2, 3))
    xd, yd, dd = (ops.asarray(a) for a in (x, y, dout))
    numpy.testing.assert_allclose(host(mul.forward(xd, yd)), x * y)
    dx, dy = mul.backward(dd)
    numpy.testing.assert_allclose(host(dx), dout * y)  # d(x*y)/dx = y: the book's swap
    numpy.testing.assert_allclose(host(dy), dout * x)
    numpy.testing.assert_allclose(host(add.forward(xd, yd)), x + y)
    assert all(numpy.allclose(host(g), dout) for g in add.backward(dd))


def test_naive_layers_refuse_bad_values():
    from fastnn.book.layer_naive import AddLayer, MulLayer

    with pytest.raises(ValueError, match="MulLayer.backward: called before forward"):
        MulLayer().backward(1.0)
    with pytest.raises(TypeError, match="MulLayer.forward: y must be a real number .* got '2'"):
        MulLayer().forward(100, "2")
    with pytest.raises(TypeError, match="AddLayer.forward: x must hold real numbers.*complex"):
        AddLayer().forward(numpy.ones(2, complex), 1.0)

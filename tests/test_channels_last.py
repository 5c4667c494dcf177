"""``data_format="channels_last"`` on Conv2D and the 2-D poolings: the same numbers as channels
first on transposed data (outputs, input gradients, weight gradients), Keras's NHWC formula and
flatten order, gradients against central differences, shapes, models with input_shape=(H, W, C)
that train and round-trip, the global default, and errors in the layer's own layout."""
import numpy
import pytest

import fastnn
from fastnn import datasets, gradcheck, optimizers
from fastnn.layers import (
    AveragePooling2D, Conv2D, Convolution, Dense, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D,
    Pooling, image_data_format, set_image_data_format,
)
from fastnn.models import Sequential, load_model
from fastnn.testing import host

NHWC, NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


@pytest.fixture
def on(backend):
    with fastnn.using(backend) as ops:
        yield ops


@pytest.fixture
def restore_format():
    saved = image_data_format()
    yield
    set_image_data_format(saved)


def randn(shape, seed=0):
    return numpy.random.default_rng(seed).standard_normal(shape)


def distinct(shape, seed=0):
    return numpy.random.default_rng(seed).permutation(int(numpy.prod(shape))).reshape(shape) * 0.01


def pair(make, data):
    """The layer made channels last and channels first with the same weights, run on ``data``
    (NHWC) and on its NCHW transpose, forward and backward with one ``dout``; host arrays."""
    last, first = make("channels_last", data["x"].dtype), make("channels_first", data["x"].dtype)
    y = last.forward(data["x"])
    if last.weights:
        first.build((None,) + tuple(data["x"].shape[i] for i in NCHW[1:]))
        first.set_weights(last.get_weights())
    yf = first.forward(data["ops"].xp.ascontiguousarray(data["x"].transpose(NCHW)))
    dout = randn(y.shape, 3).astype(y.dtype)
    dx = last.backward(data["ops"].asarray(dout))
    doutf = dout if dout.ndim == 2 else dout.transpose(NCHW)
    dxf = first.backward(data["ops"].asarray(numpy.ascontiguousarray(doutf)))
    return last, first, (host(y), host(yf)), (host(dx), host(dxf))


LAYERS = {
    "conv_valid": lambda f, dt: Conv2D(4, (3, 2), activation="tanh", data_format=f, dtype=dt),
    "conv_same_s2": lambda f, dt: Conv2D(3, 3, strides=2, padding="same", activation="relu", data_format=f, dtype=dt),
    "maxpool": lambda f, dt: MaxPooling2D((2, 3), 1, data_format=f),
    "avgpool": lambda f, dt: AveragePooling2D(2, data_format=f),
    "gap": lambda f, dt: GlobalAveragePooling2D(data_format=f), "gmp": lambda f, dt: GlobalMaxPooling2D(data_format=f),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_channels_last_equals_channels_first_on_transposed_data(on, dtype, name):
    x = distinct((2, 7, 6, 3), 1).astype(dtype)  # NHWC, odd sizes
    last, first, (y, yf), (dx, dxf) = pair(LAYERS[name], {"x": on.asarray(x), "ops": on})
    back = (lambda a: a) if y.ndim == 2 else (lambda a: a.transpose(NHWC))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == numpy.float32 else dict(rtol=1e-12, atol=1e-13)
    assert y.dtype == dtype and dx.shape == x.shape
    numpy.testing.assert_allclose(y, back(yf), **tol)
    numpy.testing.assert_allclose(dx, dxf.transpose(NHWC), **tol)
    for g, gf in zip(last.grads.values(), first.grads.values()):
        numpy.testing.assert_allclose(host(g), host(gf), **tol)
    assert last.compute_output_shape((None,) + x.shape[1:]) == (None,) + y.shape[1:]
    assert first.compute_output_shape((None,) + x.transpose(NCHW).shape[1:]) == (None,) + yf.shape[1:]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_channels_last_gradients_match_central_differences(on, name):
    layer = LAYERS[name]("channels_last", "float64")
    # Weights from a fixed seed: with draws from the global generator, one run in about 300 put a
    # pre-activation of the relu conv within a step h of its kink, where central differences are
    # wrong. With seed 5 every |pre-activation| is >= 0.023, and a step moves one by at most 1.2e-4.
    layer.build((None, 6, 5, 2), rng=numpy.random.default_rng(5))
    gradcheck.check_layer(layer, on.asarray(distinct((2, 6, 5, 2), 2)))


def test_conv2d_channels_last_is_keras_nhwc_formula(on):
    """``y[n, i, j, f] = b[f] + sum_{a, b, c} x[n, i + a, j + b, c] K[a, b, c, f]`` with Keras's
    kernel ``K = W.transpose(2, 3, 1, 0)``."""
    layer = Conv2D(5, (2, 3), data_format="channels_last", dtype="float64", bias_initializer="normal")
    x = randn((3, 6, 7, 2), 4)
    y = host(layer.forward(on.asarray(x)))
    K, b = host(layer.W).transpose(2, 3, 1, 0), host(layer.b)
    want = numpy.zeros((3, 5, 5, 5)) + b
    for a in range(2):
        for c in range(3):
            want += numpy.einsum("nijc,cf->nijf", x[:, a:a + 5, c:c + 5, :], K[a, c])
    assert host(layer.W).shape == (5, 2, 2, 3)
    numpy.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_flatten_after_channels_last_flattens_in_keras_order(on):
    m = Sequential([Conv2D(3, 3, padding="same", data_format="channels_last", input_shape=(5, 4, 2)),
                    Flatten(), Dense(2)], dtype="float64", seed=0, backend=on.name)
    m.build()
    x = randn((4, 5, 4, 2), 5)
    conv = m.layers[0]
    probe = Conv2D(3, 3, padding="same", data_format="channels_last", dtype="float64")
    probe.build((None, 5, 4, 2))
    probe.set_weights(conv.get_weights())
    y_nhwc = host(probe.forward(x))
    Wd, bd = m.layers[2].get_weights()
    numpy.testing.assert_allclose(m.predict(x), y_nhwc.reshape(4, -1) @ Wd + bd, rtol=1e-12, atol=1e-12)


def digits_nhwc():
    (x, t), (xv, tv) = datasets.load_digits(flatten=False)
    return x.transpose(NHWC), t, xv.transpose(NHWC), tv


def test_cnn_with_input_shape_hwc_trains_and_round_trips(on, tmp_path):
    x, t, xv, tv = digits_nhwc()
    assert x.shape[1:] == (8, 8, 1)
    m = Sequential([Conv2D(8, 3, padding="same", activation="relu", data_format="channels_last", input_shape=(8, 8, 1)),
                    MaxPooling2D(2, data_format="channels_last"),
                    Conv2D(8, 3, activation="relu", data_format="channels_last"),
                    AveragePooling2D(1, data_format="channels_last"), GlobalMaxPooling2D(data_format="channels_last"),
                    Dense(10, activation="softmax")], seed=0, backend=on.name)
    m.build()
    assert [layer.compute_output_shape(s) for layer, s in zip(m.layers[:3], [(None, 8, 8, 1), (None, 8, 8, 8),
                                                                            (None, 4, 4, 8)])] == \
        [(None, 8, 8, 8), (None, 4, 4, 8), (None, 2, 2, 8)]
    assert m.output_shape == (None, 10)
    m.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = m.fit(x[:400], t[:400], epochs=4, batch_size=32, verbose=0).history
    assert hist["loss"][-1] < 0.75 * hist["loss"][0], hist["loss"]
    m.save(tmp_path / "cnn.fastnn")
    loaded = load_model(tmp_path / "cnn.fastnn", backend=on.name)
    assert [layer.get_config().get("data_format") for layer in loaded.layers[:5]] == ["channels_last"] * 5
    numpy.testing.assert_array_equal(loaded.predict(xv[:16]), m.predict(xv[:16]))
    again = Sequential.from_config(m.get_config())
    again.set_weights(m.get_weights())
    numpy.testing.assert_allclose(again.predict(xv[:16]), m.predict(xv[:16]), rtol=1e-6, atol=1e-7)


def test_keras_default_through_set_image_data_format(restore_format):
    from fastnn.layers import Conv1D, MaxPooling1D
    assert image_data_format() == "channels_first" and Conv2D(2, 3).data_format == "channels_first"
    set_image_data_format("channels_last")
    conv, pool, gap = Conv2D(2, 3), MaxPooling2D(2), GlobalAveragePooling2D()
    assert {conv.data_format, pool.data_format, gap.data_format} == {"channels_last"}
    assert Conv2D(2, 3, data_format="channels_first").data_format == "channels_first"
    book = Convolution(numpy.ones((2, 1, 3, 3)), numpy.zeros(2))
    assert book.data_format == "channels_first" and Pooling(2, 2).data_format == "channels_first"
    assert book.forward(numpy.ones((1, 1, 5, 5))).shape == (1, 2, 3, 3)
    cfg = conv.get_config()
    set_image_data_format("channels_first")
    assert Conv2D(**cfg).data_format == "channels_last"  # the config keeps the format it was made with
    assert Conv1D(2, 3).data_format == MaxPooling1D().data_format == "channels_last"
    with pytest.raises(ValueError, match=r"set_image_data_format: data_format must be 'channels_first' or "
                                         r"'channels_last', got 'NHWC'"):
        set_image_data_format("NHWC")


def test_errors_speak_the_layers_layout():
    layer = Conv2D(4, 3, data_format="channels_last", name="cl")
    layer.build((None, 8, 8, 3))
    with pytest.raises(ValueError, match=r"cl \(Conv2D\): expected x of shape \(N, H, W, 3\) \(data_format="
                                         r"'channels_last'\), got \(2, 3, 8, 8\); it looks like channels_first data"):
        layer.forward(numpy.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"expected x of shape \(N, H, W, C\).*got \(2, 8, 8\); data with one "
                                         r"channel needs a channel axis: x\[\.\.\., None\]"):
        MaxPooling2D(2, data_format="channels_last").forward(numpy.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r"input_shape must be \(H, W, C\) \(data_format='channels_last'\)"):
        Conv2D(2, 3, data_format="channels_last", input_shape=(8, 8))
    with pytest.raises(ValueError, match=r"data_format must be 'channels_first' or 'channels_last', got 'nhwc'"):
        AveragePooling2D(2, data_format="nhwc")
    with pytest.raises(ValueError, match=r"dilation_rate=\(2, 2\) is not supported"):
        Conv2D(2, 3, dilation_rate=(2, 2))
    fresh = GlobalAveragePooling2D(data_format="channels_last", name="g")
    with pytest.raises(ValueError, match=r"g: backward\(\) was called before forward\(\)"):
        fresh.backward(numpy.zeros((1, 2)))
    fresh.forward(numpy.zeros((1, 3, 3, 2)))
    with pytest.raises(ValueError, match=r"g: backward expected dout of shape \(1, 2\).*got \(1, 3\)"):
        fresh.backward(numpy.zeros((1, 3)))
    with pytest.warns(UserWarning, match="looks channels-last.*data_format='channels_last'"):
        Sequential([Conv2D(4, 3, input_shape=(28, 28, 3))]).build()


def test_training_step_reuses_its_transpose_workspaces():
    m = Sequential([Conv2D(2, 3, data_format="channels_last", input_shape=(6, 6, 2)), Flatten(), Dense(2)], seed=0)
    m.compile("sgd", "mse")
    x, y = randn((4, 6, 6, 2), 1).astype("float32"), randn((4, 2), 2).astype("float32")
    m.train_on_batch(x, y)
    kept = {k: id(v) for k, v in m.layers[0]._ws.items()}
    m.train_on_batch(x, y)
    assert {k: id(v) for k, v in m.layers[0]._ws.items()} == kept
    assert {k[0] for k in kept} >= {"x_nchw", "y_layout", "dout_nchw"}

"""Book-style layers: gradients against central differences, forwards against closed forms,
every backend against the NumPy reference, and clear errors."""
import math

import numpy
import pytest

import fastnn
from fastnn import gradcheck
from fastnn.layers.base import StepContext
from fastnn.layers import (
    Activation, Affine, BatchNormalization, Conv2D, Dense, Dropout, Elu, Flatten, Gelu, LeakyRelu,
    MeanSquaredLoss, PRelu, Relu, Selu, Sigmoid, SigmoidWithLoss, Softmax, SoftmaxWithLoss, Softplus,
    Swish, Tanh,
)
from fastnn.testing import assert_close, host

H = 1e-4


@pytest.fixture
def on(backend):
    with fastnn.using(backend) as ops:
        yield ops


def randn(ops, shape, seed=0, dtype=numpy.float64, scale=1.0, off_kink=False):
    a = numpy.random.default_rng(seed).standard_normal(shape) * scale
    if off_kink:  # keep |x| >= 10 h away from ReLU-like kinks
        a = numpy.where(numpy.abs(a) < 10 * H, numpy.sign(a + 1e-12) * 0.1, a)
    return ops.asarray(a.astype(dtype))


def affine(ops, d, h, seed=1, dtype=numpy.float64):
    return Affine(randn(ops, (d, h), seed, dtype), randn(ops, (h,), seed + 1, dtype))


ACTIVATION_LAYERS = [
    ("relu", Relu, True), ("sigmoid", Sigmoid, False), ("tanh", Tanh, False),
    ("leaky_relu", lambda: LeakyRelu(0.1), True), ("elu", lambda: Elu(0.7), True),
    ("softplus", Softplus, False), ("softmax", Softmax, False),
    ("selu", Selu, True), ("gelu", Gelu, False), ("gelu_tanh", lambda: Gelu(approximate=True), False),
    ("swish", Swish, False), ("silu", lambda: Activation("silu"), False),
    ("gelu_by_name", lambda: Activation("gelu", approximate=True), False),
]


# ---------------------------------------------------------------- gradients (float64)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 5)])
def test_affine_gradient(on, shape):
    layer = affine(on, shape[1], 3)
    gradcheck.check_layer(layer, randn(on, shape, seed=7))


def test_affine_flattens_4d_input_and_restores_dx_shape(on):
    layer = affine(on, 2 * 3 * 2, 4)
    x = randn(on, (3, 2, 3, 2), seed=3)
    y = layer.forward(x)
    assert y.shape == (3, 4)
    dx = layer.backward(randn(on, (3, 4), seed=4))
    assert dx.shape == (3, 2, 3, 2)
    gradcheck.check_layer(layer, x)


@pytest.mark.parametrize("name,make,kinked", ACTIVATION_LAYERS, ids=[a[0] for a in ACTIVATION_LAYERS])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7)])
def test_activation_layer_gradient(on, name, make, kinked, shape):
    gradcheck.check_layer(make(), randn(on, shape, seed=11, scale=2.0, off_kink=kinked))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu", "elu", "softplus", "softmax", None,
                                        "selu", "gelu", "gelu_tanh", "swish", "silu"])
def test_dense_with_fused_activation_gradient(on, activation):
    layer = Dense(4, activation=activation, dtype="float64", kernel_initializer="he_normal")
    layer.rng = numpy.random.default_rng(0)
    x = randn(on, (5, 3), seed=2)
    layer.forward(x)
    if activation in ("relu", "leaky_relu", "elu", "selu"):  # move pre-activations off the kink
        z = host(x) @ host(layer.W) + host(layer.b)
        assert numpy.abs(z).min() > 10 * H
    gradcheck.check_layer(layer, x)


def test_prelu_gradient_includes_slope(on):
    layer = PRelu(alpha_initializer=0.2)
    gradcheck.check_layer(layer, randn(on, (4, 6), seed=3, off_kink=True))
    assert layer.dalpha.shape == (6,)


def test_dropout_gradient_with_a_fixed_mask(on):
    layer = Dropout(0.3, seed=42)
    gradcheck.check_layer(layer, randn(on, (6, 5), seed=9))


@pytest.mark.parametrize("kind", ["book_2d", "book_4d_features", "book_4d_channels", "keras_2d", "keras_4d"])
def test_batchnorm_gradient(on, kind):
    rng = numpy.random.default_rng(5)
    if kind.startswith("book"):
        size = {"book_2d": 5, "book_4d_features": 2 * 3 * 3, "book_4d_channels": 2}[kind]
        layer = BatchNormalization(on.asarray(rng.random(size) + 0.5), on.asarray(rng.standard_normal(size)))
    else:
        layer = BatchNormalization(dtype="float64")
    shape = (6, 5) if kind.endswith("2d") else (4, 2, 3, 3)
    layer.forward(randn(on, shape, seed=1))
    if kind == "keras_4d" or kind == "book_4d_channels":
        assert layer.gamma.shape == (2,)
    gradcheck.check_layer(layer, randn(on, shape, seed=1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("labels", ["index", "one_hot"])
def test_softmax_with_loss_gradient(on, labels):
    x = randn(on, (5, 4), seed=3, scale=2.0)
    t = numpy.array([0, 3, 1, 2, 3])
    t = on.asarray(t if labels == "index" else numpy.eye(4)[t])
    gradcheck.check_loss(SoftmaxWithLoss(), x, t)


def test_mean_squared_and_sigmoid_losses_gradient(on):
    rng = numpy.random.default_rng(4)
    gradcheck.check_loss(MeanSquaredLoss(), randn(on, (4, 3)), on.asarray(rng.standard_normal((4, 3))))
    gradcheck.check_loss(SigmoidWithLoss(), randn(on, (4, 3), scale=3), on.asarray(rng.random((4, 3))))


def test_gradient_check_can_fail(on):
    layer = Relu()
    layer.backward = lambda dout: dout * 2  # a wrong backward must be caught
    with pytest.raises(gradcheck.GradientCheckError, match="differs from central differences"):
        gradcheck.check_layer(layer, randn(on, (3, 4), off_kink=True))


# ---------------------------------------------------------------- forwards and closed forms
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (129, 65)])
def test_affine_forward_closed_form_keeps_dtype(on, dtype, shape):
    W = randn(on, (shape[1], 9), 1, dtype)
    b = randn(on, (9,), 2, dtype)
    x = randn(on, shape, 3, dtype)
    y = Affine(W, b).forward(x)
    assert y.dtype == dtype
    expect = host(x).astype(numpy.float64) @ host(W).astype(numpy.float64) + host(b)
    assert_close(y, expect.astype(dtype), rtol=1e-4 if dtype == numpy.float32 else 1e-12,
                 atol=1e-4 if dtype == numpy.float32 else 1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (129, 65)])
def test_every_layer_matches_the_reference_backend(backend, dtype, shape):
    """Each backend's forward and backward against the NumPy reference on the same random data."""
    results = {}
    for name in ("numpy", backend):
        with fastnn.using(name) as ops:
            out = []
            x = randn(ops, shape, 3, dtype, scale=2.0)
            dout = randn(ops, shape, 4, dtype)
            for make in (Relu, Sigmoid, Tanh, lambda: LeakyRelu(0.05), lambda: Elu(1.0), Softplus, Softmax,
                         Selu, Gelu, lambda: Gelu(approximate=True), Swish, lambda: Dropout(0.4, seed=3)):
                layer = make()
                if isinstance(layer, Dropout):
                    layer.step = 7
                out.append(layer.forward(x, train_flg=True))
                out.append(layer.backward(dout))
            W, b = randn(ops, (shape[1], 5), 5, dtype), randn(ops, (5,), 6, dtype)
            aff = Affine(W, b)
            out.append(aff.forward(x))
            out.append(aff.backward(randn(ops, (shape[0], 5), 8, dtype)))
            out += [aff.dW, aff.db]
            results[name] = [host(a).copy() for a in out]
    tol = 2e-5 if dtype == numpy.float32 else 1e-11
    for i, (a, b) in enumerate(zip(results[backend], results["numpy"])):
        assert a.dtype == dtype
        assert_close(a, b, rtol=tol, atol=tol, err_msg=f"output {i}")


def test_relu_backward_does_not_write_dout(on):
    layer = Relu()
    layer.forward(randn(on, (4, 4), off_kink=True))
    dout = randn(on, (4, 4), seed=2)
    saved = host(dout).copy()
    dx = layer.backward(dout)
    numpy.testing.assert_array_equal(host(dout), saved)
    assert numpy.count_nonzero(host(dx) == 0) > 0


def test_affine_keeps_the_arrays_it_is_given_so_in_place_updates_train_it(on):
    W, b = randn(on, (3, 2)), randn(on, (2,), 1)
    layer = Affine(W, b)
    assert layer.W is W and layer.b is b
    x = randn(on, (4, 3), 5)
    before = host(layer.forward(x)).copy()
    W -= 0.5  # the user's in-place update, as in params["W1"] -= lr * grads["W1"]
    after = host(layer.forward(x))
    assert_close(after, before - 0.5 * host(x).sum(1, keepdims=True))


def test_softmax_with_loss_is_stable_and_backward_is_y_minus_t_over_n(on):
    x = on.asarray(numpy.array([[1000.0, 0.0, -1000.0], [3.0, 2.0, 1.0]]))
    t = on.asarray(numpy.array([1, 0]))
    layer = SoftmaxWithLoss()
    loss = float(layer.forward(x, t))
    assert numpy.isfinite(loss)
    lse = numpy.array([1000.0, 3 + numpy.log(1 + numpy.exp(-1) + numpy.exp(-2))])
    assert loss == pytest.approx(((lse[0] - 0.0) + (lse[1] - 3.0)) / 2)
    dx = host(layer.backward(2.0))
    y = host(layer.y)
    assert_close(dx, 2.0 * (y - numpy.eye(3)[[1, 0]]) / 2)


def test_dropout_is_inverted_and_identity_at_inference(on):
    x = on.asarray(numpy.ones((400, 50)))
    layer = Dropout(dropout_ratio=0.2, seed=1)
    y = host(layer.forward(x, train_flg=True))
    kept = y != 0
    assert abs(kept.mean() - 0.8) < 0.02
    assert_close(y[kept], numpy.full(kept.sum(), 1 / 0.8))
    assert layer.forward(x, training=False) is x
    y2 = host(layer.forward(x, train_flg=True))
    assert not numpy.array_equal(y != 0, y2 != 0)  # a fresh mask per training call on its own
    assert Dropout(0.3).rate == Dropout(rate=0.3).rate == Dropout(dropout_ratio=0.3).rate == 0.3


def test_batchnorm_book_and_keras_defaults(on):
    g, b = on.asarray(numpy.ones(3)), on.asarray(numpy.zeros(3))
    book = BatchNormalization(g, b)
    assert (book.momentum, book.eps) == (0.9, 1e-6)
    keras = BatchNormalization()
    assert (keras.momentum, keras.eps) == (0.99, 1e-3)
    x = randn(on, (50, 3), scale=4.0) + 7
    y = host(book.forward(x, train_flg=True))
    assert_close(y.mean(0), numpy.zeros(3), atol=1e-10)
    assert_close(y.std(0), numpy.ones(3), rtol=1e-5, atol=1e-5)
    assert_close(book.running_mean, 0.1 * host(x).mean(0))
    inf = host(book.forward(x, train_flg=False))
    expect = (host(x) - host(book.running_mean)) / numpy.sqrt(host(book.running_var) + 1e-6)
    assert_close(inf, expect)


def test_flatten_round_trip(on):
    layer = Flatten()
    x = randn(on, (2, 3, 4))
    assert layer.forward(x).shape == (2, 12)
    assert layer.backward(randn(on, (2, 12))).shape == (2, 3, 4)


# Each activation by name against its textbook formula (alpha: Keras's defaults 0.3 and 1.0).
FORMULAS = {
    "linear": lambda z: z,
    "relu": lambda z: numpy.maximum(z, 0),
    "sigmoid": lambda z: 1 / (1 + numpy.exp(-z)),
    "tanh": numpy.tanh,
    "leaky_relu": lambda z: numpy.where(z > 0, z, 0.3 * z),
    "elu": lambda z: numpy.where(z > 0, z, 1.0 * (numpy.exp(z) - 1)),
    "softplus": lambda z: numpy.log1p(numpy.exp(z)),
    "softmax": lambda z: numpy.exp(z) / numpy.exp(z).sum(1, keepdims=True),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_activation_by_name_follows_its_formula(on, name):
    x = randn(on, (3, 4), seed=2, scale=2.0)
    layer = Activation(name, **({"alpha": {"leaky_relu": 0.3, "elu": 1.0}[name]} if name in ("leaky_relu", "elu")
                                else {}))
    assert_close(layer.forward(x), FORMULAS[name](host(x)))
    if name == "tanh":
        assert_close(Tanh().forward(x), numpy.tanh(host(x)))


# ---------------------------------------------------------------- errors
def test_affine_wrong_feature_count_names_layer_and_shapes(on):
    layer = affine(on, 64, 10)
    with pytest.raises(ValueError, match=r"Affine\(64 -> 10\): expected x of shape \(N, 64\), got \(32, 30\)"):
        layer.forward(randn(on, (32, 30)))
    with pytest.raises(ValueError, match="batch axis"):
        layer.forward(randn(on, (64,)))


def test_affine_bias_shape_must_match(on):
    with pytest.raises(ValueError, match=r"b must have shape \(10,\)"):
        Affine(randn(on, (4, 10)), randn(on, (9,)))


def test_backward_before_forward_is_a_clear_error(on):
    for layer in (Relu(), affine(on, 3, 2), SoftmaxWithLoss(), Flatten()):
        with pytest.raises(ValueError, match="backward\\(\\) was called before forward\\(\\)"):
            layer.backward(randn(on, (2, 2)))


def test_backward_with_wrong_dout_shape(on):
    layer = Relu()
    layer.forward(randn(on, (3, 4)))
    with pytest.raises(ValueError, match=r"expected dout of shape \(3, 4\).*got \(4, 3\)"):
        layer.backward(randn(on, (4, 3)))


@pytest.mark.parametrize("t,match", [
    (numpy.array([0, 5]), r"labels t must be in \[0, 3\] for 4 classes, got min 0, max 5"),
    (numpy.array([-1, 2]), r"must be in \[0, 3\].*min -1"),
    (numpy.array([0.5, 1.0]), "whole numbers"),
    (numpy.array([0, 1, 2]), "x has 2 rows but t has 3 labels"),
    (numpy.eye(3)[[0, 1]], r"one-hot t must have shape \(2, 4\)"),
    (numpy.array([numpy.nan, 1.0]), "NaN"),
])
def test_softmax_with_loss_rejects_bad_labels(on, t, match):
    with pytest.raises(ValueError, match=match):
        SoftmaxWithLoss().forward(randn(on, (2, 4)), on.asarray(t))


def test_dropout_rate_out_of_range():
    with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\), got 1.5"):
        Dropout(1.5)


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match="unknown activation 'swishy'; valid names: linear, relu"):
        Dense(3, activation="swishy")


# ---------------------------------------------------------------- Keras 3's selu, gelu, swish (issue 18)
NEW_ACTIVATIONS = ["selu", "gelu", "gelu_tanh", "swish", "silu"]


def _gelu(z):  # Keras: 0.5 x (1 + erf(x / sqrt 2)); math.erf, not fastnn's erfc
    return 0.5 * z * (1 + numpy.vectorize(math.erf)(z / math.sqrt(2)))


def _gelu_tanh(z):  # Keras: gelu(x, approximate=True)
    return 0.5 * z * (1 + numpy.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


FORMULAS.update({
    "selu": lambda z: 1.0507009873554804934 * numpy.where(z >= 0, z, 1.6732632423543772848 * (numpy.exp(z) - 1)),
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "swish": lambda z: z / (1 + numpy.exp(-z)),
    "silu": lambda z: z / (1 + numpy.exp(-z)),
})


@pytest.mark.parametrize("activation", NEW_ACTIVATIONS)
def test_new_activations_by_every_spelling_follow_their_formula(on, activation):
    x = randn(on, (3, 4), seed=2, scale=2.0)
    want = FORMULAS[activation](host(x))
    assert_close(Activation(activation).forward(x), want)
    layer = Dense(4, activation=activation, dtype="float64")
    layer.forward(x)
    assert_close(layer.forward(x), FORMULAS[activation](host(x) @ host(layer.W) + host(layer.b)))
    named = {"selu": Selu(), "gelu": Gelu(), "gelu_tanh": Gelu(approximate=True), "swish": Swish(),
             "silu": Swish()}[activation]
    assert_close(named.forward(x), want)
    if activation.startswith("gelu"):
        assert_close(Activation("gelu", approximate=activation == "gelu_tanh").forward(x), want)


@pytest.mark.parametrize("activation", ["gelu", "swish", "selu"])
def test_dense_without_bias_gradient(on, activation):
    layer = Dense(3, activation=activation, use_bias=False, dtype="float64")
    layer.rng = numpy.random.default_rng(1)
    gradcheck.check_layer(layer, randn(on, (4, 5), seed=3))


@pytest.mark.parametrize("activation", NEW_ACTIVATIONS)
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_conv2d_gradient_with_new_activations(on, activation, use_bias):
    layer = Conv2D(3, (3, 2), strides=(1, 2), padding="same", activation=activation, use_bias=use_bias,
                   dtype="float64", bias_initializer="he_normal" if use_bias else "zeros")
    layer.rng = numpy.random.default_rng(4)
    x = randn(on, (2, 2, 5, 6), seed=5)
    if activation == "selu":  # the pre-activations of this draw stay off the kink
        layer.forward(x)
        assert numpy.abs(host(layer.y)).min() > 10 * H
    gradcheck.check_layer(layer, x)


def test_layers_keep_z_only_for_activations_that_need_it(on):
    """relu & co. keep only their output (y computed in place over the GEMM's workspace); gelu and swish
    keep the pre-activation, in the GEMM's own workspace (Dense then writes y to one more, Conv2D to none
    more), and Activation keeps a reference to its input."""
    x = randn(on, (6, 5), seed=6, dtype=numpy.float32)
    with StepContext(0):
        relu = Dense(4, activation="relu", input_shape=(5,))
        y = relu.forward(x)
        assert relu.z is None and [k[0] for k in relu._ws] == ["z"] and y is relu._ws[("z", (6, 4), y.dtype)]
        gelu = Dense(4, activation="gelu", input_shape=(5,))
        y = gelu.forward(x)
        assert gelu.z is gelu._ws[("z", (6, 4), y.dtype)] and y is gelu._ws[("y", (6, 4), y.dtype)]
        assert_close(gelu.z, host(x) @ host(gelu.W) + host(gelu.b), rtol=1e-5, atol=1e-6)
        act = Activation("swish")
        act.forward(x)
        assert act.x is x and Activation("tanh").x is None
        img = randn(on, (2, 1, 6, 6), seed=7, dtype=numpy.float32)
        convs = [Conv2D(3, 3, activation=a, input_shape=(1, 6, 6)) for a in ("relu", "swish")]
        for conv in convs:
            conv.forward(img)
        assert sorted(map(str, convs[0]._ws)) == sorted(map(str, convs[1]._ws))  # no extra buffer for swish
        assert convs[0]._z is None and convs[1]._z is not None


@pytest.mark.parametrize("activation", NEW_ACTIVATIONS)
def test_sequential_trains_with_each_new_activation(backend, activation):
    """A Dense MLP and a small CNN, each with the activation, train a few epochs on every backend:
    the loss stays finite and falls."""
    from fastnn.layers import GlobalAveragePooling2D
    from fastnn.models import Sequential

    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((96, 6)).astype(numpy.float32)
    t = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(numpy.int64) + (x[:, 3] > 0.5)
    img = rng.standard_normal((48, 1, 6, 6)).astype(numpy.float32)
    ti = (img.mean((1, 2, 3)) > 0).astype(numpy.int64)
    with fastnn.using(backend):
        mlp = Sequential([Dense(16, activation=activation, input_shape=(6,)), Activation(activation),
                          Dense(3, activation="softmax")], seed=1)
        cnn = Sequential([Conv2D(4, 3, padding="same", activation=activation, input_shape=(1, 6, 6)),
                          GlobalAveragePooling2D(), Dense(2, activation="softmax")], seed=1)
        for model, (xs, ts) in ((mlp, (x, t)), (cnn, (img, ti))):
            model.compile(optimizer=fastnn.optimizers.Adam(learning_rate=0.01), loss="sparse_categorical_crossentropy")
            before = model.evaluate(xs, ts, verbose=0)
            loss = model.fit(xs, ts, batch_size=16, epochs=8, verbose=0).history["loss"]
            after = model.evaluate(xs, ts, verbose=0)
            assert numpy.isfinite(loss).all(), loss
            assert after < 0.8 * before, (activation, type(model.layers[0]).__name__, before, after, loss)


@pytest.mark.parametrize("activation", ["gelu", "swish"])
def test_training_step_with_z_allocates_nothing_large_in_steady_state(activation):
    """The kept pre-activation is a workspace like the others: nothing large is allocated per step."""
    from fastnn.models import Sequential

    if not fastnn.testing.has_numba():
        pytest.skip("needs numba: the NumPy reference primitives allocate temporaries by design")
    rng = numpy.random.default_rng(0)
    x, t = rng.random((64, 1, 12, 12), dtype=numpy.float32), rng.integers(0, 10, 64)
    with fastnn.using("numba"):
        model = Sequential([Conv2D(8, 3, padding="same", activation=activation, input_shape=(1, 12, 12)),
                            Flatten(), Dense(256, activation=activation), Activation(activation),
                            Dense(10, activation="softmax")], seed=0)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        peak = fastnn.testing.steady_state_alloc_peak(model, x, t)
    smallest_activation = 64 * 256 * 4  # Dense's z (and y) in float32; the conv's are 4.5x larger
    assert peak < smallest_activation // 4, f"{peak} bytes allocated during 5 steady-state steps"


def test_new_activation_configs_round_trip():
    for layer in (Activation("gelu", approximate=True), Activation("silu"), Gelu(approximate=True), Gelu(),
                  Selu(), Swish(), Dense(3, activation="gelu_tanh"), Conv2D(2, 3, activation="swish")):
        cfg = layer.get_config()
        again = type(layer)(**{k: v for k, v in cfg.items() if k != "name"})
        assert again.act == layer.act and again.get_config() == {**cfg, "name": again.name}
    assert Gelu(approximate=True).get_config()["approximate"] is True
    assert Activation("gelu", approximate=True).activation == "gelu_tanh"


def test_new_activation_errors():
    with pytest.raises(ValueError, match="approximate= applies to gelu only"):
        Activation("relu", approximate=True)
    with pytest.raises(ValueError, match=r"valid names: .*selu, gelu, gelu_tanh, swish, silu"):
        Dense(3, activation="geluu")

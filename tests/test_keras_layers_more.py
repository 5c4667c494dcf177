"""Keras's Embedding, Reshape, Conv1D, MaxPooling1D, AveragePooling1D and the global poolings:
outputs against NumPy written from each formula (float32 and float64, odd shapes), gradients against
central differences in float64 on every backend, PyTorch where it imports, errors that name the
layer and the values, and models that train and round-trip through configs and files."""
import json

import numpy
import pytest

import fastnn
from fastnn import gradcheck, optimizers, regularizers
from fastnn.layers import (
    AveragePooling1D, Conv1D, Dense, Embedding, Flatten, GlobalAveragePooling1D, GlobalAveragePooling2D,
    GlobalMaxPooling1D, GlobalMaxPooling2D, MaxPooling1D, Reshape,
)
from fastnn.models import Sequential, load_model
from fastnn.testing import host


@pytest.fixture
def on(backend):
    with fastnn.using(backend) as ops:
        yield ops


def randn(shape, seed=0):
    return numpy.random.default_rng(seed).standard_normal(shape)


def distinct(shape, seed=0):
    """Values 0.01 apart in random order: every pooling window has one maximum, which h never moves."""
    return numpy.random.default_rng(seed).permutation(int(numpy.prod(shape))).reshape(shape) * 0.01


def needs_scatter(ops):
    if not hasattr(ops.xp.add, "at"):  # tests/cudaemu's cupy: its ufuncs have no .at yet
        pytest.skip("the emulated cupy has no cupy.add.at (tests/cudaemu/fakecupy.py)")


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == numpy.float32 else dict(rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- references, from the formulas
def ref_conv1d(x, W, b, stride, padding):
    """``y[n, t, f] = b[f] + sum_{c, j} xpad[n, t*stride + j, c] * W[f, c, j]`` on ``x: (N, steps, C)``."""
    n, steps, c = x.shape
    fn, _, k = W.shape
    if padding == "valid":
        before = after = 0
    elif padding == "causal":
        before, after = k - 1, 0
    else:
        total = max((-(-steps // stride) - 1) * stride + k - steps, 0)
        before, after = total // 2, total - total // 2
    xp = numpy.zeros((n, steps + before + after, c))
    xp[:, before:before + steps] = x
    out = (steps + before + after - k) // stride + 1
    y = numpy.empty((n, out, fn))
    for t in range(out):
        win = xp[:, t * stride:t * stride + k, :]                     # (N, k, C)
        y[:, t, :] = numpy.einsum("njc,fcj->nf", win, W) + b
    return y


def ref_pool1d(x, size, stride, kind):
    n, steps, c = x.shape
    out = (steps - size) // stride + 1
    win = numpy.stack([x[:, t * stride:t * stride + size] for t in range(out)], axis=1)  # (N, out, size, C)
    return win.max(axis=2) if kind == "max" else win.mean(axis=2)


# ---------------------------------------------------------------- Embedding
@pytest.mark.parametrize("index_dtype", ["int32", "int64", "uint8", "float32", "float64"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_embedding_forward_is_the_rows_of_W(on, dtype, index_dtype, shape):
    idx = numpy.random.default_rng(1).integers(0, 11, shape)
    layer = Embedding(11, 6, dtype=dtype)
    y = layer.forward(on.asarray(idx.astype(index_dtype)))
    W = host(layer.W)
    assert W.shape == (11, 6) and host(layer.embeddings) is not None and host(y).dtype == dtype
    numpy.testing.assert_array_equal(host(y), W[idx])
    assert layer.compute_output_shape((None,) + shape[1:]) == (None,) + shape[1:] + (6,)


def test_embedding_default_initializer_is_keras_uniform():
    layer = Embedding(300, 40)
    layer.build((None, 3))
    W = host(layer.W)
    assert W.dtype == numpy.float32 and -0.05 <= W.min() < -0.045 and 0.045 < W.max() <= 0.05


def test_embedding_backward_adds_repeated_indices(on, dtype):
    needs_scatter(on)
    idx = numpy.array([[1, 4, 1, 1], [0, 4, 6, 1]])
    layer = Embedding(7, 3, dtype=dtype)
    layer.forward(on.asarray(idx))
    dout = randn((2, 4, 3), 2).astype(dtype)
    before = dout.copy()
    dout_dev = on.asarray(dout)
    assert layer.backward(dout_dev) is None  # no gradient for indices
    want = numpy.zeros((7, 3))
    numpy.add.at(want, idx.ravel(), dout.reshape(-1, 3).astype(numpy.float64))
    numpy.testing.assert_allclose(host(layer.dW), want, **tol(dtype))
    numpy.testing.assert_array_equal(host(dout_dev), before)
    layer.forward(on.asarray(numpy.array([[2, 2, 2, 2], [2, 2, 2, 2]])))
    layer.backward(dout_dev)  # the second backward replaces dW, it does not add to it
    numpy.testing.assert_allclose(host(layer.dW)[2], dout.reshape(-1, 3).astype(numpy.float64).sum(0), **tol(dtype))
    assert not host(layer.dW)[[0, 1, 3, 4, 5, 6]].any()


def test_embedding_gradient_matches_central_differences(on):
    needs_scatter(on)
    layer = Embedding(9, 4, dtype="float64", embeddings_initializer="glorot_uniform")
    x = on.asarray(numpy.random.default_rng(3).integers(0, 9, (5, 6)).astype(numpy.float64))
    numeric = gradcheck.check_layer(layer, x)
    assert set(numeric) == {"W"}


def test_embedding_matches_torch(on):
    torch = pytest.importorskip("torch")
    needs_scatter(on)
    idx = numpy.random.default_rng(4).integers(0, 13, (4, 9))
    layer = Embedding(13, 5, dtype="float64")
    y = host(layer.forward(on.asarray(idx)))
    dout = randn(y.shape, 5)
    layer.backward(on.asarray(dout))
    tW = torch.tensor(host(layer.W), requires_grad=True)
    ty = torch.nn.functional.embedding(torch.tensor(idx), tW)
    ty.backward(torch.tensor(dout))
    numpy.testing.assert_array_equal(y, ty.detach().numpy())
    numpy.testing.assert_allclose(host(layer.dW), tW.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_embedding_pretrained_weights_and_frozen_layer():
    table = randn((6, 3), 6)
    m = Sequential([Embedding(6, 3, weights=[table], trainable=False, input_shape=(4,)), Flatten(),
                    Dense(2, activation="softmax")], seed=0)
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(numpy.array([[0, 1, 2, 3], [5, 4, 3, 2]]), numpy.array([0, 1]), epochs=3, verbose=0)
    numpy.testing.assert_array_equal(m.layers[0].get_weights()[0], table.astype(numpy.float32))


@pytest.mark.parametrize("bad,match", [
    (numpy.array([[1, 10]]), r"emb_x \(Embedding\): indices must be integers in \[0, 9\] \(input_dim=10\), got "
                             r"10 at index \(0, 1\) of x with shape \(1, 2\)"),
    (numpy.array([[3, -1, 2]]), r"got -1 at index \(0, 1\)"),
    (numpy.array([[3.0, 2.5]]), r"got 2.5 at index \(0, 1\)"),
    (numpy.array([[numpy.nan, 1.0]]), r"got nan at index \(0, 0\)"),
])
def test_embedding_refuses_bad_indices_by_value_and_position(on, bad, match):
    with pytest.raises(ValueError, match=match):
        Embedding(10, 2, name="emb_x").forward(on.asarray(bad))


def test_embedding_check_input_validates_a_whole_set_once(on):
    layer = Embedding(5, 2, name="emb_c")
    layer.check_input(on.asarray(numpy.arange(10).reshape(2, 5) % 5), "x_train")  # valid: no error
    with pytest.raises(ValueError, match=r"emb_c \(Embedding\): .*got 7 at index \(1, 3\) of x_train with shape "
                                         r"\(2, 4\)"):
        layer.check_input(on.asarray(numpy.array([[0, 1, 2, 3], [4, 0, 1, 7.0]], numpy.float32)), "x_train")


def test_embedding_errors():
    with pytest.raises(TypeError, match=r"emb \(Embedding\): x must hold integer indices, got dtype <U1"):
        Embedding(4, 2, name="emb").forward(numpy.array([["a"]]))
    with pytest.raises(ValueError, match=r"mask_zero=True is not supported"):
        Embedding(4, 2, mask_zero=True)
    with pytest.raises(ValueError, match=r"embeddings_constraint is not supported"):
        Embedding(4, 2, embeddings_constraint="non_neg")
    with pytest.raises(ValueError, match=r"output_dim must be a positive integer, got 0"):
        Embedding(4, 0)
    with pytest.raises(ValueError, match=r"weights must be one array of shape \(4, 2\).*got float64 of shape \(4, 3\)"):
        Embedding(4, 2, weights=numpy.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"input_length=5 and input_shape=\(6,\) disagree"):
        Embedding(4, 2, input_length=5, input_shape=(6,))
    with pytest.raises(ValueError, match=r"float32 indices are exact only up to 16777216, and input_dim is 16777217"):
        Embedding(2**24 + 1, 1, dtype="float64").forward(numpy.zeros((1, 1), numpy.float32))
    layer = Embedding(4, 2, name="emb_b")
    with pytest.raises(ValueError, match=r"backward\(\) was called before forward\(\)"):
        layer.backward(numpy.zeros((1, 2)))
    layer.forward(numpy.array([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"emb_b: backward expected dout of shape \(1, 3, 2\).*got \(1, 3\)"):
        layer.backward(numpy.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"unknown initializer 'nope'"):
        Embedding(4, 2, embeddings_initializer="nope")


# ---------------------------------------------------------------- Reshape
@pytest.mark.parametrize("target,want", [((3, 10), (3, 10)), ((-1, 5), (6, 5)), ((2, -1, 3), (2, 5, 3)), (30, (30,))])
def test_reshape_forward_backward_and_shapes(on, dtype, target, want):
    x = randn((4, 5, 6), 7).astype(dtype)
    layer = Reshape(target)
    y = layer.forward(on.asarray(x))
    numpy.testing.assert_array_equal(host(y), x.reshape((4,) + want))
    assert layer.compute_output_shape((None, 5, 6)) == (None,) + want
    dout = randn((4,) + want, 8).astype(dtype)
    numpy.testing.assert_array_equal(host(layer.backward(on.asarray(dout))), dout.reshape(4, 5, 6))
    gradcheck.check_layer(Reshape(target), on.asarray(randn((3, 5, 6), 9)))


def test_reshape_errors_name_layer_and_sizes():
    with pytest.raises(ValueError, match=r"rs \(Reshape\): cannot reshape samples of shape \(5, 6\) \(30 values\) "
                                         r"to target_shape \(4, 8\) \(32 values\)"):
        Reshape((4, 8), name="rs").forward(numpy.zeros((2, 5, 6)))
    with pytest.raises(ValueError, match=r"\(7, -1\) \(a multiple of 7 values\)"):
        Reshape((7, -1)).compute_output_shape((None, 30))
    for bad in ((-1, -1), (0, 3), (), "3x4", (2.5,)):
        with pytest.raises(ValueError, match=r"target_shape must be a tuple of positive integers"):
            Reshape(bad)
    layer = Reshape((-1,), name="rs2")
    layer.forward(numpy.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match=r"rs2: backward expected dout of shape \(2, 6\).*got \(2, 5\)"):
        layer.backward(numpy.zeros((2, 5)))


# ---------------------------------------------------------------- Conv1D
CONV1D_CASES = [(3, 1, "valid"), (3, 2, "valid"), (4, 3, "same"), (3, 2, "same"), (2, 1, "same"), (3, 1, "causal"),
                (4, 2, "causal")]


@pytest.mark.parametrize("k,stride,padding", CONV1D_CASES)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_conv1d_matches_the_formula(on, dtype, k, stride, padding, data_format):
    x = randn((3, 11, 2), 1)
    layer = Conv1D(5, k, strides=stride, padding=padding, data_format=data_format, dtype=dtype,
                   bias_initializer="normal")
    xin = x if data_format == "channels_last" else x.transpose(0, 2, 1)
    y = host(layer.forward(on.asarray(xin.astype(dtype))))
    want = ref_conv1d(x, host(layer.W).astype(numpy.float64), host(layer.b).astype(numpy.float64), stride, padding)
    if data_format == "channels_first":
        want = want.transpose(0, 2, 1)
    assert y.dtype == dtype and host(layer.W).shape == (5, 2, k)
    numpy.testing.assert_allclose(y, want, **tol(dtype))
    assert layer.compute_output_shape((None,) + xin.shape[1:]) == (None,) + want.shape[1:]


@pytest.mark.parametrize("k,stride,padding", CONV1D_CASES)
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_conv1d_gradient_matches_central_differences(on, k, stride, padding, activation):
    layer = Conv1D(3, k, strides=stride, padding=padding, activation=activation, dtype="float64",
                   bias_initializer="normal")
    gradcheck.check_layer(layer, on.asarray(randn((2, 9, 4), 2)))
    first = Conv1D(3, k, strides=stride, padding=padding, data_format="channels_first", dtype="float64")
    gradcheck.check_layer(first, on.asarray(randn((2, 4, 9), 3)))


@pytest.mark.parametrize("k,stride,padding", [(3, 1, "valid"), (3, 2, "valid"), (5, 2, "causal"), (4, 1, "same")])
def test_conv1d_matches_torch(on, k, stride, padding):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    layer = Conv1D(4, k, strides=stride, padding=padding, dtype="float64", bias_initializer="normal")
    x = randn((3, 10, 2), 4)
    y = host(layer.forward(on.asarray(x)))
    dout = randn(y.shape, 5)
    dx = host(layer.backward(on.asarray(dout)))
    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x, host(layer.W), host(layer.b)))
    pad = {"valid": (0, 0), "causal": (k - 1, 0)}.get(padding)
    if pad is None:
        total = max((-(-10 // stride) - 1) * stride + k - 10, 0)
        pad = (total // 2, total - total // 2)
    ty = F.conv1d(F.pad(tx.transpose(1, 2), pad), tW, tb, stride=stride).transpose(1, 2)
    ty.backward(torch.tensor(dout))
    for got, want in ((y, ty), (dx, tx.grad), (host(layer.dW), tW.grad), (host(layer.db), tb.grad)):
        numpy.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-10)


def test_conv1d_errors_name_layer_layout_and_shapes():
    layer = Conv1D(2, 3, name="c1")
    layer.build((None, 9, 4))
    with pytest.raises(ValueError, match=r"c1 \(Conv1D\): expected x of shape \(N, steps, 4\) \(data_format="
                                         r"'channels_last'\), got \(2, 4, 9\); it looks like channels_first data"):
        layer.forward(numpy.zeros((2, 4, 9)))
    with pytest.raises(ValueError, match=r"c1 \(Conv1D\): expected x of shape \(N, steps, 4\).*got \(2, 9\); "
                                         r"data with one channel needs a channel axis: x\[\.\.\., None\]"):
        layer.forward(numpy.zeros((2, 9)))
    for kwargs, match in (({"dilation_rate": 2}, r"dilation_rate=2 is not supported \(only 1\)"),
                          ({"groups": 2}, r"groups=2 is not supported"),
                          ({"padding": "full"}, r"padding must be one of 'valid', 'same', 'causal'"),
                          ({"kernel_size": (3, 3)}, r"kernel_size must be an int or a sequence of one int"),
                          ({"data_format": "NHWC"}, r"data_format must be 'channels_first' or 'channels_last'"),
                          ({"input_shape": (9, 4, 1)}, r"input_shape must be \(steps, C\)")):
        args = {"kernel_size": 3, **kwargs}
        with pytest.raises(ValueError, match=match):
            Conv1D(2, **args)
    with pytest.raises(ValueError, match=r"padding must be one of 'valid', got 'same'"):
        MaxPooling1D(2, padding="same")
    with pytest.raises(ValueError, match=r"does not fit"):
        Conv1D(2, 5).forward(numpy.zeros((1, 3, 1)))


# ---------------------------------------------------------------- 1-D and global pooling
@pytest.mark.parametrize("cls,kind", [(MaxPooling1D, "max"), (AveragePooling1D, "avg")])
@pytest.mark.parametrize("size,stride", [(2, None), (3, 2), (3, 1), ((2,), (3,))])
def test_pooling1d_matches_the_formula_and_central_differences(on, dtype, cls, kind, size, stride):
    x = distinct((2, 11, 3), 1)
    s, st = numpy.ravel(size)[0], numpy.ravel(size if stride is None else stride)[0]
    want = ref_pool1d(x, s, st, kind)
    y = host(cls(size, stride).forward(on.asarray(x.astype(dtype))))
    numpy.testing.assert_allclose(y, want, **tol(dtype))
    xf = on.asarray(numpy.ascontiguousarray(x.transpose(0, 2, 1)).astype(dtype))
    first = host(cls(size, stride, data_format="channels_first").forward(xf))
    numpy.testing.assert_allclose(first, want.transpose(0, 2, 1), **tol(dtype))
    gradcheck.check_layer(cls(size, stride), on.asarray(x))


@pytest.mark.parametrize("cls,axes,fn", [
    (GlobalAveragePooling1D, (1,), numpy.mean), (GlobalMaxPooling1D, (1,), numpy.max),
    (GlobalAveragePooling2D, (1, 2), numpy.mean), (GlobalMaxPooling2D, (1, 2), numpy.max)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_matches_the_formula_both_formats(on, dtype, cls, axes, fn, keepdims):
    shape = (3, 7, 2) if len(axes) == 1 else (3, 5, 4, 2)             # channels last
    x = distinct(shape, 2)
    last = cls(data_format="channels_last", keepdims=keepdims)
    y = host(last.forward(on.asarray(x.astype(dtype))))
    numpy.testing.assert_allclose(y, fn(x, axis=axes, keepdims=keepdims), **tol(dtype))
    assert last.compute_output_shape((None,) + shape[1:]) == (None,) + y.shape[1:]
    move = (0, len(shape) - 1) + tuple(range(1, len(shape) - 1))    # to channels first
    first = cls(data_format="channels_first", keepdims=keepdims)
    yf = host(first.forward(on.asarray(x.transpose(move).astype(dtype))))
    want = fn(x.transpose(move), axis=tuple(range(2, len(shape))), keepdims=keepdims)
    numpy.testing.assert_allclose(yf, want, **tol(dtype))
    gradcheck.check_layer(cls(data_format="channels_last", keepdims=keepdims), on.asarray(x))
    gradcheck.check_layer(cls(data_format="channels_first", keepdims=keepdims), on.asarray(x.transpose(move)))


def test_global_max_pooling_sends_the_gradient_to_the_first_maximum(on):
    x = numpy.array([[[1.0, 2.0], [5.0, 2.0], [5.0, -1.0]]])                # (1, steps=3, C=2)
    layer = GlobalMaxPooling1D()
    numpy.testing.assert_array_equal(host(layer.forward(on.asarray(x))), [[5.0, 2.0]])
    dx = host(layer.backward(on.asarray(numpy.array([[10.0, 20.0]]))))
    numpy.testing.assert_array_equal(dx, [[[0.0, 20.0], [10.0, 0.0], [0.0, 0.0]]])


def test_backward_does_not_write_dout(on):
    x = on.asarray(randn((2, 8, 3), 1))
    for layer in (Conv1D(3, 3, padding="same", activation="relu", dtype="float64"), MaxPooling1D(2),
                  AveragePooling1D(2), GlobalAveragePooling1D(), GlobalMaxPooling1D(), Reshape((4, 6))):
        y = layer.forward(x)
        dout = on.asarray(randn(y.shape, 2))
        before = host(dout).copy()
        layer.backward(dout)
        numpy.testing.assert_array_equal(host(dout), before, err_msg=type(layer).__name__)


# ---------------------------------------------------------------- configs
ALL_LAYERS = [
    lambda: Embedding(20, 4, embeddings_regularizer=regularizers.l2(1e-3), input_length=7),
    lambda: Reshape((-1, 2)),
    lambda: Conv1D(4, 3, strides=2, padding="causal", activation="relu", input_shape=(10, 3)),
    lambda: Conv1D(4, (2,), padding="same", data_format="channels_first"),
    lambda: MaxPooling1D(3, 2), lambda: AveragePooling1D((2,), data_format="channels_first"),
    lambda: GlobalAveragePooling1D(keepdims=True), lambda: GlobalMaxPooling1D(),
    lambda: GlobalMaxPooling2D(data_format="channels_last"), lambda: GlobalAveragePooling2D(),
]


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_get_config_round_trips_through_json(make):
    layer = make()
    cfg = layer.get_config()
    assert type(layer)(**cfg).get_config() == cfg
    again = type(layer)(**json.loads(json.dumps(cfg)))
    assert json.dumps(again.get_config(), sort_keys=True) == json.dumps(cfg, sort_keys=True)


def test_names_follow_keras():
    names = [f().name.rsplit("_", 1)[0] for f in ALL_LAYERS]
    assert names == ["embedding", "reshape", "conv1d", "conv1d", "max_pooling1d", "average_pooling1d",
                     "global_average_pooling1d", "global_max_pooling1d", "global_max_pooling2d",
                     "global_average_pooling2d"]
    cfg = Conv1D(4, 3).get_config()
    assert cfg["kernel_size"] == (3,) and cfg["strides"] == (1,) and cfg["data_format"] == "channels_last"


# ---------------------------------------------------------------- models
def token_data(n=192, steps=12, vocab=30, seed=0):
    """Label 1 when token 7 occurs (anywhere): what a convolution and a global max pool find."""
    rng = numpy.random.default_rng(seed)
    x = rng.integers(8, vocab, (n, steps))
    t = rng.integers(0, 2, n)
    x[t == 1, rng.integers(0, steps, int(t.sum()))] = 7
    return x, t


SEQ_MODELS = {
    "conv": lambda: [Embedding(30, 8, input_length=12), Conv1D(8, 3, padding="same", activation="relu"),
                     MaxPooling1D(2), Conv1D(8, 3, activation="relu"), GlobalMaxPooling1D(),
                     Dense(2, activation="softmax")],
    "mean": lambda: [Embedding(30, 8, input_shape=(12,)), GlobalAveragePooling1D(), Dense(2, activation="softmax")],
    "first": lambda: [Embedding(30, 6, input_length=12), Reshape((6, 12)), Reshape((12, 6)),
                      Conv1D(5, 4, padding="causal", activation="tanh"), AveragePooling1D(3),
                      Reshape((-1,)), Dense(2, activation="softmax")],
}


@pytest.mark.parametrize("arch", sorted(SEQ_MODELS))
def test_sequence_model_trains_and_round_trips(on, arch, tmp_path):
    needs_scatter(on)
    x, t = token_data()
    m = Sequential(SEQ_MODELS[arch](), seed=1, backend=on.name)
    m.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = m.fit(x, t, epochs=8, batch_size=32, verbose=0).history
    assert hist["loss"][-1] < 0.8 * hist["loss"][0], hist["loss"]
    p = m.predict(x[:9])
    again = Sequential.from_config(m.get_config())
    assert again.get_config() == m.get_config()
    again.set_weights(m.get_weights())
    numpy.testing.assert_allclose(again.predict(x[:9]), p, rtol=1e-6, atol=1e-7)
    m.save(tmp_path / "seq.fastnn")
    loaded = load_model(tmp_path / "seq.fastnn", backend=on.name)
    assert loaded.get_config() == m.get_config()
    numpy.testing.assert_array_equal(loaded.predict(x[:9]), p)
    assert numpy.allclose(loaded.predict(x[:9].astype(numpy.float64)), p)  # float indices are taken too


def test_conv_model_learns_the_token_task():
    x, t = token_data(n=400, seed=2)
    m = Sequential(SEQ_MODELS["conv"](), seed=0)
    m.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x[:300], t[:300], epochs=15, batch_size=32, verbose=0)
    assert m.evaluate(x[300:], t[300:], verbose=0)[1] > 0.9


def test_model_refuses_out_of_range_indices_naming_the_layer():
    m = Sequential([Embedding(10, 3, input_shape=(4,), name="words"), Flatten(), Dense(2)])
    m.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"words \(Embedding\): indices must be integers in \[0, 9\].*got 12 at "
                                         r"index \(1, 2\)"):
        m.predict(numpy.array([[1, 2, 3, 4], [5, 6, 12, 0]]))

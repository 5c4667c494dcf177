"""SimpleRNN, LSTM and GRU: forwards against a NumPy transcription of Keras 3's formulas, gradients
against central differences, PyTorch parity where torch imports, training in a Sequential, configs
and errors, on every backend."""
import json

import numpy
import pytest

import fastnn
from fastnn import gradcheck, initializers, regularizers
from fastnn.layers import Dense
from fastnn.layers.base import StepContext
from fastnn.layers.recurrent import GRU, LSTM, SimpleRNN
from fastnn.models import Sequential
from fastnn.optimizers import Adam
from fastnn.testing import assert_close, host

orthogonal = initializers.orthogonal

N, T, F, UNITS = 3, 5, 7, 4  # odd shapes: no axis can stand in for another

# (id, class, constructor arguments): every layer and its variants
CASES = [
    ("rnn", SimpleRNN, {}),
    ("rnn_elu_nobias", SimpleRNN, {"activation": "elu", "use_bias": False}),
    ("lstm", LSTM, {}),
    ("lstm_softplus_tanh", LSTM, {"activation": "softplus", "recurrent_activation": "tanh"}),
    ("gru", GRU, {}),
    ("gru_before", GRU, {"reset_after": False}),
    ("gru_nobias", GRU, {"use_bias": False}),
]
IDS = [c[0] for c in CASES]


@pytest.fixture
def on(backend):
    with fastnn.using(backend) as ops:
        yield ops


def randn(shape, seed, scale=1.0):
    return numpy.random.default_rng(seed).standard_normal(shape) * scale


def make(cls, kwargs, dtype=numpy.float64, features=F, seed=1, **more):
    """A built layer whose weights (bias included) are random, never zeros."""
    layer = cls(UNITS, dtype=dtype, **kwargs, **more)
    layer.rng = numpy.random.default_rng(seed)
    layer.build((None, T, features))
    layer.set_weights([randn(w.shape, seed + i, 0.5) for i, w in enumerate(layer.get_weights())])
    return layer


# ---------------------------------------------------------------- the reference: Keras 3's formulas in NumPy
ACT = {"tanh": numpy.tanh, "sigmoid": lambda z: 1 / (1 + numpy.exp(-z)), "softplus": lambda z: numpy.logaddexp(0, z),
       "elu": lambda z: numpy.where(z > 0, z, numpy.expm1(numpy.minimum(z, 0)))}


def reference(layer, x, weights):
    """What Keras computes for ``layer``'s arguments and ``weights`` (host float64 arrays)."""
    W, U = weights[0], weights[1]
    b = weights[2] if len(weights) > 2 else numpy.zeros((2, W.shape[1]) if getattr(layer, "reset_after", False)
                                                         else W.shape[1])
    act = ACT[layer.activation]
    ract = ACT[getattr(layer, "recurrent_activation", "sigmoid")]
    u = U.shape[0]
    x = x[:, ::-1] if layer.go_backwards else x
    h = c = numpy.zeros((x.shape[0], u))
    outputs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        if isinstance(layer, SimpleRNN):
            h = act(xt @ W + h @ U + b)
        elif isinstance(layer, LSTM):
            i, f, g, o = numpy.split(xt @ W + h @ U + b, 4, axis=1)
            c = ract(f) * c + ract(i) * act(g)
            h = ract(o) * act(c)
        elif layer.reset_after:
            mx, mh = xt @ W + b[0], h @ U + b[1]
            z, r = ract(mx[:, :u] + mh[:, :u]), ract(mx[:, u:2 * u] + mh[:, u:2 * u])
            h = z * h + (1 - z) * act(mx[:, 2 * u:] + r * mh[:, 2 * u:])
        else:
            mx = xt @ W + b
            z, r = ract(mx[:, :u] + h @ U[:, :u]), ract(mx[:, u:2 * u] + h @ U[:, u:2 * u])
            h = z * h + (1 - z) * act(mx[:, 2 * u:] + (r * h) @ U[:, 2 * u:])
        outputs.append(h)
    return numpy.stack(outputs, axis=1) if layer.return_sequences else h


@pytest.mark.parametrize("sequences,backwards", [(False, False), (True, False), (True, True), (False, True)],
                         ids=["last", "sequences", "sequences_backwards", "last_backwards"])
@pytest.mark.parametrize("name,cls,kwargs", CASES, ids=IDS)
def test_forward_matches_keras_formulas(on, dtype, name, cls, kwargs, sequences, backwards):
    layer = make(cls, kwargs, dtype, return_sequences=sequences, go_backwards=backwards)
    x = randn((N, T, F), 7).astype(dtype)
    y = layer.forward(on.asarray(x))
    expect = reference(layer, x.astype(numpy.float64), [w.astype(numpy.float64) for w in layer.get_weights()])
    assert y.dtype == dtype and y.shape == ((N, T, UNITS) if sequences else (N, UNITS))
    tol = 1e-5 if dtype == numpy.float32 else 1e-12
    assert_close(y, expect.astype(dtype), rtol=tol, atol=tol)
    with StepContext(0):  # a training step's workspaces give the same numbers
        assert_close(layer.forward(on.asarray(x), train_flg=True), y, rtol=0, atol=0)


# ---------------------------------------------------------------- gradients (float64, central differences)
@pytest.mark.parametrize("sequences,backwards", [(False, False), (True, True)], ids=["last", "sequences_backwards"])
@pytest.mark.parametrize("name,cls,kwargs", CASES, ids=IDS)
def test_gradients_match_central_differences(on, name, cls, kwargs, sequences, backwards):
    layer = make(cls, kwargs, return_sequences=sequences, go_backwards=backwards)
    # softplus is unbounded: c grows, and so does the central differences' h^2 error (25x less at h / 5)
    atol = 3e-5 if kwargs.get("activation") == "softplus" else 1e-7
    numeric = gradcheck.check_layer(layer, on.asarray(randn((N, T, F), 3)), rtol=1e-5, atol=atol)
    assert set(numeric) == {"x", "kernel", "recurrent_kernel"} | ({"bias"} if layer.use_bias else set())


def test_backward_leaves_dout_alone_and_skips_dx_for_a_first_layer(on):
    layer = make(LSTM, {}, return_sequences=True)
    layer.forward(on.asarray(randn((N, T, F), 3)))
    dout = on.asarray(randn((N, T, UNITS), 4))
    before = host(dout).copy()
    assert layer.backward(dout).shape == (N, T, F)
    assert numpy.array_equal(host(dout), before)
    layer.skip_input_grad = True
    assert layer.backward(dout) is None


# ---------------------------------------------------------------- PyTorch parity (converted weights)
def _torch_pair(cls, layer):
    """A torch module holding ``layer``'s weights: ``W_ih = kernel.T``; GRU's z, r, h blocks become torch's r, z, n."""
    torch = pytest.importorskip("torch")
    kind = {SimpleRNN: torch.nn.RNN, LSTM: torch.nn.LSTM, GRU: torch.nn.GRU}[cls]
    module = kind(F, UNITS, batch_first=True, dtype=torch.float64)
    order = [1, 0, 2] if cls is GRU else list(range(cls.gates))

    def to_torch(a):  # a Keras block layout along the last axis -> torch's along the first
        return torch.tensor(numpy.concatenate([numpy.split(a, cls.gates, axis=-1)[j] for j in order], axis=-1).T)

    W, U, b = layer.get_weights()
    with torch.no_grad():
        module.weight_ih_l0.copy_(to_torch(W))
        module.weight_hh_l0.copy_(to_torch(U))
        module.bias_ih_l0.copy_(to_torch(b[0] if cls is GRU else b))
        module.bias_hh_l0.copy_(to_torch(b[1]) if cls is GRU else torch.zeros(cls.gates * UNITS, dtype=torch.float64))

    def from_torch(g):  # a torch gradient back to the Keras layout
        return numpy.concatenate([numpy.split(g.numpy().T, cls.gates, axis=-1)[j] for j in order], axis=-1)

    return torch, module, from_torch


@pytest.mark.parametrize("sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("cls", [SimpleRNN, LSTM, GRU], ids=["rnn", "lstm", "gru"])
def test_outputs_and_gradients_match_pytorch(on, cls, sequences):
    layer = make(cls, {}, return_sequences=sequences)
    torch, module, from_torch = _torch_pair(cls, layer)
    x, dout = randn((N, T, F), 5), randn((N, T, UNITS) if sequences else (N, UNITS), 6)
    y = layer.forward(on.asarray(x))
    dx = layer.backward(on.asarray(dout))
    xt = torch.tensor(x, requires_grad=True)
    out = module(xt)[0]
    yt = out if sequences else out[:, -1]
    (yt * torch.tensor(dout)).sum().backward()
    assert_close(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    assert_close(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert_close(layer.dkernel, from_torch(module.weight_ih_l0.grad), rtol=1e-10, atol=1e-12)
    assert_close(layer.drecurrent_kernel, from_torch(module.weight_hh_l0.grad), rtol=1e-10, atol=1e-12)
    db_in = from_torch(module.bias_ih_l0.grad[:, None])[0]
    assert_close(layer.dbias[0] if cls is GRU else layer.dbias, db_in, rtol=1e-10, atol=1e-12)
    if cls is GRU:
        assert_close(layer.dbias[1], from_torch(module.bias_hh_l0.grad[:, None])[0], rtol=1e-10, atol=1e-12)


def test_go_backwards_is_pytorch_on_the_reversed_sequence(on):
    layer = make(LSTM, {}, return_sequences=True, go_backwards=True)
    torch, module, _ = _torch_pair(LSTM, layer)
    x = randn((N, T, F), 8)
    expect = module(torch.tensor(x[:, ::-1].copy()))[0].detach().numpy()
    assert_close(layer.forward(on.asarray(x)), expect, rtol=1e-12, atol=1e-13)  # in processing order, as Keras


# ---------------------------------------------------------------- weights as Keras makes them
@pytest.mark.parametrize("cls,bias_shape", [(SimpleRNN, (UNITS,)), (LSTM, (4 * UNITS,)), (GRU, (2, 3 * UNITS))])
def test_weights_have_keras_shapes_order_and_initial_values(cls, bias_shape):
    layer = cls(UNITS)
    layer.rng = numpy.random.default_rng(0)
    layer.build((None, T, F))
    W, U, b = layer.get_weights()
    k = cls.gates * UNITS
    assert (W.shape, U.shape, b.shape) == ((F, k), (UNITS, k), bias_shape)
    assert W.dtype == numpy.float32 and numpy.abs(W).max() <= numpy.sqrt(6 / (F + k)) and W.std() > 0
    assert_close(U @ U.T, numpy.eye(UNITS), rtol=0, atol=1e-5)  # orthogonal rows
    expect = numpy.zeros(bias_shape, numpy.float32)
    if cls is LSTM:  # unit_forget_bias
        expect[UNITS:2 * UNITS] = 1
    assert numpy.array_equal(b, expect)
    assert cls(UNITS, use_bias=False, input_shape=(T, F)).compute_output_shape((None, T, F)) == (None, UNITS)


def test_automatic_names_follow_keras():
    assert [cls(2).name.rsplit("_", 1)[0] for cls in (SimpleRNN, LSTM, GRU)] == ["simple_rnn", "lstm", "gru"]


def test_orthogonal_has_orthonormal_rows_or_columns_and_keeps_dtype():
    rng = numpy.random.default_rng(0)
    tall, wide = orthogonal((9, 4), rng, numpy.float64), orthogonal((3, 12), rng, numpy.float64)
    assert_close(tall.T @ tall, numpy.eye(4), rtol=0, atol=1e-12)
    assert_close(wide @ wide.T, numpy.eye(3), rtol=0, atol=1e-12)
    assert orthogonal((5, 5), rng).dtype == numpy.float32


# ---------------------------------------------------------------- in a model
def sum_sign_task(seed, n=768):
    """Is the sum over time of feature 0 positive? Features 1 and 2 are noise."""
    x = numpy.random.default_rng(seed).standard_normal((n, 12, 3)).astype(numpy.float32)
    return x, (x[:, :, 0].sum(axis=1) > 0).astype(numpy.int64)


# Validation accuracy (256 held-out sequences, chance 0.5) after 20 epochs of Adam(0.005), measured
# over seeds 0-9, the same on numpy and numba: minimum SimpleRNN 0.883, LSTM 0.930, GRU 0.918.
BAR = {SimpleRNN: 0.84, LSTM: 0.88, GRU: 0.88}


@pytest.mark.parametrize("cls", [SimpleRNN, LSTM, GRU], ids=["rnn", "lstm", "gru"])
def test_sequential_learns_a_sequence_task(backend, cls, seed=0):
    x, y = sum_sign_task(seed)
    model = Sequential([cls(8, input_shape=(12, 3)), Dense(2, activation="softmax")], seed=seed, backend=backend)
    model.compile(optimizer=Adam(learning_rate=0.005), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:512], y[:512], batch_size=32, epochs=20, verbose=0, seed=seed)
    assert model.evaluate(x[512:], y[512:], verbose=0)[1] >= BAR[cls]


def test_stacked_layers_train_and_report_their_shapes(backend):
    x, y = sum_sign_task(1, n=64)
    model = Sequential([GRU(6, return_sequences=True, input_shape=(12, 3)), LSTM(5, go_backwards=True),
                        Dense(2, activation="softmax")], seed=1, backend=backend)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert model.layers[0].compute_output_shape((None, 12, 3)) == (None, 12, 6)
    first = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"]
    assert first[-1] < first[0]
    assert [w.shape for w in model.get_weights()][:3] == [(3, 18), (6, 18), (2, 18)]


def test_regularizers_reach_the_model_penalty():
    layer = LSTM(3, kernel_regularizer=regularizers.l2(0.1), recurrent_regularizer=regularizers.l1(0.2),
                 bias_regularizer="l2", input_shape=(4, 2))
    model = Sequential([layer, Dense(1)], seed=0)
    model.build()
    W, U, b = layer.get_weights()
    expect = 0.1 * (W ** 2).sum() + 0.2 * numpy.abs(U).sum() + 0.01 * (b ** 2).sum()
    assert float(host(model.penalty())) == pytest.approx(float(expect), rel=1e-5)


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("cls,kwargs", [
    (SimpleRNN, {"activation": "relu", "use_bias": False, "kernel_initializer": "he_normal"}),
    (LSTM, {"recurrent_activation": "tanh", "unit_forget_bias": False, "recurrent_regularizer": regularizers.l2(1e-3)}),
    (GRU, {"reset_after": False, "go_backwards": True, "bias_initializer": 0.1, "unroll": True}),
], ids=["rnn", "lstm", "gru"])
def test_config_round_trip_rebuilds_the_same_layer(cls, kwargs):
    layer = cls(5, return_sequences=True, input_shape=(T, F), name=f"seq_{cls.__name__.lower()}", **kwargs)
    cfg = layer.get_config()
    json.dumps(cfg)
    clone = cls(**cfg)
    assert clone.get_config() == cfg
    same = [k for k in cfg if not k.endswith("regularizer")]  # regularizer objects compare by identity
    assert [getattr(clone, k) for k in same] == [getattr(layer, k) for k in same]
    x = randn((2, T, F), 0).astype(numpy.float32)
    for a in (layer, clone):
        a.rng = numpy.random.default_rng(0)
        a.build((None, T, F))
    clone.set_weights(layer.get_weights())
    assert_close(clone.forward(x, train_flg=False), layer.forward(x, train_flg=False), rtol=0, atol=0)


def test_a_saved_model_loads_by_class_name(tmp_path):
    from fastnn import registry

    added = []
    for cls in (SimpleRNN, LSTM, GRU):  # until fastnn.layers exports them
        try:
            registry.layer_class(cls.__name__)
        except KeyError:
            added.append(fastnn.register(cls).__name__)
    try:
        model = Sequential([GRU(4, return_sequences=True, input_shape=(T, F)), LSTM(3, return_sequences=True),
                            SimpleRNN(2), Dense(2)], seed=0)
        model.build()
        model.save(tmp_path / "m.keras")
        loaded = fastnn.models.load_model(tmp_path / "m.keras")
    finally:
        for name in added:
            registry._LAYERS.pop(name)
    x = randn((2, T, F), 1).astype(numpy.float32)
    assert_close(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=0)


# ---------------------------------------------------------------- errors
def test_bad_inputs_name_the_layer_and_the_shapes():
    layer = LSTM(UNITS, name="enc")
    with pytest.raises(ValueError, match=r"enc \(LSTM\): expected x of shape \(N, T, F\).*got \(3, 7\).*batch axis"):
        layer.forward(numpy.ones((3, 7)))
    assert not layer.built
    layer.forward(numpy.ones((3, T, F)))
    with pytest.raises(ValueError, match=r"enc \(LSTM\): expected x of shape \(N, T, 7\).*got \(3, 5, 6\)"):
        layer.forward(numpy.ones((3, T, 6)))
    with pytest.raises(ValueError, match=r"enc: backward expected dout of shape \(3, 4\)"):
        layer.backward(numpy.ones((3, 5)))
    with pytest.raises(ValueError, match=r"gru_in \(GRU\): expects inputs of shape \(N, timesteps, features\), got "
                                         r"input shape \(N, 7\)"):
        Sequential([GRU(2, input_shape=(7,), name="gru_in")]).build()


@pytest.mark.parametrize("kwargs,error,match", [
    ({"units": 0}, ValueError, "units must be a positive integer"),
    ({"dropout": 0.2}, NotImplementedError, "dropout=0.2 is not implemented"),
    ({"recurrent_dropout": 0.1}, NotImplementedError, "recurrent_dropout=0.1 is not implemented"),
    ({"dropout": 1.5}, ValueError, r"dropout must be a number in \[0, 1\)"),
    ({"return_state": True}, NotImplementedError, "return_state=True is not supported"),
    ({"stateful": True}, NotImplementedError, "stateful=True is not supported"),
    ({"activation": "gelu"}, ValueError, "activation='gelu' is not supported in a recurrent layer"),
    ({"recurrent_activation": "softmax"}, ValueError, "recurrent_activation='softmax' is not supported"),
    ({"recurrent_initializer": "orthogonl"}, ValueError, "recurrent_initializer: unknown initializer"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, error, match):
    kwargs = {"units": 3, **kwargs}
    with pytest.raises(error, match=match):
        LSTM(**kwargs)

"""Bad values are refused before any state changes (issue 16, medium 6, 7 and 10): data beyond the
model dtype's range, unchecked schedule and regularizer settings, and ``numerical_gradient``
leaving its argument perturbed when ``f`` raises."""
import math

import numpy
import pytest

from fastnn import optimizers, regularizers
from fastnn.functions import numerical_gradient
from fastnn.layers import Dense
from fastnn.models import Sequential


def _model(loss="mse", units=1):
    model = Sequential([Dense(units, input_shape=(3,))], seed=0, backend="numpy")
    model.compile(optimizer="sgd", loss=loss)
    return model


# ---------------------------------------------------------------- 6: beyond float32's range
def test_float64_input_beyond_float32_range_is_refused_before_training():
    model = _model()
    model.build((None, 3))
    before = [w.copy() for w in model.get_weights()]
    x = numpy.ones((4, 3))
    x[2, 1] = 1e39                      # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"x has values beyond float32's range \(first at index \(2, 1\): "
                                         r"1e\+39\); they would become inf"):
        model.fit(x, numpy.ones(4), epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), before):
        numpy.testing.assert_array_equal(a, b)


def test_float64_target_beyond_float32_range_is_refused():
    model = _model()
    y = numpy.ones(4)
    y[3] = -2e39
    with pytest.raises(ValueError, match=r"y has values beyond float32's range \(first at index \(3, 0\)"):
        model.fit(numpy.ones((4, 3)), y, epochs=1, verbose=0)


def test_large_values_within_range_and_float64_models_are_accepted():
    x = numpy.full((4, 3), 1e30)        # fits float32
    _model().predict(x)
    big = Sequential([Dense(1, input_shape=(3,))], seed=0, backend="numpy", dtype="float64")
    big.compile(optimizer="sgd", loss="mse")
    big.evaluate(numpy.full((2, 3), 1e39), numpy.ones(2), verbose=0)   # a float64 model: nothing is cast


# ---------------------------------------------------------------- 7: schedules and regularizers
BAD_SCHEDULES = [
    (lambda: optimizers.ExponentialDecay(0.1, 10, float("nan")), r"ExponentialDecay: decay_rate must be a positive"),
    (lambda: optimizers.ExponentialDecay(0.1, 10, -0.5), r"ExponentialDecay: decay_rate must be a positive"),
    (lambda: optimizers.ExponentialDecay(0.1, 10, 0.5 + 1j), r"ExponentialDecay: decay_rate"),
    (lambda: optimizers.StepDecay(0.1, 10, decay_rate=float("nan")), r"StepDecay: decay_rate must be a number in"),
    (lambda: optimizers.StepDecay(0.1, 10, decay_rate=-1), r"StepDecay: decay_rate"),
    (lambda: optimizers.CosineDecay(0.1, 10, alpha=float("nan")), r"CosineDecay: alpha must be a number in \[0, 1\]"),
    (lambda: optimizers.CosineDecay(0.1, 10, alpha=2.0), r"CosineDecay: alpha"),
    (lambda: optimizers.CosineDecay(0.1, 10, warmup_steps=5, warmup_target="0.2"), r"CosineDecay: warmup_target"),
    (lambda: optimizers.CosineDecay(0.1, 10, warmup_steps=-3), r"CosineDecay: warmup_steps"),
    (lambda: optimizers.CosineDecay(0.1, 10, warmup_steps=2.5), r"CosineDecay: warmup_steps"),
]


@pytest.mark.parametrize("make,message", BAD_SCHEDULES, ids=[m for _, m in BAD_SCHEDULES])
def test_bad_schedule_settings_are_refused_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_good_schedules_still_give_finite_positive_rates():
    for s in (optimizers.ExponentialDecay(0.1, 10, 0.5), optimizers.StepDecay(0.1, 10, 0.5),
              optimizers.CosineDecay(0.1, 10, alpha=0.1, warmup_steps=5, warmup_target=0.2)):
        rates = [s(step) for step in range(30)]
        assert all(math.isfinite(r) and r > 0 for r in rates)
    cfg = optimizers.CosineDecay(0.1, 10, warmup_steps=5, warmup_target=0.2).get_config()
    assert optimizers.CosineDecay(**cfg)(3) == pytest.approx(0.1 + 0.1 * 3 / 5)


@pytest.mark.parametrize("kwargs", [{"l1": float("nan")}, {"l2": float("inf")}, {"l1": -0.1}, {"l2": "0.1"},
                                    {"l1": 1j}], ids=str)
def test_bad_regularizer_factors_are_refused(kwargs):
    with pytest.raises(ValueError, match=r"Regularizer: l[12] factor must be a finite non-negative number"):
        regularizers.Regularizer(**kwargs)


def test_regularizer_accepts_numpy_floats():
    assert regularizers.l2(numpy.float32(0.01)).l2 == pytest.approx(0.01)


def test_a_bad_schedule_in_a_loaded_config_is_refused():
    """A config dict with NaN (as a tampered file would give) goes through the same checks."""
    with pytest.raises(ValueError, match=r"ExponentialDecay: decay_rate"):
        optimizers.ExponentialDecay(**{"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": float("nan"),
                                       "staircase": False})


# ---------------------------------------------------------------- 10: numerical_gradient restores x
def test_numerical_gradient_restores_x_when_f_raises():
    w = numpy.random.default_rng(0).standard_normal((3, 4))
    before = w.copy()
    calls = []

    def f(_):
        calls.append(1)
        if len(calls) == 2:           # fails on the -h evaluation of the first element
            raise IndexError("label 7 out of range")
        return float((w ** 2).sum())

    with pytest.raises(IndexError, match="label 7"):
        numerical_gradient(f, w)
    numpy.testing.assert_array_equal(w, before)


# ---------------------------------------------------------------- 9: the dict update checks every key first
@pytest.mark.parametrize("bad,message", [
    ({"W": numpy.ones((2, 2), numpy.int64)}, r"params\['W'\] has dtype int64; only float arrays can be trained"),
    ("readonly", r"params\['W'\] is read-only"),
    ("complex", r"grads\['W'\] must be a real numeric array.*complex"),
    ("shape", r"params\['W'\] has shape \(2, 2\) but grads\['W'\] has \(3,\)"),
])
def test_dict_update_refuses_what_it_cannot_train_before_changing_anything(bad, message):
    b = numpy.ones(3)
    W = numpy.ones((2, 2))
    grads = {"b": numpy.full(3, 0.5), "W": numpy.full((2, 2), 0.5)}
    if isinstance(bad, dict):
        W = bad["W"]
    elif bad == "readonly":
        W.setflags(write=False)
    elif bad == "complex":
        grads["W"] = numpy.full((2, 2), 0.5 + 1j)
    elif bad == "shape":
        grads["W"] = numpy.ones(3)
    params = {"b": b, "W": W}          # "b" comes first: it must not be updated either
    opt = optimizers.SGD(0.1)
    with pytest.raises((TypeError, ValueError), match=message):
        opt.update(params, grads)
    numpy.testing.assert_array_equal(b, numpy.ones(3))
    assert opt.iterations == 0


@pytest.mark.parametrize("bad,message", [
    ("int", r"params\['W'\] has dtype int64; only float arrays can be trained"),
    ("readonly", r"params\['W'\] is read-only"),
    ("complex", r"grads\['W'\] is complex"),
])
def test_book_update_checks_every_key_before_changing_anything(bad, message):
    from fastnn.book.optimizer import Adam

    b, W = numpy.ones(3), numpy.ones((2, 2))
    grads = {"b": numpy.full(3, 0.5), "W": numpy.full((2, 2), 0.5)}
    if bad == "int":
        W = numpy.ones((2, 2), numpy.int64)
    elif bad == "readonly":
        W.setflags(write=False)
    else:
        grads["W"] = numpy.full((2, 2), 0.5 + 1j)
    with pytest.raises((TypeError, ValueError), match=message):
        Adam().update({"b": b, "W": W}, grads)
    numpy.testing.assert_array_equal(b, numpy.ones(3))


# ---------------------------------------------------------------- reproducibility, as users expect it
def _dropout_model(seed=None):
    from fastnn.layers import Dropout

    m = Sequential([Dense(16, activation="relu", input_shape=(6,)), Dropout(0.4), Dense(3, activation="softmax")],
                   seed=seed, backend="numpy")
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return m


def _xy():
    rng = numpy.random.default_rng(0)
    return rng.standard_normal((64, 6)).astype(numpy.float32), rng.integers(0, 3, 64)


def test_fit_seed_fixes_batch_order_and_dropout_streams_of_an_unseeded_model():
    x, y = _xy()
    weights = _dropout_model(seed=1).get_weights()
    runs = []
    for _ in range(2):
        m = _dropout_model()          # unseeded: its own dropout seed differs run to run
        m.build((None, 6))
        m.set_weights(weights)
        m.fit(x, y, batch_size=16, epochs=2, verbose=0, seed=5)
        runs.append(m.get_weights())
    for a, b in zip(*runs):
        numpy.testing.assert_array_equal(a, b)


def test_fit_seed_keeps_a_dropout_seed_the_user_gave():
    from fastnn.layers import Dropout

    m = Sequential([Dense(4, input_shape=(6,)), Dropout(0.4, seed=123), Dense(3, activation="softmax")])
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    m.fit(*_xy(), epochs=1, verbose=0, seed=5)
    assert m.layers[1].seed == 123


def test_numpy_global_seed_makes_unseeded_models_reproducible():
    runs = []
    for _ in range(2):
        numpy.random.seed(7)
        runs.append(_dropout_model().get_weights())
    for a, b in zip(*runs):
        numpy.testing.assert_array_equal(a, b)
    numpy.random.seed(8)
    assert not numpy.array_equal(_dropout_model().get_weights()[0], runs[0][0])


def test_trainer_without_a_seed_follows_a_seeded_network():
    from fastnn.networks import TwoLayerNet
    from fastnn.training import Trainer

    x, y = _xy()
    x = x.astype(numpy.float64)
    onehot = numpy.eye(3)[y]
    runs = []
    for _ in range(2):
        numpy.random.seed(None)       # whatever the global generator holds, the network's seed rules
        net = TwoLayerNet(6, 8, 3, seed=3)
        Trainer(net, x, onehot, x, onehot, epochs=2, mini_batch_size=8, verbose=False).train()
        runs.append({k: v.copy() for k, v in net.params.items()})
    for k in runs[0]:
        numpy.testing.assert_array_equal(runs[0][k], runs[1][k])


# ---------------------------------------------------------------- one_hot / to_categorical / input_dim
@pytest.mark.parametrize("t,message", [([0, -1, 2], r"must be >= 0, got -1"), ([0, 1.7], r"whole numbers, got 1\.7"),
                                       ([0, 3], r"class index 3 is out of range for 3 classes"),
                                       (["a"], r"must be numbers")])
def test_one_hot_refuses_bad_indices(t, message):
    from fastnn.datasets import one_hot

    with pytest.raises((ValueError, TypeError), match=message):
        one_hot(t, 3 if t != [0, 1.7] else None)


def test_to_categorical_as_keras():
    from fastnn.utils import to_categorical

    got = to_categorical(numpy.array([[2], [0], [1]]), 4)
    assert got.dtype == numpy.float32 and got.shape == (3, 4)
    numpy.testing.assert_array_equal(got, [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    assert to_categorical([1.0, 2.0]).shape == (2, 3)


def test_input_dim_is_input_shape():
    assert Dense(4, input_dim=7).input_shape == (7,)
    m = Sequential([Dense(4, input_dim=7)], backend="numpy")
    m.build()
    assert m.output_shape == (None, 4)
    with pytest.raises(ValueError, match=r"input_dim=7 and input_shape=\(8,\) disagree"):
        Dense(4, input_dim=7, input_shape=(8,))

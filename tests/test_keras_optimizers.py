"""Keras 3 parity of the optimizer line (issue 18): Nadam, Adamax, Adam(amsgrad=True), clipvalue and
``keras.optimizers.schedules``.

The expected values are straightforward float64 transcriptions of Keras 3's update rules and
schedules, written from Keras's source (``keras/src/optimizers/nadam.py``, ``adamax.py``,
``adam.py``, ``rmsprop.py``, ``base_optimizer.py``: ``_clip_gradients``, ``_apply_weight_decay``;
``schedules/learning_rate_schedule.py``), not from fastnn's output.
"""
import math

import numpy
import pytest

import fastnn
from fastnn import optimizers as O
from fastnn.layers import Dense
from fastnn.models import Sequential, load_model
from fastnn.params import FlatParams
from fastnn.testing import flat_steps, has_numba, host


def rand(shape, seed, dtype=numpy.float64):
    return numpy.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- Keras 3, transcribed
def keras_steps(kind, p, grads, lr=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, rho=0.9, weight_decay=None,
                clipvalue=None, torch_eps=False):
    """``p`` after Keras 3's ``optimizer.apply(grads)`` for each gradient in ``grads``, in float64.

    ``torch_eps``: Adam's epsilon added after the bias correction of ``sqrt(v_hat)`` (fastnn's Adam
    follows ``torch.optim.Adam`` there; the AMSGrad maximum is the same in both libraries).
    """
    p = p.astype(numpy.float64).copy()
    m, v, v_hat, u = (numpy.zeros_like(p) for _ in range(4))
    u_product = 1.0  # Nadam's _u_product variable
    for iterations, g in enumerate(grads):  # self.iterations: 0 at the first update
        g = g.astype(numpy.float64)
        if clipvalue:  # base_optimizer._clip_gradients
            g = numpy.clip(g, -clipvalue, clipvalue)
        if weight_decay is not None:  # base_optimizer._apply_weight_decay
            p = p - p * weight_decay * lr
        local_step = iterations + 1
        if kind == "nadam":
            u_product = u_product * beta_1 * (1.0 - 0.5 * 0.96 ** (iterations + 1))  # _backend_update_step
            u_t = beta_1 * (1.0 - 0.5 * 0.96 ** local_step)
            u_t_1 = beta_1 * (1.0 - 0.5 * 0.96 ** (iterations + 2))
            u_product_t_1 = u_product * u_t_1
            m = m + (g - m) * (1 - beta_1)
            v = v + (g * g - v) * (1 - beta_2)
            m_hat = u_t_1 * m / (1 - u_product_t_1) + (1 - u_t) * g / (1 - u_product)
            vh = v / (1 - beta_2 ** local_step)
            p = p - m_hat * lr / (numpy.sqrt(vh) + epsilon)
        elif kind == "adamax":
            m = m + (g - m) * (1 - beta_1)
            u = numpy.maximum(beta_2 * u, numpy.abs(g))
            p = p - lr * m / ((1 - beta_1 ** local_step) * (u + epsilon))
        elif kind == "amsgrad":
            alpha = lr * math.sqrt(1 - beta_2 ** local_step) / (1 - beta_1 ** local_step)
            m = m + (g - m) * (1 - beta_1)
            v = v + (g * g - v) * (1 - beta_2)
            v_hat = numpy.maximum(v_hat, v)
            if torch_eps:
                p = p - lr / (1 - beta_1 ** local_step) * m / (
                    numpy.sqrt(v_hat) / math.sqrt(1 - beta_2 ** local_step) + epsilon)
            else:
                p = p - m * alpha / (numpy.sqrt(v_hat) + epsilon)
        elif kind == "sgd":
            p = p - lr * g
        elif kind == "rmsprop":
            v = rho * v + (1 - rho) * g * g
            p = p - lr * g / numpy.sqrt(v + epsilon)
        else:
            raise ValueError(kind)
    return p


def torch_amsgrad_l2_steps(p, grads, lr, weight_decay, clipvalue, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """``torch.nn.utils.clip_grad_value_`` then ``torch.optim.Adam(amsgrad=True, weight_decay=wd)``: the L2
    term ``wd * p`` is added to the clipped gradient (fastnn's Adam follows torch for weight decay)."""
    p = p.astype(numpy.float64).copy()
    m, v, v_max = numpy.zeros_like(p), numpy.zeros_like(p), numpy.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = numpy.clip(g.astype(numpy.float64), -clipvalue, clipvalue) + weight_decay * p
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        v_max = numpy.maximum(v_max, v)
        p = p - lr / (1 - beta_1 ** t) * m / (numpy.sqrt(v_max) / math.sqrt(1 - beta_2 ** t) + eps)
    return p


# (fastnn optimizer, the Keras transcription's arguments): rates large enough that every step matters
CASES = {
    "nadam": (lambda: O.Nadam(learning_rate=0.01), dict(kind="nadam", lr=0.01)),
    "nadam-betas": (lambda: O.Nadam(0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-6),
                    dict(kind="nadam", lr=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-6)),
    "nadam-wd-clip": (lambda: O.Nadam(0.01, weight_decay=0.05, clipvalue=0.5),
                      dict(kind="nadam", lr=0.01, weight_decay=0.05, clipvalue=0.5)),
    "adamax": (lambda: O.Adamax(learning_rate=0.01), dict(kind="adamax", lr=0.01)),
    "adamax-betas": (lambda: O.Adamax(0.02, 0.7, 0.95, 1e-5), dict(kind="adamax", lr=0.02, beta_1=0.7, beta_2=0.95,
                                                                    epsilon=1e-5)),
    "adamax-wd-clip": (lambda: O.Adamax(0.01, weight_decay=0.05, clipvalue=0.5),
                       dict(kind="adamax", lr=0.01, weight_decay=0.05, clipvalue=0.5)),
    "amsgrad": (lambda: O.Adam(0.01, amsgrad=True), dict(kind="amsgrad", lr=0.01, torch_eps=True)),
    "amsgrad-clip": (lambda: O.Adam(0.01, amsgrad=True, clipvalue=0.5),
                     dict(kind="amsgrad", lr=0.01, clipvalue=0.5, torch_eps=True)),
    # AdamW's p *= 1 - lr*wd is Keras's decoupled decay p - p*wd*lr
    "adamw-amsgrad": (lambda: O.AdamW(0.01, weight_decay=0.05, amsgrad=True),
                      dict(kind="amsgrad", lr=0.01, weight_decay=0.05, torch_eps=True)),
    "sgd-clip": (lambda: O.SGD(0.1, clipvalue=0.5), dict(kind="sgd", lr=0.1, clipvalue=0.5)),
    "rmsprop-clip": (lambda: O.RMSprop(0.01, clipvalue=0.5), dict(kind="rmsprop", lr=0.01, clipvalue=0.5)),
}


def _grads(steps, shape=(5, 3)):
    # N(0, 1) gradients: with clipvalue 0.5 about 60% of the elements are clipped; a shrinking tail of
    # steps makes AMSGrad's maximum differ from v (v decays below v_hat)
    return [rand(shape, 10 + i) * (1.0 if i < 4 else 0.05) for i in range(steps)]


@pytest.mark.parametrize("steps", [1, 3, 9])
@pytest.mark.parametrize("name", list(CASES))
def test_update_matches_keras_formula(backend, name, steps):
    make, keras = CASES[name]
    with fastnn.using(backend) as ops:
        p0 = rand((5, 3), 0)
        grads = _grads(steps)
        params = {"W": ops.asarray(p0.copy())}
        opt = make()
        for g in grads:
            opt.update(params, {"W": ops.asarray(g)})
        want = keras_steps(p=p0, grads=grads, **keras)
        numpy.testing.assert_allclose(host(params["W"]), want, rtol=1e-10, atol=1e-13)
        assert opt.iterations == steps


def test_amsgrad_keeps_the_maximum_and_changes_the_update():
    """The late small gradients let v decay below its maximum: AMSGrad's steps differ from Adam's."""
    grads = _grads(9)
    p0 = rand((5, 3), 0)
    params = {"W": p0.copy()}
    opt = O.Adam(0.01, amsgrad=True)
    for g in grads:
        opt.update(params, {"W": g})
    m, v, v_hat = opt.state["W"]
    assert (v_hat >= v).all() and (v_hat > v).mean() > 0.5
    assert not numpy.allclose(params["W"], _plain_adam(p0, grads), rtol=1e-6)


def _plain_adam(p0, grads):
    params = {"W": p0.copy()}
    opt = O.Adam(0.01)
    for g in grads:
        opt.update(params, {"W": g})
    return params["W"]


def test_amsgrad_equals_keras_placement_of_epsilon_once_it_is_negligible():
    """fastnn's Adam adds eps after the bias correction (torch's); with a negligible eps the update is
    Keras's own AMSGrad formula."""
    grads = _grads(6)
    p0 = rand((5, 3), 0)
    params = {"W": p0.copy()}
    opt = O.Adam(0.01, eps=1e-14, amsgrad=True)
    for g in grads:
        opt.update(params, {"W": g})
    numpy.testing.assert_allclose(params["W"], keras_steps("amsgrad", p0, grads, lr=0.01, epsilon=1e-14),
                                  rtol=1e-9, atol=1e-12)


def test_adam_l2_weight_decay_is_added_after_clipping(backend):
    with fastnn.using(backend) as ops:
        p0, grads = rand((5, 3), 0), _grads(5)
        params = {"W": ops.asarray(p0.copy())}
        opt = O.Adam(0.01, amsgrad=True, weight_decay=0.1, clipvalue=0.5)
        for g in grads:
            opt.update(params, {"W": ops.asarray(g)})
        numpy.testing.assert_allclose(host(params["W"]), torch_amsgrad_l2_steps(p0, grads, 0.01, 0.1, 0.5),
                                      rtol=1e-10, atol=1e-13)


def test_nadam_momentum_product_is_the_running_product_of_the_schedule():
    opt = O.Nadam(beta_1=0.85)
    want = 1.0
    for t in range(1, 40):
        want *= 0.85 * (1 - 0.5 * 0.96 ** t)
        assert opt.mu_product(t) == pytest.approx(want, rel=1e-14)
    assert opt.mu_product(0) == 1.0 and opt.mu_product(5) == pytest.approx(
        math.prod(0.85 * (1 - 0.5 * 0.96 ** i) for i in range(1, 6)), rel=1e-14)  # back again: recomputed


# ---------------------------------------------------------------- defaults and spellings, as Keras's
def test_defaults_are_keras_defaults():
    for cls in (O.Nadam, O.Adamax, O.Adam):
        opt = cls()
        assert (opt.lr, opt.beta1, opt.beta2, opt.eps) == (0.001, 0.9, 0.999, 1e-7), cls
        assert opt.weight_decay == 0.0 and opt.clipnorm is None and opt.clipvalue is None, cls
    assert O.Adam().amsgrad is False and O.Adam().slots == ("m", "v") and O.Adam().rule == "adam"
    a = O.Adam(amsgrad=True)
    assert a.slots == ("m", "v", "v_hat") and a.rule == "amsgrad"
    assert O.Nadam().slots == ("m", "v") and O.Adamax().slots == ("m", "u")
    for cls in (O.SGD, O.Momentum, O.Nesterov, O.AdaGrad, O.RMSprop, O.Adam, O.AdamW, O.Nadam, O.Adamax):
        assert cls().clipvalue is None and cls().get_config()["clipvalue"] is None, cls
        assert cls(clipvalue=2).get_config()["clipvalue"] == 2.0, cls


def test_positional_order_is_keras_order():
    """Keras: Nadam/Adamax(learning_rate, beta_1, beta_2, epsilon), Adam(..., epsilon, amsgrad)."""
    n = O.Nadam(0.01, 0.8, 0.99, 1e-6)
    assert (n.lr, n.beta1, n.beta2, n.eps) == (0.01, 0.8, 0.99, 1e-6)
    x = O.Adamax(0.01, 0.8, 0.99, 1e-6)
    assert (x.lr, x.beta1, x.beta2, x.eps) == (0.01, 0.8, 0.99, 1e-6)
    a = O.Adam(0.01, 0.8, 0.99, 1e-6, True)
    assert a.amsgrad and a.eps == 1e-6


def test_names_and_keras_spellings():
    assert isinstance(O.get("nadam"), O.Nadam) and isinstance(O.get("Adamax"), O.Adamax)
    assert isinstance(O.get("adam", amsgrad=True), O.Adam) and O.get("adam", amsgrad=True).amsgrad
    assert "nadam" in O.OPTIMIZER_NAMES and "adamax" in O.OPTIMIZER_NAMES
    m = Sequential([Dense(2, input_shape=(3,))], seed=0, backend="numpy")
    m.compile(optimizer="nadam", loss="mse")
    assert isinstance(m.optimizer, O.Nadam)
    o = O.Nadam(learning_rate=0.02, beta_1=0.8, beta_2=0.9, epsilon=1e-5, weight_decay=0.01, clipvalue=1.0)
    assert (o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.clipvalue) == (0.02, 0.8, 0.9, 1e-5, 0.01, 1.0)


@pytest.mark.parametrize("make,error,match", [
    (lambda: O.Nadam(beta_1=1.0), ValueError, r"Nadam: beta1 must be a number in \[0, 1\), got 1.0"),
    (lambda: O.Adamax(beta_2=-0.1), ValueError, r"Adamax: beta2 must be a number in \[0, 1\)"),
    (lambda: O.Adamax(epsilon=0), ValueError, r"Adamax: eps must be a positive number, got 0"),
    (lambda: O.Nadam(beta1=0.9, beta_1=0.8), ValueError, r"Nadam: beta1 and beta_1 are synonyms"),
    (lambda: O.Adam(amsgrad="yes"), TypeError, r"Adam: amsgrad must be True or False, got 'yes'"),
    (lambda: O.SGD(clipvalue=0), ValueError, r"SGD: clipvalue must be a positive number, got 0"),
    (lambda: O.Nadam(clipvalue=-1.0), ValueError, r"Nadam: clipvalue must be a positive number, got -1.0"),
    (lambda: O.Adam(clipvalue=float("nan")), ValueError, r"Adam: clipvalue must be a positive number, got nan"),
    (lambda: O.Adamax(clipvalue="1"), ValueError, r"Adamax: clipvalue must be a positive number"),
    (lambda: O.Adam(clipnorm=1.0, clipvalue=0.5), ValueError,
     r"Adam: only one of clipnorm and clipvalue can be set \(as in Keras\), got clipnorm=1.0 and clipvalue=0.5"),
])
def test_bad_arguments_are_refused_by_name(make, error, match):
    with pytest.raises(error, match=match):
        make()


# ---------------------------------------------------------------- clipvalue
def test_clipvalue_clips_each_element_not_the_norm(backend):
    with fastnn.using(backend) as ops:
        p = {"a": ops.asarray(numpy.zeros(4)), "b": ops.asarray(numpy.zeros(2))}
        g = {"a": ops.asarray(numpy.array([3.0, -0.2, -7.0, 0.5])), "b": ops.asarray(numpy.array([-0.49, 100.0]))}
        O.SGD(lr=1.0, clipvalue=0.5).update(p, g)
        numpy.testing.assert_array_equal(host(p["a"]), [-0.5, 0.2, 0.5, -0.5])
        numpy.testing.assert_array_equal(host(p["b"]), [0.49, -0.5])
        numpy.testing.assert_array_equal(host(g["a"]), [3.0, -0.2, -7.0, 0.5])  # the caller's gradient is untouched


def test_clipvalue_does_not_clip_decoupled_weight_decay():
    """Keras clips the gradient only; the decay p -= lr*wd*p is applied to the parameter as it is."""
    p = {"W": numpy.array([10.0, -10.0])}
    O.Adamax(lr=0.1, weight_decay=0.5, clipvalue=1e-3).update(p, {"W": numpy.array([0.0, 0.0])})
    numpy.testing.assert_allclose(p["W"], [10.0 * 0.95, -10.0 * 0.95], rtol=1e-12)


@pytest.mark.parametrize("name", ["sgd-clip", "rmsprop-clip", "amsgrad-clip", "nadam-wd-clip", "adamax-wd-clip"])
def test_clipvalue_runs_in_the_flat_and_captured_paths(backend, name, dtype):
    """The flat path equals the dict path bit for bit, and the captured form (``graph_scalars`` +
    ``step_flat_dev``) equals the flat step bit for bit: clipvalue travels with the other scalars."""
    _flat_dict_and_captured(backend, CASES[name][0], dtype)


# ---------------------------------------------------------------- every path, every backend
NEW = ["nadam", "nadam-wd-clip", "adamax", "adamax-wd-clip", "amsgrad", "amsgrad-clip", "adamw-amsgrad"]


def _flat_dict_and_captured(backend, make, dtype):
    with fastnn.using(backend) as ops:
        layers = [Dense(4, dtype=dtype), Dense(3, dtype=dtype)]
        for i, layer in enumerate(layers):
            layer.rng = numpy.random.default_rng(i)
            layer.build((None, 5 if i == 0 else 4))
        params = {f"{k}{i}": ops.asarray(host(v).copy()) for i, layer in enumerate(layers)
                  for k, v in layer.params.items()}
        flat = FlatParams(layers, ops, dtype)
        opt_flat, opt_dict, opt_dev = make(), make(), make()
        for step in range(4):
            grads = {}
            for i, layer in enumerate(layers):
                for k in layer.params:
                    g = rand(layer.params[k].shape, 100 * step + 10 * i + len(k), dtype)
                    getattr(layer, "d" + k)[...] = ops.asarray(g)
                    grads[f"{k}{i}"] = ops.asarray(g)
            if step == 0:
                opt_dev.build(flat)
                p_dev = flat.p.copy()
            p_before = flat.p.copy()
            # the captured form, on its own copy of the parameters and slots
            pieces = opt_dev._pieces(flat)
            rows = opt_dev.graph_scalars(flat, pieces)
            flat.p[...] = p_dev
            opt_dev.step_flat_dev(flat, pieces, [ops.asarray(r) for r in rows])
            opt_dev.iterations += 1
            p_dev = flat.p.copy()
            flat.p[...] = p_before
            opt_flat.step_flat(flat)
            opt_dict.update(params, grads)
            numpy.testing.assert_array_equal(host(p_dev), host(flat.p), err_msg=f"captured vs flat, step {step}")
        for i, layer in enumerate(layers):
            for k, v in layer.params.items():
                numpy.testing.assert_array_equal(host(v), host(params[f"{k}{i}"]), err_msg=f"flat vs dict {k}{i}")
        for a, b in zip(opt_flat.flat_slots, opt_dev.flat_slots):
            numpy.testing.assert_array_equal(host(a), host(b))


@pytest.mark.parametrize("name", NEW)
def test_flat_dict_and_captured_paths_agree_bitwise(backend, name, dtype):
    _flat_dict_and_captured(backend, CASES[name][0], dtype)


@pytest.mark.parametrize("name", NEW + ["sgd-clip"])
def test_backend_flat_step_matches_reference(fast_backend, name, dtype):
    results = {backend: flat_steps(backend, CASES[name][0], dtype) for backend in ("numpy", fast_backend)}
    for got, want in zip(results[fast_backend], results["numpy"]):
        assert got.dtype == dtype
        numpy.testing.assert_allclose(got, want, rtol=3e-5 if dtype == numpy.float32 else 1e-12,
                                      atol=3e-6 if dtype == numpy.float32 else 1e-13)


# fit's batch-mean gradients are small: clipvalue 0.005 clips many of them
FIT = {
    "nadam": lambda clip=None: O.Nadam(0.01, clipvalue=clip),
    "adamax": lambda clip=None: O.Adamax(0.01, weight_decay=0.01, clipvalue=clip),
    "amsgrad": lambda clip=None: O.Adam(0.01, amsgrad=True, clipvalue=clip),
    "adamw-amsgrad": lambda clip=None: O.AdamW(0.01, amsgrad=True, clipvalue=clip),
    "sgd": lambda clip=None: O.SGD(0.1, momentum=0.9, clipvalue=clip),
    "rmsprop": lambda clip=None: O.RMSprop(0.01, clipvalue=clip),
}



def _fit_weights(backend, optimizer, epochs=2):
    x, y = _data()
    m = _model(backend, optimizer)
    m.fit(x, y, epochs=epochs, batch_size=16, verbose=0, seed=1)
    return m.get_weights()


@pytest.mark.parametrize("clip", [None, 0.005], ids=["noclip", "clip"])
@pytest.mark.parametrize("name", list(FIT))
def test_fit_trains_as_the_reference_on_every_backend(backend, name, clip):
    want = _fit_weights("numpy", FIT[name](clip))
    if clip is not None:  # the clip changes the training, so a backend that ignores it cannot pass
        unclipped = _fit_weights("numpy", FIT[name]())
        assert max(float(numpy.abs(a - b).max()) for a, b in zip(want, unclipped)) > 1e-4
    for a, b in zip(want, _fit_weights(backend, FIT[name](clip))):
        numpy.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- saved and loaded
def _data():
    rng = numpy.random.default_rng(0)
    return rng.standard_normal((48, 5)), rng.integers(0, 3, 48)


def _model(backend, optimizer):
    m = Sequential([Dense(8, activation="relu", input_shape=(5,)), Dense(3, activation="softmax")], seed=0,
                   backend=backend, dtype="float64")
    m.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return m


ROUND_TRIPS = {
    "nadam": lambda: O.Nadam(0.01, beta_1=0.85, weight_decay=0.01),
    "adamax": lambda: O.Adamax(0.01, clipvalue=0.5),
    "amsgrad": lambda: O.Adam(0.01, amsgrad=True, clipvalue=0.5),
    "adamw-amsgrad": lambda: O.AdamW(0.01, amsgrad=True),
    "piecewise": lambda: O.SGD(O.schedules.PiecewiseConstantDecay([3, 5], [0.1, 0.05, 0.01])),
    "polynomial": lambda: O.Nadam(O.schedules.PolynomialDecay(0.01, 4, 0.001, power=2.0, cycle=True)),
    "inverse-time": lambda: O.RMSprop(O.schedules.InverseTimeDecay(0.01, 2, 0.5, staircase=True)),
    "cosine-restarts": lambda: O.Adamax(O.schedules.CosineDecayRestarts(0.01, 3, t_mul=2.0, m_mul=0.5, alpha=0.1)),
    "cosine": lambda: O.Adam(O.schedules.CosineDecay(0.01, 10, 0.1, "c", 0.02, 2), amsgrad=True),
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_saved_model_loads_and_trains_on_identically(tmp_path, name):
    x, y = _data()
    m = _model("numpy", ROUND_TRIPS[name]())
    m.fit(x, y, epochs=2, batch_size=16, verbose=0, seed=1)
    m.save(tmp_path / "m.fastnn")
    loaded = load_model(tmp_path / "m.fastnn", backend="numpy")
    assert type(loaded.optimizer) is type(m.optimizer)
    assert loaded.optimizer.get_config() == m.optimizer.get_config()
    assert type(loaded.optimizer._lr) is type(m.optimizer._lr)
    assert loaded.optimizer.slots == m.optimizer.slots and loaded.optimizer.iterations == m.optimizer.iterations == 6
    for a, b in zip(m.optimizer.flat_slots, loaded.optimizer.flat_slots):
        numpy.testing.assert_array_equal(host(a), host(b))
    # training on: the same updates (Nadam's momentum product is recomputed from the step count)
    m.fit(x, y, epochs=1, batch_size=16, verbose=0, seed=2)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0, seed=2)
    for a, b in zip(m.get_weights(), loaded.get_weights()):
        numpy.testing.assert_array_equal(a, b)
    assert loaded.optimizer.lr == m.optimizer.lr


# ---------------------------------------------------------------- keras.optimizers.schedules
def test_schedules_have_the_keras_spelling():
    from fastnn.optimizers.schedules import LearningRateSchedule, PolynomialDecay  # noqa: F401

    S = O.schedules
    for name in ("ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay", "InverseTimeDecay", "CosineDecay",
                 "CosineDecayRestarts", "LearningRateSchedule", "serialize", "deserialize"):
        assert hasattr(S, name), name
    assert S.PolynomialDecay is O.PolynomialDecay is PolynomialDecay
    assert issubclass(S.CosineDecayRestarts, LearningRateSchedule)
    s = S.InverseTimeDecay(0.1, 1.0, 0.5)
    back = S.deserialize(S.serialize(s))
    assert type(back) is S.InverseTimeDecay and back.get_config() == s.get_config()
    assert S.deserialize({"class_name": "PolynomialDecay", "config": {
        "cycle": False, "decay_steps": 10000, "end_learning_rate": 0.01, "initial_learning_rate": 0.1,
        "name": None, "power": 0.5}})(2500) == pytest.approx((0.1 - 0.01) * 0.75 ** 0.5 + 0.01)


def test_piecewise_constant_decay_matches_keras():
    s = O.schedules.PiecewiseConstantDecay([100000, 110000], [1.0, 0.5, 0.1])
    # Keras: values[0] for step <= b0, values[1] for b0 < step <= b1, values[-1] for step > b1
    for step, want in [(0, 1.0), (100000, 1.0), (100001, 0.5), (110000, 0.5), (110001, 0.1), (10 ** 7, 0.1)]:
        assert s(step) == want, step
    assert O.schedules.PiecewiseConstantDecay([2.5], [0.3, 0.2])(2) == 0.3


def keras_polynomial(step, initial, decay_steps, end, power, cycle):
    if cycle:
        decay_steps = decay_steps * (1.0 if step == 0 else math.ceil(step / decay_steps))
    else:
        step = min(step, decay_steps)
    return (initial - end) * (1 - step / decay_steps) ** power + end


@pytest.mark.parametrize("cycle", [False, True])
@pytest.mark.parametrize("power", [1.0, 0.5, 2.0])
def test_polynomial_decay_matches_keras(cycle, power):
    s = O.schedules.PolynomialDecay(0.1, 1000, 0.01, power=power, cycle=cycle)
    for step in (0, 1, 250, 999, 1000, 1001, 1500, 2000, 2001, 10 ** 5):
        assert s(step) == pytest.approx(keras_polynomial(step, 0.1, 1000, 0.01, power, cycle), rel=1e-12), step
    assert O.schedules.PolynomialDecay(0.1, 10)(20) == pytest.approx(0.0001)  # Keras's end_learning_rate default
    assert O.schedules.PolynomialDecay(0.1, 10, cycle=True)(15) == pytest.approx((0.1 - 1e-4) * 0.25 + 1e-4)


@pytest.mark.parametrize("staircase", [False, True])
def test_inverse_time_decay_matches_keras(staircase):
    s = O.schedules.InverseTimeDecay(0.1, 3, 0.5, staircase=staircase)
    for step in (0, 1, 2, 3, 7, 100):
        p = math.floor(step / 3) if staircase else step / 3
        assert s(step) == pytest.approx(0.1 / (1 + 0.5 * p), rel=1e-12), step


def keras_cosine_restarts(step, initial, first, t_mul, m_mul, alpha):
    """The periods walked one by one (not Keras's closed form, which this checks)."""
    start, length, i = 0.0, float(first), 0
    while step >= start + length:
        start, length, i = start + length, length * t_mul, i + 1
    frac = (step - start) / length
    return initial * ((1 - alpha) * 0.5 * m_mul ** i * (1 + math.cos(math.pi * frac)) + alpha)


@pytest.mark.parametrize("t_mul,m_mul,alpha", [(2.0, 1.0, 0.0), (2.0, 0.5, 0.1), (1.0, 0.8, 0.0), (1.5, 1.0, 0.2)])
def test_cosine_decay_restarts_matches_keras(t_mul, m_mul, alpha):
    s = O.schedules.CosineDecayRestarts(1.0, 10, t_mul=t_mul, m_mul=m_mul, alpha=alpha)
    for step in (0, 1, 5, 9, 10, 11, 15, 29, 30, 31, 45, 69, 70, 200):
        want = keras_cosine_restarts(step, 1.0, 10, t_mul, m_mul, alpha)
        assert s(step) == pytest.approx(want, rel=1e-9, abs=1e-12), step


def test_cosine_decay_without_warmup_target_ignores_warmup_steps_as_keras():
    plain, ignored = O.CosineDecay(0.1, 100, alpha=0.1), O.CosineDecay(0.1, 100, alpha=0.1, warmup_steps=20)
    for step in (0, 10, 50, 100, 150):
        want = 0.1 * ((1 - 0.1) * 0.5 * (1 + math.cos(math.pi * min(step, 100) / 100)) + 0.1)
        assert plain(step) == pytest.approx(want) and ignored(step) == pytest.approx(want), step
    w = O.CosineDecay(0.0, 100, 0.0, "CosineDecay", 1.0, 10)  # Keras's positional order: ..., name, target, steps
    assert w(5) == pytest.approx(0.5) and w(10) == pytest.approx(1.0) and w(60) == pytest.approx(0.5)


@pytest.mark.parametrize("make,match", [
    (lambda: O.schedules.PiecewiseConstantDecay([10, 20], [1.0, 0.5]),
     r"PiecewiseConstantDecay: values must have one more element than boundaries, got 2 boundaries and 2 values"),
    (lambda: O.schedules.PiecewiseConstantDecay([], [1.0]), r"PiecewiseConstantDecay: needs at least one boundary"),
    (lambda: O.schedules.PiecewiseConstantDecay([20, 10], [1.0, 0.5, 0.1]),
     r"PiecewiseConstantDecay: boundaries must be strictly increasing, got \[20, 10\]"),
    (lambda: O.schedules.PiecewiseConstantDecay([10, 10], [1.0, 0.5, 0.1]), r"strictly increasing"),
    (lambda: O.schedules.PiecewiseConstantDecay([float("nan")], [1.0, 0.5]), r"boundaries must be finite numbers"),
    (lambda: O.schedules.PiecewiseConstantDecay([10], [1.0, -0.5]),
     r"PiecewiseConstantDecay: each value must be a non-negative number, got -0.5"),
    (lambda: O.schedules.PolynomialDecay(0.1, 0), r"PolynomialDecay: decay_steps must be a positive number, got 0"),
    (lambda: O.schedules.PolynomialDecay(0.1, 10, power=-1.0), r"PolynomialDecay: power must be a non-negative"),
    (lambda: O.schedules.PolynomialDecay(0.1, 10, end_learning_rate=float("inf")),
     r"PolynomialDecay: end_learning_rate must be a non-negative number, got inf"),
    (lambda: O.schedules.InverseTimeDecay(0.1, -2, 0.5), r"InverseTimeDecay: decay_steps must be a positive number"),
    (lambda: O.schedules.InverseTimeDecay(0.1, 2, -0.5), r"InverseTimeDecay: decay_rate must be a non-negative"),
    (lambda: O.schedules.CosineDecayRestarts(0.1, 0), r"CosineDecayRestarts: first_decay_steps must be a positive"),
    (lambda: O.schedules.CosineDecayRestarts(0.1, 10, t_mul=0.5), r"CosineDecayRestarts: t_mul must be at least 1"),
    (lambda: O.schedules.CosineDecayRestarts(0.1, 10, m_mul=-1.0), r"CosineDecayRestarts: m_mul must be a non-neg"),
    (lambda: O.schedules.CosineDecayRestarts(0.1, 10, alpha=1.5), r"CosineDecayRestarts: alpha must be a number in"),
    (lambda: O.schedules.ExponentialDecay(0.1, 10, 0.5, name=3), r"ExponentialDecay: name must be a string"),
])
def test_bad_schedule_arguments_are_refused_at_construction(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_new_schedules_drive_the_learning_rate():
    opt = O.SGD(O.schedules.PiecewiseConstantDecay([1, 2], [1.0, 0.5, 0.25]))
    p = {"w": numpy.zeros(1)}
    for _ in range(4):  # steps 0, 1 at 1.0; 2 at 0.5; 3 at 0.25
        opt.update(p, {"w": numpy.ones(1)})
    assert p["w"][0] == pytest.approx(-(1.0 + 1.0 + 0.5 + 0.25))


@pytest.mark.skipif(not has_numba(), reason="needs numba")
def test_nadam_and_adamax_reach_their_numba_kernels():
    """Strict kernels (the test suite's default): a fallback to the reference would raise."""
    ops = fastnn.get_ops("numba")
    p, g, m, v = (rand(11, k) for k in range(4))
    v = numpy.abs(v)
    ops.nadam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-7, 1, 0.9 * 0.52, clipvalue=0.5)
    ops.adamax_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-7, 1, clipvalue=0.5)
    ops.amsgrad_step(p, g, m, v, v.copy(), 1e-3, 0.9, 0.999, 1e-7, 1, clipvalue=0.5)

"""Optimizers: the book-style dict path and the flat-buffer path, against hand-written formulas."""
import math

import numpy
import pytest

import fastnn
from fastnn import optimizers as O
from fastnn.layers import Dense
from fastnn.params import FlatParams
from fastnn.testing import flat_steps, assert_close, host

ALL = {
    "sgd": lambda: O.SGD(lr=0.1),
    "momentum": lambda: O.Momentum(lr=0.1, momentum=0.9),
    "nesterov": lambda: O.Nesterov(lr=0.1, momentum=0.8),
    "adagrad": lambda: O.AdaGrad(lr=0.1),
    "rmsprop": lambda: O.RMSprop(lr=0.01, rho=0.9),
    "adam": lambda: O.Adam(lr=0.01),
    "adamw": lambda: O.AdamW(lr=0.01, weight_decay=0.1),
    "sgd_wd": lambda: O.SGD(lr=0.1, weight_decay=0.01),
    "adam_wd": lambda: O.Adam(lr=0.01, weight_decay=0.05),
}


def reference_steps(kind, p, grads, **hp):
    """Hand-written float64 update rules (torch.optim; AdaGrad and RMSprop as Keras 3), applied to a copy of p."""
    p = p.astype(numpy.float64).copy()
    s1 = numpy.full_like(p, 0.1) if kind == "adagrad" else numpy.zeros_like(p)  # Keras's initial accumulator
    s2 = numpy.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(numpy.float64) + hp.get("wd", 0.0) * p * (kind != "adamw")
        lr = hp["lr"]
        if kind == "sgd":
            p -= lr * g
        elif kind == "momentum":
            s1 = hp["m"] * s1 - lr * g
            p += s1
        elif kind == "nesterov":
            s1 = hp["m"] * s1 + g
            p -= lr * (g + hp["m"] * s1)
        elif kind == "adagrad":  # Keras 3: epsilon inside the root
            s1 += g * g
            p -= lr * g / numpy.sqrt(s1 + 1e-7)
        elif kind == "rmsprop":  # Keras 3: epsilon inside the root
            s1 = 0.9 * s1 + 0.1 * g * g
            p -= lr * g / numpy.sqrt(s1 + 1e-7)
        elif kind in ("adam", "adamw"):
            if kind == "adamw":
                p *= 1 - lr * hp["wd"]
            s1 = 0.9 * s1 + 0.1 * g
            s2 = 0.999 * s2 + 0.001 * g * g
            denom = numpy.sqrt(s2) / math.sqrt(1 - 0.999 ** t) + 1e-7
            p -= lr / (1 - 0.9 ** t) * s1 / denom
    return p


FORMULAS = {
    "sgd": ("sgd", {"lr": 0.1}), "momentum": ("momentum", {"lr": 0.1, "m": 0.9}),
    "nesterov": ("nesterov", {"lr": 0.1, "m": 0.8}), "adagrad": ("adagrad", {"lr": 0.1}),
    "rmsprop": ("rmsprop", {"lr": 0.01}), "adam": ("adam", {"lr": 0.01}),
    "adamw": ("adamw", {"lr": 0.01, "wd": 0.1}), "sgd_wd": ("sgd", {"lr": 0.1, "wd": 0.01}),
    "adam_wd": ("adam", {"lr": 0.01, "wd": 0.05}),
}


def rand(shape, seed, dtype=numpy.float64):
    return numpy.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("steps", [1, 7])
def test_dict_path_matches_hand_written_formula(backend, name, steps):
    with fastnn.using(backend) as ops:
        p0 = rand((5, 3), 0)
        grads = [rand((5, 3), 10 + i) for i in range(steps)]
        params = {"W": ops.asarray(p0.copy())}
        opt = ALL[name]()
        for g in grads:
            opt.update(params, {"W": ops.asarray(g)})
        kind, hp = FORMULAS[name]
        assert_close(params["W"], reference_steps(kind, p0, grads, **hp), rtol=1e-10, atol=1e-12)
        assert opt.iterations == steps


@pytest.mark.parametrize("name", list(ALL))
def test_flat_path_equals_dict_path_bitwise(backend, name, dtype):
    """A model's fused flat step and the book's per-key update give the very same bits."""
    with fastnn.using(backend) as ops:
        layers = [Dense(4, dtype=dtype), Dense(3, dtype=dtype)]
        for i, layer in enumerate(layers):
            layer.rng = numpy.random.default_rng(i)
            layer.build((None, 5 if i == 0 else 4))
        params = {f"{k}{i}": ops.asarray(host(v).copy()) for i, layer in enumerate(layers) for k, v in layer.params.items()}
        flat = FlatParams(layers, ops, dtype)
        opt_flat, opt_dict = ALL[name](), ALL[name]()
        for step in range(4):
            grads = {}
            for i, layer in enumerate(layers):
                for k in layer.params:
                    g = rand(layer.params[k].shape, 100 * step + 10 * i + len(k), dtype)
                    getattr(layer, "d" + k)[...] = ops.asarray(g)
                    grads[f"{k}{i}"] = ops.asarray(g)
            opt_flat.step_flat(flat)
            opt_dict.update(params, grads)
        for i, layer in enumerate(layers):
            for k, v in layer.params.items():
                numpy.testing.assert_array_equal(host(v), host(params[f"{k}{i}"]), err_msg=f"{name} {k}{i}")


@pytest.mark.parametrize("name", list(ALL))
def test_backend_flat_step_matches_reference(fast_backend, name, dtype):
    results = {backend: flat_steps(backend, ALL[name], dtype) for backend in ("numpy", fast_backend)}
    for got, want in zip(results[fast_backend], results["numpy"]):
        assert got.dtype == dtype
        assert_close(got, want, rtol=3e-5 if dtype == numpy.float32 else 1e-12,
                     atol=3e-6 if dtype == numpy.float32 else 1e-13)


def test_float32_stays_float32(backend):
    with fastnn.using(backend) as ops:
        p = {"W": ops.asarray(rand((4, 4), 0, numpy.float32))}
        opt = O.Adam(lr=numpy.sqrt(2.0) * 1e-3)  # a float64 scalar must not promote
        opt.update(p, {"W": ops.asarray(rand((4, 4), 1, numpy.float32))})
        assert p["W"].dtype == numpy.float32
        assert all(s.dtype == numpy.float32 for s in opt.state["W"])


def test_state_is_kept_per_key_and_any_shape_works(backend):
    with fastnn.using(backend) as ops:
        params = {"a": ops.asarray(rand((2, 3, 4), 0)), "b": ops.asarray(rand((5,), 1))}
        opt = O.Momentum(lr=0.1)
        opt.update(params, {"a": ops.asarray(numpy.ones((2, 3, 4))), "b": ops.asarray(numpy.ones(5))})
        assert set(opt.state) == {"a", "b"} and opt.state["a"][0].shape == (24,)
        assert_close(opt.state["a"][0], numpy.full(24, -0.1))


def test_non_contiguous_params_are_updated_in_place():
    base = numpy.arange(12.0).reshape(3, 4)
    view = base[:, ::2]  # not contiguous
    O.SGD(lr=1.0).update({"v": view}, {"v": numpy.ones((3, 2))})
    numpy.testing.assert_array_equal(base[:, ::2], numpy.arange(12.0).reshape(3, 4)[:, ::2] - 1)


def test_clipnorm_scales_to_the_global_norm():
    p = {"a": numpy.zeros(3), "b": numpy.zeros(4)}
    g = {"a": numpy.full(3, 3.0), "b": numpy.full(4, 4.0)}  # norm sqrt(27 + 64) = sqrt(91)
    O.SGD(lr=1.0, clipnorm=1.0).update(p, g)
    total = numpy.sqrt(sum((v ** 2).sum() for v in p.values()))
    assert total == pytest.approx(1.0, rel=1e-5)
    p2 = {"a": numpy.zeros(3)}
    O.SGD(lr=1.0, clipnorm=100.0).update(p2, {"a": numpy.full(3, 3.0)})
    numpy.testing.assert_allclose(p2["a"], -3.0)  # below the threshold: unchanged gradient


def test_weight_decay_exclusion():
    p = {"W": numpy.ones(2), "b": numpy.ones(2)}
    opt = O.SGD(lr=0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay(["b"])
    opt.update(p, {"W": numpy.zeros(2), "b": numpy.zeros(2)})
    numpy.testing.assert_allclose(p["W"], 0.95)
    numpy.testing.assert_allclose(p["b"], 1.0)


def test_state_below_the_smallest_normal_is_flushed_to_zero(backend):
    with fastnn.using(backend) as ops:
        p = {"W": ops.asarray(numpy.ones(4, dtype=numpy.float32))}
        opt = O.Adam(lr=1e-3)
        opt.update(p, {"W": ops.asarray(numpy.full(4, 1e-36, dtype=numpy.float32))})
        for _ in range(30):  # zero gradients: m decays by 0.9 per step into the subnormal range
            opt.update(p, {"W": ops.asarray(numpy.zeros(4, dtype=numpy.float32))})
        m = host(opt.state["W"][0])
        assert numpy.all((m == 0) | (numpy.abs(m) >= numpy.finfo(numpy.float32).tiny))
        assert numpy.all(m == 0)


def test_spellings_of_every_audience():
    a = O.Adam(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-6)
    assert (a.lr, a.beta1, a.beta2, a.eps) == (0.02, 0.8, 0.99, 1e-6)
    r = O.RMSprop(lr=0.01, decay_rate=0.95)
    assert r.rho == 0.95
    s = O.SGD(0.1, momentum=0.9, nesterov=True)
    assert s.nesterov and s.momentum == 0.9
    with pytest.raises(ValueError, match="lr and learning_rate are synonyms"):
        O.SGD(lr=0.1, learning_rate=0.2)
    with pytest.raises(ValueError, match="lr must be a non-negative number, got -1"):
        O.Adam(lr=-1)
    assert isinstance(O.get("AdaGrad"), O.AdaGrad) and isinstance(O.get("SGD", lr=0.5), O.SGD)
    with pytest.raises(ValueError, match="unknown optimizer 'lion'; valid names: sgd, momentum"):
        O.get("lion")


def test_update_errors_name_the_key():
    with pytest.raises(KeyError, match="grads has no entry for \\['b'\\]"):
        O.SGD().update({"W": numpy.ones(2), "b": numpy.ones(2)}, {"W": numpy.ones(2)})
    with pytest.raises(ValueError, match=r"params\['W'\] has shape \(2,\) but grads\['W'\] has \(3,\)"):
        O.SGD().update({"W": numpy.ones(2)}, {"W": numpy.ones(3)})


def test_schedules():
    s = O.StepDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert [s(0), s(9), s(10), s(25)] == [0.1, 0.1, 0.05, 0.025]
    e = O.ExponentialDecay(1.0, decay_steps=10, decay_rate=0.1)
    assert e(5) == pytest.approx(0.1 ** 0.5) and O.ExponentialDecay(1.0, 10, 0.1, staircase=True)(15) == pytest.approx(0.1)
    c = O.CosineDecay(0.0, decay_steps=100, warmup_steps=10, warmup_target=1.0, alpha=0.1)
    assert c(0) == 0.0 and c(5) == pytest.approx(0.5) and c(10) == pytest.approx(1.0)
    assert c(60) == pytest.approx(0.1 + 0.9 * 0.5) and c(500) == pytest.approx(0.1)
    opt = O.SGD(lr=s)
    params = {"w": numpy.zeros(1)}
    for _ in range(11):
        opt.update(params, {"w": numpy.ones(1)})
    assert params["w"][0] == pytest.approx(-(10 * 0.1 + 0.05))

"""Keras's "mae" and "huber" losses: values and gradients against their formulas (float64, every
backend), central-difference gradients, and a compiled model that trains and saves them."""
import numpy
import pytest

from fastnn import losses, optimizers
from fastnn.backend import get_ops
from fastnn.layers import Dense
from fastnn.models import Sequential, load_model
from fastnn.testing import host


def _data(seed=0):
    rng = numpy.random.default_rng(seed)
    y = rng.standard_normal((7, 3)) * 2
    t = rng.standard_normal((7, 3)) * 2
    return y, t


def _value_and_grad(loss, ops, y, t):
    dx = ops.alloc(y.shape, y.dtype)
    value = float(host(loss.compute(ops, ops.asarray(y), ops.asarray(t), dx)))
    return value, host(dx)


def test_mae_matches_its_formula(backend):
    ops = get_ops(backend)
    y, t = _data()
    value, grad = _value_and_grad(losses.get("mae"), ops, y, t)
    assert value == pytest.approx(numpy.abs(y - t).mean(), rel=1e-12)
    numpy.testing.assert_allclose(grad, numpy.sign(y - t) / y.size, rtol=1e-12)


@pytest.mark.parametrize("delta", [1.0, 0.5, 3.0])
def test_huber_matches_keras_formula(backend, delta):
    ops = get_ops(backend)
    y, t = _data(1)
    e = y - t
    want = numpy.where(numpy.abs(e) <= delta, 0.5 * e ** 2, delta * (numpy.abs(e) - 0.5 * delta)).mean()
    value, grad = _value_and_grad(losses.Huber(delta=delta), ops, y, t)
    assert value == pytest.approx(want, rel=1e-12)
    # central differences, float64, h = 1e-4 (away from the kink |e| = delta on this data)
    h, num = 1e-4, numpy.zeros_like(y)
    for i in numpy.ndindex(*y.shape):
        yp, ym = y.copy(), y.copy()
        yp[i] += h
        ym[i] -= h
        num[i] = (_value_and_grad(losses.Huber(delta=delta), ops, yp, t)[0]
                  - _value_and_grad(losses.Huber(delta=delta), ops, ym, t)[0]) / (2 * h)
    numpy.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_huber_refuses_a_bad_delta():
    with pytest.raises(ValueError, match=r"Huber: delta must be a positive number, got -1"):
        losses.Huber(delta=-1)


@pytest.mark.parametrize("name", ["mae", "mean_absolute_error", "huber"])
def test_compiled_model_trains_and_saves_the_loss(tmp_path, name):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((128, 4)).astype(numpy.float32)
    t = (x @ numpy.array([1.0, -2.0, 0.5, 3.0], numpy.float32))[:, None]
    loss = losses.Huber(delta=0.7) if name == "huber" else name
    model = Sequential([Dense(1, input_shape=(4,))], seed=0)
    model.compile(optimizer=optimizers.Adam(0.05), loss=loss)
    h = model.fit(x, t, batch_size=16, epochs=30, verbose=0, seed=1)
    assert h.history["loss"][-1] < h.history["loss"][0] / 3
    model.save(tmp_path / "m.fastnn")
    back = load_model(tmp_path / "m.fastnn")
    assert type(back.loss) is type(model.loss)
    if name == "huber":
        assert back.loss.delta == 0.7
    assert back.evaluate(x, t, verbose=0) == pytest.approx(model.evaluate(x, t, verbose=0), rel=1e-6)

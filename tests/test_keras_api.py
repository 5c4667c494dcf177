"""Keras API a first-week course hits: ``history.params``/``callback.params``, ``batch_size=None``
(Keras's 32), ``model.get_layer``."""
import numpy
import pytest

from fastnn import callbacks
from fastnn.layers import Dense, Dropout
from fastnn.models import Sequential


def _model():
    m = Sequential([Dense(8, activation="relu", input_shape=(5,), name="hidden"), Dropout(0.1, name="drop"),
                    Dense(3, activation="softmax", name="out")], seed=0)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def _data(n=70):
    rng = numpy.random.default_rng(0)
    return rng.standard_normal((n, 5)).astype(numpy.float32), rng.integers(0, 3, n)


def test_history_and_callbacks_get_keras_params():
    seen = {}

    class Spy(callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.update(self.params)

    x, y = _data()
    h = _model().fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[Spy()])
    assert h.params == {"verbose": 0, "epochs": 3, "steps": 5} == seen     # 70 samples, batches of 16


def test_batch_size_none_is_keras_32():
    x, y = _data(70)
    a, b = _model(), _model()
    ha = a.fit(x, y, batch_size=None, epochs=2, verbose=0, seed=1)
    hb = b.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=1)
    assert ha.history == hb.history and ha.params["steps"] == 3
    assert a.evaluate(x, y, batch_size=None, verbose=0) == b.evaluate(x, y, verbose=0)
    numpy.testing.assert_array_equal(a.predict(x, batch_size=None), b.predict(x))


def test_get_layer_by_name_and_index():
    m = _model()
    assert m.get_layer("drop") is m.layers[1]
    assert m.get_layer(index=-1) is m.layers[2]
    with pytest.raises(ValueError, match=r"no layer named 'nope'; layers: hidden, drop, out"):
        m.get_layer("nope")
    with pytest.raises(ValueError, match=r"index 3 is out of range for 3 layers"):
        m.get_layer(index=3)
    with pytest.raises(ValueError, match=r"exactly one of name and index"):
        m.get_layer()

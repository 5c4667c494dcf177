"""Keras's config and weight API: ``get_config``/``from_config``, ``to_json``/``model_from_json``,
``clone_model``, ``model.weights``, ``layer.get_weights()``/``set_weights()``."""
import json

import numpy
import pytest

from fastnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from fastnn.models import Sequential, clone_model, model_from_json


def _mlp(seed=0):
    m = Sequential([Dense(8, activation="relu", input_shape=(5,), name="hidden"), Dropout(0.25, seed=3),
                    BatchNormalization(), Dense(3, activation="softmax", name="out")], seed=seed, name="mlp")
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def _x():
    return numpy.random.default_rng(0).standard_normal((7, 5)).astype("float32")


def test_get_config_from_config_rebuilds_the_architecture_with_fresh_weights():
    m = _mlp()
    config = m.get_config()
    assert config["name"] == "mlp" and config["input_shape"] == [5]
    assert [spec["class_name"] for spec in config["layers"]] == ["Dense", "Dropout", "BatchNormalization", "Dense"]
    again = Sequential.from_config(config)
    assert again.get_config() == config and again.built
    assert [w.shape for w in again.get_weights()] == [w.shape for w in m.get_weights()]
    assert not numpy.array_equal(again.get_weights()[0], m.get_weights()[0])  # fresh weights, as Keras
    again.set_weights(m.get_weights())
    numpy.testing.assert_array_equal(again.predict(_x()), m.predict(_x()))


def test_to_json_and_model_from_json_round_trip():
    m = _mlp()
    text = m.to_json()
    assert json.loads(text)["class_name"] == "Sequential"
    again = model_from_json(text)
    assert again.get_config() == m.get_config()
    with pytest.raises(ValueError, match="model_from_json: not JSON"):
        model_from_json("{not json")
    with pytest.raises(ValueError, match=r"expected \{'class_name': 'Sequential'"):
        model_from_json(json.dumps({"class_name": "Functional", "config": {}}))


def test_from_config_names_an_unknown_layer_class():
    config = _mlp().get_config()
    config["layers"][1]["class_name"] = "Dropoutt"
    with pytest.raises(ValueError, match=r"layer 1: unknown layer class 'Dropoutt'"):
        Sequential.from_config(config)


def test_clone_model_has_the_architecture_not_the_weights_and_trains():
    m = _mlp()
    c = clone_model(m)
    assert c.get_config() == m.get_config() and c.optimizer is None
    assert any(not numpy.array_equal(a, b) for a, b in zip(c.get_weights(), m.get_weights()))
    c.compile("sgd", "sparse_categorical_crossentropy")
    c.fit(_x(), numpy.array([0, 1, 2, 0, 1, 2, 0]), epochs=1, verbose=0)
    conv = Sequential([Conv2D(2, 3, input_shape=(1, 6, 6), activation="relu"), MaxPooling2D(2), Flatten(), Dense(2)])
    assert clone_model(conv).get_config() == conv.get_config()


def test_model_weights_are_the_live_arrays_in_get_weights_order():
    m = _mlp()
    assert len(m.weights) == len(m.get_weights())
    for w, h in zip(m.weights, m.get_weights()):
        numpy.testing.assert_array_equal(m.ops.asnumpy(w), h)
    m.weights[0][...] = 0  # a live view: the model computes with it
    assert numpy.all(m.get_weights()[0] == 0)


def test_layer_get_and_set_weights():
    m = _mlp()
    m.build()
    layer = m.get_layer("hidden")
    w, b = layer.get_weights()
    assert w.shape == (5, 8) and b.shape == (8,)
    layer.set_weights([w * 2, b + 1])
    numpy.testing.assert_array_equal(m.get_weights()[0], w * 2)
    numpy.testing.assert_array_equal(m.get_weights()[1], b + 1)
    before = m.get_weights()
    with pytest.raises(ValueError, match=r"hidden.set_weights: b has shape \(8,\), got an array of shape \(7,\)"):
        layer.set_weights([w, numpy.zeros(7)])
    with pytest.raises(ValueError, match=r"hidden.set_weights: the layer has 2 weight arrays, got 1"):
        layer.set_weights([w])
    for a, c in zip(before, m.get_weights()):
        numpy.testing.assert_array_equal(a, c)  # nothing written on a mismatch
    assert m.get_layer(index=1).get_weights() == []

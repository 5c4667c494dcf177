"""``fit``'s out-of-memory retry (``TrainStep.guarded``) runs a step again after freeing the caches:
the retried step must change the model exactly as one successful step does. Batch normalization's
running statistics took the batch in during the failed attempt; the retry must not take it in twice."""
import numpy
import pytest

import fastnn
from fastnn.layers import BatchNormalization, Dense, Dropout
from fastnn.models import Sequential


def _model(backend):
    m = Sequential([Dense(8, activation="relu", input_shape=(5,)), BatchNormalization(), Dropout(0.3),
                    Dense(3, activation="softmax")], seed=4, backend=backend)
    m.compile("sgd", "sparse_categorical_crossentropy")
    return m


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not fastnn.testing.has_numba(), reason="needs numba"))])
def test_a_step_retried_after_out_of_memory_equals_one_step(backend, monkeypatch):
    rng = numpy.random.default_rng(0)
    x, y = rng.standard_normal((16, 5)).astype("float32"), rng.integers(0, 3, 16)
    clean, oom = _model(backend), _model(backend)
    for m in (clean, oom):
        m.build()
    last = oom.layers[-1]
    calls = {"n": 0}
    forward = type(last).forward

    def fails_once(self, *args, **kwargs):  # after batch norm took the batch in: a device running out
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("out of memory (simulated)")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(last, "forward", fails_once.__get__(last))
    monkeypatch.setattr(oom.ops, "is_out_of_memory", lambda exc: True)
    monkeypatch.setattr(oom.ops, "free_memory", lambda: None)
    clean.fit(x, y, batch_size=16, epochs=1, verbose=0, seed=1)
    oom.fit(x, y, batch_size=16, epochs=1, verbose=0, seed=1)
    assert calls["n"] == 2  # the step failed once and was retried
    bn_clean, bn_oom = clean.layers[1], oom.layers[1]
    numpy.testing.assert_array_equal(fastnn.asnumpy(bn_oom.running_mean), fastnn.asnumpy(bn_clean.running_mean))
    numpy.testing.assert_array_equal(fastnn.asnumpy(bn_oom.running_var), fastnn.asnumpy(bn_clean.running_var))
    for a, b in zip(oom.get_weights(), clean.get_weights()):
        numpy.testing.assert_array_equal(a, b)

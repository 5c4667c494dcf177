"""The bad-input catalogue: every case gives a clear error of the right type naming what is wrong,
on every backend, before any kernel runs; the odd-but-valid cases work."""
import numpy
import pytest

import fastnn
from fastnn.layers import Dense
from fastnn.models import Sequential

RNG = numpy.random.default_rng(0)
X = RNG.standard_normal((12, 3)).astype(numpy.float32)
T = RNG.integers(0, 3, 12)


def compiled(loss="sparse_categorical_crossentropy", input_shape=(3,)):
    m = Sequential([Dense(4, activation="relu", input_shape=input_shape), Dense(3, activation="softmax")], seed=0)
    m.compile(optimizer="sgd", loss=loss, metrics=["accuracy"])
    return m


def with_nan(a, value=numpy.nan):
    a = a.copy()
    a[2, 1] = value
    return a


CATALOGUE = [
    ("x/y length mismatch", lambda: compiled().fit(X, T[:-1], verbose=0), ValueError, "x has 12 samples but y has 11"),
    ("wrong feature count", lambda: compiled().fit(X[:, :2], T, verbose=0), ValueError,
     r"first layer dense_\d+ expects x of shape \(N, 3\), got \(12, 2\)"),
    ("label out of range", lambda: compiled().fit(X, numpy.where(T == 0, 3, T), verbose=0), ValueError,
     r"labels t must be in \[0, 2\] for 3 classes, got min 1, max 3"),
    ("negative label", lambda: compiled().fit(X, T - 1, verbose=0), ValueError, r"must be in \[0, 2\].*min -1"),
    ("float label", lambda: compiled().fit(X, T + 0.5, verbose=0), ValueError, "whole numbers"),
    ("NaN label", lambda: compiled().fit(X, numpy.where(T == 0, numpy.nan, T), verbose=0), ValueError, "NaN"),
    ("one-hot width", lambda: compiled("categorical_crossentropy").fit(X, numpy.eye(4)[T], verbose=0), ValueError,
     r"one-hot y must have shape \(N, 3\) to match the output layer's 3 units, got \(12, 4\)"),
    ("NaN in x", lambda: compiled().fit(with_nan(X), T, verbose=0), ValueError,
     r"x contains NaN or infinite values \(first at index \(2, 1\)\)"),
    ("inf in x", lambda: compiled().fit(with_nan(X, numpy.inf), T, verbose=0), ValueError, "NaN or infinite"),
    ("empty data", lambda: compiled().fit(X[:0], T[:0], verbose=0), ValueError, "x is empty"),
    ("batch_size 0", lambda: compiled().fit(X, T, batch_size=0, verbose=0), ValueError,
     "batch_size must be a positive integer, got 0"),
    ("batch_size float", lambda: compiled().fit(X, T, batch_size=8.0, verbose=0), ValueError,
     "batch_size must be a positive integer, got 8.0"),
    ("epochs < 0", lambda: compiled().fit(X, T, epochs=-2, verbose=0), ValueError, "epochs must be a non-negative integer"),
    ("validation_split 1", lambda: compiled().fit(X, T, validation_split=1.0, verbose=0), ValueError,
     r"validation_split must be in \[0, 1\), got 1.0"),
    ("validation_split negative", lambda: compiled().fit(X, T, validation_split=-0.1, verbose=0), ValueError,
     r"validation_split must be in \[0, 1\)"),
    ("unknown loss", lambda: compiled(loss="hinge"), ValueError, "unknown loss 'hinge'; valid names: categorical_crossentropy"),
    ("unknown optimizer", lambda: Sequential([Dense(2, input_shape=(3,))]).compile("lbfgs", "mse"), ValueError,
     "unknown optimizer 'lbfgs'; valid names: sgd"),
    ("unknown activation", lambda: Dense(3, activation="swish2"), ValueError, "unknown activation 'swish2'; valid names"),
    ("object dtype", lambda: compiled().fit(X.astype(object), T, verbose=0), TypeError, "x must hold numbers, got dtype object"),
    ("string labels", lambda: compiled().fit(X, T.astype(str), verbose=0), TypeError, "y must hold numbers"),
    ("fit before compile", lambda: Sequential([Dense(2, input_shape=(3,))]).fit(X, T, verbose=0), ValueError,
     r"call compile\(optimizer=..., loss=...\) before fit\(\)"),
    ("evaluate before compile", lambda: Sequential([Dense(2, input_shape=(3,))]).evaluate(X, T), ValueError,
     r"before evaluate\(\)"),
    ("weights before build", lambda: Sequential([Dense(2)]).get_weights(), ValueError,
     r"get_weights\(\) needs a built model"),
    ("1-D x", lambda: compiled().fit(X[:, 0], T, verbose=0), ValueError, r"x must have a batch axis"),
    ("bad validation_data", lambda: compiled().fit(X, T, validation_data=(X,), verbose=0), ValueError,
     r"validation_data must be \(x_val, y_val\)"),
    ("validation labels", lambda: compiled().fit(X, T, validation_data=(X, T + 7), verbose=0), ValueError,
     r"labels t must be in \[0, 2\]"),
]


@pytest.mark.parametrize("case,call,err,match", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_a_clear_error(backend, case, call, err, match):
    with fastnn.using(backend):
        with pytest.raises(err, match=match):
            call()


def test_valid_odd_inputs_work(backend):
    """Integer x is converted to the model's float dtype; non-contiguous and read-only arrays work;
    whole-number float labels and (N, 1) labels are accepted."""
    with fastnn.using(backend):
        m = compiled()
        ro = numpy.asfortranarray(numpy.repeat(X, 2, axis=1)[:, ::2])
        ro.setflags(write=False)
        m.fit(ro, T.astype(numpy.float64), verbose=0)
        m.fit((X * 10).astype(numpy.int64), T.reshape(-1, 1), verbose=0)
        assert m.predict(ro).dtype == numpy.float32
        assert not ro.flags.writeable and numpy.array_equal(ro, X)  # the caller's data is untouched


def test_nothing_is_trained_when_input_is_refused(backend):
    with fastnn.using(backend):
        m = compiled()
        m.build()
        before = m.get_weights()
        with pytest.raises(ValueError):
            m.fit(X, numpy.where(T == 0, 5, T), verbose=0)
        for a, b in zip(before, m.get_weights()):
            numpy.testing.assert_array_equal(a, b)

"""Keras's functional API (``Input``, ``Model(inputs, outputs)``, merge layers, subclassed ``Model``):
gradients against central differences, equality with ``Sequential``, several inputs, saving, errors."""
import numpy
import pytest

import fastnn
from fastnn import optimizers
from fastnn.datasets import load_digits
from fastnn.functions import numerical_gradient
from fastnn.layers import BatchNormalization, Dense, Dropout
from fastnn.layers.merge import Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract, concatenate
from fastnn.models import Input, Model, Sequential, clone_model, load_model, model_from_json
from fastnn.testing import assert_close, host

MERGES = {"add": Add, "subtract": Subtract, "multiply": Multiply, "average": Average, "maximum": Maximum,
          "minimum": Minimum, "concatenate": Concatenate}
REFERENCE = {"add": lambda a, b: a + b, "subtract": lambda a, b: a - b, "multiply": lambda a, b: a * b,
             "average": lambda a, b: (a + b) / 2, "maximum": numpy.maximum, "minimum": numpy.minimum,
             "concatenate": lambda a, b: numpy.concatenate([a, b], axis=-1)}


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def branching(merge, seed=0, dtype="float32", head="softmax"):
    """input -> dense_a -> (dense_b, dense_c) -> merge -> dropout -> concatenate with dense_a -> head:
    a tensor feeding three layers, a merge, and a skip connection."""
    inp = Input(shape=(5,), name="features")
    a = Dense(4, activation="tanh", name="dense_a")(inp)
    b = Dense(4, activation="sigmoid", name="dense_b")(a)
    c = Dense(4, activation="tanh", name="dense_c")(a)
    m = MERGES[merge](name="merged")([b, c])
    m = Dropout(0.25, name="drop")(m)
    z = Concatenate(name="skip")([m, a])
    out = Dense(3, activation=head, name="head")(z)
    return Model(inp, out, seed=seed, dtype=dtype)


def flat_gradient_check(model, x, t):
    """The model's flat gradient from one lr=0 step against central differences of its loss."""
    xd, td = model.prepare(x, t)

    def loss_value(_=None):
        from fastnn.layers.base import StepContext
        with StepContext(model._step):  # the dropout masks of the step train_on_batch takes
            out = model.forward_pass(xd, True)
        return float(model.loss.compute(model.ops, out, td, None))

    numeric = host(numerical_gradient(loss_value, model.flat.p)).copy()
    model.train_on_batch(x, t)  # lr = 0: fills the flat gradient without moving the weights
    analytic = host(model.flat.g).copy()
    assert numpy.abs(analytic).max() > 1e-4  # a real gradient, not zeros
    assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("merge", sorted(MERGES))
def test_graph_gradient_against_central_differences(backend, merge):
    """Fan-out (one tensor into three layers), every merge layer and a skip connection: the flat
    gradient equals numerical gradients in float64."""
    rng = numpy.random.default_rng(1)
    x, t = rng.standard_normal((7, 5)), rng.integers(0, 3, 7)
    with fastnn.using(backend):
        model = branching(merge, seed=3, dtype="float64")
        model.compile(optimizer=optimizers.SGD(lr=0.0), loss="sparse_categorical_crossentropy")
        flat_gradient_check(model, x, t)


def test_two_inputs_gradient_against_central_differences(backend):
    rng = numpy.random.default_rng(2)
    x1, x2, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    with fastnn.using(backend):
        i1, i2 = Input((3,), name="left"), Input((4,), name="right")
        z = Add()([Dense(5, activation="tanh")(i1), Dense(5, activation="tanh")(i2)])
        z = BatchNormalization()(z)
        model = Model([i1, i2], Dense(2)(concatenate([z, i1])), dtype="float64", seed=0)
        model.compile(optimizer=optimizers.SGD(lr=0.0), loss="mse")
        flat_gradient_check(model, [x1, x2], t)


@pytest.mark.parametrize("name", sorted(MERGES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_merge_layers_against_numpy(backend, name, dtype):
    """Forward against the formula; backward against central differences of ``sum(out * dout)``."""
    rng = numpy.random.default_rng(3)
    a, b = (rng.standard_normal((5, 3, 7)).astype(dtype) for _ in range(2))
    dout_shape = (5, 3, 14) if name == "concatenate" else (5, 3, 7)
    dout = rng.standard_normal(dout_shape).astype(dtype)
    with fastnn.using(backend):
        layer = MERGES[name]()
        ops = fastnn.current()
        out = layer.forward([ops.asarray(a), ops.asarray(b)])
        assert_close(host(out), REFERENCE[name](a, b), dtype=dtype)
        grads = [host(g) for g in layer.backward(ops.asarray(dout))]
    a64, b64, d64 = a.astype(numpy.float64), b.astype(numpy.float64), dout.astype(numpy.float64)
    for i, arr in enumerate((a64, b64)):
        def f(_=None):
            return float((REFERENCE[name](a64, b64) * d64).sum())
        numeric = numerical_gradient(f, arr)
        assert_close(grads[i], numeric, rtol=2e-3 if dtype == "float32" else 1e-6, atol=1e-3 if dtype == "float32"
                     else 1e-7)


def test_functional_chain_trains_exactly_as_sequential(backend, digits):
    """The same layers as a chain: the same initial weights, history and final weights bit for bit."""
    (xtr, ttr), (xte, tte) = digits

    def layers():
        return [Dense(32, activation="relu", name="h1"), Dropout(0.2, name="d"), Dense(10, activation="softmax",
                                                                                     name="out")]
    with fastnn.using(backend):
        seq = Sequential(layers(), seed=5)
        seq.build((64,))
        h1, d, out = layers()
        inp = Input((64,))
        fun = Model(inp, out(d(h1(inp))), seed=5)
        fun.build()
        for m in (seq, fun):
            m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        for w1, w2 in zip(seq.get_weights(), fun.get_weights()):
            numpy.testing.assert_array_equal(w1, w2)
        hs = seq.fit(xtr[:400], ttr[:400], epochs=2, batch_size=32, verbose=0, seed=1)
        hf = fun.fit(xtr[:400], ttr[:400], epochs=2, batch_size=32, verbose=0, seed=1)
    assert hs.history == hf.history
    for w1, w2 in zip(seq.get_weights(), fun.get_weights()):
        numpy.testing.assert_array_equal(w1, w2)


def two_input_model(seed=0):
    i1, i2 = Input((40,), name="left"), Input((24,), name="right")
    z = Concatenate()([Dense(32, activation="relu")(i1), Dense(32, activation="relu")(i2)])
    return Model(inputs=[i1, i2], outputs=Dense(10, activation="softmax")(z), seed=seed)


def test_two_inputs_train_evaluate_predict(backend, digits):
    (xtr, ttr), (xte, tte) = digits
    with fastnn.using(backend):
        model = two_input_model()
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        hist = model.fit([xtr[:, :40], xtr[:, 40:]], ttr, epochs=8, batch_size=32, verbose=0, validation_split=0.1,
                         seed=0)
        as_list = model.evaluate([xte[:, :40], xte[:, 40:]], tte, verbose=0)
        as_dict = model.evaluate({"right": xte[:, 40:], "left": xte[:, :40]}, tte, verbose=0)
        probs = model.predict([xte[:, :40], xte[:, 40:]])
        batch = model.train_on_batch([xtr[:32, :40], xtr[:32, 40:]], ttr[:32])
    assert as_list == as_dict
    assert as_list[1] >= 0.85  # 10 seeds: 0.93-0.96
    assert hist.history["val_accuracy"][-1] >= 0.8
    assert probs.shape == (360, 10) and isinstance(probs, numpy.ndarray)
    numpy.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    assert numpy.mean(probs.argmax(1) == tte) == pytest.approx(as_list[1])
    assert len(batch) == 2


def test_several_inputs_refuse_bad_data():
    model = two_input_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    x = numpy.random.default_rng(0).random((10, 64)).astype("float32")
    t = numpy.arange(10) % 10
    with pytest.raises(ValueError, match=r"2 inputs \(left, right\).*list of 2 arrays"):
        model.fit(x, t, verbose=0)
    with pytest.raises(ValueError, match="holds 3 arrays"):
        model.fit([x[:, :40], x[:, 40:], x], t, verbose=0)
    with pytest.raises(ValueError, match=r"missing \['right'\], unknown \['rigth'\]"):
        model.evaluate({"left": x[:, :40], "rigth": x[:, 40:]}, t, verbose=0)
    with pytest.raises(ValueError, match="different sample counts: left 10, right 9"):
        model.fit([x[:, :40], x[:9, 40:]], t, verbose=0)
    with pytest.raises(ValueError, match=r"input 'right' must have shape \(N, 24\), got \(10, 23\)"):
        model.predict([x[:, :40], x[:, 40:63]])


class TwoLayer(Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = Dense(32, activation="relu", name="hidden")
        self.dropout = Dropout(0.1, name="drop")
        self.out = Dense(10, activation="softmax", name="probs")

    def call(self, x, training=False):
        return self.out(self.dropout(self.hidden(x), training=training))


def test_subclassed_model_is_traced_and_trains(backend, digits, tmp_path):
    (xtr, ttr), (xte, tte) = digits
    with fastnn.using(backend):
        model = TwoLayer(seed=4)
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        model.fit(xtr, ttr, epochs=10, batch_size=32, verbose=0, seed=0)
        loss, acc = model.evaluate(xte, tte, verbose=0)
        assert [layer.name for layer in model.layers] == ["hidden", "drop", "probs"]
        model.save(tmp_path / "sub.fastnn")
        loaded = load_model(tmp_path / "sub.fastnn")
        numpy.testing.assert_array_equal(loaded.predict(xte), model.predict(xte))
    assert acc >= 0.9  # 10 seeds: 0.94-0.97
    assert type(loaded).__name__ == "Model"  # the traced graph loads without the subclass


def test_subclass_errors():
    class Plain(Model):
        pass

    with pytest.raises(TypeError, match="needs inputs= and outputs=.*defines call"):
        Plain()

    class Clash(Model):
        def __init__(self):
            super().__init__()
            self.head = Dense(3)

        def call(self, x):
            return self.head(x)

    with pytest.raises(AttributeError, match="attribute 'head' is used by fastnn's Model"):
        Clash()


def test_save_load_config_json_and_clone(backend, digits, tmp_path):
    (xtr, ttr), (xte, tte) = digits
    with fastnn.using(backend):
        model = two_input_model(seed=2)
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        model.fit([xtr[:, :40], xtr[:, 40:]], ttr, epochs=1, verbose=0)
        xs = [xte[:, :40], xte[:, 40:]]
        model.save(tmp_path / "m.fastnn")
        loaded = load_model(tmp_path / "m.fastnn")
        numpy.testing.assert_array_equal(loaded.predict(xs), model.predict(xs))
        assert loaded.evaluate(xs, tte, verbose=0) == model.evaluate(xs, tte, verbose=0)
        loaded.fit(xs, tte, epochs=1, verbose=0)  # the optimizer state came back too
        for clone in (clone_model(model), Model.from_config(model.get_config()), model_from_json(model.to_json())):
            assert [type(layer) for layer in clone.layers] == [type(layer) for layer in model.layers]
            assert clone.graph_config() == model.graph_config()
            clone.set_weights(model.get_weights())
            numpy.testing.assert_array_equal(clone.predict(xs), model.predict(xs))


def test_sequential_takes_a_leading_input():
    model = Sequential([Input(shape=(64,)), Dense(8, activation="relu"), Dense(3, activation="softmax")])
    assert model.count_params() == 64 * 8 + 8 + 8 * 3 + 3
    assert model.input_shape == (64,)


def test_summary_names_the_connections(capsys):
    model = branching("add")
    model.summary()
    text = capsys.readouterr().out
    assert "features (InputLayer)" in text
    assert "Connected to" in text
    assert "merged (Add)" in text and "dense_b, dense_c" in text
    assert "skip (Concatenate)" in text and "drop, dense_a" in text


def test_graph_errors_name_what_is_wrong():
    inp = Input((5,), name="x5")
    d = Dense(4)
    h = d(inp)
    with pytest.raises(ValueError, match="dense.* is called more than once; shared layers"):
        Model(inp, Add()([h, d(h)]))
    other = Input((5,), name="unlisted")
    with pytest.raises(ValueError, match="depends on input 'unlisted', which is not in inputs"):
        Model(inp, Add()([Dense(3)(inp), Dense(3)(other)]))
    with pytest.raises(ValueError, match=r"input\(s\) \['unlisted'\] are not used"):
        Model([inp, other], Dense(2)(inp))
    with pytest.raises(ValueError, match="2 outputs is not supported"):
        Model(inp, [Dense(2)(inp), Dense(3)(inp)])
    with pytest.raises(ValueError, match=r"merged \(Add\): cannot take .*same shape, got \(N, 4\), \(N, 3\)"):
        Add(name="merged")([Dense(4)(inp), Dense(3)(inp)])
    with pytest.raises(ValueError, match=r"takes one input, got a list of 2; join them"):
        Dense(3)([inp, inp])
    with pytest.raises(ValueError, match=r"takes a list of inputs"):
        Add()(inp)
    with pytest.raises(TypeError, match="mix of symbolic tensors and arrays"):
        Add()([inp, numpy.ones((2, 5))])
    with pytest.raises(ValueError, match=r"Concatenate.*agree on every axis but -1.*\(N, 2, 3\), \(N, 4, 3\)"):
        Concatenate()([Input((2, 3)), Input((4, 3))])
    with pytest.raises(ValueError, match=r"Input: shape must be .*got \(None, 10\)"):
        Input(shape=(None, 10))
    with pytest.raises(TypeError, match="symbolic"):
        numpy.asarray(inp)


def test_top_level_names_are_lazy_and_keras_like():
    import subprocess
    import sys

    code = ("import sys, fastnn; assert 'fastnn.models' not in sys.modules; "
            "assert fastnn.Sequential.__name__ == 'Sequential' and fastnn.Model.__name__ == 'Model'; "
            "assert fastnn.Input((3,)).shape == (None, 3); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr

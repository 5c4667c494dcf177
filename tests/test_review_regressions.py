"""Regression tests for bugs found in review (each failed before its fix)."""
import numpy
import pytest

import fastnn
from fastnn import callbacks as C
from fastnn import optimizers
from fastnn.layers import BatchNormalization, Dense, Dropout, Layer, SoftmaxWithLoss
from fastnn.models import Sequential
from fastnn.networks import TwoLayerNet
from fastnn.training import Trainer

RNG = numpy.random.default_rng(0)
X = RNG.standard_normal((33, 4)).astype(numpy.float32)
T = RNG.integers(0, 3, 33)


class Scale(Layer):
    """A user layer written the book's way: ``build(input_shape)`` and ``self.ds = ...`` (a new array)."""

    def build(self, input_shape):
        self.add_weight("s", (input_shape[-1],), "ones")
        self.built = True

    def forward(self, x, train_flg=True, training=None):
        self.x = x
        return x * self.s

    def backward(self, dout):
        self.ds = (dout * self.x).sum(axis=0)
        return dout * self.s


def test_user_layer_that_assigns_its_gradient_trains(backend):
    with fastnn.using(backend):
        m = Sequential([Dense(4, input_shape=(4,)), Scale(), Dense(3, activation="softmax")], seed=0)
        m.compile(optimizer=optimizers.SGD(lr=0.5), loss="sparse_categorical_crossentropy")
        m.build()
        before = fastnn.asnumpy(m.layers[1].s).copy()
        m.fit(X, T, epochs=3, verbose=0)
        after = fastnn.asnumpy(m.layers[1].s)
    assert not numpy.allclose(before, after)
    assert m.layers[1].s.base is not None  # still a view into the flat buffer


def test_mse_metric_reads_probabilities_when_softmax_is_fused():
    m = Sequential([Dense(3, activation="softmax", input_shape=(4,))], seed=0)
    m.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["mse", "mae", "accuracy"])
    onehot = numpy.eye(3, dtype=numpy.float32)[T]
    loss, mse, mae, acc = m.evaluate(X, onehot)
    probs = m.predict(X)
    assert mse == pytest.approx(((probs - onehot) ** 2).mean(), rel=1e-5)
    assert mae == pytest.approx(numpy.abs(probs - onehot).mean(), rel=1e-5)
    assert acc == pytest.approx((probs.argmax(1) == T).mean())


def test_accuracy_of_a_one_column_output_is_binary():
    y = (X[:, 0] > 0).astype(numpy.float32)
    m = Sequential([Dense(1, input_shape=(4,))], seed=0)
    m.compile(optimizer="sgd", loss="mse", metrics=["accuracy"])
    expected = ((m.predict(X)[:, 0] > 0.5) == (y > 0.5)).mean()
    assert m.evaluate(X, y)[1] == pytest.approx(expected) and expected < 1.0


def test_binary_accuracy_thresholds_logits_at_zero_with_from_logits():
    from fastnn.losses import BinaryCrossentropy

    y = (X[:, 0] > 0).astype(numpy.float32)
    m = Sequential([Dense(1, input_shape=(4,))], seed=0)
    m.compile(optimizer="sgd", loss=BinaryCrossentropy(from_logits=True), metrics=["accuracy"])
    logits = m.predict(X)[:, 0]
    assert m.evaluate(X, y)[1] == pytest.approx(((logits > 0) == (y > 0.5)).mean())


def test_recompiling_keeps_the_optimizer_state():
    m = Sequential([Dense(3, activation="softmax", input_shape=(4,))], seed=0)
    opt = optimizers.Adam()
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    m.fit(X, T, epochs=1, verbose=0)
    moments = [s.copy() for s in opt.flat_slots]
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    for a, b in zip(moments, opt.flat_slots):
        numpy.testing.assert_array_equal(a, b)


def test_a_layer_style_loss_object_takes_class_indices():
    m = Sequential([Dense(3, input_shape=(4,))], seed=0)
    m.compile(optimizer="sgd", loss=SoftmaxWithLoss())
    history = m.fit(X, T, epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_keras_batchnorm_takes_a_last_batch_of_one_sample():
    m = Sequential([Dense(5, input_shape=(4,)), BatchNormalization(), Dense(3, activation="softmax")], seed=0)
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    m.fit(X, T, batch_size=32, epochs=1, verbose=0)  # 33 samples: the last batch has one
    assert all(numpy.isfinite(w).all() for w in m.get_weights())


def test_a_model_layer_called_directly_returns_fresh_outputs():
    m = Sequential([Dense(3, activation="relu", input_shape=(4,))], seed=0)
    m.compile(optimizer="sgd", loss="mse")
    m.fit(X, numpy.zeros((33, 3), numpy.float32), epochs=1, verbose=0)
    h1 = m.layers[0].forward(X[:5])
    h1_copy = h1.copy()
    h2 = m.layers[0].forward(X[5:10])
    assert h1 is not h2
    numpy.testing.assert_array_equal(h1, h1_copy)


def test_resume_restores_dropout_seeds(tmp_path):
    """A resumed run whose model drew other dropout seeds still ends bit-identical to the uninterrupted one."""
    def make(seed):
        m = Sequential([Dense(8, activation="relu", input_shape=(4,)), Dropout(0.3), Dense(3, activation="softmax")],
                       seed=seed)
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return m

    reference = make(1)
    reference.fit(X, T, batch_size=8, epochs=3, verbose=0, seed=5)

    class Crash(Exception):
        pass

    def crash(batch, logs):
        if first.optimizer.iterations == 6:
            raise Crash()

    first = make(1)
    with pytest.raises(Crash):
        first.fit(X, T, batch_size=8, epochs=3, verbose=0, seed=5, checkpoint_dir=tmp_path, save_freq=2,
                  callbacks=[C.LambdaCallback(on_batch_end=crash)])
    resumed = make(2)  # other initial weights and dropout seeds: all come from the backup
    resumed.fit(X, T, batch_size=8, epochs=3, verbose=0, seed=5, checkpoint_dir=tmp_path, save_freq=2)
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        numpy.testing.assert_array_equal(a, b)


def test_clear_errors_for_plausible_mistakes():
    m = Sequential([Dense(3, activation="softmax", input_shape=(4,))], seed=0)
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics="accuracy")  # a bare string works
    assert [k.name for k in m.metrics] == ["accuracy"]
    net = TwoLayerNet(4, 5, 3, seed=0)
    trainer = Trainer(net, X, T, X, T, epochs=1, mini_batch_size=8, verbose=False,
                      callbacks=[C.BackupAndRestore("unused")])
    with pytest.raises(TypeError, match="BackupAndRestore saves a fastnn.models.Sequential"):
        trainer.train()

    def broken(epoch, lr):
        return lr * None

    with pytest.raises(TypeError, match="unsupported operand"):
        m.fit(X, T, epochs=1, verbose=0, callbacks=[C.LearningRateScheduler(broken)])


def test_batchnorm_axis_other_than_features_or_channels_is_refused():
    layer = BatchNormalization(axis=-1)
    with pytest.raises(ValueError, match=r"axis=-1 is not supported for inputs of shape \(None, 2, 3, 5\)"):
        layer.build((None, 2, 3, 5))
    BatchNormalization(axis=1).build((None, 2, 3, 5))
    BatchNormalization(axis=-1).build((None, 7))


def test_save_and_load_continue_training_exactly_with_dropout(tmp_path):
    def make():
        m = Sequential([Dense(8, activation="relu", input_shape=(4,)), Dropout(0.3), Dense(3, activation="softmax")],
                       seed=3)
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return m

    a = make()
    a.fit(X, T, epochs=2, verbose=0, seed=1, shuffle=False)
    a.save(tmp_path / "a.fastnn")
    b = fastnn.models.load_model(tmp_path / "a.fastnn")
    a.fit(X, T, epochs=1, verbose=0, seed=2, shuffle=False)
    b.fit(X, T, epochs=1, verbose=0, seed=2, shuffle=False)
    for u, v in zip(a.get_weights(), b.get_weights()):
        numpy.testing.assert_array_equal(u, v)


def test_conv_model_with_callable_initializer_and_regularizer_round_trips(tmp_path):
    from fastnn import regularizers
    from fastnn.layers import Conv2D, Flatten

    def init(shape, rng, dtype):
        return (rng.standard_normal(shape) * 0.1).astype(dtype)

    m = Sequential([Conv2D(3, 3, input_shape=(2, 6, 6), kernel_initializer=init,
                           kernel_regularizer=regularizers.l2(0.1)), Flatten(), Dense(2, activation="softmax")], seed=0)
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    m.save(tmp_path / "c.fastnn")
    loaded = fastnn.models.load_model(tmp_path / "c.fastnn")
    assert loaded.layers[0].kernel_regularizer.l2 == 0.1
    for a, b in zip(m.get_weights(), loaded.get_weights()):
        numpy.testing.assert_array_equal(a, b)


def test_conv_inference_keeps_no_scratch_per_input_shape(backend):
    from fastnn.layers import Conv2D

    with fastnn.using(backend) as ops:
        layer = Conv2D(4, 3, padding="same")
        for n in (1, 2, 3):
            first = layer.forward(ops.asarray(RNG.standard_normal((n, 2, 6, 6))), train_flg=False)
        kept_col = layer.col
        layer.forward(ops.asarray(RNG.standard_normal((2, 2, 6, 6))), train_flg=False)
    assert layer._ws == {} and first.shape == (3, 4, 6, 6)
    assert kept_col.shape[0] == 3 * 36  # a kept layer.col is not overwritten by the next forward


def test_maxpool_of_an_all_minus_inf_window_points_inside_the_plane(fast_backend):
    from fastnn.layers import Pooling

    x = numpy.full((1, 1, 4, 4), -numpy.inf)
    x[..., 2:, 2:] = 1.0
    results = {}
    for name in ("numpy", fast_backend):
        with fastnn.using(name) as ops:
            layer = Pooling(2, 2, stride=2, pad=1)
            layer.forward(ops.asarray(x))
            dx = layer.backward(ops.asarray(numpy.ones((1, 1, 3, 3))))
            results[name] = (fastnn.asnumpy(layer.arg_max), fastnn.asnumpy(dx))
    numpy.testing.assert_array_equal(results["numpy"][0], results[fast_backend][0])
    numpy.testing.assert_array_equal(results["numpy"][1], results[fast_backend][1])
    assert results["numpy"][0].min() >= 0 and results["numpy"][1].sum() == 9


def test_conv_list_input_and_channels_last_hints():
    from fastnn.layers import Conv2D, MaxPooling2D

    y = Conv2D(2, 3).forward(numpy.ones((1, 1, 5, 5)).tolist())
    assert y.shape == (1, 2, 3, 3)
    with pytest.warns(UserWarning, match="looks channels-last"):
        Sequential([Conv2D(4, 3, input_shape=(28, 28, 3))]).build()
    with pytest.raises(ValueError, match=r"x.transpose\(0, 3, 1, 2\)"):
        Sequential([Conv2D(4, 3, input_shape=(8, 8, 1)), MaxPooling2D(2)]).build()


def test_fastnn_np_has_the_module_version():
    from fastnn import np

    assert np.__version__ == fastnn.current().xp.__version__

"""Reliability, round three (issue 16's "your own round"): a hostile user's cases that the round-two
fixes still handled badly, each checked here against the behaviour it must have now.

- Metric objects (``AUC(curve="PR", name="pr_auc")``, ``Precision(thresholds=0.7)``, a default-named
  ``MeanSquaredError()``) were saved by name only: such a file (``save``, ``ModelCheckpoint``, every
  backup) did not load back, and configured metrics came back with their defaults.
- A backup written mid-epoch by a model with a counting metric (``AUC``, ``Precision``, ``Recall``) was
  refused by its own reader ("sums must map metric names to numbers"): the run could never resume.
- Under ``mpiexec -n 2``, ranks whose layers (activation, dropout rate), loss settings, metric settings,
  sample or class weights, backup ``save_freq`` or learning-rate callbacks differ trained on silently or
  aborted the job; now every rank raises, naming what differs, and the job goes on.
- ``training.json`` fields that fit no epoch (``batch`` past its end, a ``count`` that is not the
  samples of the batches before, a ``model_step`` beyond 64 bits, a history longer than its epochs, sums
  of a metric no longer compiled) resumed silently to other weights or logs.
- Flags given as strings (``LSTM(return_sequences="False")``, ``Conv2D(use_bias="False")``, ...) were
  true; a callable ``lr`` returning NaN, a negative, complex or a string (or a growing schedule that
  overflows) trained or crashed mid-fit; sample and class weights, ``set_weights`` values and book-layer
  inputs beyond float32's range became inf; callbacks, activations and ``Input`` took bad settings
  with bare Python errors; the book optimizers took NaN or out-of-range settings, object-dtype
  gradients and float64 gradients beyond a float32 parameter's range; ``numerical_gradient`` on a float16
  or large float32 ``x`` silently returned zeros (``x + h`` rounds back to ``x``); ``AUC`` with a
  huge ``num_thresholds`` hung, also when read from a file.
"""
import json
import textwrap
import time
import zipfile

import numpy
import pytest

import fastnn
from fastnn import callbacks as C
from fastnn import checkpoint, losses, testing
from fastnn import metrics as M
from fastnn import optimizers as O
from fastnn.book import optimizer as BO
from fastnn.errors import FormatError
from fastnn.functions import numerical_gradient
from fastnn.layers import (GRU, LSTM, Activation, Conv1D, Conv2D, Dense, Dropout, Elu, Embedding, Flatten,
                           GlobalAveragePooling1D, GlobalMaxPooling2D, Input, LeakyRelu, SimpleRNN)
from fastnn.models import Sequential, load_model

pytestmark = pytest.mark.filterwarnings("ignore:fastnn. falling back to CPU:RuntimeWarning")

RNG = numpy.random.default_rng(0)
X = RNG.standard_normal((24, 5))
T = RNG.integers(0, 3, 24)


def _mlp(metrics=("accuracy",), opt=None, seed=1):
    m = Sequential([Dense(6, activation="relu", input_shape=(5,)), Dropout(0.2), Dense(3, activation="softmax")],
                   seed=seed, backend="numpy")
    m.compile(optimizer=opt or O.Adam(lr=0.01), loss="sparse_categorical_crossentropy", metrics=list(metrics))
    return m


def _weights(m):
    return [w.copy() for w in m.get_weights()]


def _same(a, b):
    return len(a) == len(b) and all(numpy.array_equal(u, v) for u, v in zip(a, b))


def _metrics_of(m):
    return [(type(x).__name__, x.get_config()) for x in m.metrics]


# ---------------------------------------------------------------- files with metric objects load back
def _metric_objects():
    return ["accuracy", M.AUC(num_thresholds=17, curve="PR", name="pr_auc"), M.Precision(thresholds=0.7),
            M.Recall(name="rec"), M.SparseTopKCategoricalAccuracy(k=2), M.CategoricalAccuracy(name="cat")]


def test_metric_objects_save_and_load_back_with_their_settings(tmp_path):
    m = _mlp(_metric_objects())
    m.fit(X, T, batch_size=8, epochs=1, verbose=0)
    m.save(tmp_path / "m.fastnn")
    loaded = load_model(tmp_path / "m.fastnn")
    assert _metrics_of(loaded) == _metrics_of(m)
    assert loaded.metrics[1].num_thresholds == 17 and loaded.metrics[1].curve == "PR"
    numpy.testing.assert_allclose(loaded.evaluate(X, T, verbose=0), m.evaluate(X, T, verbose=0), rtol=1e-6)


def test_model_checkpoint_files_with_a_named_metric_load_back(tmp_path):
    m = _mlp(["accuracy", M.AUC(name="val_quality")])
    m.fit(X, T, batch_size=8, epochs=2, verbose=0, validation_data=(X, T),
          callbacks=[C.ModelCheckpoint(str(tmp_path / "best.fastnn"), save_best_only=True, monitor="val_val_quality",
                                       mode="max")])
    assert _metrics_of(load_model(tmp_path / "best.fastnn")) == _metrics_of(m)


def test_a_metric_no_file_can_rebuild_is_left_out_with_a_warning_and_the_file_loads(tmp_path):
    m = _mlp(["accuracy", M.Metric("mine", lambda ops, out, t, logits: out.sum())])
    m.build()
    with pytest.warns(RuntimeWarning, match=r"metric 'mine' \(Metric\) is not a fastnn.metrics metric and is not "
                                            r"saved"):
        m.save(tmp_path / "m.fastnn")
    assert [x.name for x in load_model(tmp_path / "m.fastnn").metrics] == ["accuracy"]


def test_a_metric_in_a_file_is_looked_up_in_fastnns_table_and_checked(tmp_path):
    m = _mlp()
    m.build()
    m.save(tmp_path / "m.fastnn")
    for spec, message in (({"class_name": "os.system", "config": {}}, "unknown metric class 'os.system'"),
                          ({"class_name": "AUC", "config": {"num_thresholds": 2_000_000}}, "num_thresholds must be"),
                          (["auc"], "metric 0 must be a name or")):
        with zipfile.ZipFile(tmp_path / "m.fastnn") as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        config = json.loads(members["config.json"])
        config["compile"]["metrics"] = [spec]
        members["config.json"] = json.dumps(config).encode()
        path = tmp_path / "edited.fastnn"
        with zipfile.ZipFile(path, "w") as zf:
            for n, data in members.items():
                zf.writestr(n, data)
        t0 = time.perf_counter()
        with pytest.raises(FormatError, match=message):
            load_model(path)
        assert time.perf_counter() - t0 < 5


def test_a_default_named_metric_object_loads_back(tmp_path):
    m = Sequential([Dense(2, input_shape=(5,))], seed=0, backend="numpy")
    m.compile("adam", "mse", metrics=[M.MeanSquaredError(), M.MeanAbsoluteError(name="mae_x")])
    m.build()
    m.save(tmp_path / "m.fastnn")
    assert [x.name for x in load_model(tmp_path / "m.fastnn").metrics] == ["mean_squared_error", "mae_x"]


def test_a_metric_that_needs_dense_targets_names_itself_when_given_class_indices():
    m = _mlp([M.MeanSquaredError()])
    m.build()
    before = _weights(m)
    with pytest.raises(ValueError, match=r"mean_squared_error: needs targets of the output's shape \(8, 3\), "
                                         r"got \(8,\)"):
        m.fit(X, T, batch_size=8, epochs=1, verbose=0)
    assert _same(m.get_weights(), before)


def test_auc_refuses_a_num_thresholds_it_cannot_count_quickly():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"AUC: num_thresholds must be an integer from 2 to 1000000"):
        M.AUC(num_thresholds=2_000_000)
    assert time.perf_counter() - t0 < 1
    assert M.AUC(num_thresholds=200).thresholds.shape == (200,)


# ---------------------------------------------------------------- backups with counting metrics resume
class _Stop(Exception):
    pass


def _interrupted(folder, metrics, at=5):
    m = _mlp(metrics)

    def boom(batch, logs):
        if m.optimizer.iterations == at:
            raise _Stop()
    with pytest.raises(_Stop):
        m.fit(X, T, batch_size=8, epochs=3, verbose=0, seed=1, checkpoint_dir=folder, save_freq=2,
              callbacks=[C.LambdaCallback(on_batch_end=boom)])


def test_a_backup_mid_epoch_with_counting_metrics_resumes_exactly(tmp_path):
    metrics = ["accuracy", M.AUC(num_thresholds=9), M.Precision(), M.Recall()]
    _interrupted(tmp_path / "ckpt", metrics)
    for path in checkpoint.backup_files(tmp_path / "ckpt"):
        load_model(path)
    resumed = _mlp(metrics)
    h = resumed.fit(X, T, batch_size=8, epochs=3, verbose=0, seed=1, checkpoint_dir=tmp_path / "ckpt", save_freq=2)
    ref = _mlp(metrics)
    h_ref = ref.fit(X, T, batch_size=8, epochs=3, verbose=0, seed=1)
    assert _same(resumed.get_weights(), ref.get_weights())
    assert h.history.keys() == h_ref.history.keys()
    for k in h_ref.history:
        numpy.testing.assert_allclose(h.history[k], h_ref.history[k], rtol=1e-6, err_msg=k)


# ---------------------------------------------------------------- training.json that fits no epoch
def _edit_backups(folder, edit):
    for path in checkpoint.backup_files(folder):
        with zipfile.ZipFile(path) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        training = json.loads(members["training.json"])
        edit(training)
        members["training.json"] = json.dumps(training).encode()
        with zipfile.ZipFile(path, "w") as zf:
            for n, data in members.items():
                zf.writestr(n, data)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update(batch=10**6), r"batch 1000000 is past the end of an epoch of 3 batches"),
    (lambda t: t.update(count=10**15), r"count 1000000000000000 is not the number of samples"),
    (lambda t: t.update(model_step=2**70), r"model_step must be a non-negative integer \(below 2\*\*63\)"),
    (lambda t: t.update(history={"history": {"loss": [1.0, 2.0, 3.0]}, "epoch": [0]}),
     r"history\['loss'\] has 3 values for 1 epochs"),
])
def test_a_backup_whose_position_fits_no_epoch_is_refused_before_any_weight_changes(tmp_path, edit, message):
    _interrupted(tmp_path / "ckpt", ["accuracy"], at=4)
    _edit_backups(tmp_path / "ckpt", edit)
    m = _mlp()
    m.build()
    before = _weights(m)
    with pytest.raises(FormatError, match=message):
        m.fit(X, T, batch_size=8, epochs=3, verbose=0, seed=1, checkpoint_dir=tmp_path / "ckpt", save_freq=2)
    assert _same(m.get_weights(), before)


def test_partial_sums_of_a_metric_compiled_no_more_are_not_carried_on(tmp_path):
    _interrupted(tmp_path / "ckpt", ["accuracy"], at=4)
    _edit_backups(tmp_path / "ckpt", lambda t: t["sums"].update(f1=3.0))
    h = _mlp().fit(X, T, batch_size=8, epochs=3, verbose=0, seed=1, checkpoint_dir=tmp_path / "ckpt", save_freq=2)
    assert sorted(h.history) == ["accuracy", "loss"]


# ---------------------------------------------------------------- flags are True or False, not strings
@pytest.mark.parametrize("make, arg", [
    (lambda v: LSTM(4, return_sequences=v), "return_sequences"), (lambda v: LSTM(4, go_backwards=v), "go_backwards"),
    (lambda v: LSTM(4, unit_forget_bias=v), "unit_forget_bias"), (lambda v: GRU(4, reset_after=v), "reset_after"),
    (lambda v: SimpleRNN(4, use_bias=v), "use_bias"), (lambda v: Conv1D(2, 3, use_bias=v), "use_bias"),
    (lambda v: Conv2D(2, 3, use_bias=v), "use_bias"), (lambda v: GlobalAveragePooling1D(keepdims=v), "keepdims"),
    (lambda v: GlobalMaxPooling2D(keepdims=v), "keepdims"), (lambda v: O.SGD(momentum=0.9, nesterov=v), "nesterov"),
    (lambda v: O.ExponentialDecay(0.1, 10, 0.5, staircase=v), "staircase"),
    (lambda v: O.InverseTimeDecay(0.1, 10, 0.5, staircase=v), "staircase"),
    (lambda v: O.PolynomialDecay(0.1, 10, cycle=v), "cycle"), (lambda v: M.AUC(from_logits=v), "from_logits"),
    (lambda v: losses.BinaryCrossentropy(from_logits=v), "from_logits"),
    (lambda v: C.BackupAndRestore("unused", resume=v), "resume"),
])
def test_a_flag_given_as_a_string_is_refused_by_name(make, arg):
    with pytest.raises(TypeError, match=rf"{arg} must be True or False, got 'False'"):
        make("False")
    make(False)
    make(numpy.bool_(True))


def test_fit_resume_given_as_a_string_is_refused(tmp_path):
    m = _mlp()
    with pytest.raises(TypeError, match=r"BackupAndRestore: resume must be True or False, got 'no'"):
        m.fit(X, T, epochs=1, verbose=0, checkpoint_dir=tmp_path / "ckpt", resume="no")


# ---------------------------------------------------------------- learning rates from functions
@pytest.mark.parametrize("value", [float("nan"), -0.1, 0.1 + 0j, "0.1", None])
def test_a_callable_lr_with_a_bad_value_is_refused_before_the_update(value):
    m = _mlp(opt=O.SGD(lr=lambda step: 0.01 if step < 3 else value))
    with pytest.raises(ValueError, match=r"SGD: lr=<lambda> gave .* at step 3; a learning rate must be a finite "
                                         r"non-negative number"):
        m.fit(X, T, batch_size=8, epochs=3, verbose=0)
    assert m.optimizer.iterations == 3
    assert all(numpy.isfinite(w).all() for w in m.get_weights())


def test_a_growing_schedule_is_refused_by_name_before_its_rate_leaves_the_dtypes_range():
    m = _mlp(opt=O.SGD(lr=O.ExponentialDecay(1e-6, 1, 1e10)))
    with pytest.raises(ValueError, match=r"SGD: lr=1e\+44 at step 5 is beyond float32's range"):
        m.fit(X, T, batch_size=8, epochs=20, verbose=0)
    m64 = Sequential([Dense(3, activation="softmax", input_shape=(5,))], seed=0, dtype="float64", backend="numpy")
    m64.compile(O.SGD(lr=O.ExponentialDecay(1e-6, 1, 1e10)), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"SGD: lr=ExponentialDecay gave inf at step 31"):
        m64.fit(X, T, batch_size=8, epochs=20, verbose=0)


def test_a_learning_rate_beyond_float32_is_refused_before_the_first_update():
    m = _mlp(opt=O.SGD(lr=1e39))
    m.build()
    before = _weights(m)
    with pytest.raises(ValueError, match=r"SGD: lr=1e\+39 at step 0 is beyond float32's range"):
        m.fit(X, T, batch_size=8, epochs=1, verbose=0)
    assert _same(m.get_weights(), before)
    p = {"W": numpy.ones(3, numpy.float32)}
    with pytest.raises(ValueError, match=r"SGD: lr=1e\+39 at step 0 is beyond float32's range"):
        O.SGD(lr=1e39).update(p, {"W": numpy.ones(3, numpy.float32)})
    numpy.testing.assert_array_equal(p["W"], 1)


@pytest.mark.parametrize("value", [0.1j, "abc", float("inf")])
def test_a_learning_rate_scheduler_returning_a_bad_value_is_refused_by_name(value):
    m = _mlp()
    m.build()
    before = _weights(m)
    with pytest.raises(ValueError, match=r"LearningRateScheduler: schedule returned lr=.* for epoch 1"):
        m.fit(X, T, epochs=1, verbose=0, callbacks=[C.LearningRateScheduler(lambda epoch: value)])
    assert _same(m.get_weights(), before)


# ---------------------------------------------------------------- values beyond float32's range
def test_sample_and_class_weights_beyond_float32_are_refused():
    m = _mlp()
    m.build()
    before = _weights(m)
    w = numpy.ones(24)
    w[4] = 1e39
    with pytest.raises(ValueError, match=r"sample_weight has values beyond float32's range \(first at index \(4,\)"):
        m.fit(X, T, epochs=1, verbose=0, sample_weight=w)
    with pytest.raises(ValueError, match=r"class_weight\[1\] = 1e\+39 is beyond float32's range"):
        m.fit(X, T, epochs=1, verbose=0, class_weight={0: 1.0, 1: 1e39})
    with pytest.raises(ValueError, match=r"sample_weight \* class_weight has values beyond float32's range"):
        m.fit(X, T, epochs=1, verbose=0, sample_weight=numpy.full(24, 1e20), class_weight={0: 1e20, 1: 1e20, 2: 1e20})
    with pytest.raises(ValueError, match=r"sample_weight has values beyond float32's range"):
        m.train_on_batch(X[:8], T[:8], sample_weight=w[:8] * 0 + 1e39)
    with pytest.raises(ValueError, match=r"sample_weight has values beyond float32's range"):
        m.evaluate(X, T, sample_weight=w, verbose=0)
    with pytest.raises(ValueError, match=r"sample_weight has values beyond float32's range"):
        m.fit(iter([(X[:8], T[:8], w[:8] * 0 + 1e39)]), epochs=1, verbose=0)
    assert _same(m.get_weights(), before)
    m64 = Sequential([Dense(3, activation="softmax", input_shape=(5,))], seed=0, dtype="float64", backend="numpy")
    m64.compile("sgd", "sparse_categorical_crossentropy")
    m64.fit(X, T, epochs=1, verbose=0, sample_weight=w * 0 + 1e39)  # in range for a float64 model


def test_set_weights_and_pretrained_embeddings_beyond_float32_are_refused():
    m = _mlp()
    m.build()
    before = _weights(m)
    ws = [w.astype(numpy.float64) for w in m.get_weights()]
    ws[2][1, 0] = -1e39
    with pytest.raises(ValueError, match=r"set_weights: .* has values beyond float32's range "
                                         r"\(first at index \(1, 0\)"):
        m.set_weights(ws)
    with pytest.raises(ValueError, match=r"set_weights: W has values beyond float32's range"):
        m.layers[0].set_weights([numpy.full((5, 6), 1e39), numpy.zeros(6)])
    assert _same(m.get_weights(), before)
    with pytest.raises(TypeError, match=r"must hold real numbers, got dtype complex128"):
        m.set_weights([w.astype(complex) for w in before])
    table = numpy.zeros((10, 2))
    table[3, 1] = 1e39
    emb = Sequential([Embedding(10, 2, weights=[table], input_shape=(3,)), Flatten(), Dense(1)], seed=0,
                     backend="numpy")
    with pytest.raises(ValueError, match=r"\(Embedding\): weights has values beyond float32's range"):
        emb.build()


def test_a_book_layer_refuses_float64_input_beyond_its_float32_weights():
    from fastnn.book.layers import Affine

    layer = Affine(numpy.ones((3, 2), numpy.float32), numpy.zeros(2, numpy.float32))
    x = numpy.ones((2, 3))
    x[1, 2] = 1e39
    with pytest.raises(ValueError, match=r"x has values beyond float32's range \(first at index \(1, 2\)"):
        layer.forward(x)
    assert fastnn.asnumpy(layer.forward(numpy.ones((2, 3)))).dtype == numpy.float32


# ---------------------------------------------------------------- settings named in every error
@pytest.mark.parametrize("make, message", [
    (lambda: C.EarlyStopping(patience=float("nan")), r"EarlyStopping: patience must be a non-negative integer"),
    (lambda: C.EarlyStopping(min_delta="abc"), r"EarlyStopping: min_delta must be a finite number"),
    (lambda: C.EarlyStopping(min_delta=float("nan")), r"EarlyStopping: min_delta must be a finite number"),
    (lambda: C.EarlyStopping(monitor=5), r"EarlyStopping: monitor must be the name of a logged value"),
    (lambda: C.ReduceLROnPlateau(factor="0.5"), r"ReduceLROnPlateau: factor must be a finite number"),
    (lambda: C.ReduceLROnPlateau(min_lr=float("nan")), r"ReduceLROnPlateau: min_lr must be a finite number >= 0"),
    (lambda: C.ReduceLROnPlateau(patience=float("nan")), r"ReduceLROnPlateau: patience must be a non-negative"),
    (lambda: C.ModelCheckpoint("m.fastnn", monitor=None), r"ModelCheckpoint: monitor must be the name"),
    (lambda: Activation("elu", alpha="x"), r"\(Activation\): alpha must be a finite real number, got 'x'"),
    (lambda: Elu(alpha=1j), r"Elu: alpha must be a finite number > 0, got 1j"),
    (lambda: LeakyRelu(alpha=float("nan")), r"LeakyRelu: alpha must be a finite number > 0, got nan"),
    (lambda: Input((3,), dtype="floaty"), r"Input: dtype must be a real numeric dtype .* got 'floaty'"),
    (lambda: Input((3,), dtype="complex64"), r"Input: dtype must be a real numeric dtype .* got 'complex64'"),
])
def test_bad_settings_are_refused_naming_class_and_argument(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_good_callback_settings_still_work():
    C.EarlyStopping(monitor="loss", patience=2, min_delta=1e-3, baseline=0.5, start_from_epoch=1)
    C.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1e-3, min_lr=1e-6, cooldown=2)
    Input((3,), dtype="int32")


# ---------------------------------------------------------------- the book optimizers
def _params():
    rng = numpy.random.default_rng(1)
    return {"W1": rng.standard_normal((3, 2)), "b1": numpy.zeros(2), "W2": rng.standard_normal((2, 2))}


def _grads(p):
    return {k: numpy.ones_like(v) for k, v in p.items()}


@pytest.mark.parametrize("make, message", [
    (lambda: BO.Adam(lr=float("nan")), r"Adam: lr must be a finite number >= 0, got nan"),
    (lambda: BO.Adam(beta2=1.0), r"Adam: beta2 must be a finite number in \[0, 1\), got 1.0"),
    (lambda: BO.Adam(beta1=-0.1), r"Adam: beta1 must be"),
    (lambda: BO.Momentum(lr=0.1j), r"Momentum: lr must be a finite number >= 0, got 0.1j"),
    (lambda: BO.Nesterov(momentum=1.5), r"Nesterov: momentum must be a finite number in \[0, 1\]"),
    (lambda: BO.RMSprop(decay_rate="0.9"), r"RMSprop: decay_rate must be"),
    (lambda: BO.SGD(lr="abc"), r"SGD: lr must be a finite number >= 0, got 'abc'"),
])
def test_book_optimizer_settings_are_checked_before_anything_changes(make, message):
    p = _params()
    before = {k: v.copy() for k, v in p.items()}
    opt = make()
    with pytest.raises(ValueError, match=message):
        opt.update(p, _grads(p))
    assert all(numpy.array_equal(p[k], before[k]) for k in p)


def test_book_optimizer_settings_changed_later_are_checked_too():
    p = _params()
    opt = BO.SGD(lr=0.1)
    opt.update(p, _grads(p))
    opt.lr = float("inf")
    with pytest.raises(ValueError, match=r"SGD: lr must be a finite number >= 0, got inf"):
        opt.update(p, _grads(p))


@pytest.mark.parametrize("bad, message", [
    (lambda p, g: g.__setitem__("W2", numpy.array([[1, None], [2, 3]], dtype=object)),
     r"grads\['W2'\] must be a real numeric array, got ndarray of dtype object"),
    (lambda p, g: g.__setitem__("W2", numpy.full((2, 2), 1e39)) or p.__setitem__("W2", p["W2"].astype(numpy.float32)),
     r"grads\['W2'\] has values beyond float32's range"),
    (lambda p, g: (p.__setitem__("n", 1.0), g.__setitem__("n", numpy.array([1.0, 2.0]))),
     r"params\['n'\] is a number, so grads\['n'\] must be one too, got ndarray of shape \(2,\)"),
])
@pytest.mark.parametrize("opt", ["SGD", "Adam", "RMSprop"])
def test_book_update_refuses_gradients_it_would_mangle_before_changing_anything(opt, bad, message):
    p = _params()
    g = _grads(p)
    bad(p, g)
    before = {k: numpy.array(v, copy=True) for k, v in p.items()}
    with pytest.raises((TypeError, ValueError), match=message):
        getattr(BO, opt)().update(p, g)
    assert all(numpy.array_equal(p[k], before[k]) for k in p)


# ---------------------------------------------------------------- numerical_gradient's step
@pytest.mark.parametrize("x, dtype", [([1.0, 2.0], numpy.float16), ([3000.0, -5000.0], numpy.float32)])
def test_numerical_gradient_refuses_a_step_below_the_precision_of_x(x, dtype):
    x = numpy.array(x, dtype)
    before = x.copy()
    with pytest.raises(ValueError, match=rf"numerical_gradient: h=0.0001 is below the precision of {numpy.dtype(dtype)}"
                                         rf" at x\[\(0,\)\]"):
        numerical_gradient(lambda a: float((a.astype(numpy.float64) ** 2).sum()), x)
    numpy.testing.assert_array_equal(x, before)


def test_numerical_gradient_divides_by_the_step_float32_really_takes():
    x = numpy.array([150.0, -70.0, 0.3], numpy.float32)
    g = numerical_gradient(lambda a: float((a.astype(numpy.float64) ** 2).sum()), x)
    numpy.testing.assert_allclose(g, 2 * x.astype(numpy.float64), rtol=1e-6)


def test_numerical_gradient_keeps_the_books_divisor_in_float64():
    x = numpy.array([0.3, -1.7, 12.5])
    f = lambda a: float(numpy.sin(a).sum())  # noqa: E731
    expected = []
    for i in range(3):  # the book's loop: x[i] + h, x[i] - h, divided by 2h
        a = x.copy()
        a[i] = x[i] + 1e-4
        plus = f(a)
        a[i] = x[i] - 1e-4
        expected.append((plus - f(a)) / (2 * 1e-4))
    numpy.testing.assert_array_equal(numerical_gradient(f, x), expected)


def test_numerical_gradient_refuses_a_read_only_x_by_name():
    x = numpy.zeros(2)
    x.setflags(write=False)
    with pytest.raises(ValueError, match=r"numerical_gradient: x is read-only"):
        numerical_gradient(lambda a: float(a.sum()), x)


# ---------------------------------------------------------------- ranks that disagree (mpiexec -n 2)
_DIFFER = textwrap.dedent('''
    import sys, tempfile
    import numpy as np
    import fastnn
    from fastnn import distributed, losses, metrics as M, optimizers as O, callbacks as C
    from fastnn.layers import Dense, Dropout
    from fastnn.models import Sequential

    fastnn.use("numpy")
    comm = distributed.init()
    last = comm.rank == comm.size - 1
    rng = np.random.default_rng(0)
    X, T = rng.standard_normal((41, 6)), rng.integers(0, 3, 41)

    def build(act="relu", rate=0.25, metrics=("accuracy",), logits=False):
        out = Dense(3, activation=None if logits else "softmax")
        m = Sequential([Dense(8, activation=act, input_shape=(6,)), Dropout(rate), out], seed=1, dtype="float64")
        loss = losses.SparseCategoricalCrossentropy(from_logits=True) if logits else "sparse_categorical_crossentropy"
        m.compile(optimizer=O.Adam(lr=0.01), loss=loss, metrics=list(metrics))
        return m

    setting = sys.argv[1]
    kw = dict(batch_size=10, epochs=2, verbose=0, seed=3)
    if setting == "activation":
        m = build(act="tanh" if last else "relu")
    elif setting == "dropout_rate":
        m = build(rate=0.5 if last else 0.25)
    elif setting == "auc":
        m = build(metrics=[M.AUC(num_thresholds=50 if last else 20)])
    elif setting == "sample_weight":
        m = build()
        kw["sample_weight"] = np.full(41, 2.0) if last else np.ones(41)
    elif setting == "class_weight":
        m = build()
        kw["class_weight"] = {0: 1.0, 1: 3.0 if last else 1.0, 2: 1.0}
    elif setting == "save_freq":
        m = build()
        kw.update(checkpoint_dir=comm.bcast_obj(tempfile.mkdtemp() if comm.rank == 0 else None),
                  save_freq=3 if last else 2)
    elif setting == "lr_callback":
        m = build()
        kw["callbacks"] = [C.LearningRateScheduler(lambda epoch: 0.02 if last else 0.01)]
    try:
        m.fit(X, T, **kw)
    except Exception as e:
        print(f"rank {comm.rank}: caught {type(e).__name__}: " + str(e).replace(chr(10), " | "), flush=True)
    else:
        print(f"rank {comm.rank}: fit returned", flush=True)
    m = build()
    m.fit(X, T, batch_size=10, epochs=1, verbose=0, seed=3)
    assert len(set(comm.allgather_obj(distributed.checksum(*m.get_weights())))) == 1
    print(f"rank {comm.rank}: recovered", flush=True)
''')

_NEEDLES = {
    "activation": "define a different model or optimizer than rank 0 (layer settings)",
    "dropout_rate": "define a different model or optimizer than rank 0 (layer settings)",
    "auc": "define a different model or optimizer than rank 0 (metrics)",
    "sample_weight": "sample weights (digest)",
    "class_weight": "sample weights (digest)",
    "save_freq": "callbacks: ['BackupAndRestore(save_freq=2)'] on rank 0; ['BackupAndRestore(save_freq=3)'] on rank 1",
    "lr_callback": "the ranks would train epoch 1 with different learning rates (0.01 on rank 0; 0.02 on rank 1)",
}


@pytest.mark.skipif(testing.why_no_mpi() is not None, reason=str(testing.why_no_mpi()))
@pytest.mark.parametrize("setting", list(_NEEDLES))
def test_ranks_that_differ_in_settings_fit_does_not_gather_yet_fail_on_every_rank(tmp_path, setting):
    script = tmp_path / "differ.py"
    script.write_text(_DIFFER)
    rc, out, _ = testing.run_script(script, setting, ranks=2, timeout=60)
    for rank in (0, 1):
        line = next((x for x in out.splitlines() if x.startswith(f"rank {rank}: caught")), None)
        assert line is not None, f"rank {rank} did not raise:\n{out[-3000:]}"
        assert _NEEDLES[setting] in line, line
        assert f"rank {rank}: recovered" in out, out[-3000:]
    assert rc == 0, out[-3000:]

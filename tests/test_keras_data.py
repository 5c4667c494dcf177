"""Keras's data arguments: ``fit`` on generators and iterables (``steps_per_epoch``,
``validation_steps``), ``sample_weight``/``class_weight``, metric objects (``AUC``, ``Precision``,
``Recall``, top-k), and ``evaluate``/``predict`` verbosity."""
import io
import warnings

import numpy
import pytest

import fastnn
from fastnn import metrics, optimizers
from fastnn.datasets import DataLoader, load_digits
from fastnn.functions import numerical_gradient
from fastnn.layers import Dense
from fastnn.models import Sequential
from fastnn.testing import assert_close, host


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def mlp(seed=0, dtype="float32", out=10, head="softmax"):
    return Sequential([Dense(16, activation="tanh", input_shape=(64,)), Dense(out, activation=head)], seed=seed,
                      dtype=dtype)


# ------------------------------------------------------------------ sample and class weights
def per_sample_xent(p, t):
    return -numpy.log(p[numpy.arange(len(t)), t])


@pytest.mark.parametrize("loss,head,targets", [
    ("sparse_categorical_crossentropy", "softmax", "index"),
    ("categorical_crossentropy", "softmax", "one_hot"),
    ("binary_crossentropy", "sigmoid", "binary"),
    ("mse", None, "dense"),
    ("mae", None, "dense"),
    ("huber", None, "dense"),
])
def test_weighted_gradient_against_central_differences(backend, loss, head, targets):
    """Keras's weighted loss ``sum_i w_i l_i / N``: its gradient equals numerical gradients."""
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((7, 64))
    out = 1 if targets == "binary" else 3
    t = {"index": rng.integers(0, 3, 7), "one_hot": numpy.eye(3)[rng.integers(0, 3, 7)],
         "binary": rng.integers(0, 2, (7, 1)).astype(float), "dense": rng.standard_normal((7, 3))}[targets]
    w = rng.uniform(0.1, 3.0, 7)
    with fastnn.using(backend):
        model = mlp(seed=1, dtype="float64", out=out, head=head)
        model.compile(optimizer=optimizers.SGD(lr=0.0), loss=loss)
        model.build()
        xd, td = model.prepare(x, t)
        wd = model.ops.asarray(w)

        def value(_=None):
            return float(model.loss.compute_weighted(model.ops, model.forward_pass(xd, True), td, None, wd))

        numeric = host(numerical_gradient(value, model.flat.p)).copy()
        reported = model.train_on_batch(x, t, sample_weight=w)
        analytic = host(model.flat.g).copy()
        plain = model.test_on_batch(x, t)
    assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)
    assert reported == pytest.approx(value())
    assert reported != pytest.approx(plain)  # the weights changed the loss


def test_weighted_loss_is_keras_formula(digits):
    (xtr, ttr), _ = digits
    model = mlp(seed=2, dtype="float64")
    model.compile("sgd", "sparse_categorical_crossentropy")
    w = numpy.random.default_rng(3).uniform(0, 2, 100)
    p = model.predict(xtr[:100], verbose=0)
    expected = (w * per_sample_xent(p, ttr[:100])).sum() / 100
    assert model.evaluate(xtr[:100], ttr[:100], sample_weight=w, verbose=0, batch_size=32) == pytest.approx(expected)


def test_class_weight_is_sample_weight_by_class(backend, digits):
    (xtr, ttr), _ = digits
    table = {0: 3.0, 1: 0.5, 7: 2.0}  # the other classes weigh 1, as in Keras
    per_sample = numpy.array([table.get(int(c), 1.0) for c in ttr])
    results = []
    with fastnn.using(backend):
        for kwargs in ({"class_weight": table}, {"sample_weight": per_sample}):
            model = mlp(seed=4)
            model.compile("adam", "sparse_categorical_crossentropy")
            results.append((model.fit(xtr, ttr, epochs=2, verbose=0, seed=0, **kwargs).history, model.get_weights()))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        numpy.testing.assert_array_equal(a, b)


def test_unit_weights_train_exactly_as_none(digits):
    (xtr, ttr), _ = digits
    out = []
    for kwargs in ({}, {"sample_weight": numpy.ones(len(xtr))}):
        model = mlp(seed=5, dtype="float64")
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(xtr, ttr, epochs=1, verbose=0, seed=0, **kwargs)
        out.append(model.get_weights())
    for a, b in zip(*out):
        numpy.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_weight_errors(digits):
    (xtr, ttr), _ = digits
    model = mlp()
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(1437,\).*got \(10,\)"):
        model.fit(xtr, ttr, sample_weight=numpy.ones(10), verbose=0)
    with pytest.raises(ValueError, match="sample_weight must be finite and non-negative; sample 3 has -1.0"):
        model.fit(xtr, ttr, sample_weight=numpy.r_[numpy.ones(3), -1.0, numpy.ones(1433)], verbose=0)
    with pytest.raises(ValueError, match=r"class_weight\[2\] must be a finite non-negative number, got nan"):
        model.fit(xtr, ttr, class_weight={2: float("nan")}, verbose=0)
    with pytest.raises(ValueError, match="class_weight keys must be class indices"):
        model.fit(xtr, ttr, class_weight={"cat": 1.0}, verbose=0)
    reg = mlp(head=None, out=3)
    reg.compile("adam", "mse")
    with pytest.raises(ValueError, match="class_weight needs class targets, but loss 'mse'"):
        reg.fit(xtr, numpy.zeros((len(xtr), 3)), class_weight={0: 1.0}, verbose=0)


# ------------------------------------------------------------------ generators and iterables
def test_fit_on_a_dataloader_equals_fit_on_its_batches(digits):
    """A re-iterable (DataLoader) and a list of the same batches give the same training."""
    (xtr, ttr), (xte, tte) = digits
    loader = DataLoader(xtr, ttr, batch_size=64, shuffle=False)
    results = []
    for source in (loader, [(xb, tb) for xb, tb in loader]):
        model = mlp(seed=6)
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        hist = model.fit(source, epochs=3, verbose=0, validation_data=(xte, tte))
        results.append((hist.history, model.get_weights()))
    assert results[0][0] == results[1][0]
    assert results[0][0]["loss"][-1] < results[0][0]["loss"][0]
    arrays = mlp(seed=6)
    arrays.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    arrays.fit(xtr, ttr, batch_size=64, epochs=3, shuffle=False, verbose=0)
    for a, b in zip(results[0][1], arrays.get_weights()):  # the same batches in the same order as arrays
        numpy.testing.assert_array_equal(a, b)


def test_generator_with_steps_per_epoch_reads_on(digits):
    (xtr, ttr), (xte, tte) = digits
    seen = []

    def batches():
        start = 0
        while True:
            seen.append(start)
            yield xtr[start:start + 32], ttr[start:start + 32]
            start = (start + 32) % 1408

    model = mlp(seed=7)
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    hist = model.fit(batches(), steps_per_epoch=10, epochs=3, verbose=0,
                     validation_data=DataLoader(xte, tte, 60, shuffle=False), validation_steps=4)
    assert seen[:30] == [32 * i for i in range(30)]  # epoch 2 continues where epoch 1 stopped
    assert len(hist.history["loss"]) == 3 and hist.params["steps"] == 10
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_one_shot_generator_runs_out_with_a_warning(digits):
    (xtr, ttr), _ = digits
    model = mlp()
    model.compile("adam", "sparse_categorical_crossentropy")
    batches = ((xtr[i:i + 100], ttr[i:i + 100]) for i in range(0, 300, 100))
    with pytest.warns(UserWarning, match="ran out of data at epoch 2"):
        hist = model.fit(batches, epochs=5, verbose=0)
    assert len(hist.history["loss"]) == 1


def test_sequence_like_source_and_weighted_batches(digits):
    (xtr, ttr), _ = digits

    class Batches:  # Keras's PyDataset protocol: __len__, __getitem__, on_epoch_end
        ended = 0

        def __len__(self):
            return 5

        def __getitem__(self, i):
            rows = slice(i * 50, (i + 1) * 50)
            return xtr[rows], ttr[rows], numpy.full(50, 2.0)

        def on_epoch_end(self):
            Batches.ended += 1

    model = mlp(seed=8, dtype="float64")
    model.compile(optimizers.SGD(lr=0.1), "sparse_categorical_crossentropy")
    hist = model.fit(Batches(), epochs=2, verbose=0)
    plain = mlp(seed=8, dtype="float64")
    plain.compile(optimizers.SGD(lr=0.2), "sparse_categorical_crossentropy")  # weight 2 == twice the step
    plain.fit(xtr[:250], ttr[:250], batch_size=50, shuffle=False, epochs=2, verbose=0)
    assert Batches.ended == 2
    for a, b in zip(model.get_weights(), plain.get_weights()):
        numpy.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert hist.history["loss"][0] > 0


def test_evaluate_and_predict_take_generators(digits):
    (xtr, ttr), (xte, tte) = digits
    model = mlp(seed=9)
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(xtr, ttr, epochs=2, verbose=0)
    full = model.evaluate(xte, tte, verbose=0, batch_size=40)
    streamed = model.evaluate(((xte[i:i + 40], tte[i:i + 40]) for i in range(0, 360, 40)), verbose=0)
    assert streamed == pytest.approx(full, rel=1e-6)
    probs = model.predict((xte[i:i + 40] for i in range(0, 360, 40)), verbose=0)
    numpy.testing.assert_allclose(probs, model.predict(xte, verbose=0), rtol=1e-5, atol=1e-7)
    assert model.predict(DataLoader(xte, tte, 100, shuffle=False), steps=2, verbose=0).shape == (200, 10)


def test_stream_errors(digits):
    (xtr, ttr), _ = digits
    model = mlp()
    model.compile("adam", "sparse_categorical_crossentropy")
    loader = DataLoader(xtr, ttr, 32)
    with pytest.raises(ValueError, match="do not give batch_size with a generator"):
        model.fit(loader, batch_size=64, verbose=0)
    with pytest.raises(ValueError, match="validation_split needs arrays"):
        model.fit(loader, validation_split=0.1, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch is for a generator"):
        model.fit(xtr, ttr, steps_per_epoch=3, verbose=0)
    with pytest.raises(ValueError, match=r"each batch must be a tuple \(x, y\)"):
        model.fit([(xtr[:4], ttr[:4], None, None)], verbose=0)
    with pytest.raises(ValueError, match="needs targets"):
        model.fit([(xtr[:4],)], verbose=0)
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 64\), got \(4, 63\)"):
        model.fit([(xtr[:4, :63], ttr[:4])], verbose=0)


# ------------------------------------------------------------------ metric objects
def binary_problem(seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((600, 64)).astype("float32")
    y = (x[:, 0] + 0.7 * x[:, 1] + rng.standard_normal(600) > 0).astype("float32")
    return x, y


def roc_auc_reference(p, y, num_thresholds):
    """Keras's AUC (ROC, interpolation) from its published definition, in plain NumPy."""
    eps = 1e-7
    thr = numpy.array([-eps] + [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)] + [1 + eps])
    pred = p[None, :] > thr[:, None]
    tp, fp = (pred & (y == 1)).sum(1), (pred & (y == 0)).sum(1)
    tpr, fpr = tp / (y == 1).sum(), fp / (y == 0).sum()
    return float(numpy.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))


def pr_auc_reference(p, y, num_thresholds):
    """Keras's PR AUC (Davis and Goadrich interpolation), from its published definition."""
    eps = 1e-7
    thr = numpy.array([-eps] + [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)] + [1 + eps])
    pred = p[None, :] > thr[:, None]
    tp, fp = (pred & (y == 1)).sum(1).astype(float), (pred & (y == 0)).sum(1).astype(float)
    fn = (y == 1).sum() - tp
    total = 0.0
    for i in range(num_thresholds - 1):
        dtp, pa, pb = tp[i] - tp[i + 1], tp[i] + fp[i], tp[i + 1] + fp[i + 1]
        if pa - pb <= 0 or tp[i + 1] + fn[i + 1] <= 0:
            continue
        slope = dtp / (pa - pb)
        intercept = tp[i + 1] - slope * pb
        ratio = pa / pb if pa > 0 and pb > 0 else 1.0
        total += slope * (dtp + intercept * numpy.log(ratio)) / (tp[i + 1] + fn[i + 1])
    return total


def test_binary_metric_objects_against_their_definitions(backend):
    x, y = binary_problem()
    with fastnn.using(backend):
        model = mlp(seed=10, out=1, head="sigmoid")
        model.compile("adam", "binary_crossentropy", [
            "accuracy", metrics.AUC(), metrics.AUC(curve="PR", name="pr_auc", num_thresholds=50),
            metrics.Precision(), metrics.Recall(), metrics.Precision(thresholds=0.7, name="p70"),
            metrics.BinaryAccuracy(threshold=0.3, name="acc30")])
        model.fit(x, y, epochs=3, verbose=0, batch_size=64)
        logs = model.evaluate(x, y, verbose=0, batch_size=50, return_dict=True)  # sums over 12 batches
        p = model.predict(x, verbose=0).ravel().astype(numpy.float64)
    pred = p > 0.5
    assert logs["precision"] == pytest.approx((pred & (y == 1)).sum() / pred.sum(), abs=1e-6)
    assert logs["recall"] == pytest.approx((pred & (y == 1)).sum() / (y == 1).sum(), abs=1e-6)
    assert logs["p70"] == pytest.approx(((p > 0.7) & (y == 1)).sum() / (p > 0.7).sum(), abs=1e-6)
    assert logs["acc30"] == pytest.approx(((p > 0.3) == (y == 1)).mean(), abs=1e-6)
    assert logs["auc"] == pytest.approx(roc_auc_reference(p, y, 200), abs=2e-3)  # float32 outputs at thresholds
    assert logs["pr_auc"] == pytest.approx(pr_auc_reference(p, y, 50), abs=2e-3)
    assert 0.5 < logs["auc"] < 1


def test_top_k_and_class_metrics(backend, digits):
    (xtr, ttr), (xte, tte) = digits
    with fastnn.using(backend):
        model = mlp(seed=11)
        model.compile("adam", "sparse_categorical_crossentropy", [
            "accuracy", metrics.SparseTopKCategoricalAccuracy(k=3, name="top3"), "sparse_top_k_categorical_accuracy",
            metrics.Precision(class_id=4, name="precision_4"), metrics.Recall(top_k=2, name="recall_top2")])
        model.fit(xtr, ttr, epochs=2, verbose=0)
        logs = model.evaluate(xte, tte, verbose=0, return_dict=True)
        p = model.predict(xte, verbose=0)
    ranks = (p > p[numpy.arange(len(tte)), tte][:, None]).sum(1)
    assert logs["top3"] == pytest.approx((ranks < 3).mean(), abs=1e-6)
    assert logs["sparse_top_k_categorical_accuracy"] == pytest.approx((ranks < 5).mean(), abs=1e-6)  # Keras's k=5
    assert logs["accuracy"] < logs["top3"] < logs["sparse_top_k_categorical_accuracy"]
    onehot = numpy.eye(10)[tte] > 0.5
    pred4 = p[:, 4] > 0.5
    assert logs["precision_4"] == pytest.approx((pred4 & onehot[:, 4]).sum() / max(pred4.sum(), 1), abs=1e-6)
    top2 = p >= numpy.sort(p, axis=1)[:, -2:-1]
    assert logs["recall_top2"] == pytest.approx((top2 & onehot).sum() / onehot.sum(), abs=1e-6)
    assert logs["accuracy"] <= logs["recall_top2"]


def test_metric_name_clash_is_refused():
    model = mlp(out=1, head="sigmoid")
    with pytest.raises(ValueError, match="more than one metric .* named 'auc'"):
        model.compile("adam", "binary_crossentropy", ["auc", metrics.AUC()])
    with pytest.raises(ValueError, match="AUC: curve must be 'ROC' or 'PR'"):
        metrics.AUC(curve="XYZ")
    with pytest.raises(ValueError, match="Precision: thresholds must be one number"):
        metrics.Precision(thresholds=[0.2, 0.5])


# ------------------------------------------------------------------ verbosity
def test_evaluate_and_predict_print_as_keras(digits, capsys):
    (xtr, ttr), (xte, tte) = digits
    model = mlp()
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.evaluate(xte, tte)  # "auto": one final line on a non-terminal stream
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("12/12 - ") and "ms/step - loss: " in out[0] and "accuracy: " in out[0]
    model.predict(xte)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("12/12 - ") and out[0].endswith("ms/step")
    model.evaluate(xte, tte, verbose=0)
    model.predict(xte, verbose=0)
    model(xte[:5])
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="verbose must be 0, 1, 2 or 'auto'"):
        model.predict(xte, verbose=3)


def test_live_progress_line_on_a_terminal():
    from fastnn.callbacks.progress import StepProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = StepProgress(1, steps=3, stream=out, refresh_seconds=0)
    for i in range(3):
        bar(i + 1)
    bar.finish({"loss": 0.5})
    text = out.getvalue()
    assert text.count("\r") == 4 and "1/3 - " in text and text.endswith("3/3 - " + text.split("3/3 - ")[-1])
    assert text.rstrip().endswith("loss: 0.5000")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StepProgress(0, steps=3, stream=out).finish({"loss": 1.0})  # silent
    assert out.getvalue() == text


# ------------------------------------------------------------------ function losses
def test_keras_loss_functions_map_to_the_exact_losses_and_compute_per_sample():
    from fastnn import losses

    for fn, cls in ((losses.mean_squared_error, losses.MeanSquaredError), (losses.mae, losses.MeanAbsoluteError),
                    (losses.categorical_crossentropy, losses.CategoricalCrossentropy),
                    (losses.binary_crossentropy, losses.BinaryCrossentropy)):
        assert type(losses.get(fn)) is cls
    rng = numpy.random.default_rng(0)
    y, t = rng.random((5, 3)) + 0.1, rng.random((5, 3))
    numpy.testing.assert_allclose(losses.mean_squared_error(t, y), ((y - t) ** 2).mean(axis=1))
    p = y / y.sum(axis=1, keepdims=True)
    onehot = numpy.eye(3)[[0, 2, 1, 1, 0]]
    numpy.testing.assert_allclose(losses.categorical_crossentropy(onehot, y), -numpy.log(p[onehot > 0]))
    numpy.testing.assert_allclose(losses.sparse_categorical_crossentropy(numpy.array([0, 2, 1, 1, 0]), y),
                                  -numpy.log(p[onehot > 0]))


def test_a_user_loss_function_trains_by_numerical_gradients(backend):
    """``compile(loss=fn)`` with ``fn(y_true, y_pred)`` per sample: its gradient (central differences)
    against the analytic one of the same loss (a weighted squared error)."""
    rng = numpy.random.default_rng(1)
    x, t = rng.standard_normal((9, 64)), rng.standard_normal((9, 3))
    scale = numpy.array([1.0, 2.0, 0.5])

    def weighted_squares(y_true, y_pred):   # called with the backend's arrays (CuPy's on cupy), as Keras's
        s = scale if isinstance(y_pred, numpy.ndarray) else fastnn.get_ops(backend).asarray(scale)
        return ((y_pred - y_true) ** 2 * s).sum(axis=-1)

    with fastnn.using(backend):
        model = mlp(seed=12, dtype="float64", out=3, head=None)
        model.compile(optimizer=optimizers.SGD(lr=0.0), loss=weighted_squares)
        model.build()
        out = host(model.forward_pass(model.prepare(x)[0], True)).copy()
        expected_loss = weighted_squares(t, out).mean()
        assert model.train_on_batch(x, t) == pytest.approx(expected_loss, rel=1e-10)
        _, td = model.prepare(x, t)
        grad = model.ops.xp.empty_like(model.ops.asarray(out))
        model.loss.compute(model.ops, model.ops.asarray(out), td, grad)
    assert_close(host(grad), 2 * (out - t) * scale / 9, rtol=1e-7, atol=1e-10)
    with pytest.raises(ValueError, match="must return each sample's loss, shape \\(9,\\)"):
        bad = mlp(out=3, head=None)
        bad.compile("sgd", loss=lambda y_true, y_pred: ((y_pred - y_true) ** 2).sum())
        bad.fit(x, t, verbose=0)

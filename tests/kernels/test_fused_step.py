"""The fused training step (``fastnn.kernels.cpu.fused.train_steps``) against ``Sequential`` on numba.

Two models built alike from one seed: one trains eagerly (``train_on_batch`` per batch, as ``fit``
runs its steps), the other through one fused call over the same batches. With numpy's own BLAS
called the way ``numpy.matmul`` calls it, weights, optimizer state and the per-step loss and
accuracy sums agree bit for bit; through Numba's ``np.dot`` (SciPy's BLAS) they agree to rounding.
Data are random (never zeros); the odd shapes have a ragged last batch, and a batch of one row that
reaches the gemv/dot branches of the GEMM dispatch.
"""
import numpy
import pytest

from fastnn import optimizers
from fastnn.layers import Activation, Dense, Dropout
from fastnn.models import Sequential
from fastnn.training import fused_plan

fused = pytest.importorskip("fastnn.kernels.cpu.fused")
host = pytest.importorskip("fastnn.backend.numba_fused")

EXACT = {"rtol": 0, "atol": 0}
# Numba's np.dot runs on SciPy's OpenBLAS (0.3.30 here, numpy's is 0.3.31), whose 2-thread GEMM splits
# some shapes (n = 100) differently: products differ in their last bits. After 5 SGD steps of model A
# the weights (|W| ~ 0.08) differ by at most 3e-8 in float32 and 3e-17 in float64 (measured),
# a few ulps of the largest weights; atol covers that, rtol the rest
ROUNDING = {numpy.dtype(numpy.float32): {"rtol": 1e-5, "atol": 1e-7},
            numpy.dtype(numpy.float64): {"rtol": 1e-11, "atol": 1e-15}}

OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(0.1),
    "momentum": lambda: optimizers.SGD(0.05, momentum=0.9),
    "nesterov": lambda: optimizers.Nesterov(0.05, momentum=0.8, weight_decay=1e-3),
    "adagrad": lambda: optimizers.AdaGrad(0.05, weight_decay=1e-2),
    "rmsprop": lambda: optimizers.RMSprop(0.01),
    "adam": lambda: optimizers.Adam(1e-2),
    "adamw-clip": lambda: optimizers.AdamW(1e-2, weight_decay=0.05, clipnorm=0.5),
    "sgd-clip-schedule": lambda: optimizers.SGD(optimizers.ExponentialDecay(0.2, 2, 0.5), weight_decay=1e-2,
                                               clipnorm=0.3),
}


def _mlp(dims, dtype, opt, loss="sparse_categorical_crossentropy", act="relu", head="softmax", dropout=0.0,
         metrics=("accuracy",), seed=7, extra=None):
    layers = []
    for i, h in enumerate(dims[1:-1]):
        layers.append(Dense(h, act, input_shape=(dims[0],) if i == 0 else None))
        if dropout:
            layers.append(Dropout(dropout))
    layers += extra(dims) if extra else [Dense(dims[-1], head)]
    model = Sequential(layers, dtype=dtype, seed=seed, backend="numba")
    model.compile(opt(), loss, metrics=list(metrics))
    model.build((dims[0],))
    return model


def _data(dims, n, dtype, loss, seed=1):
    rng = numpy.random.default_rng(seed)
    x = (rng.random((n, dims[0])) * 2 - 0.5).astype(dtype)
    c = dims[-1]
    if loss == "sparse_categorical_crossentropy":
        return x, rng.integers(0, c, n)
    if loss == "categorical_crossentropy":
        return x, numpy.eye(c, dtype=dtype)[rng.integers(0, c, n)]
    if loss == "binary_crossentropy":
        return x, (rng.random((n, c)) > 0.5).astype(dtype)
    return x, rng.standard_normal((n, c)).astype(dtype)


def _plan(model, bs, numpy_blas=None):
    """The compiled step as ``fit`` runs it, on numpy's BLAS or (``numpy_blas=False``) Numba's np.dot."""
    spec = fused_plan.describe(model)
    return fused_plan.TrainPlan(model, host.FusedPlan(spec, bs, numpy_blas=numpy_blas), spec)


def _order(n, bs, kind):
    """Row order of a fused run: ``in-order`` (every batch a block of x, read in place), ``shuffled``
    (every batch gathered), or ``mixed`` (blocks and gathered batches alternating in one call)."""
    order = numpy.arange(n, dtype=numpy.int64)
    if kind == "in-order":
        return order
    rng = numpy.random.default_rng(n * 1000 + bs)
    if kind == "shuffled":
        return rng.permutation(order)
    for s in range(bs, n, 2 * bs):  # batches 1, 3, 5, ...: the same rows, shuffled
        order[s:s + bs] = rng.permutation(order[s:s + bs])
    return order


def _compare(build, dims, n, bs, dtype, loss="sparse_categorical_crossentropy", numpy_blas=True, tol=EXACT,
             order="in-order"):
    """Train ``build()`` eagerly and fused on the same ``n`` samples in batches of ``bs``; compare."""
    x, t = _data(dims, n, dtype, loss)
    eager, fast = build(), build()
    idx = _order(n, bs, order)
    expected = [eager.train_on_batch(x[idx[s:s + bs]], t[idx[s:s + bs]]) for s in range(0, n, bs)]
    tt = t.astype(numpy.int64) if t.ndim == 1 else t
    stats = _plan(fast, bs, numpy_blas).run(x, tt, idx)
    for k, (a, e) in enumerate(zip(fast.get_weights(), eager.get_weights())):
        numpy.testing.assert_allclose(a, e, err_msg=f"weight array {k} after {len(expected)} steps", **tol)
    for k, (a, e) in enumerate(zip(fast.optimizer.flat_slots, eager.optimizer.flat_slots)):
        numpy.testing.assert_allclose(a, e, err_msg=f"optimizer slot {k}", **tol)
    assert (fast.optimizer.iterations, fast._step) == (eager.optimizer.iterations, eager._step)
    return stats, expected


def _per_sample(stats, n, bs):
    sizes = [min(bs, n - s) for s in range(0, n, bs)]
    return [[float(stats[k, 0]) / m, float(stats[k, 1]) / m] for k, m in enumerate(sizes)]


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
def test_model_a_matches_eager(dtype):
    """Model A (784-100-10, relu, softmax head, SGD 0.1, batch 100): 5 steps, bit for bit."""
    build = lambda: _mlp((784, 100, 10), dtype, OPTIMIZERS["sgd"])  # noqa: E731
    stats, expected = _compare(build, (784, 100, 10), 500, 100, dtype)
    assert _per_sample(stats, 500, 100) == expected


ORDERS = ["in-order", "shuffled", "mixed"]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
def test_model_b64_with_dropout_matches_eager(dtype, order):
    """Model B64 (784-64-64-10, Dropout 0.2, Adam, batch 128): 5 steps, the same masks, bit for bit,
    with the batches read in place, gathered, or both in one call."""
    build = lambda: _mlp((784, 64, 64, 10), dtype, lambda: optimizers.Adam(1e-3), dropout=0.2)  # noqa: E731
    stats, expected = _compare(build, (784, 64, 64, 10), 640, 128, dtype, order=order)
    assert _per_sample(stats, 640, 128) == expected


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
def test_odd_shapes_each_optimizer_match_eager(dtype, opt, order):
    """37-13-7 in batches of 5 with a ragged last batch of 3 (5 steps), dropout, every optimizer."""
    build = lambda: _mlp((37, 13, 7), dtype, OPTIMIZERS[opt], dropout=0.3)  # noqa: E731
    stats, expected = _compare(build, (37, 13, 7), 23, 5, dtype, order=order)
    assert _per_sample(stats, 23, 5) == expected


LOSS_CASES = {
    # one-hot targets, selu, a batch of one row at the end (the gemv / outer-product branches)
    "onehot-selu": dict(dims=(37, 13, 7), loss="categorical_crossentropy", act="selu", head="softmax", n=11, bs=5),
    # sigmoid head fused into BCE, one output unit (matrix @ vector, and dot for the 1-row batch)
    "bce-1unit": dict(dims=(37, 13, 1), loss="binary_crossentropy", act="elu", head="sigmoid", n=11, bs=5),
    "bce-3units": dict(dims=(37, 13, 3), loss="binary_crossentropy", act="relu", head="sigmoid", n=23, bs=5),
    "mse-linear": dict(dims=(37, 13, 3), loss="mse", act="leaky_relu", head=None, n=23, bs=5),
    "mse-softplus": dict(dims=(16, 9, 1), loss="mse", act="softplus", head=None, n=23, bs=4),
}


@pytest.mark.parametrize("order", ["in-order", "shuffled"])
@pytest.mark.parametrize("case", list(LOSS_CASES))
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
def test_losses_and_activations_match_eager(dtype, case, order):
    c = LOSS_CASES[case]
    build = lambda: _mlp(c["dims"], dtype, OPTIMIZERS["adam"], loss=c["loss"], act=c["act"],  # noqa: E731
                         head=c["head"])
    stats, expected = _compare(build, c["dims"], c["n"], c["bs"], dtype, loss=c["loss"], order=order)
    assert _per_sample(stats, c["n"], c["bs"]) == expected


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
def test_layer_mix_matches_eager(dtype, order):
    """Dropout first, a frozen Dense, a Dense without bias, an Activation layer, the softmax as its own
    last layer; dropout seeds a user gave at both ends of their range [0, 2**63);
    weight decay with one bias excluded (the update runs in several pieces)."""
    def extra(dims):
        return [Dense(11, use_bias=False), Activation("elu"), Dropout(0.25, seed=2**63 - 1), Dense(dims[-1]),
                Activation("softmax")]

    def build():
        model = Sequential([Dropout(0.1, seed=0, input_shape=(19,)), Dense(13, "relu"), *extra((19, 13, 5))],
                           dtype=dtype, seed=3, backend="numba")
        model.compile(optimizers.RMSprop(0.01, weight_decay=0.1), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.build((19,))
        model.layers[1].trainable = False
        model.optimizer.exclude_from_weight_decay([f"{model.layers[-2].name}/b"])
        return model

    stats, expected = _compare(build, (19, 13, 5), 17, 4, dtype, order=order)
    assert _per_sample(stats, 17, 4) == expected


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
def test_sums_match_fit_history_and_one_call_equals_many(dtype):
    """The fused sums, added up as ``fit`` adds its per-batch sums, give ``fit``'s epoch loss and
    accuracy; K calls of one step give what one call of K steps gives."""
    dims, n, bs = (37, 13, 7), 23, 5
    x, t = _data(dims, n, dtype, "sparse_categorical_crossentropy")
    eager, one, many = (_mlp(dims, dtype, OPTIMIZERS["adam"], dropout=0.3) for _ in range(3))
    history = eager.fit(x, t, batch_size=bs, epochs=1, shuffle=False, verbose=0).history
    order = numpy.arange(n, dtype=numpy.int64)
    stats = _plan(one, bs).run(x, t, order)
    plan = _plan(many, bs)
    singles = numpy.concatenate([plan.run(x, t, order[s:s + bs]) for s in range(0, n, bs)])
    numpy.testing.assert_array_equal(singles, stats)
    for a, b in zip(one.get_weights(), many.get_weights()):
        numpy.testing.assert_array_equal(a, b)
    loss, acc = stats[0]
    for row in stats[1:]:
        loss, acc = loss + row[0], acc + row[1]  # in the model's dtype, batch after batch
    assert [float(loss) / n, float(acc) / n] == [history["loss"][0], history["accuracy"][0]]
    for a, b in zip(one.get_weights(), eager.get_weights()):
        numpy.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not fused.NUMPY_BLAS, reason="numpy's BLAS symbols were not found: np.dot is the only path")
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
def test_numba_np_dot_path_agrees_to_rounding(dtype):
    """The fallback GEMMs (Numba's np.dot on SciPy's BLAS) on model A (SGD), 5 steps. (Under Adam a
    last-bit difference in a near-zero gradient becomes a difference of order lr in its update:
    only bit-identical GEMMs make Adam runs comparable element by element.)"""
    dtype = numpy.dtype(dtype)
    build = lambda: _mlp((784, 100, 10), dtype, OPTIMIZERS["sgd"])  # noqa: E731
    stats, expected = _compare(build, (784, 100, 10), 500, 100, dtype, numpy_blas=False, tol=ROUNDING[dtype])
    numpy.testing.assert_allclose(numpy.array(_per_sample(stats, 500, 100)), numpy.array(expected),
                                  **ROUNDING[dtype])


def test_unsupported_models_say_why():
    from fastnn import regularizers

    def model(last, loss="sparse_categorical_crossentropy", **kw):
        m = Sequential([Dense(4, "relu", input_shape=(3,), **kw), last], backend="numba", seed=1)
        m.compile("sgd", loss)
        m.build()
        return m

    plan, why = fused_plan.train_plan(model(Dense(2, "softmax")), 4)
    assert plan is not None and why is None
    mse_softmax = model(Dense(2, "softmax"), loss="mse")
    assert "softmax" in fused_plan.train_plan(mse_softmax, 4)[1]  # the kernel's limit: said by the backend
    assert "regularizer" in fused_plan.train_plan(model(Dense(2), kernel_regularizer=regularizers.l2(1e-3)), 4)[1]
    tanh = Sequential([Dense(4, "tanh", input_shape=(3,)), Dense(2, "softmax")], backend="numba", seed=1)
    tanh.compile("sgd", "sparse_categorical_crossentropy")
    tanh.build()
    assert "NumPy's vectorised tanh" in fused_plan.train_plan(tanh, 4)[1]  # the eager step is faster there
    with pytest.raises(ValueError, match="no fused step"):
        host.FusedPlan(fused_plan.describe(mse_softmax), 4)
    m = Sequential([Dense(2, "softmax", input_shape=(3,))], backend="numpy", seed=1)
    m.compile("sgd", "sparse_categorical_crossentropy")
    m.build()
    assert fused_plan.train_plan(m, 4) == (None, None)  # no compiled step on numpy, and nothing to say


def test_run_checks_what_the_kernel_reads_unchecked():
    m = _mlp((5, 4, 3), numpy.float32, OPTIMIZERS["sgd"])
    plan = _plan(m, 2)
    x, t = _data((5, 4, 3), 6, numpy.float32, "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="outside"):
        plan.run(x, t, numpy.array([0, 6]))
    with pytest.raises(ValueError, match="class indices"):
        plan.run(x, t + 3, numpy.arange(6))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        plan.run(x.astype(numpy.float64), t, numpy.arange(6))


# ---------------------------------------------------------------- fit on numba goes through the compiled step
def _fit_pair(monkeypatch, make, fit_kwargs):
    """The same fit twice on numba: through the compiled step, and forced eager. Returns both models
    and histories, and how many batches each path ran."""
    from fastnn.backend.numba_ops import NumbaOps

    calls = {"compiled": 0}
    real_step = fused_plan.TrainPlan.step

    def counting(self, *args, **kwargs):
        calls["compiled"] += 1
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(fused_plan.TrainPlan, "step", counting)
    fast = make()
    h_fast = fast.fit(**fit_kwargs)
    compiled = calls["compiled"]
    monkeypatch.setattr(NumbaOps, "train_plan", lambda self, spec, bs: (None, "forced eager for the test"))
    slow = make()
    h_slow = slow.fit(**fit_kwargs)
    return fast, h_fast, slow, h_slow, compiled


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_on_numba_uses_the_compiled_step_and_matches_the_eager_path_bitwise(monkeypatch, dtype):
    rng = numpy.random.default_rng(5)
    x = rng.standard_normal((203, 20)).astype(dtype)
    y = rng.integers(0, 4, 203)
    seen = []

    def make():
        m = Sequential([Dense(16, "relu", input_shape=(20,)), Dropout(0.25), Dense(4, "softmax")], dtype=dtype, seed=3,
                       backend="numba")
        m.compile(optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return m
    hook = lambda batch, logs: seen.append(float(logs["loss"]))  # noqa: E731
    from fastnn.callbacks import LambdaCallback
    fast, h_fast, slow, h_slow, compiled = _fit_pair(monkeypatch, make, dict(
        x=x, y=y, batch_size=32, epochs=3, verbose=0, validation_split=0.2,
        callbacks=[LambdaCallback(on_train_batch_end=hook)]))
    assert compiled == 3 * 6  # 162 training rows in batches of 32: 6 per epoch, every one compiled
    for a, b in zip(fast.get_weights(), slow.get_weights()):
        numpy.testing.assert_array_equal(a, b)
    assert h_fast.history == h_slow.history
    assert seen[:18] == seen[18:]  # the batch hook saw the same running losses on both paths
    assert fast.optimizer.iterations == slow.optimizer.iterations == 18 and fast._step == slow._step == 18


def test_a_layer_frozen_mid_fit_is_honoured_by_the_compiled_step(monkeypatch):
    rng = numpy.random.default_rng(6)
    x, y = rng.standard_normal((64, 6)).astype("float32"), rng.integers(0, 3, 64)
    from fastnn.callbacks import LambdaCallback

    def make():
        m = Sequential([Dense(5, "elu", input_shape=(6,)), Dense(3, "softmax")], seed=1, backend="numba")
        m.compile("sgd", "sparse_categorical_crossentropy")
        return m

    def freeze(epoch, logs):  # after the first epoch: the compiled step's tables no longer describe the model
        if epoch == 0:
            freeze.model.layers[0].trainable = False

    def fit_kwargs(m):
        freeze.model = m
        return dict(x=x, y=y, batch_size=16, epochs=3, verbose=0, callbacks=[LambdaCallback(on_epoch_end=freeze)])
    fast = make()
    fast.fit(**fit_kwargs(fast))
    from fastnn.backend.numba_ops import NumbaOps
    monkeypatch.setattr(NumbaOps, "train_plan", lambda self, spec, bs: (None, "forced eager for the test"))
    slow = make()
    slow.fit(**fit_kwargs(slow))
    for a, b in zip(fast.get_weights(), slow.get_weights()):
        numpy.testing.assert_array_equal(a, b)
    assert not numpy.array_equal(fast.get_weights()[2], make().get_weights()[2])  # the unfrozen layer trained


def test_fit_says_once_why_it_runs_primitive_by_primitive(caplog):
    import logging

    from fastnn import regularizers
    rng = numpy.random.default_rng(7)
    x, y = rng.standard_normal((40, 5)).astype("float32"), rng.integers(0, 2, 40)
    m = Sequential([Dense(3, "relu", input_shape=(5,), kernel_regularizer=regularizers.l2(1e-3)),
                    Dense(2, "softmax")], seed=0, backend="numba")
    m.compile("adam", "sparse_categorical_crossentropy")
    with caplog.at_level(logging.INFO, logger="fastnn"):
        m.fit(x, y, batch_size=8, epochs=2, verbose=0)
    lines = [r.getMessage() for r in caplog.records if "primitive by primitive" in r.getMessage()]
    assert len(lines) == 1 and "regularizers" in lines[0]


@pytest.mark.parametrize("mode", ["no batch hooks", "coalescing hook", "progress bar"])
def test_runs_of_batches_in_one_call_match_the_eager_path_bitwise(monkeypatch, mode):
    """No callback needs each batch, or only callbacks that take one call per run of batches (the
    progress bar; ``needs_every_batch = False``): fit trains runs of batches per compiled call, with
    the eager path's weights and history, and a coalescing hook sees every sample counted once."""
    from fastnn.callbacks import Callback

    rng = numpy.random.default_rng(8)
    x = rng.standard_normal((250, 12)).astype("float32")
    y = rng.integers(0, 3, 250)
    calls = {"n": 0}
    real_step = fused_plan.TrainPlan.step

    def counting(self, prepared, idx, names):
        calls["n"] += 1
        return real_step(self, prepared, idx, names)

    class Coalescing(Callback):
        needs_every_batch = False

        def __init__(self):
            super().__init__()
            self.sizes = []

        def on_train_batch_end(self, batch, logs=None):
            self.sizes.append((batch, logs["size"]))

    def make():
        m = Sequential([Dense(10, "relu", input_shape=(12,)), Dropout(0.3), Dense(3, "softmax")], seed=4,
                       backend="numba")
        m.compile(optimizers.RMSprop(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    def run(model, hook):
        return model.fit(x, y, batch_size=16, epochs=2, verbose=2 if mode == "progress bar" else 0,
                         callbacks=[hook] if mode == "coalescing hook" else [])
    monkeypatch.setattr(fused_plan.TrainPlan, "step", counting)
    fast, hook = make(), Coalescing()
    h_fast = run(fast, hook)
    assert calls["n"] == (2 if mode == "no batch hooks" else 2 * 16)  # 16 batches an epoch: one call, or runs of one
    if mode == "coalescing hook":
        assert hook.sizes == [(b, 16 if b < 15 else 10) for b in range(16)] * 2
    from fastnn.backend.numba_ops import NumbaOps
    monkeypatch.setattr(NumbaOps, "train_plan", lambda self, spec, bs: (None, "forced eager for the test"))
    slow = make()
    h_slow = run(slow, Coalescing())
    for a, b in zip(fast.get_weights(), slow.get_weights()):
        numpy.testing.assert_array_equal(a, b)
    assert h_fast.history == h_slow.history

"""What the architecture step promises, as behaviour: per-step layer settings travel in one
``StepContext``; a model's whole training state goes through ``state()``/``load_state()``; callbacks
are plug-ins (``on_train_abort`` when fit raises, ``BackupAndRestore`` restoring from its own
``on_train_begin``); an optimizer described once (``rule`` + ``step_args``) runs the same by value
and from a device buffer of scalars; ``fit`` refuses bad loop arguments by name."""
import numpy
import pytest

import fastnn
from fastnn import callbacks as C
from fastnn import optimizers
from fastnn.layers import Dense, Dropout
from fastnn.layers.base import StepContext, step_context
from fastnn.models import Sequential
from fastnn.testing import backend_params

BACKENDS = backend_params()


def _data(n=96, seed=0):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((n, 12)).astype("float32"), rng.integers(0, 3, n)


def _model(seed=1, dropout=0.3, backend="numpy", optimizer="adam"):
    m = Sequential([Dense(16, activation="relu", input_shape=(12,)), Dropout(dropout),
                    Dense(3, activation="softmax")], seed=seed, backend=backend)
    m.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


# ---------------------------------------------------------------- StepContext
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_takes_step_and_row_from_the_step_context(backend):
    ops = fastnn.get_ops(backend)
    layer = Dropout(0.4, seed=123)
    layer._ops = ops
    x = ops.asarray(numpy.random.default_rng(1).standard_normal((5, 9)))
    with StepContext(7, row0=20):
        assert step_context().step == 7
        y = ops.asnumpy(layer.forward(x, True)).copy()
    want = ops.asnumpy(ops.dropout_mask((5, 9), 0.4, 123, 7, 20, dtype=x.dtype)) * ops.asnumpy(x)
    numpy.testing.assert_array_equal(y, want)
    assert step_context() is None
    a = ops.asnumpy(layer.forward(x, True)).copy()  # outside a step: the layer's own call count
    b = ops.asnumpy(layer.forward(x, True)).copy()
    assert not numpy.array_equal(a, b)


def test_workspaces_are_reused_only_inside_a_step_context():
    layer = Dense(4, input_shape=(3,))
    layer.build((None, 3))
    x = numpy.random.default_rng(2).standard_normal((2, 3)).astype("float32")
    with StepContext(0):
        first = layer.forward(x, True)
        second = layer.forward(x, True)
    assert first is second  # the step's workspace
    outside = layer.forward(x, True)
    assert outside is not second and layer.forward(x, True) is not outside  # fresh arrays a user may keep
    with StepContext(0, reuse_buffers=False):
        assert layer.forward(x, True) is not layer.forward(x, True)


def test_fit_sets_no_per_step_attributes_on_layers():
    m = _model()
    x, y = _data()
    before = [set(vars(layer)) for layer in m.layers]
    m.fit(x, y, batch_size=32, epochs=1, verbose=0)
    m.fit(x, y, batch_size=32, epochs=1, verbose=0)
    after = [set(vars(layer)) for layer in m.layers]
    per_step = {"step", "row0", "reuse_buffers", "premade_mask", "logits_only"}
    assert [(a - b) & per_step for a, b in zip(after, before)] == [set()] * len(m.layers)
    assert not any(per_step & a for a in after)


# ---------------------------------------------------------------- state()/load_state()
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_moves_a_run_into_another_model_exactly(backend):
    x, y = _data()
    a = _model(backend=backend)
    a.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
    b = _model(seed=99, backend=backend)
    b.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)  # some other state, to be replaced
    state = a.state()
    assert state["step"] == 6 and state["optimizer"]["iterations"] == 6 and len(state["weights"]) == 4
    b.load_state(state)
    for layer_a, layer_b in zip(a.layers, b.layers):
        assert getattr(layer_a, "seed", None) == getattr(layer_b, "seed", None)
    a.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    b.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    for u, v in zip(a.get_weights(), b.get_weights()):
        numpy.testing.assert_array_equal(u, v)  # same weights, slots, step count and dropout seeds


def test_load_state_checks_everything_before_changing_anything():
    m = _model()
    m.build()
    before = m.get_weights()
    state = m.state()
    state["weights"][1] = numpy.zeros(7, numpy.float32)
    state["step"] = 50
    with pytest.raises(ValueError, match=r"has shape \(16,\), got an array of shape \(7,\)"):
        m.load_state(state)
    state = m.state()
    state["optimizer"]["slots"]["m"] = numpy.zeros(3, numpy.float32)
    with pytest.raises(ValueError, match=r"optimizer slot\(s\) \['m'\] missing or not of shape"):
        m.load_state(state)
    assert m.state(weights=False)["step"] == 0
    for u, v in zip(before, m.get_weights()):
        numpy.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------- callbacks as plug-ins
class _Boom(C.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("boom at epoch end")


class _Watcher(C.Callback):
    def __init__(self):
        super().__init__()
        self.aborted, self.ended = [], False

    def on_train_abort(self, exception):
        self.aborted.append(exception)

    def on_train_end(self, logs=None):
        self.ended = True


def test_every_callback_hears_of_an_exception_that_ends_fit(tmp_path):
    x, y = _data()
    m, watcher = _model(), _Watcher()
    backup = C.BackupAndRestore(tmp_path / "ckpt")
    with pytest.raises(RuntimeError, match="boom at epoch end"):
        m.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[watcher, backup, _Boom()])
    assert len(watcher.aborted) == 1 and str(watcher.aborted[0]) == "boom at epoch end" and not watcher.ended
    assert m.training_loop is None
    # the folder's lock went back with the abort: the same folder serves the next run (and resumes it)
    m2 = _model()
    m2.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[C.BackupAndRestore(tmp_path / "ckpt")])


def test_backup_and_restore_resumes_from_its_own_on_train_begin(tmp_path):
    """A user's BackupAndRestore among other callbacks: fit has no special case for it."""
    x, y = _data()
    full = _model()
    full.fit(x, y, batch_size=32, epochs=3, verbose=0)
    m = _model()

    class Stop(C.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # killed after the second epoch's backup
    with pytest.raises(KeyboardInterrupt):
        m.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[C.BackupAndRestore(tmp_path), Stop()])
    resumed = _model()
    seen = []
    history = resumed.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[
        C.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(e)), C.BackupAndRestore(tmp_path)])
    assert seen == [2] and history.epoch == [0, 1, 2]
    for u, v in zip(full.get_weights(), resumed.get_weights()):
        numpy.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------- an optimizer described once
class HalfStepSGD(optimizers.Optimizer):
    """A new optimizer is one class: its rule and its primitive's arguments."""

    rule = "sgd"

    def step_args(self, lr, weight_decay, scale, t):
        return lr / 2, weight_decay, scale


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_description_runs_by_value_on_dicts_on_the_flat_buffer_and_from_scalars(backend):
    ops = fastnn.get_ops(backend)
    rng = numpy.random.default_rng(3)
    p0, g = rng.standard_normal(11), rng.standard_normal(11)
    opt = HalfStepSGD(lr=0.2, weight_decay=0.1)
    params = {"W": ops.asarray(p0.copy())}
    opt.update(params, {"W": ops.asarray(g)})
    want = p0 - 0.1 * (g + 0.1 * p0)  # torch-style L2 in the gradient, half the learning rate
    numpy.testing.assert_allclose(ops.asnumpy(params["W"]), want, rtol=1e-12)
    m = Sequential([Dense(3, input_shape=(4,))], dtype="float64", seed=0, backend=backend)
    m.compile(HalfStepSGD(lr=0.2), "mse")
    m.build()
    m.flat.g[...] = ops.asarray(rng.standard_normal(m.flat.size))
    by_value = m.flat.p.copy()
    captured = m.flat.p.copy()
    pieces = m.optimizer._pieces(m.flat)
    rows = m.optimizer.graph_scalars(m.flat, pieces)
    m.optimizer.step_flat(m.flat)
    by_value, m.flat.p[...] = m.flat.p.copy(), captured
    m.optimizer.step_flat_dev(m.flat, pieces, [ops.asarray(r) for r in rows])
    numpy.testing.assert_array_equal(ops.asnumpy(m.flat.p), ops.asnumpy(by_value))
    numpy.testing.assert_allclose(ops.asnumpy(by_value), ops.asnumpy(captured - 0.1 * m.flat.g), rtol=1e-12)


# ---------------------------------------------------------------- fit's loop arguments
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(y=None), ValueError, r"fit: y is required"),
    (dict(initial_epoch=-5), ValueError, r"initial_epoch must be a non-negative integer, got -5"),
    (dict(initial_epoch=1.5), ValueError, r"initial_epoch must be a non-negative integer, got 1.5"),
    (dict(shuffle="no"), TypeError, r"shuffle must be True or False, got 'no'"),
])
def test_fit_refuses_bad_loop_arguments_before_training(kwargs, error, match):
    x, y = _data()
    m = _model()
    m.build()
    before = m.get_weights()
    args = dict(y=y, epochs=2, verbose=0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        m.fit(x, **args)
    for u, v in zip(before, m.get_weights()):
        numpy.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------- packaging
def test_setup_lists_every_package_of_the_library():
    """A package folder missing from setup.py's ``packages`` works in the editable test install but
    is left out of the wheel: every folder with an ``__init__.py`` under fastnn/ must be listed."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    tree = ast.parse((root / "setup.py").read_text())
    listed = next(ast.literal_eval(k.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  for k in node.keywords if k.arg == "packages")
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "fastnn").rglob("__init__.py")}
    assert found - set(listed) == set()

"""The optional peers of ``fastnn-bench train``: JAX (``jax-step``, ``jax-epoch``) and ``torch.compile``.

Neither package is a dependency: without them the rows say "not installed" and the run goes on
(checked here with the imports blocked, so it runs wherever the tests do). Where JAX imports, the
``jax-epoch`` row is checked to time a correct training loop: from the same weights and batches as
fastnn's NumPy reference backend it gives the same losses, weights and loss after the epoch, for SGD
(model A) and for Adam (B64 without dropout, whose masks would otherwise differ by design).

Tolerances: float32 throughout, and the two sides sum the same products in different orders (XLA's
GEMMs and reductions against OpenBLAS and NumPy's), so each value may differ by a few units in the
last place, and the differences carry from step to step. Measured over these 12 steps: losses (about
2.4) agree to 3e-7 (SGD) and 7e-7 (Adam), about 2 and 5 ulp; SGD weights (|W| <= 0.1) to 3e-8,
Adam weights to 1e-6 (Adam divides by sqrt(v), which magnifies the rounding of small gradients).
The bounds below are 30x those, and still 1,000x smaller than what a single step changes (the
first SGD step moves the loss by more than 0.01 and weights by 2e-2), so a wrong learning rate,
batch order, bias update or bias correction fails them by orders of magnitude.
"""
import sys

import numpy
import pytest

from fastnn.bench import timing
from fastnn.bench.machine import jax_module
from fastnn.bench.models import MODELS, build_model, synthetic_mnist
from fastnn.bench.report import print_train
from fastnn.bench.timing import QuietPolicy, Settings
from fastnn.bench.train import CPU_PEERS, epoch_batches, run_train

LOSS_ATOL = 1e-5
SGD_W_ATOL = 1e-6
ADAM_W_ATOL = 3e-5
N_BATCHES = 12


@pytest.fixture
def no_peers(monkeypatch):
    """``import jax`` and ``import torch`` fail, as on a machine without them (CI)."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "torch")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("jax", "jaxlib", "torch"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: ImportError on import
    monkeypatch.setattr(timing, "POLICY", QuietPolicy(None))


def test_peers_not_installed_are_rows_with_the_reason(no_peers):
    res = run_train(Settings("smoke"), ["numpy"], {}, ["A"])
    m = res["models"]["A"]
    assert set(m["unavailable"]) == set(CPU_PEERS)
    assert all(why.startswith("not installed (") for why in m["unavailable"].values()), m["unavailable"]
    assert "numpy" in m["impls"] and not set(CPU_PEERS) & set(m["impls"])
    assert res["torch"] is None and res["jax"] is None
    assert m["gemm_floor"]["samples_per_s"]["median"] > 0  # the floor is reported with its own samples/s
    text = print_train(res)
    for peer in CPU_PEERS:
        row = next(line for line in text.splitlines() if line.split()[:2] == ["A", peer])
        assert row.split()[2:] == ["not", "installed"], row
    assert "jax-step, jax-epoch: not installed (" in text
    floor = next(line for line in text.splitlines() if line.split()[:2] == ["A", "gemm-floor"])
    assert "GFLOP/s" in floor and floor.split()[2][0].isdigit()


def test_peers_turned_off_say_which_flag(no_peers):
    res = run_train(Settings("smoke"), ["numpy"], {}, ["A"], with_torch=False, with_jax=False)
    assert res["models"]["A"]["unavailable"] == {"torch": "off (--no-torch)", "torch-compile": "off (--no-torch)",
                                                 "jax-step": "off (--no-jax)", "jax-epoch": "off (--no-jax)"}


def _jax_peers():
    if jax_module() is None:
        pytest.skip("JAX is not installed (an optional peer of fastnn-bench, never a dependency)")
    from fastnn.bench import peers_jax

    return peers_jax


def _reference_and_jax_epoch(spec):
    """fastnn's NumPy backend and the ``jax-epoch`` row, one epoch of ``N_BATCHES`` from the same weights."""
    peers_jax = _jax_peers()
    n = spec["batch"] * N_BATCHES
    x, y = synthetic_mnist(n, seed=3)
    batches = epoch_batches(x, y, spec["batch"], n)
    ref = build_model(spec, "numpy")
    start = ref.get_weights()
    before = ref.test_on_batch(x, y)
    ref_losses = [ref.train_on_batch(xb, yb) for xb, yb in batches]
    row = peers_jax.JaxEpochImpl("jax-epoch", spec, start, batches)
    row.prepare()
    row.epoch()  # what the timed rounds run
    trained = build_model(spec, "numpy")
    trained.set_weights(row.params())
    return dict(x=x, y=y, start=start, before=before, ref=ref, ref_losses=numpy.array(ref_losses),
                jax_losses=numpy.asarray(row.losses, dtype=numpy.float64), jax_weights=row.params(),
                ref_after=ref.test_on_batch(x, y), jax_after=trained.test_on_batch(x, y))


def test_jax_epoch_scan_trains_model_a_as_fastnn_does():
    r = _reference_and_jax_epoch(MODELS["A"])
    numpy.testing.assert_allclose(r["jax_losses"], r["ref_losses"], rtol=0, atol=LOSS_ATOL)
    for got, want in zip(r["jax_weights"], r["ref"].get_weights()):
        assert got.dtype == numpy.float32 and got.shape == want.shape
        numpy.testing.assert_allclose(got, want, rtol=0, atol=SGD_W_ATOL)
    assert abs(r["jax_after"] - r["ref_after"]) < LOSS_ATOL  # the loss after one epoch
    # the check can fail: the epoch moved the loss and the weights far beyond the tolerances
    assert abs(r["ref_after"] - r["before"]) > 1000 * LOSS_ATOL
    assert max(numpy.abs(a - b).max() for a, b in zip(r["jax_weights"], r["start"])) > 1000 * SGD_W_ATOL


def test_jax_epoch_scan_adam_matches_fastnn_without_dropout():
    spec = dict(MODELS["B64"], dropout=0.0)
    r = _reference_and_jax_epoch(spec)
    numpy.testing.assert_allclose(r["jax_losses"], r["ref_losses"], rtol=0, atol=LOSS_ATOL)
    for got, want in zip(r["jax_weights"], r["ref"].get_weights()):
        numpy.testing.assert_allclose(got, want, rtol=0, atol=ADAM_W_ATOL)
    assert abs(r["jax_after"] - r["ref_after"]) < LOSS_ATOL


def test_jax_step_row_and_epoch_row_train_alike_with_dropout():
    """The jitted step called per batch and the scanned epoch draw the same masks and land on the same
    weights; dropout is really applied (the first loss differs from the same step without it)."""
    peers_jax = _jax_peers()
    spec = MODELS["B64"]
    n = spec["batch"] * 4
    x, y = synthetic_mnist(n, seed=3)
    batches = epoch_batches(x, y, spec["batch"], n)
    ref = build_model(spec, "numpy")
    start = ref.get_weights()
    step_row = peers_jax.JaxStepImpl("jax-step", spec, start, batches)
    epoch_row = peers_jax.JaxEpochImpl("jax-epoch", spec, start, batches)
    step_row.epoch()
    epoch_row.epoch()
    for a, b in zip(step_row.params(), epoch_row.params()):
        numpy.testing.assert_allclose(a, b, rtol=0, atol=ADAM_W_ATOL)
    without_dropout = ref.test_on_batch(*batches[0])  # the first batch's loss at the start weights, no masks
    assert abs(float(epoch_row.losses[0]) - without_dropout) > 1e-3


def test_jax_rows_by_device_kind():
    """The CPU rows run on JAX's CPU device whatever JAX's default is (on a GPU machine its default is
    the GPU); the GPU rows appear only when JAX has a GPU device and the cupy backend is benchmarked."""
    from fastnn.bench.peers_jax import jax_device
    from fastnn.bench.train import implementations

    class NoGpuJax:
        def devices(self, kind):
            if kind == "gpu":
                raise RuntimeError("Unknown backend: 'gpu' requested, but no platforms that are instances of gpu")
            return ["cpu0"]

    assert jax_device(NoGpuJax(), "gpu") is None and jax_device(NoGpuJax(), "cpu") == "cpu0"
    assert implementations("A", MODELS["A"], ("numpy",), [], [], None, cpu=False, out={}, jax=NoGpuJax()) == []
    spec = MODELS["A"]
    jax = jax_module()
    if jax is None:
        return
    x, y = synthetic_mnist(200)
    model = build_model("A", "numpy")
    batches = [(x[:100], y[:100]), (x[100:], y[100:])]
    from fastnn.bench.peers_jax import JaxStepImpl

    impl = JaxStepImpl("jax-step", spec, model.get_weights(), batches)
    impl.step(*impl.batches[0])
    assert all(leaf.devices() == {jax.devices("cpu")[0]} for leaf in jax.tree_util.tree_leaves(impl.state[:4]))

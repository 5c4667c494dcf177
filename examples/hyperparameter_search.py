"""Hyper-parameter search: learning rate and weight decay, sampled log-uniformly, scored on a validation split.

Reproduces the "from scratch" book's random search (its ``hyperparameter_optimization.py``) on the
bundled digits with ``fastnn.tuning.random_search``. A fifth of the *training* digits is set aside
as a validation split (stratified); each trial trains a ``MultiLayerNet`` (64 -> 6 x 100 ReLU ->
10, He init) with the book's ``Trainer`` and plain SGD on the rest, using a learning rate from
``("log", 1e-3, 1)`` and a ``weight_decay_lambda`` from ``("log", 1e-8, 1e-1)``, and is scored by
its validation accuracy. The test digits take no part in the search: the best setting is
retrained once on all the training digits and its test accuracy is printed once, at the end.

Writes ``hyperparameter_search.png``: validation accuracy per epoch of every trial (the best five
in colour), and validation accuracy against learning rate and weight decay (log axes; the best
trial starred).

    python examples/hyperparameter_search.py [--quick] [--out DIR] [--backend NAME]
"""
from __future__ import annotations

import math
import sys

import numpy

from fastnn.datasets import load_digits
from fastnn.networks import MultiLayerNet
from fastnn.training import Trainer
from fastnn.tuning import random_search

from _common import new_figure, parse_args, save

SPACE = {"lr": ("log", 1e-3, 1.0), "weight_decay": ("log", 1e-8, 1e-1)}
HIDDEN = [100] * 6
BATCH = 100
VAL_FRACTION = 0.2
SHOW_BEST = 5


def validation_indices(t, fraction=VAL_FRACTION, seed=0):
    """Carve a validation split out of the training labels ``t``: ``(fit_idx, val_idx)``.

    Stratified (each class gives ``round(fraction * count)`` samples to validation), disjoint,
    and together exactly ``0..len(t)-1``; reproducible for ``seed``.
    """
    t = numpy.asarray(t)
    labels = t.argmax(axis=1) if t.ndim == 2 else t
    rng = numpy.random.default_rng(seed)
    val = []
    for c in numpy.unique(labels):
        members = rng.permutation(numpy.flatnonzero(labels == c))
        val.append(members[:int(round(fraction * len(members)))])
    val_idx = numpy.sort(numpy.concatenate(val))
    fit_idx = numpy.setdiff1d(numpy.arange(len(labels)), val_idx)
    return fit_idx, val_idx


def train(x, t, x_eval, t_eval, lr, weight_decay, epochs, seed=0):
    """Train one ``MultiLayerNet``; returns the ``Trainer`` (``test_acc_list`` is on ``x_eval``)."""
    net = MultiLayerNet(x.shape[1], HIDDEN, 10, weight_decay_lambda=weight_decay, seed=seed)
    trainer = Trainer(net, x, t, x_eval, t_eval, epochs=epochs, mini_batch_size=BATCH, optimizer="SGD",
                      optimizer_param={"lr": lr}, verbose=False, seed=seed)
    trainer.train()
    return trainer


def make_train_fn(x_fit, t_fit, x_val, t_val, epochs, seed=0):
    """``train_fn(lr, weight_decay) -> validation accuracy`` for ``random_search``.

    It sees only the two training-data subsets it is given. Each call's per-epoch validation
    accuracies are kept in ``train_fn.curves`` (a list of ``(params, accuracies)``). A run whose
    training loss ends as NaN or inf diverged and scores NaN (``random_search`` lists it last).
    """
    def train_fn(lr, weight_decay):
        with numpy.errstate(over="ignore", invalid="ignore"):  # too large a lr overflows: scored as NaN
            trainer = train(x_fit, t_fit, x_val, t_val, lr, weight_decay, epochs, seed)
        accs = trainer.test_acc_list + [trainer.test_acc]
        train_fn.curves.append(({"lr": lr, "weight_decay": weight_decay}, accs))
        return trainer.test_acc if math.isfinite(trainer.train_loss_list[-1]) else float("nan")

    train_fn.curves = []
    return train_fn


def search(x_train, t_train, trials, epochs, seed=0, factory=make_train_fn):
    """Random search on the training data alone; returns ``(results, curves)``.

    ``factory(x_fit, t_fit, x_val, t_val, epochs=, seed=)`` builds the ``train_fn`` (a test can
    pass a wrapper that checks what it is given).
    """
    fit_idx, val_idx = validation_indices(t_train, VAL_FRACTION, seed)
    train_fn = factory(x_train[fit_idx], t_train[fit_idx], x_train[val_idx], t_train[val_idx],
                       epochs=epochs, seed=seed)
    results = random_search(train_fn, SPACE, trials, seed=seed)
    return results, getattr(train_fn, "curves", [])


def plot(results, curves, path_out):
    """Validation accuracy curves (best in colour) and the score over (lr, weight decay)."""
    fig = new_figure(13, 5.2)
    ax_curves, ax_scatter = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    best_keys = [tuple(sorted(r["params"].items())) for r in results[:SHOW_BEST]]
    for params, accs in curves:
        if tuple(sorted(params.items())) not in best_keys:
            ax_curves.plot(numpy.arange(len(accs)), accs, color="0.8", lw=0.8)
    for rank, key in enumerate(best_keys):
        params, accs = next((p, a) for p, a in curves if tuple(sorted(p.items())) == key)
        ax_curves.plot(numpy.arange(len(accs)), accs, lw=1.8, color=f"C{rank}",
                       label=f"#{rank + 1}: lr={params['lr']:.3g}, wd={params['weight_decay']:.2g}")
    ax_curves.xaxis.get_major_locator().set_params(integer=True)
    ax_curves.set(xlabel="epoch", ylabel="validation accuracy", ylim=(0, 1.02),
                  title=f"{len(curves)} trials: validation accuracy per epoch (best {SHOW_BEST} in colour)")
    ax_curves.legend(loc="lower right", fontsize=8)
    ax_curves.grid(alpha=0.3)

    lrs = numpy.array([r["params"]["lr"] for r in results])
    wds = numpy.array([r["params"]["weight_decay"] for r in results])
    scores = numpy.array([r["score"] for r in results])
    finite = numpy.isfinite(scores)
    dots = ax_scatter.scatter(lrs[finite], wds[finite], c=scores[finite], cmap="viridis", vmin=0, vmax=1,
                              s=40, edgecolors="k", linewidths=0.3)
    if (~finite).any():
        ax_scatter.scatter(lrs[~finite], wds[~finite], marker="x", color="red", label="diverged (NaN)")
        ax_scatter.legend(loc="lower left", fontsize=8)
    ax_scatter.scatter([lrs[0]], [wds[0]], marker="*", s=450, facecolors="none", edgecolors="red",
                       linewidths=1.5, zorder=3)
    (_, lr_lo, lr_hi), (_, wd_lo, wd_hi) = SPACE["lr"], SPACE["weight_decay"]
    ax_scatter.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="weight decay λ",
                   xlim=(lr_lo / 1.5, lr_hi * 1.5), ylim=(wd_lo / 3, wd_hi * 3),
                   title="validation accuracy by sampled (lr, λ); ★ best")
    fig.colorbar(dots, ax=ax_scatter, label="validation accuracy")
    fig.tight_layout()
    return save(fig, *path_out)


def main(argv=None):
    args = parse_args(__doc__, argv)
    trials, epochs = (6, 4) if args.quick else (60, 40)
    (x_train, t_train), (x_test, t_test) = load_digits()

    results, curves = search(x_train, t_train, trials, epochs, seed=0)
    print(f"backend {args.ops.name}: {trials} trials, {epochs} epochs each, validation = "
          f"{VAL_FRACTION:.0%} of the {len(x_train)} training digits")
    print("best trials (validation accuracy):")
    for rank, r in enumerate(results[:SHOW_BEST], 1):
        p = r["params"]
        print(f"  #{rank}  val acc {r['score']:.4f}  lr {p['lr']:.4g}  weight_decay {p['weight_decay']:.3g}")
    path = plot(results, curves, (args.out, "hyperparameter_search.png"))
    print(f"wrote {path}")

    # The test set is used once, after the search is over.
    best = results[0]["params"]
    final = train(x_train, t_train, x_test, t_test, best["lr"], best["weight_decay"], epochs)
    print(f"test accuracy of the best setting, retrained on all {len(x_train)} training digits "
          f"(reported once): {final.test_acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

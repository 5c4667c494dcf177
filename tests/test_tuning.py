"""fastnn.tuning.random_search: sampling, reproducibility, ordering, errors, and no test data in the search."""
import math
import os
import sys

import numpy
import pytest

from fastnn.tuning import random_search

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def record(results):
    """A train_fn that scores 0 and keeps every params dict it is called with, in call order."""
    def train_fn(**params):
        results.append(params)
        return 0.0
    return train_fn


def sampled(space, trials, seed=0):
    calls = []
    random_search(record(calls), space, trials, seed=seed)
    return calls


SPACE = {"lr": ("log", 1e-4, 1e-1), "momentum": ("uniform", 0.5, 0.99), "hidden": ("int", 1, 4),
         "act": ["relu", "sigmoid", "tanh"]}


# ---------------------------------------------------------------- reproducibility
def test_random_search_same_seed_same_trials():
    assert sampled(SPACE, 20, seed=3) == sampled(SPACE, 20, seed=3)
    results_a = random_search(lambda **p: p["lr"], SPACE, 10, seed=3)
    results_b = random_search(lambda **p: p["lr"], SPACE, 10, seed=3)
    assert results_a == results_b


def test_random_search_different_seeds_differ():
    assert sampled(SPACE, 20, seed=1) != sampled(SPACE, 20, seed=2)


def test_random_search_leaves_global_random_state_alone():
    numpy.random.seed(123)
    before = numpy.random.get_state()[1].copy()
    sampled(SPACE, 10, seed=0)
    assert numpy.array_equal(numpy.random.get_state()[1], before)
    # and global state does not leak into the search
    numpy.random.seed(1)
    a = sampled(SPACE, 5, seed=0)
    numpy.random.seed(2)
    assert sampled(SPACE, 5, seed=0) == a


def test_random_search_accepts_a_generator():
    a = sampled(SPACE, 5, seed=numpy.random.default_rng(7))
    assert a == sampled(SPACE, 5, seed=numpy.random.default_rng(7))


def test_random_search_samples_do_not_depend_on_train_fn():
    """The search's generator is its own: a train_fn drawing random numbers changes nothing."""
    calls_quiet, calls_noisy = [], []
    random_search(record(calls_quiet), SPACE, 8, seed=5)

    def noisy(**params):
        calls_noisy.append(params)
        numpy.random.default_rng().standard_normal(100)
        numpy.random.rand(10)
        return 0.0

    random_search(noisy, SPACE, 8, seed=5)
    assert calls_quiet == calls_noisy


# ---------------------------------------------------------------- sampling
def test_random_search_log_samples_inside_bounds_and_log_uniform():
    lo, hi = 1e-6, 1e-1
    values = numpy.array([p["x"] for p in sampled({"x": ("log", lo, hi)}, 2000, seed=0)])
    assert values.min() >= lo and values.max() <= hi
    geometric_mean = math.sqrt(lo * hi)  # the median of a log-uniform distribution
    assert 0.7 < numpy.median(values) / geometric_mean < 1.4
    # equal mass per decade: each of the 5 decades holds about a fifth of the samples
    counts = numpy.histogram(numpy.log10(values), bins=5, range=(-6, -1))[0]
    assert counts.min() > 0.15 * len(values) and counts.max() < 0.25 * len(values)
    assert all(isinstance(v, float) for v in values.tolist())


def test_random_search_uniform_samples_inside_bounds():
    values = numpy.array([p["x"] for p in sampled({"x": ("uniform", -2.0, 3.0)}, 2000, seed=0)])
    assert values.min() >= -2.0 and values.max() <= 3.0
    assert abs(numpy.median(values) - 0.5) < 0.25  # the arithmetic midpoint, not the geometric one
    assert values.min() < -1.9 and values.max() > 2.9


def test_random_search_int_bounds_are_inclusive():
    values = [p["n"] for p in sampled({"n": ("int", 2, 5)}, 400, seed=0)]
    assert set(values) == {2, 3, 4, 5}
    assert all(type(v) is int for v in values)


def test_random_search_choices_are_returned_as_given():
    options = ["relu", 0.5, None, (1, 2)]
    values = [p["c"] for p in sampled({"c": options}, 200, seed=0)]
    assert all(any(v is o for o in options) for v in values)
    assert {repr(v) for v in values} == {repr(o) for o in options}


def test_random_search_single_choice():
    assert {p["c"] for p in sampled({"c": ["only"]}, 5)} == {"only"}


def test_random_search_calls_train_fn_once_per_trial_with_every_name():
    calls = sampled(SPACE, 7)
    assert len(calls) == 7
    assert all(set(c) == set(SPACE) for c in calls)


# ---------------------------------------------------------------- results
def test_random_search_sorts_best_first_with_nan_last():
    scores = iter([0.3, float("nan"), 0.9, -1.0, float("nan"), 0.5, float("-inf")])
    results = random_search(lambda **p: next(scores), {"x": ("uniform", 0.0, 1.0)}, 7, seed=0)
    got = [r["score"] for r in results]
    assert got[:5] == [0.9, 0.5, 0.3, -1.0, float("-inf")]
    assert all(math.isnan(s) for s in got[5:])
    assert all(set(r) == {"params", "score"} and isinstance(r["score"], float) for r in results)


def test_random_search_result_params_match_the_calls():
    calls = []

    def train_fn(**params):
        calls.append(dict(params))
        return params["lr"]

    results = random_search(train_fn, SPACE, 12, seed=4)
    assert sorted(calls, key=lambda p: -p["lr"]) == [r["params"] for r in results]
    assert [r["score"] for r in results] == sorted((c["lr"] for c in calls), reverse=True)


def test_random_search_ties_keep_trial_order():
    calls = []
    results = random_search(record(calls), {"x": ("uniform", 0.0, 1.0)}, 6, seed=0)
    assert [r["params"] for r in results] == calls


def test_random_search_scores_numpy_scalars_and_0d_arrays():
    results = random_search(lambda x: numpy.array(x), {"x": ("uniform", 0.0, 1.0)}, 3, seed=0)
    assert all(type(r["score"]) is float for r in results)


def test_random_search_refuses_a_non_scalar_score():
    with pytest.raises(TypeError, match="train_fn must return one number"):
        random_search(lambda x: [x, x], {"x": ("uniform", 0.0, 1.0)}, 2, seed=0)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("space, match", [
    ({"lr": ("exp", 1e-3, 1.0)}, r"space\['lr'\]: unknown kind 'exp'"),
    ({"lr": ("log", 1.0, 1e-3)}, r"space\['lr'\]: lo must be below hi"),
    ({"lr": ("uniform", 0.5, 0.5)}, r"space\['lr'\]: lo must be below hi"),
    ({"n": ("int", 3, 3)}, r"space\['n'\]: lo must be below hi"),
    ({"lr": ("log", 0.0, 1.0)}, r"space\['lr'\]: \('log', lo, hi\) samples log-uniformly and needs 0 < lo"),
    ({"lr": ("log", -1.0, 1.0)}, r"space\['lr'\].*0 < lo"),
    ({"act": []}, r"space\['act'\]: the list of choices is empty"),
    ({"n": ("int", 1.5, 4)}, r"space\['n'\]: \('int', lo, hi\) needs integer bounds"),
    ({"x": ("uniform", 0.0, float("inf"))}, r"space\['x'\].*finite numbers"),
    ({"x": ("uniform", "a", 1.0)}, r"space\['x'\].*finite numbers"),
    ({"x": ("log", 1e-3)}, r"space\['x'\]: expected \('log', lo, hi\)"),
    ({}, "space is empty"),
    ({"not a name": [1, 2]}, "identifiers"),
])
def test_random_search_rejects_a_bad_space(space, match):
    with pytest.raises(ValueError, match=match):
        random_search(lambda **p: 0.0, space, 3, seed=0)


def test_random_search_names_the_bad_entry_among_good_ones():
    space = {"lr": ("log", 1e-4, 1e-1), "wd": ("log", 0, 1e-2), "act": ["relu"]}
    with pytest.raises(ValueError, match=r"space\['wd'\]") as info:
        random_search(lambda **p: 0.0, space, 3)
    assert "'lr'" not in str(info.value)


@pytest.mark.parametrize("spec", [0.1, {"lo": 1}, "relu"])
def test_random_search_rejects_a_spec_of_the_wrong_type(spec):
    with pytest.raises(TypeError, match=r"space\['x'\]: expected"):
        random_search(lambda **p: 0.0, {"x": spec}, 3)


@pytest.mark.parametrize("trials, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                           (True, TypeError), ("10", TypeError)])
def test_random_search_rejects_bad_trials(trials, error):
    with pytest.raises(error, match="trials must be a positive integer"):
        random_search(lambda **p: 0.0, {"x": [1]}, trials)


def test_random_search_rejects_bad_train_fn_space_and_seed():
    with pytest.raises(TypeError, match="train_fn must be callable"):
        random_search(None, {"x": [1]}, 1)
    with pytest.raises(TypeError, match="space must be a mapping"):
        random_search(lambda **p: 0.0, [("x", [1])], 1)
    with pytest.raises(TypeError, match="seed must be"):
        random_search(lambda **p: 0.0, {"x": [1]}, 1, seed=1.5)


def test_random_search_checks_space_before_training():
    calls = []
    with pytest.raises(ValueError):
        random_search(record(calls), {"a": ("uniform", 0, 1), "b": ("log", 0, 1)}, 3)
    assert calls == []


# ---------------------------------------------------------------- the digits example never sees the test set
@pytest.fixture(scope="module")
def search_example():
    sys.path.insert(0, EXAMPLES)
    try:
        import hyperparameter_search
    finally:
        sys.path.remove(EXAMPLES)
    return hyperparameter_search


def test_validation_indices_are_disjoint_and_cover_the_training_split(search_example):
    from fastnn.datasets import load_digits

    (_, t_train), _ = load_digits()
    fit_idx, val_idx = search_example.validation_indices(t_train, 0.2, seed=0)
    assert numpy.intersect1d(fit_idx, val_idx).size == 0
    assert numpy.array_equal(numpy.union1d(fit_idx, val_idx), numpy.arange(len(t_train)))
    assert abs(len(val_idx) - 0.2 * len(t_train)) <= 10
    # stratified: every class is in both parts, in about the same proportion
    for c in range(10):
        share = numpy.mean(t_train[val_idx] == c) / numpy.mean(t_train == c)
        assert 0.8 < share < 1.2
    again = search_example.validation_indices(t_train, 0.2, seed=0)
    assert numpy.array_equal(again[0], fit_idx) and numpy.array_equal(again[1], val_idx)


def test_digits_search_only_ever_sees_training_samples(search_example):
    from fastnn.datasets import load_digits

    (x_train, t_train), (x_test, t_test) = load_digits()
    train_rows = {row.tobytes() for row in x_train}
    test_only = {row.tobytes() for row in x_test} - train_rows
    assert len(test_only) > 300  # the digits test rows are (almost all) distinct from the training rows
    seen = []

    def checking_factory(x_fit, t_fit, x_val, t_val, **kwargs):
        fit_rows = [r.tobytes() for r in x_fit]
        val_rows = [r.tobytes() for r in x_val]
        assert all(r in train_rows for r in fit_rows + val_rows), "a non-training sample reached train_fn"
        assert not test_only.intersection(fit_rows + val_rows), "a test sample reached train_fn"
        assert len(x_fit) + len(x_val) == len(x_train)
        inner = search_example.make_train_fn(x_fit, t_fit, x_val, t_val, **kwargs)

        def train_fn(**params):
            seen.append(params)
            score = inner(**params)
            assert math.isnan(score) or 0.0 <= score <= 1.0
            return score

        train_fn.curves = inner.curves
        return train_fn

    results, curves = search_example.search(x_train, t_train, trials=2, epochs=1, seed=0, factory=checking_factory)
    assert len(seen) == 2 and len(results) == 2 and len(curves) == 2
    assert set(results[0]["params"]) == {"lr", "weight_decay"}
    assert results[0]["score"] >= results[1]["score"]


def test_digits_search_space_is_log_uniform_lr_and_weight_decay(search_example):
    assert search_example.SPACE["lr"][0] == "log"
    assert search_example.SPACE["weight_decay"][0] == "log"

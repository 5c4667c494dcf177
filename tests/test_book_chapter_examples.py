"""The book's chapter scripts in ``examples/book/`` (written on ``fastnn.book``) run in a fresh process with
``--quick``, write PNGs that decode, and print numbers that say the experiment came out as the book's.

The scripts share one output folder, as the book's do their parameter files: ``ch07_apply_filter.py``
reads the weights ``ch07_visualize_filter.py`` saves, ``ch08_misclassified.py`` and
``ch08_half_float_network.py`` those of ``ch08_train_deepnet.py``. Every script runs with its default
``--seed 0``; the accuracy bars sit below the minimum over seeds 0-9 (noted at each bar).
"""
import os

import pytest

from fastnn.testing import assert_plot_png, run_example, scripts_no_test_names

pytest.importorskip("matplotlib.image", reason="the examples need matplotlib (the plot extra)")

BOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "book")

# script -> the PNG files it must write
CHAPTER_SCRIPTS = {
    "ch03_neuralnet_batch.py": ["ch03_predictions.png"],
    "ch04_train_neuralnet.py": ["ch04_train_neuralnet.png"],
    "ch05_buy_apple_orange.py": [],
    "ch05_gradient_check.py": ["ch05_gradient_check.png"],
    "ch05_train_neuralnet.py": ["ch05_train_neuralnet.png"],
    "ch06_optimizer_compare.py": ["ch06_optimizer_compare.png"],
    "ch06_batch_norm_gradient_check.py": ["ch06_batch_norm_gradient_check.png"],
    "ch06_batch_norm_test.py": ["ch06_batch_norm_test.png"],
    "ch06_overfit_weight_decay.py": ["ch06_overfit_weight_decay.png"],
    "ch06_overfit_dropout.py": ["ch06_overfit_dropout.png"],
    "ch07_visualize_filter.py": ["ch07_filters.png"],
    "ch07_apply_filter.py": ["ch07_apply_filter.png"],
    "ch08_train_deepnet.py": ["ch08_train_deepnet.png"],
    "ch08_misclassified.py": ["ch08_misclassified.png"],
    "ch08_half_float_network.py": ["ch08_half_float_network.png"],
}
# script -> the script whose parameter file it reads (run first, so it need not train its own)
NEEDS = {
    "ch07_apply_filter.py": "ch07_visualize_filter.py",
    "ch08_misclassified.py": "ch08_train_deepnet.py",
    "ch08_half_float_network.py": "ch08_train_deepnet.py",
}


def run_script(script, out):
    return run_example(os.path.join(BOOK, script), out)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Each script run once, all into one folder: ``ran(script) -> (CompletedProcess, out_dir)``."""
    out = tmp_path_factory.mktemp("book_chapters")
    cache = {}

    def get(script):
        if script not in cache:
            if script in NEEDS:
                get(NEEDS[script])
            cache[script] = run_script(script, out)
        return cache[script], out

    return get


def output(ran, script):
    """The script's stdout, after checking that it exited with 0."""
    (proc, _) = ran(script)
    assert proc.returncode == 0, \
        f"{script} exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def values(stdout, key):
    """``{(tokens between key and value): value}`` of the lines ``key [names...] value``."""
    found = {}
    for line in stdout.splitlines():
        tokens = line.split()
        if len(tokens) >= 2 and tokens[0] == key:
            found[tuple(tokens[1:-1])] = float(tokens[-1])
    assert found, f"no {key!r} line in:\n{stdout}"
    return found


def value(stdout, key, *names):
    return values(stdout, key)[names]


@pytest.mark.parametrize("script", list(CHAPTER_SCRIPTS))
def test_chapter_script_runs_and_writes_png(script, ran):
    stdout = output(ran, script)
    assert stdout.strip(), f"{script} printed nothing"
    _, out = ran(script)
    for name in CHAPTER_SCRIPTS[script]:
        path = out / name
        assert path.is_file(), f"{script} did not write {name}; wrote {sorted(os.listdir(out))}"
        assert_plot_png(path, min_side=300, min_colours=10)


def test_every_book_script_is_run_by_some_test():
    """Each examples/book/*.py (helpers start with ``_``) is named by a test module that runs it."""
    assert set(CHAPTER_SCRIPTS) <= {f for f in os.listdir(BOOK) if f.endswith(".py")}
    assert scripts_no_test_names(BOOK, os.path.dirname(os.path.abspath(__file__))) == []


def test_ch03_batch_inference_matches_one_at_a_time_and_the_network(ran):
    stdout = output(ran, "ch03_neuralnet_batch.py")
    assert value(stdout, "accuracy_batch") == value(stdout, "accuracy_single")
    assert value(stdout, "accuracy_batch") >= 0.9  # seeds 0-9: 0.925-0.964
    # the book's forward pass with fastnn.book.functions' sigmoid/softmax is the network's predict
    assert value(stdout, "max_abs_diff_vs_network") < 1e-12


def test_ch04_numerical_gradient_training_lowers_the_loss(ran):
    stdout = output(ran, "ch04_train_neuralnet.py")
    assert value(stdout, "loss_first") > 2.1  # near ln 10 at the start
    assert value(stdout, "loss_last") < value(stdout, "loss_first") - 1.0  # seeds 0-9: a drop of 1.5-1.7
    assert value(stdout, "test_acc") >= 0.65  # seeds 0-9: 0.75-0.82


def test_ch05_buy_apple_orange_gives_the_books_numbers(ran):
    """The book's figures 5-16 and 5-17 (its printed values, not fastnn's output)."""
    stdout = output(ran, "ch05_buy_apple_orange.py")
    assert value(stdout, "price", "apple") == pytest.approx(220)
    assert value(stdout, "price", "apple_orange") == pytest.approx(715)
    book = {("apple", "dapple"): 2.2, ("apple", "dapple_num"): 110, ("apple", "dtax"): 200,
            ("apple_orange", "dapple_num"): 110, ("apple_orange", "dapple"): 2.2, ("apple_orange", "dorange"): 3.3,
            ("apple_orange", "dorange_num"): 165, ("apple_orange", "dtax"): 650}
    assert values(stdout, "grad") == pytest.approx(book)


def test_ch05_backprop_matches_numerical_gradient(ran):
    stdout = output(ran, "ch05_gradient_check.py")
    diffs, grads = values(stdout, "max_abs_diff"), values(stdout, "max_abs_grad")
    assert sorted(k[0] for k in diffs) == ["W1", "W2", "b1", "b2"]
    for key, diff in diffs.items():
        # the book's loss is -log(y + 1e-7): its derivative is off the exact one backprop computes by
        # 1e-7 / y relative (y ~ 0.1 at the start), so every difference is ~1e-6 of its gradient (b2: 2.3e-7).
        # Seeds 0-8 give that; seed 9 puts a hidden unit within h of ReLU's kink (W1, b1: 4.5e-4), in
        # the book's own code as here, which is why the check runs on one fixed seed.
        assert diff < 1e-6, f"{key[0]}: backprop and numerical gradients differ by {diff}"
        assert diff <= 1e-5 * grads[key], f"{key[0]}: difference {diff} against a gradient of {grads[key]}"


def test_ch05_backprop_training_reaches_the_books_accuracy(ran):
    stdout = output(ran, "ch05_train_neuralnet.py")
    assert value(stdout, "loss_last") < 0.5 < 2.0 < value(stdout, "loss_first")
    assert value(stdout, "test_acc") >= 0.9  # seeds 0-9: 0.93-0.94


def test_ch06_sgd_is_the_slowest_optimizer(ran):
    stdout = output(ran, "ch06_optimizer_compare.py")
    first, final = values(stdout, "first_loss"), values(stdout, "final_loss")
    for key in first:
        assert final[key] < first[key], f"{key[0]}: loss did not fall ({first[key]} -> {final[key]})"
    for key in (("Momentum",), ("AdaGrad",), ("Adam",)):
        assert final[key] < 0.5 * final[("SGD",)], f"{key[0]} {final[key]} vs SGD {final[('SGD',)]}"
        assert final[key] < 0.15  # seeds 0-9: at most 0.045 (SGD: 0.38-0.59)
    assert all(acc >= 0.93 for key, acc in values(stdout, "test_acc").items() if key != ("SGD",))  # min 0.95


def test_ch06_batch_norm_backprop_matches_numerical_gradient(ran):
    stdout = output(ran, "ch06_batch_norm_gradient_check.py")
    diffs, grads = values(stdout, "max_abs_diff"), values(stdout, "max_abs_grad")
    one = {k[1]: v for k, v in diffs.items() if k[0] == "1"}
    assert set(one) == {"W1", "b1", "W2", "b2", "W3", "b3", "gamma1", "beta1", "gamma2", "beta2"}
    # a 1-sample batch: everything upstream of batch norm 2's output (= beta2 = 0) has gradient 0
    for key in ("W1", "b1", "W2", "b2", "gamma1", "beta1", "gamma2", "W3"):
        assert grads[("1", key)] == 0 and one[key] == 0, key
    assert one["b3"] < 1e-6
    # beta2 = 0 sits on ReLU's kink: backprop uses the book's relu'(0) = 0, central differences half a slope
    assert grads[("1", "beta2")] == 0 and one["beta2"] > 0.1
    for key, diff in diffs.items():
        if key[0] != "10":
            continue
        if key[1] in ("b1", "b2"):  # a bias before batch norm: its gradient is 0 up to rounding
            assert grads[key] < 1e-12 and diff < 1e-10, key
        else:  # seeds 0-9: at most 4.6e-5 of the gradient's size (the loss's 1e-7, see the script)
            assert diff <= 2e-4 * grads[key], f"{key[1]}: difference {diff} against a gradient of {grads[key]}"


def test_ch06_batch_norm_trains_at_every_weight_scale(ran):
    stdout = output(ran, "ch06_batch_norm_test.py")
    acc = values(stdout, "final_acc")
    assert sorted({k[0] for k in acc}, key=float) == ["0.001", "0.01", "0.1", "1"]
    assert acc[("0.01", "batchnorm")] >= 0.9 and acc[("0.001", "batchnorm")] >= 0.6  # seeds 0-9: >= 0.995, 0.66
    for scale in ("1", "0.01", "0.001"):  # without batch norm these stay at chance (or overflow)
        assert acc[(scale, "plain")] <= 0.2, scale
    for scale in ("1", "0.1", "0.01", "0.001"):
        assert acc[(scale, "batchnorm")] > acc[(scale, "plain")] + 0.1, scale


def test_ch06_weight_decay_shrinks_the_weights_and_stops_the_fit(ran):
    stdout = output(ran, "ch06_overfit_weight_decay.py")
    final = values(stdout, "final")
    assert final[("0", "train_acc")] >= 0.9  # seeds 0-9: 0.95-0.99
    assert final[("0.1", "sum_w2")] < 0.7 * final[("0", "sum_w2")]  # seeds 0-9: 0.55-0.57 of it
    # seeds 0-9: 0.09-0.16 lower. The train-test gap is not asserted: on the 8x8 digits it narrows for
    # most seeds but not all (see the script)
    assert final[("0.1", "train_acc")] < final[("0", "train_acc")] - 0.05


def test_ch06_dropout_keeps_training_accuracy_below_100_percent(ran):
    stdout = output(ran, "ch06_overfit_dropout.py")
    final = values(stdout, "final")
    assert final[("False", "train_acc")] >= 0.99
    assert final[("True", "train_acc")] < final[("False", "train_acc")]
    assert final[("False", "test_acc")] >= 0.88 and final[("True", "test_acc")] >= 0.8  # seeds 0-9: 0.91, 0.86


def test_ch07_trained_filters_are_smoother_than_random_ones(ran):
    stdout = output(ran, "ch07_visualize_filter.py")
    corr = values(stdout, "neighbour_corr")
    assert abs(corr[("initial",)]) < 0.15 < corr[("trained",)]  # seeds 0-9: |initial| <= 0.09, trained >= 0.215
    assert value(stdout, "test_acc") >= 0.7  # seeds 0-9: 0.80-0.85


def test_ch07_convolution_is_the_direct_correlation(ran):
    stdout = output(ran, "ch07_apply_filter.py")
    assert "not found" not in stdout  # the weights ch07_visualize_filter.py saved were loaded
    for name, diff in values(stdout, "max_abs_diff_vs_direct").items():
        assert diff < 1e-12, name
    edges = values(stdout, "edge_response")
    assert edges[("vertical",)] > 10 and edges[("horizontal",)] < 0.1


def test_ch08_deep_convnet_learns(ran):
    stdout = output(ran, "ch08_train_deepnet.py")
    assert value(stdout, "loss_last") < value(stdout, "loss_first") - 0.2  # seeds 0-9: a drop of 0.37-0.54
    assert value(stdout, "test_acc") >= 0.55  # seeds 0-9: 0.65-0.82


def test_ch08_misclassified_digits_are_the_errors_of_the_trained_network(ran):
    stdout = output(ran, "ch08_misclassified.py")
    assert "not found" not in stdout
    acc = value(stdout, "test_acc")
    # the saved weights, reloaded (trained in float32 with --quick, predicted here in float64)
    assert abs(acc - value(output(ran, "ch08_train_deepnet.py"), "test_acc")) <= 2 / 360
    assert value(stdout, "misclassified") == round((1 - acc) * 360)


def test_ch08_float16_rounding_keeps_the_accuracy(ran):
    stdout = output(ran, "ch08_half_float_network.py")
    assert "not found" not in stdout
    acc = values(stdout, "test_acc")
    assert abs(acc[("float16",)] - acc[("float64",)]) <= 2 / 360
    assert value(stdout, "changed_predictions") <= 2
    assert value(stdout, "max_rel_rounding") <= 2.0 ** -11  # float16's half-ulp, relative

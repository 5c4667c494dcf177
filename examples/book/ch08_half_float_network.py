"""Chapter 8, ``half_float_network.py``: the trained ``DeepConvNet``'s accuracy with half-precision numbers.

As the book: ``DeepConvNet()`` loads its trained weights (``OUT/deep_convnet_params.pkl`` from
``ch08_train_deepnet.py``, trained first when missing), the test accuracy is computed, then the
test images are converted with ``x_test.astype(np.float16)`` and every parameter is rounded to
float16 in place, ``param[...] = param.astype(np.float16)``, and the accuracy computed again.

What the book's script measures: the assignment writes the float16 values back into the float64
arrays, so the network still computes in float64 (the book's layers compute in their weights'
dtype, and so do ``fastnn.book``'s): the experiment shows that weights and inputs carried at
float16 *precision* (an 11-bit significand, about 3 decimal digits) lose next to nothing. Each
value in float16's normal range (magnitude at least 2^-14 ~ 6.1e-5) moves by at most 2^-11 ~ 4.9e-4
of itself; smaller ones (a few biases and weights) are subnormal in float16 and keep less.

Prints ``test_acc float64 VALUE``, ``test_acc float16 VALUE``, ``changed_predictions COUNT`` (test
digits whose predicted class changed) and ``max_rel_rounding VALUE`` (the largest relative change
rounding made to a parameter in float16's normal range). Writes ``ch08_half_float_network.png``: the predicted-class
probabilities of the first test digits before and after rounding.

    python examples/book/ch08_half_float_network.py [--quick] [--out DIR] [--backend NAME] [--seed N] [--params FILE]
"""
from __future__ import annotations

import os
import sys

import numpy as np

from fastnn.book.deep_convnet import DeepConvNet

from _book import new_figure, parse_args, save, to_host
from ch08_train_deepnet import PARAMS, load_mnist_like, train_deepnet


def probabilities(network, x, batch_size=100):
    """Softmax of ``network.predict(x, train_flg=False)`` on the host, ``batch_size`` images at a time
    (as ``network.accuracy`` goes: the whole test set at once would need ~300 MB of im2col buffers)."""
    scores = np.concatenate([to_host(network.predict(x[i:i + batch_size], train_flg=False))
                             for i in range(0, x.shape[0], batch_size)]).astype(np.float64)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(argv=None):
    args = parse_args(__doc__, argv, params=PARAMS)
    _, (x_test, t_test) = load_mnist_like()
    x_test = x_test.astype(np.float64)

    network = DeepConvNet()
    if not os.path.exists(args.params):
        print(f"{args.params} not found: training DeepConvNet first (ch08_train_deepnet.py)")
        train_deepnet(network, args.quick)
        network.save_params(args.params)
    network.load_params(args.params)

    print("caluculate accuracy (float64) ... ")
    y64 = probabilities(network, x_test)
    acc64 = float(np.mean(y64.argmax(axis=1) == t_test))  # network.accuracy(x_test, t_test), from the same pass
    print(acc64)

    # float16に型変換 (to float16)
    x_test = x_test.astype(np.float16)
    worst = 0.0
    for param in network.params.values():
        before = to_host(param).copy()
        param[...] = param.astype(np.float16)
        after = to_host(param)
        normal = np.abs(before) >= np.finfo(np.float16).tiny  # 2^-14: below it float16 is subnormal
        if normal.any():
            worst = max(worst, float(np.abs((after[normal] - before[normal]) / before[normal]).max()))

    print("caluculate accuracy (float16) ... ")
    y16 = probabilities(network, x_test)
    acc16 = float(np.mean(y16.argmax(axis=1) == t_test))
    print(acc16)

    changed = int((y64.argmax(axis=1) != y16.argmax(axis=1)).sum())
    print(f"test_acc float64 {acc64:.4f}")
    print(f"test_acc float16 {acc16:.4f}")
    print(f"changed_predictions {changed}")
    print(f"max_rel_rounding {worst:.3e}")
    print(f"max_abs_prob_diff {np.abs(y64 - y16).max():.3e}")

    fig = new_figure(10, 4)
    ax = fig.add_subplot(1, 1, 1)
    n = 40
    idx = np.arange(n)
    ax.bar(idx - 0.2, y64[idx, y64[:n].argmax(axis=1)], 0.4, label=f"float64 (accuracy {acc64:.3f})")
    ax.bar(idx + 0.2, y16[idx, y64[:n].argmax(axis=1)], 0.4, label=f"float16-rounded (accuracy {acc16:.3f})")
    ax.set(xlabel="test digit", ylabel="probability of the float64 prediction", ylim=(0, 1.05),
           title=f"DeepConvNet, weights and inputs rounded to float16: {changed} of {len(t_test)} predictions changed")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    print(f"wrote {save(fig, args.out, 'ch08_half_float_network.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

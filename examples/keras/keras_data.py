"""Stand-ins for ``keras.datasets`` with the same shapes, dtypes and ``load_data`` signatures, made
without a download: MNIST from scikit-learn's bundled 8x8 digits (scaled up to 28x28 uint8), and
synthetic IMDB, Reuters and Boston-housing sets made from a fixed seed.

The five programs in this folder are Keras programs with only their imports and ``load_data``
lines changed to use these. ``FASTNN_EXAMPLES_QUICK=1`` makes every set small (CI).
"""
from __future__ import annotations

import os
import types

import numpy

QUICK = os.environ.get("FASTNN_EXAMPLES_QUICK") == "1"


def _mnist_load_data():
    """``(x_train, y_train), (x_test, y_test)``: uint8 images ``(N, 28, 28)`` and uint8 labels."""
    from fastnn.datasets import load_digits

    (x_tr, y_tr), (x_te, y_te) = load_digits(flatten=False)  # (N, 1, 8, 8) floats in [0, 1]

    def to_mnist(x):
        big = numpy.kron(x[:, 0], numpy.ones((3, 3), dtype=x.dtype))  # 24x24
        return numpy.pad(numpy.rint(big * 255), ((0, 0), (2, 2), (2, 2))).astype(numpy.uint8)

    if QUICK:
        x_tr, y_tr, x_te, y_te = x_tr[:400], y_tr[:400], x_te[:120], y_te[:120]
    return (to_mnist(x_tr), y_tr.astype(numpy.uint8)), (to_mnist(x_te), y_te.astype(numpy.uint8))


def _documents(rng, n, num_words, labels, topic_words, share, length=(40, 200)):
    """Word-index lists: common words (Zipf-like) mixed with a few words of each document's label."""
    docs = []
    for label in labels:
        size = int(rng.integers(*length))
        common = numpy.minimum(rng.zipf(1.3, size), num_words - 1)
        own = rng.choice(topic_words[label], max(1, int(size * share)))
        docs.append([1] + [int(w) for w in rng.permutation(numpy.concatenate([common, own]))])
    return docs


def _text_set(seed, n_train, n_test, num_words, classes, words_per_class, share, noise):
    rng = numpy.random.default_rng(seed)
    vocab = rng.permutation(numpy.arange(20, min(num_words, 10000)))
    topic_words = [vocab[i * words_per_class:(i + 1) * words_per_class] for i in range(classes)]
    out = []
    for n in (n_train, n_test):
        labels = rng.integers(0, classes, n)
        docs = numpy.empty(n, dtype=object)
        docs[:] = _documents(rng, n, num_words, labels, topic_words, share)
        flip = rng.random(n) < noise  # mislabelled documents, as real sets have
        labels = numpy.where(flip, rng.integers(0, classes, n), labels)
        out.append((docs, labels.astype(numpy.int64)))
    return tuple(out)


def _imdb_load_data(num_words=10000):
    """Reviews as lists of word indices (below ``num_words``) and 0/1 sentiment labels."""
    n_train, n_test = (2000, 600) if QUICK else (5000, 5000)
    # The quick set trains for 16 steps only: a stronger sentiment signal makes its result as steady
    # as the full set's 40 steps make it (0.05 here left some runs near chance).
    share = 0.15 if QUICK else 0.05
    return _text_set(7, n_train, n_test, num_words, 2, 60, share, 0.1)


def _reuters_load_data(num_words=10000):
    """Newswires as lists of word indices (below ``num_words``) and topic labels 0..45."""
    n_train, n_test = (900, 300) if QUICK else (8982, 2246)
    return _text_set(11, n_train, n_test, num_words, 46, 40, 0.15, 0.1)


def _boston_housing_load_data():
    """13 features of very different scales and a price in thousands, 404 / 102 samples."""
    rng = numpy.random.default_rng(3)
    n = 506
    scale = numpy.array([8.0, 23.0, 6.8, 0.25, 0.12, 0.7, 28.0, 2.1, 8.7, 168.0, 2.2, 91.0, 7.1])
    center = numpy.array([3.6, 11.4, 11.1, 0.07, 0.55, 6.3, 68.6, 3.8, 9.5, 408.0, 18.5, 356.7, 12.7])
    z = rng.standard_normal((n, 13))
    x = numpy.abs(center + scale * z)
    price = 22.5 + 6.5 * z[:, 5] - 5.0 * z[:, 12] + 2.0 * z[:, 12] ** 2 - 2.5 * z[:, 10] - 1.5 * z[:, 4] * z[:, 7] \
        + 1.5 * rng.standard_normal(n)
    price = numpy.clip(price, 5.0, 50.0)
    return (x[:404], price[:404]), (x[404:], price[404:])


mnist = types.SimpleNamespace(load_data=_mnist_load_data)
imdb = types.SimpleNamespace(load_data=_imdb_load_data)
reuters = types.SimpleNamespace(load_data=_reuters_load_data)
boston_housing = types.SimpleNamespace(load_data=_boston_housing_load_data)

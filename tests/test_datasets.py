"""Datasets: bundled digits, MNIST from IDX files the test writes, spirals, splits, batches."""
import gzip
import struct

import numpy
import pytest

from fastnn import datasets


def test_load_digits_fixed_split_scaled():
    (xtr, ttr), (xte, tte) = datasets.load_digits()
    assert xtr.shape == (1437, 64) and xte.shape == (360, 64) and xtr.dtype == numpy.float32
    assert 0 <= xtr.min() and xtr.max() == 1.0
    assert set(numpy.unique(ttr)) == set(range(10))
    (xtr2, _), _ = datasets.load_digits()
    numpy.testing.assert_array_equal(xtr, xtr2)  # the split is fixed
    (_, oh), _ = datasets.load_digits(one_hot=True)
    assert oh.shape == (1437, 10) and numpy.array_equal(oh.argmax(1), ttr)
    (img, _), _ = datasets.load_digits(flatten=False)
    assert img.shape == (1437, 1, 8, 8)


def write_idx(path, array, gz=False):
    codes = {numpy.dtype(numpy.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_reads_idx_files(tmp_path, gz):
    rng = numpy.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=numpy.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=numpy.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=numpy.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3, dtype=numpy.uint8),
    }
    for name, a in arrays.items():
        write_idx(tmp_path / (name + (".gz" if gz else "")), a, gz)
    (xtr, ttr), (xte, tte) = datasets.load_mnist(tmp_path)
    assert xtr.shape == (5, 784) and xte.shape == (3, 784) and xtr.dtype == numpy.float32
    numpy.testing.assert_allclose(xtr[1], arrays["train-images-idx3-ubyte"][1].ravel() / 255.0, rtol=1e-6)
    numpy.testing.assert_array_equal(tte, arrays["t10k-labels-idx1-ubyte"])
    (img, oh), _ = datasets.load_mnist(tmp_path, flatten=False, normalize=False, one_hot_label=True)
    assert img.shape == (5, 1, 28, 28) and img.max() > 1 and oh.shape == (5, 10)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        datasets.load_mnist(tmp_path)
    bad = tmp_path / "short"
    write_idx(bad, numpy.zeros((4, 2), numpy.uint8))
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"declares shape \(4, 2\) \(8 bytes\) but the file holds 5 bytes"):
        datasets.read_idx(bad)
    (tmp_path / "junk").write_bytes(b"PK\x03\x04....")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(tmp_path / "junk")


def test_make_spiral_and_split():
    x, t = datasets.make_spiral(50, 3, seed=1)
    assert x.shape == (150, 2) and numpy.bincount(t).tolist() == [50, 50, 50]
    (a, b), (c, d) = datasets.train_test_split(x, t, test_size=0.2, seed=0)
    assert len(a) == 120 and len(c) == 30 and numpy.bincount(d).tolist() == [10, 10, 10]
    (a2, _), _ = datasets.train_test_split(x, t, test_size=0.2, seed=0)
    numpy.testing.assert_array_equal(a, a2)
    with pytest.raises(ValueError, match="x has 150 samples but t has 3"):
        datasets.train_test_split(x, t[:3])


def test_one_hot():
    numpy.testing.assert_array_equal(datasets.one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])


def test_data_loader_batches_every_sample_once_per_epoch():
    x = numpy.arange(10, dtype=numpy.float32)[:, None]
    t = numpy.arange(10)
    loader = datasets.DataLoader(x, t, batch_size=4, shuffle=True, seed=0)
    assert len(loader) == 3
    seen = numpy.concatenate([tb for _, tb in loader])
    assert sorted(seen.tolist()) == list(range(10))
    second = numpy.concatenate([tb for _, tb in loader])
    assert not numpy.array_equal(seen, second)  # reshuffled per epoch
    sizes = [len(xb) for xb, _ in datasets.DataLoader(x, t, batch_size=4, drop_last=True)]
    assert sizes == [4, 4]
    ordered = numpy.concatenate([tb for _, tb in datasets.DataLoader(x, t, batch_size=3, shuffle=False)])
    numpy.testing.assert_array_equal(ordered, t)

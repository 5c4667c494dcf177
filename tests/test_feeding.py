"""``fastnn.feeding``: host-gathered, double-buffered batches for data that does not fit on the device.

On the CPU the protocol runs through ``NumpyTransfer`` (plain copies, ``None`` events) and a
recording subclass that logs every stream/event call, so the ordering that keeps the GPU path
race-free is checked here too; the ``gpu`` test runs ``CupyTransfer`` on a real device.
"""
import numpy
import pytest

from fastnn import feeding
from fastnn.backend import get_ops, select
from fastnn.feeding import CupyTransfer, HostBatches, NumpyTransfer, data_placement, fits_on_device
from fastnn.testing import has_gpu


def _data(n, feat, xdtype=numpy.float64, ydtype=numpy.int64, seed=0):
    rng = numpy.random.default_rng(seed)
    if numpy.dtype(xdtype).kind == "u":
        x = rng.integers(0, 256, size=(n,) + feat).astype(xdtype)
    else:
        x = rng.standard_normal((n,) + feat).astype(xdtype)
    y = rng.integers(0, 10, size=n).astype(ydtype) if numpy.dtype(ydtype).kind in "iu" \
        else rng.standard_normal((n, 3)).astype(ydtype)
    return x, y


def _batches(n, batch_size, rng):
    order = rng.permutation(n)
    return [order[s:s + batch_size] for s in range(0, n, batch_size)]


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("xdtype", [numpy.float64, numpy.uint8, numpy.float32], ids=["x-f64", "x-u8", "x-f32"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ydtype", [numpy.int64, numpy.float64], ids=["y-int", "y-float"])
def test_batches_equal_host_gather(xdtype, dtype, ydtype):
    """37 samples of shape (3, 5), batch 8 (ragged last batch of 5), three shuffled epochs: every
    batch equals ``x[idx]`` cast to the model dtype, and ``y[idx]`` with y's own dtype."""
    x, y = _data(37, (3, 5), xdtype, ydtype)
    transfer = NumpyTransfer()
    rng = numpy.random.default_rng(1)
    calls = 0
    with HostBatches(x, y, dtype, 8, transfer) as hb:
        for _ in range(3):
            sizes = []
            for idx in _batches(37, 8, rng):
                xb, yb = hb.get(idx)
                calls += 1
                assert xb.dtype == numpy.dtype(dtype) and yb.dtype == y.dtype
                assert xb.shape == (len(idx), 3, 5) and yb.shape == (len(idx),) + y.shape[1:]
                numpy.testing.assert_array_equal(xb, x[idx].astype(dtype))
                numpy.testing.assert_array_equal(yb, y[idx])
                sizes.append(len(idx))
            assert sizes == [8, 8, 8, 8, 5]
    assert transfer.copies == 2 * calls  # one copy for x and one for y per batch


def test_one_dimensional_x_and_repeated_indices():
    """1-D features and indices drawn with replacement (``ReplacementSampler``) gather correctly."""
    x = numpy.arange(10, dtype=numpy.int32)
    y = numpy.arange(10, dtype=numpy.float32) * 0.5
    hb = HostBatches(x, y, numpy.float32, 4, NumpyTransfer())
    idx = numpy.array([3, 3, 9, 0])
    xb, yb = hb.get(idx)
    numpy.testing.assert_array_equal(xb, numpy.array([3, 3, 9, 0], numpy.float32))
    numpy.testing.assert_array_equal(yb, numpy.array([1.5, 1.5, 4.5, 0.0], numpy.float32))
    hb.close()


def test_batches_are_double_buffered():
    """The batch from call i survives call i + 1 and is overwritten by call i + 2 (slot i % 2)."""
    x, y = _data(30, (4,))
    hb = HostBatches(x, y, numpy.float64, 10, NumpyTransfer())
    i0, i1, i2 = numpy.arange(0, 10), numpy.arange(10, 20), numpy.arange(20, 30)
    x0, y0 = hb.get(i0)
    x1, y1 = hb.get(i1)
    numpy.testing.assert_array_equal(x0, x[i0])  # call 1 left call 0's batch alone
    numpy.testing.assert_array_equal(y0, y[i0])
    hb.get(i2)
    numpy.testing.assert_array_equal(x1, x[i1])  # call 2 left call 1's batch alone
    numpy.testing.assert_array_equal(y1, y[i1])
    numpy.testing.assert_array_equal(x0, x[i2])  # and reused call 0's slot
    numpy.testing.assert_array_equal(y0, y[i2])
    hb.close()


# ------------------------------------------------------------------ event protocol
class RecordingTransfer(NumpyTransfer):
    """Logs every call, with unique tokens for events: ``c<n>`` compute events, ``x<n>`` copy events."""

    def __init__(self):
        super().__init__()
        self.log, self._n = [], {"c": 0, "x": 0}

    def _token(self, kind):
        self._n[kind] += 1
        return f"{kind}{self._n[kind] - 1}"

    def record_compute(self):
        self.log.append(("record_compute", self._token("c")))
        return self.log[-1][1]

    def host_wait(self, event):
        self.log.append(("host_wait", event))

    def copy_wait(self, event):
        self.log.append(("copy_wait", event))

    def copy_async(self, dst, src):
        super().copy_async(dst, src)
        self.log.append(("copy_async", self._token("x")))
        return self.log[-1][1]

    def compute_wait(self, event):
        self.log.append(("compute_wait", event))


def test_event_protocol_order_and_waits():
    """Per call i (slot k): record the compute event (it closes the *other* slot's step), wait on the
    host for slot k's previous copy, let the copy stream wait for slot k's previous step, copy x
    then y, and let the compute stream wait for the copy of y."""
    x, y = _data(12, (2,))
    t = RecordingTransfer()
    hb = HostBatches(x, y, numpy.float32, 4, t)
    for i in range(3):
        hb.get(numpy.arange(4 * i, 4 * i + 4))
    assert t.log == [
        # call 0, slot 0: nothing used slot 0 before
        ("record_compute", "c0"), ("host_wait", None), ("copy_wait", None),
        ("copy_async", "x0"), ("copy_async", "x1"), ("compute_wait", "x1"),
        # call 1, slot 1: c0 was recorded for slot 1 (empty then, harmless)
        ("record_compute", "c1"), ("host_wait", None), ("copy_wait", "c0"),
        ("copy_async", "x2"), ("copy_async", "x3"), ("compute_wait", "x3"),
        # call 2, slot 0: the host waits for call 0's copy (x1), the copy stream for c1, recorded
        # at the start of call 1, after step 0 (which read slot 0) was enqueued, and not for c2
        # (that would also wait for step 1 and serialize copies with compute)
        ("record_compute", "c2"), ("host_wait", "x1"), ("copy_wait", "c1"),
        ("copy_async", "x4"), ("copy_async", "x5"), ("compute_wait", "x5"),
    ]
    n = len(t.log)
    hb.close()
    assert t.log[n:] == [("host_wait", "x5"), ("host_wait", "x3")]  # close waits for both slots' copies


def test_gather_happens_after_host_wait():
    """The host writes staging slot k only after ``host_wait`` returned: a transfer whose
    ``host_wait`` snapshots the staging buffers sees the previous batch still there."""
    x, y = _data(12, (2,))
    seen = []

    class Snapshot(NumpyTransfer):
        def host_wait(self, event):
            seen.append(hb._staging[len(seen) % 2][0][:4].copy())

    hb = HostBatches(x, y, numpy.float64, 4, Snapshot())
    for i in range(3):
        hb.get(numpy.arange(4 * i, 4 * i + 4))
    numpy.testing.assert_array_equal(seen[2], x[0:4])  # call 2's wait saw call 0's data in slot 0
    hb.close()


# ------------------------------------------------------------------ errors
def test_too_many_indices_is_an_error():
    x, y = _data(20, (3,))
    hb = HostBatches(x, y, numpy.float32, 8, NumpyTransfer())
    with pytest.raises(ValueError, match=r"HostBatches: 9 indices .*batch_size=8"):
        hb.get(numpy.arange(9))


def test_bad_indices_are_errors():
    x, y = _data(20, (3,))
    hb = HostBatches(x, y, numpy.float32, 8, NumpyTransfer())
    with pytest.raises(IndexError, match=r"HostBatches: indices must be in \[0, 20\)"):
        hb.get(numpy.array([0, 20]))
    with pytest.raises(IndexError, match=r"HostBatches: indices must be in \[0, 20\)"):
        hb.get(numpy.array([-1, 2]))
    with pytest.raises(ValueError, match=r"HostBatches: idx must be a 1-D integer array"):
        hb.get(numpy.array([0.0, 1.0]))
    hb.close()
    with pytest.raises(RuntimeError, match=r"HostBatches: get\(\) after close\(\)"):
        hb.get(numpy.arange(2))


def test_mismatched_lengths_is_an_error():
    x = numpy.zeros((10, 3))
    y = numpy.zeros(9, dtype=numpy.int64)
    with pytest.raises(ValueError, match=r"HostBatches: .*x of shape \(10, 3\) and y of shape \(9,\)"):
        HostBatches(x, y, numpy.float32, 4, NumpyTransfer())


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_batch_size_is_an_error(bad):
    x, y = _data(4, (2,))
    with pytest.raises(ValueError, match=r"HostBatches: batch_size must be a positive integer"):
        HostBatches(x, y, numpy.float32, bad, NumpyTransfer())


def test_non_float_dtype_is_an_error():
    x, y = _data(4, (2,))
    with pytest.raises(ValueError, match=r"HostBatches: dtype must be a float dtype.*int32"):
        HostBatches(x, y, numpy.int32, 2, NumpyTransfer())


# ------------------------------------------------------------------ environment and placement
@pytest.mark.parametrize("raw, expected", [(None, "auto"), ("", "auto"), ("auto", "auto"), ("device", "device"),
                                           ("host", "host"), (" HOST ", "host")])
def test_data_placement(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("FASTNN_DEVICE_DATA", raising=False)
    else:
        monkeypatch.setenv("FASTNN_DEVICE_DATA", raw)
    assert data_placement() == expected


def test_bad_data_placement_is_an_error(monkeypatch):
    monkeypatch.setenv("FASTNN_DEVICE_DATA", "gpu")
    with pytest.raises(ValueError, match=r"FASTNN_DEVICE_DATA must be one of auto, device, host; got 'gpu'"):
        data_placement()


@pytest.mark.parametrize("raw", ["0", "1.5", "-0.1", "half", "nan"])
def test_bad_fraction_is_an_error(monkeypatch, raw):
    monkeypatch.setenv("FASTNN_DEVICE_DATA_FRACTION", raw)
    with pytest.raises(ValueError, match=rf"FASTNN_DEVICE_DATA_FRACTION must be a number in \(0, 1\], got .*{raw}"):
        feeding.device_data_fraction()


def test_fraction_default_and_override(monkeypatch):
    monkeypatch.delenv("FASTNN_DEVICE_DATA_FRACTION", raising=False)
    assert feeding.device_data_fraction() == feeding.DEFAULT_FRACTION == 0.5
    monkeypatch.setenv("FASTNN_DEVICE_DATA_FRACTION", "0.25")
    assert feeding.device_data_fraction() == 0.25
    monkeypatch.setenv("FASTNN_DEVICE_DATA_FRACTION", "1")
    assert feeding.device_data_fraction() == 1.0


def test_fits_on_device_on_the_host_backend():
    ops = get_ops("numpy")
    assert fits_on_device(ops, 0) and fits_on_device(ops, 1 << 60) and fits_on_device(ops, 1 << 60, 0.01)


@pytest.mark.parametrize("placement, expected", [("host", True), ("device", False), ("auto", False)])
def test_feeds_from_host_follows_the_placement(monkeypatch, placement, expected):
    monkeypatch.setenv("FASTNN_DEVICE_DATA", placement)
    assert feeding.feeds_from_host(get_ops("numpy"), 1 << 60) is expected


def test_make_transfer_on_the_host_backend():
    assert type(feeding.make_transfer(get_ops("numpy"))) is NumpyTransfer


def test_module_imports_without_cupy():
    """No CuPy at module level: importing ``fastnn.feeding`` with CuPy blocked still works."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['cupy'] = None; sys.modules['cupyx'] = None\n"
            "import fastnn.feeding as f; assert f.fits_on_device(type('O', (), {'name': 'numpy'})(), 1 << 60)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ on a real GPU
@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs CuPy and a CUDA GPU: " + select.probe_cupy(0).reason)
def test_cupy_transfer_on_a_gpu():
    """Pinned staging, the copy stream and the events on a device: ragged shuffled batches, each
    read by a kernel on the compute stream while later batches are copied; results compared at the end."""
    import cupy

    ops = get_ops("cupy")
    assert fits_on_device(ops, 1024) and not fits_on_device(ops, 1 << 60)
    x, y = _data(1003, (7, 3), numpy.float64, numpy.int64)
    rng = numpy.random.default_rng(2)
    with cupy.cuda.Device(ops.device_id):
        transfer = CupyTransfer(ops)
        got, want = [], []
        with HostBatches(x, y, numpy.float32, 64, transfer) as hb:
            assert isinstance(hb._staging[0][0], numpy.ndarray)
            for _ in range(3):
                for idx in _batches(1003, 64, rng):
                    xb, yb = hb.get(idx)
                    assert isinstance(xb, cupy.ndarray) and xb.shape == (len(idx), 7, 3)
                    got.append((xb * 2, yb + 1))  # kernels on the compute stream, results in fresh arrays
                    want.append((x[idx].astype(numpy.float32) * 2, y[idx] + 1))
            xb, yb = hb.get(numpy.array([5, 1000, 5]))
            numpy.testing.assert_array_equal(xb.get(), x[[5, 1000, 5]].astype(numpy.float32))
            numpy.testing.assert_array_equal(yb.get(), y[[5, 1000, 5]])
        for (gx, gy), (wx, wy) in zip(got, want):
            numpy.testing.assert_array_equal(gx.get(), wx)
            numpy.testing.assert_array_equal(gy.get(), wy)

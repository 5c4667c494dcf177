"""Feeding training data that does not fit in GPU memory: host gather, pinned staging, async copies.

``Sequential.fit`` normally moves the whole training set to the device once and gathers batches
there. When the set is larger than the device can hold, it stays on the host instead and each
batch travels separately: ``HostBatches.get(idx)`` gathers the rows on the host into a pinned
(page-locked) staging buffer and copies them to the device on a separate CUDA stream. With two
staging slots and two device slots, gathering batch ``i + 1`` and copying it overlap the GPU's
compute on batch ``i``; CUDA events, never host syncs on the compute stream, keep them ordered.

The stream and event calls are behind a small *transfer* object, the backend's
(``ops.make_transfer()``, from ``fastnn.backend.transfer``), so that the protocol can be tested
without a GPU: ``CupyTransfer`` is the real one, ``NumpyTransfer`` does the same steps with plain
NumPy copies (events are ``None``). This module knows no backend: it asks ``ops`` whether its arrays
live on a device (``device_arrays``) and how much memory is left there (``available_memory()``).

Environment (read at call time, so tests and long-lived processes can change it):

- ``FASTNN_DEVICE_DATA``: ``auto`` (default: move the set to the device when ``fits_on_device``),
  ``device`` (always move it) or ``host`` (always feed from the host).
- ``FASTNN_DEVICE_DATA_FRACTION``: the share of free device memory the training set may take,
  in (0, 1]; default ``DEFAULT_FRACTION``.
"""
import os

import numpy

from fastnn.backend.transfer import CupyTransfer, NumpyTransfer  # noqa: F401  (re-exported)

__all__ = ["Inputs", "DEFAULT_FRACTION", "PLACEMENTS", "data_placement", "device_data_fraction", "fits_on_device",
           "feeds_from_host", "make_transfer", "HostBatches", "CupyTransfer", "NumpyTransfer"]

DEFAULT_FRACTION = 0.5
"""Half of the free device memory: the rest is left for parameters, activations and workspaces."""

PLACEMENTS = ("auto", "device", "host")
_PLACEMENT_VAR = "FASTNN_DEVICE_DATA"
_FRACTION_VAR = "FASTNN_DEVICE_DATA_FRACTION"


# ------------------------------------------------------------------ placement policy
def data_placement() -> str:
    """``FASTNN_DEVICE_DATA``: where training data lives (``auto``, ``device`` or ``host``)."""
    raw = os.environ.get(_PLACEMENT_VAR, "").strip()
    value = raw.lower() or "auto"
    if value not in PLACEMENTS:
        raise ValueError(f"{_PLACEMENT_VAR} must be one of {', '.join(PLACEMENTS)}; got {raw!r}")
    return value


def _check_fraction(value, source):
    if not 0.0 < value <= 1.0:  # also False for NaN
        raise ValueError(f"{source} must be a number in (0, 1], got {value!r}")
    return value


def device_data_fraction() -> float:
    """``FASTNN_DEVICE_DATA_FRACTION`` as a float in (0, 1], or ``DEFAULT_FRACTION`` when unset."""
    raw = os.environ.get(_FRACTION_VAR, "").strip()
    if not raw:
        return DEFAULT_FRACTION
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{_FRACTION_VAR} must be a number in (0, 1], got {raw!r}") from None
    return _check_fraction(value, _FRACTION_VAR)


def fits_on_device(ops, nbytes, fraction=None) -> bool:
    """Whether ``nbytes`` of training data may be moved to ``ops``'s device once.

    Free memory is ``ops.available_memory()`` (on CuPy: the driver's free bytes plus the bytes its
    pool holds but does not use, which are ours to reuse). Only ``fraction`` of it is granted because
    the model's parameters, activations and workspaces need the rest. Host backends always fit: host
    memory is their device.
    """
    if not getattr(ops, "device_arrays", False):
        return True
    fraction = device_data_fraction() if fraction is None else _check_fraction(float(fraction), "fraction")
    free = ops.available_memory()
    return free is None or int(nbytes) <= fraction * free


def feeds_from_host(ops, nbytes) -> bool:
    """The decision ``fit`` needs: feed batches from the host (``HostBatches``) rather than
    moving ``nbytes`` of data to the device once, following ``FASTNN_DEVICE_DATA``."""
    placement = data_placement()
    if placement == "auto":
        return not fits_on_device(ops, nbytes)
    return placement == "host"


def make_transfer(ops):
    """The transfer for ``ops`` (``ops.make_transfer()``): ``CupyTransfer`` on a CuPy backend,
    ``NumpyTransfer`` elsewhere."""
    return ops.make_transfer()


# ------------------------------------------------------------------ batches gathered on the host
class HostBatches:
    """Batches of host arrays ``x``, ``y`` delivered to the device, double-buffered.

    ``get(idx)`` returns device arrays ``(xb, yb)`` holding ``x[idx].astype(dtype)`` and ``y[idx]``
    (``y`` keeps its dtype), shapes ``(len(idx), ...)``, ``len(idx) <= batch_size``.

    Slots: two pinned staging buffers and two device buffers of ``batch_size`` rows each for ``x``
    and for ``y``. Call ``i`` uses slot ``k = i % 2`` and returns views of the first ``len(idx)``
    rows of device slot ``k``. Their contents stay intact until call ``i + 2`` overwrites the slot,
    so batch ``i`` is still there while batch ``i + 1`` is being prepared.

    Contract with the caller on the GPU: every kernel that reads batch ``i`` must be *enqueued* on
    the compute stream (the current stream) before call ``i + 1`` starts (the model's step is).
    That is what lets copy ``i + 1`` run while step ``i`` computes.

    Protocol of call ``i`` (slot ``k``, the other slot ``1 - k``), in this order:

    1. ``record_compute()``: an event on the compute stream after everything enqueued so far, i.e.
       after the step that read slot ``1 - k`` (call ``i - 1``'s batch). It is kept as the
       "compute done" event of slot ``1 - k``, and call ``i + 1`` waits on it.
    2. ``host_wait(copy event of slot k)``: the host blocks until the copy out of staging slot ``k``
       issued by call ``i - 2`` has finished, so it never overwrites bytes a DMA is still reading.
    3. host gather into staging slot ``k``: ``numpy.take(..., out=staging)`` when the dtypes match,
       else a take into a temporary and a cast into the staging view.
    4. ``copy_wait(compute-done event of slot k)``: the copy stream waits (on the device, the host
       does not) for the step that read device slot ``k`` (call ``i - 2``'s batch), so a copy never
       overwrites data a step still reads.
    5. ``copy_async`` of ``x`` then of ``y`` on the copy stream; each returns an event recorded after
       it; the one after ``y`` covers both (one stream runs in order). It becomes slot ``k``'s copy event.
    6. ``compute_wait(copy event)``: the compute stream waits for the copy, so the step's kernels see
       the batch without any host sync.

    ``close()`` (or leaving a ``with`` block) waits for outstanding copies and releases the buffers.
    """

    def __init__(self, x, y, dtype, batch_size, transfer):
        x, y = numpy.asarray(x), numpy.asarray(y)  # no copy for ndarrays and memmaps
        if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"HostBatches: x and y need the same number of samples (first dimension); "
                             f"got x of shape {x.shape} and y of shape {y.shape}")
        dtype = numpy.dtype(dtype)
        if dtype.kind != "f":
            raise ValueError(f"HostBatches: dtype must be a float dtype (the model's), got {dtype}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, numpy.integer)) or batch_size < 1:
            raise ValueError(f"HostBatches: batch_size must be a positive integer, got {batch_size!r}")
        self.x, self.y, self.dtype, self.batch_size = x, y, dtype, int(batch_size)
        self.transfer = transfer
        self._calls = 0
        self._staging = [self._pair(transfer.host_empty) for _ in range(2)]
        self._device = [self._pair(transfer.device_empty) for _ in range(2)]
        self._copy_done = [None, None]     # per slot: event after the last copy out of its staging buffer
        self._compute_done = [None, None]  # per slot: event after the last step that read its device buffer

    def _pair(self, empty):
        """One slot: ``(x buffer, y buffer)`` of ``batch_size`` rows."""
        n = self.batch_size
        return empty((n,) + self.x.shape[1:], self.dtype), empty((n,) + self.y.shape[1:], self.y.dtype)

    def __len__(self):
        return self.x.shape[0]

    def get(self, idx):
        """Device arrays ``(x[idx] as dtype, y[idx])``; valid until the call after next (see the class)."""
        if self._staging is None:
            raise RuntimeError("HostBatches: get() after close()")
        idx = self._check_idx(idx)
        m, k, t = idx.shape[0], self._calls % 2, self.transfer
        self._compute_done[1 - k] = t.record_compute()
        t.host_wait(self._copy_done[k])
        sx, sy = self._staging[k]
        _gather(self.x, idx, sx[:m])
        _gather(self.y, idx, sy[:m])
        dx, dy = self._device[k]
        t.copy_wait(self._compute_done[k])
        t.copy_async(dx[:m], sx[:m])
        done = t.copy_async(dy[:m], sy[:m])
        t.compute_wait(done)
        self._copy_done[k] = done
        self._calls += 1
        return dx[:m], dy[:m]

    def _check_idx(self, idx):
        idx = numpy.asarray(idx)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ValueError(f"HostBatches: idx must be a 1-D integer array, got dtype {idx.dtype} "
                             f"and shape {idx.shape}")
        if idx.shape[0] > self.batch_size:
            raise ValueError(f"HostBatches: {idx.shape[0]} indices is more than batch_size={self.batch_size}")
        n = self.x.shape[0]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"HostBatches: indices must be in [0, {n}), got {idx.min()}..{idx.max()}")
        return idx.astype(numpy.intp, copy=False)

    def close(self):
        """Wait for the copies still reading the staging buffers, then drop every buffer.

        Dropping a pinned buffer while a DMA reads it would let the pinned pool hand its bytes out
        again under the copy; waiting first makes ``close`` safe at any point.
        """
        if getattr(self, "_staging", None) is None:
            return
        for event in self._copy_done:
            self.transfer.host_wait(event)
        self._staging = self._device = None
        self._copy_done, self._compute_done = [None, None], [None, None]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: CuPy may already be gone
            pass


def _gather(src, idx, out):
    """``out[...] = src[idx]`` on the host without an extra copy when the dtypes match.

    ``idx`` is checked in range, so ``mode="clip"`` changes nothing; it avoids the buffered
    path ``numpy.take`` uses with ``out=`` under ``mode="raise"``.
    """
    if src.dtype == out.dtype:
        numpy.take(src, idx, axis=0, out=out, mode="clip")
    else:
        out[...] = numpy.take(src, idx, axis=0, mode="clip")


class Inputs:
    """The input arrays of a model with several inputs, selected by rows together: ``rows[idx]``
    selects the same samples of every array, ``shape[0]`` is the sample count."""

    __slots__ = ("arrays",)

    def __init__(self, arrays):
        self.arrays = tuple(arrays)

    @property
    def shape(self):
        return (self.arrays[0].shape[0],)

    def __len__(self):
        return self.arrays[0].shape[0]

    def __getitem__(self, rows):
        return Inputs(a[rows] for a in self.arrays)

    def map(self, fn):
        return Inputs(fn(a) for a in self.arrays)

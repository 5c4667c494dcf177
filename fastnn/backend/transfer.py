"""How host data reaches a backend's device: the *transfer* protocol ``fastnn.feeding.HostBatches``
(batches of a training set kept on the host) and a captured training step's per-step scalars
(``fastnn.backend.graphs``) stage their copies through. ``Ops.make_transfer()`` gives a backend's:

- ``CupyTransfer``: pinned host buffers, device buffers, a non-blocking copy stream and CUDA events;
- ``NumpyTransfer``: the same steps with plain NumPy copies (events are ``None``), for host
  backends and for testing the protocol without a GPU.

The steps, in the order ``HostBatches.get`` calls them, are described there. CuPy is imported only
inside ``CupyTransfer``, so this module imports where CuPy cannot.
"""
import numpy

__all__ = ["CupyTransfer", "NumpyTransfer"]


class CupyTransfer:
    """Pinned host buffers, device buffers and a non-blocking copy stream on ``ops``'s device.

    The copy stream is made with ``non_blocking=True`` so it never synchronizes implicitly with
    the legacy default stream that the model's kernels usually run on; ordering comes only from
    the events ``HostBatches`` records and waits on. Events are made with ``disable_timing=True``,
    the cheap kind for synchronization only.
    """

    def __init__(self, ops):
        import cupy

        self._cupy = cupy
        self.device_id = int(ops.device_id)
        self._stream = None

    @property
    def stream(self):
        """The copy stream, made at its first use (a captured step's staging copies on its own
        stream, ``copy_in_order``, and never needs one)."""
        if self._stream is None:
            with self._cupy.cuda.Device(self.device_id):
                self._stream = self._cupy.cuda.Stream(non_blocking=True)
        return self._stream

    def _event(self, stream):
        with self._cupy.cuda.Device(self.device_id):
            return stream.record(self._cupy.cuda.Event(disable_timing=True))

    def host_empty(self, shape, dtype):
        import cupyx

        return cupyx.empty_pinned(shape, dtype=dtype)

    def device_empty(self, shape, dtype):
        with self._cupy.cuda.Device(self.device_id):
            return self._cupy.empty(shape, dtype=dtype)

    def record_compute(self):
        return self._event(self._cupy.cuda.get_current_stream(self.device_id))

    def copy_wait(self, event):
        if event is not None:
            with self._cupy.cuda.Device(self.device_id):
                self.stream.wait_event(event)

    def copy_async(self, dst, src):
        dst.set(src, stream=self.stream)  # async: src is pinned
        return self._event(self.stream)

    def compute_wait(self, event):
        if event is not None:  # the null stream's handle (0) means the *current device's*: enter it
            with self._cupy.cuda.Device(self.device_id):
                self._cupy.cuda.get_current_stream().wait_event(event)

    def host_wait(self, event):
        if event is not None:
            event.synchronize()

    def new_event(self):
        """An event to reuse with ``copy_in_order`` (made once: a new one per copy costs host time)."""
        with self._cupy.cuda.Device(self.device_id):
            return self._cupy.cuda.Event(disable_timing=True)

    def copy_in_order(self, dst, src, event):
        """Copy pinned ``src`` into ``dst`` on the *current* stream, after what is queued there and
        before what is queued next (no second stream, no cross-stream waits), and record ``event``
        after it; returns ``event`` (``host_wait`` on it before ``src`` is written again). For small
        per-step values, such as a captured step's staging words; the caller's device is current."""
        stream = self._cupy.cuda.get_current_stream()
        dst.set(src, stream=stream)
        event.record(stream)
        return event


class NumpyTransfer:
    """The same steps with plain NumPy arrays and no events (``None``): host backends and tests.

    Copies are immediate, so the protocol is trivially ordered here; ``copies`` counts them so
    tests can check how many ``HostBatches`` issued.
    """

    def __init__(self, ops=None):
        self.copies = 0

    def host_empty(self, shape, dtype):
        return numpy.empty(shape, dtype=dtype)

    def device_empty(self, shape, dtype):
        return numpy.empty(shape, dtype=dtype)

    def record_compute(self):
        return None

    def copy_wait(self, event):
        pass

    def copy_async(self, dst, src):
        dst[...] = src
        self.copies += 1
        return None

    def compute_wait(self, event):
        pass

    def host_wait(self, event):
        pass

    def new_event(self):
        return None

    def copy_in_order(self, dst, src, event):
        dst[...] = src
        self.copies += 1
        return None

"""The flat parameter buffer: one contiguous 1-D array of parameters and one of gradients.

Every layer's weights (``W``, ``b``, ...) become reshaped views into ``flat.p`` and their
gradients (``dW``, ``db``, ...) views into ``flat.g``, so an optimizer step is one fused primitive
over the whole buffer, checkpoints and all-reduces are one array each, and the layer code does
not change. Trainable weights come first, then non-trainable ones (BatchNorm's running
statistics); ``runs()`` gives the maximal slices that share the same flags, so freezing a layer
or excluding weights from decay costs nothing inside the fused step.
"""
from __future__ import annotations

import numpy


class Entry:
    """One weight's place in the buffer."""

    __slots__ = ("layer", "name", "offset", "size", "shape", "order")

    def __init__(self, layer, name, offset, size, shape, order):
        self.layer, self.name, self.offset, self.size, self.shape = layer, name, offset, size, shape
        self.order = order  # position in layer order (get_weights/set_weights order)

    @property
    def key(self):
        return f"{self.layer.name}/{self.name}"

    @property
    def info(self):
        return self.layer._weights[self.name]  # read every step (runs()): no copy

    @property
    def trainable(self):
        return bool(self.layer.trainable and self.info["trainable"])

    @property
    def decay(self):
        return bool(self.info.get("decay", True))


def _check_fits(what, a, dtype):
    """Refuse finite values of ``a`` that would become inf in ``dtype`` (float64 1e39 in float32)."""
    dtype = numpy.dtype(dtype)
    if a.dtype.kind != "f" or dtype.kind != "f" or numpy.finfo(a.dtype).max <= numpy.finfo(dtype).max:
        return
    over = numpy.isfinite(a) & (numpy.abs(a) > numpy.finfo(dtype).max)
    if over.any():
        where = tuple(int(i) for i in numpy.argwhere(over)[0])
        raise ValueError(f"{what} has values beyond {dtype}'s range (first at index {where}: {float(a[where])!r}); "
                         f"they would become inf in the model's dtype {dtype}")


class FlatParams:
    """Parameters and gradients of a list of layers, packed into two flat arrays of one dtype."""

    def __init__(self, layers, ops, dtype):
        self.ops = ops
        self.dtype = numpy.dtype(dtype)
        weights = [(layer, name) for layer in layers for name in layer.weight_info()]
        order = {id_: i for i, id_ in enumerate((id(layer), name) for layer, name in weights)}
        weights.sort(key=lambda lw: not lw[0].weight_info()[lw[1]]["trainable"])  # stable: trainable first
        self.entries = []
        offset = 0
        for layer, name in weights:
            shape = tuple(getattr(layer, name).shape)
            size = int(numpy.prod(shape, dtype=numpy.int64))
            self.entries.append(Entry(layer, name, offset, size, shape, order[(id(layer), name)]))
            offset += size
        self.size = offset
        self.p = ops.alloc((self.size,), self.dtype)
        self.g = ops.alloc((self.size,), self.dtype)
        self._views = {}  # id(layer) -> [(attribute, view)]: what adopt() keeps bound
        for e in self.entries:
            value = getattr(e.layer, e.name)
            view = self.p[e.offset:e.offset + e.size].reshape(e.shape)
            view[...] = value if ops.owns(value) else ops.asarray(value)
            gview = self.g[e.offset:e.offset + e.size].reshape(e.shape)
            setattr(e.layer, e.name, view)
            setattr(e.layer, "d" + e.name, gview)
            self._views.setdefault(id(e.layer), []).extend([(e.name, view), ("d" + e.name, gview)])
        self._runs_key = None
        self._runs = []

    def adopt(self, layer):
        """Keep ``layer``'s weights and gradients in the buffer after its own code ran.

        A layer written the book's way assigns new arrays (``self.dW = x.T @ dout``) instead of writing
        into the views it was given; the optimizer would then never see them. The new values are
        copied into the views and the views bound again (cheap identity checks otherwise).
        """
        for attr, view in self._views.get(id(layer), ()):
            value = getattr(layer, attr)
            if value is view:
                continue
            if getattr(value, "shape", None) != view.shape:
                raise ValueError(f"{layer.name}: {attr} has shape {getattr(value, 'shape', None)} but the weight "
                                 f"was made with shape {view.shape}")
            view[...] = value if self.ops.owns(value) else self.ops.asarray(value)
            setattr(layer, attr, view)

    def runs(self):
        """``[(start, stop, decay)]``: maximal slices of trainable weights sharing one decay flag."""
        key = []  # (trainable, decay) per entry, as Entry's properties say, read inline: every step
        for e in self.entries:
            info = e.layer._weights[e.name]
            key.append((bool(e.layer.trainable and info["trainable"]), bool(info.get("decay", True))))
        key = tuple(key)
        if key != self._runs_key:
            runs = []
            for e, (trainable, decay) in zip(self.entries, key):
                if not trainable or e.size == 0:
                    continue
                if runs and runs[-1][1] == e.offset and runs[-1][2] == decay:
                    runs[-1] = (runs[-1][0], e.offset + e.size, decay)
                else:
                    runs.append((e.offset, e.offset + e.size, decay))
            self._runs, self._runs_key = runs, key
        return self._runs

    def get_host(self):
        """Every weight as a host NumPy array, in layer order (Keras's ``get_weights``)."""
        host = self.ops.asnumpy(self.p)
        return [host[e.offset:e.offset + e.size].reshape(e.shape).copy() for e in self.ordered_entries()]

    def ordered_entries(self):
        """Entries in layer order (the order ``get_weights``/``set_weights`` use)."""
        return sorted(self.entries, key=lambda e: e.order)

    def check_host(self, arrays):
        """Refuse ``arrays`` that do not match the weights one for one, in number and shape."""
        entries = self.ordered_entries()
        if len(arrays) != len(entries):
            raise ValueError(f"set_weights: the model has {len(entries)} weight arrays, got {len(arrays)}")
        for e, a in zip(entries, arrays):
            a = numpy.asarray(a)
            if a.shape != e.shape:
                raise ValueError(f"set_weights: {e.key} has shape {e.shape}, got an array of shape {a.shape}")
            if a.dtype.kind not in "biuf":
                raise TypeError(f"set_weights: {e.key} must hold real numbers, got dtype {a.dtype}")
            _check_fits(f"set_weights: {e.key}", a, self.dtype)
        return entries

    def set_host(self, arrays):
        entries = self.check_host(arrays)
        for e, a in zip(entries, arrays):
            self.p[e.offset:e.offset + e.size] = self.ops.asarray(numpy.asarray(a, dtype=self.dtype).reshape(-1))

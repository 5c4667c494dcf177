"""The host side of the numba backend's fused training step (``fastnn.kernels.cpu.fused``): a
``FusedPlan`` turns a compiled ``Sequential`` into the kernel's tables (one int64 row per layer, the
run's settings, offsets into the model's flat buffers), or ``unsupported_reason`` says in one
sentence why the model trains through the eager step instead. ``NumbaOps.train_plan`` is the way
in; ``fastnn.training`` asks the backend, never this module by name.
"""
from __future__ import annotations

import math

import numpy as np

from fastnn.kernels import LINEAR, NEEDS_Z
from fastnn.kernels.cpu.fused import (ACT, C_BATCH, C_DECOUPLED, C_DL, C_LOSS, C_METRIC, C_NB, C_NESTEROV, C_OPT,
                                      C_ROW0, C_STEP0, C_TB, C_XB, DENSE, DROPOUT, F_ALPHA, F_SCALE, K_ACT, K_B,
                                      K_DIN, K_DOUT, K_DX, K_DZ, K_KEEP, K_KIND, K_MASK, K_SEED, K_W, K_Y,
                                      LOSS_BCE, LOSS_MSE, LOSS_XENT_INDEX, LOSS_XENT_ONEHOT, METRIC_ARGMAX,
                                      METRIC_BINARY_LOGITS, METRIC_BINARY_PROBS, METRIC_NONE, NCFG, NCOL,
                                      NSCALARS, NUMPY_BLAS, OPT_ADAGRAD, OPT_ADAM, OPT_MOMENTUM, OPT_RMSPROP,
                                      OPT_SGD, train_steps)

__all__ = ["FusedPlan", "unsupported_reason", "optimizer_scalars"]


def _opt_kind(opt):
    """``(kind, nesterov, decoupled)`` for the optimizers the fused call knows, else None."""
    from fastnn import optimizers as O

    if getattr(opt, "clipvalue", None) is not None:
        return None  # clipped per element inside the primitive: no fused form yet
    t = type(opt)
    if t in (O.SGD, O.Momentum, O.Nesterov):
        return (OPT_MOMENTUM if opt.momentum > 0 else OPT_SGD), int(opt.nesterov), 0
    if t is O.AdaGrad:
        return OPT_ADAGRAD, 0, 0
    if t is O.RMSprop:
        return OPT_RMSPROP, 0, 0
    if t in (O.Adam, O.AdamW) and opt.rule == "adam":  # not amsgrad (a third slot)
        return OPT_ADAM, 0, int(opt.decoupled)
    return None


def optimizer_scalars(opt, dtype, wds, iteration0, steps):
    """``(steps, len(wds), NSCALARS)`` in ``dtype``: the scalar arguments ``NumbaOps`` passes to the
    optimizer kernel for each of ``steps`` updates from ``opt.iterations == iteration0`` and each
    piece's weight decay ``wds`` (float64 on the host, then cast: the same roundings)."""
    kind = _opt_kind(opt)[0]
    dt = np.dtype(dtype).type
    lr_of = opt._lr if callable(opt._lr) else None
    rows = np.zeros((steps, len(wds), NSCALARS), dtype)
    for k in range(steps):
        it = iteration0 + k
        lr = float(lr_of(it)) if lr_of is not None else opt._lr
        t = it + 1
        for j, wd in enumerate(wds):
            if kind == OPT_SGD:
                r = (dt(lr), dt(wd))
            elif kind == OPT_MOMENTUM:
                r = (dt(lr), dt(opt.momentum), dt(wd))
            elif kind == OPT_ADAGRAD:
                r = (dt(lr), dt(opt.eps), dt(1.0 - lr * wd))
            elif kind == OPT_RMSPROP:
                r = (dt(lr), dt(opt.rho), dt(1 - opt.rho), dt(opt.eps), dt(1.0 - lr * wd))
            else:
                b1, b2 = opt.beta1, opt.beta2
                r = (dt(b1), dt(1 - b1), dt(b2), dt(1 - b2), dt(opt.eps), dt(lr / (1.0 - b1 ** t)),
                     dt(1.0 / np.sqrt(1.0 - b2 ** t)), dt(wd), dt(1.0 - lr * wd))
            rows[k, j, :len(r)] = r
    return rows


def _head(model):
    """The activation the model fuses into its loss ("softmax", "sigmoid") or None."""
    return model.head


def _dense_act(model, layer):
    """The activation code a Dense applies in a training step: none (logits) when it is the last
    layer and the model fuses its activation into the loss."""
    return LINEAR if (_head(model) is not None and layer is model.layers[-1]) else layer.act


def unsupported_reason(model):
    """Why ``model`` cannot train through ``train_steps`` (a sentence for the log line), or None."""
    from fastnn.layers.core import SOFTMAX, Activation, Dense, Dropout, Flatten

    if getattr(model.ops, "name", None) != "numba":
        return f"the fused step runs on the numba backend, not {getattr(model.ops, 'name', None)}"
    if model.dtype not in (np.float32, np.float64) or len(model.input_shape) != 1:
        return "the fused step takes 2-D float32/float64 inputs"
    if model.optimizer is None or _opt_kind(model.optimizer) is None:
        return f"optimizer {type(model.optimizer).__name__} has no fused update"
    last = model.layers[-1]
    for layer in model.layers:
        if "forward" in vars(layer) or "backward" in vars(layer):
            return f"{layer.name}: forward/backward replaced on the layer object"
        act = _dense_act(model, layer) if type(layer) is Dense else getattr(layer, "act", None)
        if act in NEEDS_Z:
            return f"{layer.name}: its activation's derivative needs the pre-activation, which the fused step does not keep"
        if type(layer) is Dense:
            if _dense_act(model, layer) == SOFTMAX:
                return f"{layer.name}: a softmax output that is not fused into the loss"
        elif isinstance(layer, Activation) and type(layer).forward is Activation.forward \
                and type(layer).backward is Activation.backward:
            if layer.act == SOFTMAX and not (layer is last and _head(model) == "softmax"):
                return f"{layer.name}: a softmax that is not fused into the loss"
        elif type(layer) not in (Dropout, Flatten):
            return f"{type(layer).__name__} layers have no fused step"
        if any(info.get("regularizer") is not None for info in layer._weights.values()):
            return f"{layer.name}: weight regularizers add a penalty per step"
    from fastnn import losses as L
    from fastnn import metrics as M

    loss, head = model.loss, _head(model)
    logits = head is not None or loss.from_logits
    xent = type(loss) in (L.CategoricalCrossentropy, L.SparseCategoricalCrossentropy) and logits \
        and head in (None, "softmax")
    bce = type(loss) is L.BinaryCrossentropy and logits and head in (None, "sigmoid")
    mse = type(loss) is L.MeanSquaredError and head is None and not loss.from_logits
    if not (xent or bce or mse):
        return f"loss {getattr(loss, 'name', type(loss).__name__)!r} (fused head: {head}) has no fused kernel"
    if len(model.metrics) > 1 or any(m.fn not in (M._argmax_accuracy, M._binary_accuracy) for m in model.metrics):
        return f"metrics {[m.name for m in model.metrics]}: only one accuracy metric is fused"
    return None


class FusedPlan:
    """The tables of ``train_steps`` for one compiled, built ``Sequential`` and one batch size.

    ``run(x, t, order, ...)`` trains ``ceil(len(order) / batch_size)`` steps on the model's own
    buffers (parameters, gradients, optimizer slots) and advances ``optimizer.iterations`` and the
    model's step counter as ``fit`` does; it returns ``(K, 2)`` per-step ``(loss * n, metric sum)``
    in the model's dtype. Inputs must already be validated (``fit`` does it once): ``x`` C-contiguous
    in the model's dtype, ``t`` int64 indices or targets in the model's dtype.
    """

    def __init__(self, model, batch_size, numpy_blas=None):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"{model.name}: no fused step: {reason}")
        from fastnn.layers.core import Dense, Dropout, Flatten

        self.model, self.batch_size = model, int(batch_size)
        dt = self.dtype = model.dtype
        bs = self.batch_size
        offsets = {(e.layer.name, e.name): e.offset for e in model.flat.entries}
        last = len(model.layers) - 1
        rows, rowsf = [], []
        ws = [0]  # next free workspace element

        def take(n):
            start = ws[0]
            ws[0] += n
            return start

        d = int(model.input_shape[0])
        xb = take(bs * d)
        weights_before = False
        for i, layer in enumerate(model.layers):
            if isinstance(layer, Flatten) or (isinstance(layer, Dropout) and layer.rate == 0):
                continue
            if i == last and _head(model) is not None and not isinstance(layer, Dense):
                continue  # the final softmax/sigmoid Activation is fused into the loss
            r = [0] * NCOL
            f = [0.0, 0.0]
            r[K_DIN] = d
            r[K_DX] = take(bs * d) if weights_before else -1
            if isinstance(layer, Dense):
                r[K_KIND], r[K_DOUT] = DENSE, layer.units
                r[K_W] = offsets[(layer.name, "W")]
                r[K_B] = offsets[(layer.name, "b")] if layer.use_bias else -1
                r[K_ACT], f[F_ALPHA] = int(_dense_act(model, layer)), layer.alpha
                r[K_DZ] = take(bs * layer.units) if r[K_ACT] != LINEAR else -1
                weights_before = True
            elif isinstance(layer, Dropout):
                r[K_KIND], r[K_DOUT] = DROPOUT, d
                r[K_MASK] = take(bs * d)
                rate = float(layer.rate)
                r[K_KEEP] = max(0, math.ceil(rate * (1 << 24)))  # as NumbaOps.dropout_mask
                r[K_SEED] = int(np.array([int(layer.seed) & ((1 << 64) - 1)], np.uint64).view(np.int64)[0])
                f[F_SCALE] = 1.0 / (1.0 - rate)
            else:
                r[K_KIND], r[K_DOUT] = ACT, d
                r[K_ACT], f[F_ALPHA] = int(layer.act), layer.alpha
            r[K_Y] = take(bs * r[K_DOUT])
            d = r[K_DOUT]
            rows.append(r)
            rowsf.append(f)
        self.net = np.array(rows, np.int64)
        self.netf = np.array(rowsf, np.float64).astype(dt)  # dt(alpha), dt(1 / (1 - rate)) as NumbaOps
        self.classes = d
        kind, nesterov, decoupled = _opt_kind(model.optimizer)
        loss = model.loss.name
        loss_kind = {"sparse_categorical_crossentropy": LOSS_XENT_INDEX, "binary_crossentropy": LOSS_BCE,
                     "mse": LOSS_MSE}.get(loss, LOSS_XENT_ONEHOT)
        metric = METRIC_NONE
        if model.metrics:
            logits = _head(model) is not None or model.loss.from_logits
            if model.metrics[0].fn.__name__ == "_argmax_accuracy" and d > 1:
                metric = METRIC_ARGMAX
            else:
                metric = METRIC_BINARY_LOGITS if logits else METRIC_BINARY_PROBS
        self.cfg = np.zeros(NCFG, np.int64)
        self.cfg[[C_LOSS, C_METRIC, C_OPT, C_NESTEROV, C_DECOUPLED]] = loss_kind, metric, kind, nesterov, decoupled
        self.cfg[C_XB], self.cfg[C_TB], self.cfg[C_DL] = xb, take(bs * d), take(bs * d)
        self.cfg[C_BATCH], self.cfg[C_ROW0] = bs, 0
        self.cfg[C_NB] = int(NUMPY_BLAS if numpy_blas is None else (numpy_blas and NUMPY_BLAS))
        self.ws = np.zeros(ws[0], dt)
        self.ti = np.zeros(bs, np.int64)
        opt = model.optimizer
        if opt.flat_slots is None:
            opt.build(model.flat)
        self.pieces_wd = opt._pieces(model.flat)
        self.pieces = np.array([(a, b, int(bool(wd))) for a, b, wd in self.pieces_wd], np.int64).reshape(-1, 3)
        self.runs = np.array([(a, b) for a, b, _ in model.flat.runs()], np.int64).reshape(-1, 2)
        self.clipnorm = float(opt.clipnorm) if opt.clipnorm is not None else -1.0
        slots = tuple(opt.flat_slots or ())
        dummy = np.zeros(1, dt)
        self.s1 = slots[0] if len(slots) > 0 else dummy
        self.s2 = slots[1] if len(slots) > 1 else dummy
        self._no_idx = np.zeros(1, np.int64)
        self._no_dense = np.zeros((1, 1), dt)

    def scalars(self, steps, iteration0=None):
        """The optimizer scalars of the next ``steps`` updates (``train_steps``' ``sc``)."""
        opt = self.model.optimizer
        it0 = opt.iterations if iteration0 is None else iteration0
        return optimizer_scalars(opt, self.dtype, [wd for _, _, wd in self.pieces_wd], it0, steps)

    def targets(self, t):
        """``(t_idx, t_dense)`` for ``train_steps``: the one the loss reads, and a placeholder."""
        if self.cfg[C_LOSS] == LOSS_XENT_INDEX:
            return np.ascontiguousarray(t, np.int64).reshape(-1), self._no_dense
        return self._no_idx, np.ascontiguousarray(t, self.dtype).reshape(t.shape[0], -1)

    def check(self, x, t, order):
        """The checks ``train_steps`` relies on (it reads without bounds checks): shapes, dtypes, every
        index of ``order`` a row of ``x``, class indices in range. One pass over ``order`` and ``t``."""
        name = self.model.name
        if not (isinstance(x, np.ndarray) and x.dtype == self.dtype and x.ndim == 2 and x.flags.c_contiguous
                and x.shape[1] == self.net[0, K_DIN]):
            raise ValueError(f"{name}: the fused step needs x as a C-contiguous {self.dtype} array of shape "
                             f"(N, {self.net[0, K_DIN]}), got {getattr(x, 'dtype', None)} {getattr(x, 'shape', None)}")
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: x has {x.shape[0]} rows but the targets have {t.shape[0]}")
        if self.cfg[C_LOSS] == LOSS_XENT_INDEX:
            if t.size and (t.min() < 0 or t.max() >= self.classes):
                raise ValueError(f"{name}: class indices must be in [0, {self.classes - 1}], got "
                                 f"[{t.min()}, {t.max()}]")
        elif t.size // max(1, t.shape[0]) != self.classes:
            raise ValueError(f"{name}: targets need {self.classes} values per sample, got shape {t.shape}")
        if not (isinstance(order, np.ndarray) and order.dtype == np.int64 and order.ndim == 1):
            raise ValueError(f"{name}: order must be a 1-D int64 array of row indices")
        if order.size and (order.min() < 0 or order.max() >= x.shape[0]):
            raise ValueError(f"{name}: order holds indices outside [0, {x.shape[0] - 1}]")

    def run(self, x, t, order, sc=None, stats=None, check=True):
        """Train on the batches of ``order`` (one step per ``batch_size`` indices); see the class."""
        model = self.model
        order = np.ascontiguousarray(order, np.int64)
        t_idx, t_dense = self.targets(t)
        if check:
            self.check(x, t_idx if self.cfg[C_LOSS] == LOSS_XENT_INDEX else t_dense, order)
        steps = -(-len(order) // self.batch_size)
        if sc is None:
            sc = self.scalars(steps)
        if stats is None:
            stats = np.empty((steps, 2), self.dtype)
        if sc.shape[1:] != (len(self.pieces), NSCALARS) or sc.shape[0] < steps or stats.shape != (steps, 2):
            raise ValueError(f"{model.name}: {steps} steps need sc of shape ({steps}, {len(self.pieces)}, "
                             f"{NSCALARS}) and stats of shape ({steps}, 2), got {sc.shape} and {stats.shape}")
        return self._launch(x, t_idx, t_dense, order, sc, stats)

    def _launch(self, x, t_idx, t_dense, order, sc, stats):
        """One ``train_steps`` call on the model's buffers; advances its step counters as ``fit`` does."""
        model, flat = self.model, self.model.flat
        self.cfg[C_STEP0] = model._step
        train_steps(x, t_idx, t_dense, order, self.net, self.netf, self.cfg, self.clipnorm, self.pieces,
                    self.runs, sc, flat.p, flat.g, self.s1, self.s2, self.ws, self.ti, stats)
        model.optimizer.iterations += stats.shape[0]
        model._step += stats.shape[0]
        return stats

    # -- fit's way in: check the data once, then one call per batch
    def prepare(self, x, t):
        """``(x, t_idx, t_dense)`` for ``step``: the targets as the loss reads them, everything checked
        once (``fit`` calls this once per call; ``step`` then checks nothing)."""
        t_idx, t_dense = self.targets(t)
        x = np.ascontiguousarray(x, self.dtype)
        self.check(x, t_idx if self.cfg[C_LOSS] == LOSS_XENT_INDEX else t_dense, np.zeros(0, np.int64))
        return x, t_idx, t_dense

    def step(self, prepared, idx, names):
        """Train the batches of ``idx`` (int64 row indices from fit's sampler, valid by construction;
        one step per ``batch_size`` of them, the last may be short) in one call and return each
        step's sums as ``fit``'s eager step does: ``[{names[0]: loss * n, names[1]: metric sum}]``."""
        steps = -(-len(idx) // self.batch_size)
        stats = self._launch(*prepared, np.ascontiguousarray(idx, np.int64), self.scalars(steps),
                             np.empty((steps, 2), self.dtype))
        return [{name: row[i] for i, name in enumerate(names)} for row in stats]

    def still_valid(self):
        """Whether the tables still describe the model (a callback may freeze a layer or change the
        weight decay exclusions mid-fit): the optimizer's pieces and the flat buffers are unchanged."""
        opt = self.model.optimizer
        return (opt._pieces(self.model.flat) == self.pieces_wd and self.s1 is (opt.flat_slots or (self.s1,))[0])

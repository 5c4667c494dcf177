"""The host side of the numba backend's fused training step (``fastnn.kernels.cpu.fused``): a
``FusedPlan`` turns a model's description (``spec``: plain values, the fields ``Ops.train_plan``
lists; ``fastnn.training.fused_plan`` writes it) into the kernel's tables (one int64 row per layer,
the run's settings, offsets into the model's flat buffers), or ``unsupported_reason`` says in one
sentence why the kernel cannot run it. ``NumbaOps.train_plan`` is the way in. Nothing here knows
the layer, loss, metric or optimizer classes, and the caller keeps the model's counters.
"""
from __future__ import annotations

import math

import numpy as np

from fastnn.kernels import LINEAR, NEEDS_Z, SIGMOID, TANH
from fastnn.kernels.cpu.fused import (ACT, C_BATCH, C_DECOUPLED, C_DL, C_LOSS, C_METRIC, C_NB, C_NESTEROV, C_NXB, C_OPT,
                                      C_ROW0, C_STEP0, C_TB, C_XB, DENSE, DROPOUT, F_ALPHA, F_SCALE, K_ACT, K_B,
                                      K_DIN, K_DOUT, K_DX, K_DZ, K_KEEP, K_KIND, K_MASK, K_SEED, K_W, K_Y,
                                      LOSS_BCE, LOSS_MSE, LOSS_XENT_INDEX, LOSS_XENT_ONEHOT, METRIC_ARGMAX,
                                      METRIC_BINARY_LOGITS, METRIC_BINARY_PROBS, METRIC_NONE, NCFG, NCOL,
                                      NSCALARS, NUMPY_BLAS, OPT_ADAGRAD, OPT_ADAM, OPT_MOMENTUM, OPT_RMSPROP,
                                      OPT_SGD, train_steps)

__all__ = ["FusedPlan", "unsupported_reason", "optimizer_scalars"]

SOFTMAX = "softmax"  # the one activation a spec names by string: no elementwise kernel code
_LOSSES = {"xent_index": LOSS_XENT_INDEX, "xent_onehot": LOSS_XENT_ONEHOT, "bce": LOSS_BCE, "mse": LOSS_MSE}
_OPTIMIZERS = {"sgd": OPT_SGD, "momentum": OPT_MOMENTUM, "adagrad": OPT_ADAGRAD, "rmsprop": OPT_RMSPROP,
               "adam": OPT_ADAM}


def optimizer_scalars(spec, dtype, wds, lrs, iteration0):
    """``(len(lrs), len(wds), NSCALARS)`` in ``dtype``: the scalar arguments ``NumbaOps`` passes to the
    optimizer kernel for the updates from ``iterations == iteration0`` on, at learning rates ``lrs``
    (one per update), for each piece's weight decay ``wds`` (float64 on the host, then cast once:
    the same roundings as ``NumbaOps``' per-value casts). ``spec``: the model's description (its
    ``optimizer`` and ``hyper``)."""
    kind, h = _OPTIMIZERS[spec["optimizer"]], spec["hyper"]
    pad = (0.0,) * NSCALARS
    rows = []
    if kind == OPT_ADAM:
        b1, b2 = h["beta1"], h["beta2"]
        fixed = (b1, 1 - b1, b2, 1 - b2, h["eps"])
        for k, lr in enumerate(lrs):
            t = iteration0 + k + 1
            bias = (lr / (1.0 - b1 ** t), 1.0 / math.sqrt(1.0 - b2 ** t))  # IEEE sqrt, as np.sqrt
            rows.extend(fixed + bias + (wd, 1.0 - lr * wd) for wd in wds)
    else:
        by_lr = {}  # rows depend on the step through the learning rate alone
        for lr in lrs:
            if lr not in by_lr:
                if kind == OPT_SGD:
                    by_lr[lr] = [(lr, wd) + pad[2:] for wd in wds]
                elif kind == OPT_MOMENTUM:
                    by_lr[lr] = [(lr, h["momentum"], wd) + pad[3:] for wd in wds]
                elif kind == OPT_ADAGRAD:
                    by_lr[lr] = [(lr, h["eps"], 1.0 - lr * wd) + pad[3:] for wd in wds]
                else:
                    rho = h["rho"]
                    by_lr[lr] = [(lr, rho, 1 - rho, h["eps"], 1.0 - lr * wd) + pad[5:] for wd in wds]
            rows.extend(by_lr[lr])
    out = np.array(rows, np.float64).reshape(len(lrs), len(wds), NSCALARS)
    return out.astype(dtype)


def unsupported_reason(spec):
    """Why the fused kernel cannot run the model ``spec`` describes (a sentence for the log line), or
    None. A ``str`` spec is already that sentence: the model has no description."""
    if isinstance(spec, str):
        return spec
    if spec["dtype"] not in (np.float32, np.float64) or len(spec["input_shape"]) != 1:
        return "the fused step takes 2-D float32/float64 inputs"
    for layer in spec["layers"]:
        act = layer.get("act")
        if act in NEEDS_Z:
            return (f"{layer['name']}: its activation's derivative needs the pre-activation, which the fused step "
                    f"does not keep")
        if act == SOFTMAX:
            what = "a softmax output" if layer["kind"] == "dense" else "a softmax"
            return f"{layer['name']}: {what} that is not fused into the loss"
        if act in (TANH, SIGMOID):  # NumbaOps.bias_act runs them through NumPy's SIMD tanh, far faster
            return f"{layer['name']}: tanh and sigmoid run faster through NumPy's vectorised tanh than in the fused step"
    return None


class FusedPlan:
    """The tables of ``train_steps`` for one model description ``spec`` and one batch size.

    ``step(prepared, order, sc, step0)`` (and ``run(x, t, order, sc, step0)``, which checks its
    arguments first) trains ``steps(len(order))`` steps on the buffers ``spec`` names (parameters,
    gradients, optimizer slots) and returns ``(K, 2)`` per-step ``(loss * n, metric sum)`` in the
    model's dtype. ``sc``: ``scalars(lrs, iteration0)``; ``step0``: the model's step counter (the
    dropout masks' step). The caller advances its counters by ``K``. Inputs must already be
    validated (``fit`` does it once): ``x`` C-contiguous in the model's dtype, ``t`` int64 indices
    or targets in the model's dtype.
    """

    def __init__(self, spec, batch_size, numpy_blas=None):
        reason = unsupported_reason(spec)
        if reason is not None:
            raise ValueError(f"{spec['name'] if isinstance(spec, dict) else 'model'}: no fused step: {reason}")
        self.spec, self.name, self.batch_size = spec, spec["name"], int(batch_size)
        dt = self.dtype = spec["dtype"]
        bs = self.batch_size
        rows, rowsf = [], []
        ws = [0]  # next free workspace element

        def take(n):
            start = ws[0]
            ws[0] += n
            return start

        d = int(spec["input_shape"][0])
        # input buffers the steps take in turn (train_steps says why): up to 4 while they fit in 2 MiB
        nxb = max(1, min(4, (2 << 20) // max(1, bs * d * np.dtype(dt).itemsize)))
        xb = take(nxb * bs * d)
        weights_before = False
        for layer in spec["layers"]:
            r = [0] * NCOL
            f = [0.0, 0.0]
            r[K_DIN] = d
            r[K_DX] = take(bs * d) if weights_before else -1
            if layer["kind"] == "dense":
                r[K_KIND], r[K_DOUT] = DENSE, layer["units"]
                r[K_W], r[K_B] = layer["w"], layer["b"]
                r[K_ACT], f[F_ALPHA] = int(layer["act"]), layer["alpha"]
                r[K_DZ] = take(bs * layer["units"]) if r[K_ACT] != LINEAR else -1
                weights_before = True
            elif layer["kind"] == "dropout":
                r[K_KIND], r[K_DOUT] = DROPOUT, d
                r[K_MASK] = take(bs * d)
                rate = float(layer["rate"])
                r[K_KEEP] = max(0, math.ceil(rate * (1 << 24)))  # as NumbaOps.dropout_mask
                r[K_SEED] = int(np.array([int(layer["seed"]) & ((1 << 64) - 1)], np.uint64).view(np.int64)[0])
                f[F_SCALE] = 1.0 / (1.0 - rate)
            else:
                r[K_KIND], r[K_DOUT] = ACT, d
                r[K_ACT], f[F_ALPHA] = int(layer["act"]), layer["alpha"]
            r[K_Y] = take(bs * r[K_DOUT])
            d = r[K_DOUT]
            rows.append(r)
            rowsf.append(f)
        self.net = np.array(rows, np.int64)
        self.netf = np.array(rowsf, np.float64).astype(dt)  # dt(alpha), dt(1 / (1 - rate)) as NumbaOps
        self.classes = d
        metric = METRIC_NONE
        if spec["metric"] is not None:
            if spec["metric"] == "argmax" and d > 1:
                metric = METRIC_ARGMAX
            else:
                metric = METRIC_BINARY_LOGITS if spec["logits"] else METRIC_BINARY_PROBS
        h = spec["hyper"]
        self.cfg = np.zeros(NCFG, np.int64)
        self.cfg[[C_LOSS, C_METRIC, C_OPT, C_NESTEROV, C_DECOUPLED]] = (
            _LOSSES[spec["loss"]], metric, _OPTIMIZERS[spec["optimizer"]], int(h.get("nesterov", False)),
            int(h.get("decoupled", False)))
        self.cfg[C_XB], self.cfg[C_TB], self.cfg[C_DL] = xb, take(bs * d), take(bs * d)
        self.cfg[C_BATCH], self.cfg[C_ROW0], self.cfg[C_NXB] = bs, 0, nxb
        self.cfg[C_NB] = int(NUMPY_BLAS if numpy_blas is None else (numpy_blas and NUMPY_BLAS))
        self.ws = np.empty(ws[0], dt)  # every region is written before the step reads it
        self.ti = np.zeros(bs, np.int64)
        self.wds = [wd for _, _, wd in spec["pieces"]]
        self.pieces = np.array([(a, b, int(bool(wd))) for a, b, wd in spec["pieces"]], np.int64).reshape(-1, 3)
        self.runs = np.array(spec["runs"], np.int64).reshape(-1, 2)
        self.clipnorm = float(spec["clipnorm"]) if spec["clipnorm"] is not None else -1.0
        self.p, self.g = spec["params"], spec["grads"]
        slots = tuple(spec["slots"])
        dummy = np.zeros(1, dt)
        self.s1 = slots[0] if len(slots) > 0 else dummy
        self.s2 = slots[1] if len(slots) > 1 else dummy
        self._no_idx = np.zeros(1, np.int64)
        self._no_dense = np.zeros((1, 1), dt)

    def steps(self, n):
        """How many steps ``n`` row indices make (the last batch may be short)."""
        return -(-n // self.batch_size)

    def scalars(self, lrs, iteration0):
        """The optimizer scalars (``train_steps``' ``sc``) of ``len(lrs)`` updates from ``iteration0``."""
        return optimizer_scalars(self.spec, self.dtype, self.wds, lrs, iteration0)

    def targets(self, t):
        """``(t_idx, t_dense)`` for ``train_steps``: the one the loss reads, and a placeholder."""
        if self.cfg[C_LOSS] == LOSS_XENT_INDEX:
            return np.ascontiguousarray(t, np.int64).reshape(-1), self._no_dense
        return self._no_idx, np.ascontiguousarray(t, self.dtype).reshape(t.shape[0], -1)

    def check(self, x, t, order):
        """The checks ``train_steps`` relies on (it reads without bounds checks): shapes, dtypes, every
        index of ``order`` a row of ``x``, class indices in range. One pass over ``order`` and ``t``."""
        name = self.name
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

    def run(self, x, t, order, sc, step0, stats=None, check=True):
        """Train on the batches of ``order`` (one step per ``batch_size`` indices); see the class."""
        order = np.ascontiguousarray(order, np.int64)
        t_idx, t_dense = self.targets(t)
        if check:
            self.check(x, t_idx if self.cfg[C_LOSS] == LOSS_XENT_INDEX else t_dense, order)
        steps = self.steps(len(order))
        if stats is None:
            stats = np.empty((steps, 2), self.dtype)
        if sc.shape[1:] != (len(self.pieces), NSCALARS) or sc.shape[0] < steps or stats.shape != (steps, 2):
            raise ValueError(f"{self.name}: {steps} steps need sc of shape ({steps}, {len(self.pieces)}, "
                             f"{NSCALARS}) and stats of shape ({steps}, 2), got {sc.shape} and {stats.shape}")
        return self._launch(x, t_idx, t_dense, order, sc, stats, step0)

    def _launch(self, x, t_idx, t_dense, order, sc, stats, step0):
        """One ``train_steps`` call on the buffers ``spec`` named, its dropout masks from step ``step0``."""
        self.cfg[C_STEP0] = step0
        train_steps(x, t_idx, t_dense, order, self.net, self.netf, self.cfg, self.clipnorm, self.pieces,
                    self.runs, sc, self.p, self.g, self.s1, self.s2, self.ws, self.ti, stats)
        return stats

    # -- fit's way in: check the data once, then one call per batch
    def prepare(self, x, t):
        """``(x, t_idx, t_dense)`` for ``step``: the targets as the loss reads them, everything checked
        once (``fit`` calls this once per call; ``step`` then checks nothing)."""
        t_idx, t_dense = self.targets(t)
        x = np.ascontiguousarray(x, self.dtype)
        self.check(x, t_idx if self.cfg[C_LOSS] == LOSS_XENT_INDEX else t_dense, np.zeros(0, np.int64))
        return x, t_idx, t_dense

    def step(self, prepared, idx, sc, step0):
        """Train the batches of ``idx`` (int64 row indices from fit's sampler, valid by construction;
        one step per ``batch_size`` of them, the last may be short) in one call, unchecked; returns
        the ``(K, 2)`` sums."""
        stats = np.empty((self.steps(len(idx)), 2), self.dtype)
        return self._launch(*prepared, np.ascontiguousarray(idx, np.int64), sc, stats, step0)

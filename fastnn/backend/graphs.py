"""``fit(cuda_graph=True)``: each full-size training step replayed as a captured CUDA graph.

A small network's step on a GPU is launch-bound: dozens of kernels of a few microseconds, each
costing more on the host to launch than on the device to run. A CUDA graph records the step's
kernels once and replays them with one launch. What is captured follows from two facts
(GPU-NOTES §1):

- A graph freezes every kernel argument: pointers *and* scalars passed by value. The values that
  change from step to step (each Dropout layer's stream start ``dropout_base(seed, step)``, the
  learning rate of a schedule, Adam's step count and the scalars derived from them) therefore
  travel in one small device buffer: the host computes them exactly as the eager step does,
  writes them into a pinned staging buffer (two, used in turn) and copies it to the device before
  each replay; the captured "dev" primitives (``Ops.dropout_mask_dev``, ``Ops.<optimizer>_step_dev``)
  read them there; so do the batch's row indices. Captured: the dropout masks, ``TrainStep.grad``
  (forward, loss, metrics, backward), the regularizers and the fused optimizer update. Around each
  replay: the staging copy, and the batch gather into the input slots (two ``take`` calls from the
  staged row indices), captured as a second small graph at each ``fit``'s first replay (the data's
  address changes from one ``fit`` to the next) and checked once against the eager takes. The
  batch's statistics are read from the graph's buffers by the loop's sums
  (``fastnn.training.loop._Sums``), queued before the next replay. With data parallelism or
  ``clipnorm`` (a host value from the gradient norm) the optimizer, the all-reduce and the
  regularizers stay eager after the replay.
- CuPy refuses cuBLAS calls during capture (up to 14.2 at least: ``cublasSetStream`` raises
  ``NotImplementedError``). ``CupyOps.gemm`` hands GEMMs to the recorder here, which either
  captures them through fastnn's own cuBLAS handle (``fastnn.kernels.gpu.cublas``; mode
  ``"full"``: one graph per step) or, when that handle cannot be made or fails its eager check,
  splits the step into graphs with eager GEMMs between them (mode ``"split"``).

Memory: a graph keeps raw addresses, so everything it touches must outlive it and never be
handed to anyone else. Buffers made before capture (workspaces, the flat buffers and optimizer
slots, the slots, the staging buffer) are referenced here; anything allocated *during* capture
comes from a private ``MemoryPool`` that only this graph uses (PyTorch's private graph pools work
the same way).

Safety net: the first two replays of each graph are checked against an eager run of the same
step from the same state (parameters, optimizer slots, gradients and batch statistics within
float tolerance): the first catches a wrong capture, the second a value frozen at capture that
should have changed. If capture fails, a replay raises, or a check does not hold, training goes
on eagerly with one ``RuntimeWarning`` saying why; it never changes device. The ragged last batch
of an epoch always runs eagerly. A step that reads a device value on the host cannot be captured:
a book loss layer wrapped by ``CustomLoss`` (say ``SoftmaxWithLoss``) checks its labels with
``float(t.min())`` on every call, so such a model trains eagerly, with the warning. Before
capturing, the step runs once eagerly with its GEMMs on fastnn's handle, so cuBLAS picks its
kernels for the real shapes outside the capture.

Ordering: ``fit`` runs on the capture stream, a non-blocking one, so ``StepGraphs.ordered`` makes it
wait for the work queued before on the legacy default stream (the data's copy to the device, a
restored checkpoint), and the default stream wait for it at the end. An out-of-memory retry
(``TrainStep.guarded``) clears the workspaces a graph used, so it ``reset``s the graph,
which is captured again.

By default (``cuda_graph="auto"``) ``fit`` on the CuPy backend captures when it can in "full"
mode: one process, arrays with one input (sample or class weights travel in a third input slot),
at least ``AUTO_MIN_STEPS`` full-size steps in the fit, a stream that captures and fastnn's direct cuBLAS
handle. Otherwise, or when the capture fails, it trains eagerly and says why once at INFO level on
the ``fastnn`` logger (``cuda_graph=True`` warns instead, and also takes "split" mode);
``cuda_graph=False`` never captures. A replay that differs from the eager step warns in both.

Status: ``tests/test_graphs_plumbing.py`` runs all of it on the CPU against a stand-in for CuPy's
streams and graphs; the ``gpu`` tests (replay equals eager, Dropout, BatchNormalization, every
optimizer) and the probes in ``bench/probes`` verify it on a device (an H200: full mode bit for bit
equal to eager, 4-5.5x faster per step on B512/B64, ``bench/results/2026-12-04-h200*.md``).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import warnings

import numpy

from fastnn.layers.base import StepContext
from fastnn.layers.core import Dropout

log = logging.getLogger("fastnn")

# Relative L2 difference allowed between a replayed step and the same step run eagerly: the
# captured GEMMs may take other cuBLAS algorithms than CuPy's eager ones (sum order differs).
CHECK_RTOL = {numpy.dtype(numpy.float32): 1e-4, numpy.dtype(numpy.float64): 1e-10}
# The same for the change of the parameters and optimizer slots over the step: looser for float32,
# because an element whose gradient is a rounding-level sum can flip the sign of its (Adam) step,
# yet still far below what a wrong learning rate, step count or decay gives (>= 1e-1).
DELTA_RTOL = {numpy.dtype(numpy.float32): 1e-2, numpy.dtype(numpy.float64): 1e-9}
# ``cuda_graph="auto"``: the fewest full-size steps a fit must have to be captured. The first runs
# eagerly, the second is captured and both of the first two replays are checked against an eager
# run, so a graph starts to pay from about the fourth.
AUTO_MIN_STEPS = 4

def say_once(trainer, why):
    """Log at INFO, once per model (its ``TrainStep``) and reason, why ``cuda_graph="auto"`` trains it
    eagerly."""
    said = vars(trainer).setdefault("_said_eager", set())
    if why not in said:
        said.add(why)
        log.info("%s: fit trains eagerly, without a CUDA graph: %s", trainer.model.name, why)


def capture_refusal(ops):
    """None when a stream on ``ops``'s device captures a trivial kernel into a graph, else why not.
    Asked once per backend object (CuPy's CPU emulator in ``tests/cudaemu``, say, does not capture)."""
    if "_capture_refusal" not in vars(ops):
        cupy, why = ops.xp, None
        try:
            with cupy.cuda.Device(ops.device_id):
                stream = cupy.cuda.Stream(non_blocking=True)
                probe = cupy.zeros((1,), dtype=numpy.float32)
                with stream:
                    stream.begin_capture()
                    try:
                        probe += 1
                    finally:
                        stream.end_capture()
                stream.synchronize()
        except Exception as exc:  # noqa: BLE001 - whatever stops a capture means "no graphs here"
            why = f"streams on {ops.device} do not capture ({type(exc).__name__}: {exc})"
        ops._capture_refusal = why
    return ops._capture_refusal


class _Recorder:
    """Receives ``CupyOps.gemm`` calls while a step is captured and builds the replay program."""

    def __init__(self, cupy, stream, cublas, precision):
        self.cupy, self.stream, self.cublas, self.precision = cupy, stream, cublas, precision
        self.program = []   # cupy.cuda.Graph objects and eager callables, in step order
        self.keep = []      # arrays the program reads or writes

    def gemm(self, a, b, trans_a, trans_b, out):
        cupy = self.cupy
        m = a.shape[1] if trans_a else a.shape[0]
        n = b.shape[0] if trans_b else b.shape[1]
        if out is None:
            out = cupy.empty((m, n), dtype=a.dtype)  # from the graph's private pool
        a, b = cupy.ascontiguousarray(a), cupy.ascontiguousarray(b)  # no-ops (no launch) when contiguous
        self.keep += [a, b, out]
        if self.cublas is not None:  # "full": the GEMM is captured like any kernel
            return self.cublas.gemm(a, b, out, trans_a, trans_b, self.precision)
        # "split": close the graph so far, run this GEMM eagerly at replay, start the next graph
        self._close_segment()
        self.program.append(functools.partial(_eager_gemm, cupy, a, b, trans_a, trans_b, out, self.precision))
        self.stream.begin_capture()
        return out

    def _close_segment(self):
        graph = self.stream.end_capture()
        if _has_nodes(graph):  # a step that starts with a GEMM, or two GEMMs in a row, leave empty graphs
            self.program.append(graph)

    def finish(self):
        self._close_segment()
        return self.program


def _has_nodes(graph):
    """False only for a graph whose DOT dump names no node at all (then launching it is a wasted
    call); True whenever unsure."""
    try:
        dot = graph.debug_dot_str()
    except Exception:  # noqa: BLE001 - no dump: keep the graph
        return True
    dot = dot.decode(errors="replace") if isinstance(dot, bytes) else str(dot)
    return "node" in dot


def _eager_gemm(cupy, a, b, trans_a, trans_b, out, precision):
    from fastnn.backend.cupy_ops import cupy_matmul

    cupy_matmul(cupy, a.T if trans_a else a, b.T if trans_b else b, out, precision)


def _regularizer_factors(model):
    """``[(layer, weight name, l1, l2)]`` of every regularized weight: what a captured update holds as
    by-value constants (a callback may change a factor, or a weight's regularizer, during ``fit``)."""
    return [(layer, name, reg.l1, reg.l2) for layer, name, reg in model._regularized()]


def _describe_regs(regs):
    return ", ".join(f"{layer.name}/{name} l1={l1:g} l2={l2:g}" for layer, name, l1, l2 in regs) or "none"


def _dropout_units(model):
    """``[(Dropout layer, features per sample of its input)]`` from the model's shapes (a layer's
    last mask may be gone: inference clears it)."""
    import math

    out, shape = [], (None,) + tuple(model.input_shape)
    for layer in model.layers:
        if isinstance(layer, Dropout):
            out.append((layer, math.prod(shape[1:])))
        shape = layer.compute_output_shape(shape)
    return out


class _Staging:
    """The per-step values' way to the device: two pinned host buffers used in turn, one device
    buffer that the graph reads (64-bit words: dropout stream starts as uint64, optimizer scalars
    as float64, the batch's row indices as int64). Each step's words are copied on the step's own
    stream (``Transfer.copy_in_order``), so the copy lands after the previous replay has read the
    buffer and before the next one does; the host waits for a pinned buffer's last copy (two steps
    ago) before writing it again. Per step: one copy, one event record, one event wait."""

    def __init__(self, ops, words):
        self.transfer = ops.make_transfer()
        self.host = [self.transfer.host_empty((words,), numpy.uint64) for _ in range(2)]
        self.device = self.transfer.device_empty((words,), numpy.uint64)
        self.device[...] = 0
        self.events = [self.transfer.new_event() for _ in range(2)]
        self.copied = [None, None]
        self.k = 0

    def push(self, write):
        """``write(host_words)`` fills this step's values; then they are copied to ``device``,
        ordered after everything queued so far on the current stream and before everything queued
        next."""
        t, k = self.transfer, self.k
        t.host_wait(self.copied[k])     # this pinned buffer's last copy has finished
        write(self.host[k])
        self.copied[k] = t.copy_in_order(self.device, self.host[k], self.events[k])
        self.k = 1 - k


class _Captured:
    """One batch shape's replay program and everything it must keep alive."""

    def __init__(self, program, slots, stats, keep, pool, staging, masks, pieces, hyper_shape, index):
        self.program, self.stats = program, stats
        self.slots = slots              # (x, y, sample weights or None): the input slots, filled before each replay
        self.x_slot, self.y_slot, self.w_slot = slots
        self.index = index              # the batch's row indices on the device: the staging words' tail (int64)
        self.keep, self.pool, self.staging = keep, pool, staging
        self.masks = masks              # the Dropout layers whose masks the graph draws, in staging order
        self.rates = None               # [(layer, rate)] of every Dropout layer at capture (set by _capture)
        self.regs = None                # the regularizer factors a captured update holds (set by _capture)
        self.pieces = pieces            # the optimizer's flat pieces when its update is captured, else None
        self.hyper_shape = hyper_shape  # (pieces, scalars per piece) in the staging words after the masks'
        self.checks_left = 2

    def launch(self, stream):
        for item in self.program:
            if callable(item):
                item()
            else:
                item.launch(stream)


class StepGraphs:
    """The captured training step of a model for one batch shape (CuPy backend only; see the module
    docstring). The model's ``fastnn.training.TrainStep`` keeps it, so later ``fit`` calls replay it."""

    def __init__(self, trainer, rows, x_spec, y_spec, distributed=False, auto=False, weighted=False):
        self.trainer, self.model, self.ops = trainer, trainer.model, trainer.model.ops
        self.auto = auto            # cuda_graph="auto": full mode only, and a failed capture is said at INFO
        self.weighted = weighted    # the step takes per-sample weights (a third input slot)
        self.x_spec, self.y_spec = x_spec, y_spec  # (shape of one sample, device dtype) of inputs and targets
        self.cupy = cupy = self.ops.xp
        self.rows = rows            # rows of a full (local) batch: the only shape captured
        self.distributed = distributed
        with cupy.cuda.Device(self.ops.device_id):
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self.captured = None
        self.warm = False           # the first full batch runs eagerly: kernels compile, workspaces appear
        self.disabled = None        # why graphs were given up (then every step is eager)
        self.transient = False      # given up for a reason that may pass (memory): "auto" tries again next fit
        self.mode = None
        self._cublas = None
        self._why_split = None      # why "split" mode, when it is
        self._gather = None         # (captured step, (graph, pool) or None): this fit's batch gather as a graph

    # ------------------------------------------------------------------ public
    @contextlib.contextmanager
    def ordered(self):
        """Run a block (the whole ``fit``) on the capture stream, ordered after everything queued
        before it on the legacy default stream (the data's and parameters' host-to-device copies,
        a restored checkpoint) and before everything queued there after it. A non-blocking stream
        does not synchronise with the default stream by itself."""
        null = self.cupy.cuda.Stream.null
        with self.cupy.cuda.Device(self.ops.device_id), self.stream:  # CuPy refuses a stream of another device
            self.stream.wait_event(null.record())
            try:
                yield self.stream
            finally:
                self._gather = None  # it holds this fit's data addresses
                null.wait_event(self.stream.record())

    def reset(self):
        """Forget the captured step (after an out-of-memory retry cleared the layers' workspaces):
        the next full batch runs eagerly again, and the one after it is captured anew."""
        self.captured = None
        self._gather = None  # it keeps the old captured step (its pool and buffers) alive
        self.warm = False

    def step(self, fill, n_global, row0, comm, index=None):
        """Train one full batch through the graph; ``None`` when the caller must run it eagerly.

        ``fill(slots, device_index)`` writes this step's batch into the input slots (on the
        stream); ``index``, the batch's rows on the host, travels to the device with the step's other
        values (one copy per step), and ``device_index`` is it there (None when ``index`` is).
        The statistics returned are the graph's own buffers, valid until the next replay is queued.
        """
        if self.disabled is not None:
            return None
        if not self.warm:
            self.warm = True
            return None
        model = self.model
        try:
            if self.captured is None:
                self.captured = self._capture(n_global, row0)
        except Exception as exc:  # noqa: BLE001 - any capture failure means "train eagerly", said once
            self._give_up(f"capturing the step failed ({type(exc).__name__}: {exc})", quiet=self.auto)
            self.transient = isinstance(exc, MemoryError)  # out of memory: the next fit may capture again
            return None
        cap = self.captured
        step = model._step
        try:
            cap.staging.push(functools.partial(self._write_step, cap, step, index))
        except Exception as exc:  # noqa: BLE001 - the step's values cannot reach the graph: eager from here
            self._give_up(f"staging the step's values failed ({type(exc).__name__}: {exc})", quiet=self.auto)
            return None
        if index is None:
            fill(cap.slots, None)
        else:
            self._fill_from_index(cap, fill)
        stats = None
        try:
            applied = cap.pieces is not None
            if cap.checks_left:
                stats = self._checked_replay(cap, n_global, step, row0)  # restores the state if it raises
            else:
                cap.launch(self.stream)
                if applied:
                    model.optimizer.iterations += 1
        except MemoryError:
            raise  # nothing applied: TrainStep.guarded frees, resets this graph and retries the step
        except Exception as exc:  # noqa: BLE001 - a failed replay: this step and the rest run eagerly
            self._give_up(f"replaying the step failed ({type(exc).__name__}: {exc})")
            return None
        if stats is None:
            stats = dict(cap.stats)  # the graph's buffers: the loop's sums add them before the next replay
        if not applied:
            with StepContext(step, row0):
                stats = self.trainer.apply(stats, self.rows, comm)
        model._step += 1
        return stats

    def _fill_from_index(self, cap, fill):
        """The batch gather (two ``take`` launches from the staged row indices into the input slots),
        as one graph captured at this fit's first replay: the data's address is fixed for the fit
        (``ordered`` drops the graph at its end). Where that capture fails, the takes run eagerly."""
        first = self._gather is None or self._gather[0] is not cap
        if first:
            self._gather = (cap, self._capture_gather(cap, fill))
        graph = self._gather[1]
        if graph is None:
            fill(cap.slots, cap.index)
            return
        graph[0].launch(self.stream)
        if first:  # checked once per fit against the eager takes (the step's replay check cannot see it)
            want = tuple(None if a is None else self.cupy.empty_like(a) for a in cap.slots)
            fill(want, cap.index)
            same = all(bool((a.view(numpy.uint8) == b.view(numpy.uint8)).all())   # bit for bit: NaN data too
                       for a, b in zip(want, cap.slots) if a is not None)
            if not same:
                warnings.warn("fastnn: cuda_graph: the captured batch gather differs from the eager one; the "
                              "gather runs eagerly for the rest of this fit", RuntimeWarning, stacklevel=5)
                self._gather = (cap, None)
                fill(cap.slots, cap.index)

    def _capture_gather(self, cap, fill):
        cupy, stream = self.cupy, self.stream
        pool = cupy.cuda.MemoryPool()
        try:
            with cupy.cuda.using_allocator(pool.malloc):
                stream.begin_capture()
                try:
                    fill(cap.slots, cap.index)
                finally:
                    graph = stream.end_capture()
            return graph, pool
        except Exception as exc:  # noqa: BLE001 - the gather then runs eagerly; the step graph is unaffected
            log.info("fastnn: cuda_graph: the batch gather is not captured (%s: %s); it runs eagerly",
                     type(exc).__name__, exc)
            return None

    # ------------------------------------------------------------------ per-step scalars
    def _write_step(self, cap, step, index, words):
        for layer, rate in cap.rates:
            if layer.rate != rate:  # a callback changed it mid-fit: the graph would keep the old rate
                raise RuntimeError(f"{layer.name}'s rate changed from {rate} to {layer.rate} since capture")
        if cap.regs is not None:
            now = _regularizer_factors(self.model)
            if now != cap.regs:  # the captured update adds each penalty's gradient with its factors frozen
                raise RuntimeError(f"the weight regularizers changed since capture: {_describe_regs(cap.regs)} "
                                   f"then, {_describe_regs(now)} now")
        self._write_scalars_for([(layer, None) for layer in cap.masks], cap.pieces, cap.hyper_shape, step, words)
        if index is not None:
            words[-self.rows:].view(numpy.int64)[...] = index

    def _write_scalars_for(self, masks, pieces, hyper_shape, step, words):
        """This step's values into the staging words: each mask's stream start, then the
        optimizer's scalar rows (as ``step_flat`` would compute them now)."""
        from fastnn.kernels import dropout_base

        for i, (layer, _) in enumerate(masks):
            words[i] = dropout_base(layer.seed, step)
        if pieces is not None:
            opt, flat = self.model.optimizer, self.model.flat
            now = opt._pieces(flat)  # this step's weight decay per piece (it may have been changed)
            if [(a, b) for a, b, _ in now] != [(a, b) for a, b, _ in pieces]:
                raise RuntimeError("the optimizer's flat pieces changed since capture (trainable flags or "
                                   "weight-decay exclusions)")
            rows = opt.graph_scalars(flat, now)
            if rows.shape != hyper_shape:
                raise RuntimeError(f"the optimizer's scalars changed shape from {hyper_shape} to {rows.shape}")
            h = len(masks) + hyper_shape[0] * hyper_shape[1]
            words[len(masks):h].view(numpy.float64).reshape(hyper_shape)[...] = rows

    # ------------------------------------------------------------------ capture
    def full_mode_refusal(self):
        """None when fastnn's cuBLAS handle works here (a capture would be "full" mode), else why not."""
        from fastnn import backend

        cupy = self.cupy
        # on the capture stream, as inside fit's ``ordered`` block: the check's uploads, GEMMs and
        # read-backs must be ordered on one stream
        with cupy.cuda.Device(self.ops.device_id), self.stream:
            self._handle(backend.get_matmul_precision())
        return self._why_split

    def _give_up(self, reason, quiet=False):
        self.disabled = reason
        self.captured = None
        self._gather = None
        if quiet:
            say_once(self.trainer, reason)
            return
        mode = 'cuda_graph="auto" (the default)' if self.auto else "cuda_graph=True"
        warnings.warn(f"fastnn: fit({mode}): {reason}; training continues eagerly on "
                      f"{self.ops.device}", RuntimeWarning, stacklevel=4)

    def _handle(self, precision):
        """fastnn's cuBLAS handle on the capture stream, checked eagerly; None means "split" mode."""
        if self.mode is not None:
            return self._cublas
        from fastnn.kernels.gpu.cublas import Cublas

        cupy = self.cupy
        try:
            handle = Cublas(self.stream)
            rng = numpy.random.default_rng(0)
            for dtype in (numpy.float32, numpy.float64):
                a64, b64 = rng.standard_normal((37, 19)), rng.standard_normal((19, 23))
                want = a64 @ b64
                tol = 5e-3 if dtype == numpy.float32 and precision == "tf32" else 1e-5
                for ta, tb in ((False, False), (True, False), (False, True)):
                    aa = cupy.asarray(a64.T.copy() if ta else a64, dtype=dtype)
                    bb = cupy.asarray(b64.T.copy() if tb else b64, dtype=dtype)
                    out = cupy.empty((37, 23), dtype=dtype)
                    handle.gemm(aa, bb, out, ta, tb, precision)
                    got = cupy.asnumpy(out).astype(numpy.float64)
                    err = float(numpy.linalg.norm(got - want) / numpy.linalg.norm(want))
                    if not err < tol:
                        raise RuntimeError(f"its {numpy.dtype(dtype).name} GEMM (trans_a={ta}, trans_b={tb}) is off "
                                           f"by {err:.2e} (relative)")
            self.mode, self._cublas = "full", handle
        except Exception as exc:  # noqa: BLE001 - no usable handle: split the step around its GEMMs
            if not self.auto:  # "auto" does not split: it says why it trains eagerly instead
                log.info("fastnn: cuda_graph: direct cuBLAS unavailable (%s: %s); GEMMs run eagerly between graphs",
                         type(exc).__name__, exc)
            self.mode, self._cublas = "split", None
            self._why_split = f"fastnn's direct cuBLAS handle is unavailable ({type(exc).__name__}: {exc})"
        return self._cublas

    def _rehearse(self, recorder, args):
        """One eager run of exactly what will be captured (GEMMs on fastnn's handle in "full" mode),
        so every kernel is loaded and cuBLAS has chosen its algorithms for the real shapes before
        the capture (its heuristics can fail inside one); the parameters, with BatchNormalization's
        statistics, and the optimizer slots are put back after it."""
        model, ops = self.model, self.ops
        states = [model.flat.p, *(model.optimizer.flat_slots or ())]
        before = [a.copy() for a in states]
        ops.capture = recorder if recorder.cublas is not None else None
        try:
            self._captured_step(*args)
        finally:
            ops.capture = None
            for a, b in zip(states, before):
                a[...] = b
        recorder.keep.clear()

    def _captured_step(self, x_slot, y_slot, n_global, row0, masks, bases, pieces, hyper, w_slot=None):
        """What the graph holds, called once under capture: draw the masks, the gradient step, and
        (when ``pieces``) the regularizers and the optimizer update."""
        model, ops = self.model, self.ops
        for i, (layer, mask) in enumerate(masks):
            ops.dropout_mask_dev(mask.shape, layer.rate, bases[i:i + 1], row0, dtype=mask.dtype, out=mask)
        stats = self.trainer.grad(x_slot, y_slot, self.rows, n_global, w_slot)
        if pieces is not None:
            penalty = model.regularize()
            if penalty is not None:
                stats["loss"] = stats["loss"] + penalty * model.dtype.type(self.rows)
            model.optimizer.step_flat_dev(model.flat, pieces, hyper)
        return stats

    def _capture(self, n_global, row0):
        from fastnn import backend

        model, ops, cupy, stream = self.model, self.ops, self.cupy, self.stream
        rows = self.rows
        x_slot = cupy.zeros((rows,) + self.x_spec[0], dtype=self.x_spec[1])  # filled before each replay
        y_slot = cupy.zeros((rows,) + self.y_spec[0], dtype=self.y_spec[1])
        w_slot = cupy.ones((rows,), dtype=model.dtype) if self.weighted else None
        precision = backend.get_matmul_precision()
        handle = self._handle(precision)
        if handle is None and self.auto:
            raise RuntimeError(self._why_split)
        pool = cupy.cuda.MemoryPool()
        recorder = _Recorder(cupy, stream, handle, precision)
        context = StepContext(model._step, row0, reuse_buffers=True, premade_masks=True)
        context.__enter__()
        try:
            masks = [(layer, layer._buffer(ops, "mask", (rows, units), model.dtype))
                     for layer, units in _dropout_units(model) if layer.rate > 0]
            opt = model.optimizer
            pieces = None
            if not self.distributed and opt.graph_capturable():
                pieces = opt._pieces(model.flat)
            hyper_shape = (0, 0)
            if pieces is not None:
                hyper_shape = opt.graph_scalars(model.flat, pieces).shape
            h = len(masks) + hyper_shape[0] * hyper_shape[1]
            staging = _Staging(ops, h + rows)  # the batch's row indices last: one copy per step for all
            device = staging.device
            bases = device[:len(masks)]
            hyper = device[len(masks):h].view(numpy.float64).reshape(hyper_shape) if pieces is not None else None
            index = device[h:].view(numpy.int64)

            def first(words):  # valid values in the device buffer even before the first replay
                words[h:] = 0
                self._write_scalars_for(masks, pieces, hyper_shape, model._step, words)
            staging.push(first)
            args = (x_slot, y_slot, n_global, row0, masks, bases, pieces, hyper, w_slot)
            self._rehearse(recorder, args)
            stream.synchronize()
            ops.capture = recorder
            with cupy.cuda.using_allocator(pool.malloc):
                stream.begin_capture()
                try:
                    stats = self._captured_step(*args)
                except BaseException:
                    try:
                        stream.end_capture()
                    except Exception:  # noqa: BLE001 - the capture is already broken; report the first error
                        pass
                    raise
                program = recorder.finish()
        finally:
            ops.capture = None
            context.__exit__(None, None, None)
        keep = [handle, recorder.keep, list(self.trainer.dx.values()), [m for _, m in masks], device,
                list(model.optimizer.flat_slots or ())]
        for layer in model.layers:  # every array a layer holds now is one the graph may touch
            keep.append(list(layer._ws.values()))
            keep.append([v for v in vars(layer).values() if isinstance(v, cupy.ndarray)])
        log.info("fastnn: cuda_graph: captured the %d-row training step (%s mode, %d graph(s), optimizer %s)",
                 rows, self.mode, sum(1 for item in program if not callable(item)),
                 "captured" if pieces is not None else "eager")
        cap = _Captured(program, (x_slot, y_slot, w_slot), stats, keep, pool, staging, [layer for layer, _ in masks],
                        pieces, hyper_shape, index)
        # every Dropout's rate, 0 included: the graph keeps a rate-0 layer as the identity
        cap.rates = [(layer, layer.rate) for layer, _ in _dropout_units(model)]
        cap.regs = _regularizer_factors(model) if pieces is not None else None  # split mode: eager after replay
        return cap

    def _checked_replay(self, cap, n_global, step, row0):
        """Replay, then run the same step eagerly from the same state, and compare.

        The eager result is the one kept (it is what training without graphs computes); a
        mismatch gives up the graph for the rest of ``fit``. The eager run draws its own dropout
        masks, and the parameters and optimizer slots are compared by their *change* over the
        step, so a wrong or frozen per-step value (a mask's stream start, the learning rate, Adam's
        step count) shows. Returns the step's statistics, after the update when the graph holds it
        (otherwise the caller applies it). If anything raises, the state before the step is put
        back first."""
        cupy, flat, opt = self.cupy, self.model.flat, self.model.optimizer
        whole = cap.pieces is not None
        states = [flat.p, *(opt.flat_slots if whole else ())]  # flat.p holds BatchNormalization's statistics too
        names = ["parameters"] + [f"optimizer state {i}" for i in range(len(states) - 1)]
        before = [a.copy() for a in states]
        it0 = opt.iterations
        try:
            cap.launch(self.stream)
            got = {"gradients": flat.g.copy(), **{k: v.copy() for k, v in cap.stats.items()}}
            got.update({name: a - b for name, a, b in zip(names, states, before)})
            for a, b in zip(states, before):
                a[...] = b
            with StepContext(step, row0):  # masks drawn eagerly for this step, into the same buffers
                stats = self.trainer.grad(cap.x_slot, cap.y_slot, self.rows, n_global, cap.w_slot)
                if whole:
                    stats = self.trainer.apply(stats, self.rows, None)
            want = {"gradients": flat.g, **stats}  # with the regularizers' terms in both when whole
            want.update({name: a - b for name, a, b in zip(names, states, before)})
        except BaseException:
            for a, b in zip(states, before):
                a[...] = b
            opt.iterations = it0
            raise
        worst, where = 0.0, None
        for name, value in want.items():
            rtol = (DELTA_RTOL if name in names else CHECK_RTOL)[numpy.dtype(flat.g.dtype)]
            den = float(cupy.linalg.norm(cupy.asarray(value).ravel()))
            err = float(cupy.linalg.norm((cupy.asarray(got[name]) - value).ravel())) / (den if den else 1.0)
            if worst != worst:  # a NaN difference is already the worst: a later finite one must not hide it
                break
            if not err / rtol <= worst:
                worst, where, limit, at = err / rtol, name, rtol, err
        cap.checks_left -= 1
        if not worst <= 1.0:
            self._give_up(f"the replayed step's {where} differ from the eager step's (relative difference "
                          f"{at:.2e} > {limit:.0e})")
        else:
            log.info("fastnn: cuda_graph: replay matches the eager step (worst difference %.2g of its tolerance)",
                     worst)
        return stats

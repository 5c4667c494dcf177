"""``fit(cuda_graph=True)``: each full-size training step replayed as a captured CUDA graph.

A small network's step on a GPU is launch-bound: dozens of kernels of a few microseconds, each
costing more on the host to launch than on the device to run. A CUDA graph records the step's
kernels once and replays them with one launch. What is captured, and what stays eager, follows
from two facts (GPU-NOTES §1):

- A graph freezes every kernel argument: pointers *and* scalars passed by value. So the captured
  part is the step's *pure* part, ``Sequential._grad_step`` (forward, loss, metrics, backward into
  the flat gradient buffer), which reads only arrays that stay in place: the parameters, the
  layers' workspaces, a fixed input slot, and the dropout masks. The parts whose scalars change
  every step run eagerly around each replay: gathering the batch into the input slot, drawing
  each Dropout layer's mask for this step (``Dropout.fill_mask``), the gradient all-reduce,
  regularizers, and the optimizer update (one fused kernel, whose learning rate and Adam step
  count change every step). That is 4-6 launches per step instead of several dozen.
- CuPy refuses cuBLAS calls during capture (up to 14.2 at least: ``cublasSetStream`` raises
  ``NotImplementedError``). ``CupyOps.gemm`` hands GEMMs to the recorder here, which either
  captures them through fastnn's own cuBLAS handle (``fastnn.kernels.gpu.cublas``; mode
  ``"full"``: one graph per step) or, when that handle cannot be made or fails its eager check,
  splits the step into graphs with eager GEMMs between them (mode ``"split"``).

Memory: a graph keeps raw addresses, so everything it touches must outlive it and never be
handed to anyone else. Buffers made before capture (workspaces, the flat buffers, the slots) are
referenced here; anything allocated *during* capture comes from a private ``MemoryPool`` that only
this graph uses (PyTorch's private graph pools work the same way).

Safety net: the first replay of each graph is checked against an eager run of the same step from
the same parameters (gradients and batch statistics within float tolerance). If capture fails, or
the check does not hold, training goes on eagerly with one ``RuntimeWarning`` saying why; it never
changes device. The ragged last batch of an epoch always runs eagerly.

Status: written and CPU-tested for its fallbacks (no GPU in the sessions that wrote it); the
``gpu`` tests (replay equals eager, Dropout, BatchNormalization, Adam) and the probes in
``bench/probes`` verify it on a device.
"""
from __future__ import annotations

import functools
import logging
import warnings

import numpy

from fastnn.layers.core import Dropout

log = logging.getLogger("fastnn")

# Relative L2 difference allowed between a replayed step and the same step run eagerly: the
# captured GEMMs may take other cuBLAS algorithms than CuPy's eager ones (sum order differs).
CHECK_RTOL = {numpy.dtype(numpy.float32): 1e-4, numpy.dtype(numpy.float64): 1e-10}


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
        self.program.append(self.stream.end_capture())
        self.program.append(functools.partial(_eager_gemm, cupy, a, b, trans_a, trans_b, out, self.precision))
        self.stream.begin_capture()
        return out

    def finish(self):
        self.program.append(self.stream.end_capture())
        return self.program


def _eager_gemm(cupy, a, b, trans_a, trans_b, out, precision):
    from fastnn.backend.cupy_ops import cupy_matmul

    cupy_matmul(cupy, a.T if trans_a else a, b.T if trans_b else b, out, precision)


class _Captured:
    """One batch shape's replay program and everything it must keep alive."""

    def __init__(self, program, x_slot, y_slot, stats, masks, keep, pool):
        self.program, self.x_slot, self.y_slot, self.stats = program, x_slot, y_slot, stats
        self.masks = masks  # [(Dropout layer, mask shape, dtype)]: masks drawn before each replay
        self.keep, self.pool = keep, pool
        self.checked = False

    def launch(self, stream):
        for item in self.program:
            if callable(item):
                item()
            else:
                item.launch(stream)


class StepGraphs:
    """The graphs of one ``fit`` call (CuPy backend only; see the module docstring)."""

    def __init__(self, model, rows, x_spec, y_spec):
        self.model, self.ops = model, model.ops
        self.x_spec, self.y_spec = x_spec, y_spec  # (shape of one sample, device dtype) of inputs and targets
        self.cupy = cupy = self.ops.xp
        self.rows = rows            # rows of a full (local) batch: the only shape captured
        with cupy.cuda.Device(self.ops.device_id):
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self.captured = None
        self.warm = False           # the first full batch runs eagerly: kernels compile, workspaces appear
        self.disabled = None        # why graphs were given up (then every step is eager)
        self.mode = None
        self._cublas = None

    # ------------------------------------------------------------------ public
    def step(self, fill, n_global, row0, comm):
        """Train one full batch through the graph; ``None`` when the caller must run it eagerly.

        ``fill(x_slot, y_slot)`` writes this step's batch into the input slots (on the stream).
        """
        if self.disabled is not None:
            return None
        if not self.warm:
            self.warm = True
            return None
        model = self.model
        try:
            if self.captured is None:
                self.captured = self._capture(n_global)
        except Exception as exc:  # noqa: BLE001 - any capture failure means "train eagerly", said once
            self._give_up(f"capturing the step failed ({type(exc).__name__}: {exc})")
            return None
        cap = self.captured
        fill(cap.x_slot, cap.y_slot)
        step = model._step
        model._step += 1
        for layer, shape, dtype in cap.masks:
            layer.step, layer.row0 = step, row0
            layer.reuse_buffers = True
            try:
                layer.fill_mask(self.ops, shape, dtype, step)
            finally:
                layer.reuse_buffers = False
        if not cap.checked:
            stats = self._first_replay(cap, n_global)
        else:
            cap.launch(self.stream)
            stats = {k: v.copy() for k, v in cap.stats.items()}
        return model._apply_step(stats, self.rows, comm)

    # ------------------------------------------------------------------ capture
    def _give_up(self, reason):
        self.disabled = reason
        self.captured = None
        warnings.warn(f"fastnn: fit(cuda_graph=True): {reason}; training continues eagerly on "
                      f"{self.ops.device}", RuntimeWarning, stacklevel=4)

    def _handle(self):
        """fastnn's cuBLAS handle on the capture stream, checked eagerly; None means "split" mode."""
        if self.mode is not None:
            return self._cublas
        from fastnn.kernels.gpu.cublas import Cublas

        cupy = self.cupy
        try:
            handle = Cublas(self.stream)
            rng = numpy.random.default_rng(0)
            for dtype in (numpy.float32, numpy.float64):
                a = cupy.asarray(rng.standard_normal((37, 19)), dtype=dtype)
                b = cupy.asarray(rng.standard_normal((19, 23)), dtype=dtype)
                for ta, tb in ((False, False), (True, False), (False, True)):
                    aa, bb = (cupy.ascontiguousarray(a.T) if ta else a), (cupy.ascontiguousarray(b.T) if tb else b)
                    out = cupy.empty((37, 23), dtype=dtype)
                    handle.gemm(aa, bb, out, ta, tb)
                    err = float(cupy.linalg.norm(out - a @ b) / cupy.linalg.norm(a @ b))
                    if not err < 1e-5:
                        raise RuntimeError(f"its GEMM differs from cupy.matmul (relative error {err:.2e})")
            self.mode, self._cublas = "full", handle
        except Exception as exc:  # noqa: BLE001 - no usable handle: split the step around its GEMMs
            log.info("fastnn: cuda_graph: direct cuBLAS unavailable (%s: %s); GEMMs run eagerly between graphs",
                     type(exc).__name__, exc)
            self.mode, self._cublas = "split", None
        return self._cublas

    def _capture(self, n_global):
        from fastnn import backend

        model, ops, cupy, stream = self.model, self.ops, self.cupy, self.stream
        rows = self.rows
        x_slot = cupy.zeros((rows,) + self.x_spec[0], dtype=self.x_spec[1])  # filled before each replay
        y_slot = cupy.zeros((rows,) + self.y_spec[0], dtype=self.y_spec[1])
        handle = self._handle()
        pool = cupy.cuda.MemoryPool()
        recorder = _Recorder(cupy, stream, handle, backend.get_matmul_precision())
        dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]
        stream.synchronize()
        ops.capture = recorder
        for layer in model.layers:
            layer.reuse_buffers = True
        for layer in dropouts:
            layer.premade_mask = True
        try:
            with cupy.cuda.using_allocator(pool.malloc):
                stream.begin_capture()
                try:
                    stats = model._grad_step(x_slot, y_slot, rows, n_global)
                except BaseException:
                    try:
                        stream.end_capture()
                    except Exception:  # noqa: BLE001 - the capture is already broken; report the first error
                        pass
                    raise
                program = recorder.finish()
        finally:
            ops.capture = None
            for layer in model.layers:
                layer.reuse_buffers = False
            for layer in dropouts:
                layer.premade_mask = False
        masks = [(layer, layer.mask.shape, layer.mask.dtype) for layer in dropouts if layer.mask is not None]
        keep = [handle, recorder.keep, list(model._dx_buffer.values())]
        for layer in model.layers:  # every array a layer holds now is one the graph may touch
            keep.append(list(layer._ws.values()))
            keep.append([v for v in vars(layer).values() if isinstance(v, cupy.ndarray)])
        log.info("fastnn: cuda_graph: captured the %d-row training step (%s mode, %d graph(s))", rows, self.mode,
                 sum(1 for item in program if not callable(item)))
        return _Captured(program, x_slot, y_slot, stats, masks, keep, pool)

    def _first_replay(self, cap, n_global):
        """Replay once, then run the same step eagerly from the same parameters, and compare.

        The eager result is the one kept (it is what training without graphs computes); a
        mismatch gives up the graph for the rest of ``fit``."""
        model, cupy, flat = self.model, self.cupy, self.model.flat
        p0 = flat.p.copy()
        cap.launch(self.stream)
        g_graph = flat.g.copy()
        s_graph = {k: v.copy() for k, v in cap.stats.items()}
        flat.p[...] = p0  # BatchNormalization's running statistics live in flat.p too
        dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]
        for layer in model.layers:
            layer.reuse_buffers = True
        for layer in dropouts:
            layer.premade_mask = True
        try:
            stats = model._grad_step(cap.x_slot, cap.y_slot, self.rows, n_global)
        finally:
            for layer in model.layers:
                layer.reuse_buffers = False
            for layer in dropouts:
                layer.premade_mask = False
        rtol = CHECK_RTOL[numpy.dtype(flat.g.dtype)]
        worst, where = 0.0, None
        for name, got, want in [("gradients", g_graph, flat.g)] + [(k, s_graph[k], stats[k]) for k in stats]:
            den = float(cupy.linalg.norm(want.ravel()))
            err = float(cupy.linalg.norm((got - want).ravel())) / (den if den else 1.0)
            if not err <= worst:
                worst, where = err, name
        cap.checked = True
        if not worst <= rtol:
            self._give_up(f"the replayed step's {where} differ from the eager step's (relative difference "
                          f"{worst:.2e} > {rtol:.0e})")
        else:
            log.info("fastnn: cuda_graph: replay matches the eager step (worst relative difference %.2e)", worst)
        return stats

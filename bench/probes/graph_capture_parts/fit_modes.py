"""Part 5 of the graph-capture probe: ``Sequential.fit(cuda_graph=True)`` in "full" and forced "split" mode
against eager ``fit`` (``graph_capture.py``'s docstring, 5)."""
from __future__ import annotations

import statistics
import time
import traceback
import warnings

import numpy

from graph_capture_parts.common import F32

BATCH, STEPS, TIMED = 128, 40, 3   # batch size, steps per epoch, timed epochs after the first
MODELS = {"B512": (512, 512), "B64": (64, 64)}
VARIANTS = ("eager", "full", "split")


def part_fit_modes(rec, replays):
    """``fit(cuda_graph=True)`` in "full" and forced "split" mode against eager ``fit``, models B512 and B64."""
    import cupy

    rng = numpy.random.default_rng(5)
    # on the device already, as fastnn-bench's rows have them: no host-to-device copy inside the timings
    x = cupy.asarray(rng.random((BATCH * STEPS, 784), dtype=F32))
    y = cupy.asarray(rng.integers(0, 10, BATCH * STEPS))
    events = cupy.cuda.Event(), cupy.cuda.Event()
    out = {}
    for name, hidden in MODELS.items():
        res = out[name] = {}
        weights = {}
        for variant in VARIANTS:
            res[variant] = fit_variant(variant, hidden, x, y, events, weights)
        compare_with_eager(res, weights)
    rec["models"] = out
    rec["setup"] = {"batch": BATCH, "steps_per_epoch": STEPS, "timed_epochs": TIMED, "optimizer": "adam 1e-3",
                    "dropout": 0.2, "dtype": "float32"}
    rec["all_correct"] = all(out[m][v].get("correct") for m in out for v in ("full", "split"))


def build(hidden):
    from fastnn import optimizers
    from fastnn.layers import Dense, Dropout
    from fastnn.models import Sequential

    layers = [Dense(hidden[0], "relu", input_shape=(784,)), Dropout(0.2)]
    for h in hidden[1:]:
        layers += [Dense(h, "relu"), Dropout(0.2)]
    model = Sequential(layers + [Dense(10, "softmax")], seed=0, backend="cupy")
    model.compile(optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def no_handle(self, *args, **kwargs):   # what StepGraphs._handle does when fastnn's cuBLAS handle is unusable
    self.mode, self._cublas = "split", None
    return None


def fit_variant(variant, hidden, x, y, events, weights):
    """One model fitted eagerly, or with CUDA graphs in full or (forced) split mode: its timings, warnings
    and graph facts; its final weights go into ``weights[variant]``."""
    from fastnn.backend.graphs import StepGraphs

    original_handle = StepGraphs._handle
    r = {}
    try:
        if variant == "split":
            StepGraphs._handle = no_handle
        model = build(hidden)
        graph = variant != "eager"
        timed_fits(model, x, y, graph, events, r)
        weights[variant] = [numpy.asarray(w, dtype=numpy.float64) for w in model.get_weights()]
        if graph:
            graph_facts(model, r)
        r["ok"] = True
    except Exception as exc:
        r["ok"] = False
        r["error"] = f"{type(exc).__name__}: {exc}"
        r["traceback"] = traceback.format_exc()[-1500:]
    finally:
        StepGraphs._handle = original_handle
    return r


def timed_fits(model, x, y, graph, events, r):
    """A first epoch (kernels load; with graphs: warm step, capture, checks), then ``TIMED`` epochs between
    CUDA events; the warnings all of them gave."""
    import cupy

    e0, e1 = events
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, seed=7, cuda_graph=graph)
        cupy.cuda.Device(0).synchronize()
        r["first_epoch_s"] = time.perf_counter() - t0   # kernels load; with graphs: warm step, capture, checks
        gpu_us, host_us = [], []
        for i in range(TIMED):
            e0.record()
            h0 = time.perf_counter()
            model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, seed=8 + i, cuda_graph=graph)
            e1.record()
            e1.synchronize()
            gpu_us.append(cupy.cuda.get_elapsed_time(e0, e1) * 1e3 / STEPS)
            host_us.append((time.perf_counter() - h0) * 1e6 / STEPS)
    r["warnings"] = [str(w.message)[:400] for w in caught]
    r["us_per_step_median"] = statistics.median(gpu_us)
    r["us_per_step"] = gpu_us
    r["host_us_per_step_median"] = statistics.median(host_us)


def graph_facts(model, r):
    """The mode the captured fit ended in, whether it gave up, and what one replay holds."""
    graphs = model._train_step.graphs if getattr(model, "_train_step", None) else None
    r["mode"] = getattr(graphs, "mode", None)
    r["disabled"] = getattr(graphs, "disabled", "no StepGraphs on the model")
    cap = getattr(graphs, "captured", None)
    if cap is not None:
        r["graphs_per_step"] = sum(1 for item in cap.program if not callable(item))
        r["eager_calls_per_step"] = sum(1 for item in cap.program if callable(item))
        r["optimizer_captured"] = cap.pieces is not None
        r["checks_left"] = cap.checks_left


def compare_with_eager(res, weights):
    """Each graph variant's weights against eager's after the same fits, its speed-up, and the verdict."""
    for variant in ("full", "split"):
        r = res[variant]
        if variant in weights and "eager" in weights:
            num = sum(float(numpy.sum((a - b) ** 2)) for a, b in zip(weights[variant], weights["eager"]))
            den = sum(float(numpy.sum(b ** 2)) for b in weights["eager"])
            r["weights_rel_err_vs_eager"] = (num / den) ** 0.5 if den else None
            if res["eager"].get("us_per_step_median") and r.get("us_per_step_median"):
                r["speedup_vs_eager"] = res["eager"]["us_per_step_median"] / r["us_per_step_median"]
        err = r.get("weights_rel_err_vs_eager")  # 0.0 (bit-identical) is the best answer, not a missing one
        r["correct"] = bool(r.get("ok") and r.get("mode") == variant and r.get("disabled") is None
                            and err is not None and err < 1e-3)

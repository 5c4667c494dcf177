#!/usr/bin/env python3
"""GPU probe: what can one CUDA graph capture of a fastnn training step hold under CuPy 14?

Four questions, each answered in its own subprocess (a wrong ``ctypes`` signature segfaults, an
illegal address poisons the CUDA context: neither may hide the other answers):

1. ``cupy_matmul_in_capture``: does ``cupy.matmul`` inside ``Stream.begin_capture()`` raise?
   (GPU-NOTES §1 expects ``NotImplementedError`` from ``cublas.setStream``.) The exception's type
   and exact message are recorded; if it does not raise, the captured graph is replayed and checked.
2. ``ctypes_cublas_in_capture``: cuBLAS called directly through ``ctypes`` on the ``libcublas`` of
   the ``nvidia-cublas`` wheel (``cuda.pathfinder``, else ``/proc/self/maps``, else a site-packages
   glob): own handle created before capture, ``cublasSetStream_v2`` to the capture stream, then
   ``cublasSetWorkspace_v2`` with a fixed 32 MiB CuPy buffer, an eager check of every layout
   (nn/tn/nt, odd sizes) against ``cupy.matmul``, then ``cublasSgemm_v2`` (and ``cublasGemmEx``
   in FP32 and TF32) inside a capture; the graph is replayed N times onto a NaN-poisoned output
   and compared with ``cupy.matmul`` outside capture; then the inputs are changed in place and one
   more replay must follow them. Every cuBLAS status is recorded.
3. ``fastnn_kernels_in_capture``: fastnn's own launchers (``CupyOps.bias_act``, ``adam_step``,
   ``dropout_mask``, and ``sq_norm``, which allocates during capture, under a private pool)
   captured, replayed N times and compared bit for bit with the same calls made eagerly. Scalar
   arguments (lr, Adam's ``t``, the dropout step) are frozen at capture: the record shows the
   replayed Adam differs from an eager run whose ``t`` advances.
4. ``replay_cost``: one "training-like" step (forward GEMM, ``bias_act``, fused
   ``act_backward_bias_grad``, weight-gradient GEMM, input-gradient GEMM, ``adam_step`` over the flat
   parameters) at B512's, B64's and the wide model's first-layer shapes: 100 steps eager with
   ``cupy.matmul``, eager with the ctypes handle, and as 100 graph replays; CUDA events (GPU time)
   and the host's loop time, median of 5 interleaved rounds; plus a correctness check of the three.
5. ``fit_modes``: ``Sequential.fit(cuda_graph=True)`` in both capture modes, "full" (GEMMs captured
   through fastnn's own cuBLAS handle: one graph per step) and "split" (forced, as when that handle
   is unusable: eager GEMMs between graphs), against eager ``fit``, for models B512 and B64
   (784-512-512-10 and 784-64-64-10, Dropout 0.2, Adam, batch 128): the mode each run ended in,
   whether it gave up (``disabled``, with the warning), the graphs and eager GEMMs per replay, the
   weights' relative difference from eager after the same fits, and µs per step (CUDA events around
   whole ``fit`` epochs over data already on the device, median of 3 after a warm-up epoch that
   captures).

Prints one JSON record on stdout and writes ``$OUT/graph_capture.json`` when ``OUT`` is set.
Without a GPU it exits 0 with ``"skipped": "no GPU: <reason>"``.
Usage: ``python3 bench/probes/graph_capture.py [--parts NAME,NAME] [--replays N]`` (``--part NAME``
runs one part in this process: what the driver's children do).

This file is the driver (arguments, one subprocess per part, the record and its summary); the parts
live in ``graph_capture_parts/`` next to it (see its ``__init__``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _probe import Probe, _default, run_subprocess  # noqa: E402  (this folder is on sys.path when run as a script)
from graph_capture_parts.capture_questions import part_ctypes_cublas, part_cupy_matmul, part_fastnn_kernels
from graph_capture_parts.common import Part, env_info
from graph_capture_parts.fit_modes import part_fit_modes
from graph_capture_parts.replay_cost import part_replay_cost

NAME = "graph_capture"
PARTS = ("cupy_matmul_in_capture", "ctypes_cublas_in_capture", "fastnn_kernels_in_capture", "replay_cost",
         "fit_modes")
PART_TIMEOUT_S = {"cupy_matmul_in_capture": 60, "ctypes_cublas_in_capture": 90,
                  "fastnn_kernels_in_capture": 60, "replay_cost": 150, "fit_modes": 120}
PROBE = Probe(NAME)
RECORD: dict = PROBE.record
save, log, gpu_or_skip = PROBE.save, PROBE.log, PROBE.gpu_or_skip

PART_FUNCS = {"cupy_matmul_in_capture": part_cupy_matmul, "ctypes_cublas_in_capture": part_ctypes_cublas,
              "fastnn_kernels_in_capture": part_fastnn_kernels, "replay_cost": part_replay_cost,
              "fit_modes": part_fit_modes}


# ------------------------------------------------------------------------------ driver
def run_child(part, replays):
    """One part in this process: prints its record as the last stdout line."""
    rec = {}
    with Part(rec):
        PART_FUNCS[part](rec, replays)
    print(json.dumps(rec, default=_default))


def summarize():
    def get(*keys):
        cur = RECORD
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    summary = {
        "q1_cupy_matmul_raises_in_capture": get("cupy_matmul_in_capture", "raised"),
        "q1_exception": get("cupy_matmul_in_capture", "exception"),
        "q2_ctypes_sgemm_captured_and_correct": get("ctypes_cublas_in_capture", "answer", "sgemm_capturable_and_correct"),
        "q2_gemm_ex_fp32_tf32": [get("ctypes_cublas_in_capture", "answer", "gemm_ex_fp32"),
                                 get("ctypes_cublas_in_capture", "answer", "gemm_ex_tf32")],
        "q3_fastnn_kernels_replay_bitwise_equal": get("fastnn_kernels_in_capture", "compare_with_eager",
                                                      "all_bitwise_equal"),
        "q3_t_frozen_confirmed": get("fastnn_kernels_in_capture", "frozen_scalars", "t_frozen_confirmed"),
        "q4_us_per_step": {},
    }
    for label, r in (get("replay_cost", "configs") or {}).items():
        t = r.get("timing", {})
        summary["q4_us_per_step"][label] = {k: round(v["gpu_us_per_step_median"], 2) for k, v in t.items()}
    summary["q5_fit_modes_all_correct"] = get("fit_modes", "all_correct")
    summary["q5_fit_us_per_step"] = {}
    for model, variants in (get("fit_modes", "models") or {}).items():
        summary["q5_fit_us_per_step"][model] = {
            v: {k: (round(r[k], 6) if isinstance(r.get(k), float) else r.get(k))
                for k in ("us_per_step_median", "mode", "disabled", "weights_rel_err_vs_eager", "correct") if k in r}
            for v, r in variants.items()}
    summary["parts_ok"] = {p: bool(get(p, "ok")) for p in PARTS if p in RECORD}
    RECORD["summary"] = summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=PARTS, help="run one part in this process (the driver's children)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated parts to run, each in its own process (default: all: {','.join(PARTS)})")
    ap.add_argument("--replays", type=int, default=None, help="graph replays (default 10; replay_cost: 100)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(PARTS)}")
    if args.part:
        default = 100 if args.part == "replay_cost" else 10
        run_child(args.part, args.replays or default)
        return 0
    pr = gpu_or_skip()
    RECORD["probe_cupy"] = pr.reason
    try:
        RECORD["env"] = env_info()
    except Exception as exc:
        RECORD["env"] = {"error": f"{type(exc).__name__}: {exc}"}
    save()
    RECORD["parts_run"] = parts
    for part in parts:
        log(f"part {part} ...")
        t0 = time.perf_counter()
        cmd = [sys.executable, os.path.abspath(__file__), "--part", part]
        if args.replays:
            cmd += ["--replays", str(args.replays)]
        rec, rc = run_subprocess(cmd, PART_TIMEOUT_S[part])
        rec["returncode"] = rc
        rec["wall_s"] = round(time.perf_counter() - t0, 2)
        RECORD[part] = rec
        log(f"part {part}: rc={rc} ok={rec.get('ok')} {rec.get('error', '')}")
        save()
    summarize()
    print(save())
    return 0


if __name__ == "__main__":
    sys.exit(main())

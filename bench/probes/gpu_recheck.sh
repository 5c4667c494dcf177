#!/usr/bin/env bash
# A short second device command for a lent GPU session, after gpu_check.sh found something to fix
# (or a change needs the GPU again), from the repo root:
#
#   bash bench/probes/gpu_recheck.sh [OUTDIR]        # OUTDIR default: $OUT, else /tmp/fastnn-gpu-recheck
#
# Steps (each with its own time limit; none stops the others), in the order of their value:
#   install        python3 -m pip install --no-deps --no-build-isolation -e .
#   tests_graphs   tests/test_cuda_graphs.py (graph capture, replay against eager, the OOM test)
#   tests_gpu      -m "gpu and not slow" over tests/ (every cupy fit, which captures by default)
#   graph_capture  bench/probes/graph_capture.py --parts fit_modes (eager, full, split: µs/step)
#   column_reduce  bench/probes/column_reduce.py
#   bench_128      fastnn-bench train --gpu-only A,B512,B64 (cupy eager, cupy-graph, torch, JAX)
# RECHECK_TESTS_S (default 170) bounds tests_gpu. Writes to OUTDIR: recheck.log, junit-*.xml,
# graph_capture.json, column_reduce.json, bench-gpu-128.json. Exit: 0 every step passed, 1 one
# failed, 3 no GPU.
set -u
OUT=${1:-${OUT:-/tmp/fastnn-gpu-recheck}}
export OUT
mkdir -p "$OUT" || exit 2
PY=${PYTHON:-python3}
LOG="$OUT/recheck.log"
: >"$LOG"
export PYTHONUNBUFFERED=1 FASTNN_EXPECT_GPU=1
unset FASTNN_CUDA_EMULATOR FASTNN_BACKEND
FAILED=0
. "$(dirname "$0")/_steps.sh"
require_gpu gpu_recheck
PYTEST=("$PY" -m pytest -p fastnn.testing -q -rfEs --maxfail=30 -p no:cacheprovider)
step install 120 "$PY" -m pip install --no-deps --no-build-isolation -e .
step tests_graphs 120 "${PYTEST[@]}" --junitxml "$OUT/junit-graphs.xml" tests/test_cuda_graphs.py
step tests_gpu "${RECHECK_TESTS_S:-170}" "${PYTEST[@]}" --junitxml "$OUT/junit-gpu.xml" -m "gpu and not slow" tests \
    --ignore=tests/test_cuda_graphs.py
step graph_capture 60 "$PY" bench/probes/graph_capture.py --parts fit_modes
step column_reduce 45 "$PY" bench/probes/column_reduce.py
step bench_128 100 "$PY" -m fastnn.bench train --backends cupy --gpu-only --models A,B512,B64 --repeats 5 \
    --train-samples 12800 --max-other-load 1 --json "$OUT/bench-gpu-128.json"
grep -E '^(A|B512|B64) |passed|failed|^FAILED|^ERROR' "$LOG" | tail -60
echo "gpu_recheck: exit $FAILED; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$FAILED"

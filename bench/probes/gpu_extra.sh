#!/usr/bin/env bash
# The second device command of a lent GPU session, after gpu_check.sh (issue 15's GPU rows that the
# check does not run), from the repo root:
#
#   bash bench/probes/gpu_extra.sh [OUTDIR]          # OUTDIR default: $OUT, else /tmp/fastnn-gpu-extra
#
# About 2 minutes on an H200, the install included. Steps (each with its own time limit, none stops
# the others):
#   install         python3 -m pip install --no-deps --no-build-isolation -e .
#   column_reduce   bench/probes/column_reduce.py: tiled against one-tile column reductions
#   bench_8192      fastnn-bench train --gpu-only, B512 and the wide (784-4096-4096-10) model at batch
#                   8192: cupy, cupy-graph, torch-cuda, torch-cuda-graph, jax-gpu-step, jax-gpu-epoch
#   bench_128       the same rows for A, B512, B64 at their own batch sizes (JAX's GPU rows are new)
# Writes to OUTDIR (4 files): column_reduce.json, bench-gpu-8192.json, bench-gpu-128.json, extra.log.
# Exit status: 0 every step ran, 1 one failed, 3 no GPU (CuPy does not compute on device 0).
set -u
OUT=${1:-${OUT:-/tmp/fastnn-gpu-extra}}
export OUT
mkdir -p "$OUT" || exit 2
PY=${PYTHON:-python3}
LOG="$OUT/extra.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
unset FASTNN_CUDA_EMULATOR FASTNN_BACKEND
FAILED=0
. "$(dirname "$0")/_steps.sh"
require_gpu gpu_extra
step install 120 "$PY" -m pip install --no-deps --no-build-isolation -e .
step column_reduce 60 "$PY" bench/probes/column_reduce.py
step bench_8192 150 "$PY" -m fastnn.bench train --backends cupy --gpu-only --models B512,wide --batch-size 8192 \
    --train-samples 65536 --repeats 3 --max-other-load 1 --json "$OUT/bench-gpu-8192.json"
step bench_128 120 "$PY" -m fastnn.bench train --backends cupy --gpu-only --models A,B512,B64 --repeats 5 \
    --train-samples 12800 --max-other-load 1 --json "$OUT/bench-gpu-128.json"
grep -E '^(A|B512|B64|wide) ' "$LOG" | tail -40
echo "gpu_extra: exit $FAILED; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$FAILED"

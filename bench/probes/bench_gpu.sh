#!/usr/bin/env bash
# The GPU benchmark in one device call (after run_all.sh has shown the GPU tests green):
#
#   bash bench/probes/bench_gpu.sh
#
# Writes to $OUT (at most 8 files come back): bench-gpu-small.json (hardware, ops, and models A,
# B512, B64 at their batch sizes), bench-gpu-8192.json (the same models at batch 8192),
# bench-gpu-wide.json (784-4096-4096-10 at batch 128 and 8192), summary.txt and logs.txt.
# Each train run times cupy (eager), cupy-graph (fit(cuda_graph=True)), torch-cuda and
# torch-cuda-graph side by side, interleaved, CUDA-event timing, medians (--gpu-only: no CPU rows).
# Budget: BENCH_BUDGET_S (default 560 s); a run that would start with under 30 s left is skipped.
set +e
set -u
START=$SECONDS
BUDGET=${BENCH_BUDGET_S:-560}
OUT=${OUT:-/tmp/fastnn-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.txt"
LOGS="$OUT/logs.txt"
: >"$SUMMARY"
: >"$LOGS"
note() { echo "$*" | tee -a "$SUMMARY"; }

run() {  # run NAME TIMEOUT ARGS...: one fastnn-bench call, its table to logs.txt
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 30 ]; then note "$name skipped (budget: ${left}s left)"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS
    timeout -k 10 "$limit" $PY -m fastnn.bench "$@" --json "$OUT/$name.json" >>"$LOGS" 2>&1
    note "$name rc=$? $((SECONDS - t0))s"
}

if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
    $PY -m pip install -q --no-deps --no-build-isolation -e . >>"$LOGS" 2>&1 || note "install failed: see logs.txt"
fi
note "fastnn GPU benchmark $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
run bench-gpu-small 200 hardware ops train --backends numpy,cupy --gpu-only --models A,B512,B64 \
    --train-samples 12800 --max-other-load 1
run bench-gpu-8192 170 train --backends numpy,cupy --gpu-only --models A,B512,B64 --batch-size 8192 \
    --train-samples 65536 --max-other-load 1
run bench-gpu-wide 170 train --backends numpy,cupy --gpu-only --models wide --train-samples 16384 --max-other-load 1
run bench-gpu-wide-8192 120 train --backends numpy,cupy --gpu-only --models wide --batch-size 8192 \
    --train-samples 32768 --max-other-load 1
note "total $((SECONDS - START))s"
cat "$SUMMARY"
grep -E "^(== train|model|[A-Za-z0-9]+ +(cupy|torch))" "$LOGS" | tail -60
exit 0

#!/usr/bin/env bash
# One command for the lent GPU machine (see bench/probes/README.md), run from the repo root:
#
#   bash bench/probes/run_all.sh
#
# Installs the checkout, then runs: environment report, the three probes, the GPU test subset and
# `fastnn-bench --quick` with cupy. Each step has its own timeout and the whole script keeps to a
# budget (PROBE_BUDGET_S, default 530 s, under the device tool's 600 s); a step that would start
# with too little time left is skipped and says so. Nothing fails fast: every step's exit code and
# seconds go to $OUT/summary.txt, every log is appended to $OUT/logs.txt as the step ends.
# At most 8 files come back from $OUT: summary.txt, logs.txt, graph_capture.json,
# kernel_cache.json, optimizer_bandwidth.json, bench-quick.json, pytest-gpu.xml.
# Knobs: OUT (default /tmp/fastnn-probes-out), PYTHON (default python3), PROBE_BUDGET_S,
# PROBE_SKIP_INSTALL=1 (the checkout is already installed).
set +e
set -u

START=$SECONDS
BUDGET=${PROBE_BUDGET_S:-530}
RESERVE=15                      # kept for the digest at the end
OUT=${OUT:-/tmp/fastnn-probes-out}
export OUT
mkdir -p "$OUT"
LOGDIR=$(mktemp -d /tmp/fastnn-probe-logs.XXXXXX)
SUMMARY="$OUT/summary.txt"
LOGS="$OUT/logs.txt"
: >"$SUMMARY"
: >"$LOGS"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME TIMEOUT_S CMD...: run CMD with a timeout clipped to the budget left; record rc and seconds.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START) - RESERVE))
    if [ "$left" -lt 10 ]; then
        note "$(printf '%-22s rc=skipped  (budget: %ss left)' "$name" "$left")"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS
    echo "----- $name (timeout ${limit}s) -----"
    timeout -k 10 "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
    local rc=$?
    local dt=$((SECONDS - t0))
    local why=""
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why=" (timed out at ${limit}s)"
    note "$(printf '%-22s rc=%-4s %4ss%s' "$name" "$rc" "$dt" "$why")"
    { echo "===== $name: rc=$rc ${dt}s$why: $* ====="; cat "$LOGDIR/$name.log"; echo; } >>"$LOGS"
    return 0
}

REV='?'
if git rev-parse --short HEAD >/dev/null 2>&1; then
    REV=$(git rev-parse --short HEAD)
    git diff --quiet HEAD 2>/dev/null || REV="$REV+uncommitted"
fi
note "fastnn GPU probes $(date -u +%FT%TZ) on $(hostname) commit $REV"
note "OUT=$OUT budget=${BUDGET}s"

step env 60 bash -c '
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu --format=csv
    '"$PY"' --version
    '"$PY"' -m pip list 2>/dev/null | grep -i -E "^(cupy|numpy|numba|torch|jax|pytest|cuda-|nvidia-cublas|nvidia-cuda-nvrtc|setuptools)"
    '"$PY"' -c "import cupy; cupy.show_config()"
    nproc; free -g | head -2'
grep -m1 -E "^GPU 0" "$LOGDIR/env.log" >>"$SUMMARY"

if [ "${PROBE_SKIP_INSTALL:-0}" = 1 ]; then
    note "install                skipped (PROBE_SKIP_INSTALL=1)"
else
step install 120 bash -c "$PY -m pip install --no-deps --no-build-isolation -e . || { echo 'editable install failed; trying a plain install'; $PY -m pip install --no-deps --no-build-isolation .; }"
fi
$PY -c "import fastnn, fastnn.kernels.gpu._loader, fastnn.bench.cli; print('fastnn', fastnn.__version__, fastnn.__file__)" >>"$SUMMARY" 2>&1 \
    || note "fastnn does not import after the install: see logs.txt (install)"

step graph_capture 240 $PY bench/probes/graph_capture.py
step kernel_cache 150 $PY bench/probes/kernel_cache.py --child-timeout 70
step optimizer_bandwidth 120 $PY bench/probes/optimizer_bandwidth.py

PYTEST_ARGS=(-q -m gpu tests -x -rfEs --durations=15 --junitxml "$OUT/pytest-gpu.xml")
if $PY -c "import pytest_timeout" 2>/dev/null; then
    PYTEST_ARGS+=(--timeout 300)
fi
step pytest_gpu 180 $PY -m pytest "${PYTEST_ARGS[@]}"
grep -E "(passed|failed|error|skipped|no tests ran)" "$LOGDIR/pytest_gpu.log" 2>/dev/null | tail -1 | sed 's/^/pytest: /' >>"$SUMMARY"

if command -v fastnn-bench >/dev/null 2>&1; then BENCH=(fastnn-bench); else BENCH=($PY -m fastnn.bench); fi
step bench_quick 200 "${BENCH[@]}" --quick --backends numpy,numba,cupy --json "$OUT/bench-quick.json"

note "total $((SECONDS - START))s"

# Digest: the answers, short, for the tool's output tail.
echo
echo "================ summary.txt ================"
cat "$SUMMARY"
echo "================ digest ================"
timeout 20 $PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("graph_capture", "kernel_cache", "optimizer_bandwidth"):
    p = out / f"{name}.json"
    if not p.exists():
        print(f"{name}: no record")
        continue
    try:
        rec = json.loads(p.read_text())
    except ValueError as exc:
        print(f"{name}: unreadable record ({exc})")
        continue
    if "skipped" in rec or "error" in rec:
        print(f"{name}: {rec.get('skipped') or rec.get('error')}")
        continue
    print(f"{name}: {json.dumps(rec.get('summary'), default=str)[:2500]}")
    for key, val in rec.items():
        if isinstance(val, dict) and val.get("ok") is False:
            print(f"  {name}.{key} FAILED: {str(val.get('error'))[:600]}")
p = out / "bench-quick.json"
print("bench-quick.json:", "present" if p.exists() else "missing")
PYEOF
exit 0

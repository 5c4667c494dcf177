#!/usr/bin/env bash
# The one device check for a lent GPU (issue 14, item 6), run from the repo root:
#
#   bash bench/probes/gpu_check.sh [OUTDIR]          # OUTDIR default: $OUT, else /tmp/fastnn-gpu-check
#
# On a fresh H200 machine (CuPy 14.2, PyTorch, JAX, Numba, pytest preinstalled; nothing to download)
# it finishes in under 9 minutes, the install included (GPU_CHECK_BUDGET_S, default 500 s, bounds
# every step; bench/probes/README.md has the estimate step by step). Steps, in this order:
#   env            nvidia-smi, versions, tools on PATH
#   gpu            does CuPy compute on device 0? If not: a clear "no GPU" message, the summary, exit 3
#   install        python3 -m pip install --no-deps --no-build-isolation -e .
#   compile        bench/probes/kernel_cache.py: the six CUDA modules through NVRTC, cold then from the
#                  cache; that cache (CUPY_CACHE_DIR) then serves every later step
#   tests_gpu_files  the GPU-specific test files, first
#   tests_gpu_rest   -m "gpu and not slow" over the rest of tests/ and bench/
#   graph_capture  bench/probes/graph_capture.py, fit(cuda_graph=True) in full and split mode first
#   memcheck, racecheck  compute-sanitizer over a small kernel subset (skipped, with a note, when the
#                  tool is not there), CuPy's memory pool off so each array is its own allocation
#   bench          fastnn-bench train A, B512, B64: cupy (eager), cupy-graph, torch-cuda, torch-cuda-graph
#   optimizer_bandwidth  only when the budget still has room for it (GPU_CHECK_EXTRAS=0: never)
# pytest runs with FASTNN_EXPECT_GPU=1 (a GPU test that would skip for want of a GPU fails) and
# --maxfail, never -x. Each step has its own time limit, clipped so that the steps after it keep
# their minimum; a step with too little time left is skipped and says so.
#
# Writes to OUTDIR (at most 7 files; the device tool returns at most 8): gpu_check.md (the tables),
# gpu_check.json (every step, test counts, failures, skip reasons, sanitizer and probe answers,
# benchmark rows), logs.txt (every step's output), kernel_cache.json, graph_capture.json,
# bench-gpu.json (fastnn-bench's record), and optimizer_bandwidth.json when that step ran.
# Exit status: 0 all green; 1 a test failed, a step failed or timed out, or the sanitizer found
# errors; 3 no GPU.
#
# Knobs (environment): GPU_CHECK_BUDGET_S (500), GPU_CHECK_SKIP_INSTALL=1, GPU_CHECK_MAXFAIL (50),
# GPU_CHECK_TEST_TIMEOUT_S (per test, with pytest-timeout; 120), GPU_CHECK_BENCH_REPEATS (5),
# GPU_CHECK_BENCH_SAMPLES (12800), GPU_CHECK_EXTRAS (1), PYTHON (python3).
# GPU_CHECK_DRY_RUN=plan prints the plan and writes the summary, running nothing; GPU_CHECK_DRY_RUN=1
# also collects each pytest selection (no GPU needed; about 20 s on 2 cores) to show that none is
# empty (GPU_CHECK_COLLECT: which of "gpu_files gpu_rest sanitizer", default all three).
set +e
set -u

START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET_S:-500}
FINAL=15                                  # kept for the summary at the end
GRACE=5                                   # a step that ignores SIGINT at its limit is killed this much later
OUT=${1:-${OUT:-/tmp/fastnn-gpu-check}}
export OUT
mkdir -p "$OUT" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastnn-gpu-check.XXXXXX")
CACHE=""
cleanup() {  # the work folder (logs, JUnit XML: their content is in OUT) and the kernel cache made here
    [ "${GPU_CHECK_KEEP_WORK:-0}" = 1 ] && return
    rm -rf "$WORK"
    case "$CACHE" in */fastnn-cupy-cache-*) rm -rf "$CACHE" ;; esac
}
trap cleanup EXIT
STEPS="$WORK/steps.tsv"
LOGS="$OUT/logs.txt"
: >"$STEPS"
: >"$LOGS"
DRY=${GPU_CHECK_DRY_RUN:-0}
[ "$DRY" = 0 ] || [ "$DRY" = plan ] || DRY=1
PY=${PYTHON:-python3}
MAXFAIL=${GPU_CHECK_MAXFAIL:-50}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT_S:-120}
BENCH_REPEATS=${GPU_CHECK_BENCH_REPEATS:-5}
BENCH_SAMPLES=${GPU_CHECK_BENCH_SAMPLES:-12800}
export PYTHONUNBUFFERED=1
export FASTNN_EXPECT_GPU=1                # fastnn.testing: a GPU test that would skip fails instead
unset FASTNN_CUDA_EMULATOR                # the real GPU, never the CPU harness of tests/cudaemu
unset FASTNN_BACKEND

# The test selections.
GPU_FILES=(tests/kernels/test_gpu_kernels.py tests/kernels/test_gpu_conv.py tests/test_cuda_graphs.py
           tests/test_gpu_dev_launchers.py)
REST=(-m "gpu and not slow" tests bench)
for f in "${GPU_FILES[@]}"; do REST+=("--ignore=$f"); done
# compute-sanitizer subset: the kernels with shared memory, warp shuffles or grid-stride wraps (column
# sums, block reductions, batchnorm, the losses, sq_norm, dropout, Adam, maxpool, a Conv2D layer).
SAN_FILES=(tests/kernels/test_gpu_kernels.py tests/kernels/test_gpu_conv.py)
SAN_K='(f32 and ((test_bias_grad_matches and (257x33 or wide)) or (act_backward_bias_grad_matches and relu and 257x33) or (softmax_xent and index and 257x33) or (batchnorm and 257x33) or (sq_norm_matches and 1000) or (dropout_mask_bitwise and 0.3 and 257x33) or (adam_step_matches and plain and 1000 and 10-adam) or maxpool)) or conv2d_layer'
# the pytest in-process driver under the sanitizer: no memory pool, so an out-of-bounds access
# past an array's end is outside its allocation (memcheck cannot see it inside a pool chunk)
SAN_DRIVER='import sys, cupy; cupy.cuda.set_allocator(None); cupy.cuda.set_pinned_memory_allocator(None); import pytest; sys.exit(pytest.main(sys.argv[1:]))'

PYTEST_COMMON=(-p fastnn.testing -q -rfEs "--maxfail=$MAXFAIL" --durations=15 -o junit_family=xunit2)

# Minimum seconds each later step needs: a step's limit is clipped so that these stay available.
declare -A MIN=([compile]=30 [tests_gpu_files]=60 [tests_gpu_rest]=60 [graph_capture]=40 [memcheck]=30
                [racecheck]=30 [bench]=60)
ORDER=(compile tests_gpu_files tests_gpu_rest graph_capture memcheck racecheck bench)
reserve_after() {  # reserve_after NAME: the minimums of the steps after NAME
    local sum=0 seen=0 s
    for s in "${ORDER[@]}"; do
        [ "$seen" = 1 ] && sum=$((sum + ${MIN[$s]}))
        [ "$s" = "$1" ] && seen=1
    done
    [ "$seen" = 1 ] || sum=0
    echo "$sum"
}
reserve_from() {  # reserve_from NAME: the minimums of NAME and every step after it
    local sum=0 seen=0 s
    for s in "${ORDER[@]}"; do
        [ "$s" = "$1" ] && seen=1
        [ "$seen" = 1 ] && sum=$((sum + ${MIN[$s]}))
    done
    echo "$sum"
}

FAILED=0
record() {  # record NAME RC SECONDS LIMIT NOTE: one line of steps.tsv (and of the output)
    local note=${5//$'\n'/ }
    note=${note//$'\t'/ }
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$note" >>"$STEPS"
    printf '%-20s rc=%-8s %4ss (limit %ss) %.300s\n' "$1" "$2" "$3" "$4" "$note"
}

# step NAME CAP RESERVE CMD...: run CMD with a limit of CAP seconds, clipped to the budget left
# after RESERVE seconds for the later steps; its output goes to $WORK/NAME.log and logs.txt.
step() {
    local name=$1 cap=$2 reserve=$3
    shift 3
    local left=$((BUDGET - (SECONDS - START) - FINAL - reserve - GRACE))
    local limit=$cap
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$DRY" != 0 ]; then
        record "$name" dry-run 0 "$cap" "would run: $*"
        return 0
    fi
    if [ "$limit" -lt 10 ]; then
        record "$name" skipped 0 "$limit" "budget: ${left}s left after keeping ${reserve}s for later steps"
        return 0
    fi
    local what="$*"
    what=${what//$'\n'/ }
    printf -- '----- %s (limit %ss): %.160s\n' "$name" "$limit" "$what"
    local t0=$SECONDS
    # SIGINT first: pytest then still prints its summary and writes its JUnit XML
    timeout -s INT -k "$GRACE" "$limit" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    local dt=$((SECONDS - t0)) why=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why="timed out at ${limit}s"; fi
    [ "$rc" -ne 0 ] && FAILED=1
    record "$name" "$rc" "$dt" "$limit" "$why"
    { echo "===== $name: rc=$rc ${dt}s ${why}: $*"; tail -c 1500000 "$WORK/$name.log"; echo; } >>"$LOGS"
    return 0
}

skip_step() {  # skip_step NAME WHY
    record "$1" skipped 0 0 "$2"
}

report() {  # write gpu_check.json and gpu_check.md, print the markdown; exit with the verdict
    local total=$((SECONDS - START))
    timeout 60 "$PY" bench/probes/_probe.py gpu-check-report --work "$WORK" --out "$OUT" \
        --meta "commit=$REV" --meta "host=$(hostname 2>/dev/null || echo '?')" --meta "started=$STARTED" \
        --meta "budget_s=$BUDGET" --meta "total_s=$total" --meta "dry_run=$DRY" --meta "gpu=${GPU_LINE:-}" \
        --meta "no_gpu=${NO_GPU:-}" --meta "out=$OUT" --meta "python=$PY"
    local rc=$?
    if [ "$rc" -gt 3 ]; then   # the report itself failed: fall back on the steps table
        echo "gpu_check: the summary could not be written (rc=$rc); steps:"
        cat "$STEPS"
        rc=1
    fi
    if [ -n "${NO_GPU:-}" ]; then rc=3; elif [ "$FAILED" = 1 ] && [ "$rc" = 0 ]; then rc=1; fi
    echo "gpu_check: total ${total}s, exit $rc (0 green, 1 failures, 3 no GPU); files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
    exit "$rc"
}

REV='?'
if git rev-parse --short HEAD >/dev/null 2>&1; then
    REV=$(git rev-parse --short HEAD)
    git diff --quiet HEAD 2>/dev/null || REV="$REV+uncommitted"
fi
STARTED=$(date -u +%FT%TZ)
echo "fastnn gpu_check $STARTED commit $REV: OUT=$OUT budget=${BUDGET}s$([ "$DRY" = 0 ] || echo " DRY RUN ($DRY)")"

# ------------------------------------------------------------------------------------------ env
step env 30 "$(reserve_from compile)" bash -c '
    nvidia-smi -L 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv 2>&1
    '"$PY"' --version
    '"$PY"' -m pip list 2>/dev/null | grep -i -E "^(cupy|numpy|numba|torch|jax|jaxlib|pytest|cuda-|nvidia-cublas|nvidia-cuda-nvrtc|setuptools) "
    for t in compute-sanitizer nvcc ncu; do printf "%s: %s\n" "$t" "$(command -v $t || echo "not on PATH")"; done
    echo "cores: $(nproc)"; free -g 2>/dev/null | head -2'

# ------------------------------------------------------------------------------------------ gpu
# CuPy alone (fastnn need not be installed yet): the same test computation as
# fastnn.backend.select.probe_cupy, so a machine without a GPU stops here, before anything changes.
GPU_PROBE='import sys
try:
    import cupy
except Exception as exc:
    print(f"no GPU: CuPy does not import ({type(exc).__name__}: {exc})")
    sys.exit(3)
try:
    count = cupy.cuda.runtime.getDeviceCount()
    a = cupy.arange(4, dtype=cupy.float32)
    a += 1
    total = float(a.sum().get())
    if total != 10.0:
        raise RuntimeError(f"a test computation on the device gave {total}, expected 10")
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
except Exception as exc:
    print(f"no GPU: CuPy {cupy.__version__} is installed but no CUDA device answers ({type(exc).__name__}: {exc})")
    sys.exit(3)
print(f"GPU: {name} ({count} device(s)), CuPy {cupy.__version__}")'
GPU_LINE=""
NO_GPU=""
if [ "$DRY" = 0 ]; then
    t0=$SECONDS
    timeout -k 5 60 "$PY" -c "$GPU_PROBE" >"$WORK/gpu.out" 2>"$WORK/gpu.err"
    rc=$?
    GPU_LINE=$(tail -1 "$WORK/gpu.out")
    [ -n "$GPU_LINE" ] || GPU_LINE="no GPU: the probe printed nothing (rc=$rc): $(tail -c 600 "$WORK/gpu.err" | tr '\n' ' ')"
    { echo "===== gpu: rc=$rc"; echo "$GPU_LINE"; cat "$WORK/gpu.err"; echo; } >>"$LOGS"
    if [ "$rc" -ne 0 ] || [ "${GPU_LINE#no GPU}" != "$GPU_LINE" ]; then
        NO_GPU=${GPU_LINE#no GPU: }
        record gpu 3 $((SECONDS - t0)) 60 "$GPU_LINE"
        echo
        echo "gpu_check: NO GPU HERE: $NO_GPU"
        echo "gpu_check: nothing else runs; this check needs CuPy computing on a CUDA GPU (a lent H200)."
        for s in install "${ORDER[@]}"; do skip_step "$s" "not run: no GPU"; done
        report
    fi
    record gpu 0 $((SECONDS - t0)) 60 "$GPU_LINE"
else
    record gpu dry-run 0 60 "would run: $PY -c <CuPy test computation on device 0>"
fi

# ------------------------------------------------------------------------------------------ install
if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = 1 ]; then
    skip_step install "GPU_CHECK_SKIP_INSTALL=1"
else
    step install 120 "$(reserve_from compile)" bash -c "$PY -m pip install --no-deps --no-build-isolation -e . || { echo 'editable install failed; trying a plain install'; $PY -m pip install --no-deps --no-build-isolation .; }"
fi
if [ "$DRY" = 0 ]; then
    $PY -c "import fastnn, fastnn.testing, fastnn.kernels.gpu._loader, fastnn.bench.cli; print('fastnn', fastnn.__version__, fastnn.__file__)" >>"$LOGS" 2>&1 \
        || { FAILED=1; record fastnn_import 1 0 0 "fastnn does not import after the install: see logs.txt"; }
fi

# ------------------------------------------------------------------------------------------ compile
step compile 150 "$(reserve_after compile)" "$PY" bench/probes/kernel_cache.py --keep-cache --child-timeout 100
if [ "$DRY" = 0 ] && [ -f "$OUT/kernel_cache.json" ]; then
    CACHE=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("cache_dir") or "")' "$OUT/kernel_cache.json" 2>/dev/null)
    if [ -n "$CACHE" ] && [ -d "$CACHE" ]; then
        export CUPY_CACHE_DIR="$CACHE"   # every later process loads the compiled modules from here
        echo "CUPY_CACHE_DIR=$CUPY_CACHE_DIR" >>"$LOGS"
    fi
fi

# ------------------------------------------------------------------------------------------ tests
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then PYTEST_COMMON+=(--timeout "$TEST_TIMEOUT"); fi
step tests_gpu_files 220 "$(reserve_after tests_gpu_files)" "$PY" -m pytest "${PYTEST_COMMON[@]}" \
    --junitxml "$WORK/junit-tests_gpu_files.xml" "${GPU_FILES[@]}"
step tests_gpu_rest 200 "$(reserve_after tests_gpu_rest)" "$PY" -m pytest "${PYTEST_COMMON[@]}" \
    --junitxml "$WORK/junit-tests_gpu_rest.xml" "${REST[@]}"

# ------------------------------------------------------------------------------------------ probe
step graph_capture 150 "$(reserve_after graph_capture)" "$PY" bench/probes/graph_capture.py \
    --parts fit_modes,cupy_matmul_in_capture,ctypes_cublas_in_capture,fastnn_kernels_in_capture,replay_cost

# ------------------------------------------------------------------------------------------ sanitizer
SAN=""
for cand in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer \
            /usr/local/cuda-*/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [ -n "$cand" ] && [ -x "$cand" ]; then SAN=$cand; break; fi
done
if [ -z "$SAN" ] && [ "$DRY" = 0 ]; then
    skip_step memcheck "compute-sanitizer is not on PATH nor under /usr/local/cuda*/bin: no sanitizer pass"
    skip_step racecheck "compute-sanitizer is not on PATH nor under /usr/local/cuda*/bin: no sanitizer pass"
else
    SAN=${SAN:-compute-sanitizer}
    SAN_PYTEST=(-q -rfE --maxfail=10 -p no:randomly -k "$SAN_K" "${SAN_FILES[@]}")
    step memcheck 90 "$(reserve_after memcheck)" "$SAN" --tool memcheck --leak-check no --report-api-errors no \
        --print-limit 20 --error-exitcode 86 "$PY" -c "$SAN_DRIVER" "${SAN_PYTEST[@]}"
    step racecheck 90 "$(reserve_after racecheck)" "$SAN" --tool racecheck --racecheck-report analysis \
        --print-limit 20 --error-exitcode 86 "$PY" -c "$SAN_DRIVER" "${SAN_PYTEST[@]}"
fi

# ------------------------------------------------------------------------------------------ bench
step bench 150 0 "$PY" -m fastnn.bench train --backends cupy --gpu-only --models A,B512,B64 \
    --repeats "$BENCH_REPEATS" --train-samples "$BENCH_SAMPLES" --max-other-load 1 --json "$OUT/bench-gpu.json"

# ------------------------------------------------------------------------------------------ extras
if [ "${GPU_CHECK_EXTRAS:-1}" != 0 ]; then
    left=$((BUDGET - (SECONDS - START) - FINAL))
    if [ "$DRY" != 0 ] || [ "$left" -ge 75 ]; then
        step optimizer_bandwidth 100 0 "$PY" bench/probes/optimizer_bandwidth.py
    else
        skip_step optimizer_bandwidth "budget: ${left}s left (needs 75s)"
    fi
fi

# ------------------------------------------------------------------------------------------ dry run: collect
if [ "$DRY" = 1 ]; then
    collect() {  # collect NAME PYTEST-ARGS...: count what a selection collects (FASTNN_EXPECT_GPU off: no GPU here)
        local name=$1 t0=$SECONDS
        shift
        case " ${GPU_CHECK_COLLECT:-gpu_files gpu_rest sanitizer} " in *" ${name#collect_} "*) ;; *) return 0 ;; esac
        FASTNN_EXPECT_GPU=0 timeout -k 5 120 "$PY" -m pytest --collect-only -q -p fastnn.testing -p no:randomly "$@" \
            >"$WORK/$name.log" 2>&1
        local rc=$? n
        n=$(grep -E -o '^[0-9]+(/[0-9]+)? tests? collected' "$WORK/$name.log" | tail -1 | grep -E -o '^[0-9]+')
        [ -n "$n" ] || n=0
        if [ "$rc" -ne 0 ] || [ "$n" = 0 ]; then FAILED=1; fi
        record "$name" "$rc" $((SECONDS - t0)) 120 "collected $n tests"
        { echo "===== $name: rc=$rc"; tail -c 20000 "$WORK/$name.log"; echo; } >>"$LOGS"
    }
    collect collect_gpu_files "${GPU_FILES[@]}"
    collect collect_gpu_rest "${REST[@]}"
    collect collect_sanitizer -k "$SAN_K" "${SAN_FILES[@]}"
fi

report

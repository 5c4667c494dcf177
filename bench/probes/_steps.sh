# Shared by gpu_extra.sh and gpu_recheck.sh (sourced, not run): each sets LOG, PY and FAILED=0
# first, then calls require_gpu NAME and step NAME LIMIT CMD...

step() {  # step NAME LIMIT CMD...: run CMD with a time limit; its output goes to $LOG
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "===== $name (limit ${limit}s): $*" >>"$LOG"
    timeout -s INT -k 5 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    [ "$rc" -ne 0 ] && FAILED=1
    printf '%-14s rc=%-4s %4ss\n' "$name" "$rc" $((SECONDS - t0)) | tee -a "$LOG"
}

require_gpu() {  # require_gpu SCRIPT: exit 3, saying so, unless CuPy computes on device 0
    if ! timeout 60 "$PY" -c 'import cupy, sys; a = cupy.arange(4) + 1; sys.exit(0 if int(a.sum()) == 10 else 1)' >>"$LOG" 2>&1; then
        echo "$1: no GPU here (CuPy does not compute on device 0); nothing run" | tee -a "$LOG"
        exit 3
    fi
}

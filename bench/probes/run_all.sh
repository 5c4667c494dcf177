#!/usr/bin/env bash
# Kept so that older notes still work: the one device command is now bench/probes/gpu_check.sh
# (issue 14; bench/probes/README.md). This runs it, with run_all.sh's knobs mapped onto it:
#   PROBE_BUDGET_S -> GPU_CHECK_BUDGET_S, PROBE_SKIP_INSTALL=1 -> GPU_CHECK_SKIP_INSTALL=1.
# Same arguments (an output folder, default $OUT) and exit status as gpu_check.sh: 0 green,
# 1 failures, 3 no GPU. What it replaced (the three probes, `pytest -m gpu tests -x`, `fastnn-bench
# --quick`) is all inside gpu_check.sh, without -x and with the full GPU benchmark rows.
if [ -n "${PROBE_BUDGET_S:-}" ] && [ -z "${GPU_CHECK_BUDGET_S:-}" ]; then
    export GPU_CHECK_BUDGET_S=$PROBE_BUDGET_S
fi
if [ "${PROBE_SKIP_INSTALL:-0}" = 1 ] && [ -z "${GPU_CHECK_SKIP_INSTALL:-}" ]; then
    export GPU_CHECK_SKIP_INSTALL=1
fi
exec bash "$(dirname "${BASH_SOURCE[0]}")/gpu_check.sh" "$@"

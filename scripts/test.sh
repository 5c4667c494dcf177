#!/bin/sh
# Quick start 2: run the whole test suite (and the benchmark suite as a smoke test, untimed).
FASTNN_EXTRAS="test"
. "$(dirname "$0")/_venv.sh"
# The venv's pytest script, not "python -m pytest": the latter puts the repository root on
# sys.path, where fastnn/ is found without the package_dir mapping that makes kernels/ fastnn.kernels.
exec .venv/bin/pytest "$@"

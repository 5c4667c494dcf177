#!/bin/sh
# Quick start 2: run the whole test suite (and the benchmark suite as a smoke test, untimed).
FASTNN_EXTRAS="test"
. "$(dirname "$0")/_venv.sh"
# Where the test extra installs NVRTC and nvcc (PyPI wheels, no GPU needed), the CUDA compile checks
# must run: under this variable a missing tool fails them instead of skipping.
case "$(uname -s)-$(uname -m)" in
    Linux-x86_64 | Linux-aarch64) FASTNN_REQUIRE_CUDA_TOOLS="${FASTNN_REQUIRE_CUDA_TOOLS:-1}"; export FASTNN_REQUIRE_CUDA_TOOLS ;;
esac
# The venv's pytest script, not "python -m pytest": the latter puts the repository root on
# sys.path, where fastnn/ is found without the package_dir mapping that makes kernels/ fastnn.kernels.
exec .venv/bin/pytest "$@"

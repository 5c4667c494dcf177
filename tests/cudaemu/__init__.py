"""The CUDA-on-CPU harness: fastnn's CUDA kernels compiled with the host C++ compiler and run by
fibers, behind an emulated ``cupy`` (see ``cudaemu.h``, ``build.py``, ``fakecupy.py``).

``install()`` puts the emulated ``cupy`` into ``sys.modules`` (before fastnn first imports CuPy),
so ``fastnn.use("cupy")`` runs the real launchers and kernels. ``tests/conftest.py`` calls it when
``FASTNN_CUDA_EMULATOR=1``; ``tests/test_cuda_emulator.py`` runs the cupy-parametrised kernel,
layer, optimizer and fit tests that way in a subprocess, once in thread-index order and twice in
random thread orders (``FASTNN_CUDAEMU_ORDER``: ``index``, ``reverse`` or ``random:<seed>``).
"""
from __future__ import annotations

import os
import sys

from . import build


def set_order(spec: str) -> None:
    """Thread order for every later launch: ``index``, ``reverse`` or ``random:<seed>``."""
    if spec in ("", "index"):
        build.Kernel.mode, build.Kernel.seed = 0, 0
    elif spec == "reverse":
        build.Kernel.mode, build.Kernel.seed = 1, 0
    elif spec.startswith("random:"):
        build.Kernel.mode, build.Kernel.seed = 2, int(spec.split(":", 1)[1])
    else:
        raise ValueError(f"FASTNN_CUDAEMU_ORDER={spec!r}: expected index, reverse or random:<seed>")


def install() -> None:
    """Make ``import cupy`` give the emulator (refuses once a real CuPy has been imported)."""
    real = sys.modules.get("cupy")
    from . import fakecupy

    if (real is not None and real is not fakecupy) or "cupyx" in sys.modules and \
            sys.modules["cupyx"] is not fakecupy.cupyx:
        raise RuntimeError("cudaemu.install(): a real CuPy is already imported in this process")
    sys.modules["cupy"] = fakecupy
    sys.modules.update(fakecupy.SUBMODULES)
    set_order(os.environ.get("FASTNN_CUDAEMU_ORDER", "index"))

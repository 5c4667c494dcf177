"""Shared fixtures: every backend the machine can run, the NumPy reference, both float dtypes.

With ``FASTNN_CUDA_EMULATOR=1`` the ``cupy`` backend runs the real CUDA kernels on the CPU
(``tests/cudaemu``), installed here before anything imports CuPy.

Strict kernels (``FASTNN_STRICT_KERNELS=1``) are on for every run, set here before fastnn is
imported: a numba or cupy primitive that would fall back to the NumPy reference raises
``KernelFallbackError``, so a kernel that is never reached fails its test. A test that exercises a
fallback on purpose is marked ``@pytest.mark.allow_fallback`` (or uses
``fastnn.testing.allow_fallback()``). ``FASTNN_STRICT_KERNELS=0 pytest ...`` turns it off.
"""
import os

os.environ.setdefault("FASTNN_STRICT_KERNELS", "1")  # before fastnn is imported (also reaches subprocesses)

if os.environ.get("FASTNN_CUDA_EMULATOR") == "1":
    import cudaemu

    cudaemu.install()
from fastnn._pytest_fixtures import backend, dtype, fast_backend, ops, ref  # noqa: F401

import pytest  # noqa: E402

from fastnn import config as _config  # noqa: E402
from fastnn.testing import allow_fallback, set_strict_kernels  # noqa: E402

set_strict_kernels(_config._flag("FASTNN_STRICT_KERNELS"))  # in case fastnn was imported before this file


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_fallback: the test exercises a fast backend's fallback to the "
                                       "NumPy reference on purpose (allowed under FASTNN_STRICT_KERNELS=1)")


@pytest.fixture(autouse=True)
def _declared_fallback(request):
    """Under ``@pytest.mark.allow_fallback`` the test (and its fixtures) may fall back to the reference."""
    if request.node.get_closest_marker("allow_fallback") is None:
        yield
    else:
        with allow_fallback():
            yield

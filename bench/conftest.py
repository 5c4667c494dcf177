"""Fixtures of the pytest-benchmark suite (``pytest bench --benchmark-only``).

The same backends as the test suite's ``backend`` fixture (numpy always, numba when it imports,
cupy only with a CUDA device, otherwise skipped with the reason), both float dtypes, and a
``timed`` helper that synchronizes GPU work inside the timed call so a benchmark on CuPy measures
the kernels, not their launch. With ``--benchmark-disable`` (the default in pytest.ini) every
benchmark runs its function once, so the suite doubles as a smoke test.

Strict kernels (``FASTNN_STRICT_KERNELS=1``, set here before fastnn is imported) are on, as in the
test suite: a numba or cupy primitive that would fall back to the NumPy reference raises.
"""
import os

os.environ.setdefault("FASTNN_STRICT_KERNELS", "1")  # before fastnn is imported

import pytest  # noqa: E402

from fastnn import config as _config  # noqa: E402
from fastnn.testing import set_strict_kernels  # noqa: E402
from fastnn._pytest_fixtures import backend, dtype, ops, ref  # noqa: E402,F401  (the test suite's fixtures)

set_strict_kernels(_config._flag("FASTNN_STRICT_KERNELS"))  # in case fastnn was imported before this file


@pytest.fixture
def timed(ops):
    """``timed(fn)``: ``fn`` followed by a device synchronization on GPU backends."""

    def wrap(fn):
        if ops.name != "cupy":
            return fn

        def synced(*args, **kwargs):
            out = fn(*args, **kwargs)
            ops.synchronize()
            return out

        return synced

    return wrap

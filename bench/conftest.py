"""Fixtures of the pytest-benchmark suite (``pytest bench --benchmark-only``).

The same backends as the test suite's ``backend`` fixture (numpy always, numba when it imports,
cupy only with a CUDA device, otherwise skipped with the reason), both float dtypes, and a
``timed`` helper that synchronizes GPU work inside the timed call so a benchmark on CuPy measures
the kernels, not their launch. With ``--benchmark-disable`` (the default in pytest.ini) every
benchmark runs its function once, so the suite doubles as a smoke test.
"""
import pytest

from fastnn._pytest_fixtures import backend, dtype, ops, ref  # noqa: F401  (the test suite's fixtures)


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

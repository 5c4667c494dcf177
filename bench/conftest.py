"""Fixtures of the pytest-benchmark suite (``pytest bench --benchmark-only``).

The same backends as the test suite's ``backend`` fixture (numpy always, numba when it imports,
cupy only with a CUDA device, otherwise skipped with the reason), both float dtypes, and a
``timed`` helper that synchronizes GPU work inside the timed call so a benchmark on CuPy measures
the kernels, not their launch. With ``--benchmark-disable`` (the default in pytest.ini) every
benchmark runs its function once, so the suite doubles as a smoke test.
"""
import numpy
import pytest

from fastnn.backend import get_ops
from fastnn.testing import backend_params


@pytest.fixture(params=backend_params())
def backend(request):
    """Each backend this machine can run (cupy skipped with the reason where absent)."""
    return request.param


@pytest.fixture
def ops(backend):
    return get_ops(backend)


@pytest.fixture
def ref():
    """The NumPy reference ``Ops``."""
    return get_ops("numpy")


@pytest.fixture(params=[numpy.float32, numpy.float64], ids=["f32", "f64"])
def dtype(request):
    return numpy.dtype(request.param)


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

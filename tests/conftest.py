"""Shared fixtures: every backend the machine can run, the NumPy reference, both float dtypes."""
import numpy
import pytest

from fastnn.backend import get_ops
from fastnn.testing import backend_params


@pytest.fixture(params=backend_params())
def backend(request):
    """The name of each backend this machine can run (cupy skipped with the reason where absent)."""
    return request.param


@pytest.fixture(params=backend_params()[1:])
def fast_backend(request):
    """Each accelerated backend (numba, cupy), compared against the reference."""
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

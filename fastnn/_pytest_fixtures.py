"""pytest fixtures shared by ``tests/conftest.py`` and ``bench/conftest.py`` (imports pytest; tests only).

``backend``: every backend this machine can run (cupy skipped with the reason where absent);
``fast_backend``: the accelerated ones; ``ops``/``ref``: their ``Ops`` and the NumPy reference;
``dtype``: float32 and float64.
"""
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

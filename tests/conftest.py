"""Shared fixtures: every backend the machine can run, the NumPy reference, both float dtypes."""
from fastnn._pytest_fixtures import backend, dtype, fast_backend, ops, ref  # noqa: F401

"""Helpers for testing code on every backend (fastnn's own tests use them; so can yours).

``BACKENDS`` parametrises a test over every backend this machine can run: numpy always, numba
when it imports, cupy when CuPy and a CUDA device answer (otherwise skipped with the reason).
"""
import numpy

from fastnn.backend import select

# Python source that makes every later ``import cupy`` (cupyx, cupy_backends) fail: prepended to a
# subprocess's code, it shows which fastnn modules import without CuPy.
BLOCK_CUPY_IMPORTS = """import importlib.abc, sys

class BlockCupy(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "cupy" or fullname.startswith(("cupy.", "cupyx", "cupy_backends")):
            raise ImportError(f"{fullname} is blocked for this test")
        return None

sys.meta_path.insert(0, BlockCupy())
"""

RTOL = {numpy.dtype(numpy.float32): 1e-5, numpy.dtype(numpy.float64): 1e-12}
ATOL = {numpy.dtype(numpy.float32): 1e-6, numpy.dtype(numpy.float64): 1e-13}


def has_numba():
    return select.probe_numba().ok


def has_gpu():
    return select.probe_cupy(0).ok


def backend_params():
    """``pytest.param`` entries for every backend, with skip marks and reasons."""
    import pytest

    return [
        "numpy",
        pytest.param("numba", marks=pytest.mark.skipif(not has_numba(), reason="needs numba: " + select.probe_numba().reason)),
        pytest.param("cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(
            not has_gpu(), reason="needs CuPy and a CUDA GPU: " + select.probe_cupy(0).reason)]),
    ]


def host(a):
    """A host NumPy copy of any backend's array (or scalar)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, numpy.ndarray) else numpy.asarray(a)


def assert_close(actual, expected, dtype=None, rtol=None, atol=None, err_msg=""):
    """``assert_allclose`` on host copies, with tolerances from ``RTOL``/``ATOL`` by dtype."""
    actual, expected = host(actual), host(expected)
    dtype = numpy.dtype(dtype or expected.dtype)
    numpy.testing.assert_allclose(actual, expected, rtol=RTOL.get(dtype, 1e-5) if rtol is None else rtol,
                                  atol=ATOL.get(dtype, 1e-6) if atol is None else atol, err_msg=err_msg)


def steady_state_alloc_peak(model, x, t, warm=2, steps=5):
    """Peak bytes that ``tracemalloc`` sees during ``steps`` training steps of ``model`` on ``(x, t)``,
    after ``warm`` steps that make the workspaces of this batch shape (host backends only)."""
    import tracemalloc

    xd, td = model._prepare(x, t)
    for _ in range(warm):
        model._train_batch(xd, td)
    tracemalloc.start()
    try:
        for _ in range(steps):
            model._train_batch(xd, td)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_plot_png(path, min_side, min_colours=0):
    """``path`` (an existing file) is a PNG of at least ``min_side`` pixels a side with something drawn on it (not
    blank, and with ``min_colours`` distinct colours on a 7-pixel grid: plotted data, not just axes)."""
    from matplotlib import image as matplotlib_image

    image = matplotlib_image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] >= min_side and image.shape[1] >= min_side, \
        f"{path} decodes to shape {image.shape}"
    assert image.std() > 0.01, f"{path} is blank"
    if min_colours:
        colours = {tuple(px) for px in (image[::7, ::7, :3] * 255).astype(int).reshape(-1, 3).tolist()}
        assert len(colours) > min_colours, f"{path} has only {len(colours)} colours: no plotted data?"

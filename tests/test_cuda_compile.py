"""Every ``kernels/gpu/*.cu`` compiles with ``nvcc`` for sm_80 and sm_90, every template instantiated.

No GPU needed. For each source, a small generated ``.cu`` includes it and takes the address of
``fastnn_<name><float>`` and ``<double>`` for every name its launcher lists in ``KERNELS``
(what CuPy's ``name_expressions`` asks NVRTC for); ``ptxas -v`` then reports every entry it
compiled, which the test checks per architecture. The files compile in parallel, one nvcc run
each for both architectures. Skipped (with the reason) only where ``nvcc`` is absent.
"""
import concurrent.futures
import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fastnn.kernels.gpu import _loader

NVCC = shutil.which("nvcc")
ARCHS = ("sm_80", "sm_90")
SOURCES = sorted(_loader.HERE.glob("*.cu"))
MANGLED = {"float": "f", "double": "d"}
GLOBAL_RE = re.compile(r"__global__\s+void\s+(fastnn_\w+)\s*\(")

NEEDS_NVCC = pytest.mark.skipif(NVCC is None, reason="needs nvcc (the CUDA toolkit) on PATH")


def _kernels(src: Path):
    return importlib.import_module(f"fastnn.kernels.gpu.{src.stem}").KERNELS


def _compile(src: Path, workdir: Path):
    """Compile ``src`` with every instantiation for every arch; returns ``(returncode, log)``."""
    kernels = _kernels(src)
    refs = ", ".join(f"(void*)&{k}<{c}>" for k in kernels for c in _loader.CTYPES.values())
    wrapper = workdir / f"instantiate_{src.stem}.cu"
    wrapper.write_text(f'#include "{src}"\n\n// Take each specialisation\'s address so nvcc instantiates it.\n'
                       f"void* fastnn_instances[] = {{{refs}}};\n")
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    cmd = [NVCC, "-std=c++17", *_loader.COMPILE_OPTIONS, "-ftz=true", "-Werror", "all-warnings",
           "-Xptxas", "-v", *gencode, "-c", str(wrapper), "-o", str(workdir / f"{src.stem}.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return proc.returncode, " ".join(cmd) + "\n" + proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """``{source name: (returncode, log)}``, compiled in parallel once for the module."""
    workdir = tmp_path_factory.mktemp("nvcc")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {src.name: pool.submit(_compile, src, workdir) for src in SOURCES}
        return {name: f.result() for name, f in futures.items()}


def test_every_gpu_family_has_a_source():
    assert {p.stem for p in SOURCES} == {"activations", "losses", "dropout", "normalization", "optimizers", "conv"}


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_kernel_list_matches_source(src):
    """The launcher's ``KERNELS`` (the name_expressions) names exactly the kernels in the source."""
    assert sorted(GLOBAL_RE.findall(src.read_text())) == sorted(_kernels(src))


@NEEDS_NVCC
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_cu_compiles_with_nvcc(src, compiled):
    rc, log = compiled[src.name]
    assert rc == 0, f"nvcc failed on {src.name}:\n{log}"
    for arch in ARCHS:
        entries = set(re.findall(rf"Compiling entry function '(\w+)' for '{arch}'", log))
        for kernel in _kernels(src):
            for ctype, code in MANGLED.items():
                # Itanium mangling of fastnn_x<float>: _Z<len>fastnn_xIfE...
                prefix = f"_Z{len(kernel)}{kernel}I{code}E"
                assert any(e.startswith(prefix) for e in entries), (
                    f"{kernel}<{ctype}> was not compiled for {arch}; entries: {sorted(entries)}\n{log}")


def test_block_sizes_in_sources_match_the_launchers():
    """Shared-memory reductions assume the launcher's block shape; the two must agree."""
    expected = {"FASTNN_BLOCK": _loader.BLOCK, "FASTNN_COLS": _loader.COL_BLOCK[0],
                "FASTNN_ROWS": _loader.COL_BLOCK[1]}
    for src in SOURCES:
        for name, value in re.findall(r"#define\s+(FASTNN_BLOCK|FASTNN_COLS|FASTNN_ROWS)\s+(\d+)", src.read_text()):
            assert int(value) == expected[name], f"{src.name}: {name} is {value}, the launcher uses {expected[name]}"

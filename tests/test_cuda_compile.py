"""Every ``kernels/gpu/*.cu`` compiles with ``nvcc`` for sm_80 and sm_90, every template instantiated.

No GPU needed. For each source, a small generated ``.cu`` includes it and takes the address of
``fastnn_<name><float>`` and ``<double>`` for every name its launcher lists in ``KERNELS``
(what CuPy's ``name_expressions`` asks NVRTC for); ``ptxas -v`` then reports every entry it
compiled, which the test checks per architecture. Each source compiles twice: as the file (nvcc
resolves its ``#include "common.cuh"`` next to it) and as ``_loader.source()``'s expansion, the
text NVRTC gets at run time, written to a folder with no ``common.cuh`` so a missed include fails.
All runs go in parallel, one nvcc run per variant for both architectures. ``nvcc`` is this
environment's (the ``nvidia-cuda-nvcc`` wheel that ``sh scripts/test.sh`` installs), else the one on
PATH. Skipped (with the reason) where there is none, unless ``FASTNN_REQUIRE_CUDA_TOOLS=1`` (which
``scripts/test.sh`` sets where it installs nvcc): then they fail. Skipped where there is no host
compiler (g++). Further checks need no compiler: the loader's include expansion and its errors,
and that the helpers in ``common.cuh`` are defined in no ``.cu``.
"""
import concurrent.futures
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fastnn.kernels.gpu import _loader

ARCHS = ("sm_80", "sm_90")
SOURCES = sorted(_loader.HERE.glob("*.cu"))
HEADER = _loader.header_path()
VARIANTS = ("file", "expanded")  # the .cu as it is (nvcc includes the header), _loader.source()'s text
MANGLED = {"float": "f", "double": "d"}
GLOBAL_RE = re.compile(r"__global__\s+void\s+(fastnn_\w+)\s*\(")

REQUIRE_ENV = "FASTNN_REQUIRE_CUDA_TOOLS"


def _find_nvcc():
    """nvcc from this environment's NVIDIA wheel (``nvidia/cu13/bin/nvcc``, newest major first), else PATH."""
    spec = importlib.util.find_spec("nvidia")
    found = []
    for base in (spec.submodule_search_locations or []) if spec else []:
        for path in Path(base).glob("cu*/bin/nvcc"):
            major = re.fullmatch(r"cu(\d+)", path.parent.parent.name)
            if major and os.access(path, os.X_OK):
                found.append((int(major.group(1)), str(path)))
    return max(found)[1] if found else shutil.which("nvcc")


NVCC = _find_nvcc()
HOST_CXX = shutil.which("g++")  # nvcc's default host compiler on Linux


def _nvcc_or_skip():
    """Skip when nvcc is missing (fail instead under ``FASTNN_REQUIRE_CUDA_TOOLS=1``) or g++ is.

    The host compiler is the machine's, not something the test command installs, so its absence
    skips even under the variable: the README's test command must pass with only Python and pip.
    """
    if NVCC is None:
        reason = ("needs nvcc: none in this environment's nvidia-cuda-nvcc wheel nor on PATH "
                  "(pip install 'nvidia-cuda-nvcc>=13,<14', or run sh scripts/test.sh)")
        if os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
            pytest.fail(f"{REQUIRE_ENV}=1 (set by scripts/test.sh), but this test {reason}", pytrace=False)
        pytest.skip(reason)
    if HOST_CXX is None:
        pytest.skip(f"needs a host C++ compiler for nvcc ({NVCC}): no g++ on PATH")


def _kernels(src: Path):
    return importlib.import_module(f"fastnn.kernels.gpu.{src.stem}").KERNELS


def _compile(src: Path, workdir: Path, variant: str = "file"):
    """Compile ``src`` with every instantiation for every arch; returns ``(returncode, log)``.

    ``variant="expanded"`` compiles ``_loader.source(src.stem)`` instead, from ``workdir/expanded``
    (which holds no ``common.cuh``, so an include left unexpanded fails to compile).
    """
    kernels = _kernels(src)
    if variant == "expanded":
        folder = workdir / "expanded"
        folder.mkdir(exist_ok=True)
        src = folder / src.name
        src.write_text(_loader.source(src.stem), encoding="utf-8")
    refs = ", ".join(f"(void*)&{k}<{c}>" for k in kernels for c in _loader.CTYPES.values())
    wrapper = workdir / f"instantiate_{variant}_{src.stem}.cu"
    wrapper.write_text(f'#include "{src}"\n\n// Take each specialisation\'s address so nvcc instantiates it.\n'
                       f"void* fastnn_instances[] = {{{refs}}};\n")
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    cmd = [NVCC, "-std=c++17", *_loader.COMPILE_OPTIONS, "-ftz=true", "-Werror", "all-warnings",
           "-Xptxas", "-v", *gencode, "-c", str(wrapper), "-o", str(workdir / f"{variant}_{src.stem}.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return proc.returncode, " ".join(cmd) + "\n" + proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """``{(variant, source name): (returncode, log)}``, compiled in parallel once for the module."""
    _nvcc_or_skip()
    workdir = tmp_path_factory.mktemp("nvcc")
    assert not (workdir / HEADER.name).exists()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {(variant, src.name): pool.submit(_compile, src, workdir, variant)
                   for variant in VARIANTS for src in SOURCES}
        return {key: f.result() for key, f in futures.items()}


def test_every_gpu_family_has_a_source():
    assert {p.stem for p in SOURCES} == {"activations", "losses", "dropout", "normalization", "optimizers", "conv"}


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_kernel_list_matches_source(src):
    """The launcher's ``KERNELS`` (the name_expressions) names exactly the kernels in the source."""
    assert sorted(GLOBAL_RE.findall(src.read_text())) == sorted(_kernels(src))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_cu_compiles_with_nvcc(src, variant, request):
    _nvcc_or_skip()  # here, not only in the fixture, so a missing tool is a failure, not a setup error
    rc, log = request.getfixturevalue("compiled")[(variant, src.name)]
    assert rc == 0, f"nvcc failed on {src.name} ({variant}):\n{log}"
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
    seen = set()
    for src in [HEADER, *SOURCES]:
        for name, value in re.findall(r"#define\s+(FASTNN_BLOCK|FASTNN_COLS|FASTNN_ROWS)\s+(\d+)", src.read_text()):
            seen.add(name)
            assert int(value) == expected[name], f"{src.name}: {name} is {value}, the launcher uses {expected[name]}"
    assert seen == set(expected), f"block-size macros defined nowhere: {sorted(set(expected) - seen)}"


# ---------------------------------------------------------------------------- common.cuh
INCLUDE_LINE = '#include "common.cuh"'


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_loader_source_expands_the_header(src):
    """``_loader.source`` (what NVRTC compiles, hence CuPy's cache key) holds the header, no include."""
    text = _loader.source(src.stem)
    header = HEADER.read_text(encoding="utf-8")
    assert [ln for ln in text.splitlines() if ln.lstrip().startswith("#include")] == []
    assert header in text
    assert text.count("// begin common.cuh") == text.count("// end common.cuh") == 1
    # everything else is the .cu, unchanged and in order
    before, _, rest = text.partition("// begin common.cuh\n")
    _, _, after = rest.partition("// end common.cuh\n")
    after = after.split("\n", 1)[1]  # the #line directive back to the .cu
    original = src.read_text(encoding="utf-8")
    assert original == before + INCLUDE_LINE + "\n" + after


def test_every_source_includes_the_header_once():
    for src in SOURCES:
        lines = [ln.strip() for ln in src.read_text().splitlines()]
        assert lines.count(INCLUDE_LINE) == 1, f"{src.name} must include common.cuh exactly once"


def test_header_has_an_include_guard_and_no_kernels():
    text = HEADER.read_text()
    assert re.search(r"^#ifndef (\w+)\n#define \1\n", text, re.M), "common.cuh needs a classic #ifndef guard"
    assert text.rstrip().splitlines()[-1].startswith("#endif")
    assert not re.search(r"__global__\s+void", text), "kernels belong in the .cu files (their launchers' KERNELS)"


def _fake_family(tmp_path, monkeypatch, body: str, header: str = "#define FAKE_HELPER 1\n"):
    (tmp_path / "common.cuh").write_text(header)
    (tmp_path / "fake.cu").write_text(body)
    monkeypatch.setattr(_loader, "HERE", tmp_path)
    return "fake"


def test_loader_source_expands_in_place(tmp_path, monkeypatch):
    family = _fake_family(tmp_path, monkeypatch, "// top\n" + INCLUDE_LINE + "\nint x;\n")
    assert _loader.source(family) == ('// top\n// begin common.cuh\n#line 1 "common.cuh"\n#define FAKE_HELPER 1\n'
                                      '// end common.cuh\n#line 3 "fake.cu"\nint x;\n')


@pytest.mark.parametrize("line", ['#include "other.cuh"', '  #  include "common.cuh" // x', '#include"common.h"'])
def test_loader_source_rejects_other_quoted_includes(tmp_path, monkeypatch, line):
    family = _fake_family(tmp_path, monkeypatch, f"{INCLUDE_LINE}\n// two\n{line}\nint x;\n")
    with pytest.raises(ValueError, match=r"fake\.cu:3:"):
        _loader.source(family)


def test_loader_source_rejects_includes_in_the_header(tmp_path, monkeypatch):
    family = _fake_family(tmp_path, monkeypatch, INCLUDE_LINE + "\n", header='// h\n#include "more.cuh"\n')
    with pytest.raises(ValueError, match=r"common\.cuh:2:"):
        _loader.source(family)


def _header_definitions(text: str) -> set:
    """Names the header defines at file scope: structs, device functions and macros (not its guard)."""
    names = set(re.findall(r"^(?:template\s*<[^>]*>\s*)?struct\s+(\w+)", text, re.M))
    names |= set(re.findall(r"^__device__\s+(?:__forceinline__\s+)?[\w:<>*\s]*?\b(\w+)\s*\(", text, re.M))
    guard = re.search(r"^#ifndef (\w+)", text, re.M).group(1)
    names |= set(re.findall(r"^#define\s+(\w+)", text, re.M)) - {guard}
    return names


# Copies removed when the helpers moved into common.cuh (conv.cu had its own under these names).
RETIRED = {"ConvMath", "fastnn_conv_act", "fastnn_conv_act_grad", "FASTNN_CONV_RELU", "FASTNN_CONV_SIGMOID",
           "FASTNN_CONV_TANH", "FASTNN_CONV_LEAKY_RELU", "FASTNN_CONV_ELU", "FASTNN_CONV_SOFTPLUS"}


def test_shared_helpers_are_defined_only_in_the_header():
    """Every helper of common.cuh is defined in no .cu file, so the duplication cannot creep back."""
    names = _header_definitions(HEADER.read_text())
    assert {"FMath", "fastnn_act", "fastnn_act_grad", "fastnn_warp_max", "fastnn_warp_sum", "fastnn_block_sum",
            "fastnn_column_total", "FASTNN_RELU", "FASTNN_BLOCK", "FASTNN_COLS", "FASTNN_ROWS"} <= names, names
    offences = []
    for src in SOURCES:
        text = src.read_text()
        for name in sorted(names | RETIRED):
            n = re.escape(name)
            patterns = (rf"\bstruct\s+{n}\b",                 # struct FMath, struct FMath<float>
                        rf"__device__\b[^;{{()]*\b{n}\s*\(",    # __device__ __forceinline__ T fastnn_act(
                        rf"^\s*#\s*define\s+{n}\b")             # #define FASTNN_RELU
            for pat in patterns:
                for m in re.finditer(pat, text, re.M):
                    offences.append(f"{src.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}")
    assert not offences, "defined in common.cuh, define it only there:\n" + "\n".join(offences)

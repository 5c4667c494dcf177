"""Every CUDA module compiles through CuPy's own NVRTC path, for sm_80 and sm_90, without a GPU.

``tests/test_cuda_compile.py`` compiles the ``.cu`` files with ``nvcc``; at run time, though, CuPy
compiles them with NVRTC, with its own options. This file checks that path: for each family it
calls ``_loader.module()`` with a recording stand-in for ``cupy.RawModule`` (so the code, options
and ``name_expressions`` are exactly what the loader hands CuPy), then gives those arguments to
``cupy._core.core.compile_with_cache`` -- the function ``RawModule`` compiles through -- with an
explicit architecture. CuPy then adds its options (include paths, ``--std=c++17``, ``-ftz=true``,
``-arch=sm_XX``, ``--device-as-default-execution-space``) and runs NVRTC as it would on a GPU.
Only the two steps that need a device are replaced: the per-device memo in front of CuPy's
``-arch`` choice, and loading the cubin into the driver (a ``Module`` subclass keeps the cubin
and the lowered names instead). ``CUPY_CACHE_IN_MEMORY=1`` keeps CuPy's disk cache out of it, so
every run compiles cold.

The compiles run in a child process (all twelve in parallel threads), so the patches never touch
the CuPy -- or the CPU emulator's stand-in for it -- that other tests use. The checks: NVRTC
succeeds without warnings; every name expression has a lowered name, of its own kernel and type;
the cubin is a CUDA ELF for the architecture asked, with a ``.text`` section for every lowered
name; NVRTC got ``--fmad=false`` and ``-ftz=true``.

Needs CuPy and NVRTC (``sh scripts/test.sh`` installs ``cupy-cuda12x`` and
``nvidia-cuda-nvrtc-cu12``, and no GPU). Without them the tests skip with the reason, unless
``FASTNN_REQUIRE_CUDA_TOOLS=1`` (which ``scripts/test.sh`` sets where it installs them): then
they fail.
"""
import concurrent.futures
import importlib
import io
import json
import os
import struct
import subprocess
import sys
import time
import types

import pytest

from fastnn.kernels.gpu import _loader

ARCHS = ("80", "90")
FAMILIES = sorted(p.stem for p in _loader.HERE.glob("*.cu"))
MANGLED = {"float": "f", "double": "d"}
EM_CUDA = 190  # ELF e_machine of a cubin
REQUIRE_ENV = "FASTNN_REQUIRE_CUDA_TOOLS"


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _tool_missing(reason: str):
    """Skip with ``reason``; fail instead under ``FASTNN_REQUIRE_CUDA_TOOLS=1``."""
    if _required():
        pytest.fail(f"{REQUIRE_ENV}=1 (set by scripts/test.sh), but {reason}", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------- the child process
def _family_kernels(family):
    return importlib.import_module(f"fastnn.kernels.gpu.{family}").KERNELS


def _rawmodule_arguments(family):
    """The keyword arguments ``_loader.module(family, KERNELS)`` passes to ``cupy.RawModule``."""
    calls = []

    class RecordingRawModule:
        def __init__(self, code=None, **kwargs):
            calls.append(dict(kwargs, code=code))

    saved = _loader._cupy, _loader._device_id, _loader._modules
    _loader._cupy = lambda: types.SimpleNamespace(RawModule=RecordingRawModule)
    _loader._device_id = lambda: -1
    _loader._modules = {}
    try:
        _loader.module(family, _family_kernels(family))
    finally:
        _loader._cupy, _loader._device_id, _loader._modules = saved
    assert len(calls) == 1, f"_loader.module({family!r}) made {len(calls)} RawModules"
    return calls[0]


def _compile_all(threads: int) -> dict:
    """Compile every family for every arch through CuPy, as ``RawModule`` would; JSON-able facts."""
    os.environ["CUPY_CACHE_IN_MEMORY"] = "1"
    try:
        import cupy
        from cupy._core import core
        from cupy.cuda import compiler, function
    except Exception as exc:  # ImportError, or a CuPy whose own libraries fail to load
        return {"missing": f"CuPy does not import ({type(exc).__name__}: {exc}); "
                           f"pip install cupy-cuda12x (or run sh scripts/test.sh)"}
    try:
        nvrtc_version = compiler._get_nvrtc_version()
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return {"missing": f"CuPy {cupy.__version__} cannot load NVRTC ({type(exc).__name__}: {first_line}); "
                           f"pip install nvidia-cuda-nvrtc-cu12 (for cupy-cuda12x) or run sh scripts/test.sh"}

    class CubinModule(function.Module):
        """What CuPy gets instead of a driver module: keeps the cubin (no device to load it on)."""

        def load(self, cubin):
            self.cubin = bytes(cubin)

    # The two device-bound steps. __wrapped__ is the function under CuPy's per-device memo: with an
    # explicit arch it needs no device.
    try:
        compiler.function = types.SimpleNamespace(Module=CubinModule, LinkState=function.LinkState)
        compiler._get_arch_for_options_for_nvrtc = compiler._get_arch_for_options_for_nvrtc.__wrapped__
        program_compile = compiler._NVRTCProgram.compile
    except AttributeError as exc:
        return {"missing": f"CuPy {cupy.__version__}'s compiler module is not laid out as 14.2's ({exc}): "
                           f"update tests/test_nvrtc_compile.py"}
    nvrtc_options = []  # (source, options) of every NVRTC program, to see the options CuPy used

    def recording_compile(self, options=(), log_stream=None):
        nvrtc_options.append((self.src, tuple(options)))
        return program_compile(self, options, log_stream)

    compiler._NVRTCProgram.compile = recording_compile

    rawmodule_arguments = {family: _rawmodule_arguments(family) for family in FAMILIES}  # serially: it patches

    def one(family, arch):
        args = rawmodule_arguments[family]
        known = {"code", "options", "backend", "translate_cucomplex", "enable_cooperative_groups",
                 "name_expressions", "jitify"}
        if set(args) - known or args["code"] is None:
            raise AssertionError(f"_loader.module passes RawModule {sorted(args)}: "
                                 f"teach tests/test_nvrtc_compile.py the new arguments")
        log = io.StringIO()
        start = time.perf_counter()
        try:
            mod = core.compile_with_cache(
                args["code"], tuple(args.get("options", ())), arch=arch, prepend_cupy_headers=False,
                backend=args.get("backend", "nvrtc"), translate_cucomplex=args.get("translate_cucomplex", False),
                enable_cooperative_groups=args.get("enable_cooperative_groups", False),
                name_expressions=tuple(args["name_expressions"]), log_stream=log,
                jitify=bool(args.get("jitify", False)))
        except compiler.CompileException as exc:
            return {"ok": False, "log": str(exc), "options": list(exc.options)}
        seconds = time.perf_counter() - start
        cubin = mod.cubin
        mapping = {expr: mod.mapping.get(expr) for expr in args["name_expressions"]}
        options = [list(o) for src, o in nvrtc_options if src == args["code"] and f"-arch=sm_{arch}" in o]
        return {"ok": True, "log": log.getvalue(), "seconds": round(seconds, 2), "mapping": mapping,
                "elf": cubin[:4] == b"\x7fELF", "e_machine": struct.unpack_from("<H", cubin, 18)[0],
                "e_flags": struct.unpack_from("<I", cubin, 48)[0],
                "text_sections": sorted(n for n in mapping.values() if n and b".text." + n.encode() + b"\0" in cubin),
                "options": options[0] if options else None, "size": len(cubin)}

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {f"{family}-sm_{arch}": pool.submit(one, family, arch) for family in FAMILIES for arch in ARCHS}
        results = {key: f.result() for key, f in futures.items()}
    return {"cupy": cupy.__version__, "nvrtc": list(nvrtc_version), "results": results,
            "seconds": round(time.perf_counter() - start, 2)}


# ---------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def nvrtc():
    """The child's report: ``{"missing": reason}`` or ``{"cupy", "nvrtc", "results", "seconds"}``."""
    env = {k: v for k, v in os.environ.items() if k != "FASTNN_CUDA_EMULATOR"}
    proc = subprocess.run([sys.executable, __file__, str(max(2, os.cpu_count() or 2))],
                          capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        pytest.fail(f"the NVRTC compile process failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}",
                    pytrace=False)
    return json.loads(proc.stdout.splitlines()[-1])


def _result(nvrtc, family, arch):
    if "missing" in nvrtc:
        _tool_missing(nvrtc["missing"])
    return nvrtc["results"][f"{family}-sm_{arch}"]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("family", FAMILIES)
def test_module_compiles_with_nvrtc(family, arch, nvrtc):
    r = _result(nvrtc, family, arch)
    where = f"{family}.cu for sm_{arch} (CuPy {nvrtc['cupy']}, NVRTC {nvrtc['nvrtc']})"
    assert r["ok"], f"NVRTC failed on {where}; options {r['options']}:\n{r['log']}"
    assert "warning" not in r["log"].lower(), f"NVRTC warned on {where}:\n{r['log']}"
    for kernel in _family_kernels(family):
        for ctype, code in MANGLED.items():
            expr = f"{kernel}<{ctype}>"
            lowered = r["mapping"].get(expr)
            # Itanium mangling of fastnn_x<float>: _Z<len>fastnn_xIfE...
            assert lowered and lowered.startswith(f"_Z{len(kernel)}{kernel}I{code}E"), (
                f"{where}: name expression {expr!r} got the lowered name {lowered!r}")
    assert r["elf"] and r["e_machine"] == EM_CUDA, f"{where}: NVRTC's output is not a CUDA ELF cubin"
    assert r["e_flags"] & 0xFF == int(arch), f"{where}: the cubin is for sm_{r['e_flags'] & 0xFF}"
    missing = sorted(set(r["mapping"].values()) - set(r["text_sections"]))
    assert not missing, f"{where}: no code in the cubin for {missing}"


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
def test_nvrtc_gets_the_loader_and_cupy_options(arch, nvrtc):
    """The arithmetic the reference tests rely on: no fused multiply-add, float denormals flushed."""
    for family in FAMILIES:
        r = _result(nvrtc, family, arch)
        assert r["options"], f"{family}.cu: no NVRTC compile for sm_{arch} was seen"
        for option in (*_loader.COMPILE_OPTIONS, "-ftz=true", f"-arch=sm_{arch}"):
            assert option in r["options"], f"{family}.cu for sm_{arch}: NVRTC options lack {option}: {r['options']}"


if __name__ == "__main__":
    # The child process of the ``nvrtc`` fixture: one JSON line on stdout.
    print(json.dumps(_compile_all(int(sys.argv[1]))))

"""The GPU probes (``bench/probes/``) on a machine without a GPU: they compile, the runner scripts
parse, and each probe exits 0 with a ``"skipped": "no GPU: <reason>"`` record, so they are safe to
call anywhere. ``gpu_check.sh``, the one device check: no ``-x``, its dry run prints the plan and
writes the summary, and without a GPU it stops before the install with the reason and exit 3.
``FASTNN_EXPECT_GPU=1`` turns a GPU test's skip for want of a GPU into an error or a failure.
Their real answers come from a lent GPU (``bash bench/probes/gpu_check.sh``)."""
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastnn.backend import select

ROOT = Path(__file__).resolve().parents[1]
PROBES = ROOT / "bench" / "probes"
SCRIPTS = ("graph_capture", "kernel_cache", "optimizer_bandwidth", "column_reduce")


@pytest.mark.parametrize("name", SCRIPTS + ("fused_step",))
def test_probe_compiles(name, tmp_path):
    py_compile.compile(str(PROBES / f"{name}.py"), cfile=str(tmp_path / f"{name}.pyc"), doraise=True)


def test_run_all_parses():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    proc = subprocess.run([bash, "-n", str(PROBES / "run_all.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_probe_skips_cleanly_without_gpu(name, tmp_path):
    if select.probe_cupy(0).ok:
        pytest.skip("a GPU answers here: the probe would run for real (bench/probes/run_all.sh runs it)")
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    proc = subprocess.run([sys.executable, str(PROBES / f"{name}.py")], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=120)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["probe"] == name
    assert record["skipped"].startswith("no GPU: "), record
    assert len(record["skipped"]) > len("no GPU: ")
    written = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert written == record


def test_run_subprocess_reads_the_last_record_and_reports_crashes_and_timeouts(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(PROBES))
    from _probe import run_subprocess

    rec, rc = run_subprocess([sys.executable, "-c", "print('noise'); print('{\"ok\": 1}'); print('{\"ok\": 2}')"], 60)
    assert (rec, rc) == ({"ok": 2}, 0)
    rec, rc = run_subprocess([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"], 60)
    assert rc == 3 and rec["ok"] is False and "ended with 3 and printed no record" in rec["error"]
    assert rec["stderr_tail"] == "boom" and "boom" in capsys.readouterr().err
    rec, rc = run_subprocess([sys.executable, "-c", "import time; print('x', flush=True); time.sleep(30)"], 1)
    assert rc == "timeout" and rec["ok"] is False and rec["stdout_tail"].startswith("x")


# ---------------------------------------------------------------------------------------- gpu_check.sh
GPU_CHECK = PROBES / "gpu_check.sh"
GPU_FILES = ("tests/kernels/test_gpu_kernels.py", "tests/kernels/test_gpu_conv.py", "tests/test_cuda_graphs.py",
             "tests/test_gpu_dev_launchers.py")
GPU_CHECK_STEPS = ["env", "gpu", "install", "compile", "tests_gpu_files", "tests_gpu_rest", "graph_capture",
                   "memcheck", "racecheck", "bench", "optimizer_bandwidth"]


def _bash():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    return bash


def _gpu_check(tmp_path, timeout=120, **env):
    out = tmp_path / "out"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_") and k != "OUT"}
    full_env.update(PYTHON=sys.executable, TMPDIR=str(tmp_path), **env)
    proc = subprocess.run([_bash(), str(GPU_CHECK), str(out)], capture_output=True, text=True, env=full_env,
                          cwd=str(ROOT), timeout=timeout)
    return proc, out


def test_gpu_check_parses_and_never_stops_at_the_first_failure():
    proc = subprocess.run([_bash(), "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    code = []
    for line in GPU_CHECK.read_text().splitlines():
        if not line.lstrip().startswith("#"):
            code.append(re.sub(r"\s+#\s.*$", "", line))
    code = "\n".join(code)
    assert not re.search(r"(?<!\[ )(?<![\w-])(-x|--exitfirst)(?![\w-])", code), "gpu_check.sh must not use -x"
    assert "--maxfail=" in code and "export FASTNN_EXPECT_GPU=1" in code


def test_gpu_check_dry_run_prints_the_plan_and_writes_the_summary(tmp_path):
    proc, out = _gpu_check(tmp_path, GPU_CHECK_DRY_RUN="plan")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "gpu_check.md", "logs.txt"]
    rec = json.loads((out / "gpu_check.json").read_text())
    assert rec["exit"] == 0 and rec["verdict"].startswith("DRY RUN")
    steps = {s["step"]: s for s in rec["steps"]}
    assert [s["step"] for s in rec["steps"]] == GPU_CHECK_STEPS
    assert all(s["rc"] == "dry-run" for s in rec["steps"])
    files_cmd, rest_cmd = steps["tests_gpu_files"]["note"], steps["tests_gpu_rest"]["note"]
    for cmd in (files_cmd, rest_cmd):
        assert "-p fastnn.testing" in cmd and "--maxfail=" in cmd and "--junitxml" in cmd
        assert not re.search(r"(?<![\w-])(-x|--exitfirst)(?![\w-])", cmd)
    for f in GPU_FILES:
        assert (ROOT / f).is_file(), f
        assert f in files_cmd and f"--ignore={f}" in rest_cmd
    assert "-m gpu and not slow tests bench" in rest_cmd
    assert "fit_modes" in steps["graph_capture"]["note"]
    for tool in ("memcheck", "racecheck"):
        assert f"--tool {tool}" in steps[tool]["note"] and "set_allocator(None)" in steps[tool]["note"]
    bench = steps["bench"]["note"]
    assert "train --backends cupy --gpu-only --models A,B512,B64" in bench and str(out / "bench-gpu.json") in bench
    # the time limits of the steps that run on a GPU add up to more than the budget: the budget clips them
    assert "bench" in (out / "gpu_check.md").read_text()


def test_gpu_check_without_a_gpu_fails_fast_and_says_why(tmp_path):
    if select.probe_cupy(0).ok:
        pytest.skip("a GPU answers here: gpu_check.sh would run for real")
    proc, out = _gpu_check(tmp_path, timeout=60, GPU_CHECK_SKIP_INSTALL="1")
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NO GPU HERE" in proc.stdout
    rec = json.loads((out / "gpu_check.json").read_text())
    assert rec["exit"] == 3 and rec["verdict"].startswith("NO GPU: ") and len(rec["verdict"]) > len("NO GPU: ")
    steps = {s["step"]: s for s in rec["steps"]}
    assert steps["gpu"]["rc"] == 3 and steps["gpu"]["note"].startswith("no GPU: ")
    assert all(steps[s]["rc"] == "skipped" and "no GPU" in steps[s]["note"]
               for s in GPU_CHECK_STEPS[2:-1])
    assert "NO GPU" in (out / "gpu_check.md").read_text()
    assert len(list(out.iterdir())) <= 8
    assert not list(tmp_path.glob("fastnn-gpu-check.*")), "the work folder is removed"


SECOND_COMMANDS = {  # script: (what its code must hold, the one file it leaves without a GPU)
    "gpu_extra": (("column_reduce.py", "--batch-size 8192", "--models B512,wide"), "extra.log"),
    "gpu_recheck": (("tests/test_cuda_graphs.py", '-m "gpu and not slow"', "--parts fit_modes"), "recheck.log"),
}


@pytest.mark.parametrize("name", sorted(SECOND_COMMANDS))
def test_second_device_command_without_a_gpu_exits_3_and_runs_nothing(name, tmp_path):
    """The device commands after the check: bash syntax, the steps each promises, and on a machine
    without a GPU exit 3 with the reason, before installing anything."""
    script = PROBES / f"{name}.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    code = script.read_text()
    needles, log = SECOND_COMMANDS[name]
    assert all(needle in code for needle in needles), needles
    if select.probe_cupy(0).ok:
        pytest.skip(f"a GPU answers here: {name}.sh would run for real")
    proc = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{name}: no GPU here" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [log]


def test_gpu_check_sanitizer_selection_is_not_empty(tmp_path):
    proc, out = _gpu_check(tmp_path, GPU_CHECK_DRY_RUN="1", GPU_CHECK_COLLECT="sanitizer")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = {s["step"]: s for s in json.loads((out / "gpu_check.json").read_text())["steps"]}
    n = int(re.search(r"collected (\d+) tests", steps["collect_sanitizer"]["note"]).group(1))
    assert 10 <= n <= 60, steps["collect_sanitizer"]


# ---------------------------------------------------------------------------------------- FASTNN_EXPECT_GPU
def test_expect_gpu_turns_a_missing_gpu_into_an_error(monkeypatch):
    from fastnn import testing

    if select.probe_cupy(0).ok:
        pytest.skip("a GPU answers here")
    reason = select.probe_cupy(0).reason
    monkeypatch.setenv("FASTNN_EXPECT_GPU", "1")
    with pytest.raises(testing.GPUExpectedError, match="FASTNN_EXPECT_GPU=1") as info:
        testing.has_gpu()
    assert reason in str(info.value)
    with pytest.raises(testing.GPUExpectedError):
        testing.backend_params()
    for off in ("0", "", "false"):
        monkeypatch.setenv("FASTNN_EXPECT_GPU", off)
        assert testing.has_gpu() is False
        cupy_param = testing.backend_params()[2]
        assert any(m.name == "skip" and reason in m.kwargs["reason"] for m in cupy_param.marks)


def test_expect_gpu_plugin_fails_gpu_tests_that_skip_for_want_of_a_gpu(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.gpu\n"
        "def test_gpu_reason():\n    pytest.skip('needs CuPy and a CUDA GPU: none here')\n\n"
        "@pytest.mark.gpu\n"
        "def test_other_reason():\n    pytest.skip('AveragePooling2D has no padding')\n\n"
        "@pytest.mark.gpu\n@pytest.mark.skipif(True, reason='needs a CUDA GPU')\n"
        "def test_gpu_skipif():\n    pass\n\n"
        "def test_unmarked():\n    pytest.skip('needs a CUDA GPU')\n")
    cmd = [sys.executable, "-m", "pytest", "-p", "fastnn.testing", "-p", "no:cacheprovider", "-q", "-rfEs",
           "test_skips.py"]
    results = {}
    for value in ("1", "0"):
        env = dict(os.environ, FASTNN_EXPECT_GPU=value)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
        results[value] = proc
    on, off = results["1"], results["0"]
    assert on.returncode == 1, on.stdout[-3000:]
    assert "1 failed, 2 skipped, 1 error" in on.stdout, on.stdout[-3000:]
    assert "FASTNN_EXPECT_GPU=1: this GPU test would have been skipped: needs CuPy and a CUDA GPU" in on.stdout
    assert off.returncode == 0 and "4 skipped" in off.stdout, off.stdout[-3000:]


def test_graph_capture_parts_are_checked(tmp_path):
    run = [sys.executable, str(PROBES / "graph_capture.py")]
    proc = subprocess.run(run + ["--parts", "fit_modes,nope"], capture_output=True, text=True, cwd=str(ROOT),
                          timeout=120)
    assert proc.returncode == 2 and "unknown part(s) nope" in proc.stderr
    if select.probe_cupy(0).ok:
        return
    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run(run + ["--parts", "fit_modes"], capture_output=True, text=True, cwd=str(ROOT), env=env,
                          timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["skipped"].startswith("no GPU: ")


def test_column_reduce_one_tile_stand_in_takes_column_tiles_arguments(monkeypatch):
    """The probe swaps ``_loader.column_tiles`` for a one-tile stand-in; the launchers call it with the
    device too, so the stand-in must accept whatever ``column_tiles`` accepts (on the H200, 2026-12-04,
    it did not, and every shape of the probe failed)."""
    import inspect

    monkeypatch.syspath_prepend(str(PROBES))
    import column_reduce

    from fastnn.kernels.gpu import _loader

    real = inspect.signature(_loader.column_tiles).parameters
    stand_in = inspect.signature(column_reduce.one_tile).parameters
    assert list(stand_in) == list(real)
    assert column_reduce.one_tile(8192, 512, 0) == (1, 8192)
    assert column_reduce.one_tile(0, 3) == (1, 1)

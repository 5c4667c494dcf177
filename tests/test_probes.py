"""The GPU probes (``bench/probes/``) on a machine without a GPU: they compile, the runner script
parses, and each probe exits 0 with a ``"skipped": "no GPU: <reason>"`` record, so they are safe to
call anywhere. Their real answers come from a lent GPU (``bash bench/probes/run_all.sh``)."""
import json
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastnn.backend import select

ROOT = Path(__file__).resolve().parents[1]
PROBES = ROOT / "bench" / "probes"
SCRIPTS = ("graph_capture", "kernel_cache", "optimizer_bandwidth")


@pytest.mark.parametrize("name", SCRIPTS)
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

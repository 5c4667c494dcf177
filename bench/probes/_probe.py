"""What every probe shares: its JSON record, writing it under ``$OUT``, logging, and the clean no-GPU skip.

The probes are run as scripts (``python bench/probes/<name>.py``), so this folder is on ``sys.path``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _default(o):
    try:
        import numpy

        if isinstance(o, numpy.generic):
            return o.item()
        if isinstance(o, numpy.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def run_subprocess(cmd, timeout, env=None):
    """Run ``cmd`` (a probe part in its own process); ``(record, returncode)``. Its stderr is passed
    on; the record is the last JSON line it printed, or an error record with the output's tails
    when it printed none (a crash, a timeout: ``returncode == "timeout"``)."""
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = "timeout"
        out, err = (s if isinstance(s, str) else (s or b"").decode(errors="replace") for s in (exc.stdout, exc.stderr))
    sys.stderr.write(err)
    for line in reversed(out.strip().splitlines()):
        try:
            return json.loads(line), rc
        except ValueError:
            continue
    return {"ok": False, "error": f"the child process ended with {rc} and printed no record",
            "stdout_tail": out[-1500:], "stderr_tail": err[-3000:]}, rc


class Probe:
    """``record`` is the probe's answers; ``save()`` returns them as JSON and writes ``$OUT/<name>.json``."""

    def __init__(self, name):
        self.name = name
        self.record = {"probe": name, "schema": 1}

    def save(self):
        """The record as JSON text; also written to ``$OUT/<probe>.json`` when ``OUT`` is set."""
        text = json.dumps(self.record, indent=2, default=_default)
        out = os.environ.get("OUT")
        if out:
            try:
                path = Path(out) / f"{self.name}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(text + "\n", encoding="utf-8")
                os.replace(tmp, path)
            except OSError as exc:  # an unwritable OUT must not lose the answers on stdout
                print(f"[{self.name}] could not write under OUT={out}: {exc}", file=sys.stderr)
        return text

    def log(self, msg):
        print(f"[{self.name}] {msg}", file=sys.stderr, flush=True)

    def gpu_or_skip(self):
        """Exit 0 with ``"skipped": "no GPU: ..."`` unless CuPy computes on device 0."""
        try:
            from fastnn.backend.select import probe_cupy
        except Exception as exc:  # fastnn itself is broken: that is an error, not a skip
            self.record["error"] = f"fastnn does not import: {type(exc).__name__}: {exc}"
            print(self.save())
            sys.exit(2)
        pr = probe_cupy(0)
        if not pr.ok:
            self.record["skipped"] = f"no GPU: {pr.reason}"
            print(self.save())
            sys.exit(0)
        return pr

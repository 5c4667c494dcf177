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


# ------------------------------------------------------------------------------ gpu_check.sh's summary
# ``python3 bench/probes/_probe.py gpu-check-report --work DIR --out DIR [--meta KEY=VALUE ...]`` reads what
# gpu_check.sh left (DIR/steps.tsv, DIR/junit-*.xml, DIR/<step>.log, the probes' and fastnn-bench's JSON
# under OUT) and writes OUT/gpu_check.json and OUT/gpu_check.md; it prints the markdown and exits with the
# verdict: 0 green, 1 failures, 3 no GPU (10: this report itself failed). Standard library only.
TEST_STEPS = ("tests_gpu_files", "tests_gpu_rest")
SANITIZER_STEPS = ("memcheck", "racecheck")


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_steps(work):
    steps = []
    try:
        lines = (Path(work) / "steps.tsv").read_text(encoding="utf-8").splitlines()
    except OSError:
        return steps
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 5:
            parts += [""] * (5 - len(parts))
        name, rc, secs, limit, note = parts[:5]
        steps.append({"step": name, "rc": int(rc) if rc.lstrip("-").isdigit() else rc,
                      "seconds": int(secs) if secs.isdigit() else secs,
                      "limit_s": int(limit) if limit.lstrip("-").isdigit() else limit, "note": note})
    return steps


_COUNT_WORDS = r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b"


def _pytest_summary_line(text):
    """pytest's last summary line ("3 failed, 1200 passed, 5 skipped in 80.12s"), or ""."""
    import re

    for line in reversed(text.splitlines()):
        if re.search(_COUNT_WORDS, line) and re.search(r" in [0-9.]+s", line):
            return line.strip("= ").strip()
    return ""


def _pytest_counts_from_log(text):
    """Counts from pytest's last summary line: {"passed": 1200, "failed": 3, ...}."""
    import re

    counts = {}
    for n, what in re.findall(_COUNT_WORDS, _pytest_summary_line(text)):
        counts["errors" if what.startswith("error") else what] = int(n)
    return counts


def _junit(path, limit=60):
    """Counts, failures (id, kind, message), skip reasons and slowest tests of a JUnit XML file."""
    import xml.etree.ElementTree as ET
    from collections import Counter

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    cases = root.iter("testcase")
    res = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "seconds": 0.0}
    failures, skips, times = [], Counter(), []
    for case in cases:
        res["tests"] += 1
        tid = f"{case.get('classname', '')}::{case.get('name', '')}"
        t = float(case.get("time") or 0.0)
        res["seconds"] += t
        times.append((t, tid))
        kinds = {child.tag: child for child in case}
        if "failure" in kinds or "error" in kinds:
            kind = "failure" if "failure" in kinds else "error"
            res["failed" if kind == "failure" else "errors"] += 1
            el = kinds[kind]
            msg = (el.get("message") or "").strip()
            if not msg:
                lines = (el.text or "").strip().splitlines()
                msg = lines[-1] if lines else ""
            if len(failures) < limit:
                failures.append({"id": tid, "kind": kind, "message": " ".join(msg.split())[:500]})
        elif "skipped" in kinds:
            res["skipped"] += 1
            skips[(kinds["skipped"].get("message") or "").strip()[:300]] += 1
        else:
            res["passed"] += 1
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    try:
        res["seconds"] = round(float(suite.get("time")), 1)  # the session's wall time, collection included
    except (AttributeError, TypeError, ValueError):
        res["seconds"] = round(res["seconds"], 1)
    res["failures"] = failures
    res["skip_reasons"] = [{"reason": r, "count": n} for r, n in skips.most_common(20)]
    res["slowest"] = [{"id": tid, "seconds": round(t, 2)} for t, tid in sorted(times, reverse=True)[:10]]
    return res


def _sanitizer(log_text):
    lines = [ln.rstrip() for ln in log_text.splitlines()]
    summary = [ln.strip("= ").strip() for ln in lines if "SUMMARY:" in ln and ln.startswith("=")]
    findings = [ln for ln in lines if ln.startswith("=========") and any(
        w in ln for w in ("Invalid", "Race", "race", "hazard", "Hazard", "Uninitialized", "out of bounds",
                          "Barrier", "Error", "error")) and "SUMMARY" not in ln][:30]
    return {"summary": summary, "findings": findings, "pytest": _pytest_counts_from_log(log_text)}


def _bench_rows(rec):
    rows, skipped = [], {}
    train = ((rec or {}).get("sections") or {}).get("train") or {}
    for model, m in (train.get("models") or {}).items():
        steps = m.get("batches_per_epoch") or 1
        for impl, r in (m.get("impls") or {}).items():
            sps = r.get("samples_per_s") or {}
            ep = (r.get("epoch_s") or {}).get("median")
            rows.append({"model": model, "impl": impl, "batch": m.get("batch"),
                         "samples_per_s": sps.get("median"), "min": sps.get("min"), "max": sps.get("max"),
                         "us_per_step": ep * 1e6 / steps if ep else None, "vs_torch_cuda": r.get("vs_torch_cuda"),
                         "epoch_over_gemm_floor": r.get("epoch_over_gemm_floor"), "first_loss": r.get("first_loss")})
    skipped.update(train.get("skipped") or {})
    return rows, skipped


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def _md_table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
    return "\n".join(out)


def _test_results(work, by_name):
    """Per test step that ran: its JUnit counts (or the log's pytest counts) and pytest's summary line."""
    tests = {}
    for name in TEST_STEPS:
        if name not in by_name or not isinstance(by_name[name]["rc"], int):
            continue
        res = _junit(work / f"junit-{name}.xml")
        log_text = ""
        try:
            log_text = (work / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            pass
        if res is None:
            res = {"junit": "missing (the step did not finish, or did not run)", **_pytest_counts_from_log(log_text)}
        res["summary_line"] = _pytest_summary_line(log_text)
        tests[name] = res
    return tests


def _sanitizer_results(work, by_name):
    results = {}
    for name in SANITIZER_STEPS:
        if name in by_name and isinstance(by_name[name]["rc"], int):
            try:
                text = (work / f"{name}.log").read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            results[name] = _sanitizer(text)
    return results


def _add_probes(rec, out):
    """The probes' summaries (or skip/error) and their failed parts into ``rec``; returns their records."""
    probes = {n: _read_json(out / f"{n}.json") for n in ("graph_capture", "kernel_cache", "optimizer_bandwidth")}
    for n, p in probes.items():
        if p is not None:
            rec[n] = p.get("summary") or {k: p.get(k) for k in ("skipped", "error") if p.get(k)}
            rec[n + "_parts_not_ok"] = {k: (v.get("error") or "")[:500] for k, v in p.items()
                                        if isinstance(v, dict) and v.get("ok") is False}
    return probes


def _problems(rec, steps, dry):
    problems = []
    for s in steps:
        rc = s["rc"]
        if isinstance(rc, int) and rc != 0:
            problems.append(f"{s['step']}: rc={rc}" + (f" ({s['note']})" if s["note"] else ""))
        elif rc == "skipped" and (s["step"] in TEST_STEPS or s["step"].startswith("collect")):
            problems.append(f"{s['step']}: not run ({s['note']})")
        if dry and s["step"].startswith("collect") and "collected 0 tests" in s["note"]:
            problems.append(f"{s['step']}: the selection is empty")
    for name, res in rec["tests"].items():
        if res.get("failed") or res.get("errors"):
            problems.append(f"{name}: {res.get('failed', 0)} failed, {res.get('errors', 0)} errors")
    if (rec.get("graph_capture") or {}).get("q5_fit_modes_all_correct") is False:
        problems.append("graph_capture: fit(cuda_graph=True) did not train as eager in full and split mode")
    return problems


def _verdict(rec, steps, meta, probes):
    """``(verdict, exit code)``; also notes the probes' failed parts in ``rec["notes"]``."""
    if meta.get("no_gpu"):
        return f"NO GPU: {meta['no_gpu']}", 3
    dry = meta.get("dry_run", "0") not in ("", "0")
    problems = _problems(rec, steps, dry)
    notes = [f"{n} part {k} failed" for n in probes for k in rec.get(n + "_parts_not_ok") or {}]
    if notes:
        rec["notes"] = notes
    code = 1 if problems else 0
    verdict = ("DRY RUN: " if dry else "") + ("FAILED: " + "; ".join(dict.fromkeys(problems)) if problems
                                             else "green" if not dry else "plan printed, selections collected"
                                             if any(s["step"].startswith("collect") for s in steps) else "plan printed")
    return verdict, code


def _md_head(rec, meta, steps):
    return [f"# fastnn GPU check: {meta.get('gpu') or meta.get('no_gpu') or '(no GPU probed)'}", "",
            f"{meta.get('started', '?')}, commit `{meta.get('commit', '?')}` on `{meta.get('host', '?')}`; "
            f"{meta.get('total_s', '?')} s of a {meta.get('budget_s', '?')} s budget. Command: "
            f"`bash bench/probes/gpu_check.sh` (FASTNN_EXPECT_GPU=1).", "",
            f"**Verdict: {rec['verdict']}** (exit {rec['exit']})", "",
            "## Steps", "",
            _md_table(["step", "rc", "s", "limit s", "note"],
                      [[s["step"], s["rc"], s["seconds"], s["limit_s"], s["note"][:200]] for s in steps])]


def _md_tests(rec):
    if not rec["tests"]:
        return []
    md = ["", "## Tests", "", _md_table(
        ["selection", "passed", "failed", "errors", "skipped", "s"],
        [[n, r.get("passed", "-"), r.get("failed", "-"), r.get("errors", "-"), r.get("skipped", "-"),
          r.get("seconds", "-")] for n, r in rec["tests"].items()])]
    for n, r in rec["tests"].items():
        if r.get("failures"):
            md += ["", f"Failures in {n} (first {min(30, len(r['failures']))}):", ""]
            md += [f"- `{f['id']}` ({f['kind']}): {f['message'][:240]}" for f in r["failures"][:30]]
        if r.get("skip_reasons"):
            md += ["", f"Skip reasons in {n}:", ""]
            md += [f"- {s['count']} x {s['reason'][:200]}" for s in r["skip_reasons"][:10]]
    return md


def _md_sanitizer(rec, by_name):
    if not rec["sanitizer"]:
        return []
    return ["", "## compute-sanitizer", "", _md_table(
        ["tool", "rc", "tests", "summary", "first findings"],
        [[n, by_name[n]["rc"], ", ".join(f"{v} {k}" for k, v in r["pytest"].items()) or "-",
          "; ".join(r["summary"]) or "-", " / ".join(f.strip("= ")[:120] for f in r["findings"][:3]) or "-"]
         for n, r in rec["sanitizer"].items()])]


def _md_fit_modes(gc):
    rows = []
    for model, variants in gc["q5_fit_us_per_step"].items():
        eager = (variants.get("eager") or {}).get("us_per_step_median")
        for v, r in variants.items():
            us = r.get("us_per_step_median")
            rows.append([model, v, r.get("mode", "-") if v != "eager" else "-", _fmt(us),
                         _fmt(eager / us) + "x" if (eager and us) else "-",
                         _fmt(r.get("weights_rel_err_vs_eager")), r.get("correct", "-"),
                         (r.get("disabled") or "")[:80] or "-"])
    return ["", "## fit(cuda_graph=True): full and split mode (graph_capture.py, fit_modes)", "", _md_table(
        ["model", "variant", "mode", "µs/step", "vs eager", "weights rel. err", "correct", "gave up"], rows)]


def _md_graph_capture(rec):
    gc = rec.get("graph_capture") or {}
    md = _md_fit_modes(gc) if gc.get("q5_fit_us_per_step") else []
    if gc:
        md += ["", "graph_capture answers: " + ", ".join(
            f"{k}={json.dumps(v, default=str)[:160]}" for k, v in gc.items()
            if k.startswith(("q1", "q2", "q3", "parts_ok")))]
        q4 = gc.get("q4_us_per_step") or {}
        if q4:
            md += ["", _md_table(["shape (replay_cost)", "µs/step by variant (GPU time)"],
                                 [[k, ", ".join(f"{a}: {_fmt(b)}" for a, b in v.items())] for k, v in q4.items()])]
    if rec.get("graph_capture_parts_not_ok"):
        md += ["", "graph_capture parts that failed: " + "; ".join(
            f"{k}: {v[:200]}" for k, v in rec["graph_capture_parts_not_ok"].items())]
    return md


def _md_kernel_cache(rec):
    kc = rec.get("kernel_cache") or {}
    if not kc.get("families"):
        return []
    return ["", "## Kernel modules through NVRTC (kernel_cache.py)", "", _md_table(
        ["family", "cold s", "warm s", "ok"],
        [[f, _fmt(r.get("cold_s")), _fmt(r.get("warm_s")), r.get("ok")] for f, r in kc["families"].items()]),
        "", f"all: cold {_fmt(kc.get('cold_all_s'))} s, warm {_fmt(kc.get('warm_all_s'))} s; the warm run added no "
            f"cache files: {kc.get('warm_run_added_no_cache_files')}"]


def _md_bench(rec):
    if not rec["bench"]:
        return []
    md = ["", "## Training throughput (fastnn-bench train, float32, synthetic MNIST-shaped data)", "",
          f"{rec.get('bench_machine') or ''}", "", _md_table(
              ["model", "impl", "batch", "samples/s", "min-max", "µs/step", "vs torch-cuda", "epoch/GEMM floor",
               "first loss"],
              [[r["model"], r["impl"], r["batch"], _fmt(r["samples_per_s"]),
                f"{_fmt(r['min'])}-{_fmt(r['max'])}", _fmt(r["us_per_step"]),
                _fmt(r["vs_torch_cuda"]) + ("x" if r["vs_torch_cuda"] else ""),
                _fmt(r["epoch_over_gemm_floor"]) + ("x" if r["epoch_over_gemm_floor"] else ""),
                _fmt(r["first_loss"], 6)] for r in rec["bench"]])]
    return md + [f"- skipped {what}: {why}" for what, why in rec["bench_skipped"].items()]


def _md_optimizer_bandwidth(rec):
    ob = rec.get("optimizer_bandwidth") or {}
    if not ob:
        return []
    return ["", "## Optimizer bandwidth (optimizer_bandwidth.py)", "", "summary: " + json.dumps(ob, default=str)[:1500]]


def gpu_check_report(work, out, meta):
    """Read what gpu_check.sh left in ``work`` and ``out``; write OUT/gpu_check.json and OUT/gpu_check.md,
    print the markdown and return the exit code (0 green, 1 failures, 3 no GPU)."""
    work, out = Path(work), Path(out)
    steps = _read_steps(work)
    by_name = {s["step"]: s for s in steps}
    rec = {"schema": 1, "meta": meta, "steps": steps, "tests": _test_results(work, by_name),
           "sanitizer": _sanitizer_results(work, by_name)}
    probes = _add_probes(rec, out)
    bench = _read_json(out / "bench-gpu.json")
    rec["bench"], rec["bench_skipped"] = _bench_rows(bench)
    if bench:
        rec["bench_machine"] = bench.get("machine_line")
    rec["verdict"], rec["exit"] = _verdict(rec, steps, meta, probes)
    md = _md_head(rec, meta, steps) + _md_tests(rec) + _md_sanitizer(rec, by_name) + _md_graph_capture(rec)
    md += _md_kernel_cache(rec) + _md_bench(rec) + _md_optimizer_bandwidth(rec)
    text = "\n".join(md) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(rec, indent=1, default=_default) + "\n", encoding="utf-8")
    (out / "gpu_check.md").write_text(text, encoding="utf-8")
    print(text)
    return rec["exit"]


def main(argv=None):
    import argparse
    import traceback

    ap = argparse.ArgumentParser(description="gpu_check.sh's summary: OUT/gpu_check.json and OUT/gpu_check.md")
    ap.add_argument("command", choices=["gpu-check-report"])
    ap.add_argument("--work", required=True, help="gpu_check.sh's work folder (steps.tsv, logs, JUnit XML)")
    ap.add_argument("--out", required=True, help="the output folder (the probes' JSON; gets the summary)")
    ap.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    meta = dict(m.split("=", 1) if "=" in m else (m, "") for m in args.meta)
    try:
        return gpu_check_report(args.work, args.out, meta)
    except Exception:  # noqa: BLE001 - the shell falls back on its steps table
        traceback.print_exc()
        return 10


if __name__ == "__main__":
    sys.exit(main())

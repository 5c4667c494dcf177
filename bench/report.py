"""What ``fastnn-bench`` prints and writes: the text tables of each section and the JSON record."""
from __future__ import annotations

import json
import math
import os

import numpy


def table(headers, rows, title=None):
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [] if title is None else ["", title]
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0 or math.isnan(x):
            return f"{x:g}"
        mag = math.floor(math.log10(abs(x)))
        return f"{x:.{max(0, digits - 1 - mag)}f}"
    return str(x)


def print_hardware(res):
    g = res["gemm"]
    lines = [table(["GEMM (BLAS, numpy.matmul)", "n", "GFLOP/s"],
                   [[dt, g[dt]["n"], fmt(g[dt]["gflops"])] for dt in g], "== hardware")]
    lines.append(table(["float32 GEMM at the models' shapes", "layout", "us", "GFLOP/s"],
                       [[r["gemm"], r["layout"], fmt(r["us"]), fmt(r["gflops"])] for r in res["gemm_models"]]))
    c = res["copy"]
    lines.append(f"\nmemory copy: {fmt(c['gbs'])} GB/s ({c['bytes'] >> 20} MiB numpy.copyto, read+write bytes)")
    for b in res["blas"]:
        lines.append(f"BLAS: {b['library']} {b['version']}, kernel {b['kernel']}, {b['threads']} threads")
    if "gpu" in res:
        gpu = res["gpu"]
        lines.append(f"GPU {gpu['device']}: device copy {fmt(gpu['copy']['gbs'])} GB/s; GEMM " + ", ".join(
            f"{k} {fmt(v['tflops'])} TFLOP/s" if "tflops" in v else f"{k}: {v['error']}" for k, v in gpu["gemm"].items()))
    return "\n".join(lines)


def print_ops(res):
    rows = []
    for r in res["rows"]:
        extra = ""
        if "fraction_of_copy" in r:
            extra = f"{fmt(r['gbs'])} GB/s = {100 * r['fraction_of_copy']:.0f}% of copy"
            if "fraction_of_same_size_copy" in r:
                extra += f" ({100 * r['fraction_of_same_size_copy']:.0f}% of same-size copy)"
        rows.append([r["op"], r["backend"], fmt(r["us"]["median"]), f"{fmt(r['us']['min'])}-{fmt(r['us']['max'])}",
                     fmt(r["speedup_vs_numpy"]) + "x" if r["speedup_vs_numpy"] else "-", extra])
    head = (f"== ops (float32, B512 shapes; optimizer steps over {res['params']:,} parameters; copy "
            f"{fmt(res['copy_gbs'])} GB/s, same-size copy {fmt(res['copy_same_bytes_gbs'])} GB/s)")
    return table(["primitive", "backend", "median us", "min-max us", "vs numpy", "bandwidth"], rows, head)


def print_train(res):
    rows = []
    models = res["models"].values()
    gpu = any("vs_torch_cuda" in r for m in models for r in m["impls"].values())
    jax = any("vs_jax_epoch" in r for m in models for r in m["impls"].values())

    def ratio(r, key):
        return fmt(r.get(key)) + "x" if r.get(key) else "-"

    def ratios(r):
        return ([ratio(r, "vs_numpy"), ratio(r, "vs_torch")] + ([ratio(r, "vs_torch_cuda")] if gpu else [])
                + ([ratio(r, "vs_jax_epoch")] if jax else []))

    for name, m in res["models"].items():
        for impl, r in m["impls"].items():
            s = r["samples_per_s"]
            rows.append([name, impl, f"{s['median']:,.0f}", f"{s['min']:,.0f}-{s['max']:,.0f}"] + ratios(r)
                        + [fmt(r["epoch_over_gemm_floor"]) + "x" if r["epoch_over_gemm_floor"] else "-",
                           fmt(r["first_loss"], 6)])
        for impl, why in (m.get("unavailable") or {}).items():  # "not installed (...)": the short reason here
            rows.append([name, impl, why.split(" (")[0], ""] + [""] * len(ratios({})) + ["", ""])
        if m.get("gemm_floor_s"):
            f = m.get("gemm_floor")
            speed = [f"{f['samples_per_s']['median']:,.0f}",
                     f"{f['samples_per_s']['min']:,.0f}-{f['samples_per_s']['max']:,.0f}"] if f else ["", ""]
            rows.append([name, "gemm-floor"] + speed + (ratios(f) if f else [""] * len(ratios({})))
                        + [f"{1e3 * m['gemm_floor_s']:.1f} ms", f"{fmt(m['gemm_floor_gflops'])} GFLOP/s"])
        if m.get("gemm_floor_gpu_s"):
            floor = [name, "gemm-floor-gpu", "", ""] + [""] * len(ratios({}))
            rows.append(floor + [f"{1e3 * m['gemm_floor_gpu_s']:.2f} ms", ""])
    d = res["data"]
    head = (f"== train (synthetic MNIST-shaped float32, {d['samples']} samples, seed {d['seed']}; one epoch of "
            f"full batches per repeat, interleaved; samples/s median and min-max)")
    for what, why in (res.get("skipped") or {}).items():
        head += f"\n   skipped {what}: {why}"
    reasons = {}  # the full reason once, with the rows it applies to
    for m in models:
        for impl, why in (m.get("unavailable") or {}).items():
            if " (" in why and impl not in reasons.setdefault(why, []):
                reasons[why].append(impl)
    for why, impls in reasons.items():
        head += f"\n   {', '.join(impls)}: {why}"
    cols = (["model", "impl", "samples/s", "min-max", "vs numpy", "vs torch"] + (["vs torch-cuda"] if gpu else [])
            + (["vs jax-epoch"] if jax else []))
    return table(cols + ["epoch/GEMM floor", "first loss"], rows, head)


def print_coldstart(res):
    if "skipped" in res:
        return f"\n== coldstart: skipped ({res['skipped']})"
    rows = [[k, fmt(res[k]["wall_s"]), fmt(res[k]["import_s"]), fmt(res[k]["build_s"]), fmt(res[k]["first_step_s"])]
            for k in ("cold", "warm")]
    return table(["run", "wall s", "import s", "build s", "first step s"], rows,
                 f"== coldstart ({res['what']}; `python -c 'import numpy'` alone: {fmt(res['python_import_numpy_s'])} s)")



def json_default(o):
    if isinstance(o, (numpy.floating, numpy.integer)):
        return o.item()
    if isinstance(o, numpy.ndarray):
        return o.tolist()
    return str(o)


def write_json(path, record):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=json_default)
        f.write("\n")
    print(f"wrote {path}")

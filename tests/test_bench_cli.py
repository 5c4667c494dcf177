"""``python -m fastnn.bench``: a smoke run at tiny sizes writes a complete JSON record.

Never a timing assertion: only that every section, ratio and the machine line are there.
"""
import json
import math
import subprocess
import sys

import pytest

from fastnn.bench import cli


def _run(tmp_path, *args, timeout=300):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "fastnn.bench", *args, "--smoke", "--max-other-load", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_train_and_ops_smoke_run_writes_the_record(tmp_path):
    stdout, rec = _run(tmp_path, "train", "ops", "--backends", "numpy")
    assert stdout.startswith("machine: ")
    assert rec["machine_line"].startswith("machine: ") and "numpy " in rec["machine_line"]
    assert rec["info"].startswith("fastnn ")  # the `fastnn info` text
    assert rec["versions"]["numpy"] and "blas" in rec
    assert set(rec["sections"]) == {"train", "ops"}
    assert rec["backends"] == ["numpy"]

    ops = rec["sections"]["ops"]
    names = {r["op"].split()[0] for r in ops["rows"]}
    assert {"bias_act", "act_backward_bias_grad", "softmax_xent", "dropout_mask", "sgd_step",
            "momentum_step", "rmsprop_step", "adam_step"} <= names
    for r in ops["rows"]:
        assert _positive(r["us"]["median"]) and r["us"]["min"] <= r["us"]["median"] <= r["us"]["max"]
        assert r["speedup_vs_numpy"] == pytest.approx(1.0)
    adam = next(r for r in ops["rows"] if r["op"].startswith("adam_step"))
    assert adam["bytes"] == 7 * 4 * ops["params"] and _positive(adam["fraction_of_copy"])

    train = rec["sections"]["train"]
    assert set(train["models"]) == {"A", "B512", "B64"}
    for name, m in train["models"].items():
        assert m["layers"][0] == 784 and m["layers"][-1] == 10
        assert _positive(m["gemm_floor_s"])
        impls = m["impls"]
        assert "numpy" in impls
        for impl, r in impls.items():
            assert _positive(r["samples_per_s"]["median"])
            assert _positive(r["epoch_over_gemm_floor"])
            assert r["vs_numpy"] == pytest.approx(r["samples_per_s"]["median"] / impls["numpy"]["samples_per_s"]["median"])
            assert math.isfinite(r["first_loss"])
        if cli.torch_module() is not None:
            assert "torch" in impls and _positive(impls["numpy"]["vs_torch"])
        # the optional peers (torch, torch.compile, JAX): each a timed row or a row saying why not
        for peer in ("torch", "torch-compile", "jax-step", "jax-epoch"):
            assert (peer in impls) != (peer in m["unavailable"]), peer
        assert _positive(m["gemm_floor"]["samples_per_s"]["median"]) and _positive(m["gemm_floor"]["vs_numpy"])
    assert "gemm-floor" in stdout
    # same initial weights and data, no dropout: every implementation starts from the same loss
    assert train["models"]["A"]["first_loss_spread"] < 1e-4


def test_hardware_smoke_run(tmp_path):
    stdout, rec = _run(tmp_path, "hardware", "--backends", "numpy", "--models", "A")
    hw = rec["sections"]["hardware"]
    assert _positive(hw["gemm"]["float32"]["gflops"]) and _positive(hw["gemm"]["float64"]["gflops"])
    assert _positive(hw["copy"]["gbs"])
    assert {g["layout"] for g in hw["gemm_models"]} == {"nn", "tn", "nt"}
    assert "GFLOP/s" in stdout


def test_unknown_section_and_backend_are_errors():
    with pytest.raises(SystemExit):
        cli.parse_args(["warp"])
    parser, args = cli.parse_args(["train", "--backends", "numpy"])
    assert args.sections == ["train"] and args.models == ["A", "B512", "B64"]
    with pytest.raises(SystemExit):
        cli.choose_backends(parser, "numpy,fortran")


def test_gemm_floor_excludes_the_first_layers_input_gradient():
    gemms = cli.model_gemms(cli.MODELS["B512"], 128)
    assert [g[4] for g in gemms].count("nt") == 2  # dx for layers 2 and 3 only
    assert sum(1 for g in gemms if g[4] == "nn") == 3
    assert cli.param_count(cli.MODELS["B512"]) == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10


def test_train_table_has_the_gpu_columns_when_gpu_rows_exist():
    """The GPU record (cupy, cupy-graph, torch-cuda, torch-cuda-graph) prints a vs-torch-cuda column,
    the GPU GEMM floor and the peers that could not run; a CPU record prints neither."""
    from fastnn.bench import cli

    def impl(sps, **ratios):
        return {"samples_per_s": {"median": sps, "min": sps * 0.9, "max": sps * 1.1}, "first_loss": 2.3,
                "epoch_over_gemm_floor": 1.5, **ratios}
    gpu = {"data": {"samples": 1000, "seed": 0}, "skipped": {"B64/torch-cuda-graph": "RuntimeError: no"},
           "models": {"B64": {"gemm_floor_s": 0.01, "gemm_floor_gflops": 100.0, "gemm_floor_gpu_s": 0.0004,
                              "impls": {"cupy-graph": impl(2e6, vs_torch_cuda=4.0),
                                        "torch-cuda": impl(5e5, vs_torch_cuda=1.0)}}}}
    text = cli.print_train(gpu)
    lines = text.splitlines()
    header = next(line for line in lines if "vs torch-cuda" in line)
    row = next(line for line in lines if "cupy-graph" in line)
    assert row.split() == ["B64", "cupy-graph", "2,000,000", "1,800,000-2,200,000", "-", "-", "4.00x", "1.50x",
                           "2.30000"], row
    assert "gemm-floor-gpu" in text and "0.40 ms" in text
    assert "skipped B64/torch-cuda-graph: RuntimeError: no" in text
    assert header.index("vs torch-cuda") > header.index("vs torch ")
    cpu = {"data": {"samples": 1000, "seed": 0},
           "models": {"A": {"gemm_floor_s": 0.01, "gemm_floor_gflops": 100.0, "gemm_floor_gpu_s": None,
                            "impls": {"numba": impl(3e5, vs_numpy=1.2)}}}}
    assert "vs torch-cuda" not in cli.print_train(cpu)
    no_torch = {"data": {"samples": 1000, "seed": 0},
                "models": {"B64": {"gemm_floor_s": None, "gemm_floor_gflops": None, "gemm_floor_gpu_s": 0.0004,
                                   "impls": {"cupy-graph": impl(2e6)}}}}
    text = cli.print_train(no_torch)
    header = next(line for line in text.splitlines() if line.startswith("model"))
    floor = next(line for line in text.splitlines() if "gemm-floor-gpu" in line)
    assert header.index("epoch/GEMM floor") <= floor.index("0.40 ms") < header.index("first loss")

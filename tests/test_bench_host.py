"""``fastnn-bench host``: fastnn's own host time per eager cupy step, every CuPy launch stubbed.

Runs on any machine (the stub CuPy lives in a child process). The launch counts per step are fixed
numbers: a change that adds a kernel launch, a GEMM, a CuPy op or a copy to the eager step of A or
B512 fails here, and should update the numbers deliberately.
"""
import json
import types

from fastnn.bench import cli
from fastnn.bench.host import run_host

# per eager step: fastnn kernels, GEMMs (cupy.matmul), takes (x[idx], y[idx]), other CuPy ops,
# host-to-device and device-to-host copies
EXPECTED = {
    "A": {"kernels": 7, "gemms": 5, "takes": 2, "ops": 2, "h2d": 1, "d2h": 0},
    "B512": {"kernels": 15, "gemms": 8, "takes": 2, "ops": 2, "h2d": 1, "d2h": 0},
}


def test_host_section_counts_and_times():
    res = run_host(types.SimpleNamespace(mode="smoke", repeats=None))
    rows = {r["model"]: r for r in res["rows"]}
    assert set(rows) == set(EXPECTED)
    for name, want in EXPECTED.items():
        row = rows[name]
        assert row["us_per_step_fit"] > 0 and isinstance(row["us_per_step"], float)
        assert {k: row["per_step"][k] for k in want} == want, name
        assert row["launches_per_step"] == want["kernels"] + want["gemms"] + want["takes"] + want["ops"]
    assert "graph" in res


def test_host_section_through_the_cli(tmp_path, capsys):
    path = tmp_path / "host.json"
    assert cli.main(["host", "--smoke", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "host:" in out and "B512" in out
    record = json.loads(path.read_text())
    rows = record["sections"]["host"]["rows"]
    assert [r["model"] for r in rows] == ["A", "B512"]
    assert all(r["per_step"]["kernels"] > 0 for r in rows)

"""``fastnn-bench host``: fastnn's own host time per eager cupy step and per graph-replay step
(``fit(cuda_graph=True)``), every CuPy launch stubbed.

Runs on any machine (the stub CuPy lives in a child process). The launch counts per step are fixed
numbers: a change that adds a kernel launch, a GEMM, a CuPy op, a copy or an event operation to the
eager or the replayed step of A or B512 fails here, and should update the numbers deliberately.
"""
import json
import types

import pytest

from fastnn.bench import cli
from fastnn.bench.host import run_host

# per eager step: fastnn kernels, GEMMs (cupy.matmul), takes (x[idx], y[idx]), other CuPy ops,
# host-to-device and device-to-host copies
EXPECTED = {
    "A": {"kernels": 7, "gemms": 5, "takes": 2, "ops": 2, "h2d": 1, "d2h": 0},
    "B512": {"kernels": 15, "gemms": 8, "takes": 2, "ops": 2, "h2d": 1, "d2h": 0},
}

# per replayed step, in "full" mode (GEMMs inside the step's graph): two graph launches (the batch
# gather, captured once per fit, and the step); around them one staging copy of the per-step values
# and the batch's row indices (h2d) with one event record (events) and the host wait on its pinned
# buffer (syncs), and the loop's in-place sum of the logs (ops); nothing else launches or copies.
# The graph holds every kernel and GEMM of the eager step, plus the loss's ufuncs (nodes).
EXPECTED_REPLAY = {
    "A": {"graph_launches": 2, "kernels": 0, "gemms": 0, "takes": 0, "ops": 1, "h2d": 1, "d2h": 0, "events": 1,
          "syncs": 1, "captured": 0},
    "B512": {"graph_launches": 2, "kernels": 0, "gemms": 0, "takes": 0, "ops": 1, "h2d": 1, "d2h": 0, "events": 1,
             "syncs": 1, "captured": 0},
}
NODES = {"A": [13], "B512": [24]}


@pytest.fixture(scope="module")
def smoke():
    return run_host(types.SimpleNamespace(mode="smoke", repeats=None))


def test_host_section_counts_and_times(smoke):
    rows = {r["model"]: r for r in smoke["rows"]}
    assert set(rows) == set(EXPECTED)
    for name, want in EXPECTED.items():
        row = rows[name]
        assert row["us_per_step_fit"] > 0 and isinstance(row["us_per_step"], float)
        assert {k: row["per_step"][k] for k in want} == want, name
        assert row["launches_per_step"] == want["kernels"] + want["gemms"] + want["takes"] + want["ops"]
        assert row["per_step"]["graph_launches"] == 0 and row["per_step"]["events"] == 0


def test_host_section_graph_replay_rows(smoke):
    rows = {r["model"]: r for r in smoke["graph_rows"]}
    assert set(rows) == set(EXPECTED_REPLAY)
    for name, want in EXPECTED_REPLAY.items():
        row = rows[name]
        assert row["mode"] == "full" and row["graphs"] == 1 and row["eager_pieces"] == 0, name
        assert row["checks_left"] == 0, name  # both replay-against-eager checks ran and passed
        assert row["nodes"] == NODES[name], name
        eager = next(r for r in smoke["rows"] if r["model"] == name)["per_step"]
        assert row["nodes"][0] >= eager["kernels"] + eager["gemms"], name  # all of them captured
        assert {k: row["per_step"][k] for k in want} == want, name
        assert row["launches_per_step"] == want["takes"] + want["ops"]
        assert isinstance(row["us_per_step"], float) and row["us_per_step_fit"] > 0


def test_host_section_through_the_cli(tmp_path, capsys):
    path = tmp_path / "host.json"
    assert cli.main(["host", "--smoke", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "host:" in out and "B512" in out and "graph-replay" in out and " full " in out
    record = json.loads(path.read_text())
    rows = record["sections"]["host"]["rows"]
    assert [r["model"] for r in rows] == ["A", "B512"]
    assert all(r["per_step"]["kernels"] > 0 for r in rows)
    graph_rows = record["sections"]["host"]["graph_rows"]
    assert [(r["model"], r["mode"], r["per_step"]["graph_launches"]) for r in graph_rows] == [
        ("A", "full", 2), ("B512", "full", 2)]   # the step and the batch gather

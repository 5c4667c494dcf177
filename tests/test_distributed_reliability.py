"""Reliability of data-parallel ``fit`` under ``mpiexec -n 2`` (issue 16, items 2 and 3).

- Ranks that call ``fit`` differently (sample count, data, batch size, epochs, initial epoch, shuffle,
  validation set) used to crash (SIGSEGV, ``malloc()`` aborts, ``MPI_ERR_TRUNCATE``) or hang, and a
  different learning rate let the replicas drift apart silently;
  now ``fit`` raises on every rank with a message naming the setting and each rank's value, and the job
  goes on: a matching ``fit`` afterwards trains and the replicas agree.
- A rank whose exception a ``try`` catches used to leave the other ranks waiting forever. Before training
  begins every rank learns of it through the first gather and raises; during training the job is
  aborted within seconds (and when every rank fails alike, ``fit`` raises everywhere and the job goes on).

Each case runs ``tests/helpers/dist_reliability.py`` on two ranks under an outer timeout that kills the
process group, so a hang fails in a minute instead of blocking CI. They skip, with the reason, only when
mpi4py or mpiexec is missing.
"""
from pathlib import Path

import pytest

from fastnn import testing

HELPER = Path(__file__).parent / "helpers" / "dist_reliability.py"
TIMEOUT = 60


pytestmark = pytest.mark.skipif(testing.why_no_mpi() is not None, reason=str(testing.why_no_mpi()))


def run2(*args, timeout=TIMEOUT):
    """The helper on two ranks: ``(rc, output, seconds)``; a hang fails the test after ``timeout``."""
    return testing.run_script(HELPER, *args, ranks=2, timeout=timeout)


def _rank_lines(out, rank, prefix):
    """The text rank ``rank`` printed from the line starting with ``prefix`` to its next ``rank N:`` line."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"rank {rank}: {prefix}"):
            block = [line]
            for nxt in lines[i + 1:]:
                if nxt.startswith("rank "):
                    break
                block.append(nxt)
            return "\n".join(block)
    return None


# setting -> (the error type, what the message must name: the setting and each rank's value)
DIFFER = {
    "samples": ("ValueError", ["training samples: 41 on rank 0; 38 on rank 1"]),
    "data": ("ValueError", ["training data (digest of sampled rows)"]),
    "batch_size": ("ValueError", ["batch_size: 10 on rank 0; 12 on rank 1"]),
    "epochs": ("ValueError", ["epochs: 2 on rank 0; 3 on rank 1"]),
    "initial_epoch": ("ValueError", ["initial_epoch: 0 on rank 0; 1 on rank 1"]),
    "shuffle": ("ValueError", ["shuffle: True on rank 0; False on rank 1"]),
    "validation": ("ValueError", ["validation samples: 13 on rank 0; None on rank 1"]),
    "lr": ("RuntimeError", ["ranks [1] define a different model or optimizer than rank 0 (optimizer)",
                            "rank 0: Adam({'lr': 0.01", "rank 1: Adam({'lr': 0.02"]),
}


@pytest.mark.parametrize("setting", list(DIFFER))
def test_ranks_that_call_fit_differently_fail_on_every_rank_naming_the_setting(setting):
    rc, out, seconds = run2("differ", setting)
    kind, needles = DIFFER[setting]
    for rank in (0, 1):
        caught = _rank_lines(out, rank, "caught")
        assert caught is not None, f"rank {rank} did not get an exception from fit:\n{out[-3000:]}"
        assert caught.startswith(f"rank {rank}: caught {kind}: "), caught
        for needle in needles:
            assert needle in caught, f"{needle!r} not in rank {rank}'s message:\n{caught}"
    assert rc == 0, f"the job did not go on after the refused fit (rc {rc}):\n{out[-3000:]}"
    assert "rank 0: recovered" in out and "rank 1: recovered" in out, out[-3000:]


def test_a_rank_failing_before_training_makes_every_rank_raise():
    rc, out, seconds = run2("early")
    mine = _rank_lines(out, 1, "caught")
    theirs = _rank_lines(out, 0, "caught")
    assert mine is not None and "ValueError" in mine and "labels" in mine, out[-3000:]
    assert theirs is not None and theirs.startswith("rank 0: caught RankFailedError: "), out[-3000:]
    assert "rank 1 of 2 failed before training began" in theirs and "labels" in theirs, theirs
    assert rc == 0 and "rank 0: recovered" in out and "rank 1: recovered" in out, out[-3000:]


def test_an_exception_caught_on_one_rank_mid_training_ends_the_job_within_seconds():
    rc, out, seconds = run2("caught", 3)
    assert rc != 0, f"the job ended with 0 although rank 1 failed mid-fit:\n{out[-3000:]}"
    assert "rank 1: fails on purpose at step 3" in out, out[-3000:]
    # the failing rank's traceback and the reason are printed before the abort
    assert "RuntimeError: rank 1 fails on purpose at step 3" in out and "aborting every rank" in out, out[-3000:]
    assert "returns normally after catching" not in out, out[-3000:]
    assert seconds < 25, f"the job took {seconds:.1f} s to end"


def test_an_exception_on_every_rank_at_the_same_step_raises_everywhere_and_the_job_goes_on():
    rc, out, seconds = run2("everywhere", 3)
    assert rc == 0, out[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: caught rank {rank} fails on purpose at step 3" in out, out[-3000:]
        assert f"rank {rank}: recovered" in out, out[-3000:]
    assert "aborting" not in out, out[-3000:]


@pytest.mark.parametrize("where, epochs, steps", [("epoch", 2, None), ("batch", 1, 5)])
def test_stop_training_on_one_rank_stops_every_rank_at_the_same_point(where, epochs, steps):
    """A callback that stops training on one rank only used to leave the other ranks waiting in the next
    step's all-reduce forever; now every rank stops after the same batch (or epoch), replicas equal."""
    rc, out, _ = run2("stop", where)
    assert rc == 0, out
    lines = sorted(line for line in out.splitlines() if "stopped after" in line)
    assert len(lines) == 2, out
    for rank, line in enumerate(lines):
        assert line.startswith(f"rank {rank}: stopped after {epochs} epochs"), out
        if steps is not None:
            assert line.endswith(f"and {steps} steps"), out


def test_a_final_backup_that_fails_on_rank_0_only_raises_on_every_rank_and_the_job_goes_on():
    """Rank 0 could not write the completed backup (a full disk): every rank raises it from fit (rank 0's
    own error, the others naming rank 0 and the folder), and a matching fit afterwards still works."""
    rc, out, _ = run2("savefail")
    assert rc == 0, out
    assert "rank 0: caught OSError: [Errno 28] No space left on device" in out, out
    assert "rank 1: caught OSError: rank 0 could not write the backup in" in out, out
    assert out.count("recovered") == 2, out

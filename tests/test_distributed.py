"""Data-parallel training across processes (``fastnn.distributed``).

The multi-rank tests launch ``tests/helpers/dist_train.py`` under ``mpiexec -n 2`` and ``-n 3`` (with
``--oversubscribe`` and Open MPI's run-as-root variables, under an outer timeout) and compare with the
same script run as one process: N steps on N ranks equal single-process training on the global batch
(uneven shards, a last batch smaller than the rank count, dropout), replicas end bitwise equal, the
History equals the single-process one. Models here have no ``BatchNormalization``: its batch
statistics are per shard under data parallelism, so it does not match single-process training.
They skip, with the reason, only when mpi4py or mpiexec is missing (the ``mpi`` extra).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import fastnn
from fastnn import distributed, testing
from fastnn.errors import BackendUnavailableError
from fastnn.testing import has_gpu

HELPER = Path(__file__).parent / "helpers" / "dist_train.py"
OPTIMIZERS = "sgd,momentum,nesterov,adagrad,rmsprop,adam,adamw"
TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


_why_no_mpi, _env = testing.why_no_mpi, testing.mpi_env
needs_mpi = pytest.mark.skipif(_why_no_mpi() is not None, reason=str(_why_no_mpi()))


def run(n, *args, timeout=60, env=None, launch=()):
    """Run the helper on ``n`` ranks (``n=None``: plain ``python``, one process); ``(rc, output, seconds)``."""
    return testing.run_script(HELPER, *args, ranks=n, timeout=timeout, env=env, launch=launch)


def check(n, *args, **kw):
    rc, out, _ = run(n, *args, **kw)
    assert rc == 0, f"{n} ranks, {args}: exit {rc}\n{out[-4000:]}"
    return out


def load(path):
    with numpy.load(path) as z:
        d = {k: z[k] for k in z.files}
    d["history"] = json.loads(str(d["history"]))
    d["meta"] = json.loads(str(d["meta"]))
    return d


def arrays(d):
    return {k: v for k, v in d.items() if k[0] in "ws" and k[1:].isdigit()}


def assert_replicas_equal(results):
    first = arrays(results[0])
    for r, other in enumerate(results[1:], 1):
        for k, v in arrays(other).items():
            assert numpy.array_equal(v, first[k]), f"rank {r} differs from rank 0 in {k}"
        assert other["history"] == results[0]["history"], f"rank {r}'s History differs from rank 0's"


def assert_history_close(got, want, rtol):
    assert got["epoch"] == want["epoch"]
    assert set(got["history"]) == set(want["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for k, v in want["history"].items():
        numpy.testing.assert_allclose(got["history"][k], v, rtol=rtol, atol=rtol, err_msg=k)


# ------------------------------------------------------------------ without a launcher
def test_import_fastnn_does_not_import_mpi4py():
    code = ("import sys, fastnn, fastnn.models, fastnn.distributed as d; d.init(); "
            "assert 'mpi4py' not in sys.modules and d.get().kind == 'single'")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), timeout=60)


def test_choose_kind():
    assert distributed.choose_kind("auto", False, "cupy") == "single"
    assert distributed.choose_kind("auto", True, "numpy") == "mpi"
    assert distributed.choose_kind("auto", True, "numba") == "mpi"
    assert distributed.choose_kind("auto", True, "cupy") == "nccl"
    assert distributed.choose_kind("mpi", True, "cupy") == "mpi"
    with pytest.raises(ValueError, match="valid kinds: auto, single, mpi, nccl"):
        distributed.choose_kind("gloo", True, "numpy")


def test_launcher_detection_and_local_rank(monkeypatch):
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    assert not distributed.launched_under_mpi()
    monkeypatch.setenv("SLURM_NTASKS", "4")  # an sbatch allocation around one plain python process
    assert not distributed.launched_under_mpi()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert not distributed.launched_under_mpi()
    monkeypatch.setenv("PMI_SIZE", "4")
    assert distributed.launched_under_mpi()
    env = {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    assert distributed.local_rank_from_env(env) == (1, 4)
    assert distributed.local_rank_from_env({"MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "3"}) == (2, 3)
    assert distributed.local_rank_from_env({}) == (None, None)
    assert distributed.threads_per_rank(3, cpu_count=2) == 1
    assert distributed.threads_per_rank(2, cpu_count=16) == 8
    assert distributed.threads_per_rank(2, cpu_count=16, affinity=1) == 1  # the launcher bound us to one core
    assert distributed.nccl_device(3, 4, 4) == 3
    assert distributed.nccl_device(0, 1, 8) == 0
    with pytest.raises(BackendUnavailableError, match="one GPU per rank"):
        distributed.nccl_device(2, 3, 2)


def test_missing_mpi4py_under_a_launcher_names_the_extra(monkeypatch):
    """Without mpi4py every rank would silently train alone on all the data: fail and say what to install."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "_current", None)
    with fastnn.using("numpy"):
        with pytest.raises(BackendUnavailableError,
                           match=r"OMPI_COMM_WORLD_SIZE=2.*mpi4py is not installed.*fastnn-engine\[mpi\]"):
            distributed.get()
        from fastnn.layers import Dense
        from fastnn.models import Sequential

        model = Sequential([Dense(2, input_shape=(3,))], backend="numpy", seed=0)
        model.compile(optimizer="sgd", loss="mse")
        with pytest.raises(BackendUnavailableError, match=r"fastnn-engine\[mpi\]"):
            model.fit(numpy.zeros((4, 3)), numpy.zeros((4, 2)), verbose=0)
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    with pytest.raises(BackendUnavailableError, match=r"an MPI communicator was requested.*fastnn-engine\[mpi\]"):
        distributed.init("mpi")


def test_nccl_without_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(BackendUnavailableError, match=r"needs CuPy.*fastnn-engine\[cuda13\]"):
        distributed.NCCLComm(host=distributed.SingleProcess())


@pytest.mark.filterwarnings("ignore::UserWarning")  # CuPy: "nccl library could not be loaded"
@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU")
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="CuPy is not installed")
def test_nccl_without_a_gpu_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="NCCL|GPU"):
        distributed.NCCLComm(host=distributed.SingleProcess())


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU and CuPy")
def test_nccl_one_rank_collectives_on_device_arrays():
    """The NCCL path with a one-rank communicator (no MPI needed): in place, float32 and float64; the
    code path is the one N ranks take."""
    import cupy

    try:
        comm = distributed.NCCLComm(host=distributed.SingleProcess())
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    assert (comm.kind, comm.rank, comm.size, comm.device) == ("nccl", 0, 1, "cuda:0")
    for dtype in (cupy.float32, cupy.float64):
        with cupy.cuda.Device(comm.device_id):
            a = cupy.arange(1000, dtype=dtype)
            ptr = a.data.ptr
            assert comm.allreduce_sum_(a) is a and a.data.ptr == ptr
            comm.bcast_(a)
            comm.barrier()
            cupy.testing.assert_array_equal(a, cupy.arange(1000, dtype=dtype))
    host = numpy.ones(3)
    assert comm.allreduce_sum_(host) is host
    assert list(comm.allreduce_host([1.0, 2.0])) == [1.0, 2.0]
    assert comm.bcast_obj("x") == "x" and comm.allgather_obj(1) == [1]


# ------------------------------------------------------------------ under mpiexec
@needs_mpi
def test_single_rank_mpi_communicator_without_launcher():
    code = ("import numpy, fastnn.distributed as d; c = d.init('mpi'); a = numpy.ones(3, numpy.float32); "
            "assert (c.kind, c.rank, c.size) == ('mpi', 0, 1) and c.allreduce_sum_(a) is a and a.sum() == 3")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), timeout=60)


@needs_mpi
def test_collectives_on_three_ranks(tmp_path):
    check(3, "collectives", tmp_path)
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    assert [i["rank"] for i in info] == [0, 1, 2] and all(i["size"] == 3 for i in info)
    assert sorted(i["local"][0] for i in info) == [0, 1, 2]
    if "FASTNN_NUM_THREADS" not in os.environ:  # each rank takes its share of the cores
        want = distributed.threads_per_rank(3, os.cpu_count(), len(os.sched_getaffinity(0)))
        assert all(i["threads"] in (want, 1) for i in info), info


_cache = {}


def _matrix(tmp_path_factory, n, dtypes="float32,float64", opts=OPTIMIZERS, backend="numpy"):
    """Results of the helper's ``matrix`` mode on ``n`` ranks (None: one process), cached per session."""
    key = (n, dtypes, opts, backend)
    if key not in _cache:
        out = tmp_path_factory.mktemp(f"matrix-{n}-{backend}")
        check(n, "matrix", out, dtypes, opts, env=_env(FASTNN_TEST_BACKEND=backend))
        _cache[key] = {case: [load(out / f"rank{r}-{case}.npz") for r in range(n or 1)]
                       for case in (f"{d}-{o}" for d in dtypes.split(",") for o in opts.split(","))}
    return _cache[key]


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_training_equals_single_process_on_the_global_batch(tmp_path_factory, n):
    """Every optimizer, float32 and float64, dropout, global batch 10 over 41 samples (uneven shards; the
    last batch of 1 sample leaves ranks empty): the same weights and slots as one process, and every
    rank's replica bitwise equal."""
    ref, got = _matrix(tmp_path_factory, None), _matrix(tmp_path_factory, n)
    for case, results in got.items():
        assert [r["meta"]["size"] for r in results] == [n] * n and results[0]["meta"]["kind"] == "mpi"
        assert results[0]["meta"]["iterations"] == ref[case][0]["meta"]["iterations"] == 10
        assert_replicas_equal(results)
        want = arrays(ref[case][0])
        for k, v in arrays(results[0]).items():
            numpy.testing.assert_allclose(v, want[k], **TOL[case.split("-")[0]], err_msg=f"{n} ranks, {case}, {k}")


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_validation_metrics_equal_single_process(tmp_path_factory, n):
    ref, got = _matrix(tmp_path_factory, None), _matrix(tmp_path_factory, n)
    for case, results in got.items():
        for k in ("val_loss", "val_accuracy"):
            numpy.testing.assert_allclose(results[0]["history"]["history"][k], ref[case][0]["history"]["history"][k],
                                          rtol=1e-5, atol=1e-6, err_msg=f"{n} ranks, {case}, {k}")


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_training_metrics_equal_single_process(tmp_path_factory, n):
    ref, got = _matrix(tmp_path_factory, None), _matrix(tmp_path_factory, n)
    for case, results in got.items():
        assert_history_close(results[0]["history"], ref[case][0]["history"], 1e-5)


@needs_mpi
@pytest.mark.parametrize("launch", [(), ("-m", "mpi4py")], ids=["python", "python-m-mpi4py"])
def test_a_rank_that_raises_ends_the_job_within_seconds(launch):
    rc, out, seconds = run(3, "raise", 3, timeout=60, launch=launch)
    assert rc != 0, out[-3000:]
    assert "rank 2 fails on purpose at step 3" in out and "aborting every rank" in out, out[-3000:]
    assert seconds < 20, f"the job took {seconds:.1f} s to end"


@needs_mpi
def test_a_rank_with_another_model_fails_clearly():
    rc, out, seconds = run(2, "mismatch", timeout=60)
    assert rc != 0 and seconds < 20, out[-3000:]
    assert "ranks [1] define a different model or optimizer than rank 0" in out, out[-3000:]
    assert "(6, 24)" in out and "(6, 16)" in out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """An uninterrupted 4-epoch run (one process); a 2-rank run with backups every 3 steps that crashes
    after step 7; its backups resumed to 4 epochs on 3 ranks and, from a copy, on one process."""
    if _why_no_mpi():
        pytest.skip(_why_no_mpi())
    base = tmp_path_factory.mktemp("resume")
    for sub in ("ref", "crash", "three", "one"):
        (base / sub).mkdir()
    check(None, "ckpt", base / "ref", base / "ref-backups", 4, 0, 3)
    rc, out, _ = run(2, "ckpt", base / "crash", base / "backups", 4, 7, 3, 1)
    assert rc != 0 and "simulated crash after step 7" in out, out[-3000:]
    written = sorted(f for f in os.listdir(base / "backups") if f != ".fastnn-lock")  # the folder lock aside
    shutil.copytree(base / "backups", base / "backups-copy")
    check(3, "ckpt", base / "three", base / "backups", 4, 0, 3)
    check(None, "ckpt", base / "one", base / "backups-copy", 4, 0, 3)
    return {"base": base, "written": written, "ref": load(base / "ref" / "rank0-ckpt.npz"),
            "three": [load(base / "three" / f"rank{r}-ckpt.npz") for r in range(3)],
            "one": load(base / "one" / "rank0-ckpt.npz")}


def test_checkpoints_are_written_by_rank_0_only(resumed):
    # steps 3 and 6 of the crashed 2-rank run; rank 1 was given its own folder and wrote nothing there
    assert resumed["written"] == ["ckpt-e00000-b0000003.fastnn", "ckpt-e00001-b0000001.fastnn"]
    assert not (resumed["base"] / "backups-r1").exists()


def test_resume_on_another_rank_count_equals_an_uninterrupted_run(resumed):
    want = arrays(resumed["ref"])
    assert_replicas_equal(resumed["three"])
    for got in (resumed["three"][0], resumed["one"]):
        assert got["meta"]["iterations"] == 20
        for k, v in arrays(got).items():
            numpy.testing.assert_allclose(v, want[k], rtol=1e-12, atol=1e-13, err_msg=f"{got['meta']}, {k}")


def test_resumed_history_equals_an_uninterrupted_run(resumed):
    for got in (resumed["three"][0], resumed["one"]):
        assert_history_close(got["history"], resumed["ref"]["history"], 1e-12)


@needs_mpi
def test_rerun_after_a_completed_run_starts_anew_on_two_ranks(tmp_path):
    for _ in range(3):
        check(2, "ckpt", tmp_path, tmp_path / "backups", 1, 0, "epoch")


@needs_mpi
def test_reading_batch_logs_on_rank_0_only():
    check(2, "logread", timeout=30)


# ------------------------------------------------------------------ the full matrices
@pytest.mark.slow
@needs_mpi
@pytest.mark.parametrize("n", [2, 3, 4])
def test_numba_training_equals_single_process(tmp_path_factory, n):
    ref = _matrix(tmp_path_factory, None, backend="numba")
    got = _matrix(tmp_path_factory, n, backend="numba")
    for case, results in got.items():
        assert_replicas_equal(results)
        want = arrays(ref[case][0])
        for k, v in arrays(results[0]).items():
            numpy.testing.assert_allclose(v, want[k], **TOL[case.split("-")[0]], err_msg=f"{n} ranks, {case}, {k}")


@pytest.mark.slow
@needs_mpi
def test_four_ranks_numpy(tmp_path_factory):
    ref, got = _matrix(tmp_path_factory, None), _matrix(tmp_path_factory, 4)
    for case, results in got.items():
        assert_replicas_equal(results)
        want = arrays(ref[case][0])
        for k, v in arrays(results[0]).items():
            numpy.testing.assert_allclose(v, want[k], **TOL[case.split("-")[0]], err_msg=f"4 ranks, {case}, {k}")


@pytest.mark.slow
@needs_mpi
def test_distributed_benchmark_runs():
    from fastnn.bench import distributed as bench

    res = bench.run(quick=True)
    assert res["allreduce"]["params"] == 669706 and res["allreduce"]["median_us"] > 0
    assert set(res["train"]) == {1, 2} and res["efficiency"] > 0
    assert "all-reduce" in bench.format_table(res)

"""Backend selection: names, precedence, scoping, the auto probe and its messages."""
import json
import os
import subprocess
import sys
import threading

import numpy
import pytest

import fastnn
from fastnn.backend import get_ops, select
from fastnn.testing import has_gpu, has_numba

PY = sys.executable


def run_py(code, **env):
    """Run code in a fresh interpreter (fresh probes) and return (returncode, stdout, stderr)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FASTNN_")}
    full_env.update(env)
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=full_env, cwd="/", timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_import_probes_nothing():
    code = "import sys, fastnn; print(json.dumps(['cupy' in sys.modules, 'numba' in sys.modules]))"
    rc, out, err = run_py("import json; " + code)
    assert rc == 0, err
    assert json.loads(out) == [False, False]


def test_use_sets_default_and_using_scopes():
    before = fastnn.current()
    try:
        fastnn.use("numpy")
        assert fastnn.current().name == "numpy"
        with fastnn.using("cpu") as ops:
            assert fastnn.current() is ops
            assert ops.name == ("numba" if has_numba() else "numpy")
            with fastnn.using("numpy"):
                assert fastnn.current().name == "numpy"
            assert fastnn.current() is ops
        assert fastnn.current().name == "numpy"
    finally:
        fastnn.use(before)


def test_using_restores_after_an_error():
    before = fastnn.current()
    with pytest.raises(KeyError):
        with fastnn.using("numpy"):
            raise KeyError("boom")
    assert fastnn.current() is before


def test_using_does_not_leak_into_other_threads():
    seen = {}
    started = threading.Event()
    release = threading.Event()

    def worker():
        started.wait()
        seen["name"] = fastnn.current().name
        release.set()

    base = fastnn.current().name
    thread = threading.Thread(target=worker)
    thread.start()
    with fastnn.using("numpy"):
        started.set()
        release.wait(10)
    thread.join()
    assert seen["name"] == base


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'.*numpy.*numba.*cupy"):
        fastnn.use("tpu")
    with pytest.raises(TypeError, match="backend name must be a string"):
        fastnn.use(3)


@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU, so cupy is available")
def test_cupy_by_name_without_gpu_is_a_clear_error():
    with pytest.raises(fastnn.BackendUnavailableError) as info:
        fastnn.use("cupy")
    message = str(info.value)
    assert 'backend "cuda:0" was requested' in message
    if select.cupy_distribution() is None:
        assert "fastnn-engine[cuda12]" in message and "not installed" in message
    else:
        assert "no CUDA device answers" in message
    with pytest.raises(fastnn.BackendUnavailableError):
        with fastnn.using("cuda:0"):
            pass


def test_env_var_sets_process_default():
    rc, out, err = run_py("import fastnn; print(fastnn.current().name)", FASTNN_BACKEND="numpy")
    assert rc == 0, err
    assert out.strip() == "numpy"


def test_env_var_unavailable_backend_fails_at_first_use_not_import():
    code = ("import fastnn\nprint('imported')\n"
            "try:\n    fastnn.current()\nexcept fastnn.BackendUnavailableError as e:\n    print('ERR', e)\n")
    env_name = "numba" if not has_numba() else ("cupy" if not has_gpu() else None)
    if env_name is None:
        pytest.skip("every backend is available on this machine")
    rc, out, err = run_py(code, FASTNN_BACKEND=env_name)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "imported" and lines[1].startswith("ERR backend")


def test_auto_logs_choice_once_and_warns_when_cupy_has_no_device():
    code = (
        "import logging, warnings, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='LOG %(name)s %(message)s')\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import fastnn\n"
        "    a = fastnn.current(); b = fastnn.current(); fastnn.get_ops('auto')\n"
        "print('CHOSEN', a.name)\n"
        "for x in w: print('WARN', x.message)\n"
    )
    rc, out, err = run_py(code)
    assert rc == 0, err
    logs = [line for line in out.splitlines() if line.startswith("LOG fastnn")]
    assert len(logs) == 1, out
    chosen = out.split("CHOSEN ")[1].split()[0]
    warns = [line for line in out.splitlines() if line.startswith("WARN")]
    if has_gpu():
        assert chosen == "cupy" and not warns
    elif select.cupy_distribution() is not None:
        # the real "CuPy installed but no GPU" path: fall back with a warning naming the reason
        assert chosen == ("numba" if has_numba() else "numpy")
        assert len(warns) == 1 and "falling back to CPU" in warns[0] and "no CUDA device answers" in warns[0]
        assert "skipped cupy" in logs[0]
    else:
        assert chosen == ("numba" if has_numba() else "numpy")
        assert not warns
        assert "CuPy is not installed" in logs[0]


def test_num_threads_env_caps_blas_and_numba():
    code = ("import fastnn, threadpoolctl, json\nfastnn.get_ops('numpy')\n"
            "blas = [p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']\n"
            "import numba\nprint(json.dumps([blas, numba.get_num_threads()]))\n")
    rc, out, err = run_py(code, FASTNN_NUM_THREADS="1")
    assert rc == 0, err
    blas, numba_threads = json.loads(out)
    assert blas and all(n == 1 for n in blas)
    assert numba_threads == 1


def test_bad_num_threads_env_is_a_clear_error():
    rc, out, err = run_py("import fastnn", FASTNN_NUM_THREADS="two")
    assert rc != 0 and "FASTNN_NUM_THREADS must be a positive integer" in err


def test_array_helpers_round_trip(backend):
    with fastnn.using(backend) as ops:
        x = numpy.arange(6, dtype=numpy.float32).reshape(2, 3) + 1
        d = fastnn.asarray(x)
        assert ops.owns(d)
        assert fastnn.get_array_module(d) is ops.xp
        back = fastnn.asnumpy(d)
        assert isinstance(back, numpy.ndarray) and back.dtype == numpy.float32
        numpy.testing.assert_array_equal(back, x)


def test_get_ops_returns_one_instance_per_backend(backend):
    assert get_ops(backend) is get_ops(backend)
    assert get_ops(backend).name == backend


def test_available_reports_every_backend_with_a_reason():
    table = fastnn.available()
    assert set(table) == {"numpy", "numba", "cuda:0"}
    for ok, reason in table.values():
        assert isinstance(ok, bool) and reason
    assert table["numpy"][0] is True


def test_arrays_on_two_gpus_in_one_call_are_a_clear_error():
    """``follow`` (how a book layer picks its backend) refuses arrays from two GPUs, naming each one.
    Device arrays are recognised by their module, so stand-ins exercise the check without a GPU."""
    from fastnn.backend import follow

    class FakeDevice:
        def __init__(self, i):
            self.id = i

    def fake(i):
        cls = type("ndarray", (), {"__module__": "cupy._core.core"})
        obj = cls()
        obj.device = FakeDevice(i)
        return obj

    with pytest.raises(ValueError, match=r"argument 0 on cuda:0, argument 2 on cuda:1"):
        follow(fake(0), numpy.zeros(2), fake(1))

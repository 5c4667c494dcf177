"""``fastnn.kernels.cpu.flush_if_stale``: a kernel file that compiles another file's njit functions into
its cached binaries must not keep running their old code after that file changes (Numba keys a
file's cache on that file alone)."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

DEP = "from numba import njit\n\n\n@njit(cache=True)\ndef f(x):\n    return x + {}\n"
MAIN = textwrap.dedent("""
    from numba import njit

    import dep
    from dep import f


    @njit(cache=True)
    def g(x):
        return f(x) * 2
    {guard}
""")


def _run(folder, env):
    proc = subprocess.run([sys.executable, "-c", "import main; print(main.g(1))"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


@pytest.mark.parametrize("guarded", [True, False])
def test_an_edited_dependency_is_recompiled_only_with_the_guard(tmp_path, guarded):
    guard = "\nfrom fastnn.kernels.cpu import flush_if_stale\nflush_if_stale(__name__, dep)\n" if guarded else ""
    (tmp_path / "main.py").write_text(MAIN.format(guard=guard))
    (tmp_path / "dep.py").write_text(DEP.format(1))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path))
    assert _run(tmp_path, env) == 4
    assert _run(tmp_path, env) == 4  # from the cache
    (tmp_path / "dep.py").write_text(DEP.format(10))
    # with the guard: the new code; without it Numba's cache serves g's stale copy of f (why the guard exists)
    assert _run(tmp_path, env) == (22 if guarded else 4)

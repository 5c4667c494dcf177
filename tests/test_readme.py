"""The README's Python examples run as written (in order, in one namespace), and its quick start is
exactly the two commands CI and users run."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    text = readme()
    block = re.search(r"## Quick start\s+```sh\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert block == ["sh scripts/demo.sh", "sh scripts/test.sh"]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert block[1] in f.read()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", readme(), re.S)
    assert len(blocks) >= 4
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    assert namespace["acc"] > 0.95 and namespace["cnn_acc"] > 0.95
    assert os.path.exists(tmp_path / "curves.png") and os.path.exists(tmp_path / "digits.fastnn")

"""The README's promises that a test can hold: its two opening commands, and its Python examples run."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    commands = re.findall(r"^    (make \w+)$", README.split("## ")[0], re.M)
    assert commands == ["make demo", "make test"]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must call the README's test command"


def test_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README has Python examples"
    namespace = {}  # one session, as a reader pastes them one after another
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)

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


def test_layout_section_names_the_tree():
    """Every path the Layout block starts a line with exists, and every directory of csrc/ and
    babygpt_ext/ is named in it (a new one must be placed there)."""
    block = re.search(r"^## Layout\n+```\n(.*?)```", README, re.S | re.M).group(1)
    root = Path(__file__).resolve().parents[1]
    for line in block.splitlines():
        head = line.split()[0] if line and not line[0].isspace() else None
        if head:
            assert (root / head).exists(), f"README Layout names {head}, which does not exist"
    names = set(re.findall(r"[\w.]+(?=/)", block))
    dirs = [p for base in ("csrc", "babygpt_ext") for p in (root / base).iterdir()
            if p.is_dir() and not p.name.startswith(("_", "."))]
    missing = [str(p.relative_to(root)) for p in dirs if p.name not in names]
    assert not missing, f"README Layout does not mention {missing}"

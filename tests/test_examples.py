"""The scripts in examples/: each answers --help, and the command lines its docstring shows run a
script that exists at the path they name (the README points readers at them)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "examples").glob("*.py"))


def test_examples_exist():
    assert {p.name for p in SCRIPTS} >= {"bigram_lm.py", "ngram_lm.py", "attention_demo.py", "babygpt.py", "gpt.py",
                                         "lora.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_docstring_commands_name_the_script(script):
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    commands = re.findall(r"^\s*python (\S+\.py)", doc, re.M)
    assert commands, f"{script.name}: its docstring shows no `python examples/...` command line"
    for path in commands:
        assert (ROOT / path).resolve() == script, f"{script.name}: its docstring runs {path}, not itself"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script):
    done = subprocess.run([sys.executable, str(script.relative_to(ROOT)), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{script.name} --help exited {done.returncode}:\n{done.stderr[-2000:]}"
    assert done.stdout.startswith("usage:"), done.stdout[:500]

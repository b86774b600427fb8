"""Every example printed by `babygpt --help` and `babygpt <command> --help` parses: its command
and options exist and its values have the right types (running them is other tests' job)."""

import re
import shlex

import pytest

from babygpt_ext.cli import build_parser


def subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return parser, action.choices


def examples(epilog: str) -> list:
    """Example command lines of an epilog: '  babygpt ...' lines (with '\\' continuations), minus
    the comment that follows a run of 3+ spaces."""
    lines, out = (epilog or "").splitlines(), []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("babygpt ") or "<command>" in line:
            continue
        cmd = line
        while cmd.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
        out.append(re.split(r"\s{3,}", cmd.strip())[0])
    return out


def all_examples():
    parser, subs = subparsers()
    found = [("babygpt", e) for e in examples(parser.epilog)]
    found += [(name, e) for name, sub in subs.items() for e in examples(sub.epilog)]
    return found


@pytest.mark.parametrize("where,example", all_examples(), ids=lambda x: x if len(x) < 40 else x[:40])
def test_help_example_parses(where, example):
    words = shlex.split(example)
    shell = [i for i, w in enumerate(words) if w in (">", ">>", "|", "&&", "2>&1")]  # redirections, pipes
    argv = words[1:shell[0] if shell else None]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`babygpt {where} --help` shows `{example}`, which does not parse (exit {e.code})")
    assert getattr(args, "func", None), example


def test_every_command_has_examples():
    _, subs = subparsers()
    missing = [name for name, sub in subs.items() if not examples(sub.epilog)]
    assert not missing, f"commands whose --help shows no example: {missing}"


def test_help_keeps_the_epilogs_lines():
    """--help prints each epilog line as written (argparse's default formatter would rewrap the
    examples into one paragraph)."""
    parser, subs = subparsers()
    for name, p in [("babygpt", parser), *subs.items()]:
        shown = p.format_help().splitlines()
        lost = [line for line in p.epilog.splitlines() if line.strip() and line.rstrip() not in shown]
        assert not lost, f"`{name} --help` rewraps its epilog lines {lost[:2]}"

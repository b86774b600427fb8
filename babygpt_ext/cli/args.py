"""The valid range of every numeric `babygpt` option and the options that name attention
backends, defined once, and the usage error that names them. `add_checks(commands)` wraps each
listed option's argparse `type`, so an out-of-range value (`--batch-size 0`, `--lr nan`) or an unknown
backend stops at parsing with exit status 2, and a backend that cannot run here stops there with
its reason (exit 1), before any slow work."""

from __future__ import annotations

import argparse
import math

from ..errors import UserError


class UsageError(UserError):
    """A bad command line: wrong flag, bad value, missing argument. Exit status 2."""

    exit_code = 2


class Range:
    """Values in [lo, hi] (either bound may be open; hi=None: no upper bound)."""

    def __init__(self, lo, hi=None, *, lo_open=False, hi_open=False):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def contains(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False  # nan compares False both ways, and no option here means infinity
        above = value > self.lo if self.lo_open else value >= self.lo
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


def at_least(n) -> Range:
    return Range(n)


POSITIVE = Range(0, lo_open=True)
FRACTION_OPEN = Range(0, 1, lo_open=True, hi_open=True)
PROBABILITY_MASS = Range(0, 1, lo_open=True)  # (0, 1]
DROPOUT = Range(0, 1, hi_open=True)  # [0, 1)

# command -> option -> range. A test checks that every entry names an option the command has.
RANGES = {
    "train": {
        "--vocab-size": at_least(2), "--val-fraction": FRACTION_OPEN, "--block-size": at_least(1),
        "--dropout": DROPOUT, "--batch-size": at_least(1), "--grad-accum": at_least(1),
        "--max-iters": at_least(1), "--time-budget": POSITIVE, "--lr": POSITIVE, "--min-lr": at_least(0),
        "--warmup": at_least(0), "--lr-decay-iters": at_least(1), "--weight-decay": at_least(0),
        "--beta1": DROPOUT, "--beta2": DROPOUT, "--grad-clip": at_least(0), "--eval-interval": at_least(1),
        "--eval-iters": at_least(1), "--log-interval": at_least(1), "--threads": at_least(1),
    },
    "sample": {
        "--max-new-tokens": at_least(1), "--temperature": at_least(0), "--top-k": at_least(1),
        "--top-p": PROBABILITY_MASS, "--num-samples": at_least(1),
    },
    "tokenize": {"--vocab-size": at_least(2)},
    "demo": {"--time-budget": POSITIVE, "--max-iters": at_least(1)},
    "bench": {"--rounds": at_least(1), "--curve-steps": at_least(0)},
    "tune": {"--batch-size": at_least(1), "--budget-ms": POSITIVE},
}


def _checked(convert, valid: Range):
    """An argparse type: `convert` the string, then insist the value lies in `valid`."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if convert is int else 'a number'} {valid}, got {text!r}") from None
        if not valid.contains(value):
            raise argparse.ArgumentTypeError(f"must be {valid}, got {text}")
        return value

    return parse


# command -> the options naming one backend, or a comma-separated list of them (`bench --backends`
# checks its own list: it also takes 'auto' and leaves out, with a note, what cannot run here)
BACKEND_OPTIONS = {"train": ("--backend",), "sample": ("--backend",)}


def _backend_names(text: str) -> str:
    """An argparse type: every comma-separated name is a registered backend that can run here."""
    from ..ops import BACKENDS, BackendUnavailableError

    for name in text.split(","):
        if name not in BACKENDS:
            raise argparse.ArgumentTypeError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
        if (why := BACKENDS[name].why_unavailable()) is not None:
            # not a usage mistake but this machine's limit: exit 1 with the reason and the fix
            raise BackendUnavailableError(f"backend {name!r} is not usable here: {why}")
    return text


def option_actions(parser: argparse.ArgumentParser) -> dict:
    """option string -> its argparse action, for one (sub)parser."""
    return {opt: a for a in parser._actions for opt in a.option_strings}


def add_checks(commands: dict) -> None:
    """Give the options listed in RANGES and BACKEND_OPTIONS a checking type. `commands`: name -> subparser."""
    for command, ranges in RANGES.items():
        actions = option_actions(commands[command])
        for option, valid in ranges.items():
            actions[option].type = _checked(actions[option].type, valid)
    for command, options in BACKEND_OPTIONS.items():
        actions = option_actions(commands[command])
        for option in options:
            actions[option].type = _backend_names

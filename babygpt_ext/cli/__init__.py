"""The `babygpt` command line. Each subcommand is a module of this package with
`register(subparsers)` (adds its parser, sets `func`) and `run(args) -> int`.

`main` runs the command inside one error handler: an expected error (a bad flag or value, a
missing, corrupt or foreign file, an unavailable backend, Ctrl-C) becomes one line on stderr and
an exit status: 2 for usage, 130 for Ctrl-C, 1 otherwise. `--debug` or BABYGPT_DEBUG=1 prints the
traceback as well. Option ranges and backend names are checked at parsing (args.py).
"""

import argparse
import importlib
import os
import platform
import sys
import traceback
import warnings
from pathlib import Path

from ..errors import UserError
from .args import UsageError, add_checks

# Subcommands in the order `babygpt --help` lists them.
COMMANDS = ("demo", "info", "train", "sample", "bench", "tune", "tokenize", "gpu_report")
DEBUG_ENV = "BABYGPT_DEBUG"
PACKAGE_DIR = Path(__file__).resolve().parents[1]

EPILOG = """\
examples:
  babygpt demo                     the tour: info, ~2 min of training, a sample, a benchmark
  babygpt info                     what is built and usable here, and why not
  babygpt train --preset babygpt --tokenizer word --max-iters 500 --out runs/baby
  babygpt sample --ckpt runs/baby/ckpt.pt --prompt "The " --temperature 0.8
  babygpt bench --quick            the backends side by side (attention and LoRA)
  babygpt tune --preset shakespeare-cpu --batch-size 12   measure the engine's choices ahead of time
  babygpt gpu-report               registers/smem/spills/tensor cores of every GPU kernel, no GPU needed
  babygpt <command> --help         every option of one command, with examples

errors print one line and exit 2 (usage), 130 (Ctrl-C) or 1; --debug or BABYGPT_DEBUG=1 adds the traceback
"""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes raise UsageError (one line, exit 2) instead of printing
    the usage text and exiting, and whose --help keeps the line breaks of its description and
    epilog (every epilog is example command lines, one a line); subcommand parsers inherit the class."""

    def __init__(self, *args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _version() -> str:
    import torch

    from .. import __version__
    return f"babygpt_ext {__version__} (torch {torch.__version__}, python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="babygpt", description="Fused attention and LoRA kernels for small GPTs: train, sample, benchmark.",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=_version())
    debug_help = f"on an error, print the traceback too (or set {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    for command in sub.choices.values():  # `babygpt train ... --debug` works too; SUPPRESS keeps the top level's value
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    add_checks(sub.choices)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv
    prog = "babygpt"
    showwarning = warnings.showwarning
    try:
        command = next((a for a in argv if not a.startswith("-")), None)
        if command in {name.replace("_", "-") for name in COMMANDS}:
            prog = f"babygpt {command}"  # known before parsing, so a usage error names its command
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            raise UsageError("no command given; choose one of the commands above")
        if not debug:
            warnings.showwarning = _one_line_warning(prog)
        return args.func(args) or 0
    except SystemExit as e:  # --help, --version, and commands that exit with their own status
        if isinstance(e.code, str):  # SystemExit("message"): Python would print it and exit 1
            print(one_line(e.code), file=sys.stderr)
            return 1
        raise
    except BaseException as e:  # noqa: B036 - Ctrl-C is an expected way to stop too
        if debug:
            traceback.print_exception(e)
        print(f"{prog}: {describe(e)}", file=sys.stderr, flush=True)
        if isinstance(e, BrokenPipeError):  # `babygpt sample | head`: stop Python's flush at exit complaining
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exit_status(e)
    finally:
        warnings.showwarning = showwarning


def _one_line_warning(prog: str):
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {one_line(str(message))}", file=file or sys.stderr)
    return show


# ------------------------------------------------------------------------- error -> message, status
def interrupted(e: BaseException) -> bool:
    """Ctrl-C, also when it surfaced as another error: torch.save turns a KeyboardInterrupt raised
    inside its writer into `RuntimeError: [enforce fail at inline_container.cc]`."""
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__cause__ or e.__context__
    return False


def exit_status(e: BaseException) -> int:
    if interrupted(e):
        return 130
    return getattr(e, "exit_code", 1) if isinstance(e, UserError) else 1


def one_line(text: str) -> str:
    return " ".join(text.split())


def _raised_by_us(e: BaseException) -> bool:
    """Messages this package writes are for the user (they name the argument, the value, the fix);
    an exception raised inside torch or the standard library gets its type and a --debug hint."""
    if type(e).__module__.split(".")[0] == "babygpt_ext":
        return True
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and PACKAGE_DIR in Path(tb.tb_frame.f_code.co_filename).resolve().parents


def describe(e: BaseException) -> str:
    """One line for the user: what went wrong and, where known, how to fix it."""
    if interrupted(e):
        return "interrupted (Ctrl-C)"
    if isinstance(e, BrokenPipeError):
        return "output closed before it was all written (broken pipe)"
    if isinstance(e, UserError):
        return one_line(str(e))
    if isinstance(e, FileExistsError) and e.filename:  # mkdir(exist_ok=True) on a file
        return f"{e.filename} exists and is not a directory"
    if isinstance(e, OSError) and e.strerror:  # an errno error: the OS's words, and the file when known
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    if _raised_by_us(e) and str(e):
        return one_line(str(e))
    if isinstance(e, ModuleNotFoundError) and e.name:
        return f"{e} (install it: pip install {e.name.split('.')[0]})"
    return one_line(f"{type(e).__name__}: {e} (unexpected: rerun with --debug or {DEBUG_ENV}=1 for the traceback)")

if __name__ == "__main__":
    sys.exit(main())

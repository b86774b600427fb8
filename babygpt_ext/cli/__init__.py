"""The `babygpt` command line. Each subcommand is a module of this package with
`register(subparsers)` (adds its parser, sets `func`) and `run(args) -> int`."""

import argparse
import importlib
import sys

# Subcommands in the order `babygpt --help` lists them.
COMMANDS = ("demo", "info", "train", "sample", "bench", "tokenize", "gpu_report")

EPILOG = """\
examples:
  babygpt info                     what is built and usable here, and why not
  babygpt bench --quick            eager vs sdpa vs cpu attention, side by side
  babygpt <command> --help         every option of one command, with examples
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="babygpt", description="Fused attention and LoRA kernels for small GPTs: train, sample, benchmark.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())

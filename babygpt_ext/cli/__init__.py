"""The `babygpt` command line. Each subcommand is a module of this package with
`register(subparsers)` (adds its parser, sets `func`) and `run(args) -> int`."""

import argparse
import importlib
import sys

# Subcommands in the order `babygpt --help` lists them.
COMMANDS = ("demo", "info", "train", "sample", "bench", "tune", "tokenize", "gpu_report")

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

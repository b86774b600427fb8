"""`babygpt demo`: the README's main job. What is built here, a small GPT trained on the embedded
corpus for a fixed wall-clock budget, a streamed sample from it, and a quick benchmark."""

import argparse
import time
from pathlib import Path

from . import bench, info, sample, train

EPILOG = """\
steps (each is also a command of its own):
  1. babygpt info
  2. babygpt train --preset shakespeare-cpu --tokenizer char --time-budget SECONDS --out OUT ...
  3. babygpt sample --ckpt OUT/ckpt.pt --prompt PROMPT
  4. babygpt bench --quick --mode fwd+bwd

examples:
  babygpt demo                           # ~2 minutes of training, then sample and bench
  babygpt demo --time-budget 30 --skip-bench
"""


def _run(module, argv) -> None:
    parser = argparse.ArgumentParser(prog="babygpt")
    module.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    rc = args.func(args)
    if rc:
        raise SystemExit(rc)


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 72 - len(text)), flush=True)


def run(args) -> int:
    out = Path(args.out)
    t0 = time.time()
    _banner("1/4 what is built and usable here")
    print(info.report())
    _banner(f"2/4 train a small GPT on the embedded corpus for {args.time_budget:.0f} s")
    _run(train, ["train", "--preset", "shakespeare-cpu", "--data", "pydoc", "--tokenizer", "char",
                 "--batch-size", "16", "--lr", "2e-3", "--min-lr", "2e-4", "--warmup", "100",
                 "--max-iters", str(args.max_iters), "--eval-interval", "250", "--eval-iters", "20", "--time-budget", str(args.time_budget),
                 "--out", str(out), "--seed", "0", "--force"])
    _banner("3/4 sample from it (streamed)")
    _run(sample, ["sample", "--ckpt", str(out / "ckpt.pt"), "--prompt", args.prompt,
                  "--max-new-tokens", "300", "--temperature", "0.8", "--top-k", "40", "--seed", "0"])
    if not args.skip_bench:
        _banner("4/4 attention and LoRA backends side by side")
        _run(bench, ["bench", "--quick", "--mode", "fwd+bwd", "--rounds", "5"])
    print(f"\ndone in {time.time() - t0:.0f} s. Loss curve: {out / 'loss.png'}   metrics: {out / 'metrics.csv'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the tour: info, train a small GPT (~2 min), sample, benchmark",
                       description="Train a small GPT (shakespeare-cpu shape, character-level) on CPython's "
                                   "documentation topics for a fixed time, sample from it, and compare the "
                                   "attention backends.",
                       epilog=EPILOG)
    p.add_argument("--time-budget", type=float, default=120.0, help="seconds of training (default 120)")
    p.add_argument("--max-iters", type=int, default=2500, help="length of the LR schedule (default 2500)")
    p.add_argument("--out", default="runs/demo", help="run directory, replaced by every demo (default runs/demo)")
    p.add_argument("--prompt", default="The ", help="text to continue (default 'The ')")
    p.add_argument("--skip-bench", action="store_true", help="stop after sampling")
    p.set_defaults(func=run)

"""`babygpt sample`: load a checkpoint and its tokenizer, generate text, stream it to the terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Generate text from a checkpoint written by `babygpt train`.

The checkpoint is loaded with torch.load(weights_only=True) (tensors and plain values only; a
file that tries to run code is refused). The tokenizer is the tokenizer.json saved next to it.
All --num-samples continuations are generated together as one batch; the first is streamed to
the terminal token by token as it is sampled, the others are printed when the batch finishes.

sampling:
  --temperature  divides the logits: < 1 sharper / safer, > 1 flatter / wilder, 0 = greedy
  --top-k        keep only the k most likely tokens
  --top-p        keep the smallest set of tokens whose probabilities sum to p (nucleus sampling)
  the KV cache keeps every layer's keys/values so each new token costs one position, not the
  whole context; --no-kv-cache recomputes the context every step (same tokens, slower)
"""

EPILOG = """\
examples:
  babygpt sample --ckpt runs/demo/ckpt.pt --prompt "def " --max-new-tokens 200
  babygpt sample --ckpt runs/demo/ckpt.pt --prompt "The " --temperature 0.8 --top-k 50 --top-p 0.95 \\
                 --num-samples 2 --seed 0
  babygpt sample --ckpt runs/demo/best.pt --temperature 0 --no-kv-cache     greedy, recompute
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate text from a trained checkpoint, streamed",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="runs/demo/ckpt.pt", help="checkpoint from babygpt train (default runs/demo/ckpt.pt)")
    p.add_argument("--tokenizer", default=None, help="tokenizer JSON (default: the one saved next to the checkpoint)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per sample (200)")
    p.add_argument("--temperature", type=float, default=0.8, help="logit temperature, 0 = greedy (0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--num-samples", type=int, default=1, help="continuations generated as one batch (1)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the whole context every step")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--backend", default=None, help="attention backend (default: automatic policy)")
    p.set_defaults(func=run)


def load_model(ckpt_path, device: str = "cpu", backend: str | None = None):
    """(GPT in eval mode, checkpoint dict) from a babygpt train checkpoint."""
    from ..models import GPT, GPTConfig
    from ..train import load_checkpoint, strip_wrappers
    ckpt = load_checkpoint(ckpt_path, map_location=device)
    if ckpt.get("model_class") != "GPT" or not ckpt.get("model_config"):
        raise ValueError(f"{ckpt_path}: not a GPT checkpoint (model_class={ckpt.get('model_class')!r})")
    model = GPT(GPTConfig(**{**ckpt["model_config"], "backend": backend}))
    model.load_state_dict(strip_wrappers(ckpt["model"]))
    return model.to(device).eval(), ckpt


class Streamer:
    """Prints row 0's text as tokens arrive. Decodes the whole row each time and prints the new
    suffix: a byte-level BPE token can be half a UTF-8 character, which decodes to U+FFFD until
    its other half arrives, so a trailing U+FFFD is held back rather than printed."""

    def __init__(self, tok, out=None):
        # sys.stdout looked up now, not at import: it may have been redirected since
        self.tok, self.out, self.ids, self.shown = tok, out or sys.stdout, [], ""

    def __call__(self, column) -> None:  # column: (B,) the new token of every row
        self.ids.append(int(column[0]))
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self.out.write(text[len(self.shown):] if text.startswith(self.shown) else text)
        self.out.flush()
        self.shown = text


def run(args) -> int:
    import torch

    from ..tokenizers import Tokenizer
    from ..train.distributed import resolve_device

    for name, ok in (("--max-new-tokens", args.max_new_tokens >= 1), ("--num-samples", args.num_samples >= 1),
                     ("--temperature", args.temperature >= 0)):
        if not ok:
            print(f"babygpt sample: {name} out of range", file=sys.stderr)
            return 2
    device = resolve_device(args.device)
    model, ckpt = load_model(args.ckpt, device, args.backend)
    tok_path = Path(args.tokenizer) if args.tokenizer else Path(args.ckpt).parent / ckpt.get("extra", {}).get(
        "tokenizer", "tokenizer.json")
    if not tok_path.is_file():
        print(f"babygpt sample: tokenizer {tok_path} not found; pass --tokenizer PATH", file=sys.stderr)
        return 2
    tok = Tokenizer.load(tok_path)
    if tok.vocab_size != model.config.vocab_size:
        print(f"babygpt sample: tokenizer {tok_path} has {tok.vocab_size} tokens but the model expects "
              f"{model.config.vocab_size}", file=sys.stderr)
        return 2
    prompt_ids = tok.encode(args.prompt)
    if not prompt_ids:
        print("babygpt sample: --prompt encodes to no tokens; give it some text", file=sys.stderr)
        return 2
    prompt_ids = prompt_ids[-model.config.block_size:]  # the model sees at most block_size tokens
    idx = torch.tensor([prompt_ids] * args.num_samples, dtype=torch.long, device=device)  # (N, T)
    gen = torch.Generator(device=device).manual_seed(args.seed) if args.seed is not None else None

    print(f"# {args.ckpt}: step {ckpt['step']}, val loss {ckpt.get('val_loss')}, "
          f"{'KV cache' if not args.no_kv_cache else 'recompute'}", file=sys.stderr)
    header = "--- sample 1 ---\n" if args.num_samples > 1 else ""
    sys.stdout.write(header + args.prompt)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         kv_cache=not args.no_kv_cache, generator=gen, stream=Streamer(tok))
    sys.stdout.write("\n")
    for i in range(1, args.num_samples):
        sys.stdout.write(f"--- sample {i + 1} ---\n{args.prompt}{tok.decode(out[i, len(prompt_ids):].tolist())}\n")
    sys.stdout.flush()
    return 0

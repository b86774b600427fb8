"""`babygpt sample`: load a checkpoint and its tokenizer, generate text, stream it to the terminal."""

from __future__ import annotations

import codecs
import hashlib
import sys
from pathlib import Path

DESCRIPTION = """\
Generate text from a checkpoint written by `babygpt train`.

The checkpoint is loaded with torch.load(weights_only=True) (tensors and plain values only; a
file that tries to run code is refused) and checked against its sha256; a corrupt file or one
with NaN/Inf weights is refused. The tokenizer is the tokenizer.json saved next to it, which must
be the one the checkpoint was trained with (its sha256 is in the checkpoint).
All --num-samples continuations are generated together as one batch; the first is streamed to
the terminal token by token as it is sampled, the others are printed when the batch finishes.

sampling:
  --temperature  divides the logits: < 1 sharper / safer, > 1 flatter / wilder, 0 = greedy
  --top-k        keep only the k most likely tokens
  --top-p        keep the smallest set of tokens whose probabilities sum to p (nucleus sampling)
  the KV cache keeps every layer's keys/values so each new token costs one position, not the
  whole context; --no-kv-cache recomputes the context every step (same tokens, slower)
  --stop TEXT    end a sample where its text first contains TEXT (repeatable; TEXT is not
                 printed); escapes like \\n are understood, so --stop '\\n\\n' ends at a blank line
"""

EPILOG = """\
examples:
  babygpt sample --ckpt runs/demo/ckpt.pt --prompt "def " --max-new-tokens 200
  babygpt sample --ckpt runs/demo/ckpt.pt --prompt "The " --temperature 0.8 --top-k 50 --top-p 0.95 \\
                 --num-samples 2 --seed 0
  babygpt sample --ckpt runs/demo/best.pt --temperature 0 --no-kv-cache     greedy, recompute
  babygpt sample --prompt "ROMEO:" --stop '\\n\\n' --max-new-tokens 500       one speech
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate text from a trained checkpoint, streamed",
                              description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--ckpt", default="runs/demo/ckpt.pt", help="checkpoint from babygpt train (default runs/demo/ckpt.pt)")
    p.add_argument("--tokenizer", default=None, help="tokenizer JSON (default: the one saved next to the checkpoint)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per sample (200)")
    p.add_argument("--temperature", type=float, default=0.8, help="logit temperature, 0 = greedy (0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--num-samples", type=int, default=1, help="continuations generated as one batch (1)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end a sample at the first occurrence of TEXT (repeatable; \\n etc. understood)")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the whole context every step")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--backend", default=None, help="attention backend (default: automatic policy)")
    p.set_defaults(func=run)


def load_model(ckpt_path, device: str = "cpu", backend: str | None = None):
    """(GPT in eval mode, checkpoint dict) from a babygpt train checkpoint."""
    from ..models import GPT, GPTConfig
    from ..train import CheckpointError, load_checkpoint, strip_wrappers
    ckpt = load_checkpoint(ckpt_path, map_location=device)
    if ckpt.get("model_class") != "GPT" or not ckpt.get("model_config"):
        raise CheckpointError(f"{ckpt_path}: not a GPT checkpoint (model_class={ckpt.get('model_class')!r})")
    model = GPT(GPTConfig(**{**ckpt["model_config"], "backend": backend}))
    model.load_state_dict(strip_wrappers(ckpt["model"]))
    return model.to(device).eval(), ckpt


def cut_at_stop(text: str, stops) -> tuple:
    """(text before the first stop string, whether one occurred)."""
    hits = [i for i in (text.find(st) for st in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class Streamer:
    """Prints row 0's text as tokens arrive. Decodes the whole row each time and prints the new
    suffix: a byte-level BPE token can be half a UTF-8 character, which decodes to U+FFFD until
    its other half arrives, so a trailing U+FFFD is held back rather than printed. Likewise a
    tail that could be the start of a stop string is held back until it is known not to be."""

    def __init__(self, tok, stops=(), out=None):
        # sys.stdout looked up now, not at import: it may have been redirected since
        self.tok, self.stops, self.out = tok, list(stops), out or sys.stdout
        self.ids, self.shown, self.stopped = [], "", False

    def __call__(self, column) -> None:  # column: (B,) the new token of every row
        if self.stopped:
            return
        self.ids.append(int(column[0]))
        text, self.stopped = cut_at_stop(self.tok.decode(self.ids), self.stops)
        if not self.stopped:
            text = text.rstrip("\ufffd")
            hold = max((n for st in self.stops for n in range(len(st) - 1, 0, -1) if text.endswith(st[:n])),
                       default=0)
            text = text[:len(text) - hold]
        if len(text) > len(self.shown) and text.startswith(self.shown):
            self.out.write(text[len(self.shown):])
            self.out.flush()
            self.shown = text

    def finish(self) -> None:
        """Prints what was held back (the row ended without completing a stop string)."""
        if not self.stopped:
            text, _ = cut_at_stop(self.tok.decode(self.ids), self.stops)
            self.out.write(text[len(self.shown):] if text.startswith(self.shown) else "")
        self.out.flush()


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
    want = ckpt.get("extra", {}).get("tokenizer_sha256")
    if want is not None and hashlib.sha256(tok_path.read_bytes()).hexdigest() != want:
        print(f"babygpt sample: {tok_path} is not the tokenizer {args.ckpt} was trained with (its sha256 differs); "
              f"pass --tokenizer PATH of the run's tokenizer.json", file=sys.stderr)
        return 2
    stops = [codecs.decode(st, "unicode_escape") for st in args.stop]
    if any(not st for st in stops):
        print("babygpt sample: --stop needs a non-empty TEXT", file=sys.stderr)
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
    P = len(prompt_ids)

    def stopped(rows):  # (N, T) -> (N,) bool: the continuation contains a stop string
        return [cut_at_stop(tok.decode(r[P:].tolist()), stops)[1] for r in rows]

    streamer = Streamer(tok, stops)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         stop=stopped if stops else None, kv_cache=not args.no_kv_cache, generator=gen,
                         stream=streamer)
    streamer.finish()
    sys.stdout.write("\n")
    for i in range(1, args.num_samples):
        text, _ = cut_at_stop(tok.decode(out[i, P:].tolist()), stops)
        sys.stdout.write(f"--- sample {i + 1} ---\n{args.prompt}{text}\n")
    sys.stdout.flush()
    return 0

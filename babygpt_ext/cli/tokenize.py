"""`babygpt tokenize`: train a tokenizer on a corpus and report how well and how fast it works."""

from __future__ import annotations

import time
from pathlib import Path

DESCRIPTION = """\
Train a tokenizer on a corpus and report its vocabulary, how many tokens it needs per character
(lower = more text fits in a model's context), how long training took and how fast it encodes.

kinds:
  char   one token per distinct character (vocabulary = the text's characters)
  word   words, punctuation and whitespace runs; lossless; rare words -> <unk> if capped
  bpe    byte-level BPE (Hugging Face tokenizers): any Unicode round-trips exactly; merges are
         learned from the whole corpus, encoding runs in parallel chunks
"""

EPILOG = """\
examples:
  babygpt tokenize                                   BPE-1000 on the embedded corpus
  babygpt tokenize --kind bpe --vocab-size 4000 --save tok.json
  babygpt tokenize --kind char --data input.txt
  babygpt tokenize --data tinyshakespeare --out shakespeare.bin   (downloads once, verified)
  python -c "from babygpt_ext.tokenizers import Tokenizer; t = Tokenizer.load('tok.json')"
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="train a tokenizer, report tokens/char and speed",
                              description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--kind", choices=["char", "word", "bpe"], default="bpe", help="tokenizer kind (default bpe)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="bpe: target vocabulary (default 1000); word: cap, rest -> <unk> (default: none)")
    p.add_argument("--data", default=None,
                   help="text file, folder of .txt/.md, or corpus name (default: embedded pydoc topics)")
    p.add_argument("--no-verify", action="store_true",
                   help="allow downloading a registered corpus that has no checksum (prints its hash)")
    p.add_argument("--save", metavar="PATH", default=None, help="write the tokenizer as JSON here")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="also write the corpus' token ids here (uint16/uint32 + PATH.json sidecar)")
    p.add_argument("--show", default='Tokenizers turn text into integers: print("hello")',
                   help="a sentence to show split into tokens (try one with emoji or CJK)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import load_text, tokenize_to_file
    from ..tokenizers import get_tokenizer

    text = load_text(args.data, verify=not args.no_verify)
    source = args.data or "embedded corpus (pydoc_data.topics)"
    print(f"corpus: {source}: {len(text):,} characters")

    t0 = time.perf_counter()
    tok = get_tokenizer(args.kind, text, vocab_size=args.vocab_size)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ids = tok.encode(text)
    encode_s = time.perf_counter() - t0
    exact = tok.decode(ids) == text

    print(f"tokenizer: {tok.kind}, vocab {tok.vocab_size:,}, trained in {train_s:.2f}s")
    print(f"tokens: {len(ids):,} = {len(ids) / len(text):.3f} tokens/char ({len(text) / len(ids):.2f} chars/token)")
    print(f"encode: {encode_s:.2f}s = {len(text) / encode_s / 1e6:.2f} M chars/s")
    print(f"round trip decode(encode(corpus)) == corpus: {exact}")
    if args.show:
        try:
            ids_show = tok.encode(args.show)
            pieces = tok.token_strings(ids_show) if hasattr(tok, "token_strings") else [tok.decode([i]) for i in ids_show]
            print(f"example: {len(pieces)} tokens: " + " | ".join(p.encode("unicode_escape").decode("ascii") if not p.isprintable() else p for p in pieces))
        except ValueError as e:  # e.g. a char tokenizer meeting characters it never saw
            print(f"example: cannot encode {args.show!r}: {e}")
    if args.save:
        print(f"saved tokenizer to {tok.save(args.save)}")
    if args.out:
        n = tokenize_to_file(Path(args.data) if args.data and Path(args.data).is_file() else text,
                             tok, args.out)
        print(f"wrote {n:,} token ids to {args.out} (+ {args.out}.json)")
    return 0 if exact or tok.kind == "word" else 1

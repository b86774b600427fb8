"""GPT from scratch: train a small GPT on the embedded corpus, then stream a sample to the terminal.

The model goes GPT.forward -> nn.CausalSelfAttention -> ops.causal_attention -> a backend kernel;
sampling uses the KV cache (prefill the prompt once, then one token at a time).

    python examples/gpt.py                                  # shakespeare-cpu preset, char tokens, ~a minute
    python examples/gpt.py --preset gpt-mini --iters 500 --tokenizer bpe
    python examples/gpt.py --iters 50 --prompt "def " --temperature 0.8 --top-k 20
"""

import argparse
import sys
import tempfile

import torch

from babygpt_ext.data import load_text, split
from babygpt_ext.models import GPT, PRESETS, GPTConfig
from babygpt_ext.tokenizers import get_tokenizer
from babygpt_ext.train import TrainConfig, Trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="shakespeare-cpu", choices=list(PRESETS))
    p.add_argument("--text", default=None, help="a text file (default: the embedded corpus)")
    p.add_argument("--chars", type=int, default=300_000, help="use the first N characters of the text")
    p.add_argument("--tokenizer", default="char", choices=["char", "word", "bpe"])
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--backend", default=None, help="attention backend (default: automatic policy)")
    p.add_argument("--prompt", default="The ")
    p.add_argument("--tokens", type=int, default=200, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--out-dir", default=None, help="checkpoints and metrics (default: a temporary folder)")
    args = p.parse_args(argv)

    text = load_text(args.text)[: args.chars]
    tok = get_tokenizer(args.tokenizer, text, vocab_size=1000)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    train_ids, val_ids = split(ids, 0.1)
    model = GPT(GPTConfig.from_preset(args.preset, vocab_size=tok.vocab_size, backend=args.backend))
    print(f"{args.preset}: {model.num_parameters():,} parameters, {tok.vocab_size} {args.tokenizer} tokens, "
          f"{len(ids):,} tokens of text")

    cfg = TrainConfig(max_iters=args.iters, batch_size=args.batch_size, lr=args.lr, min_lr=args.lr / 10,
                      warmup_iters=min(100, args.iters // 10), eval_interval=max(1, args.iters // 4), eval_iters=10,
                      device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        result = Trainer(model, train_ids, val_ids, cfg, out_dir=args.out_dir or tmp).fit()
    print(f"validation loss {result['val_loss']:.3f}\n")

    prompt = torch.tensor([tok.encode(args.prompt)], dtype=torch.long)
    print(args.prompt, end="", flush=True)
    # Stream: print each token as soon as it is sampled. Decode everything generated so far and print
    # what is new, because a BPE token can hold half of a multi-byte character.
    generated, shown = [], ""

    def show(col):  # col: the new token of each row, (B,) with B = 1
        nonlocal shown
        generated.append(int(col[0]))
        text = tok.decode(generated)
        if not text.endswith("\ufffd"):  # wait until a split character is complete
            print(text[len(shown):], end="", flush=True)
            shown = text

    model.generate(prompt, args.tokens, temperature=args.temperature, top_k=args.top_k,
                   generator=torch.Generator().manual_seed(0), stream=show)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

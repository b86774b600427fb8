"""BabyGPT, the seed's tiny word-level GPT (width 16, 4 heads, 4 layers, context 4), trained for real.

With the seed's 478-word vocabulary it has 28,990 parameters (13,216 + 33·V). --lowrank uses the
seed's other model, with q/k/v projected through rank 4 (26,942 parameters at V=478) -- a trained
factorisation, not LoRA (see examples/lora.py).

    python examples/babygpt.py                         # ~seconds: train 300 steps, print a sample
    python examples/babygpt.py --lowrank --iters 500 --prompt "the"
    python examples/babygpt.py --text my.txt --vocab 478
"""

import argparse
import tempfile

import torch

from babygpt_ext.data import load_text, split
from babygpt_ext.generate import prompt_model
from babygpt_ext.models import GPT, GPTConfig
from babygpt_ext.tokenizers import WordTokenizer
from babygpt_ext.train import TrainConfig, Trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default=None, help="a text file (default: the embedded corpus, CPython's doc topics)")
    p.add_argument("--chars", type=int, default=200_000, help="use the first N characters of the text")
    p.add_argument("--vocab", type=int, default=478, help="most frequent words kept (the rest become <unk>)")
    p.add_argument("--lowrank", action="store_true", help="the babygpt-lowrank preset (rank-4 q/k/v)")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--prompt", default="the")
    p.add_argument("--tokens", type=int, default=30, help="words to generate")
    p.add_argument("--out-dir", default=None, help="checkpoints and metrics (default: a temporary folder)")
    args = p.parse_args(argv)

    text = load_text(args.text)[: args.chars]
    tok = WordTokenizer.from_text(text, max_vocab=args.vocab)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    train_ids, val_ids = split(ids, 0.1)
    preset = "babygpt-lowrank" if args.lowrank else "babygpt"
    model = GPT(GPTConfig.from_preset(preset, vocab_size=tok.vocab_size))
    print(f"{preset}: {model.num_parameters():,} parameters, vocabulary {tok.vocab_size} words, "
          f"{len(ids):,} tokens")

    cfg = TrainConfig(max_iters=args.iters, batch_size=32, lr=args.lr, min_lr=args.lr / 10,
                      warmup_iters=min(50, args.iters // 10), eval_interval=max(1, args.iters // 3), eval_iters=10,
                      weight_decay=0.0, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        result = Trainer(model, train_ids, val_ids, cfg, out_dir=args.out_dir or tmp).fit()
    print(f"validation loss {result['val_loss']:.3f} (uniform guess: {torch.log(torch.tensor(tok.vocab_size)):.3f})")
    print(prompt_model(model, args.prompt, args.tokens, 10, tok, generator=torch.Generator().manual_seed(0)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

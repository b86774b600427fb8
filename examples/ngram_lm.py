"""N-gram language models on the embedded corpus: more context, lower perplexity.

    python examples/ngram_lm.py                     # char-level, orders 1..4, a few seconds
    python examples/ngram_lm.py --n 6 --k 0.01      # longer contexts need less smoothing
    python examples/ngram_lm.py --tokenizer word    # word-level

1. tokenize the text and keep the last 10% as validation;
2. count 1..n-grams (add-k smoothing, backoff to shorter contexts that were seen) and print the
   validation perplexity of every order: it falls while the contexts are still seen often enough,
   then rises as the counts get sparse;
3. train a Bengio-style MLP over the previous n-1 tokens (NeuralNGramLM) and compare;
4. sample text from both.
"""

import argparse
import time

import torch

from babygpt_ext.data import get_batch, load_text, split
from babygpt_ext.models.bigram import sequence_perplexity
from babygpt_ext.models.ngram import NeuralNGramLM, NGramLM
from babygpt_ext.tokenizers import get_tokenizer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="text file, folder, or corpus name (default: embedded pydoc topics)")
    p.add_argument("--tokenizer", choices=["char", "word", "bpe"], default="char")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="BPE target (default 1000) / word-vocabulary cap (default: every word)")
    p.add_argument("--n", type=int, default=4, help="largest order: the model sees n-1 previous tokens (default 4)")
    p.add_argument("--k", type=float, default=0.05, help="add-k smoothing (default 0.05)")
    p.add_argument("--n-embd", type=int, default=24, help="neural: embedding width per context token")
    p.add_argument("--hidden", type=int, default=256, help="neural: hidden units")
    p.add_argument("--steps", type=int, default=600, help="neural: training steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--sample-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: these models are tiny, so thread start-up "
                        "costs more than it saves, and spinning threads slow a shared machine)")
    return p.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text = load_text(args.data)
    tok = get_tokenizer(args.tokenizer, text, vocab_size=args.vocab_size)
    ids = torch.tensor(tok.encode(text))
    train, val = split(ids, 0.1)
    V = tok.vocab_size
    print(f"{len(text):,} chars -> {len(ids):,} {tok.kind} tokens, vocab {V}; "
          f"train {len(train):,} / val {len(val):,}")

    for n in range(1, args.n + 1):
        t0 = time.time()
        lm = NGramLM(n, V, k=args.k).fit(train)
        print(f"count {n}-gram (k={args.k}): val perplexity {lm.perplexity(val):8.2f}  ({time.time() - t0:.2f}s)")

    model = NeuralNGramLM(V, n=args.n, n_embd=args.n_embd, hidden=args.hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        x, y = get_batch(train, args.batch_size, args.block_size, generator=g)  # (B, T) each
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ppl = sequence_perplexity(model, val, context_size=args.n - 1)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"neural {args.n}-gram MLP ({n_params:,} params, {args.steps} steps, {time.time() - t0:.1f}s): "
          f"val perplexity {ppl:8.2f}")

    prompt = train[: args.n - 1].tolist()
    print(f"\n--- count {args.n}-gram sample ---")
    sampled = lm.sample(prompt, args.sample_tokens, seed=args.seed, temperature=args.temperature)
    print(tok.decode(prompt + sampled))
    print(f"\n--- neural {args.n}-gram sample ---")
    out = model.generate(torch.tensor([prompt]), args.sample_tokens, temperature=args.temperature,
                         generator=torch.Generator().manual_seed(args.seed))
    print(tok.decode(out[0].tolist()))


if __name__ == "__main__":
    main()

"""Bigram language models on the embedded corpus: count it, then learn it.

    python examples/bigram_lm.py                      # char-level, runs in a few seconds
    python examples/bigram_lm.py --tokenizer word     # word-level (lossless words + whitespace)
    python examples/bigram_lm.py --data input.txt --steps 1000

1. tokenize the text and keep the last 10% as validation;
2. count next-token frequencies into a (V, V) matrix with add-k smoothing: that *is* the model;
3. learn the same table with gradient descent (NeuralBigramLM: one embedding row of logits per
   token) and watch its validation perplexity approach the counted one;
4. sample text from both.
"""

import argparse
import time

import torch

from babygpt_ext.data import get_batch, load_text, split
from babygpt_ext.models.bigram import MAX_DENSE_VOCAB, BigramLM, NeuralBigramLM, sequence_perplexity
from babygpt_ext.models.ngram import NGramLM
from babygpt_ext.tokenizers import get_tokenizer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="text file, folder, or corpus name (default: embedded pydoc topics)")
    p.add_argument("--tokenizer", choices=["char", "word", "bpe"], default="char")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="BPE target (default 1000) / word-vocabulary cap (default: every word)")
    p.add_argument("--k", type=float, default=0.01,
                   help="add-k smoothing of the counts (default 0.01; add-one gives most of the "
                        "probability to unseen pairs when the vocabulary is large)")
    p.add_argument("--steps", type=int, default=300, help="training steps of the neural bigram")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.3, help="Adam learning rate (a lookup table likes it large)")
    p.add_argument("--sample-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0)
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
    t0 = time.time()
    tok = get_tokenizer(args.tokenizer, text, vocab_size=args.vocab_size)
    ids = torch.tensor(tok.encode(text))
    train, val = split(ids, 0.1)
    V = tok.vocab_size
    print(f"{len(text):,} chars -> {len(ids):,} {tok.kind} tokens, vocab {V} ({time.time() - t0:.1f}s); "
          f"train {len(train):,} / val {len(val):,}")

    # counting: the dense matrix for small vocabularies, the sparse n-gram counter otherwise
    count = BigramLM(V, k=args.k) if V <= MAX_DENSE_VOCAB else NGramLM(2, V, k=args.k)
    count.fit(train)
    print(f"count bigram  (k={args.k}):  val perplexity {count.perplexity(val):8.2f}   (uniform would be {V})")

    model = NeuralBigramLM(V)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        x, y = get_batch(train, args.batch_size, args.block_size, generator=g)  # (B, T) each
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    neural_ppl = sequence_perplexity(model, val, context_size=1)
    print(f"neural bigram ({args.steps} steps, {time.time() - t0:.1f}s): val perplexity {neural_ppl:8.2f}")

    prompt = train[:1].tolist()
    print("\n--- count bigram sample ---")
    print(tok.decode(prompt + count.sample(prompt, args.sample_tokens, seed=args.seed, temperature=args.temperature)))
    print("\n--- neural bigram sample ---")
    out = model.generate(torch.tensor([prompt]), args.sample_tokens, temperature=args.temperature,
                         generator=torch.Generator().manual_seed(args.seed))
    print(tok.decode(out[0].tolist()))


if __name__ == "__main__":
    main()

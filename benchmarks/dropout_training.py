"""Training with attention dropout, patched vs unpatched, side by side: nanoGPT (its shakespeare-char
model shape, dropout 0.2) and Hugging Face GPT-2 (2 layers, default dropout 0.1).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/dropout_training.py [--steps 30] [--threads 2]

Each pair starts from the same weights and sees the same batches of the embedded corpus (char
tokens); the steps (forward, backward, AdamW) of the two models alternate, so a noisy neighbour
slows both alike. Unpatched nanoGPT runs its own manual attention (softmax, nn.Dropout, @ v: its
path when flash attention is off, e.g. nanoGPT on the CPU with torch < 2 or with `bias`), patched
runs babygpt_ext's op with the dropout in the kernel; unpatched GPT-2 runs transformers' SDPA
(dropout in torch's SDPA), patched our op. Reported: median step time of each, the ratio
(unpatched / patched: > 1 means patched is faster), and both loss curves (the masks differ, so the
curves agree only within the noise of dropout; the eval loss at the end, without dropout, too).

nanoGPT's config/train_shakespeare_char.py: n_layer 6, n_head 6, n_embd 384, block_size 256,
dropout 0.2, batch_size 64. The model is that shape; the batch defaults to 8 sequences (64 takes
~25 s a step on 2 shared CPU cores) — --batch-size 64 runs the config's own.
"""

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import babygpt_ext
from babygpt_ext.bench.nanogpt_model import NanoGPT
from babygpt_ext.data import embedded_text, get_batch, split
from babygpt_ext.train.precision import cpu_name


def hf_gpt2(vocab, block_size):
    """GPT-2's defaults (768 wide, 12 heads, dropout 0.1) at 2 layers, on the char vocabulary (GPT-2's
    50,257-token head would be most of the step and say nothing about attention)."""
    import transformers
    cfg = transformers.GPT2Config(n_layer=2, vocab_size=vocab, n_positions=block_size)
    return transformers.GPT2LMHeadModel(cfg)


def hf_loss(model, idx, targets):
    return F.cross_entropy(model(idx).logits.flatten(0, 1), targets.flatten())


def race(name, make, loss_fn, data, args):
    """Train an unpatched and a patched copy of one model step by step, alternating; print times,
    ratio and loss curves."""
    torch.manual_seed(0)
    plain = make()
    patched = copy.deepcopy(plain)
    report = babygpt_ext.patch(patched)
    models = {"unpatched": plain, "patched": patched}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=args.lr) for n, m in models.items()}
    times, losses = {n: [] for n in models}, {n: [] for n in models}
    g = torch.Generator().manual_seed(1)
    train, val = data
    order = list(models)
    for step in range(args.steps + args.warmup):
        x, y = get_batch(train, args.batch_size, args.block_size, generator=g)
        for n in order:
            m = models[n].train()
            torch.manual_seed(1000 + step)  # each model its own masks, the same stream every run
            t0 = time.perf_counter()
            loss = loss_fn(m, x, y)
            opts[n].zero_grad(set_to_none=True)
            loss.backward()
            opts[n].step()
            dt = time.perf_counter() - t0
            if step >= args.warmup:
                times[n].append(dt)
            losses[n].append(loss.item())
        order.reverse()
    ev = torch.Generator().manual_seed(2)
    vx, vy = get_batch(val, args.batch_size, args.block_size, generator=ev)
    with torch.no_grad():
        evals = {n: loss_fn(m.eval(), vx, vy).item() for n, m in models.items()}
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"\n== {name}: patched {len(report)} attention module(s); {args.steps} timed steps "
          f"(+{args.warmup} warm-up), batch {args.batch_size} x {args.block_size}")
    for n in models:
        print(f"  {n:10} median step {med[n] * 1e3:9.1f} ms   eval loss {evals[n]:.4f}")
    print(f"  ratio unpatched / patched: {med['unpatched'] / med['patched']:.3f}x")
    print("  loss curve (train, every step): step  unpatched  patched")
    for s in range(0, len(losses["patched"]), max(1, len(losses["patched"]) // 10)):
        print(f"    {s:4d}  {losses['unpatched'][s]:9.4f}  {losses['patched'][s]:9.4f}")
    tail = max(1, len(losses["patched"]) // 4)
    mu = {n: statistics.mean(v[-tail:]) for n, v in losses.items()}
    sd = statistics.pstdev(losses["unpatched"][-tail:])
    print(f"  mean train loss of the last {tail} steps: unpatched {mu['unpatched']:.4f}, patched {mu['patched']:.4f}"
          f" (difference {mu['patched'] - mu['unpatched']:+.4f}; step-to-step std {sd:.4f})")
    return med


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--models", nargs="+", default=["nanogpt", "gpt2"], choices=["nanogpt", "gpt2"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s)")
    text = embedded_text()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text[:400_000]])
    data = split(ids, 0.1)
    if "nanogpt" in args.models:
        race("nanoGPT shakespeare-char shape (6 layers, 6 heads, 384, dropout 0.2)",
             lambda: NanoGPT(len(chars), args.block_size, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
             lambda m, x, y: m(x, y), data, args)
    if "gpt2" in args.models:
        race("Hugging Face GPT-2, 2 layers, default dropout (attn/resid/embd 0.1)",
             lambda: hf_gpt2(len(chars), args.block_size), hf_loss, data, args)


if __name__ == "__main__":
    main()

"""LoRA for real: pretrain a small GPT on English prose, then adapt it to Python source code by
training only low-rank updates of its attention weights.

LoRA is not a low-rank attention that replaces the weights (the seed's "LoRA"): the
pretrained weights stay frozen (checked bit for bit at the end), only lora_A / lora_B learn, the
adapter is saved on its own (kilobytes), reloaded into a fresh copy of the base model, and merged
into the weights for plain-Linear inference.

    python examples/lora.py                      # ~a minute: 200 pretraining steps, 150 LoRA steps
    python examples/lora.py --rank 4 --targets c_attn c_proj c_fc --lora-iters 400
"""

import argparse
import inspect
import os
import tempfile

import torch

from babygpt_ext import lora
from babygpt_ext.data import get_batch, load_text
from babygpt_ext.models import GPT, GPTConfig
from babygpt_ext.tokenizers import CharTokenizer


def python_source(n_chars: int) -> str:
    """Corpus B: the source of a few standard-library modules (ships with every Python)."""
    import dataclasses
    import json.decoder
    import textwrap
    return "\n".join(inspect.getsource(m) for m in (textwrap, dataclasses, argparse, json.decoder))[:n_chars]


def train(model, data, steps, lr, block_size, seed):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = get_batch(data, 16, block_size, generator=g)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def loss_on(model, data, block_size) -> float:
    model.eval()
    g = torch.Generator().manual_seed(1234)
    return sum(model(*get_batch(data, 32, block_size, generator=g))[1].item() for _ in range(5)) / 5


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=200, help="pretraining steps on corpus A (prose)")
    p.add_argument("--lora-iters", type=int, default=150, help="LoRA steps on corpus B (Python source)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--targets", nargs="+", default=["c_attn", "c_proj"], help="Linear names to adapt (suffixes)")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    text_a, text_b = load_text()[:200_000], python_source(200_000)
    tok = CharTokenizer.from_text(text_a + text_b)
    data_a = torch.tensor(tok.encode(text_a), dtype=torch.long)
    data_b = torch.tensor(tok.encode(text_b), dtype=torch.long)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=3, n_head=4, n_embd=96)
    model = GPT(config)
    print(f"GPT {model.num_parameters():,} parameters; corpus A (prose) {len(data_a):,} chars, "
          f"corpus B (Python) {len(data_b):,} chars")

    train(model, data_a, args.iters, 3e-3, config.block_size, seed=0)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"after pretraining on A: loss A {loss_on(model, data_a, 64):.3f}, loss B {loss_on(model, data_b, 64):.3f}")

    names = lora.inject(model, args.targets, r=args.rank, alpha=args.alpha)
    n_train = lora.mark_only_lora_trainable(model)
    print(f"LoRA r={args.rank} alpha={args.alpha} on {len(names)} Linears: {n_train:,} trainable parameters "
          f"({100 * n_train / model.num_parameters():.1f}%)")
    train(model, data_b, args.lora_iters, 1e-2, config.block_size, seed=1)
    print(f"after LoRA on B:        loss A {loss_on(model, data_a, 64):.3f}, loss B {loss_on(model, data_b, 64):.3f}")

    frozen = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    print("base weights unchanged bit for bit:", all(torch.equal(frozen[k], base[k]) for k in base))

    idx = data_b[:64][None]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "adapter.pt")
        lora.save_adapter(model, path)
        fresh = GPT(config)
        fresh.load_state_dict(base)
        lora.load_adapter(fresh, path)
        with torch.no_grad():
            same = torch.equal(fresh.eval()(idx)[0], model.eval()(idx)[0])
        print(f"adapter file {os.path.getsize(path) / 1024:.0f} KB; reloaded into a fresh base model: "
              f"identical logits {same}")
    with torch.no_grad():
        before = model(idx)[0]
        lora.merge(model)
        diff = (model(idx)[0] - before).abs().max().item()
    print(f"merged into the weights: max logit change {diff:.1e}\n")

    prompt = torch.tensor([tok.encode("def ")], dtype=torch.long)
    out = model.generate(prompt, 150, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(0))
    print(tok.decode(out[0].tolist()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

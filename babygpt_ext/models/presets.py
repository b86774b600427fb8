"""Named GPT shapes for GPTConfig.from_preset(name, **overrides).

Parameter counts (GPT.num_parameters(), measured by tests/test_gpt.py):

  babygpt          28,990 at vocab_size=478 (the seed's word vocabulary): 13,216 + 33·V, i.e.
                   wpe 4·16 + 4 blocks × 3,280 + ln_f 32 = 13,216, plus wte 16·V and an untied
                   lm_head with bias 17·V
  babygpt-lowrank  26,942 at vocab_size=478: as babygpt, but each block's c_attn (16→48) is
                   factored through rank 4 (16·4 + 4·48 + 48 = 304 instead of 816): 12,704 + 33·V
  shakespeare-cpu  929,536 at vocab_size=1000 (tied embeddings)
  gpt-mini         2,886,144 at vocab_size=1000 (tied embeddings)
  gpt2             124,439,808 (GPT-2 small, tied, vocab 50,257, context 1,024)

vocab_size in a preset is a default; the tokenizer's size normally overrides it.
"""

PRESETS = {
    "babygpt": dict(
        doc="the BabyGPT seed: width 16, 4 heads, 4 layers, context 4, word-level, untied lm_head with bias",
        vocab_size=478, block_size=4, n_layer=4, n_head=4, n_embd=16, tie_weights=False, lm_head_bias=True),
    "babygpt-lowrank": dict(
        doc="babygpt with q/k/v projected through rank 4 (the seed's low-rank attention, trained for real)",
        vocab_size=478, block_size=4, n_layer=4, n_head=4, n_embd=16, tie_weights=False, lm_head_bias=True,
        qkv_rank=4),
    "shakespeare-cpu": dict(
        doc="nanoGPT's CPU-sized model: 4 layers, 4 heads, width 128, context 64",
        vocab_size=1000, block_size=64, n_layer=4, n_head=4, n_embd=128),
    "gpt-mini": dict(
        doc="minGPT's gpt-mini: 6 layers, 6 heads, width 192, context 128",
        vocab_size=1000, block_size=128, n_layer=6, n_head=6, n_embd=192),
    "gpt2": dict(
        doc="GPT-2 small: 12 layers, 12 heads, width 768, context 1024, vocab 50257, tied embeddings",
        vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}


def describe() -> str:
    """One line per preset, for --help texts."""
    return "\n".join(f"  {name:16s} {p['doc']}" for name, p in PRESETS.items())

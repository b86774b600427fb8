"""Properties of the CPU attention kernels (csrc/cpu) that the shared suite does not pin down: the
strided views of a GPT layer are read in place with the same arithmetic as contiguous inputs,
the results do not depend on the thread count (also where the backward splits its key blocks or
the forward decodes one row), and the decode path (Tq = 1) matches the float64 reference. bfloat16
runs its own kernels (the forward's products on the bf16 units where the CPU has them, the
backward reading bf16 in place), so it gets the same checks."""

import pytest
import torch

from babygpt_ext import ops

pytest.importorskip("babygpt_ext._C", reason="the compiled extension babygpt_ext._C is not built")


def qkv_views(B, H, T, D, seed=0, dtype=torch.float32):
    """q, k, v as a GPT layer makes them: one (B, T, 3·H·D) projection, split, viewed, transposed."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, generator=g).to(dtype)
    return [t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2)]  # (B, H, T, D), strided


def fwd_bwd(q, k, v, seed=1):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = ops.causal_attention(q, k, v, backend="cpu")
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed)).to(o.dtype)
    return (o, *torch.autograd.grad(o, (q, k, v), do))


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 64, 32), (1, 3, 129, 59), (3, 2, 7, 4), (1, 2, 130, 64)])
def test_strided_views_give_the_same_bits_as_contiguous_copies(shape, dtype):
    q, k, v = qkv_views(*shape, dtype=dtype)
    assert not q.is_contiguous()
    strided = fwd_bwd(q, k, v)
    contiguous = fwd_bwd(q.contiguous(), k.contiguous(), v.contiguous())
    for a, b in zip(strided, contiguous):
        assert torch.equal(a, b)


@pytest.mark.parametrize("B,H,Hkv,Tq,Tk,D", [
    (1, 4, 1, 300, 300, 64),   # one (batch, kv head) pair: the backward splits its key blocks
    (1, 2, 2, 200, 200, 32),   # two pairs: split in two
    (2, 6, 6, 1, 700, 32),     # decoding: one query row per head
    (4, 4, 4, 65, 65, 16),     # enough pairs: no split
    (2, 4, 2, 130, 130, 128),  # D >= 64: the forward's products on oneDNN's brgemm, one JIT kernel per thread
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bit_identical_across_thread_counts(B, H, Hkv, Tq, Tk, D, dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, Tq, D, generator=g).to(dtype)
    k, v = torch.randn(B, Hkv, Tk, D, generator=g).to(dtype), torch.randn(B, Hkv, Tk, D, generator=g).to(dtype)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fwd_bwd(q, k, v)
        torch.set_num_threads(2)
        two = fwd_bwd(q, k, v)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("H,Hkv,Tk,D", [(6, 6, 1024, 32), (4, 1, 77, 59), (2, 2, 1, 4), (8, 2, 130, 128)])
def test_decode_row_matches_float64(H, Hkv, Tk, D):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, H, 1, D, generator=g)
    k, v = torch.randn(2, Hkv, Tk, D, generator=g), torch.randn(2, Hkv, Tk, D, generator=g)
    o = ops.causal_attention(q, k, v, backend="cpu")
    ref = ops.causal_attention(q.double(), k.double(), v.double(), backend="eager")
    assert ((o.double() - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("dtype,D", [(torch.float32, 32), (torch.float32, 64), (torch.bfloat16, 32),
                                     (torch.bfloat16, 80)])
@pytest.mark.parametrize("row", [70, 127, 128])  # inside a diagonal key block, its last key, the next block's first
def test_a_future_value_never_reaches_earlier_rows(dtype, D, row):
    q, k, v = (torch.randn(1, 2, 150, D).to(dtype) for _ in range(3))
    v[:, :, row] = float("nan")
    o = ops.causal_attention(q, k, v, backend="cpu")
    assert not torch.isnan(o[:, :, :row]).any()
    assert torch.isnan(o[:, :, row:]).all()


def test_long_context_forward_packs_kv_heads_in_chunks_with_the_same_bits():
    # T4096 D128: 4 MB of packed K/V per kv head, so the forward packs two heads at a time
    # (kPackBytes, csrc/cpu/attention.cpp) and its third head in a second chunk. Every head's
    # output must be the bits that head gets alone (one chunk).
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 3, 4096, 128, generator=g) for _ in range(3))
    whole = ops.causal_attention(q, k, v, backend="cpu")
    for h in range(3):
        one = ops.causal_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], backend="cpu")
        assert torch.equal(whole[:, h:h + 1], one)


@pytest.mark.parametrize("shape", [(2, 4, 130, 64), (1, 3, 200, 59), (3, 2, 65, 8)])
def test_bf16_forward_without_bf16_units_equals_the_float32_forward_rounded(shape):
    # Without bf16 units the forward reads bf16 in place through the float32 kernels: the bits of
    # the float32 forward on the same values, rounded once.
    from babygpt_ext.train.precision import cpu_bf16_units
    if cpu_bf16_units():
        pytest.skip(f"this CPU has bf16 units ({cpu_bf16_units()}): its bf16 forward runs on them instead")
    q, k, v = qkv_views(*shape, dtype=torch.bfloat16)
    o = ops.causal_attention(q, k, v, backend="cpu")
    o32 = ops.causal_attention(q.float(), k.float(), v.float(), backend="cpu")
    assert o.dtype == torch.bfloat16 and torch.equal(o, o32.to(torch.bfloat16))

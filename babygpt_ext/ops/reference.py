"""The eager compositions: the readable definition of every op, and the float64 test reference.

Everything else in the package (C++, CUDA, Triton) must agree with these functions.
"""

import math

import torch

from .dropout import dropout_mask

# Size of one piece of the exactly masked attention, in elements of its (B, H, rows, Tk, D) products.
EXACT_PIECE_ELEMENTS = 1 << 22


def causal_mask(tq: int, tk: int, device=None) -> torch.Tensor:
    """(Tq, Tk) bool, True where query i may see key j.

    Bottom-right aligned: the Tq queries are the *last* Tq positions of a Tk-long sequence, so
    query i sees keys j <= i + (Tk - Tq). With Tq == Tk this is the usual lower triangle; with
    Tq == 1 (decoding with a KV cache) the single query sees every key.
    """
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=tk - tq)


def finite_sum(*tensors: torch.Tensor) -> bool:
    """Whether the sum of every element is finite: False whenever an element is NaN/Inf (and for
    finite elements whose sum overflows, which only costs the exact path). One reduction per tensor,
    16-bit types summed in float32, the partial sums added as Python floats (cheaper than any
    isfinite().all(), which matters for small calls)."""
    return math.isfinite(sum(t.sum(dtype=torch.float32 if t.element_size() == 2 else None).item() for t in tensors))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool, dropout_p: float = 0.0,
              seed=None) -> torch.Tensor:
    """softmax(scale · q kᵀ + mask) v, materialising the (Tq, Tk) score matrix. With dropout_p > 0 the
    probabilities are multiplied by Z = dropout_mask(seed, ...) / (1 - dropout_p) (docs/design.md
    §2.6; seed: the one-element int64 tensor of the op's args, or an int).

    NaN/Inf (docs/design.md §2.7): a masked (query, key) pair contributes exactly nothing to the
    output or to any gradient, whatever q, k, v hold there; visible pairs compute in IEEE arithmetic.
    The matmuls meet that for finite inputs (a masked weight is an exact 0 against finite numbers);
    a causal call with a NaN/Inf anywhere takes the exactly masked path instead, since a matmul
    computes 0 · NaN = NaN for a masked pair.
    """
    z = None
    if dropout_p > 0:
        b, h, tq, tk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        z = dropout_mask(seed, b, h, tq, tk, dropout_p, q.device).to(q.dtype) * (1.0 / (1.0 - dropout_p))
    if not causal:  # every pair is visible: plain IEEE arithmetic is the contract
        return _softmax_attention(q, k, v, scale, False, z)
    return finite_or_exact(lambda q, k, v: _softmax_attention(q, k, v, scale, True, z), q, k, v, scale, z)


def finite_or_exact(fast, q, k, v, scale: float, z=None) -> torch.Tensor:
    """fast(q, k, v) (causal attention by any method) when no masked pair can meet a NaN/Inf, else the
    exactly masked composition. Under torch.compile the graph holds the fast path only: the check is data, and
    torch.cond cannot take these two branches (their gradients differ in memory layout)."""
    # Decoding (Tq = 1) has no masked pair: the single query sees every key.
    if q.shape[2] == 1 or torch.compiler.is_compiling() or finite_sum(q, k, v):
        return fast(q, k, v)
    return exactly_masked_attention(q, k, v, scale, z)


def _repeat_kv(q, k, v):
    h, hkv = q.shape[1], k.shape[1]
    if hkv != h:  # GQA/MQA: each group of H/Hkv query heads shares one key/value head
        k = k.repeat_interleave(h // hkv, dim=1)
        v = v.repeat_interleave(h // hkv, dim=1)
    return k, v


def _softmax_attention(q, k, v, scale, causal, z=None):
    k, v = _repeat_kv(q, k, v)
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if causal:
        att = att.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    # Normalise over the keys (the last axis): normalising over the queries (dim=-2) would let
    # every position attend to the future.
    att = torch.softmax(att, dim=-1)
    if z is not None:  # attention dropout: (B, H, Tq, Tk) scales, 0 where dropped
        att = att * z
    return att @ v  # (B, H, Tq, D)


def exactly_masked_attention(q, k, v, scale, z=None):
    """Causal attention with every product of a masked pair an exact zero, in forward and backward:
    both factors of each product are selected (a select of one factor alone still gives 0 · NaN in
    the backward). Materialises (rows, Tk, D), a piece of query rows at a time: for inputs with NaN/Inf.
    z: attention dropout's (B, H, Tq, Tk) scales, or None."""
    k, v = _repeat_kv(q, k, v)
    visible = causal_mask(q.shape[2], k.shape[2], q.device)
    rows = max(1, EXACT_PIECE_ELEMENTS // (q.shape[0] * q.shape[1] * k.shape[2] * max(q.shape[3], 1)))
    return torch.cat([_exactly_masked_rows(q[:, :, r:r + rows], k, v, scale, visible[r:r + rows],
                                           None if z is None else z[:, :, r:r + rows])
                      for r in range(0, q.shape[2], rows)], dim=2)


def _exactly_masked_rows(q, k, v, scale, visible, z):
    pair = visible[:, :, None]  # (rows, Tk, 1)
    zero = q.new_zeros(())
    qs = torch.where(pair, q[:, :, :, None, :], zero)  # (B, H, rows, Tk, D): q_i at the pairs it sees
    ks = torch.where(pair, k[:, :, None, :, :], zero)
    att = (qs * ks).sum(-1) * scale  # (B, H, rows, Tk)
    # A row holding a NaN has NaN weights everywhere after the softmax: the masked ones are zeroed again.
    att = torch.softmax(att.masked_fill(~visible, float("-inf")), dim=-1).masked_fill(~visible, 0)
    if z is not None:
        att = att * z
    vs = torch.where(pair, v[:, :, None, :, :], zero)
    return (att[..., None] * vs).sum(-2)


def lora_linear(x, weight, bias, lora_a, lora_b, scale: float) -> torch.Tensor:
    """x Wᵀ + b + scale · (x Aᵀ) Bᵀ for x (..., in), W (out, in), A (r, in), B (out, r)."""
    y = torch.nn.functional.linear(x, weight, bias)
    return y + scale * torch.nn.functional.linear(torch.nn.functional.linear(x, lora_a), lora_b)


def bias_gelu(x, bias) -> torch.Tensor:
    """gelu(x + bias), the exact (erf) GELU, for x (..., F) and bias (F,) or None."""
    return torch.nn.functional.gelu(x if bias is None else x + bias)


def layer_norm(x, weight, bias, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    """nn.LayerNorm over the last axis of x (..., C), weight and bias (C,) or None, then cast to
    out_dtype: what a model computed before the fusion (under autocast, F.layer_norm runs in float32
    and the next Linear casts its output). A float32/float64 x takes its parameters in its own dtype
    (ATen's mixed-dtype LayerNorm pairs float32 parameters with 16-bit inputs only)."""
    if x.dtype in (torch.float32, torch.float64):
        weight = None if weight is None else weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    elif (weight is None) != (bias is None) and (weight if bias is None else bias).dtype != x.dtype:
        # ATen's mixed-dtype backward fails with one parameter missing ("expected scalar type Half
        # but found Float"): the missing one as its identity, which changes no result.
        c = x.shape[-1]
        weight = weight if weight is not None else torch.ones(c, dtype=bias.dtype, device=x.device)
        bias = bias if bias is not None else torch.zeros(c, dtype=weight.dtype, device=x.device)
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps).to(out_dtype)

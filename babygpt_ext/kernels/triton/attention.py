"""Fused causal attention in Triton: a FlashAttention-2 forward and backward.

Layout (docs/design.md §2.1): q (B, H, Tq, D), k/v (B, Hkv, Tk, D), o like q, lse (B, H, Tq) float32
natural-log sum-exp of each score row. Strides are passed for every (B, H, T, D) tensor, so
non-contiguous inputs (e.g. q/k/v sliced from one fused projection) are read in place.

Choices, and why:
- Softmax runs in the exp2 domain: log2(e) is folded into the scale once per program, so the
  inner loop does exp2 (one MUFU instruction) instead of exp (a multiply and an exp2).
- Causal is bottom-right aligned: query i sees keys j <= i + (Tk - Tq). Each query block walks
  the key blocks every one of its rows fully sees WITHOUT any mask (stage 1), then the few
  blocks around the shifted diagonal WITH the mask (stage 2). The same split serves Tk bounds
  when causal=False (stage 2 is then just the ragged last key block).
- GQA: one program per query head; it reads K/V head h // (H / Hkv). The dK/dV kernel owns one
  K/V head and loops over the query heads of its group, summing their contributions in registers:
  no atomics, deterministic.
- Backward recomputes P from lse (no (T, T) matrix is stored): preprocess delta = rowsum(dO * O),
  then a dK/dV kernel per key block and a dQ kernel per query block (atomics-free split). For
  fp16/bf16 the forward also stores o's rounding residual o_lo, and delta takes O = o + o_lo: from
  the rounded o alone, every dS would carry an error of an ulp of o (docs/design.md §13.2).
- Attention dropout (DROPOUT) keeps l and lse those of the undropped P and zeroes/scales P only
  where it multiplies V; the backward regenerates the same mask (dropout.py: the twin of
  csrc/dropout_rng.h) and applies it to P (for dV) and to dP. DROPOUT=False compiles none of it.
- NaN/Inf (docs/design.md §2.7): a masked pair contributes nothing, but in a masked block a dot
  multiplies the zero P (or dS) of a masked pair by its V (or K, Q) row, and 0 · NaN = NaN. Each
  program first checks the rows its masked stage reads (_any_nonfinite); when they are finite, the
  masked stage is the plain dot; otherwise it runs a copy (NONFINITE) whose dots take the operand's
  finite part and put NaN back where a seen pair meets a non-finite element (_dot_seen). The check
  is outside the loops, and the copy is its own loop, because a check inside the loop held tiles
  that made the kernels spill (up to 1.3 KB per thread for the sm_80 forward at D = 128).
- Any T (loads masked by bounds), any D <= 256 (BLOCK_D = next power of two >= max(D, 16), the
  padded columns load as 0 and are never stored). Accumulation is float32 for every dtype;
  float32 inputs use IEEE dots (TF32 would miss the contract's 1e-5 tolerance).
"""

import functools

import torch
import triton
import triton.language as tl

from ...ops import dropout

from . import configs as C
from .dropout import kept as dropout_kept

NO_KEY = tl.constexpr(2**31 - 1)  # int32 max: "no non-finite row" in _dot_seen's column minimum


@triton.jit
def _any_nonfinite(base, stride, lo, hi, n_rows, offs_d, D, BLOCK: tl.constexpr):
    """Whether rows [lo, hi) (of n_rows) of a (rows, D) source hold a NaN or ±Inf: read once per
    program, before the masked stage, to choose its path."""
    bad = 0
    for start in range(lo, hi, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        x = tl.load(base + rows[:, None] * stride + offs_d[None, :],
                    mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D), other=0.0)
        bad = tl.maximum(bad, tl.max(tl.max(tl.where(tl.abs(x.to(tl.float32)) < float("inf"), 0, 1), 1), 0))
    return bad


@triton.jit
def _dot_seen(acc, a, b, a_key, b_key, PRECISION: tl.constexpr):
    """acc + a @ b over a masked block whose b holds a NaN or ±Inf, where a is an exact 0 at the
    pairs (row r of a, row c of b) that are not seen, and a pair is seen iff b_key[c] <= a_key[r]
    (every mask here is monotone). A plain dot would give 0 · NaN = NaN at unseen pairs
    (docs/design.md §2.7): this one takes b's finite part, and sets NaN at (r, d) iff a seen row of b
    is non-finite in column d, i.e. iff the least b_key of column d's non-finite rows is <= a_key[r]."""
    finite = tl.abs(b.to(tl.float32)) < float("inf")
    first_bad = tl.min(tl.where(finite, NO_KEY, b_key[:, None]), 0)  # (BLOCK_D,)
    acc = tl.dot(a, tl.where(finite, b, 0.0).to(b.dtype), acc, input_precision=PRECISION)
    return tl.where(first_bad[None, :] <= a_key[:, None], float("nan"), acc)


@triton.constexpr_function
def _half(block):
    """The key step of the forward's and dQ's non-finite path: half the fast path's, so that that
    path's extra tiles fit in the registers the fast path leaves (tl.dot's minimum of 16 kept)."""
    return max(block // 2, 16)


@triton.jit
def _query_program(H, GROUP, BLOCK_M: tl.constexpr):
    """(bh, b, h, K/V head, first query row) of a program over one query block of one head."""
    bh = tl.program_id(1)
    h = bh % H
    return bh, bh // H, h, h // GROUP, tl.program_id(0) * BLOCK_M


@triton.jit
def _key_stages(start_m, Tq, Tk, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(offset, full_end, hi) of a query block: keys [0, full_end) are seen by every row of the block
    (no mask), [full_end, hi) need the causal and Tk-bound masks; offset = Tk - Tq shifts the
    diagonal right (bottom-right alignment)."""
    offset = Tk - Tq
    if CAUSAL:
        # keys every row of this block sees: j <= start_m + offset
        full_end = ((start_m + offset + 1) // BLOCK_N) * BLOCK_N
        hi = tl.minimum(Tk, start_m + BLOCK_M + offset)
    else:
        full_end = (Tk // BLOCK_N) * BLOCK_N
        hi = Tk
    return offset, full_end, hi


@triton.jit
def _kv_block(k_base, v_base, stride_kt, stride_vt, start_n, offs_d, D, Tk, BLOCK_N: tl.constexpr):
    """(key indices, K tile, V tile) of keys [start_n, start_n + BLOCK_N); rows past Tk load as 0."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    kv_mask = (offs_n[:, None] < Tk) & (offs_d[None, :] < D)
    k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
    return offs_n, k, v


@triton.jit
def _seen(offs_m, offs_n, Tk, offset, CAUSAL: tl.constexpr):
    """(queries, keys) tile: which pairs of a masked block are seen (key < Tk and, causal, key <=
    query + offset)."""
    keep = offs_n[None, :] < Tk
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= offs_m[:, None] + offset)
    return keep


# ------------------------------------------------------------------------------ forward
@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, start_m, offs_d, D, Tk, offset,
               qk_scale, lo, hi, drop, MASKED: tl.constexpr, NONFINITE: tl.constexpr, CAUSAL: tl.constexpr,
               PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr):
    """Online softmax over key blocks [lo, hi). MASKED adds the causal and Tk-bound masks, NONFINITE
    the P·V dot of _dot_seen. drop:
    (seed_lo, seed_hi, threshold, keep_scale, b, h), read when DROPOUT."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n, k, v = _kv_block(k_base, v_base, stride_kt, stride_vt, start_n, offs_d, D, Tk, BLOCK_N)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # log2 units
        if MASKED:
            s = tl.where(_seen(offs_m, offs_n, Tk, offset, CAUSAL), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            seed_lo, seed_hi, threshold, keep_scale, b, h = drop
            kept = dropout_kept(seed_lo, seed_hi, threshold, b, h, start_m, start_n, BLOCK_M, BLOCK_N)
            p = tl.where(kept, p * keep_scale, 0.0)
        acc = acc * alpha[:, None]
        if NONFINITE:  # seen: key < Tk (rows past Tk load as 0) and, causal, key <= query + offset
            last_key = offs_m + offset if CAUSAL else tl.full([BLOCK_M], Tk, tl.int32)
            acc = _dot_seen(acc, p.to(v.dtype), v, last_key, offs_n, PRECISION)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attn_fwd_kernel(Q, K, V, O, O_LO, LSE,
                    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
                    H, GROUP, Tq, Tk, D, scale, seed_lo, seed_hi, threshold, keep_scale, SEQ_BUCKET,
                    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, DROPOUT: tl.constexpr,
                    HAS_LO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # SEQ_BUCKET is only an autotune key (power-of-two size class of max(Tq, Tk)). O_LO (laid out
    # like O) gets o's rounding residual when HAS_LO (fp16/bf16): the backward's delta needs the fp32 o.
    bh, b, h, hk, start_m = _query_program(H, GROUP, BLOCK_M)
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = scale * 1.4426950408889634  # fold log2(e): softmax in the exp2 domain

    offset, full_end, hi = _key_stages(start_m, Tq, Tk, CAUSAL, BLOCK_M, BLOCK_N)
    drop = (seed_lo, seed_hi, threshold, keep_scale, b, h)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, start_m, offs_d, D, Tk, offset,
                               qk_scale, 0, full_end, drop, False, False, CAUSAL, PRECISION, BLOCK_M, BLOCK_N, DROPOUT)
    if _any_nonfinite(v_base, stride_vt, full_end, hi, Tk, offs_d, D, BLOCK_N):
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, start_m, offs_d, D, Tk,
                                   offset, qk_scale, full_end, hi, drop, True, True, CAUSAL, PRECISION, BLOCK_M,
                                   _half(BLOCK_N), DROPOUT)
    else:
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, start_m, offs_d, D, Tk,
                                   offset, qk_scale, full_end, hi, drop, True, False, CAUSAL, PRECISION, BLOCK_M,
                                   BLOCK_N, DROPOUT)

    o = acc / l_i[:, None]
    o_hi = o.to(O.dtype.element_ty)
    tl.store(o_base + offs_m[:, None] * stride_ot + offs_d[None, :], o_hi, mask=q_mask)
    if HAS_LO:
        o_lo = (o - o_hi.to(tl.float32)).to(O.dtype.element_ty)
        lo_base = O_LO + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
        tl.store(lo_base + offs_m[:, None] * stride_ot + offs_d[None, :], o_lo, mask=q_mask)
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # back to natural log for the contract
    tl.store(LSE + bh.to(tl.int64) * Tq + offs_m, lse, mask=offs_m < Tq)


# ----------------------------------------------------------------------------- backward
@triton.jit
def attn_bwd_preprocess_kernel(O, O_LO, DO, DELTA, stride_ob, stride_oh, stride_ot, stride_lb, stride_lh, stride_lt,
                               stride_db, stride_dh, stride_dt, H, Tq, D, HAS_LO: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta[b, h, i] = sum_d dO * O: the row term of dS = P * (dP - delta). With HAS_LO, O is
    o + o_lo, the forward's fp32 output: the recomputed fp32 P made that O, so delta equals
    sum_j P dP up to fp32 rounding rather than up to an ulp of o in fp16/bf16."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
    do = tl.load(DO + b.to(tl.int64) * stride_db + h.to(tl.int64) * stride_dh + offs_m[:, None] * stride_dt
                 + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    o = tl.load(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_ot
                + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_LO:  # its own sum, after o's: adding o_lo to o first kept three tiles live (sm_90 fp16 spilled)
        o_lo = tl.load(O_LO + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + offs_m[:, None] * stride_lt
                       + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        delta += tl.sum(o_lo * do, 1)
    tl.store(DELTA + bh.to(tl.int64) * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dt, start_n, offs_d,
                D, Tq, offset, qk_scale, lo, hi, drop, MASKED: tl.constexpr, NONFINITE: tl.constexpr,
                PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr):
    """Accumulate one query head's dK, dV for a key block over query blocks [lo, hi).

    Works on transposed scores (keys x queries) so that dK += dSᵀ Q and dV += Pᵀ dO need no
    transposes of the big operands. MASKED adds the causal mask (rows are always bound-masked:
    a padded row loads q = dO = 0 and lse = +inf, so it contributes exactly zero).
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Tq
        mask = row_ok[:, None] & (offs_d[None, :] < D)
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dt + offs_d[None, :], mask=mask, other=0.0)
        lse2 = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(s_t - lse2[None, :])
        if MASKED:
            seen = offs_n[:, None] <= offs_m[None, :] + offset
            p_t = tl.where(seen, p_t, 0.0)
        if DROPOUT:  # O = (P ∘ Z) V with Z = mask / (1 - p): dV takes P ∘ Z, and dP is Z ∘ (dO Vᵀ)
            seed_lo, seed_hi, threshold, keep_scale, b, h = drop
            kept_t = tl.trans(dropout_kept(seed_lo, seed_hi, threshold, b, h, start_m, start_n, BLOCK_M, BLOCK_N))
            z_t = tl.where(kept_t, keep_scale, 0.0)
            dv = tl.dot((p_t * z_t).to(do.dtype), do, dv, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION) * z_t
        else:
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        if MASKED:  # a masked pair: p_t = 0, but dP or delta may be NaN (0 · NaN)
            ds_t = tl.where(seen, ds_t, 0.0)
        if NONFINITE:  # seen: key <= query + offset, i.e. -query <= offset - key
            dk = _dot_seen(dk, ds_t.to(q.dtype), q, offset - offs_n, -offs_m, PRECISION)
        else:
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                         stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                         stride_vb, stride_vh, stride_vt, stride_db, stride_dh, stride_dt,
                         stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
                         H, HKV, GROUP, Tq, Tk, D, scale, seed_lo, seed_hi, threshold, keep_scale, SEQ_BUCKET,
                         CAUSAL: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, DROPOUT: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < Tk) & (offs_d[None, :] < D)
    k = tl.load(K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh + offs_n[:, None] * stride_kt
                + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh + offs_n[:, None] * stride_vt
                + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    qk_scale = scale * 1.4426950408889634

    offset = Tk - Tq
    if CAUSAL:
        # Query rows i >= start_n - offset see some key of this block; rows i >= start_n + BLOCK_N - 1
        # - offset see all of them, so only the blocks before `mid` need the causal mask.
        lo = (tl.maximum(start_n - offset, 0) // BLOCK_M) * BLOCK_M
        mid = lo + tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - offset - lo, 0), BLOCK_M) * BLOCK_M
        mid = tl.minimum(mid, tl.cdiv(Tq, BLOCK_M) * BLOCK_M)
    else:
        lo = 0
        mid = 0
    for g in range(0, GROUP):  # the query heads sharing this K/V head: sum their dK, dV here
        h = hk * GROUP + g
        bh = b * H + h
        q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        do_base = DO + b.to(tl.int64) * stride_db + h.to(tl.int64) * stride_dh
        lse_base = LSE + bh.to(tl.int64) * Tq
        delta_base = DELTA + bh.to(tl.int64) * Tq
        drop = (seed_lo, seed_hi, threshold, keep_scale, b, h)
        if _any_nonfinite(q_base, stride_qt, lo, mid, Tq, offs_d, D, BLOCK_M):
            dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dt, start_n,
                                 offs_d, D, Tq, offset, qk_scale, lo, mid, drop, True, True, PRECISION, BLOCK_M,
                                 BLOCK_N, DROPOUT)
        else:
            dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dt, start_n,
                                 offs_d, D, Tq, offset, qk_scale, lo, mid, drop, True, False, PRECISION, BLOCK_M,
                                 BLOCK_N, DROPOUT)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dt, start_n,
                             offs_d, D, Tq, offset, qk_scale, mid, Tq, drop, False, False, PRECISION, BLOCK_M, BLOCK_N,
                             DROPOUT)
    dk = dk * scale  # dS was taken w.r.t. the scaled scores
    tl.store(DK + b.to(tl.int64) * stride_dkb + hk.to(tl.int64) * stride_dkh + offs_n[:, None] * stride_dkt
             + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b.to(tl.int64) * stride_dvb + hk.to(tl.int64) * stride_dvh + offs_n[:, None] * stride_dvt
             + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, start_m, offs_d, D, Tk, offset,
              qk_scale, lo, hi, drop, MASKED: tl.constexpr, NONFINITE: tl.constexpr, CAUSAL: tl.constexpr,
              PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr):
    """dQ += dS K over key blocks [lo, hi), recomputing P = exp2(S - lse) block by block."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n, k, v = _kv_block(k_base, v_base, stride_kt, stride_vt, start_n, offs_d, D, Tk, BLOCK_N)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.exp2(s - lse2[:, None])
        if MASKED:
            keep = _seen(offs_m, offs_n, Tk, offset, CAUSAL)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if DROPOUT:
            seed_lo, seed_hi, threshold, keep_scale, b, h = drop
            kept = dropout_kept(seed_lo, seed_hi, threshold, b, h, start_m, start_n, BLOCK_M, BLOCK_N)
            dp = tl.where(kept, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if MASKED:  # a masked pair: p = 0, but dP or delta may be NaN (0 · NaN)
            ds = tl.where(keep, ds, 0.0)
        if NONFINITE:
            last_key = offs_m + offset if CAUSAL else tl.full([BLOCK_M], Tk, tl.int32)
            dq = _dot_seen(dq, ds.to(k.dtype), k, last_key, offs_n, PRECISION)
        else:
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                       stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                       stride_vb, stride_vh, stride_vt, stride_db, stride_dh, stride_dt,
                       stride_dqb, stride_dqh, stride_dqt,
                       H, GROUP, Tq, Tk, D, scale, seed_lo, seed_hi, threshold, keep_scale, SEQ_BUCKET,
                       CAUSAL: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, DROPOUT: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh, b, h, hk, start_m = _query_program(H, GROUP, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Tq
    mask = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qt
                + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_db + h.to(tl.int64) * stride_dh + offs_m[:, None] * stride_dt
                 + offs_d[None, :], mask=mask, other=0.0)
    lse2 = tl.load(LSE + bh.to(tl.int64) * Tq + offs_m, mask=row_ok, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + bh.to(tl.int64) * Tq + offs_m, mask=row_ok, other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = scale * 1.4426950408889634

    offset, full_end, hi = _key_stages(start_m, Tq, Tk, CAUSAL, BLOCK_M, BLOCK_N)
    drop = (seed_lo, seed_hi, threshold, keep_scale, b, h)
    dq = _dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, start_m, offs_d, D, Tk, offset,
                   qk_scale, 0, full_end, drop, False, False, CAUSAL, PRECISION, BLOCK_M, BLOCK_N, DROPOUT)
    if _any_nonfinite(k_base, stride_kt, full_end, hi, Tk, offs_d, D, BLOCK_N):
        dq = _dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, start_m, offs_d, D, Tk, offset,
                       qk_scale, full_end, hi, drop, True, True, CAUSAL, PRECISION, BLOCK_M, _half(BLOCK_N), DROPOUT)
    else:
        dq = _dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, start_m, offs_d, D, Tk, offset,
                       qk_scale, full_end, hi, drop, True, False, CAUSAL, PRECISION, BLOCK_M, BLOCK_N, DROPOUT)
    dq = dq * scale
    tl.store(DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh + offs_m[:, None] * stride_dqt
             + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers
KERNELS = {  # family -> raw @triton.jit kernel (the compile test and gpu-report walk this too)
    C.ATTN_FWD: attn_fwd_kernel,
    C.ATTN_BWD_DKDV: attn_bwd_dkdv_kernel,
    C.ATTN_BWD_DQ: attn_bwd_dq_kernel,
}
PREPROCESS_BLOCK_M = 64


def block_d(d: int) -> int:
    """Padded head dim: a power of two (tl.arange needs one) and >= 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(d))


def precision(dtype: torch.dtype) -> str:
    """IEEE fp32 dots for float32 inputs (TF32 misses 1e-5), tensor-core default otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


def seq_bucket(tq: int, tk: int) -> int:
    """Autotune key: the size class of the sequence, so decoding (Tq = 1, Tk growing) does not
    re-tune at every step."""
    return min(triton.next_power_of_2(max(tq, tk)), 4096)


def _arch(device: torch.device):
    return None if device.type == "cpu" else C.arch_of(torch.cuda.get_device_capability(device))


@functools.cache
def tuned(family: str, arch):
    """The autotuned form of a family's kernel for one GPU generation (None: the interpreter)."""
    return triton.autotune(C.configs(family, arch), key=["SEQ_BUCKET", "BLOCK_D", "CAUSAL", "PRECISION", "DROPOUT"],
                           prune_configs_by={"early_config_prune": C.prune_for_head_dim})(KERNELS[family])


def _launch(family, grid_fn, args, meta, device, config):
    """Run a family's kernel: autotuned, or with one explicit triton.Config (tests, reports)."""
    if config is None:
        tuned(family, _arch(device))[grid_fn](*args, **meta)
    else:
        KERNELS[family][grid_fn(config.kwargs)](*args, **meta, **config.all_kwargs())  # as the autotuner passes it


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    """Kernels index the head dim with stride 1; every other stride is honoured as given."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _s(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _dropout_args(dropout_p: float, seed):
    """(seed_lo, seed_hi, threshold, keep_scale) kernel arguments and the DROPOUT switch (zeros and
    False without dropout)."""
    if dropout_p == 0:
        return (0, 0, 0, 1.0), False
    k0, k1 = dropout.keys(int(seed))
    return (k0, k1, dropout.threshold(dropout_p), 1.0 / (1.0 - dropout_p)), True


def attn_fwd(q, k, v, scale: float, causal: bool, dropout_p: float = 0.0, seed=None, configs=None):
    """(o, lse, o_lo) for q (B,H,Tq,D), k/v (B,Hkv,Tk,D); o_lo: o's rounding residual for fp16/bf16,
    empty for fp32 (csrc/schemas.h). configs: {family: triton.Config} to bypass autotune."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    o = torch.empty((b, h, tq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, tq), dtype=torch.float32, device=q.device)
    has_lo = q.dtype != torch.float32
    o_lo = torch.empty_like(o) if has_lo else o.new_empty((0,))
    drop, with_dropout = _dropout_args(dropout_p, seed)
    # Without a residual, O_LO is o itself: a valid pointer the HAS_LO=False kernel never touches.
    args = (q, k, v, o, o_lo if has_lo else o, lse, *_s(q), *_s(k), *_s(v), *_s(o), h, h // hkv, tq, tk, d,
            float(scale), *drop, seq_bucket(tq, tk))
    meta = dict(CAUSAL=causal, PRECISION=precision(q.dtype), BLOCK_D=block_d(d), DROPOUT=with_dropout,
                HAS_LO=has_lo)
    _launch(C.ATTN_FWD, lambda m: (triton.cdiv(tq, m["BLOCK_M"]), b * h), args, meta, q.device,
            (configs or {}).get(C.ATTN_FWD))
    return o, lse, o_lo


def attn_bwd(do, q, k, v, o, lse, o_lo, scale: float, causal: bool, dropout_p: float = 0.0, seed=None,
             configs=None):
    """(dq, dk, dv); dk/dv have k's shape, summed over the query heads of each GQA group. o_lo: the
    forward's residual of o, or empty (delta from o alone)."""
    do, q, k, v, o = (_unit_last(t) for t in (do, q, k, v, o))
    has_lo = o_lo.numel() > 0 and q.dtype != torch.float32
    o_lo = _unit_last(o_lo) if has_lo else o
    lse = lse.contiguous()
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    bd, prec, bucket = block_d(d), precision(q.dtype), seq_bucket(tq, tk)
    configs = configs or {}

    delta = torch.empty((b, h, tq), dtype=torch.float32, device=q.device)
    attn_bwd_preprocess_kernel[(triton.cdiv(tq, PREPROCESS_BLOCK_M), b * h)](
        o, o_lo, do, delta, *_s(o), *_s(o_lo), *_s(do), h, tq, d, HAS_LO=has_lo, BLOCK_M=PREPROCESS_BLOCK_M,
        BLOCK_D=bd)

    dq = torch.empty((b, h, tq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, hkv, tk, d), dtype=k.dtype, device=q.device)
    dv = torch.empty((b, hkv, tk, d), dtype=v.dtype, device=q.device)
    drop, with_dropout = _dropout_args(dropout_p, seed)
    meta = dict(CAUSAL=causal, PRECISION=prec, BLOCK_D=bd, DROPOUT=with_dropout)
    args = (q, k, v, do, lse, delta, dk, dv, *_s(q), *_s(k), *_s(v), *_s(do), *_s(dk), *_s(dv),
            h, hkv, h // hkv, tq, tk, d, float(scale), *drop, bucket)
    _launch(C.ATTN_BWD_DKDV, lambda m: (triton.cdiv(tk, m["BLOCK_N"]), b * hkv), args, meta, q.device,
            configs.get(C.ATTN_BWD_DKDV))
    args = (q, k, v, do, lse, delta, dq, *_s(q), *_s(k), *_s(v), *_s(do), *_s(dq),
            h, h // hkv, tq, tk, d, float(scale), *drop, bucket)
    _launch(C.ATTN_BWD_DQ, lambda m: (triton.cdiv(tq, m["BLOCK_M"]), b * h), args, meta, q.device,
            configs.get(C.ATTN_BWD_DQ))
    return dq, dk, dv

"""Fused LoRA linear in Triton: y = x Wᵀ + b + scale · (x Aᵀ) Bᵀ, written once.

One kernel does all the work, forward and backward:

    Y[m, n] = alpha · Σ_k X[m, k] W[n, k]  +  scale · Σ_r XA[m, r] Bm[n, r]  +  bias[n]

Each program owns one (BLOCK_M, BLOCK_N) output tile: it accumulates X Wᵀ over K in float32, then
adds the low-rank term and the bias in the epilogue, and stores Y once. Every operand is given by
(row, column) strides, so a transposed operand is just a strided view — that is how the same
kernel computes every product of the backward without copies:

    xa = x Aᵀ                        X=x,    W=A                 (N, r), float32
    y  = x Wᵀ + b + s·xa Bᵀ          X=x,    W=W, XA=xa, Bm=B
    g  = dy B                        X=dy,   W=Bᵀ                (N, r), float32
    dx = dy W + s·g A                X=dy,   W=Wᵀ, XA=g, Bm=Aᵀ
    dA = s · gᵀ x                    X=gᵀ,   W=xᵀ, alpha=s
    dB = s · dyᵀ xa                  X=dyᵀ,  W=xaᵀ, alpha=s
    dW = dyᵀ x  (only if needed)     X=dyᵀ,  W=xᵀ
    db = Σ_rows dy (only if needed)  a column-sum kernel

xa and g are stored in float32 (they are tiny: N × r, and the contract keeps xa in float32). With
fp16/bf16 inputs every dot runs on tensor cores: a float32 operand is rounded to the input dtype
first, as the eager composition would have rounded it. Float32 inputs use IEEE fp32 dots, because
TF32 would miss the contract's 1e-5 tolerance.
"""

import functools

import torch
import triton
import triton.language as tl

from . import configs as C


@triton.jit
def _tile(P, rows, cols, stride_r, stride_c, rows_ok, cols_ok):
    """The (rows, cols) tile of a strided matrix, 0 outside it: every operand load of the kernels."""
    return tl.load(P + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=rows_ok[:, None] & cols_ok[None, :],
                   other=0.0)


@triton.jit
def lora_matmul_kernel(X, W, XA, BM, BIAS, Y, M, N, K, R,
                       stride_xm, stride_xk, stride_wn, stride_wk, stride_am, stride_ar,
                       stride_bn, stride_br, stride_ym, stride_yn, alpha, scale,
                       HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
                       PRECISION: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped tile order: GROUP_M row-tiles share their W column-tiles while those are in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    offs_m64 = offs_m.to(tl.int64)  # N·K can exceed 2³¹ elements
    offs_n64 = offs_n.to(tl.int64)

    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = _tile(X, offs_m64, offs_k, stride_xm, stride_xk, m_ok, k_ok)
        w = _tile(W, offs_k, offs_n64, stride_wk, stride_wn, k_ok, n_ok)  # (BLOCK_K, BLOCK_N) = Wᵀ tile
        if DOT_F32:
            acc += tl.dot(x, w, input_precision=PRECISION)
        elif x.dtype == tl.float32:  # a float32 statistic (g, xa) meets a 16-bit operand:
            acc += tl.dot(x.to(w.dtype), w)  # round it to 16 bits and use tensor cores
        else:
            acc += tl.dot(x, w.to(x.dtype))
    acc = acc * alpha

    if HAS_LORA:  # epilogue: the rank-r update of this tile, from float32 XA
        low = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for r0 in range(0, R, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            r_ok = offs_r < R
            xa = _tile(XA, offs_m64, offs_r, stride_am, stride_ar, m_ok, r_ok)
            bm = _tile(BM, offs_r, offs_n64, stride_br, stride_bn, r_ok, n_ok)
            # In bm's dtype: tensor cores for fp16/bf16 (an fp32 FMA dot here made ptxas spill
            # ~3 KB/thread on sm_80), IEEE fp32 for float32 inputs.
            low += tl.dot(xa.to(bm.dtype), bm, input_precision=PRECISION)
        acc += scale * low
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m64[:, None] * stride_ym + offs_n64[None, :] * stride_yn, acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def colsum_kernel(X, OUT, M, N, stride_xm, stride_xn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """OUT[n] = Σ_m X[m, n] in float32 (the bias gradient)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        x = _tile(X, offs_m.to(tl.int64), offs_n, stride_xm, stride_xn, offs_m < M, offs_n < N)
        acc += tl.sum(x.to(tl.float32), 0)
    tl.store(OUT + offs_n, acc.to(OUT.dtype.element_ty), mask=offs_n < N)


COLSUM_BLOCK = (64, 64)


@functools.cache
def tuned(arch):
    """The autotuned matmul for one GPU generation (None: the interpreter's single config)."""
    return triton.autotune(C.configs(C.LORA, arch), key=["M", "N", "K", "HAS_LORA", "DOT_F32"])(lora_matmul_kernel)


def _arch(device: torch.device):
    return None if device.type == "cpu" else C.arch_of(torch.cuda.get_device_capability(device))


def block_r(r: int) -> int:
    return min(64, max(16, triton.next_power_of_2(r)))


def matmul(x, w, out_dtype, *, alpha=1.0, xa=None, bm=None, scale=0.0, bias=None, config=None):
    """alpha · x wᵀ [+ scale · xa bmᵀ] [+ bias] for x (M, K), w (N, K), xa (M, R), bm (N, R).

    Any strides (views such as .t() are read in place). config: one triton.Config, else autotuned.
    """
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)
    has_lora = xa is not None
    r = xa.shape[1] if has_lora else 1
    dot_f32 = x.dtype == w.dtype == torch.float32  # else 16-bit tensor-core dots
    xa_ = xa if has_lora else y  # placeholders: never read when the flag is off
    bm_ = bm if has_lora else y
    args = (x, w, xa_, bm_, bias if bias is not None else y, y, m, n, k, r,
            x.stride(0), x.stride(1), w.stride(0), w.stride(1), xa_.stride(0), xa_.stride(1),
            bm_.stride(0), bm_.stride(1), y.stride(0), y.stride(1), float(alpha), float(scale))
    meta = dict(HAS_LORA=has_lora, HAS_BIAS=bias is not None, DOT_F32=dot_f32,
                PRECISION="ieee" if dot_f32 else "tf32", BLOCK_R=block_r(r))

    def grid(c):
        return (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(n, c["BLOCK_N"]),)

    if config is None:
        tuned(_arch(x.device))[grid](*args, **meta)
    else:
        lora_matmul_kernel[grid(config.kwargs)](*args, **meta, **config.kwargs, num_warps=config.num_warps,
                                                num_stages=config.num_stages)
    return y


def colsum(x, out_dtype):
    m, n = x.shape
    out = torch.empty((n,), dtype=out_dtype, device=x.device)
    bm, bn = COLSUM_BLOCK
    colsum_kernel[(triton.cdiv(n, bn),)](x, out, m, n, x.stride(0), x.stride(1), BLOCK_M=bm, BLOCK_N=bn)
    return out


def lora_fwd(x, weight, bias, lora_a, lora_b, scale: float, config=None):
    """(y, xa) for x (N, in): y in x's dtype, xa = x Aᵀ in float32."""
    xa = matmul(x, lora_a, torch.float32, config=config)
    y = matmul(x, weight, x.dtype, xa=xa, bm=lora_b, scale=scale, bias=bias, config=config)
    return y, xa


def lora_bwd(dy, x, weight, lora_a, lora_b, xa, scale: float, need_dweight: bool, need_dbias: bool, config=None):
    """(dx, dweight, dbias, dlora_a, dlora_b); dweight/dbias are empty (numel 0) when not needed."""
    dt = x.dtype
    g = matmul(dy, lora_b.t(), torch.float32, config=config)  # dy B: (N, r)
    dx = matmul(dy, weight.t(), dt, xa=g, bm=lora_a.t(), scale=scale, config=config)
    da = matmul(g.t(), x.t(), dt, alpha=scale, config=config)
    dbm = matmul(dy.t(), xa.t(), dt, alpha=scale, config=config)
    dw = matmul(dy.t(), x.t(), dt, config=config) if need_dweight else x.new_empty((0,))
    db = colsum(dy, dt) if need_dbias else x.new_empty((0,))
    return dx, dw, db, da, dbm

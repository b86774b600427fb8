// Plain-C++ descriptions of a kernel call (no CUDA, no torch): what the torch glue fills in and
// the launchers (launchers.cuh) turn into grids. Shared by csrc/cuda/ops_cuda.cu (real GPU) and
// csrc/cuda/ops_emu.cpp (the same kernels under the CPU emulator).
#pragma once

#include <cstdint>

#include "../dropout_rng.h"
#include "../heads.h"

namespace babygpt::cuda {

enum class DType { f32, f16, bf16 };

// A (B, heads, T, D) tensor read in place (csrc/heads.h, shared with the CPU kernels), its element
// type named by the kernel that reads it.
using Heads = StridedHeads<void>;

// q, o, dout, dq: (B, H, Tq, D); k, v, dk, dv: (B, Hkv, Tk, D), element type per DType;
// lse, delta: (B, H, Tq) fp32, contiguous. o_lo / out_lo: the rounding residual of o for fp16/bf16
// (csrc/schemas.h), p == nullptr when there is none (fp32, or a backward given an empty o_lo).
struct AttnParams {
  Heads q, k, v, o, o_lo, dout;  // inputs (o, o_lo and dout: the backward's)
  Heads out, out_lo, dq, dk, dv;  // outputs (out, out_lo: the forward's o, o_lo)
  const float* lse;
  float *lse_out, *delta;  // delta: (B, H, Tq) fp32 scratch of the backward
  int B, H, Hkv, Tq, Tk, D;
  float scale;
  bool causal;
  dropout::Rng rng;  // attention dropout; rng.threshold == 0: none (the kernels skip the generator)
};

// A strided matrix in global memory: element (i, j) is p[i * rs + j * cs]. Strides let one GEMM
// read x, xᵀ, Wᵀ... without copies. `f32` says p holds floats rather than the kernel's T (the
// LoRA kernels read the fp32 intermediates xa and dy·B through the same loader).
struct Mat {
  const void* p;
  int64_t rs, cs;
  bool f32;
};

// C (M x N) = alpha1 · A1 (M x K1) · B1 (K1 x N) + alpha2 · A2 (M x K2) · B2 (K2 x N) + bias (N),
// accumulated in fp32 and written once, as T or (c_f32) as float. The LoRA forward is one such
// call with (x, Wᵀ) and (xa, Bᵀ): the low-rank term is fused into the epilogue of the output tile.
struct GemmParams {
  Mat a1, b1, a2, b2;
  int M, N, K1, K2;
  float alpha1, alpha2;
  const void* bias;  // T, may be null
  void* c;
  int64_t ldc;
  bool c_f32;
};

// out[j] = Σ_i x[i, j] for x (rows, cols) contiguous, written as T (the bias gradient).
struct ColsumParams {
  const void* x;
  void* out;
  int rows, cols;
};

}  // namespace babygpt::cuda

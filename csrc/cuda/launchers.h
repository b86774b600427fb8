// Host entry points of the CUDA kernels: raw pointers in, a cudaError_t out (the launch's
// status). Defined in launchers.cuh, which is compiled by nvcc in kernels.cu (real GPUs) and by
// g++ in csrc/emu/ops_emu.cpp (CPU emulation); called by the torch glue (torch_glue.h).
#pragma once

#ifndef CUDAEMU_EMULATED
#include <cuda_runtime_api.h>
#endif

#include "params.h"

namespace babygpt::cuda {

// o, lse from q, k, v (p.out, p.lse_out).
cudaError_t launch_attn_fwd(DType dt, const AttnParams& p, cudaStream_t stream);
// dq, dk, dv from dout, q, k, v, o, lse; p.delta is (B, H, Tq) fp32 scratch.
cudaError_t launch_attn_bwd(DType dt, const AttnParams& p, cudaStream_t stream);
// One fused GEMM (see GemmParams).
cudaError_t launch_gemm(DType dt, const GemmParams& p, cudaStream_t stream);
// out[j] = sum_i x[i, j] for x (rows, cols) contiguous, written as T (the bias gradient).
cudaError_t launch_colsum(DType dt, const void* x, void* out, int rows, int cols, cudaStream_t stream);

// The largest head dimension the kernels take (docs/design.md §2.3: D <= 256).
constexpr int kMaxHeadDim = 256;

}  // namespace babygpt::cuda

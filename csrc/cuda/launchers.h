// Host entry points of the CUDA kernels: a DType and a params struct in, a cudaError_t out (the
// launch's status). Defined in launchers.cuh, compiled by nvcc in launchers.cu (real GPUs) and by
// g++ in ops_emu.cpp (CPU emulation); called by the torch glue (torch_glue.h).
#pragma once

#include "portable.cuh"

#include "params.h"

namespace babygpt::cuda {

// o, lse from q, k, v (p.out, p.lse_out).
cudaError_t launch_attn_fwd(DType dt, const AttnParams& p, cudaStream_t stream);
// dq, dk, dv from dout, q, k, v, o, lse; p.delta is (B, H, Tq) fp32 scratch.
cudaError_t launch_attn_bwd(DType dt, const AttnParams& p, cudaStream_t stream);
// One fused GEMM (see GemmParams).
cudaError_t launch_gemm(DType dt, const GemmParams& p, cudaStream_t stream);
// The column sums of a matrix (see ColsumParams).
cudaError_t launch_colsum(DType dt, const ColsumParams& p, cudaStream_t stream);

}  // namespace babygpt::cuda

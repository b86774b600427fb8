// Definitions of launchers.h: the dispatch from runtime (dtype, D) to the compiled attention
// instances (instances.h), and the kernels that take no head dim (the backward's delta, the LoRA
// GEMM and column sum). Included by exactly one translation unit per build: launchers.cu (nvcc)
// or ops_emu.cpp (g++ + the emulator).
#pragma once

#include <type_traits>

#include "attention_bwd.cuh"
#include "instances.h"
#include "launchers.h"
#include "lora.cuh"

namespace babygpt::cuda {
namespace detail {

template <class F>
cudaError_t with_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::f16: return f(__half{});
    case DType::bf16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// f(std::integral_constant<int, DMAX>) for the head-dim bucket of D (layout.h).
template <class F>
cudaError_t with_dmax(int D, F&& f) {
  static_assert(std::size(kHeadDimBuckets) == 3, "one case per bucket");
  switch (D > 0 ? head_dim_bucket(D) : 0) {
    case kHeadDimBuckets[0]: return f(std::integral_constant<int, kHeadDimBuckets[0]>{});
    case kHeadDimBuckets[1]: return f(std::integral_constant<int, kHeadDimBuckets[1]>{});
    case kHeadDimBuckets[2]: return f(std::integral_constant<int, kHeadDimBuckets[2]>{});
  }
  return cudaErrorInvalidValue;  // D <= 0 or D > kMaxHeadDim
}

}  // namespace detail

cudaError_t launch_attn_fwd(DType dt, const AttnParams& p, cudaStream_t stream) {
  return detail::with_dtype(dt, [&](auto t) {
    using T = decltype(t);
    return detail::with_dmax(p.D, [&](auto dmax) { return launch_attn_fwd_instance<T, dmax.value>(p, stream); });
  });
}

cudaError_t launch_attn_bwd(DType dt, const AttnParams& p, cudaStream_t stream) {
  return detail::with_dtype(dt, [&](auto t) {
    using T = decltype(t);
    const int64_t rows = (int64_t)p.B * p.H * p.Tq;
    BABYGPT_LAUNCH(attn_delta_kernel<T>, dim3((unsigned)((rows + 127) / 128)), dim3(128), 0, stream, p);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    return detail::with_dmax(p.D, [&](auto dmax) { return launch_attn_bwd_instance<T, dmax.value>(p, stream); });
  });
}

cudaError_t launch_gemm(DType dt, const GemmParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return cudaSuccess;
  return detail::with_dtype(dt, [&](auto t) {
    using T = decltype(t);
    const dim3 grid(ceil_div(p.M, GemmTiles::BM), ceil_div(p.N, GemmTiles::BN));
    BABYGPT_LAUNCH(gemm_kernel<T>, grid, dim3(GemmTiles::kThreads), GemmSmem<sizeof(T)>().bytes, stream, p);
    return cudaGetLastError();
  });
}

cudaError_t launch_colsum(DType dt, const ColsumParams& p, cudaStream_t stream) {
  if (p.cols <= 0) return cudaSuccess;
  return detail::with_dtype(dt, [&](auto t) {
    using T = decltype(t);
    BABYGPT_LAUNCH(colsum_kernel<T>, dim3(ceil_div(p.cols, 128)), dim3(128), 0, stream, p);
    return cudaGetLastError();
  });
}

}  // namespace babygpt::cuda

// Definitions of launchers.h: grid shapes, dynamic shared memory, and the dispatch from runtime
// (dtype, D) to the few compiled kernel instances. Included by exactly one translation unit per
// build: kernels.cu (nvcc) or csrc/emu/ops_emu.cpp (g++ + cudaemu).
//
// Instances: 3 dtypes x head-dim buckets {64, 128, 256} -- D is a runtime value inside a bucket
// (tiles are padded to a multiple of 16 and masked), which keeps nvcc's work to 9 kernels per
// attention pass per architecture.
#pragma once

#include <type_traits>

#include "attention_bwd.cuh"
#include "attention_fwd.cuh"
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

template <class F>
cudaError_t with_dmax(int D, F&& f) {
  if (D <= 0 || D > kMaxHeadDim) return cudaErrorInvalidValue;
  if (D <= 64) return f(std::integral_constant<int, 64>{});
  if (D <= 128) return f(std::integral_constant<int, 128>{});
  return f(std::integral_constant<int, 256>{});
}

// Kernels that need more than the default 48 KiB of dynamic shared memory must opt in.
template <class K>
cudaError_t allow_smem(K* kernel, size_t bytes) {
  if (bytes <= (48u << 10)) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

}  // namespace detail

cudaError_t launch_attn_fwd(DType dt, const AttnParams& p, cudaStream_t stream) {
  return detail::with_dtype(dt, [&](auto t) {
    using T = decltype(t);
    return detail::with_dmax(p.D, [&](auto dmax) {
      using Cfg = AttnTiles<T, dmax.value>;
      const size_t smem = sizeof(T) * Cfg::smem_elems(p.D, 1);
      auto* kernel = attn_fwd_kernel<T, dmax.value>;
      if (cudaError_t e = detail::allow_smem(kernel, smem); e != cudaSuccess) return e;
      const dim3 grid(ceil_div(p.Tq, Cfg::BM), p.H, p.B);
      CUDAEMU_LAUNCH(kernel, grid, dim3(Cfg::kThreads), smem, stream, p);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_attn_bwd(DType dt, const AttnParams& p, cudaStream_t stream) {
  return detail::with_dtype(dt, [&](auto t) {
    using T = decltype(t);
    const int64_t rows = (int64_t)p.B * p.H * p.Tq;
    CUDAEMU_LAUNCH(attn_delta_kernel<T>, dim3((unsigned)((rows + 127) / 128)), dim3(128), 0, stream, p);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    return detail::with_dmax(p.D, [&](auto dmax) {
      using Q = AttnTiles<T, dmax.value>;
      const size_t smem_q = sizeof(T) * Q::smem_elems(p.D, 2);
      auto* dq_kernel = attn_dq_kernel<T, dmax.value>;
      if (cudaError_t e = detail::allow_smem(dq_kernel, smem_q); e != cudaSuccess) return e;
      CUDAEMU_LAUNCH(dq_kernel, dim3(ceil_div(p.Tq, Q::BM), p.H, p.B), dim3(Q::kThreads), smem_q, stream, p);
      if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;

      using KV = DkDvTiles<T, dmax.value>;
      const size_t smem_kv = KV::smem_bytes(p.D);
      auto* kv_kernel = attn_dkdv_kernel<T, dmax.value>;
      if (cudaError_t e = detail::allow_smem(kv_kernel, smem_kv); e != cudaSuccess) return e;
      CUDAEMU_LAUNCH(kv_kernel, dim3(ceil_div(p.Tk, KV::BNK), p.Hkv, p.B), dim3(KV::kThreads), smem_kv, stream, p);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_gemm(DType dt, const GemmParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return cudaSuccess;
  return detail::with_dtype(dt, [&](auto t) {
    using T = decltype(t);
    const dim3 grid(ceil_div(p.M, GemmTiles::BM), ceil_div(p.N, GemmTiles::BN));
    CUDAEMU_LAUNCH(gemm_kernel<T>, grid, dim3(GemmTiles::kThreads), GemmTiles::smem_bytes<T>(), stream, p);
    return cudaGetLastError();
  });
}

cudaError_t launch_colsum(DType dt, const void* x, void* out, int rows, int cols, cudaStream_t stream) {
  if (cols <= 0) return cudaSuccess;
  return detail::with_dtype(dt, [&](auto t) {
    using T = decltype(t);
    CUDAEMU_LAUNCH(colsum_kernel<T>, dim3(ceil_div(cols, 128)), dim3(128), 0, stream, static_cast<const T*>(x),
                   static_cast<T*>(out), rows, cols);
    return cudaGetLastError();
  });
}

}  // namespace babygpt::cuda

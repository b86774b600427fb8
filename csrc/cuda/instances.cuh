// Definitions of the attention instances declared in instances.h: the forward launch and the
// backward's dQ and dK/dV launches of one (element type, head-dim bucket), with their grids and
// dynamic shared memory (layout.h). A translation unit that includes this file compiles the
// instances it names with BABYGPT_ATTN_INSTANCE: one each in instances/*.cu (nvcc), all of them
// in ops_emu.cpp (the emulator build).
#pragma once

#include "attention_bwd.cuh"
#include "attention_fwd.cuh"
#include "instances.h"

namespace babygpt::cuda {

// One attention kernel launched with `smem` bytes of dynamic shared memory: more than the default
// 48 KiB needs the kernel's opt-in first.
template <class K>
cudaError_t launch_attn(K* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const AttnParams& p) {
  if (smem > (48u << 10)) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
  }
  BABYGPT_LAUNCH(kernel, grid, block, smem, stream, p);
  return cudaGetLastError();
}

template <class T, int DMAX>
cudaError_t launch_attn_fwd_instance(const AttnParams& p, cudaStream_t stream) {
  using Tiles = AttnTiles<sizeof(T), DMAX>;
  return launch_attn(attn_fwd_kernel<T, DMAX>, dim3(ceil_div(p.Tq, Tiles::BM), p.H, p.B), dim3(Tiles::kThreads),
                     AttnSmem<sizeof(T), DMAX>(p.D, /*with_dout=*/false).bytes, stream, p);
}

// After attn_delta_kernel has filled p.delta: dQ per query tile, dK and dV per key tile.
template <class T, int DMAX>
cudaError_t launch_attn_bwd_instance(const AttnParams& p, cudaStream_t stream) {
  using QTiles = AttnTiles<sizeof(T), DMAX>;
  using KVTiles = DkDvTiles<sizeof(T), DMAX>;
  if (cudaError_t e = launch_attn(attn_dq_kernel<T, DMAX>, dim3(ceil_div(p.Tq, QTiles::BM), p.H, p.B),
                                  dim3(QTiles::kThreads), AttnSmem<sizeof(T), DMAX>(p.D, /*with_dout=*/true).bytes,
                                  stream, p);
      e != cudaSuccess)
    return e;
  return launch_attn(attn_dkdv_kernel<T, DMAX>, dim3(ceil_div(p.Tk, KVTiles::BNK), p.Hkv, p.B),
                     dim3(KVTiles::kThreads), DkDvSmem<sizeof(T), DMAX>(p.D).bytes, stream, p);
}

// Compiles the instance (T, DMAX) in this translation unit (inside namespace babygpt::cuda).
#define BABYGPT_ATTN_INSTANCE(T, DMAX)                                                       \
  template cudaError_t launch_attn_fwd_instance<T, DMAX>(const AttnParams&, cudaStream_t); \
  template cudaError_t launch_attn_bwd_instance<T, DMAX>(const AttnParams&, cudaStream_t);

}  // namespace babygpt::cuda

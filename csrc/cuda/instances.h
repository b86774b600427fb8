// The attention kernel instances: one per (element type T, head-dim bucket DMAX), each compiled in
// its own translation unit (instances/*.cu, defined by instances.cuh) so that ninja builds them in
// parallel, as FlashAttention does; launchers.cuh picks one per call from the runtime (dtype, D).
#pragma once

#include "portable.cuh"

#include "params.h"

namespace babygpt::cuda {

// Every (T, DMAX) compiled: 3 element types x the buckets of layout.h's kHeadDimBuckets.
#define BABYGPT_ATTN_INSTANCES(X)                                                     \
  X(float, 64) X(float, 128) X(float, 256) X(__half, 64) X(__half, 128) X(__half, 256) \
  X(__nv_bfloat16, 64) X(__nv_bfloat16, 128) X(__nv_bfloat16, 256)

// o, lse (the forward's launch).
template <class T, int DMAX>
cudaError_t launch_attn_fwd_instance(const AttnParams& p, cudaStream_t stream);
// dq, dk, dv (the backward's dQ and dK/dV launches), once p.delta is filled.
template <class T, int DMAX>
cudaError_t launch_attn_bwd_instance(const AttnParams& p, cudaStream_t stream);

// Compiled elsewhere: a translation unit that sees the definitions does not instantiate them
// again unless it names them with BABYGPT_ATTN_INSTANCE.
#define BABYGPT_EXTERN_ATTN_INSTANCE(T, DMAX)                                                       \
  extern template cudaError_t launch_attn_fwd_instance<T, DMAX>(const AttnParams&, cudaStream_t); \
  extern template cudaError_t launch_attn_bwd_instance<T, DMAX>(const AttnParams&, cudaStream_t);
BABYGPT_ATTN_INSTANCES(BABYGPT_EXTERN_ATTN_INSTANCE)
#undef BABYGPT_EXTERN_ATTN_INSTANCE

}  // namespace babygpt::cuda

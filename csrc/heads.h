// How every attention kernel reads a (B, heads, T, D) tensor in place: the CPU kernels
// (csrc/cpu/attention.cpp) and the CUDA kernels (csrc/cuda/params.h), on a GPU and under the
// emulator. Plain C++ with no torch or CUDA header, so host code, nvcc and the emulator's g++
// build all compile it.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define BABYGPT_HOST_DEVICE __host__ __device__
#else
#define BABYGPT_HOST_DEVICE
#endif

namespace babygpt {

// Element (b, h, t, d) is p[b * sb + h * sh + t * st + d]: only the last dimension must be
// contiguous. The views a GPT layer hands over (a fused qkv projection split into q, k, v, each
// transposed to (B, H, T, D); the gradient of such a transpose) have this form, so the kernels read
// them without a copy, as FlashAttention's params do. Elem is the element type, or void where one
// parameter struct serves every dtype (the CUDA launchers'); the kernel, which knows the type, then
// names it: at<const __half>(b, h).
template <class Elem>
struct StridedHeads {
  Elem* p;
  int64_t sb, sh, st;
  // Row 0 of head h of batch b; row t starts st elements further on.
  template <class T = Elem>
  BABYGPT_HOST_DEVICE T* at(int64_t b, int64_t h) const {
    return static_cast<T*>(p) + b * sb + h * sh;
  }
};

}  // namespace babygpt

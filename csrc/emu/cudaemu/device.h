// cudaemu/device.h -- the device-side API kernels call: barriers, warp intrinsics, math
// intrinsics, and the half/bfloat16 intrinsics the toolkit only declares for the device
// (atomics and fences: spin.h).
// Part of csrc/emu/cudaemu.h. Everything here is in the global namespace, like in CUDA.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <type_traits>

#define CUDAEMU_HERE std::source_location loc = std::source_location::current()

// ------------------------------------------------------------------------------ barriers
inline void __syncthreads(CUDAEMU_HERE) {
  cudaemu::sync_block(cudaemu::BarOp::plain, 0, cudaemu::site("__syncthreads", loc));
}
inline int __syncthreads_count(int pred, CUDAEMU_HERE) {
  return cudaemu::sync_block(cudaemu::BarOp::count, pred, cudaemu::site("__syncthreads_count", loc));
}
inline int __syncthreads_and(int pred, CUDAEMU_HERE) {
  return cudaemu::sync_block(cudaemu::BarOp::all, pred, cudaemu::site("__syncthreads_and", loc));
}
inline int __syncthreads_or(int pred, CUDAEMU_HERE) {
  return cudaemu::sync_block(cudaemu::BarOp::any, pred, cudaemu::site("__syncthreads_or", loc));
}
inline void __syncwarp(unsigned mask = 0xffffffffu, CUDAEMU_HERE) {
  cudaemu::warp_collective(cudaemu::WarpOp::sync, mask, 0, -1, cudaemu::site("__syncwarp", loc));
}
// --------------------------------------------------------------------------- warp shuffles
namespace cudaemu {
// One shuffle: 'src' is the lane this lane reads, or -1 when CUDA says it keeps its own value.
template <class T>
inline T shuffle(unsigned mask, T var, int src, int width, const char* what, const std::source_location& loc) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "__shfl_*_sync: types of at most 8 bytes");
  if (width < 1 || width > 32 || (width & (width - 1))) {
    Lock lk(*tl_block);
    fail(*tl_block, format("bad shuffle: %s calls %s with width %d (must be a power of two in [1, 32])",
                           who(*tl_block, *tl_thread).c_str(), where(site(what, loc)).c_str(), width));
    unwind();
  }
  uint64_t v = 0;
  std::memcpy(&v, &var, sizeof(T));
  uint64_t r = warp_collective(WarpOp::shfl, mask, v, src, site(what, loc));
  T out;
  std::memcpy(static_cast<void*>(&out), &r, sizeof(T));
  return out;
}
inline int lane_id() { return (int)(tl_thread->flat % 32); }
}  // namespace cudaemu

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32, CUDAEMU_HERE) {
  int lane = cudaemu::lane_id();
  int src = (lane & ~(width - 1)) | (srcLane & (width - 1));
  return cudaemu::shuffle(mask, var, src, width, "__shfl_sync", loc);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, CUDAEMU_HERE) {
  int lane = cudaemu::lane_id();
  int src = (unsigned)(lane & (width - 1)) >= delta ? lane - (int)delta : -1;
  return cudaemu::shuffle(mask, var, src, width, "__shfl_up_sync", loc);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, CUDAEMU_HERE) {
  int lane = cudaemu::lane_id();
  int src = (lane & (width - 1)) + delta < (unsigned)width ? lane + (int)delta : -1;
  return cudaemu::shuffle(mask, var, src, width, "__shfl_down_sync", loc);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32, CUDAEMU_HERE) {
  int lane = cudaemu::lane_id();
  int src = lane ^ laneMask;
  // Lanes may read earlier groups of 'width' lanes but not later ones (they keep their value).
  if (src < 0 || src > 31 || src >= (lane & ~(width - 1)) + width) src = -1;
  return cudaemu::shuffle(mask, var, src, width, "__shfl_xor_sync", loc);
}

// ------------------------------------------------------------------------- warp votes
inline unsigned __ballot_sync(unsigned mask, int pred, CUDAEMU_HERE) {
  return (unsigned)cudaemu::warp_collective(cudaemu::WarpOp::ballot, mask, pred != 0, -1, cudaemu::site("__ballot_sync", loc));
}
inline int __any_sync(unsigned mask, int pred, CUDAEMU_HERE) {
  return (int)cudaemu::warp_collective(cudaemu::WarpOp::any, mask, pred != 0, -1, cudaemu::site("__any_sync", loc));
}
inline int __all_sync(unsigned mask, int pred, CUDAEMU_HERE) {
  return (int)cudaemu::warp_collective(cudaemu::WarpOp::all, mask, pred != 0, -1, cudaemu::site("__all_sync", loc));
}
// The emulator cannot know which lanes the hardware would have converged; it answers with
// the lanes of the warp that exist and have not exited.
inline unsigned __activemask() {
  cudaemu::Block& b = *cudaemu::tl_block;
  unsigned w = cudaemu::tl_thread->flat / 32, m = 0;
  for (unsigned l = 0; l < 32 && w * 32 + l < b.n; ++l) m |= (unsigned)!b.threads[w * 32 + l].done << l;
  return m;
}
#define CUDAEMU_REDUCE(name, op, T)                                                                      \
  inline T name(unsigned mask, T value, CUDAEMU_HERE) {                                                  \
    uint32_t bits;                                                                                       \
    std::memcpy(&bits, &value, 4);                                                                       \
    uint64_t r = cudaemu::warp_collective(cudaemu::WarpOp::op, mask, bits, -1, cudaemu::site(#name, loc)); \
    T out;                                                                                               \
    uint32_t r32 = (uint32_t)r;                                                                          \
    std::memcpy(&out, &r32, 4);                                                                          \
    return out;                                                                                          \
  }
CUDAEMU_REDUCE(__reduce_add_sync, add, unsigned)
CUDAEMU_REDUCE(__reduce_add_sync, add, int)
CUDAEMU_REDUCE(__reduce_min_sync, umin, unsigned)
CUDAEMU_REDUCE(__reduce_min_sync, imin, int)
CUDAEMU_REDUCE(__reduce_max_sync, umax, unsigned)
CUDAEMU_REDUCE(__reduce_max_sync, imax, int)
CUDAEMU_REDUCE(__reduce_and_sync, band, unsigned)
CUDAEMU_REDUCE(__reduce_or_sync, bor, unsigned)
CUDAEMU_REDUCE(__reduce_xor_sync, bxor, unsigned)
#undef CUDAEMU_REDUCE

// ------------------------------------------------------------------- math intrinsics
// The fast-math intrinsics are computed exactly here (the GPU's __expf etc. are less precise);
// tolerances must therefore come from the GPU's documented error bounds, not from this file.
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline float __int2float_rn(int x) { return (float)x; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
template <class T> inline T __ldg(const T* p) { return *p; }

// CUDA's min/max overloads for device code (std::min would not accept mixed types either).
#define CUDAEMU_MINMAX(T) \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
CUDAEMU_MINMAX(int) CUDAEMU_MINMAX(unsigned) CUDAEMU_MINMAX(long long) CUDAEMU_MINMAX(unsigned long long)
#undef CUDAEMU_MINMAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// --------------------------------------------------------------- half / bfloat16 extras
// cuda_fp16.h / cuda_bf16.h compile on the host and give conversions and basic arithmetic
// there (__float2half, __half2float, __hadd, __hmul, __hmax, __float2bfloat16, ...); these
// are the ones they declare for the device only. Computed in float, then rounded once.
#define CUDAEMU_HALF_UNARY(H, name, expr, to, from) \
  inline H name(H a) { float x = from(a); return to(expr); }
#define CUDAEMU_HALF_FAMILY(H, to, from)                                              \
  inline H __hfma(H a, H b, H c) { return to((float)((double)from(a) * from(b) + from(c))); } \
  CUDAEMU_HALF_UNARY(H, hexp, std::exp(x), to, from)                                 \
  CUDAEMU_HALF_UNARY(H, hexp2, std::exp2(x), to, from)                               \
  CUDAEMU_HALF_UNARY(H, hlog, std::log(x), to, from)                                 \
  CUDAEMU_HALF_UNARY(H, hlog2, std::log2(x), to, from)                               \
  CUDAEMU_HALF_UNARY(H, hsqrt, std::sqrt(x), to, from)                               \
  CUDAEMU_HALF_UNARY(H, hrsqrt, 1.0f / std::sqrt(x), to, from)                       \
  CUDAEMU_HALF_UNARY(H, hrcp, 1.0f / x, to, from)                                    \
  CUDAEMU_HALF_UNARY(H, hfloor, std::floor(x), to, from)                             \
  CUDAEMU_HALF_UNARY(H, hceil, std::ceil(x), to, from)
CUDAEMU_HALF_FAMILY(__half, __float2half_rn, __half2float)
CUDAEMU_HALF_FAMILY(__nv_bfloat16, __float2bfloat16_rn, __bfloat162float)
#undef CUDAEMU_HALF_FAMILY
#undef CUDAEMU_HALF_UNARY
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  return __halves2half2(__hfma(__low2half(a), __low2half(b), __low2half(c)),
                        __hfma(__high2half(a), __high2half(b), __high2half(c)));
}
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return __halves2bfloat162(__hfma(__low2bfloat16(a), __low2bfloat16(b), __low2bfloat16(c)),
                            __hfma(__high2bfloat16(a), __high2bfloat16(b), __high2bfloat16(c)));
}


// tests/emu/kernels.cuh -- correct kernels for the cudaemu self-test. Written once, compiled
// by nvcc (real CUDA) or by g++ against csrc/emu/cudaemu.h (emulated on the CPU).
#pragma once
#include "cudaemu.h"
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum of squares. Grid-stride loop, warp butterfly, static __shared__, __syncthreads, atomicAdd.
__global__ void block_reduce_kernel(const float* __restrict__ x, float* __restrict__ partial,
                                    float* __restrict__ total, int n) {
  __shared__ float warp_sums[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float acc = 0.f;
  for (int i = blockIdx.x * blockDim.x + tid; i < n; i += gridDim.x * blockDim.x) acc += x[i] * x[i];
  acc = warp_sum(acc);
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) / 32;
  if (warp == 0) {
    float v = lane < nwarps ? warp_sums[lane] : 0.f;
    v = warp_sum(v);
    if (lane == 0) {
      partial[blockIdx.x] = v;
      atomicAdd(total, v);
    }
  }
}

// C[M,N] = A[M,K] @ B[K,N]; TILE x TILE tiles of A and B staged in DYNAMIC shared memory.
#define TILE 16
__global__ void tiled_matmul_kernel(const float* A, const float* B, float* C, int M, int N, int K) {
  CUDAEMU_DYNAMIC_SHARED(float, smem);
  float* As = smem;                // [TILE][TILE]
  float* Bs = smem + TILE * TILE;  // [TILE][TILE]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int row = blockIdx.y * TILE + ty, col = blockIdx.x * TILE + tx;
  float acc = 0.f;
  for (int k0 = 0; k0 < K; k0 += TILE) {
    As[ty * TILE + tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.f;
    Bs[ty * TILE + tx] = (col < N && k0 + ty < K) ? B[(k0 + ty) * N + col] : 0.f;
    __syncthreads();
    for (int k = 0; k < TILE; ++k) acc = fmaf(As[ty * TILE + k], Bs[k * TILE + tx], acc);
    __syncthreads();
  }
  if (row < M && col < N) C[row * N + col] = acc;
}

// Inclusive prefix sum of each blockDim.x-long segment: warp scans with __shfl_up_sync, warp
// totals scanned by warp 0 in static __shared__, then added back. Threads past n contribute 0
// but still take part in every shuffle (a full mask needs every lane).
__global__ void block_scan_kernel(const float* x, float* y, int n) {
  __shared__ float warp_tot[32];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) / 32;
  float v = i < n ? x[i] : 0.f;
  for (int d = 1; d < 32; d <<= 1) {
    float up = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += up;
  }
  if (lane == 31) warp_tot[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < nwarps ? warp_tot[lane] : 0.f;
    for (int d = 1; d < 32; d <<= 1) {
      float up = __shfl_up_sync(0xffffffffu, t, d);
      if (lane >= d) t += up;
    }
    if (lane < nwarps) warp_tot[lane] = t;  // inclusive scan of the warp totals
  }
  __syncthreads();
  if (warp > 0) v += warp_tot[warp - 1];
  if (i < n) y[i] = v;
}

// Half/bfloat16: conversions, arithmetic, device-only intrinsics, a 2-byte shuffle, __half2.
// out[k * n + i] for k = 0..7 (see the host reference in selftest.cu).
__global__ void half_math_kernel(const float* x, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const float xv = i < n ? x[i] : 1.f;
  __half h = __float2half(xv);
  __nv_bfloat16 b = __float2bfloat16(xv);
  __half hn = __shfl_xor_sync(0xffffffffu, h, 1);  // neighbour's value, 2-byte payload
  __half2 h2 = __floats2half2_rn(xv, 2.f * xv);
  __half2 sq2 = __hmul2(h2, h2);
  if (i >= n) return;
  out[0 * n + i] = __half2float(h);
  out[1 * n + i] = __bfloat162float(b);
  out[2 * n + i] = __half2float(__hfma(h, h, __float2half(1.f)));
  out[3 * n + i] = __half2float(hexp(__hmul(h, __float2half(0.5f))));
  out[4 * n + i] = __bfloat162float(hsqrt(__habs(b)));
  out[5 * n + i] = __half2float(__hadd(h, hn));
  out[6 * n + i] = __high2float(sq2);
  out[7 * n + i] = __bfloat162float(__hfma(b, __float2bfloat16(2.f), b));
}

// Float max through the atomicCAS idiom (CUDA has no float atomicMax).
__device__ float atomic_max_float(float* addr, float v) {
  int* a = reinterpret_cast<int*>(addr);
  int old = atomicAdd(a, 0);  // an atomic read: a plain load would race with the CAS of others
  while (__int_as_float(old) < v) {
    int assumed = old;
    old = atomicCAS(a, assumed, __float_as_int(v));
    if (old == assumed) break;
  }
  return __int_as_float(old);
}

// ints[0] += 1, ints[1] = max tid, ints[2] = min(-tid), ints[3] |= bit(tid % 32),
// ints[4] -= 2, ints[5] = exch (any tid); floats[0] += 0.5, floats[1] = max(vals).
__global__ void atomics_kernel(int* ints, float* floats, const float* vals, int n) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  atomicAdd(&ints[0], 1);
  atomicMax(&ints[1], t);
  atomicMin(&ints[2], -t);
  atomicOr(reinterpret_cast<unsigned*>(&ints[3]), 1u << (t % 32));
  atomicSub(&ints[4], 2);
  atomicExch(&ints[5], t);
  atomicAdd(&floats[0], 0.5f);
  atomic_max_float(&floats[1], vals[t]);
}

// Votes and barrier predicates on a block of 48 threads (the second warp has 16 lanes).
// Per thread: out[t*6 + 0..5] = ballot(full), any, all, sub-mask ballot, reduce_add, syncthreads_count.
__global__ void votes_kernel(const int* pred, unsigned* out) {
  const int t = threadIdx.x, lane = t & 31;
  const int p = pred[blockIdx.x * blockDim.x + t];
  unsigned* o = out + (blockIdx.x * blockDim.x + t) * 6;
  o[0] = __ballot_sync(0xffffffffu, p);
  o[1] = __any_sync(0xffffffffu, p);
  o[2] = __all_sync(0xffffffffu, p);
  // Two independent half-warp groups, each with its own mask.
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  o[3] = __ballot_sync(half, p);
  o[4] = __reduce_add_sync(0xffffffffu, (unsigned)p * (unsigned)lane);
  o[5] = __syncthreads_count(p);
}

// A template kernel: launched as CUDAEMU_LAUNCH((axpb_kernel<float, 3>), ...) -- the parentheses
// keep the comma of the template arguments out of the macro's argument list.
template <typename T, int K>
__global__ void axpb_kernel(const T* x, T* y, T b, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = (T)K * x[i] + b;
}

// Long stretches of plain arithmetic (an LCG walk) between warp shuffles and barriers. With a
// short CUDAEMU_PREEMPT_MS the watchdog preempts threads in the middle of them, which must not
// change the result: out[block] = sum over rounds and threads of (x >> 8), exact in unsigned.
__global__ void busy_kernel(const unsigned* seeds, unsigned* out, int iters, int rounds) {
  __shared__ unsigned warp_tot[32];
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  unsigned x = seeds[blockIdx.x * blockDim.x + t], total = 0;
  for (int r = 0; r < rounds; ++r) {
    for (int i = 0; i < iters; ++i) x = x * 1664525u + 1013904223u;
    unsigned v = x >> 8;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) warp_tot[warp] = v;
    __syncthreads();
    if (t == 0)
      for (int w = 0; w < (int)(blockDim.x / 32); ++w) total += warp_tot[w];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = total;
}

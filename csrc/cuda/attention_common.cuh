// Parameters, tile sizes and the causal rule shared by the attention kernels.
#pragma once

#include "mma.cuh"

namespace babygpt::cuda {


// Query i sees key j iff j <= i + (Tk - Tq) (bottom-right causal, docs/design.md §2.3). Rows and columns
// past the ends are never visible, which is how ragged edge tiles are masked.
__device__ __forceinline__ bool visible(const AttnParams& p, int i, int j) {
  return i < p.Tq && j < p.Tk && (!p.causal || j <= i + (p.Tk - p.Tq));
}

// Tile shapes. Warps own 16 query rows each (the M of one m16n8k16), so BM = 16 * warps.
// Key tiles are 64 wide for 16-bit types up to D = 128, else 32: that keeps the fp32 score tile
// (BN/2 registers per thread) next to the O accumulator (DMAX/2 registers per thread) under 255
// registers, and shared memory within sm_80's 163 KiB for fp32 at D = 256.
// fp32 at D > 128 takes 2 warps (BM = 32): the dQ kernel's four fp32 tiles of 64 x 264 would need
// 204 KiB of shared memory, over sm_80's 163 KiB per block.
template <class T, int DMAX>
struct AttnTiles {
  static constexpr int kWarps = (sizeof(T) == 4 && DMAX > 128) ? 2 : 4, kThreads = 32 * kWarps, BM = 16 * kWarps;
  static constexpr int BN = (sizeof(T) == 4 || DMAX > 128) ? 32 : 64;
  // Row padding of shared tiles (16 bytes) so rows start in different banks.
  static constexpr int kPad = 16 / int(sizeof(T));
  __host__ __device__ static int ld(int D) { return round_up(D, 16) + kPad; }
  __host__ __device__ static int ldp() { return BN + kPad; }
  // sQ (or sQ + sdO), sK, sV, and the warp-private score tile sP.
  __host__ __device__ static int smem_elems(int D, int q_tiles) {
    return (q_tiles * BM + 2 * BN) * ld(D) + BM * ldp();
  }
};

// A tensor's row r of batch b, head h, for a (B, heads, T, D) contiguous layout.
template <class T>
__device__ __forceinline__ const T* head_ptr(const void* p, int b, int h, int heads, int T_, int D) {
  return static_cast<const T*>(p) + ((int64_t)b * heads + h) * T_ * D;
}

// Sum over the 4 lanes that share an accumulator row (lanes 4g..4g+3).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

}  // namespace babygpt::cuda

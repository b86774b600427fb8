// One warp computes C(16x8, fp32) += A(16x16) · B(16x8) with both operands in shared memory.
//
// This is the only matrix-multiply primitive of the CUDA kernels. Operands are strided views of
// shared memory (element (i, k) of A at a[i*ars + k*acs], element (k, n) of B at b[k*bks + n*bns]),
// so Q·Kᵀ, P·V, Kᵀ-style products of the backward and the LoRA GEMMs all use it unchanged.
//
// The accumulator uses the PTX fragment layout of mma.m16n8k16 for C/D (f32): with
// g = lane / 4 and t = lane % 4, a thread holds
//     c[0] = C[g][2t]   c[1] = C[g][2t+1]   c[2] = C[g+8][2t]   c[3] = C[g+8][2t+1]
// and every kernel addresses its accumulators that way (row masks, softmax, stores).
//
// * float: plain FMAs, each thread reading the two A rows and two B columns it needs (no TF32:
//   the fp32 contract is rel 1e-5, which TF32's 10-bit mantissa cannot meet).
// * __half / __nv_bfloat16: the A and B fragments are packed per the PTX layout
//     A (row): a[0] = A[g][2t..2t+1]    a[1] = A[g+8][2t..2t+1]
//              a[2] = A[g][2t+8..2t+9]  a[3] = A[g+8][2t+8..2t+9]
//     B (col): b[0] = B[2t..2t+1][g]    b[1] = B[2t+8..2t+9][g]
//   then fed to mma.sync (tensor cores, sm_80+), or -- where that instruction does not exist,
//   i.e. in the CPU emulator -- to a fallback that reconstructs the product from the very same
//   registers with __shfl_sync only. So a fragment packed wrongly gives a wrong answer under
//   emulation exactly as it would on a GPU.
#pragma once

#include "common.cuh"

namespace babygpt::cuda {

// Portable m16n8k16: every lane gathers A rows g, g+8 and B columns 2t, 2t+1 from the lanes that
// own them (A row r lives in lanes 4r..4r+3, B column n in lanes 4n..4n+3), 4 k-pairs at a time.
template <class T>
__device__ __forceinline__ void mma_16816_shfl(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  for (int s = 0; s < 4; ++s) {  // source thread-in-group: holds k = 2s, 2s+1 and 2s+8, 2s+9
    const int la = g * 4 + s, lb0 = (2 * t) * 4 + s, lb1 = (2 * t + 1) * 4 + s;
    const float2 a0 = unpack2<T>(__shfl_sync(full, a[0], la)), a1 = unpack2<T>(__shfl_sync(full, a[1], la));
    const float2 a2 = unpack2<T>(__shfl_sync(full, a[2], la)), a3 = unpack2<T>(__shfl_sync(full, a[3], la));
    const float2 b00 = unpack2<T>(__shfl_sync(full, b[0], lb0)), b01 = unpack2<T>(__shfl_sync(full, b[1], lb0));
    const float2 b10 = unpack2<T>(__shfl_sync(full, b[0], lb1)), b11 = unpack2<T>(__shfl_sync(full, b[1], lb1));
    c[0] += a0.x * b00.x + a0.y * b00.y + a2.x * b01.x + a2.y * b01.y;
    c[1] += a0.x * b10.x + a0.y * b10.y + a2.x * b11.x + a2.y * b11.y;
    c[2] += a1.x * b00.x + a1.y * b00.y + a3.x * b01.x + a3.y * b01.y;
    c[3] += a1.x * b10.x + a1.y * b10.y + a3.x * b11.x + a3.y * b11.y;
  }
}

template <class T>
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  mma_16816_shfl<T>(c, a, b);
#endif
}

// C += A(16 x 16) · B(16 x 8) from shared memory (see the file comment for the strides).
template <class T>
__device__ __forceinline__ void warp_mma(float c[4], const T* a, int ars, int acs, const T* b, int bks, int bns) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  if constexpr (std::is_same_v<T, float>) {
    // Unrolled by 2 only: fully unrolled (or by 4, 8) ptxas hoists the shared loads of many k-steps
    // of every n-tile at once and spills some fp32 attention kernels on sm_80 (seen: 8-60 bytes).
#pragma unroll 2
    for (int k = 0; k < 16; ++k) {
      const float a_top = a[g * ars + k * acs], a_bot = a[(g + 8) * ars + k * acs];
      const float b0 = b[k * bks + (2 * t) * bns], b1 = b[k * bks + (2 * t + 1) * bns];
      c[0] += a_top * b0;
      c[1] += a_top * b1;
      c[2] += a_bot * b0;
      c[3] += a_bot * b1;
    }
  } else {
    auto A = [&](int i, int k) { return a[i * ars + k * acs]; };
    auto B = [&](int k, int n) { return b[k * bks + n * bns]; };
    const uint32_t af[4] = {pack2(A(g, 2 * t), A(g, 2 * t + 1)), pack2(A(g + 8, 2 * t), A(g + 8, 2 * t + 1)),
                            pack2(A(g, 2 * t + 8), A(g, 2 * t + 9)), pack2(A(g + 8, 2 * t + 8), A(g + 8, 2 * t + 9))};
    const uint32_t bf[2] = {pack2(B(2 * t, g), B(2 * t + 1, g)), pack2(B(2 * t + 8, g), B(2 * t + 9, g))};
    mma_16816<T>(c, af, bf);
  }
}

// Row and column (within the 16x8 tile) of accumulator element i of this lane.
__device__ __forceinline__ int acc_row(int i) { return ((threadIdx.x & 31) >> 2) + 8 * (i >> 1); }
__device__ __forceinline__ int acc_col(int i) { return 2 * (threadIdx.x & 3) + (i & 1); }

}  // namespace babygpt::cuda

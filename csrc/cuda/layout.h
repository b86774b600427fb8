// Tile shapes and shared-memory layouts of the CUDA kernels, each written once, in plain constexpr
// C++ (no CUDA, no torch): the kernels carve their dynamic shared memory with these structs, the
// launchers size it with them, the emulator runs exactly that code, and build_info() exports the
// sizes for `babygpt gpu-report` (csrc/ops.cpp, babygpt_ext/gpu_report/cuda.py). Device code calls
// these constexpr functions through nvcc's --expt-relaxed-constexpr.
//
// Templates take the element size ES in bytes (4: float, 2: __half / __nv_bfloat16), not the
// element type, so that code without the CUDA headers can evaluate them.
#pragma once

#include <cstddef>
#include <iterator>
#include <utility>

#include "../schemas.h"  // kMaxHeadDim

namespace babygpt::cuda {

constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }
constexpr int round_up(int a, int b) { return ceil_div(a, b) * b; }

// Each dtype is compiled for three head-dim buckets; D is a runtime value inside its bucket (tiles
// are padded to a multiple of 16, the k of one mma, and masked): 9 instances per attention pass.
constexpr int kHeadDimBuckets[] = {64, 128, kMaxHeadDim};
constexpr int head_dim_bucket(int D) {
  for (int b : kHeadDimBuckets)
    if (D <= b) return b;
  return 0;  // D > kMaxHeadDim: no instance
}
constexpr int padded_head_dim(int D) { return round_up(D, 16); }

// Shared tiles pad each row by 16 bytes so that consecutive rows start in different banks.
constexpr int row_pad(int es) { return 16 / es; }

// One tile in shared memory: `rows` x `cols` elements of `es` bytes, rows `ld` elements apart,
// `offset` bytes from the start of the block's dynamic shared memory.
struct Region {
  size_t offset = 0;
  int rows = 0, cols = 0, ld = 0, es = 0;
  constexpr size_t bytes() const { return size_t(rows) * ld * es; }
};

// Places regions one after another, each at a 16-byte boundary (what vector loads want; every
// region here is a multiple of 16 bytes long, so nothing is padded in practice).
struct Carver {
  size_t end = 0;
  constexpr Region take(int rows, int cols, int ld, int es) {
    const Region r{(end + 15) / 16 * 16, rows, cols, ld, es};
    end = r.offset + r.bytes();
    return r;
  }
};

// -------------------------------------------------------------------- attention: fwd and dQ
// Warps own 16 query rows each (the M of one m16n8k16), so BM = 16 * warps. Key tiles are 64 wide
// for 16-bit types up to D = 128, 32 for fp32 up to D = 128, and 16 at D > 128: that keeps the
// fp32 score tile (BN/2 registers per thread) next to the O accumulator (DMAX/2 registers per
// thread) under 255 registers (at D = 256, 32-key tiles spilled once the kernels carried the
// dropout mask and the NaN checks: 12-20 bytes in the fp32 forward and dQ kernels, 24 in the
// 16-bit dQ kernel on sm_80), and shared memory within sm_80's 163 KiB for fp32 at D = 256. fp32
// at D > 128 takes 2 warps (BM = 32): the
// dQ kernel's four fp32 tiles of 64 x 264 would need 204 KiB of shared memory, over sm_80's 163 KiB.
template <int ES, int DMAX>
struct AttnTiles {
  static constexpr int kWarps = (ES == 4 && DMAX > 128) ? 2 : 4, kThreads = 32 * kWarps, BM = 16 * kWarps;
  static constexpr int BN = DMAX > 128 ? 16 : ES == 4 ? 32 : 64;
};

// attn_fwd_kernel (with_dout = false) and attn_dq_kernel (true) at head dim D: the CTA's query
// rows (and their dO rows), one key and one value tile, and the score tile P / dS, whose rows are
// split among the warps (16 each).
template <int ES, int DMAX>
struct AttnSmem {
  using Tiles = AttnTiles<ES, DMAX>;
  int dp = 0;  // D padded to the mma's k
  Region q, dout, k, v, p;
  size_t bytes = 0;
  constexpr AttnSmem(int D, bool with_dout) : dp(padded_head_dim(D)) {
    const int ld = dp + row_pad(ES);
    Carver c;
    q = c.take(Tiles::BM, dp, ld, ES);
    dout = c.take(with_dout ? Tiles::BM : 0, dp, ld, ES);
    k = c.take(Tiles::BN, dp, ld, ES);
    v = c.take(Tiles::BN, dp, ld, ES);
    p = c.take(Tiles::BM, Tiles::BN, Tiles::BN + row_pad(ES), ES);
    bytes = c.end;
  }
};

// ------------------------------------------------------------------------- attention: dK/dV
// BNK keys per CTA (16 per warp) against BMQ-query tiles. dK and dV accumulate in registers, DCH
// columns at a time (two passes over the queries when D > 128, so the two accumulators stay at
// <= 128 registers per thread instead of spilling). 16-bit types at D >= 128 take 16-query tiles:
// next to the full 128-register accumulators, the Sᵀ and dPᵀ tiles of 32 queries (32 registers)
// spilled 4-8 bytes on sm_80 once the kernel carried the dropout mask and the NaN checks.
template <int ES, int DMAX>
struct DkDvTiles {
  static constexpr int BNK = (ES == 4 && DMAX > 128) ? 32 : 64, kWarps = BNK / 16, kThreads = 32 * kWarps;
  static constexpr int BMQ = (ES == 2 && DMAX >= 128) ? 16 : 32, DCH = DMAX < 128 ? DMAX : 128;
};

// attn_dkdv_kernel at head dim D: lse and delta of the query tile (fp32), the CTA's keys and
// values, the query tile and its dO, and the transposed Pᵀ and dSᵀ (keys x queries).
template <int ES, int DMAX>
struct DkDvSmem {
  using Tiles = DkDvTiles<ES, DMAX>;
  int dp = 0;
  Region lse, delta, k, v, q, dout, pt, dst;
  size_t bytes = 0;
  constexpr explicit DkDvSmem(int D) : dp(padded_head_dim(D)) {
    const int ld = dp + row_pad(ES), ldq = Tiles::BMQ + row_pad(ES);
    Carver c;
    lse = c.take(1, Tiles::BMQ, Tiles::BMQ, 4);
    delta = c.take(1, Tiles::BMQ, Tiles::BMQ, 4);
    k = c.take(Tiles::BNK, dp, ld, ES);
    v = c.take(Tiles::BNK, dp, ld, ES);
    q = c.take(Tiles::BMQ, dp, ld, ES);
    dout = c.take(Tiles::BMQ, dp, ld, ES);
    pt = c.take(Tiles::BNK, Tiles::BMQ, ldq, ES);
    dst = c.take(Tiles::BNK, Tiles::BMQ, ldq, ES);
    bytes = c.end;
  }
};

// ------------------------------------------------------------------------------------ LoRA
struct GemmTiles {
  static constexpr int BM = 64, BN = 64, BK = 32, kWarps = 4, kThreads = 128;  // warp tile: 16 x 64
};

// gemm_kernel: one BM x BK slab of A and one BK x BN slab of B.
template <int ES>
struct GemmSmem {
  Region a, b;
  size_t bytes = 0;
  constexpr GemmSmem() {
    Carver c;
    a = c.take(GemmTiles::BM, GemmTiles::BK, GemmTiles::BK + row_pad(ES), ES);
    b = c.take(GemmTiles::BK, GemmTiles::BN, GemmTiles::BN + row_pad(ES), ES);
    bytes = c.end;
  }
};

// ------------------------------------------------------------------------------- the table
// The dynamic shared memory of every kernel instance that uses any, at the largest D of its
// bucket: what build_info()["cuda_smem_bytes"] reports (csrc/ops.cpp). `visit(kernel, es, dmax,
// bytes)` is called once per (kernel, element size, bucket); dmax is 0 for the GEMM.
template <int ES, class F>
void visit_smem_of(F& visit) {
  [&]<size_t... I>(std::index_sequence<I...>) {
    ((visit("attn_fwd_kernel", ES, kHeadDimBuckets[I],
            AttnSmem<ES, kHeadDimBuckets[I]>(kHeadDimBuckets[I], false).bytes),
      visit("attn_dq_kernel", ES, kHeadDimBuckets[I], AttnSmem<ES, kHeadDimBuckets[I]>(kHeadDimBuckets[I], true).bytes),
      visit("attn_dkdv_kernel", ES, kHeadDimBuckets[I], DkDvSmem<ES, kHeadDimBuckets[I]>(kHeadDimBuckets[I]).bytes)),
     ...);
  }(std::make_index_sequence<std::size(kHeadDimBuckets)>{});
  visit("gemm_kernel", ES, 0, GemmSmem<ES>().bytes);
}
template <class F>
void visit_smem(F&& visit) {
  visit_smem_of<4>(visit);
  visit_smem_of<2>(visit);
}

}  // namespace babygpt::cuda

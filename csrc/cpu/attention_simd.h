// FlashAttention-style float32 micro-kernels for the CPU (forward block task, decode rows, backward
// group task).
//
// This header is deliberately included several times by attention.cpp, each time inside a
// different namespace and under a different `#pragma GCC target` (AVX-512, AVX2+FMA, baseline
// x86-64), so the same source is compiled once per instruction set and the fastest copy the CPU
// supports is picked at run time. That keeps the wheel portable (no -march=native) while using the
// wide registers where they exist. Consequently it includes no std header (they must not be
// compiled under the pragma; dropout_philox.h, included below, has none) and uses only GCC builtins.
//
// The vectors are GCC vector extensions of W floats, W the register width of the instruction set
// (16: zmm, 8: ymm, 4: xmm). A vector wider than the target's registers has no machine mode, and
// GCC then keeps every such value in memory (each add a load, an add and a store): an AVX2 build
// of 16-float vectors ran 10x slower than one of 8-float vectors. Memory is accessed through
// memcpy so no buffer needs vector alignment.
//
// Inputs are strided: row t of a (batch, head) slice starts at base + t * ld, and only the last
// dimension must be contiguous, so the q/k/v views a GPT layer makes by splitting its fused qkv
// projection are read in place.
//
// Attention dropout: the probabilities that multiply V (forward) and the dP they receive (backward)
// are multiplied by Z = mask / (1 - p), the mask drawn by csrc/dropout_rng.h's Philox on vectors of
// W counters (dropout_scales); the row statistics m, l, lse stay those of the undropped P. A null
// Rng (p == 0) skips all of it.
//
// Needs, defined by the includer: BABYGPT_VEC_FLOATS (W: 16, 8 or 4), BABYGPT_TILE_ROWS (R) and
// BABYGPT_TILE_VECS (TV): the register tile of the products is R rows x TV vectors, R*TV
// accumulators plus TV loads and a broadcast, sized to the register file (32 zmm: 4 x 4; 16 ymm:
// 6 x 2; 16 xmm: 2 x 4). Each loaded vector then feeds R multiply-adds and each broadcast TV,
// instead of one each: a 1-row tile is load-bound on AVX2. Also tile_gemm (attention.cpp), the
// tile GEMM on oneDNN's brgemm that the forward's products use from head size kGemmMinD.

constexpr int W = BABYGPT_VEC_FLOATS;
constexpr int R = BABYGPT_TILE_ROWS;
constexpr int TV = BABYGPT_TILE_VECS;
typedef float vf __attribute__((vector_size(W * 4)));
typedef int vi __attribute__((vector_size(W * 4)));
typedef unsigned vu __attribute__((vector_size(W * 4)));
typedef unsigned long long vu2 __attribute__((vector_size(W * 4)));  // the same bytes as W/2 64-bit lanes
using babygpt::dropout::Rng;

constexpr long BK = 64;  // keys per block
constexpr int NB = BK / W;
constexpr long BQ = 64;  // query rows per forward task and per backward dK/dV chunk
static_assert(NB % TV == 0, "a key block must be a whole number of register tiles");

#define BG_INLINE static inline __attribute__((always_inline))

BG_INLINE vf ld(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
BG_INLINE void st(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
// A broadcast. (Not `vf{} + x`: 0 + x is not an identity for x = -0, so GCC emits a scalar add
// before each broadcast; in the product loops that is one extra instruction per multiply-add row.)
BG_INLINE vf splat(float x) {
  const vf v{x};
#if BABYGPT_VEC_FLOATS == 16
  return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
#elif BABYGPT_VEC_FLOATS == 8
  return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0);
#else
  return __builtin_shufflevector(v, v, 0, 0, 0, 0);
#endif
}
BG_INLINE long lmin(long a, long b) { return a < b ? a : b; }
BG_INLINE long lmax(long a, long b) { return a > b ? a : b; }
// D padded to a multiple of 16 floats: the row length of every packed tile, so a row is a whole
// number of vectors on every instruction set.
BG_INLINE long padded(long D) { return (D + 15) / 16 * 16; }
// Max that ignores NaN in `a` (the comparison is false), like the reference's running max: NaN
// scores never win the max, they reach the output through the exp-sum instead.
BG_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
BG_INLINE float fmax_nan_ignoring(float a, float b) { return a > b ? a : b; }
#if BABYGPT_VEC_FLOATS == 16
BG_INLINE vf lanes() { return vf{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }
#elif BABYGPT_VEC_FLOATS == 8
BG_INLINE vf lanes() { return vf{0, 1, 2, 3, 4, 5, 6, 7}; }
#else
BG_INLINE vf lanes() { return vf{0, 1, 2, 3}; }
#endif

// bf16 inputs (simd_bf16.h): the kernels read float or bf16 through to_float.
#include "simd_bf16.h"  // bf16, vh, to_bf16(), bf16_to_float()
BG_INLINE float to_float(float x) { return x; }
BG_INLINE float to_float(bf16 x) {
  const unsigned u = (unsigned)x << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// ------------------------------------------------------------------------------------ dropout
// hi:lo = a · m per lane, from two W/2-lane 64-bit products (the even and the odd 32-bit lanes), so
// no vector is wider than the registers.
struct VMulHiLo {
  inline __attribute__((always_inline)) void operator()(vu a, unsigned m, vu& hi, vu& lo) const {
    const vu2 a2 = (vu2)a, low = vu2{} + 0xFFFFFFFFull;
    const vu2 even = (a2 & low) * (unsigned long long)m, odd = (a2 >> 32) * (unsigned long long)m;
    lo = (vu)((even & low) | (odd << 32));
    hi = (vu)((even >> 32) | (odd & ~low));
  }
};

#include "../dropout_philox.h"  // philox(), compiled for this instruction set

// Z[c] = 1 / (1 - p) where dropout keeps score (b, h, i, j0 + c), else 0, for c < n rounded up to
// 4W. j0 is a multiple of 16 (a key block's start), so the block's counters are consecutive from
// counter_of(j0); one vector Philox over W counters yields the words of 4W consecutive keys.
static void dropout_scales(const Rng& g, long b, long h, long i, long j0, long n, float* Z) {
  vu lane{};
  for (int l = 0; l < W; ++l) lane[l] = (unsigned)l;
  const vu thr = vu{} + g.threshold;
  const vi ks = (vi)splat(g.keep_scale);
  for (long c0 = 0; c0 < n; c0 += 4 * W) {
    vu w[4] = {lane + babygpt::dropout::counter_of(j0 + c0), vu{} + (unsigned)i, vu{} + (unsigned)h,
               vu{} + (unsigned)b};
    philox(w[0], w[1], w[2], w[3], vu{} + g.k0, vu{} + g.k1, VMulHiLo{});
    // Lane 4u + t holds counter 4(g0 + u) + t: its word k is key 16u + 4k + t of this stretch.
    unsigned keys[4 * W];
    for (int u = 0; u < W / 4; ++u)
      for (int k = 0; k < 4; ++k) __builtin_memcpy(keys + 16 * u + 4 * k, (const char*)&w[k] + 16 * u, 16);
    for (int c = 0; c < 4 * W; c += W) {
      vu x;
      __builtin_memcpy(&x, keys + c, sizeof x);
      st(Z + c0 + c, (vf)((vi)(x >= thr) & ks));
    }
  }
}

// Horizontal reductions as a log2(W)-step shuffle tree (a W-step scalar chain costs ~W/log2(W)
// times the latency). Step w swaps neighbouring groups of w lanes. The max stays NaN-ignoring:
// its inputs are already NaN-free partial maxima.
BG_INLINE vf swap_groups(vf v, int w) {
#if BABYGPT_VEC_FLOATS == 16
  switch (w) {
    case 8: return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    case 4: return __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    case 2: return __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    default: return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  }
#elif BABYGPT_VEC_FLOATS == 8
  switch (w) {
    case 4: return __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
    case 2: return __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
    default: return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
  }
#else
  return w == 2 ? __builtin_shufflevector(v, v, 2, 3, 0, 1) : __builtin_shufflevector(v, v, 1, 0, 3, 2);
#endif
}
BG_INLINE float hsum(vf v) {
  for (int w = W / 2; w >= 1; w /= 2) v += swap_groups(v, w);
  return v[0];
}
BG_INLINE float hmax(vf v) {
  for (int w = W / 2; w >= 1; w /= 2) v = vmax(v, swap_groups(v, w));
  return v[0];
}

#include "simd_exp.h"  // vexp()

// Calls f(r0, Tile<n>{}) over row tiles covering rows [0, nr): whole tiles of R rows, then one
// tile of the remaining nr % R rows, so every product runs with a compile-time row count.
template <int N>
struct Tile {
  static constexpr int rows = N;
};
template <class F>
BG_INLINE void for_row_tiles(long nr, F&& f) {
  long r = 0;
  for (; r + R <= nr; r += R) f(r, Tile<R>{});
  switch (nr - r) {
    case 1: f(r, Tile<1>{}); break;
    case 2: if constexpr (R > 2) f(r, Tile<2>{}); break;
    case 3: if constexpr (R > 3) f(r, Tile<3>{}); break;
    case 4: if constexpr (R > 4) f(r, Tile<4>{}); break;
    case 5: if constexpr (R > 5) f(r, Tile<5>{}); break;
    default: break;  // 0: no remainder (R <= 6 on every instruction set)
  }
}
static_assert(R <= 6, "for_row_tiles handles remainders of up to 5 rows");

// S[r, 0:n'] = scale * Σ_d X[r, d] * Kt[d, 0:n'] for NR rows of X (row stride ldx), n' = the keys
// [0, n) rounded up to whole strips of TV vectors: a register tile of NR rows x TV key vectors per
// strip; Kt is D x BK. Strips past the block's n keys are skipped (a short or diagonal block).
template <int NR>
BG_INLINE void qk_rows(const float* x, long ldx, long D, const float* Kt, float scale, float* S, long n) {
  for (int c0 = 0; c0 * W < n; c0 += TV) {
    vf acc[NR][TV];
    for (int r = 0; r < NR; ++r)
      for (int c = 0; c < TV; ++c) acc[r][c] = vf{};
    for (long d = 0; d < D; ++d) {
      vf kc[TV];
      for (int c = 0; c < TV; ++c) kc[c] = ld(Kt + d * BK + W * (c0 + c));
      for (int r = 0; r < NR; ++r) {
        const vf b = splat(x[r * ldx + d]);
        for (int c = 0; c < TV; ++c) acc[r][c] += kc[c] * b;
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int c = 0; c < TV; ++c) st(S + r * BK + W * (c0 + c), acc[r][c] * scale);
  }
}

// O[r, 0:NV*W] += Σ_{c<n} P[r, c] * X[c, 0:NV*W] for NR rows (X and O row stride Dp): the
// NR x NV accumulators stay in registers over c and each X vector load is shared by the NR rows.
// P[r, c] is P[r * BK + c], or with Pt (P read transposed) P[c * BK + r]: the backward's
// dK += dSᵀ Q and dV += Pᵀ dO, whose rows are keys and whose sums run over query rows.
template <int NR, int NV, bool Pt = false>
BG_INLINE void pv_tile(const float* P, long n, const float* X, long Dp, float* O) {
  vf acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = ld(O + r * Dp + W * v);
  for (long c = 0; c < n; ++c) {
    vf x[NV];
    for (int v = 0; v < NV; ++v) x[v] = ld(X + c * Dp + W * v);
    for (int r = 0; r < NR; ++r) {
      const vf b = splat(Pt ? P[c * BK + r] : P[r * BK + c]);
      for (int v = 0; v < NV; ++v) acc[r][v] += x[v] * b;
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) st(O + r * Dp + W * v, acc[r][v]);
}
// The same over all of Dp (a multiple of 16) in chunks of TV vectors; where a chunk is wider
// than 16 floats the last one may be 16, 32 or 48 floats.
template <int NR, bool Pt = false>
BG_INLINE void pv_rows(const float* P, long n, const float* X, long Dp, float* O) {
  constexpr long chunk = TV * W;
  long d0 = 0;
  for (; d0 + chunk <= Dp; d0 += chunk) pv_tile<NR, TV, Pt>(P, n, X + d0, Dp, O + d0);
  if constexpr (chunk > 16) {
    const long rest = (Dp - d0) / 16;
    if (rest == 1) pv_tile<NR, 16 / W, Pt>(P, n, X + d0, Dp, O + d0);
    if constexpr (chunk > 32)
      if (rest == 2) pv_tile<NR, 32 / W, Pt>(P, n, X + d0, Dp, O + d0);
    if constexpr (chunk > 48)
      if (rest == 3) pv_tile<NR, 48 / W, Pt>(P, n, X + d0, Dp, O + d0);
  }
}

// The same one row at a time, row r over its own n[r] keys (none when n[r] <= 0): the exact form
// for rows that see different keys when a row past some row's keys is not finite (0 * NaN).
static void pv_each_row(const float* P, long nr, const long* n, const float* X, long Dp, float* O) {
  for (long r = 0; r < nr; ++r)
    if (n[r] > 0) pv_rows<1>(P + r * BK, n[r], X, Dp, O + r * Dp);
}

// dst[c, 0:Dp] = src[c * ld + 0:D] for c < n, zero padding d >= D.
template <class E>
static void pack_rows(const E* src, long ld, long n, long D, long Dp, float* dst) {
  for (long c = 0; c < n; ++c) {
    if constexpr (sizeof(E) == 4) __builtin_memcpy(dst + c * Dp, src + c * ld, D * sizeof(float));
    else for (long d = 0; d < D; ++d) dst[c * Dp + d] = to_float(src[c * ld + d]);
    for (long d = D; d < Dp; ++d) dst[c * Dp + d] = 0;
  }
}
// dst[d, c] = src[c * ld + d] (D x BK), zero for the padding columns c >= n.
template <class E>
static void pack_transposed(const E* src, long ld, long n, long D, float* dst) {
  for (long d = 0; d < D; ++d)
    for (long c = n; c < BK; ++c) dst[d * BK + c] = 0;
  for (long c = 0; c < n; ++c)
    for (long d = 0; d < D; ++d) dst[d * BK + c] = to_float(src[c * ld + d]);
}
// Whether rows [c0, c1) of a packed tile are all finite (Dp floats each).
static bool rows_finite(const float* X, long c0, long c1, long Dp) {
  vf bad{};
  for (long i = c0 * Dp; i < c1 * Dp; i += W) {
    const vf x = ld(X + i);
    bad += x - x;  // 0 for finite lanes, NaN for NaN and inf
  }
  return hsum(bad) == 0.0f;
}

// ------------------------------------------------------------------------------- bf16 operands
// The forward's bf16 products (on the CPU's bf16 units, through tile_gemm's bf16 overload) take
// their B operand in the VNNI layout the dot-product instructions read (vdpbf16ps, AMX's
// tdpbf16ps): element (k, n) of a K x N matrix at (k / 2) * 2 * ldb + 2 * n + k % 2, i.e. each
// 32-bit word holds the pair of rows 2k', 2k'+1 of one column. (The forward's bf16 helpers are
// `static inline`: only the AVX-512 copy calls them, and the other copies would warn about
// unused static functions.)
// dst[c] = x[c] rounded to the nearest bf16 for c < n, n a multiple of W.
static inline void round_to_bf16(const float* x, long n, bf16* dst) {
  for (long c = 0; c < n; c += W) {
    const vh h = __builtin_convertvector(to_bf16(ld(x + c)), vh);
    __builtin_memcpy(dst + c, &h, sizeof h);
  }
}
// o[0:D] = x[0:D] * inv rounded to bf16 and olo[0:D] the rounding residual, also rounded (x holds
// D rounded up to whole vectors).
static inline void store_bf16_with_residual(const float* x, float inv, long D, bf16* o, bf16* olo) {
  for (long d = 0; d < D; d += W) {
    const vf y = ld(x + d) * inv;
    const vu hi = to_bf16(y);
    const vh h = __builtin_convertvector(hi, vh), l = __builtin_convertvector(to_bf16(y - bf16_to_float(hi)), vh);
    const long n = lmin(W, D - d) * 2;
    __builtin_memcpy(o + d, &h, n);
    __builtin_memcpy(olo + d, &l, n);
  }
}
// Packs key block kb (nb keys) of k (row stride ldk) as Kᵀ (D x BK) in the VNNI layout, ldb = BK:
// the word at (d / 2, c) is the pair k[c][d], k[c][d+1], so this is a transpose of 32-bit words.
// An odd D's last word pairs k[c][D-1] with 0; keys c >= nb are 0.
static inline void pack_kt_vnni(const bf16* k, long ldk, long nb, long D, bf16* dst) {
  const long Dw = (D + 1) / 2;
  for (long dw = 0; dw < Dw; ++dw) __builtin_memset(dst + 2 * (dw * BK + nb), 0, (BK - nb) * 4);
  for (long c = 0; c < nb; ++c) {
    const bf16* kc = k + c * ldk;
    for (long dw = 0; dw < D / 2; ++dw) __builtin_memcpy(dst + 2 * (dw * BK + c), kc + 2 * dw, 4);
    if (D % 2) dst[2 * (D / 2 * BK + c)] = kc[D - 1], dst[2 * (D / 2 * BK + c) + 1] = 0;
  }
}
// V is packed as panels of at most 64 columns, each its own BK x wp VNNI matrix with ldb = wp
// (wp = 16, 32, 48 or 64: the widths oneDNN's own packing emits, so every brgemm kernel, AMX's
// included, reads it). Element (c, d) of the packed V:
BG_INLINE long vnni_v_at(long c, long d, long Dp) {
  const long p = d / 64, wp = lmin(64, Dp - 64 * p);
  return BK * 64 * p + c / 2 * 2 * wp + 2 * (d % 64) + c % 2;
}
// Packs value rows [0, nb) of v (row stride ldv) as BK x Dp in those panels; the word at
// (c / 2, d) is the pair v[c][d], v[c+1][d]. Columns d >= D and rows c >= nb are 0.
static inline void pack_v_vnni(const bf16* v, long ldv, long nb, long D, long Dp, bf16* dst) {
  for (long c = 0; c < BK; c += 2) {
    const bf16* v0 = c < nb ? v + c * ldv : nullptr;
    const bf16* v1 = c + 1 < nb ? v + (c + 1) * ldv : nullptr;
    for (long d0 = 0; d0 < Dp; d0 += 64) {
      bf16* row = dst + vnni_v_at(c, d0, Dp);
      const long d1 = lmin(d0 + 64, Dp);
      long d = d0;
      if (v0 && v1)  // whole vectors of both rows: zero-extend, shift, merge
        for (; d + W <= lmin(d1, D); d += W) {
          vh a, b;
          __builtin_memcpy(&a, v0 + d, sizeof a);
          __builtin_memcpy(&b, v1 + d, sizeof b);
          const vu words = __builtin_convertvector(a, vu) | __builtin_convertvector(b, vu) << 16;
          __builtin_memcpy(row + 2 * (d - d0), &words, sizeof words);
        }
      for (; d < d1; ++d) {
        row[2 * (d - d0)] = d < D && v0 ? v0[d] : 0;
        row[2 * (d - d0) + 1] = d < D && v1 ? v1[d] : 0;
      }
    }
  }
}
// O (nr rows, stride Dp) += P (bf16, row stride BK) · V over keys [0, kr), kr even, one brgemm
// per panel of V.
static inline void pv_gemm(long nr, long kr, const bf16* P, const bf16* Vp, long Dp, float* O) {
  for (long d0 = 0; d0 < Dp; d0 += 64) {
    const long wp = lmin(64, Dp - d0);
    tile_gemm(nr, wp, kr, BK, wp, Dp, true, P, Vp + vnni_v_at(0, d0, Dp), O + d0);
  }
}
// Whether value rows [c0, c1) of a packed V are all finite, checked over the whole row pairs that
// hold them (a neighbour row the whole tile sees may be included: a non-finite one only sends the
// tile to the exact row-by-row product, which gives the same result).
static inline bool rows_finite(const bf16* Vp, long c0, long c1, long Dp) {
  unsigned bad = 0;
  for (long d0 = 0; d0 < Dp; d0 += 64) {
    const bf16* x = Vp + vnni_v_at(0, d0, Dp);
    const long wp = lmin(64, Dp - d0);
    for (long i = c0 / 2 * 2 * wp; i < (c1 + 1) / 2 * 2 * wp; ++i) bad |= (x[i] & 0x7f80u) == 0x7f80u;
  }
  return !bad;
}
// O[r, 0:Dp] += Σ_{c < n[r]} P[r, c] V[c, 0:Dp] row by row over exactly the keys each row sees
// (bf16 P, row stride BK; V packed): the exact fallback of pv_gemm.
static inline void pv_each_row(const bf16* P, long nr, const long* n, const bf16* Vp, long Dp, float* O) {
  for (long r = 0; r < nr; ++r)
    for (long c = 0; c < n[r]; ++c) {
      const float p = to_float(P[r * BK + c]);
      for (long d = 0; d < Dp; ++d) O[r * Dp + d] += p * to_float(Vp[vnni_v_at(c, d, Dp)]);
    }
}

// A workspace is one float buffer carved into consecutive arrays. The same function carves it
// (base != nullptr) and sizes it (base == nullptr: only `used` counts), so the size and the
// layout cannot disagree.
struct Carver {
  float* base;
  long used = 0;
  float* take(long n) {
    float* p = base ? base + used : nullptr;
    used += n;
    return p;
  }
};

// ------------------------------------------------------------------------------------ forward
// Keys accumulated into fresh (O, m, l) before joining the running total: a sum of n terms in
// float32 errs by ~sqrt(n) ulps, so two levels of 4096 keys keep the error of a million-key row
// at that of a 4096-key one (one level measured 1.8e-5 at 1M keys, over the 1e-5 bound).
constexpr long kChunkKeys = 4096;

// The forward's packed keys and values of one kv head, made once per call (pack_kv_block) and read by
// every query block of every query head in the kv head's group: key block kb is K transposed
// (D x BK) then V padded (BK x Dp), kv_block_size<E>(D) elements from kb * kv_block_size<E>(D).
// E is float, or bf16 with both matrices in the VNNI layout (K's D rounded up to even).
// Packing inside each query block instead repacked a head's K/V Tq / BQ times, which on a GPT
// layer's strided views (rows 3C floats apart) cost a fifth of the forward at B1 H16 T4096 D128
// (963 -> 756 ms, AMD Zen 3, 2 threads); on contiguous inputs it cost little.
template <class E>
BG_INLINE long kt_size(long D) { return (sizeof(E) == 2 ? (D + 1) / 2 * 2 : D) * BK; }
template <class E>
BG_INLINE long kv_block_size(long D) { return kt_size<E>(D) + BK * padded(D); }
// Packs key block kb of a kv head (k, v at its row 0, row strides ldk, ldv, Tk keys) into dst.
// S: the inputs' element type (bf16 into float blocks: the float32 kernels on bf16 inputs).
template <class S, class E>
BG_INLINE void pack_kv_block_t(const S* k, long ldk, const S* v, long ldv, long Tk, long D, long kb, E* dst) {
  const long j0 = kb * BK, nb = lmin(BK, Tk - j0);
  if constexpr (sizeof(E) == 2) {
    pack_kt_vnni(k + j0 * ldk, ldk, nb, D, dst);
    pack_v_vnni(v + j0 * ldv, ldv, nb, D, padded(D), dst + kt_size<E>(D));
  } else {
    pack_transposed(k + j0 * ldk, ldk, nb, D, dst);
    pack_rows(v + j0 * ldv, ldv, nb, D, padded(D), dst + D * BK);
    __builtin_memset(dst + D * BK + nb * padded(D), 0, (BK - nb) * padded(D) * sizeof(float));  // ragged last block
  }
}
static void pack_kv_block(const float* k, long ldk, const float* v, long ldv, long Tk, long D, long kb, float* dst) {
  pack_kv_block_t(k, ldk, v, ldv, Tk, D, kb, dst);
}
static void pack_kv_block_from_bf16(const bf16* k, long ldk, const bf16* v, long ldv, long Tk, long D, long kb,
                                    float* dst) {
  pack_kv_block_t(k, ldk, v, ldv, Tk, D, kb, dst);
}

struct FwdWs {
  float* S;             // scores / probabilities (BQ x BK)
  float *O, *m, *l;     // this chunk of keys: output rows (BQ x Dp), running max, running sum
  float *Ot, *mt, *lt;  // the chunks before it, the same three
  float* Z;             // one row's dropout scales (BK)
  bf16* Pb;             // bf16 operands: P rounded for its product with V (BQ x BK)
  float* Qf;            // bf16 queries for the float32 products: the block's rows as float (BQ x D)
  long floats;
};
static FwdWs fwd_ws(float* base, long D) {
  Carver c{base};
  FwdWs w;
  w.S = c.take(BQ * BK);
  w.O = c.take(BQ * padded(D));
  w.m = c.take(BQ);
  w.l = c.take(BQ);
  w.Ot = c.take(BQ * padded(D));
  w.mt = c.take(BQ);
  w.lt = c.take(BQ);
  w.Z = c.take(BK);
  w.Pb = (bf16*)c.take(BQ * BK / 2);
  w.Qf = c.take(BQ * D);
  w.floats = c.used;
  return w;
}

// Fold the chunk accumulators (O, m, l) of nr rows into the totals (Ot, mt, lt) — the online
// softmax's rescaling, one level up — and reset the chunk. NaN flows through as in the blocks.
static void fold_chunk(const FwdWs& w, long nr, long Dp) {
  for (long r = 0; r < nr; ++r) {
    const float mn = fmax_nan_ignoring(w.m[r], w.mt[r]);
    const float msub = mn == -__builtin_inff() ? 0.0f : mn;
    const float at = vexp(splat(w.mt[r] - msub))[0], ac = vexp(splat(w.m[r] - msub))[0];
    for (long d = 0; d < Dp; d += W)
      st(w.Ot + r * Dp + d, ld(w.Ot + r * Dp + d) * at + ld(w.O + r * Dp + d) * ac);
    w.lt[r] = w.lt[r] * at + w.l[r] * ac;
    w.mt[r] = mn;
    w.m[r] = -__builtin_inff(), w.l[r] = 0;
  }
  __builtin_memset(w.O, 0, nr * Dp * sizeof(float));
}
static long fwd_workspace(long D) { return fwd_ws(nullptr, D).floats; }

// Head sizes from which the forward's two products run on the tile GEMM (oneDNN's brgemm, see
// tile_gemm) rather than on the register tiles here. Measured interleaved with raw SDPA on AMD
// EPYC Zen 3 (AVX2, 2 threads): brgemm took the forward from 0.80x to 0.91x at B1 H16 T4096 D128
// and from 1.18x to 1.27x at B1 H8 T2048 D64, while at D = 32 it was 2 % slower and at D = 4
// 3-15 % slower (its fixed cost per call meets 64 x 64 x 4 products). The backward stays on the
// register tiles at every D: its five products on brgemm (with dSᵀ and Pᵀ transposed per chunk)
// measured 30-50 % slower at D = 32, equal at D = 128 and 5-20 % faster at D = 64, within this
// machine's noise, so not worth a second backward.
constexpr long kGemmMinD = 64;
// The same for bf16 inputs on the bf16 units (fwd_block_bf16), where the alternative is the float32
// path with its conversions of q, k and v.
constexpr long kBf16GemmMinD = 16;

// Query rows [i0, i0+nr) of one (batch, head) (b, h): q (row stride ldq), o (row stride D) and lse
// point at the head's row 0, kv at its kv head's packed blocks (pack_kv_block). Online softmax
// over key blocks; blocks entirely in the causal future are never visited and only the blocks
// crossing the diagonal (or the ragged last block) are masked. rng: dropout, or null.
// E = bf16: q and kv are bf16 and both products run on the bf16 tile GEMM (fp32 accumulation);
// P is rounded to bf16 before its product with V and the softmax stays float32. Out = bf16: o is
// rounded and olo receives the output's rounding residual (null for float). qb points at row i0;
// o and olo at the head's row 0, row stride ldo (D for a (B, H, T, D) output, H·D for a GPT layer's
// (B, T, H·D): both have their heads' rows strided alike).
template <class E, class Out>
BG_INLINE void fwd_block_t(const E* qb, long ldq, const E* kv, Out* o, bf16* olo, long ldo, float* lse, long i0,
                           long nr, long Tq, long Tk, long D, float scale, bool causal, const Rng* rng, long b, long h,
                           float* ws) {
  constexpr bool half = sizeof(E) == 2;
  const long Dp = padded(D), off = Tk - Tq;
  const FwdWs w = fwd_ws(ws, D);
  const bool gemm = half || D >= kGemmMinD;
  long cnt[BQ];
  for (long r = 0; r < nr; ++r) w.m[r] = -__builtin_inff(), w.l[r] = 0;
  __builtin_memset(w.O, 0, nr * Dp * sizeof(float));
  const long kend = causal ? lmin(Tk, i0 + nr - 1 + off + 1) : Tk;
  for (long j0 = 0; j0 < kend; j0 += BK) {
    if (j0 > 0 && j0 % kChunkKeys == 0) {
      if (j0 == kChunkKeys) {  // the first chunk ends: the totals start empty
        for (long r = 0; r < nr; ++r) w.mt[r] = -__builtin_inff(), w.lt[r] = 0;
        __builtin_memset(w.Ot, 0, nr * Dp * sizeof(float));
      }
      fold_chunk(w, nr, Dp);
    }
    const long nb = lmin(BK, kend - j0);
    const E* Kt = kv + j0 / BK * kv_block_size<E>(D);  // (D x BK)
    const E* Vp = Kt + kt_size<E>(D);                   // (BK x Dp)
    const long nbv = (nb + W - 1) / W;  // vectors that hold this block's keys
    if (gemm) {  // S = Q Kᵀ, unscaled
      tile_gemm(nr, nbv * W, D, ldq, BK, BK, false, qb, Kt, w.S);
    } else if constexpr (!half) {
      // Each register tile over the keys its last row sees: on a diagonal block the strips past
      // them are all in the tile's future (the row loop below fills those scores).
      for_row_tiles(nr, [&](long r, auto t) {
        const long nt = causal ? lmin(nb, i0 + r + t.rows - 1 + off - j0 + 1) : nb;
        if (nt > 0) qk_rows<t.rows>(qb + r * ldq, ldq, D, Kt, 1.0f, w.S + r * BK, nt);
      });
    }
    for (long r = 0; r < nr; ++r) {
      // Keys of this block that row i sees (bottom-right causal); <= 0 when the block is wholly
      // in this row's future (possible when Tq < Tk shifts the diagonal off the block grid).
      const long n = causal ? lmin(nb, i0 + r + off - j0 + 1) : nb;
      cnt[r] = n;
      float* s = w.S + r * BK;
      if (n <= 0) {  // P = 0: the row may share a register tile with rows that see this block
        for (long c = 0; c < nbv * W; ++c) s[c] = 0;
        continue;
      }
      // Only the vectors holding the row's n keys are exponentiated (the softmax dominates short
      // blocks); the lanes after n hold P = 0, as the rows sharing a register tile expect.
      const long nv = (n + W - 1) / W;
      for (long c = 0; c < nv; ++c) st(s + W * c, ld(s + W * c) * splat(scale));
      for (long c = n; c < nv * W; ++c) s[c] = -__builtin_inff();  // after scaling: -inf * 0 is NaN
      for (long c = nv * W; c < nbv * W; ++c) s[c] = 0;
      vf mx = splat(-__builtin_inff());
      for (long c = 0; c < nv; ++c) mx = vmax(ld(s + W * c), mx);
      const float m_new = fmax_nan_ignoring(hmax(mx), w.m[r]);
      // A row whose scores are all NaN keeps m = -inf; subtracting 0 then keeps the NaN flowing.
      const float msub = m_new == -__builtin_inff() ? 0.0f : m_new;
      // A row's first block rescales nothing (m = -inf, so alpha = exp(-inf) = 0): no exp there.
      // With T <= 64 every row has one block, and that exp's latency chain was a quarter of
      // fwd_block's time at B16 H4 T32 D4 (perf annotate, AMD EPYC Zen 1, AVX2).
      const float alpha = w.m[r] == -__builtin_inff() ? 0.0f : vexp(splat(w.m[r] - msub))[0];
      vf sum{};
      for (long c = 0; c < nv; ++c) {
        const vf p = vexp(ld(s + W * c) - msub);
        st(s + W * c, p);
        sum += p;
      }
      float* orow = w.O + r * Dp;
      if (alpha != 1.0f)
        for (long d = 0; d < Dp; d += W) st(orow + d, ld(orow + d) * alpha);
      w.l[r] = w.l[r] * alpha + hsum(sum);
      w.m[r] = m_new;
      if (rng) {  // the P that multiplies V is dropped; l above keeps the undropped sum
        dropout_scales(*rng, b, h, i0 + r, j0, n, w.Z);
        for (long c = 0; c < nv; ++c) st(s + W * c, ld(s + W * c) * ld(w.Z + W * c));
      }
    }
    // O += P V over the keys the last row sees (on the tile GEMM rounded up to whole vectors,
    // kr: P = 0 past each row's keys, V = 0 past the block's). The earlier rows hold P = 0 for
    // the keys in their future; those value rows join the product only when they are finite,
    // so a NaN/inf in a future value row never leaks in through 0 * NaN (the rows then go one
    // by one over exactly the keys each sees). Adding 0 * finite changes no bit: both agree.
    if (gemm) {
      const long lo = lmax(cnt[0], 0), hi = cnt[nr - 1];  // rows are consecutive: cnt never falls
      if (hi <= 0) continue;
      const long kr = (hi + W - 1) / W * W;
      if constexpr (half) {
        for (long r = 0; r < nr; ++r) round_to_bf16(w.S + r * BK, kr, w.Pb + r * BK);
        if (lo == kr || rows_finite(Vp, lo, kr, Dp)) pv_gemm(nr, kr, w.Pb, Vp, Dp, w.O);
        else pv_each_row(w.Pb, nr, cnt, Vp, Dp, w.O);
      } else {
        if (lo == kr || rows_finite(Vp, lo, kr, Dp)) tile_gemm(nr, Dp, kr, BK, Dp, Dp, true, w.S, Vp, w.O);
        else pv_each_row(w.S, nr, cnt, Vp, Dp, w.O);
      }
      continue;
    }
    if constexpr (!half)
      for_row_tiles(nr, [&](long r, auto t) {  // register tiles of R rows, each over its last row's keys
        constexpr int NR = t.rows;
        const long lo = lmax(cnt[r], 0), hi = cnt[r + NR - 1];
        if (hi <= 0) return;
        if (lo == hi || rows_finite(Vp, lo, hi, Dp)) pv_rows<NR>(w.S + r * BK, hi, Vp, Dp, w.O + r * Dp);
        else pv_each_row(w.S + r * BK, NR, cnt + r, Vp, Dp, w.O + r * Dp);
      });
  }
  // One chunk (Tk <= kChunkKeys, every training shape here): its accumulators are the result.
  const bool chunked = kend > kChunkKeys;
  if (chunked) fold_chunk(w, nr, Dp);
  const float *O = chunked ? w.Ot : w.O, *m = chunked ? w.mt : w.m, *l = chunked ? w.lt : w.l;
  for (long r = 0; r < nr; ++r) {
    const float inv = 1.0f / l[r];
    if constexpr (sizeof(Out) == 2) {  // o rounded, and the residual o_lo (attention.cpp's rounded_output)
      store_bf16_with_residual(O + r * Dp, inv, D, o + (i0 + r) * ldo, olo + (i0 + r) * ldo);
    } else {
      for (long d = 0; d < D; ++d) o[(i0 + r) * ldo + d] = O[r * Dp + d] * inv;
    }
    lse[i0 + r] = (m[r] == -__builtin_inff() ? 0.0f : m[r]) + __builtin_logf(l[r]);
  }
}

static void fwd_block(const float* q, long ldq, const float* kv, float* o, long ldo, float* lse, long i0, long nr,
                      long Tq, long Tk, long D, float scale, bool causal, const Rng* rng, long b, long h, float* ws) {
  fwd_block_t(q + i0 * ldq, ldq, kv, o, nullptr, ldo, lse, i0, nr, Tq, Tk, D, scale, causal, rng, b, h, ws);
}
// The same on bf16 inputs without bf16 units: kv packed as float (pack_kv_block_from_bf16), the
// block's query rows converted once, o and its residual olo written as bf16. No float copy of
// q, k, v or o exists: at B1 H16 T8192 D128 those copies were 320 of the call's 448 MB.
static void fwd_block_from_bf16(const bf16* q, long ldq, const float* kv, bf16* o, bf16* olo, long ldo, float* lse,
                                long i0, long nr, long Tq, long Tk, long D, float scale, bool causal, const Rng* rng,
                                long b, long h, float* ws) {
  float* Qf = fwd_ws(ws, D).Qf;
  for (long r = 0; r < nr; ++r)
    for (long d = 0; d < D; ++d) Qf[r * D + d] = to_float(q[(i0 + r) * ldq + d]);
  fwd_block_t(static_cast<const float*>(Qf), D, kv, o, olo, ldo, lse, i0, nr, Tq, Tk, D, scale, causal, rng, b, h, ws);
}
#if BABYGPT_VEC_FLOATS == 16  // the bf16 units come with AVX-512 (AVX512-BF16, AMX-BF16)
static void fwd_block_bf16(const bf16* q, long ldq, const bf16* kv, bf16* o, bf16* olo, long ldo, float* lse, long i0,
                           long nr, long Tq, long Tk, long D, float scale, bool causal, const Rng* rng, long b, long h,
                           float* ws) {
  fwd_block_t(q + i0 * ldq, ldq, kv, o, olo, ldo, lse, i0, nr, Tq, Tk, D, scale, causal, rng, b, h, ws);
}
static long kv_block_bf16s(long D) { return kv_block_size<bf16>(D); }
static void pack_kv_block_bf16(const bf16* k, long ldk, const bf16* v, long ldv, long Tk, long D, long kb, bf16* dst) {
  pack_kv_block_t(k, ldk, v, ldv, Tk, D, kb, dst);
}
#endif

// ------------------------------------------------------------------------------------- decode
// One query row against keys [0, n) read in place (decoding: Tq = 1, one new token). With a
// single row there is nothing to amortise packing over, so the scores are dot products straight
// from the key rows and the output a sum of value rows. s: n + D floats of scratch. Writes o (D
// floats) and returns the row's lse. Matches fwd_block's semantics (NaN-ignoring max, masked
// keys never touched). rng: dropout of row 0 of head (b, h), or null; s then holds BK more floats.
static float fwd_row(const float* qi, const float* k, long ldk, const float* v, long ldv, long n, long D, float scale,
                     const Rng* rng, long b, long h, float* o, float* s) {
  const long Dv = D / W * W;
  float m = -__builtin_inff();
  for (long j = 0; j < n; ++j) {
    const float* kj = k + j * ldk;
    vf acc{};
    for (long d = 0; d < Dv; d += W) acc += ld(qi + d) * ld(kj + d);
    float x = hsum(acc);
    for (long d = Dv; d < D; ++d) x += qi[d] * kj[d];
    s[j] = x * scale;
    m = fmax_nan_ignoring(s[j], m);
  }
  const float msub = m == -__builtin_inff() ? 0.0f : m;
  // Sums over the keys in chunks of kChunkKeys, each into a fresh accumulator (see kChunkKeys).
  float l = 0;
  for (long c0 = 0; c0 < n; c0 += kChunkKeys) {
    const long c1 = lmin(n, c0 + kChunkKeys);
    long j = c0;
    vf sum{};
    for (; j + W <= c1; j += W) {
      const vf p = vexp(ld(s + j) - msub);
      st(s + j, p);
      sum += p;
    }
    float part = hsum(sum);
    for (; j < c1; ++j) {
      const float p = vexp(splat(s[j] - msub))[0];
      s[j] = p;
      part += p;
    }
    l += part;
  }
  float* part = s + n;  // D floats, then (dropout) BK
  if (rng)  // drop the p_j that multiply V; l keeps their undropped sum
    for (long j0 = 0; j0 < n; j0 += BK) {
      const long nb = lmin(BK, n - j0);
      dropout_scales(*rng, b, h, 0, j0, nb, part + D);
      for (long c = 0; c < nb; ++c) s[j0 + c] *= part[D + c];
    }
  // o = Σ_j p_j v_j: register tiles of up to TV vectors of D (the value rows' stride is ldv), the
  // tail of D that is not a whole vector scalar; each chunk of keys into `part` (D floats after
  // the n scores), then into o.
  const float inv = 1.0f / l;
  for (long d = 0; d < D; ++d) o[d] = 0;
  for (long c0 = 0; c0 < n; c0 += kChunkKeys) {
    const long nc = lmin(n, c0 + kChunkKeys) - c0;
    const float* sc = s + c0;
    const float* vc = v + c0 * ldv;
    for (long d = 0; d < D; ++d) part[d] = 0;
    long d0 = 0;
    for (; d0 + TV * W <= Dv; d0 += TV * W) pv_tile<1, TV>(sc, nc, vc + d0, ldv, part + d0);
    for (; d0 < Dv; d0 += W) pv_tile<1, 1>(sc, nc, vc + d0, ldv, part + d0);
    for (long d = Dv; d < D; ++d)
      for (long jj = 0; jj < nc; ++jj) part[d] += sc[jj] * vc[jj * ldv + d];
    for (long d = 0; d < D; ++d) o[d] += part[d];
  }
  for (long d = 0; d < D; ++d) o[d] *= inv;
  return msub + __builtin_logf(l);
}

// ----------------------------------------------------------------------------------- backward
// dst[0:D] = x[0:D] * s, rounded to bf16 for a bf16 dst (x holds D rounded up to whole vectors).
static inline void store_row(const float* x, float s, long D, float* dst) {
  for (long d = 0; d < D; ++d) dst[d] = x[d] * s;
}
static inline void store_row(const float* x, float s, long D, bf16* dst) {
  for (long d = 0; d < D; d += W) {
    const vh h = __builtin_convertvector(to_bf16(ld(x + d) * s), vh);
    __builtin_memcpy(dst + d, &h, lmin(W, D - d) * 2);
  }
}

struct BwdWs {
  float *Kt, *Vt, *Kp;  // the key block transposed (D x BK), the value block transposed, K packed (BK x Dp)
  float *dK, *dV;       // the key block's gradients (BK x Dp each, adjacent)
  float *P, *dS;        // a chunk of query rows' probabilities and score gradients (BQ x BK each)
  float *Xq, *Xdo;      // the chunk's rows of q and dO, packed (BQ x Dp each)
  float* Z;             // one row's dropout scales (BK)
  long floats;
};
static BwdWs bwd_ws(float* base, long D) {
  const long Dp = padded(D);
  Carver c{base};
  BwdWs w;
  w.Kt = c.take(D * BK);
  w.Vt = c.take(D * BK);
  w.Kp = c.take(BK * Dp);
  w.dK = c.take(BK * Dp);
  w.dV = c.take(BK * Dp);
  w.P = c.take(BQ * BK);
  w.dS = c.take(BQ * BK);
  w.Xq = c.take(BQ * Dp);
  w.Xdo = c.take(BQ * Dp);
  w.Z = c.take(BK);
  w.floats = c.used;
  return w;
}
static long bwd_workspace(long D) { return bwd_ws(nullptr, D).floats; }

// A (batch, head) slice of q or dO for the backward: row t at p + t * ld, lse and delta contiguous.
template <class E>
struct QRows {
  const E *q, *dout;
  const float *lse, *delta;
  long ldq, lddo;
  float* dQ;  // the head's rows in the group's dQ accumulator (row stride Dp)
  const Rng* rng;  // dropout of head (b, h), or null
  long b, h;
};

// One tile of NR consecutive query rows i.. against one key block, rows u.. of the chunk being
// gathered: recompute P from lse, then dS = P ∘ (dO Vᵀ − delta) into the chunk's rows of P and
// dS; dQ rows += dS K; the rows' q and dO packed into the chunk's Xq, Xdo; seen[u..] the keys
// each row sees. With dropout, O = (P ∘ Z) V: the chunk's P holds P ∘ Z (what dV takes) and
// dS = P ∘ (Z ∘ dO Vᵀ − delta).
template <int NR, class E>
BG_INLINE void bwd_rows(const QRows<E>& h, long i, long u, long j0, long nb, long off, bool causal, long D, float scale,
                        const BwdWs& w, long* seen) {
  const long Dp = padded(D);
  float *const P = w.P + u * BK, *const dS = w.dS + u * BK;
  // The rows' q and dO packed first (float32, whatever E is): the products then broadcast floats
  // straight from memory, where bf16 rows cost a conversion per broadcast (measured 30 % slower
  // backward at B12 H4 T64 D32, AMD Zen 5).
  pack_rows(h.q + i * h.ldq, h.ldq, NR, D, Dp, w.Xq + u * Dp);
  pack_rows(h.dout + i * h.lddo, h.lddo, NR, D, Dp, w.Xdo + u * Dp);
  // The products and the exps run over the keys the tile's last row sees (on a diagonal block
  // the rest are in all its rows' future); past them P and dS are stored as 0 up to the block's
  // nb keys, which dkdv_chunk reads for the chunk's later rows.
  const long nt = causal ? lmin(nb, i + NR - 1 + off - j0 + 1) : nb;
  qk_rows<NR>(w.Xq + u * Dp, Dp, D, w.Kt, scale, P, nt);
  qk_rows<NR>(w.Xdo + u * Dp, Dp, D, w.Vt, 1.0f, dS, nt);
  const long ntv = (nt + W - 1) / W, nbv = (nb + W - 1) / W;
  for (int r = 0; r < NR; ++r) {
    const long n = causal ? lmin(nb, i + r + off - j0 + 1) : nb;  // >= 1: rows start at first_query
    seen[u + r] = n;
    for (long c = ntv; c < nbv; ++c) st(P + r * BK + W * c, vf{}), st(dS + r * BK + W * c, vf{});
    const vf lim = splat((float)n), L = splat(h.lse[i + r]), dl = splat(h.delta[i + r]);
    if (h.rng) {
      dropout_scales(*h.rng, h.b, h.h, i + r, j0, nt, w.Z);
      for (long c = 0; c < ntv; ++c) {
        const vf key = lanes() + (float)(W * c), z = ld(w.Z + W * c);
        const vf p = vexp(ld(P + r * BK + W * c) - L);
        const vf ds = p * (ld(dS + r * BK + W * c) * z - dl);
        st(P + r * BK + W * c, key < lim ? p * z : vf{});
        st(dS + r * BK + W * c, key < lim ? ds : vf{});
      }
      continue;
    }
    for (long c = 0; c < ntv; ++c) {  // the vectors that hold the tile's keys
      const vf key = lanes() + (float)(W * c);
      const vf p = vexp(ld(P + r * BK + W * c) - L);
      const vf ds = p * (ld(dS + r * BK + W * c) - dl);
      // Select, not multiply by a 0/1 mask: a masked key's score may be NaN or inf.
      st(P + r * BK + W * c, key < lim ? p : vf{});
      st(dS + r * BK + W * c, key < lim ? ds : vf{});
    }
  }
  // Rows that see fewer than nmax keys hold dS = 0 for the rest, which meet K only when it is
  // finite: 0 * NaN would leak a masked pair's NaN/inf (docs/design.md §2.7). Otherwise each row
  // goes over exactly the keys it sees, as the forward's P V.
  const long nmin = seen[u], nmax = seen[u + NR - 1];  // rows are consecutive: the first sees the fewest keys
  if (nmin == nmax || rows_finite(w.Kp, nmin, nmax, Dp)) {
    pv_rows<NR>(dS, nmax, w.Kp, Dp, h.dQ + i * Dp);
  } else {
    pv_each_row(dS, NR, seen + u, w.Kp, Dp, h.dQ + i * Dp);
  }
}

// dK += dSᵀ Q and dV += Pᵀ dO over the n query rows of a chunk (bwd_rows gathered them): block
// products whose register tiles (R keys x TV vectors of D) accumulate over all n rows before
// they are stored. Done per tile of R query rows instead, every dK/dV vector was loaded and
// stored once per R rows, and that loop was bound by its loads and stores (47 % of the
// backward, perf on AMD Zen 3). As in dQ, a masked pair's dS = 0 or P = 0 meets that query
// row's q or dO only when they are finite; otherwise each row updates exactly the keys it sees.
static void dkdv_chunk(const BwdWs& w, long n, const long* seen, long Dp) {
  const long nmax = seen[n - 1];
  if (seen[0] == nmax || (rows_finite(w.Xq, 0, n, Dp) && rows_finite(w.Xdo, 0, n, Dp))) {
    long r0 = 0;  // the first row that sees key c: the rows before it hold dS = P = 0 there (causal)
    for_row_tiles(nmax, [&](long c, auto t) {
      while (seen[r0] <= c) ++r0;  // seen rises with the row and seen[n - 1] = nmax > c
      pv_rows<t.rows, true>(w.dS + r0 * BK + c, n - r0, w.Xq + r0 * Dp, Dp, w.dK + c * Dp);
      pv_rows<t.rows, true>(w.P + r0 * BK + c, n - r0, w.Xdo + r0 * Dp, Dp, w.dV + c * Dp);
    });
    return;
  }
  float *const dK = w.dK, *const dV = w.dV;  // locals: st() may alias the workspace struct
  const float *const dS = w.dS, *const P = w.P, *const Xq = w.Xq, *const Xdo = w.Xdo;
  for (long r = 0; r < n; ++r)
    for (long c = 0; c < seen[r]; ++c) {
      const vf ds = splat(dS[r * BK + c]), p = splat(P[r * BK + c]);
      for (long d = 0; d < Dp; d += W) {
        st(dK + c * Dp + d, ld(dK + c * Dp + d) + ds * ld(Xq + r * Dp + d));
        st(dV + c * Dp + d, ld(dV + c * Dp + d) + p * ld(Xdo + r * Dp + d));
      }
    }
}

// The backward of one (batch, kv head) over the key blocks kb0, kb0 + kstep, ... < kb1: its G
// query heads' dQ contributions accumulate into dQ (G x Tq rows of Dp floats, zeroed by the
// caller; unscaled), and it writes
// dk, dv (at the kv head's row 0, row strides lddk, lddv) of those keys. q/dout rows of head g of the group start at
// q + g * hsq / dout + g * hsdo; lse, delta point at the group's first head (Tq floats per head).
// rng: dropout, or null; the group's heads are h0, h0 + 1, ... of batch b. E: the dtype of q, dout,
// k, v, dk, dv (float, or bf16 converted while packing and rounded when stored).
template <class E>
BG_INLINE void bwd_group_t(const E* q, long hsq, long ldq, const E* dout, long hsdo, long lddo, const float* lse,
                           const float* delta, const E* k, long ldk, const E* v, long ldv, E* dk, long lddk, E* dv,
                           long lddv, long G, long Tq, long Tk, long D, float scale, bool causal, long kb0, long kb1,
                           long kstep, const Rng* rng, long b, long h0, float* dQ, float* ws) {
  const long Dp = padded(D), off = Tk - Tq;
  const BwdWs w = bwd_ws(ws, D);
  for (long kb = kb0; kb < kb1; kb += kstep) {
    const long j0 = kb * BK, nb = lmin(BK, Tk - j0);
    pack_transposed(k + j0 * ldk, ldk, nb, D, w.Kt);
    pack_transposed(v + j0 * ldv, ldv, nb, D, w.Vt);
    pack_rows(k + j0 * ldk, ldk, nb, D, Dp, w.Kp);
    __builtin_memset(w.dK, 0, 2 * BK * Dp * sizeof(float));  // dK and dV are adjacent
    const long first = causal ? lmax(0, j0 - off) : 0;
    for (long g = 0; g < G; ++g) {
      const QRows<E> h{q + g * hsq, dout + g * hsdo, lse + g * Tq, delta + g * Tq, ldq, lddo, dQ + g * Tq * Dp,
                    rng, b, h0 + g};
      for (long i0 = first; i0 < Tq; i0 += BQ) {  // chunks of BQ query rows
        const long n = lmin(BQ, Tq - i0);
        long seen[BQ];
        for_row_tiles(n, [&](long r, auto t) {
          bwd_rows<t.rows>(h, i0 + r, r, j0, nb, off, causal, D, scale, w, seen);
        });
        dkdv_chunk(w, n, seen, Dp);
      }
    }
    for (long c = 0; c < nb; ++c) {
      store_row(w.dK + c * Dp, scale, D, dk + (j0 + c) * lddk);
      store_row(w.dV + c * Dp, 1.0f, D, dv + (j0 + c) * lddv);
    }
  }
}
// The entry points attention.cpp calls, one per input dtype (instantiated here, under this copy's target).
#define BABYGPT_BWD_GROUP(name, E)                                                                                    \
  static void name(const E* q, long hsq, long ldq, const E* dout, long hsdo, long lddo, const float* lse,             \
                   const float* delta, const E* k, long ldk, const E* v, long ldv, E* dk, long lddk, E* dv,           \
                   long lddv, long G, long Tq, long Tk, long D, float scale, bool causal, long kb0, long kb1,         \
                   long kstep, const Rng* rng, long b, long h0, float* dQ, float* ws) {                               \
    bwd_group_t(q, hsq, ldq, dout, hsdo, lddo, lse, delta, k, ldk, v, ldv, dk, lddk, dv, lddv, G, Tq, Tk, D, scale,   \
                causal, kb0, kb1, kstep, rng, b, h0, dQ, ws);                                                         \
  }
BABYGPT_BWD_GROUP(bwd_group, float)
BABYGPT_BWD_GROUP(bwd_group_bf16, bf16)
#undef BABYGPT_BWD_GROUP

#undef BG_INLINE

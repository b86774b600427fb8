// Fused LoRA row-block kernel for the CPU, float32: for rows of x,
//   xa = x Aᵀ                      (the rank-r projection, kept for the backward)
//   y  = x Wᵀ + bias + s · xa Bᵀ   (written once)
// x is read once for both products: one GEMM against the packed concatenation [Wᵀ | Aᵀ], and the
// low-rank term and the bias are the starting value of each y accumulator tile, so y is never
// re-read. The backward's dx = dy W + s (dy B) A is the same computation with the roles renamed
// (lora.cpp).
//
// Included several times by lora.cpp, each time in a different namespace under a different
// `#pragma GCC target` (AVX-512, AVX2+FMA, baseline x86-64), like attention_simd.h and for the
// same reasons: no std headers under the pragma, GCC vector extensions of W floats, memcpy loads.
//
// Needs, defined by the includer: BABYGPT_VEC_FLOATS (W: 16, 8 or 4).
//
// Packed panels (pack_panels in lora.cpp): a K x n matrix M is stored as ceil(n / NR) panels of
// K x NR floats, panel p holding columns [p NR, p NR + NR) row after row, zero-padded past n.
// The micro-kernel multiplies MR rows of x by one panel, with MR x NR accumulators in registers.

constexpr int W = BABYGPT_VEC_FLOATS;
typedef float vf __attribute__((vector_size(W * 4)));

constexpr int NR = 2 * W;  // panel width: two vectors
constexpr int MR = 6;      // rows per micro-tile: 6 x 2 accumulators + 2 panel loads + 1 splat <= 16 registers
constexpr long MB = 8 * MR;  // rows per task: the x block (MB x K floats) stays in L2 across all panels
constexpr long L2_PANEL_BYTES = 192 * 1024;  // packed-panel bytes reused by one sweep of the row block

#define BG_INLINE static inline __attribute__((always_inline))

BG_INLINE vf ld(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
BG_INLINE void st(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
// Every lane x, as one broadcast load: x - 0 is x for every x, so GCC drops the subtraction.
// (`vf{} + x` is not x for x = -0, so it costs a scalar add and a register broadcast, which on
// Zen 3 competes with the FMAs for a floating-point pipe: the kernel ran at half MKL's speed.)
BG_INLINE vf splat(float x) { return x - vf{}; }
BG_INLINE long lmin(long a, long b) { return a < b ? a : b; }

// acc[m] += x[m, :K] · panel (K x NR), for m < R (R <= MR rows, a compile-time count so the
// accumulators live in registers).
template <int R>
BG_INLINE void tile_k_loop(const float* x, long ldx, long K, const float* panel, vf (&acc)[MR][2]) {
  for (long k = 0; k < K; ++k) {
    const vf b0 = ld(panel + k * NR), b1 = ld(panel + k * NR + W);
#pragma GCC unroll 6
    for (int m = 0; m < R; ++m) {
      const vf xv = splat(x[m * ldx + k]);
      acc[m][0] += xv * b0;
      acc[m][1] += xv * b1;
    }
  }
}

// Stores columns [0, n) of the R x NR accumulator tile (n <= NR) to out (leading dimension ldo).
template <int R>
BG_INLINE void store_tile(const vf (&acc)[MR][2], long n, float* out, long ldo) {
  for (int m = 0; m < R; ++m) {
    if (n == NR) {
      st(out + m * ldo, acc[m][0]);
      st(out + m * ldo + W, acc[m][1]);
    } else {
      float tmp[NR];
      st(tmp, acc[m][0]);
      st(tmp + W, acc[m][1]);
      __builtin_memcpy(out + m * ldo, tmp, n * sizeof(float));
    }
  }
}

// R rows (R <= MR) of the fused product; see the header comment. sxa is scratch of MR x rpad floats
// (rpad: r rounded up to NR), receiving s · xa for the y tiles. Columns of y are swept in chunks of
// panels that fit L2 (chunk_panels), so a chunk is reused by every row of the block.
template <int R>
void rows(const float* x, long ldx, long K, long n, long r, const float* wp, const float* ap, const float* bp,
          const float* bias_pad, float s, float* y, long ldy, float* xa, long ldxa, float* sxa, long p0, long p1) {
  const long rpad = (r + NR - 1) / NR * NR;
  if (p0 == 0) {  // the rank-r projection, once per row group (before its first y chunk)
    for (long q = 0; q < rpad / NR; ++q) {
      vf acc[MR][2] = {};
      tile_k_loop<R>(x, ldx, K, ap + q * K * NR, acc);
      store_tile<R>(acc, lmin(NR, r - q * NR), xa + q * NR, ldxa);
      for (int m = 0; m < R; ++m) {
        st(sxa + m * rpad + q * NR, acc[m][0] * splat(s));
        st(sxa + m * rpad + q * NR + W, acc[m][1] * splat(s));
      }
    }
  }
  for (long p = p0; p < p1; ++p) {
    vf acc[MR][2];
    const vf b0 = bias_pad ? ld(bias_pad + p * NR) : vf{}, b1 = bias_pad ? ld(bias_pad + p * NR + W) : vf{};
    for (int m = 0; m < R; ++m) acc[m][0] = b0, acc[m][1] = b1;
    // bias + s · xa Bᵀ first: the low-rank term is the tile's starting value.
    const float* bpanel = bp + p * r * NR;
    for (long j = 0; j < r; ++j) {
      const vf c0 = ld(bpanel + j * NR), c1 = ld(bpanel + j * NR + W);
      for (int m = 0; m < R; ++m) {
        const vf v = splat(sxa[m * rpad + j]);
        acc[m][0] += v * c0;
        acc[m][1] += v * c1;
      }
    }
    tile_k_loop<R>(x, ldx, K, wp + p * K * NR, acc);
    store_tile<R>(acc, lmin(NR, n - p * NR), y + p * NR, ldy);
  }
}

// Rows [0, M) of the fused product (M <= MB), x (M x K, leading dimension ldx). wp: packed Wᵀ
// (K x n), ap: packed Aᵀ (K x r), bp: packed Bᵀ (r x n),
// bias_pad: n rounded up to NR floats or null. Writes y (M x n, ldy) and xa (M x r, ldxa).
// Every output element is one fixed-order sum over k, whatever M or the thread running it:
// the result does not depend on how rows are split into tasks.
void row_block(const float* x, long ldx, long M, long K, long n, long r, const float* wp, const float* ap,
               const float* bp, const float* bias_pad, float s, float* y, long ldy, float* xa, long ldxa,
               float* sxa_block /* MB x rpad */) {
  const long panels = (n + NR - 1) / NR, rpad = (r + NR - 1) / NR * NR;
  long chunk = L2_PANEL_BYTES / (K * NR * 4);
  chunk = chunk < 1 ? 1 : chunk;
  for (long p0 = 0; p0 < panels; p0 += chunk) {
    const long p1 = lmin(panels, p0 + chunk);
    for (long m0 = 0; m0 < M; m0 += MR) {
      const float* xm = x + m0 * ldx;
      float *ym = y + m0 * ldy, *xam = xa + m0 * ldxa, *sxa = sxa_block + m0 * rpad;
      switch (lmin(MR, M - m0)) {
        case 6: rows<6>(xm, ldx, K, n, r, wp, ap, bp, bias_pad, s, ym, ldy, xam, ldxa, sxa, p0, p1); break;
        case 5: rows<5>(xm, ldx, K, n, r, wp, ap, bp, bias_pad, s, ym, ldy, xam, ldxa, sxa, p0, p1); break;
        case 4: rows<4>(xm, ldx, K, n, r, wp, ap, bp, bias_pad, s, ym, ldy, xam, ldxa, sxa, p0, p1); break;
        case 3: rows<3>(xm, ldx, K, n, r, wp, ap, bp, bias_pad, s, ym, ldy, xam, ldxa, sxa, p0, p1); break;
        case 2: rows<2>(xm, ldx, K, n, r, wp, ap, bp, bias_pad, s, ym, ldy, xam, ldxa, sxa, p0, p1); break;
        default: rows<1>(xm, ldx, K, n, r, wp, ap, bp, bias_pad, s, ym, ldy, xam, ldxa, sxa, p0, p1); break;
      }
    }
  }
}

// Fused LoRA row-block kernel for the CPU, float32: for rows of x,
//   xa = x Aᵀ                      (the rank-r projection, kept for the backward)
//   y  = x Wᵀ + bias + s · xa Bᵀ   (written once)
// x is read once from memory for both products: one GEMM against the packed concatenation
// [Wᵀ | Aᵀ]. The low-rank term and the bias are the starting value of each y accumulator tile, so
// y takes no second pass (with K beyond one chunk, a tile's partial sums come back from cache).
// The backward's dx = dy W + s (dy B) A is the same computation with the roles renamed
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
constexpr long MB = 8 * MR;  // rows per task: an x chunk (MB x KC floats) stays in L2 across all panels
constexpr long KC = 4096 / NR;  // k per chunk: a panel chunk (KC x NR floats, 16 KB) stays in L1 across
                                // the MB rows

#define BG_INLINE static inline __attribute__((always_inline))

BG_INLINE vf ld(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
BG_INLINE void st(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
// Every lane x, as one broadcast load: x - 0 is x for every x, so GCC drops the subtraction.
// (`vf{} + x` is not x for x = -0, so it costs a scalar add and a register broadcast, which on
// Zen 3 competes with the FMAs for a floating-point pipe: the kernel ran at half MKL's speed.)
BG_INLINE vf splat(float x) { return x - vf{}; }
BG_INLINE long lmin(long a, long b) { return a < b ? a : b; }

// acc[m] += x[m, :K] · panel (K x NR), for m < R (R <= MR rows, a compile-time count so the
// accumulators live in registers). V = 1 multiplies only the panel's first W columns (acc[m][1]
// untouched): a rank r <= W fills no more, and the padding would double the xa sweep's FMAs.
template <int R, int V = 2>
BG_INLINE void tile_k_loop(const float* x, long ldx, long K, const float* panel, vf (&acc)[MR][2]) {
  for (long k = 0; k < K; ++k) {
    const vf b0 = ld(panel + k * NR), b1 = V == 2 ? ld(panel + k * NR + W) : vf{};
#pragma GCC unroll 6
    for (int m = 0; m < R; ++m) {
      const vf xv = splat(x[m * ldx + k]);
      acc[m][0] += xv * b0;
      if constexpr (V == 2) acc[m][1] += xv * b1;
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

// s · xa = s · x Aᵀ for R rows (R <= MR): xa to out (ldxa), s · xa to sxa (MR x rpad scratch,
// rpad: r rounded up to NR) for the y tiles.
template <int R>
void xa_rows(const float* x, long ldx, long K, long r, const float* ap, float s, float* xa, long ldxa, float* sxa) {
  const long rpad = (r + NR - 1) / NR * NR;
  for (long q = 0; q < rpad / NR; ++q) {
    vf acc[MR][2] = {};
    if (r - q * NR <= W)
      tile_k_loop<R, 1>(x, ldx, K, ap + q * K * NR, acc);
    else
      tile_k_loop<R>(x, ldx, K, ap + q * K * NR, acc);
    store_tile<R>(acc, lmin(NR, r - q * NR), xa + q * NR, ldxa);
    for (int m = 0; m < R; ++m) {
      st(sxa + m * rpad + q * NR, acc[m][0] * splat(s));
      st(sxa + m * rpad + q * NR + W, acc[m][1] * splat(s));
    }
  }
}

// One R x NR tile of y (columns [0, nv) valid), for k in [k0, k1): the first chunk starts from
// bias + s · xa Bᵀ (the low-rank term is the tile's starting value), later ones from the partial
// sums already in y. panel: the tile's packed Wᵀ columns (K x NR), bpanel: its packed Bᵀ (r x NR).
template <int R>
void y_tile(const float* x, long ldx, long k0, long k1, long r, const float* panel, const float* bpanel,
            const float* bias, const float* sxa, long rpad, float* y, long ldy, long nv) {
  vf acc[MR][2];
  if (k0 == 0) {
    const vf b0 = bias ? ld(bias) : vf{}, b1 = bias ? ld(bias + W) : vf{};
    for (int m = 0; m < R; ++m) acc[m][0] = b0, acc[m][1] = b1;
    for (long j = 0; j < r; ++j) {
      const vf c0 = ld(bpanel + j * NR), c1 = ld(bpanel + j * NR + W);
      for (int m = 0; m < R; ++m) {
        const vf v = splat(sxa[m * rpad + j]);
        acc[m][0] += v * c0;
        acc[m][1] += v * c1;
      }
    }
  } else {
    for (int m = 0; m < R; ++m) {
      float tmp[NR] = {};
      __builtin_memcpy(tmp, y + m * ldy, nv * sizeof(float));
      acc[m][0] = ld(tmp), acc[m][1] = ld(tmp + W);
    }
  }
  tile_k_loop<R>(x + k0, ldx, k1 - k0, panel + k0 * NR, acc);
  store_tile<R>(acc, nv, y, ldy);
}

// Rows [0, M) of the fused product (M <= MB), x (M x K, leading dimension ldx). wp: packed Wᵀ
// (K x n), ap: packed Aᵀ (K x r), bp: packed Bᵀ (r x n), bias_pad: n rounded up to NR floats or
// null. Writes y (M x n, ldy) and xa (M x r, ldxa); sxa_block is MB x rpad scratch.
// The xa sweep reads the x block from memory; the y sweeps, chunk of k by chunk of k, find it in
// L2. Every output element is one fixed-order sum (over k chunks in order, each in order), whatever
// M or the thread running it: the result does not depend on how rows are split into tasks.
void row_block(const float* x, long ldx, long M, long K, long n, long r, const float* wp, const float* ap,
               const float* bp, const float* bias_pad, float s, float* y, long ldy, float* xa, long ldxa,
               float* sxa_block) {
  const long panels = (n + NR - 1) / NR, rpad = (r + NR - 1) / NR * NR;
#define BG_ROWS(fn, ...)                          \
  switch (lmin(MR, M - m0)) {                     \
    case 6: fn<6>(__VA_ARGS__); break;            \
    case 5: fn<5>(__VA_ARGS__); break;            \
    case 4: fn<4>(__VA_ARGS__); break;            \
    case 3: fn<3>(__VA_ARGS__); break;            \
    case 2: fn<2>(__VA_ARGS__); break;            \
    default: fn<1>(__VA_ARGS__); break;           \
  }
  for (long m0 = 0; m0 < M; m0 += MR)
    BG_ROWS(xa_rows, x + m0 * ldx, ldx, K, r, ap, s, xa + m0 * ldxa, ldxa, sxa_block + m0 * rpad)
  for (long k0 = 0; k0 < K; k0 += KC) {
    const long k1 = lmin(K, k0 + KC);
    for (long p = 0; p < panels; ++p)
      for (long m0 = 0; m0 < M; m0 += MR)
        BG_ROWS(y_tile, x + m0 * ldx, ldx, k0, k1, r, wp + p * K * NR, bp + p * r * NR,
                bias_pad ? bias_pad + p * NR : nullptr, sxa_block + m0 * rpad, rpad, y + m0 * ldy + p * NR, ldy,
                lmin(NR, n - p * NR))
  }
#undef BG_ROWS
}

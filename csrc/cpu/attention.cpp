// Causal attention on the CPU: forward and FlashAttention-2-style backward (recompute from lse).
//
// float32 (and fp16/bf16, which are computed in float32) runs the blocked, vectorised kernels of
// attention_simd.h, compiled three times (AVX-512, AVX2+FMA, baseline x86-64) and picked at run time
// from what the CPU supports, so the wheel needs no -march=native. float64 (gradcheck) keeps the
// plain per-row implementation below: it is the readable version of the same algorithm, and speed
// does not matter there.
//
// Parallelism is at::parallel_for: forward over (batch, head, query block), or (batch, head) when
// decoding; backward over (batch, kv head), one task computing dq of the group's query heads and
// dk, dv of the kv head, so each output element has exactly one writer (no atomics, GQA needs no
// special case), with the key blocks split further when there are few (batch, kv head) pairs.
//
// Attention dropout (dropout_p > 0, a seed): the mask of csrc/dropout_rng.h, a pure function of
// (seed, b, h, i, j), multiplies the probabilities that meet V after the softmax (scaled by
// 1 / (1 - p)); the saved lse is that of the undropped row, and the backward regenerates the same
// mask for dV and dP. Nothing of the mask is stored, and p == 0 never touches the generator.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../dropout_rng.h"
#include "../heads.h"
#include "isa.h"

namespace babygpt::cpu {

// C (M x N, row stride ldc) = A (M x K, lda) · B (K x N, ldb), plus C when add: the forward's
// tile products, on oneDNN's brgemm micro-kernel through ATen (JIT-compiled per shape and
// thread for the CPU's own vector units, AVX2 and up; below AVX2 ATen runs its BLAS gemm).
void tile_gemm(long M, long N, long K, long lda, long ldb, long ldc, bool add, const float* A, const float* B,
               float* C) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add, A, B, C);
}
// The same on bf16 operands (bf16 bits), B in the VNNI layout (attention_simd.h), on the CPU's
// bf16 units: AVX512-BF16's vdpbf16ps, or AMX tiles where oneDNN finds them. Callers check
// bf16_units() first and end each task with brgemm_release() (AMX's tile state).
void tile_gemm(long M, long N, long K, long lda, long ldb, long ldc, bool add, const unsigned short* A,
               const unsigned short* B, float* C) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add, reinterpret_cast<const at::BFloat16*>(A),
                              reinterpret_cast<const at::BFloat16*>(B), C, /*is_vnni=*/true);
}

// One copy of the float32 kernels per instruction set (see attention_simd.h for why).
namespace isa_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#define BABYGPT_VEC_FLOATS 16
#define BABYGPT_TILE_ROWS 4
#define BABYGPT_TILE_VECS 4
#include "attention_simd.h"
#undef BABYGPT_TILE_VECS
#undef BABYGPT_TILE_ROWS
#undef BABYGPT_VEC_FLOATS
#pragma GCC pop_options
}  // namespace isa_avx512
namespace isa_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define BABYGPT_VEC_FLOATS 8
#define BABYGPT_TILE_ROWS 6
#define BABYGPT_TILE_VECS 2
#include "attention_simd.h"
#undef BABYGPT_TILE_VECS
#undef BABYGPT_TILE_ROWS
#undef BABYGPT_VEC_FLOATS
#pragma GCC pop_options
}  // namespace isa_avx2
namespace isa_base {  // x86-64's SSE2: 4-float xmm vectors
#define BABYGPT_VEC_FLOATS 4
#define BABYGPT_TILE_ROWS 2
#define BABYGPT_TILE_VECS 4
#include "attention_simd.h"
#undef BABYGPT_TILE_VECS
#undef BABYGPT_TILE_ROWS
#undef BABYGPT_VEC_FLOATS
}  // namespace isa_base

namespace {

struct F32Kernels {
  const char* name;
  decltype(&isa_base::fwd_block) fwd_block;
  decltype(&isa_base::fwd_row) fwd_row;
  decltype(&isa_base::fwd_workspace) fwd_workspace;
  decltype(&isa_base::pack_kv_block) pack_kv_block;
  decltype(&isa_base::fwd_block_from_bf16) fwd_block_from_bf16;
  decltype(&isa_base::pack_kv_block_from_bf16) pack_kv_block_from_bf16;
  decltype(&isa_base::bwd_group) bwd_group;
  decltype(&isa_base::bwd_group_bf16) bwd_group_bf16;
  decltype(&isa_base::bwd_workspace) bwd_workspace;
};

#define BABYGPT_KERNELS(ns) \
  F32Kernels{#ns, &ns::fwd_block, &ns::fwd_row, &ns::fwd_workspace, &ns::pack_kv_block, &ns::fwd_block_from_bf16, \
             &ns::pack_kv_block_from_bf16, &ns::bwd_group, &ns::bwd_group_bf16, &ns::bwd_workspace}

// The copy of the kernels for the instruction set chosen_isa() picks (isa.h).
const F32Kernels& f32_kernels() {
  static const F32Kernels k = [] {
    switch (chosen_isa()) {
      case Isa::avx512: return BABYGPT_KERNELS(isa_avx512);
      case Isa::avx2: return BABYGPT_KERNELS(isa_avx2);
      default: return BABYGPT_KERNELS(isa_base);
    }
  }();
  return k;
}

struct Shape {
  int64_t B, H, Hkv, Tq, Tk, D;
  int64_t group() const { return H / Hkv; }
  // Last key (inclusive) that query i sees. Causal is bottom-right aligned: with Tq < Tk the
  // queries are the last Tq positions of the sequence (KV-cache decoding).
  int64_t last_key(int64_t i, bool causal) const { return causal ? i + Tk - Tq : Tk - 1; }
  // First query that sees key j.
  int64_t first_query(int64_t j, bool causal) const { return causal ? std::max<int64_t>(0, j - (Tk - Tq)) : 0; }
  int64_t q_row(int64_t b, int64_t h, int64_t i) const { return (b * H + h) * Tq + i; }
  int64_t k_row(int64_t b, int64_t hk, int64_t j) const { return (b * Hkv + hk) * Tk + j; }
};

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

template <typename T>
inline void axpy(T alpha, const T* __restrict x, T* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

// Rows per parallel task: enough work (~64K multiply-adds) to amortise scheduling.
int64_t grain(int64_t work_per_row) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, work_per_row)); }

using dropout::Rng;

// The dropout scale of score (b, h, i, j): 1 / (1 - p) if kept, 0 if dropped, 1 without dropout.
template <typename T>
inline T dropout_scale(const Rng* rng, int64_t b, int64_t h, int64_t i, int64_t j) {
  return !rng ? T(1) : dropout::keep(*rng, b, h, i, j) ? T(rng->keep_scale_f64) : T(0);
}

template <typename T>
void forward(const T* q, const T* k, const T* v, T* o, T* lse, Shape s, T scale, bool causal, const Rng* rng) {
  const int64_t D = s.D;
  at::parallel_for(0, s.B * s.H * s.Tq, grain(s.Tk * D), [&](int64_t begin, int64_t end) {
    std::vector<T> p(s.Tk);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % s.Tq, h = (row / s.Tq) % s.H, b = row / (s.Tq * s.H);
      const T* qi = q + row * D;
      const T* kb = k + s.k_row(b, h / s.group(), 0) * D;
      const T* vb = v + s.k_row(b, h / s.group(), 0) * D;
      const int64_t n = s.last_key(i, causal) + 1;
      // Two passes over the row (max, then exp-sum) instead of an online softmax: the whole row
      // of scores fits in cache on the CPU, and this is exact in the same way.
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        p[j] = scale * dot(qi, kb + j * D, D);
        m = p[j] > m ? p[j] : m;  // NaN scores never win the max; they propagate through the sum
      }
      T l = 0;
      T* oi = o + row * D;
      std::fill(oi, oi + D, T(0));
      for (int64_t j = 0; j < n; ++j) {
        const T pj = std::exp(p[j] - m);
        l += pj;
        axpy(pj * dropout_scale<T>(rng, b, h, i, j), vb + j * D, oi, D);
      }
      const T inv = T(1) / l;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) oi[d] *= inv;
      lse[row] = m + std::log(l);
    }
  });
}

template <typename T>
void backward(const T* dout, const T* q, const T* k, const T* v, const T* o, const T* lse, T* dq, T* dk,
              T* dv, Shape s, T scale, bool causal, const Rng* rng) {
  const int64_t D = s.D, rows = s.B * s.H * s.Tq;
  // delta_i = do_i · o_i = Σ_j p_ij dp_ij: the softmax-backward correction term per query row.
  std::vector<T> delta(rows);
  at::parallel_for(0, rows, grain(D), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) delta[row] = dot(dout + row * D, o + row * D, D);
  });

  // dq_i = scale Σ_j ds_ij k_j with ds_ij = p_ij (z_ij do_i·v_j − delta_i), z_ij the dropout scale;
  // one task owns a query row.
  at::parallel_for(0, rows, grain(2 * s.Tk * D), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % s.Tq, h = (row / s.Tq) % s.H, b = row / (s.Tq * s.H);
      const T* kb = k + s.k_row(b, h / s.group(), 0) * D;
      const T* vb = v + s.k_row(b, h / s.group(), 0) * D;
      T* dqi = dq + row * D;
      std::fill(dqi, dqi + D, T(0));
      for (int64_t j = 0, n = s.last_key(i, causal) + 1; j < n; ++j) {
        const T p = std::exp(scale * dot(q + row * D, kb + j * D, D) - lse[row]);
        const T z = dropout_scale<T>(rng, b, h, i, j);
        const T ds = p * (z * dot(dout + row * D, vb + j * D, D) - delta[row]);
        axpy(scale * ds, kb + j * D, dqi, D);
      }
    }
  });

  // dk_j, dv_j: one task owns a key row and sums over every query (of every head in the GQA
  // group) that sees it, so grouped heads need no atomics.
  at::parallel_for(0, s.B * s.Hkv * s.Tk, grain(2 * s.group() * s.Tq * D), [&](int64_t begin, int64_t end) {
    for (int64_t krow = begin; krow < end; ++krow) {
      const int64_t j = krow % s.Tk, hk = (krow / s.Tk) % s.Hkv, b = krow / (s.Tk * s.Hkv);
      const T* kj = k + krow * D;
      const T* vj = v + krow * D;
      T* dkj = dk + krow * D;
      T* dvj = dv + krow * D;
      std::fill(dkj, dkj + D, T(0));
      std::fill(dvj, dvj + D, T(0));
      for (int64_t h = hk * s.group(); h < (hk + 1) * s.group(); ++h) {
        for (int64_t i = s.first_query(j, causal); i < s.Tq; ++i) {
          const int64_t row = s.q_row(b, h, i);
          const T p = std::exp(scale * dot(q + row * D, kj, D) - lse[row]);
          const T z = dropout_scale<T>(rng, b, h, i, j);
          const T ds = p * (z * dot(dout + row * D, vj, D) - delta[row]);
          axpy(p * z, dout + row * D, dvj, D);
          axpy(scale * ds, q + row * D, dkj, D);
        }
      }
    }
  });
}

// A (B, H, T, D) tensor read or written in place (csrc/heads.h, shared with the CUDA kernels): the
// inputs, and the outputs too, which are either contiguous (attn_fwd, attn_bwd) or views of a GPT
// layer's (B, T, ·) tensors (attn_qkv_fwd, attn_qkv_bwd).
template <class E>
StridedHeads<E> heads_of(E* p, const at::Tensor& t) { return {p, t.stride(0), t.stride(1), t.stride(2)}; }
using View = StridedHeads<const float>;
View view_of(const at::Tensor& t) { return heads_of<const float>(t.data_ptr<float>(), t); }
StridedHeads<float> out_of(at::Tensor& t) { return heads_of(t.data_ptr<float>(), t); }

// The blocked forward of both dtypes: K and V packed once (one task per (batch, kv head, key
// block), pack(b, hk, kb, dst) writing kvb elements; with a single query block per head, by the
// block tasks themselves; otherwise a chunk of kv heads at a time, kPackBytes at most); then
// tasks of (batch, head, query block of BQ rows), block(b, h, bh, kv, i0, nr, ws) with kv the head's packed blocks and ws a workspace of
// ws_floats. With causal attention a later block has more keys to visit, so the blocks of a head
// are enumerated 0, n-1, 1, n-2, ...: any contiguous range of tasks (what at::parallel_for hands a
// thread) then carries a fair share. release: end each task with brgemm_release (AMX tile state).
constexpr int64_t kPackBytes = 8 << 20;
template <class E, class Pack, class Block>
void forward_blocks(const Shape& s, bool causal, int64_t kvb, int64_t ws_floats, bool release, Pack&& pack,
                    Block&& block) {
  constexpr int64_t bq = isa_base::BQ, bk = isa_base::BK;
  const int64_t nkb = (s.Tk + bk - 1) / bk, nqb = (s.Tq + bq - 1) / bq;
  const int64_t work = std::min(bq, s.Tq) * s.Tk * std::max<int64_t>(s.D, 16);
  if (nqb == 1) {
    // One query block per head (Tq <= BQ): a task packs the blocks of its head's kv head itself
    // (again only when the kv head changes) and runs that block. The shared packing phase below
    // would run serially at these sizes (its work is under one parallel_for grain) while the other
    // thread waits: 5 % of the samples, plus 14 % in that thread's spin, at B16 H4 T32 D4 (perf,
    // AMD EPYC Zen 1); this way the kernel took 192 µs there instead of 220-260 µs.
    at::parallel_for(0, s.B * s.H, grain(work), [&](int64_t begin, int64_t end) {
      std::vector<float> ws(ws_floats);
      const std::unique_ptr<E[]> kv(new E[nkb * kvb]);
      int64_t packed = -1;  // the (batch, kv head) whose blocks kv holds
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / s.H, h = bh % s.H, hk = h / s.group();
        if (b * s.Hkv + hk != packed) {
          for (int64_t kb = 0; kb < nkb; ++kb) pack(b, hk, kb, kv.get() + kb * kvb);
          packed = b * s.Hkv + hk;
        }
        block(b, h, bh, kv.get(), 0, s.Tq, ws.data());
      }
      if (release) at::native::cpublas::brgemm_release();
    });
    return;
  }
  // The (batch, kv head) pairs run in chunks whose packed blocks fit kPackBytes (at least one pair a
  // chunk): every short-context shape is one chunk, and at long contexts the packed copy stays a
  // few MB instead of a second K and V (fp32 B1 H16 T8192 D128: 128 MB).
  const int64_t pairs = s.B * s.Hkv, pair_elems = nkb * kvb;
  const int64_t chunk = std::clamp<int64_t>(kPackBytes / (pair_elems * int64_t(sizeof(E))), 1, pairs);
  // packed blocks of a chunk, (pair, key block), every element written by pack (so left uninitialised)
  const std::unique_ptr<E[]> kv(new E[chunk * pair_elems]);
  for (int64_t p0 = 0; p0 < pairs; p0 += chunk) {
    const int64_t np = std::min(chunk, pairs - p0);
    at::parallel_for(0, np * nkb, grain(2 * bk * s.D), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t pair = p0 + t / nkb;
        pack(pair / s.Hkv, pair % s.Hkv, t % nkb, kv.get() + t * kvb);
      }
    });
    // the chunk's tasks: (batch, head) of its pairs' query heads, then query block
    at::parallel_for(0, np * s.group() * nqb, grain(work), [&](int64_t begin, int64_t end) {
      std::vector<float> ws(ws_floats);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bh = p0 * s.group() + t / nqb, u = t % nqb;
        const int64_t qb = causal ? (u % 2 == 0 ? u / 2 : nqb - 1 - u / 2) : u;
        const int64_t b = bh / s.H, h = bh % s.H, hk = h / s.group(), i0 = qb * bq;
        block(b, h, bh, kv.get() + (b * s.Hkv + hk - p0) * pair_elems, i0, std::min(bq, s.Tq - i0), ws.data());
      }
      if (release) at::native::cpublas::brgemm_release();
    });
  }
}

// float32 forward. Tq = 1 (decoding) runs fwd_row per (batch, head): one row has nothing to
// amortise packing over. Otherwise forward_blocks.
void forward_f32(View q, View k, View v, StridedHeads<float> o, float* lse, Shape s, float scale, bool causal,
                 const Rng* rng) {
  const auto& K = f32_kernels();
  if (s.Tq == 1) {
    at::parallel_for(0, s.B * s.H, grain(2 * s.Tk * s.D), [&](int64_t begin, int64_t end) {
      std::vector<float> scores(s.Tk + s.D + isa_base::BK);  // fwd_row: the scores, one row of D, dropout scales
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / s.H, h = bh % s.H, hk = h / s.group();
        lse[bh] = K.fwd_row(q.at(b, h), k.at(b, hk), k.st, v.at(b, hk), v.st, s.Tk, s.D, scale, rng, b, h,
                            o.at(b, h), scores.data());
      }
    });
    return;
  }
  forward_blocks<float>(
      s, causal, isa_base::kv_block_size<float>(s.D), K.fwd_workspace(s.D), false,
      [&](int64_t b, int64_t hk, int64_t kb, float* dst) {
        K.pack_kv_block(k.at(b, hk), k.st, v.at(b, hk), v.st, s.Tk, s.D, kb, dst);
      },
      [&](int64_t b, int64_t h, int64_t bh, const float* kv, int64_t i0, int64_t nr, float* ws) {
        K.fwd_block(q.at(b, h), q.st, kv, o.at(b, h), o.st, lse + bh * s.Tq, i0, nr, s.Tq, s.Tk, s.D, scale,
                    causal, rng, b, h, ws);
      });
}

// bf16 forward with both products on the bf16 units (fwd_block_bf16): q, k, v read in place as
// bf16, K/V packed once into the VNNI layout.
using View16 = StridedHeads<const unsigned short>;
View16 view16_of(const at::Tensor& t) {
  return {reinterpret_cast<const unsigned short*>(t.data_ptr<at::BFloat16>()), t.stride(0), t.stride(1), t.stride(2)};
}
unsigned short* bits(at::Tensor& t) { return reinterpret_cast<unsigned short*>(t.data_ptr<at::BFloat16>()); }
using Out16 = StridedHeads<unsigned short>;
Out16 out16_of(at::Tensor& t) { return heads_of(bits(t), t); }
// o and olo share one layout (forward_outputs allocates them alike), so olo's row h of batch b is at the
// same offset from its base as o's.
void forward_bf16(View16 q, View16 k, View16 v, Out16 o, unsigned short* olo, float* lse, Shape s, float scale,
                  bool causal, const Rng* rng) {
  using namespace isa_avx512;
  forward_blocks<bf16>(
      s, causal, kv_block_bf16s(s.D), fwd_workspace(s.D), true,
      [&](int64_t b, int64_t hk, int64_t kb, bf16* dst) {
        pack_kv_block_bf16(k.at(b, hk), k.st, v.at(b, hk), v.st, s.Tk, s.D, kb, dst);
      },
      [&](int64_t b, int64_t h, int64_t bh, const bf16* kv, int64_t i0, int64_t nr, float* ws) {
        fwd_block_bf16(q.at(b, h), q.st, kv, o.at(b, h), olo + (o.at(b, h) - o.p), o.st, lse + bh * s.Tq, i0, nr,
                       s.Tq, s.Tk, s.D, scale, causal, rng, b, h, ws);
      });
}

// bf16 forward on a CPU without bf16 units: the float32 kernels, with q, k, v read in place as
// bf16 (converted while packing K/V and per query block), o and o_lo written as bf16.
void forward_f32_from_bf16(View16 q, View16 k, View16 v, Out16 o, unsigned short* olo, float* lse, Shape s,
                           float scale, bool causal, const Rng* rng) {
  const auto& K = f32_kernels();
  forward_blocks<float>(
      s, causal, isa_base::kv_block_size<float>(s.D), K.fwd_workspace(s.D), false,
      [&](int64_t b, int64_t hk, int64_t kb, float* dst) {
        K.pack_kv_block_from_bf16(k.at(b, hk), k.st, v.at(b, hk), v.st, s.Tk, s.D, kb, dst);
      },
      [&](int64_t b, int64_t h, int64_t bh, const float* kv, int64_t i0, int64_t nr, float* ws) {
        K.fwd_block_from_bf16(q.at(b, h), q.st, kv, o.at(b, h), olo + (o.at(b, h) - o.p), o.st, lse + bh * s.Tq,
                              i0, nr, s.Tq, s.Tk, s.D, scale, causal, rng, b, h, ws);
      });
}

// The backward (backward_t). A task is one (batch, kv head) — its G query heads' dq and its dk, dv, so
// every output has one writer — over a share of that head's key blocks. With kSplitPairs or more
// (batch, kv head) pairs a task takes all of them and writes dq directly. With fewer (long
// sequences at batch 1, MQA) the key blocks of a pair are dealt round-robin to `split` parts
// (round-robin balances the causal triangle, where early keys are seen by more queries), each part
// accumulates its dq contributions in a buffer of its own, and one pass sums the parts in order.
// The split depends on the shape only, never on the thread count, so results are bit-identical
// whatever torch.set_num_threads says.
constexpr int64_t kSplitPairs = 4;

// The kernel entry point and the float value of an element, per input dtype of the backward.
auto bwd_group_for(const F32Kernels& K, float) { return K.bwd_group; }
auto bwd_group_for(const F32Kernels& K, unsigned short) { return K.bwd_group_bf16; }
float from_f32(float x, float) { return x; }
unsigned short from_f32(float x, unsigned short) { return c10::BFloat16(x).x; }

// E = float or bf16 bits: the inputs' dtype, read in place and converted while packing; dq, dk, dv
// are written in E, in place in whatever row layout they have. o_lo: bf16's rounding residual of o
// from the forward, or a null p.
template <class E>
void backward_t(StridedHeads<const E> dout, StridedHeads<const E> q, StridedHeads<const E> k,
                StridedHeads<const E> v, StridedHeads<const E> o, StridedHeads<const E> o_lo, const float* lse,
                StridedHeads<E> dq, StridedHeads<E> dk, StridedHeads<E> dv, Shape s, float scale, bool causal,
                const Rng* rng) {
  const auto& K = f32_kernels();
  const int64_t D = s.D, Dp = isa_base::padded(D), rows = s.B * s.H * s.Tq, G = s.group();
  std::vector<float> delta(rows);
  at::parallel_for(0, rows, grain(D), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % s.Tq, h = (row / s.Tq) % s.H, b = row / (s.Tq * s.H);
      const E *dr = dout.at(b, h) + i * dout.st, *orow = o.at(b, h) + i * o.st;
      if constexpr (std::is_same_v<E, float>) {
        delta[row] = dot(dr, orow, D);
      } else {  // o + o_lo, o alone without it
        using isa_base::to_float;
        const E* lorow = o_lo.p ? o_lo.at(b, h) + i * o_lo.st : nullptr;
        float a = 0;
        for (int64_t d = 0; d < D; ++d)
          a += to_float(dr[d]) * (to_float(orow[d]) + (lorow ? to_float(lorow[d]) : 0.0f));
        delta[row] = a;
      }
    }
  });
  const int64_t pairs = s.B * s.Hkv, nkb = (s.Tk + isa_base::BK - 1) / isa_base::BK;
  const int64_t split = pairs >= kSplitPairs ? 1 : std::min(nkb, (kSplitPairs + pairs - 1) / pairs);
  const int64_t work = 5 * G * s.Tq * s.Tk * std::max<int64_t>(D, 16) / split;
  const int64_t group_rows = G * s.Tq;
  // split > 1: one dq accumulator per part over every query row (row stride Dp), summed below.
  std::vector<float> partial(split > 1 ? split * rows * Dp : 0, 0.0f);
  const auto bwd_group = bwd_group_for(K, E{});
  at::parallel_for(0, pairs * split, grain(work), [&](int64_t begin, int64_t end) {
    std::vector<float> ws(K.bwd_workspace(D)), own(split > 1 ? 0 : group_rows * Dp);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t pair = t / split, part = t % split, b = pair / s.Hkv, hk = pair % s.Hkv;
      const int64_t qrow = s.q_row(b, hk * G, 0);
      float* dQ = split > 1 ? partial.data() + (part * rows + qrow) * Dp : own.data();
      if (split == 1) std::fill(own.begin(), own.end(), 0.0f);
      bwd_group(q.at(b, hk * G), q.sh, q.st, dout.at(b, hk * G), dout.sh, dout.st, lse + qrow, delta.data() + qrow,
                k.at(b, hk), k.st, v.at(b, hk), v.st, dk.at(b, hk), dk.st, dv.at(b, hk), dv.st, G, s.Tq, s.Tk, D,
                scale, causal, part, nkb, split, rng, b, hk * G, dQ, ws.data());
      if (split == 1)
        for (int64_t r = 0; r < group_rows; ++r) {
          E* dst = dq.at(b, hk * G + r / s.Tq) + (r % s.Tq) * dq.st;
          for (int64_t d = 0; d < D; ++d) dst[d] = from_f32(own[r * Dp + d] * scale, E{});
        }
    }
  });
  if (split > 1)
    at::parallel_for(0, rows, grain(split * D), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        E* dst = dq.at(r / (s.Tq * s.H), (r / s.Tq) % s.H) + (r % s.Tq) * dq.st;
        for (int64_t d = 0; d < D; ++d) {
          float a = 0;
          for (int64_t part = 0; part < split; ++part) a += partial[(part * rows + r) * Dp + d];
          dst[d] = from_f32(a * scale, E{});
        }
      }
    });
}

Shape check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  checks::attn(q, k, v, causal);
  return Shape{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
}

using checks::acc_type;

// An input in the accumulation dtype, read in place when its rows are contiguous (the float32
// views a GPT layer makes of its qkv projection cost no copy); float64 takes the contiguous path.
at::Tensor as_input(const at::Tensor& t, at::ScalarType acc) {
  auto a = t.to(acc);
  return acc == at::kFloat && (a.size(3) <= 1 || a.stride(3) == 1) ? a : a.contiguous();
}

// Whether a forward runs on the bf16 units (forward_bf16): bf16 inputs on a CPU that has them, more
// than one query row (a decoding row has nothing to amortise packing over) and an even head size
// from kBf16GemmMinD. Everything else computes in float32. Even: with an odd K (= D in Q·Kᵀ),
// oneDNN's AMX brgemm runs tile instructions with no tile configuration loaded, which is SIGILL in a
// fresh process (every odd D from 17 to 129, oneDNN 3.12 in torch 2.14.1, Intel Xeon with AMX).
bool uses_bf16_units(const at::Tensor& q, const Shape& s) {
  return q.scalar_type() == at::kBFloat16 && bf16_units() && s.Tq > 1 && s.D >= isa_avx512::kBf16GemmMinD &&
         s.D % 2 == 0;
}
// t itself when its rows are contiguous (read in place), else a contiguous copy.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1 ? t : t.contiguous(); }

// The dropout generator of a call, or nullopt for dropout_p == 0 (checks.h: p and seed are valid).
std::optional<Rng> rng_of(double dropout_p, const std::optional<at::Tensor>& seed) {
  if (!checks::dropout(dropout_p, seed)) return std::nullopt;
  return dropout::make_rng(dropout_p, seed->item<int64_t>());
}

// Whether o comes with its rounding residual o_lo (csrc/schemas.h): fp16 and bf16.
bool has_residual(const at::Tensor& q) { return q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16; }

// t if it is float32, else a float32 tensor of t's layout to compute into (then copied into t).
at::Tensor float_like(at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? t : at::empty_like(t, t.options().dtype(at::kFloat));
}

// The forward into o (B, H, Tq, D) in q's dtype, of any row layout, lse (B, H, Tq) in the accumulation
// dtype and, for fp16/bf16, o_lo (o's layout): the rounding residual of the float32 o.
void forward_into(const Shape& s, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                  bool causal, double dropout_p, const std::optional<at::Tensor>& seed, at::Tensor& o,
                  at::Tensor& o_lo, at::Tensor& lse) {
  const auto rng = rng_of(dropout_p, seed);
  const Rng* g = rng ? &*rng : nullptr;
  const auto acc = acc_type(q);
  const float sc = static_cast<float>(scale);
  if (q.scalar_type() == at::kBFloat16 && s.Tq > 1) {  // read in place; a decoding row takes the float path
    TORCH_INTERNAL_ASSERT(o_lo.strides() == o.strides(), "o_lo must have o's layout");
    auto qc = rows_contiguous(q), kc = rows_contiguous(k), vc = rows_contiguous(v);
    (uses_bf16_units(q, s) ? forward_bf16 : forward_f32_from_bf16)(view16_of(qc), view16_of(kc), view16_of(vc),
                                                                    out16_of(o), bits(o_lo), lse.data_ptr<float>(), s,
                                                                    sc, causal, g);
    return;
  }
  auto qa = as_input(q, acc), ka = as_input(k, acc), va = as_input(v, acc);
  if (acc == at::kFloat) {
    auto of = float_like(o);  // fp16 (and a bf16 decoding row): computed in float32, rounded below
    forward_f32(view_of(qa), view_of(ka), view_of(va), out_of(of), lse.data_ptr<float>(), s, sc, causal, g);
    if (!of.is_same(o)) {
      o.copy_(of);
      o_lo.copy_(of - o.to(at::kFloat));
    }
    return;
  }
  auto oc = o.is_contiguous() ? o : at::empty(o.sizes(), o.options());  // float64: contiguous rows
  AT_DISPATCH_FLOATING_TYPES(acc, "babygpt_attn_fwd_cpu", [&] {
    forward<scalar_t>(qa.data_ptr<scalar_t>(), ka.data_ptr<scalar_t>(), va.data_ptr<scalar_t>(),
                      oc.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), s, static_cast<scalar_t>(scale), causal, g);
  });
  if (!oc.is_same(o)) o.copy_(oc);
}

// The backward into dq, dk, dv (shaped like q, k, v, in their dtype, of any row layout).
void backward_into(const Shape& s, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& o, const at::Tensor& lse, const at::Tensor& o_lo,
                   double scale, bool causal, double dropout_p, const std::optional<at::Tensor>& seed, at::Tensor& dq,
                   at::Tensor& dk, at::Tensor& dv) {
  const auto rng = rng_of(dropout_p, seed);
  const Rng* g = rng ? &*rng : nullptr;
  const auto acc = acc_type(q);
  const float sc = static_cast<float>(scale);
  auto la = lse.to(acc).contiguous();
  if (q.scalar_type() == at::kBFloat16) {  // read in place, converted while packing
    auto qc = rows_contiguous(q), kc = rows_contiguous(k), vc = rows_contiguous(v), dc = rows_contiguous(dout),
         oc = rows_contiguous(o), lo = o_lo.numel() ? rows_contiguous(o_lo) : o_lo;
    backward_t<unsigned short>(view16_of(dc), view16_of(qc), view16_of(kc), view16_of(vc), view16_of(oc),
                               lo.numel() ? view16_of(lo) : View16{}, la.data_ptr<float>(), out16_of(dq),
                               out16_of(dk), out16_of(dv), s, sc, causal, g);
    return;
  }
  auto qa = as_input(q, acc), ka = as_input(k, acc), va = as_input(v, acc);
  // delta_i = dO_i · o_i equals Σ_j P_ij dP_ij only for the o that P made: o + o_lo is that float32
  // o, while the rounded o alone is off by up to half an fp16/bf16 ulp, an error that every
  // dS_ij = P_ij (dP_ij − delta_i) of the row would carry (docs/design.md §13.2).
  auto da = as_input(dout, acc);
  auto oa = o_lo.numel() ? as_input(o.to(acc) + o_lo.to(acc), acc) : as_input(o, acc);
  if (acc == at::kFloat) {
    auto dqf = float_like(dq), dkf = float_like(dk), dvf = float_like(dv);  // fp16: copied into place below
    backward_t<float>(view_of(da), view_of(qa), view_of(ka), view_of(va), view_of(oa), View{}, la.data_ptr<float>(),
                      out_of(dqf), out_of(dkf), out_of(dvf), s, sc, causal, g);
    if (!dqf.is_same(dq)) {
      dq.copy_(dqf);
      dk.copy_(dkf);
      dv.copy_(dvf);
    }
    return;
  }
  // float64: the reference loops, on contiguous rows
  auto contiguous_out = [](at::Tensor& t) { return t.is_contiguous() ? t : at::empty(t.sizes(), t.options()); };
  auto dqc = contiguous_out(dq), dkc = contiguous_out(dk), dvc = contiguous_out(dv);
  AT_DISPATCH_FLOATING_TYPES(acc, "babygpt_attn_bwd_cpu", [&] {
    backward<scalar_t>(da.data_ptr<scalar_t>(), qa.data_ptr<scalar_t>(), ka.data_ptr<scalar_t>(),
                       va.data_ptr<scalar_t>(), oa.data_ptr<scalar_t>(), la.data_ptr<scalar_t>(),
                       dqc.data_ptr<scalar_t>(), dkc.data_ptr<scalar_t>(), dvc.data_ptr<scalar_t>(), s,
                       static_cast<scalar_t>(scale), causal, g);
  });
  if (!dqc.is_same(dq)) {
    dq.copy_(dqc);
    dk.copy_(dkc);
    dv.copy_(dvc);
  }
}

// o, lse and o_lo of a forward whose o has the layout `o_shape` (viewed as (B, H, Tq, D) by heads).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_outputs(const Shape& s, const at::Tensor& q,
                                                               at::IntArrayRef o_shape) {
  return {at::empty(o_shape, q.options()),
          at::empty({s.B, s.H, s.Tq}, q.options().dtype(acc_type(q))),
          has_residual(q) ? at::empty(o_shape, q.options()) : at::empty({0}, q.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_fwd(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v, double scale, bool causal,
                                                        double dropout_p, const std::optional<at::Tensor>& seed) {
  const Shape s = check_shapes(q, k, v, causal);
  auto [o, lse, o_lo] = forward_outputs(s, q, q.sizes());  // (B, H, Tq, D), contiguous
  forward_into(s, q, k, v, scale, causal, dropout_p, seed, o, o_lo, lse);
  return {o, lse, o_lo};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                        const at::Tensor& k, const at::Tensor& v,
                                                        const at::Tensor& o, const at::Tensor& lse,
                                                        const at::Tensor& o_lo, double scale, bool causal,
                                                        double dropout_p, const std::optional<at::Tensor>& seed) {
  const Shape s = check_shapes(q, k, v, causal);
  checks::attn_bwd(dout, q, o, lse, o_lo);
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options()),
       dv = at::empty(v.sizes(), v.options());  // contiguous
  backward_into(s, dout, q, k, v, o, lse, o_lo, scale, causal, dropout_p, seed, dq, dk, dv);
  return {dq, dk, dv};
}

// A GPT layer's attention on its fused projection qkv (B, T, (H + 2 Hkv) D), whose last axis holds
// q's H heads, then k's Hkv, then v's Hkv (nn/attention.py splits it the same way), with o in
// (B, T, H D): the layout c_proj reads. The kernels read q, k, v and write o, dqkv in place, so a
// GPT layer's attention makes no copy: no transposed o to re-assemble, and no dq, dk, dv for
// autograd to transpose, reshape and concatenate into the projection's gradient.
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_heads(const at::Tensor& qkv, int64_t H, int64_t Hkv) {
  checks::qkv(qkv, H, Hkv);
  const int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(2) / (H + 2 * Hkv);
  auto heads = qkv.reshape({B, T, H + 2 * Hkv, D}).transpose(1, 2);  // (B, H + 2 Hkv, T, D); a view if it can be
  return {heads.narrow(1, 0, H), heads.narrow(1, H, Hkv), heads.narrow(1, H + Hkv, Hkv)};
}
// A (B, T, H D) tensor as its (B, H, T, D) heads, a view (dout may come with any strides: reshape).
at::Tensor as_heads(const at::Tensor& t, int64_t H) {
  TORCH_CHECK(t.dim() == 3 && t.size(2) % H == 0, "babygpt::attn_qkv: o and dout must be (B, T, n_head * D), got ",
              t.sizes());
  return t.reshape({t.size(0), t.size(1), H, t.size(2) / H}).transpose(1, 2);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_qkv_fwd(const at::Tensor& qkv, int64_t n_head, int64_t n_kv_head,
                                                            double scale, bool causal, double dropout_p,
                                                            const std::optional<at::Tensor>& seed) {
  const auto [q, k, v] = qkv_heads(qkv, n_head, n_kv_head);
  const Shape s = check_shapes(q, k, v, causal);
  auto [o, lse, o_lo] = forward_outputs(s, q, {s.B, s.Tq, s.H * s.D});
  auto oh = as_heads(o, s.H), loh = o_lo.numel() ? as_heads(o_lo, s.H) : o_lo;
  forward_into(s, q, k, v, scale, causal, dropout_p, seed, oh, loh, lse);
  return {o, lse, o_lo};
}

at::Tensor attn_qkv_bwd(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& o, const at::Tensor& lse,
                        const at::Tensor& o_lo, int64_t n_head, int64_t n_kv_head, double scale, bool causal,
                        double dropout_p, const std::optional<at::Tensor>& seed) {
  const auto [q, k, v] = qkv_heads(qkv, n_head, n_kv_head);
  const Shape s = check_shapes(q, k, v, causal);
  const auto doh = as_heads(dout, s.H), oh = as_heads(o, s.H), loh = o_lo.numel() ? as_heads(o_lo, s.H) : o_lo;
  checks::attn_bwd(doh, q, oh, lse, loh);
  auto dqkv = at::empty(qkv.sizes(), qkv.options());  // contiguous
  auto [dq, dk, dv] = qkv_heads(dqkv, s.H, s.Hkv);
  backward_into(s, doh, q, k, v, oh, lse, loh, scale, causal, dropout_p, seed, dq, dk, dv);
  return dqkv;
}

}  // namespace

// The instruction set of the float32 kernels in use ("avx512", "avx2" or "base"), for `babygpt info`.
const char* attention_isa() { return f32_kernels().name + 4; }  // past "isa_"
// The head size from which the forward's products run on oneDNN's brgemm (tile_gemm), for `babygpt info`.
long attention_gemm_min_head_dim() { return isa_base::kGemmMinD; }
// How the bf16 forward's products run here ("brgemm/amx" or "brgemm/avx512_bf16": on the bf16
// units, AMX tiles where oneDNN may use them; or "fp32": in float32 after converting), and from
// which head size, for `babygpt info`.
const char* attention_bf16_path() {
  return !bf16_units() ? "fp32" : amx_usable() ? "brgemm/amx" : "brgemm/avx512_bf16";
}
long attention_bf16_min_head_dim() { return isa_avx512::kBf16GemmMinD; }

TORCH_LIBRARY_IMPL(babygpt, CPU, m) {
  m.impl("attn_fwd", &attn_fwd);
  m.impl("attn_bwd", &attn_bwd);
  m.impl("attn_qkv_fwd", &attn_qkv_fwd);
  m.impl("attn_qkv_bwd", &attn_qkv_bwd);
}

}  // namespace babygpt::cpu

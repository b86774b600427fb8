// Fused LoRA linear on the CPU: y = x Wᵀ + b + scale · (x Aᵀ) Bᵀ.
//
// float32, bfloat16 and float16 run the row-block kernel of lora_simd.h (compiled per instruction
// set, picked at run time like the attention kernels): x is read once for x Wᵀ and x Aᵀ (one GEMM
// against the packed [Wᵀ | Aᵀ]), and each y tile starts from bias + scale · xa Bᵀ, so y is written
// once, with no second pass (lora_simd.h). Low precision is converted to float32 while packing
// the weights and while loading each block of x rows (no full-size float32 copy of W or x),
// accumulated in float32 and rounded once. xa = x Aᵀ is kept in float32 for the backward.
//
// The backward's dx = dy W + scale · (dy B) A is the same fused product with the roles renamed
// (K = out, columns = in, rank factors B then A), and yields dy B for dlora_a. The reductions over
// the rows (dlora_a, dlora_b, dweight) stay ATen GEMMs. Large problems (FUSED_MAX_MACS) and float64
// (gradcheck) take ATen's GEMMs for the products too.
//
// Parallelism: at::parallel_for over blocks of rows; every output element is one fixed-order sum,
// so results do not depend on the number of threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <string>
#include <vector>

#include "../checks.h"
#include "isa.h"

namespace babygpt::cpu {

// One copy of the float32 kernel per instruction set (see lora_simd.h).
namespace lora_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#define BABYGPT_VEC_FLOATS 16
#include "lora_simd.h"
#undef BABYGPT_VEC_FLOATS
#pragma GCC pop_options
}  // namespace lora_avx512
namespace lora_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define BABYGPT_VEC_FLOATS 8
#include "lora_simd.h"
#undef BABYGPT_VEC_FLOATS
#pragma GCC pop_options
}  // namespace lora_avx2
namespace lora_base {  // x86-64's SSE2
#define BABYGPT_VEC_FLOATS 4
#include "lora_simd.h"
#undef BABYGPT_VEC_FLOATS
}  // namespace lora_base

namespace {

struct LoraKernel {
  const char* name;
  long nr;  // panel width of the packed operands
  decltype(&lora_base::row_block) row_block;
};

// The copy of the kernel for the instruction set chosen_isa() picks (isa.h), as for attention.
const LoraKernel& lora_kernel() {
  static const LoraKernel k = [] {
    switch (chosen_isa()) {
      case Isa::avx512: return LoraKernel{"avx512", lora_avx512::NR, &lora_avx512::row_block};
      case Isa::avx2: return LoraKernel{"avx2", lora_avx2::NR, &lora_avx2::row_block};
      default: return LoraKernel{"base", lora_base::NR, &lora_base::row_block};
    }
  }();
  return k;
}

constexpr long MB = lora_base::MB;  // rows per task (the same in every copy)
static_assert(MB == lora_avx2::MB && MB == lora_avx512::MB);

// A K x n matrix whose element (k, j) is src[k * sk + j * sn], as float32 panels of nr columns
// (the layout lora_simd.h multiplies), zero-padded to a whole panel.
template <typename T>
std::vector<float> pack_panels(const T* src, long sk, long sn, long K, long n, long nr) {
  const long panels = (n + nr - 1) / nr;
  std::vector<float> out(panels * K * nr, 0.0f);
  at::parallel_for(0, panels, std::max<long>(1, 16384 / std::max<long>(1, K * nr)), [&](int64_t p0, int64_t p1) {
    for (long p = p0; p < p1; ++p)
      for (long k = 0; k < K; ++k)
        for (long j = p * nr; j < std::min(n, p * nr + nr); ++j)
          out[(p * K + k) * nr + j - p * nr] = static_cast<float>(src[k * sk + j * sn]);
  });
  return out;
}

// A strided operand: element (k, j) at ptr[k * sk + j * sn].
template <typename T>
struct Operand {
  const T* ptr;
  long sk, sn;
};

// y (M x n) = x (M x K) · w + bias + s · (x · a) · b, xa = x · a (M x r, float32), with
// w: K x n, a: K x r, b: r x n. x and y are contiguous rows; bias is n floats' worth of T or null.
template <typename T>
void fused(const T* x, long M, long K, long n, long r, Operand<T> w, Operand<T> a, Operand<T> b, const T* bias,
           long bias_stride, float s, T* y, float* xa) {
  const LoraKernel& kern = lora_kernel();
  const long nr = kern.nr, rpad = (r + nr - 1) / nr * nr;
  const auto wp = pack_panels(w.ptr, w.sk, w.sn, K, n, nr);
  const auto ap = pack_panels(a.ptr, a.sk, a.sn, K, r, nr);
  const auto bp = pack_panels(b.ptr, b.sk, b.sn, r, n, nr);
  std::vector<float> bias_pad;
  if (bias) {
    bias_pad.assign((n + nr - 1) / nr * nr, 0.0f);
    for (long j = 0; j < n; ++j) bias_pad[j] = static_cast<float>(bias[j * bias_stride]);
  }
  constexpr bool f32 = std::is_same_v<T, float>;
  const long blocks = (M + MB - 1) / MB;
  // Enough rows per task that thread start-up (a few microseconds) stays small next to the work.
  const long block_flops = 2 * MB * K * (n + r) + 1;
  const long grain = std::max<long>(1, 4'000'000 / block_flops);
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    std::vector<float> sxa(MB * rpad), xbuf(f32 ? 0 : MB * K), ybuf(f32 ? 0 : MB * n);
    for (long blk = b0; blk < b1; ++blk) {
      const long m0 = blk * MB, rows = std::min(MB, M - m0);
      const float* xf;
      float* yf;
      if constexpr (f32) {
        xf = x + m0 * K, yf = y + m0 * n;
      } else {
        for (long i = 0; i < rows * K; ++i) xbuf[i] = static_cast<float>(x[m0 * K + i]);
        xf = xbuf.data(), yf = ybuf.data();
      }
      kern.row_block(xf, K, rows, K, n, r, wp.data(), ap.data(), bp.data(), bias ? bias_pad.data() : nullptr, s,
                     yf, n, xa + m0 * r, r, sxa.data());
      if constexpr (!f32)
        for (long i = 0; i < rows * n; ++i) y[m0 * n + i] = static_cast<T>(ybuf[i]);
    }
  });
}

template <typename T>
Operand<T> op(const at::Tensor& t, bool transposed) {
  const T* p = t.data_ptr<T>();
  return transposed ? Operand<T>{p, t.stride(1), t.stride(0)} : Operand<T>{p, t.stride(0), t.stride(1)};
}

// Above this many multiply-adds the fused kernel loses to MKL's GEMM (0.75x at the gpt2 c_attn
// shape on a Zen 3 core, where MKL blocks for the caches better than a single-level row block),
// and the extra passes the fused kernel saves are a few percent of the GEMM: large problems take
// ATen's GEMMs, in float32.
constexpr double FUSED_MAX_MACS = 1 << 28;

bool use_fused(const at::Tensor& rows, long K, long n, long r) {
  return rows.scalar_type() != at::kDouble && double(rows.size(0)) * K * (n + r) <= FUSED_MAX_MACS;
}

std::tuple<at::Tensor, at::Tensor> lora_fwd(const at::Tensor& x_in, const at::Tensor& w,
                                            const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                            const at::Tensor& bm, double scale) {
  checks::lora(x_in, w, a, bm);
  const long N = x_in.size(0), in = x_in.size(1), out = w.size(0), r = a.size(0);
  if (!use_fused(x_in, in, out, r)) {
    const auto acc = checks::acc_type(x_in);
    const auto xf = x_in.to(acc);
    auto xa = at::mm(xf, a.to(acc).t());
    auto y = bias.has_value() ? at::addmm(bias->to(acc), xf, w.to(acc).t()) : at::mm(xf, w.to(acc).t());
    y.addmm_(xa, bm.to(acc).t(), 1.0, scale);
    return {y.to(x_in.scalar_type()), xa};
  }
  const auto x = x_in.contiguous();
  auto y = at::empty({N, out}, x.options());
  auto xa = at::empty({N, r}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "babygpt_lora_fwd_cpu", [&] {
    // x (N x in) · Wᵀ (in x out) + bias + s · (x · Aᵀ (in x r)) · Bᵀ (r x out)
    fused<scalar_t>(x.data_ptr<scalar_t>(), N, in, out, r, op<scalar_t>(w, true), op<scalar_t>(a, true),
                    op<scalar_t>(bm, true), bias ? bias->data_ptr<scalar_t>() : nullptr, bias ? bias->stride(0) : 0,
                    static_cast<float>(scale), y.data_ptr<scalar_t>(), xa.data_ptr<float>());
  });
  return {y, xa};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_bwd(
    const at::Tensor& dy_in, const at::Tensor& x, const at::Tensor& w, const at::Tensor& a, const at::Tensor& bm,
    const at::Tensor& xa, double scale, bool need_dweight, bool need_dbias) {
  checks::lora(x, w, a, bm);
  const auto dt = x.scalar_type();
  const auto acc = checks::acc_type(x);
  const long N = dy_in.size(0), in = w.size(1), out = w.size(0), r = a.size(0);
  at::Tensor dx, dy_b;
  if (!use_fused(dy_in, out, in, r)) {
    const auto dyf = dy_in.to(acc);
    dy_b = at::mm(dyf, bm.to(acc));
    dx = at::mm(dyf, w.to(acc)).addmm_(dy_b, a.to(acc), 1.0, scale).to(dt);
  } else {
    const auto dy = dy_in.contiguous();
    dx = at::empty({N, in}, dy.options());
    dy_b = at::empty({N, r}, dy.options().dtype(at::kFloat));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "babygpt_lora_bwd_cpu", [&] {
      // dy (N x out) · W (out x in) + s · (dy · B (out x r)) · A (r x in)
      fused<scalar_t>(dy.data_ptr<scalar_t>(), N, out, in, r, op<scalar_t>(w, false), op<scalar_t>(bm, false),
                      op<scalar_t>(a, false), nullptr, 0, static_cast<float>(scale), dx.data_ptr<scalar_t>(),
                      dy_b.data_ptr<float>());
    });
  }
  // The reductions over the N rows. Low precision is upcast here (ATen's bf16 GEMM on CPUs without
  // bf16 units runs far slower than float32 MKL).
  // Both LoRA gradients are computed with r as the rows of the product: MKL's GEMM with an r-column
  // output (dyᵀ xa, out x r) ran 2.5x slower than its transpose (xaᵀ dy, r x out) at the babygpt
  // c_attn shape (AMD EPYC Zen 1), so dlora_b is that transpose, scaled while copied into place.
  const auto dyf = dy_in.to(acc), xf = x.to(acc);
  auto dlora_b = at::empty({out, r}, xf.options());
  at::mul_out(dlora_b, at::mm(xa.to(acc).t(), dyf).t(), scale);  // (out, r) = scale dyᵀ xa
  auto dlora_a = at::mm(dy_b.t(), xf).mul_(scale);               // (r, in)  = scale (dy B)ᵀ x
  // Two distinct empty tensors when not needed: outputs of an op must never alias each other.
  auto dw = need_dweight ? at::mm(dyf.t(), xf).to(dt) : at::empty({0}, x.options());  // (out, in)
  auto db = need_dbias ? dyf.sum(0).to(dt) : at::empty({0}, x.options());             // (out,)
  return {dx, dw, db, dlora_a.to(dt), dlora_b.to(dt)};
}

}  // namespace

// The instruction set of the LoRA kernel in use ("avx512", "avx2" or "base").
const char* lora_isa() { return lora_kernel().name; }

TORCH_LIBRARY_IMPL(babygpt, CPU, m) {
  m.impl("lora_fwd", &lora_fwd);
  m.impl("lora_bwd", &lora_bwd);
}

}  // namespace babygpt::cpu

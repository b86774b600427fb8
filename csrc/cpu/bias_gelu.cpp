// Fused bias + GELU on the CPU: y = gelu(x + b), the exact (erf) GELU, and its backward
// dx = dy · gelu'(x + b) with db = Σ_rows dx reduced in the same pass.
//
// In a GPT MLP this replaces addmm's bias (a broadcast copy of b over the (N, 4C) output before the
// GEMM), ATen's GELU and GELU backward, and the bias gradient's separate sum over the rows: one
// read of x and one write of y forward, one read of dy and x and one write of dx backward. float32
// runs the vectorised rows of gelu_simd.h (compiled per instruction set, picked like the attention
// kernels) and so does bfloat16, read and written in place (converted per vector, rounded once);
// float16 is converted to float32 and back around the same rows; float64 (gradcheck) runs the plain
// loop below with std::erfc.
//
// Parallelism: rows go to at::parallel_for in tasks of enough work to amortise a fork (a decoding
// step's single row runs inline, never waking the pool). The bias gradient is summed per part of
// the rows (the parts depend on N only) and the parts are added in order, so every result is
// bit-identical whatever the thread count.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "isa.h"
#include "row_parts.h"  // grain_rows, for_row_parts, sum_parts

namespace babygpt::cpu {

namespace gelu_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#define BABYGPT_VEC_FLOATS 16
#include "gelu_simd.h"
#undef BABYGPT_VEC_FLOATS
#pragma GCC pop_options
}  // namespace gelu_avx512
namespace gelu_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define BABYGPT_VEC_FLOATS 8
#include "gelu_simd.h"
#undef BABYGPT_VEC_FLOATS
#pragma GCC pop_options
}  // namespace gelu_avx2
namespace gelu_base {  // x86-64's SSE2
#define BABYGPT_VEC_FLOATS 4
#include "gelu_simd.h"
#undef BABYGPT_VEC_FLOATS
}  // namespace gelu_base

namespace {

struct GeluKernels {
  const char* name;
  decltype(&gelu_base::gelu_row) row;
  decltype(&gelu_base::gelu_grad_row) grad_row;
  decltype(&gelu_base::gelu_row_bf16) row_bf16;
  decltype(&gelu_base::gelu_grad_row_bf16) grad_row_bf16;
};
#define BABYGPT_GELU_KERNELS(ns) \
  GeluKernels{#ns, &gelu_##ns::gelu_row, &gelu_##ns::gelu_grad_row, &gelu_##ns::gelu_row_bf16, \
              &gelu_##ns::gelu_grad_row_bf16}

const GeluKernels& gelu_kernels() {
  static const GeluKernels k = [] {
    switch (chosen_isa()) {
      case Isa::avx512: return BABYGPT_GELU_KERNELS(avx512);
      case Isa::avx2: return BABYGPT_GELU_KERNELS(avx2);
      default: return BABYGPT_GELU_KERNELS(base);
    }
  }();
  return k;
}
#undef BABYGPT_GELU_KERNELS

using bf16 = unsigned short;  // bf16 bits, as the kernels take them
bf16* bits(at::Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr<at::BFloat16>()); }

// float64 (the gradcheck path): Φ and φ from the C library.
double normal_cdf(double h) { return 0.5 * std::erfc(-h * M_SQRT1_2); }
double normal_pdf(double h) { return std::exp(-0.5 * h * h) * 0.3989422804014326779399460599343819; }

// One row of the forward, y = gelu(x + b), and of the backward, dx = dy gelu'(x + b) with
// db += dx (when db is not null).
void row(const float* x, const float* b, float* y, int64_t f) { gelu_kernels().row(x, b, y, f); }
void row(const bf16* x, const float* b, bf16* y, int64_t f) { gelu_kernels().row_bf16(x, b, y, f); }
void row(const double* x, const double* b, double* y, int64_t f) {
  for (int64_t c = 0; c < f; ++c) {
    const double h = x[c] + (b ? b[c] : 0.0);
    y[c] = h * normal_cdf(h);
  }
}
void grad_row(const float* dy, const float* x, const float* b, float* dx, float* db, int64_t f) {
  gelu_kernels().grad_row(dy, x, b, dx, db, f);
}
void grad_row(const bf16* dy, const bf16* x, const float* b, bf16* dx, float* db, int64_t f) {
  gelu_kernels().grad_row_bf16(dy, x, b, dx, db, f);
}
void grad_row(const double* dy, const double* x, const double* b, double* dx, double* db, int64_t f) {
  for (int64_t c = 0; c < f; ++c) {
    const double h = x[c] + (b ? b[c] : 0.0);
    dx[c] = dy[c] * (normal_cdf(h) + h * normal_pdf(h));
    if (db) db[c] += dx[c];
  }
}

void check(const at::Tensor& x, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "babygpt::bias_gelu: x must be 2-D (N, F), got ", x.sizes());
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1), "babygpt::bias_gelu: bias must be (F=", x.size(1),
                ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "babygpt::bias_gelu: bias and x dtypes differ");
  }
}

at::ScalarType acc_of(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// T: the rows' element type (float, bf16 bits, double), A: the bias's and the bias gradient's.
template <class T, class A>
void fwd_rows(const T* xp, const A* bp, T* yp, int64_t n, int64_t f) {
  at::parallel_for(0, n, grain_rows(f), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row(xp + r * f, bp, yp + r * f, f);
  });
}

at::Tensor bias_gelu_fwd(const at::Tensor& x, const std::optional<at::Tensor>& bias) {
  check(x, bias);
  const auto acc = acc_of(x);
  const int64_t n = x.size(0), f = x.size(1);
  auto ba = bias ? bias->to(acc).contiguous() : at::Tensor();
  if (x.scalar_type() == at::kBFloat16) {  // in place: no float32 copy of x or y
    auto xc = x.contiguous();
    auto y = at::empty(x.sizes(), xc.options());
    fwd_rows(bits(xc), bias ? ba.data_ptr<float>() : nullptr, bits(y), n, f);
    return y;
  }
  auto xa = x.to(acc).contiguous();
  auto y = at::empty(x.sizes(), xa.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "babygpt_bias_gelu_fwd_cpu", [&] {
    fwd_rows(xa.data_ptr<scalar_t>(), bias ? ba.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), n, f);
  });
  return y.to(x.scalar_type());
}

// The backward's rows by parts (for_row_parts), each part summing dx into its row of pp (null: no
// bias gradient wanted).
template <class T, class A>
void bwd_rows(const T* dyp, const T* xp, const A* bp, T* dxp, A* pp, int64_t n, int64_t f) {
  for_row_parts(n, f, [&](int64_t part, int64_t r) {
    grad_row(dyp + r * f, xp + r * f, bp, dxp + r * f, pp ? pp + part * f : nullptr, f);
  });
}

std::tuple<at::Tensor, at::Tensor> bias_gelu_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                 const std::optional<at::Tensor>& bias, bool need_dbias) {
  check(x, bias);
  TORCH_CHECK(dy.sizes() == x.sizes(), "babygpt::bias_gelu_bwd: dy must have x's shape ", x.sizes(), ", got ",
              dy.sizes());
  TORCH_CHECK(!need_dbias || bias, "babygpt::bias_gelu_bwd: need_dbias without a bias");
  const auto acc = acc_of(x);
  const bool in_place = x.scalar_type() == at::kBFloat16;  // bf16 rows read and written as they are
  auto xa = in_place ? x.contiguous() : x.to(acc).contiguous();
  auto da = in_place ? dy.contiguous() : dy.to(acc).contiguous();
  auto ba = bias ? bias->to(acc).contiguous() : at::Tensor();
  auto dx = at::empty(x.sizes(), xa.options());
  const int64_t n = x.size(0), f = x.size(1);
  // One running sum of dx per part of the rows; zero-sized when no bias gradient is wanted.
  auto partial = at::zeros({need_dbias ? row_parts(n) : 0, f}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "babygpt_bias_gelu_bwd_cpu", [&] {
    const scalar_t* bp = bias ? ba.data_ptr<scalar_t>() : nullptr;
    scalar_t* pp = need_dbias ? partial.data_ptr<scalar_t>() : nullptr;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (in_place) return bwd_rows(bits(da), bits(xa), bp, bits(dx), pp, n, f);
    }
    bwd_rows(da.data_ptr<scalar_t>(), xa.data_ptr<scalar_t>(), bp, dx.data_ptr<scalar_t>(), pp, n, f);
  });
  const auto dt = x.scalar_type();
  if (!need_dbias) return {dx.to(dt), at::empty({0}, x.options())};
  return {dx.to(dt), sum_parts(partial).to(dt)};
}

}  // namespace

// y = gelu(x) on one float32 row with the copy in use: the MLP's GELU of a decoding step (decode.cpp).
void gelu_row_f32(const float* x, float* y, int64_t n) { gelu_kernels().row(x, nullptr, y, n); }

// The instruction set of the GELU rows in use ("avx512", "avx2" or "base"), for `babygpt info`.
const char* gelu_isa() { return gelu_kernels().name; }

TORCH_LIBRARY_IMPL(babygpt, CPU, m) {
  m.impl("bias_gelu_fwd", &bias_gelu_fwd);
  m.impl("bias_gelu_bwd", &bias_gelu_bwd);
}

}  // namespace babygpt::cpu

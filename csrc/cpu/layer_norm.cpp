// Fused LayerNorm on the CPU whose output dtype is an argument: y = (x − mean) · rstd · w + b over
// the last axis, rstd = 1 / √(var + eps) (the biased variance, as nn.LayerNorm), and its backward.
//
// Under bf16 autocast a GPT's residual stream x is float32, nn.LayerNorm returns float32, and the
// next Linear casts that (N, C) activation to bf16 (and its backward casts the gradient back): two
// extra passes over the activations per LayerNorm. Here the row is normalised and rounded to the
// output dtype as it is stored, and the backward reads that dtype's dy directly. The Python op
// (ops/layer_norm_op.py) decides the output dtype from the autocast state, so the kernel is a pure
// function of its arguments (opcheck, torch.compile's fakes).
//
// float32 and bfloat16 rows (x, y, dy, dx) are read and written in place by the vectorised rows of
// layer_norm_simd.h (compiled per instruction set, picked like the attention kernels); float16 goes
// through float32 copies (correct, not tuned); float64 (gradcheck) runs the plain loops below.
// Statistics are float32 (float64 for float64 x): mean and rstd, (N,) each, saved for the backward.
//
// Parallelism as bias_gelu.cpp: rows go to at::parallel_for in tasks of ~32K elements; the weight
// and bias gradients are summed per part of the rows (the parts depend on N only) and the parts are
// added in order, so every result is bit-identical whatever the thread count.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "isa.h"
#include "row_parts.h"  // grain_rows, for_row_parts, sum_parts

namespace babygpt::cpu {

namespace ln_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#define BABYGPT_VEC_FLOATS 16
#include "layer_norm_simd.h"
#undef BABYGPT_VEC_FLOATS
#pragma GCC pop_options
}  // namespace ln_avx512
namespace ln_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define BABYGPT_VEC_FLOATS 8
#include "layer_norm_simd.h"
#undef BABYGPT_VEC_FLOATS
#pragma GCC pop_options
}  // namespace ln_avx2
namespace ln_base {  // x86-64's SSE2
#define BABYGPT_VEC_FLOATS 4
#include "layer_norm_simd.h"
#undef BABYGPT_VEC_FLOATS
}  // namespace ln_base

namespace {

using bf16_bits = unsigned short;  // a bfloat16 as the kernels read it: its 16 bits

// The rows of one instruction set, for each pairing of element types (float32 / bf16 in and out).
struct LnKernels {
  const char* name;
  void (*fwd[2][2])(const void*, const float*, const float*, void*, long, float, float*, float*);  // [x][y]
  void (*bwd[2][2])(const void*, const void*, const float*, float, float, void*, float*, float*, long);  // [x][dy]
};

template <class X, class Y, auto Row>
void fwd_as(const void* x, const float* w, const float* b, void* y, long c, float eps, float* mean, float* rstd) {
  Row(static_cast<const X*>(x), w, b, static_cast<Y*>(y), c, eps, mean, rstd);
}
template <class X, class D, auto Row>
void bwd_as(const void* dy, const void* x, const float* w, float mean, float rstd, void* dx, float* dw, float* db,
            long c) {
  Row(static_cast<const D*>(dy), static_cast<const X*>(x), w, mean, rstd, static_cast<X*>(dx), dw, db, c);
}

#define BABYGPT_LN_KERNELS(ns, label)                                                                            \
  LnKernels {                                                                                                    \
    label,                                                                                                       \
        {{&fwd_as<float, float, &ns::ln_fwd_row<float, float>>, &fwd_as<float, bf16_bits, &ns::ln_fwd_row<float, bf16_bits>>}, \
         {&fwd_as<bf16_bits, float, &ns::ln_fwd_row<bf16_bits, float>>,                                           \
          &fwd_as<bf16_bits, bf16_bits, &ns::ln_fwd_row<bf16_bits, bf16_bits>>}},                                 \
        {{&bwd_as<float, float, &ns::ln_bwd_row<float, float>>, &bwd_as<float, bf16_bits, &ns::ln_bwd_row<float, bf16_bits>>}, \
         {&bwd_as<bf16_bits, float, &ns::ln_bwd_row<bf16_bits, float>>,                                           \
          &bwd_as<bf16_bits, bf16_bits, &ns::ln_bwd_row<bf16_bits, bf16_bits>>}},                                 \
  }

const LnKernels& ln_kernels() {
  static const LnKernels k = [] {
    switch (chosen_isa()) {
      case Isa::avx512: return BABYGPT_LN_KERNELS(ln_avx512, "avx512");
      case Isa::avx2: return BABYGPT_LN_KERNELS(ln_avx2, "avx2");
      default: return BABYGPT_LN_KERNELS(ln_base, "base");
    }
  }();
  return k;
}
#undef BABYGPT_LN_KERNELS

// float64 (the gradcheck path): the same formulas, one element at a time.
void fwd_row_f64(const double* x, const double* w, const double* b, double* y, int64_t c, double eps, double* mean,
                 double* rstd) {
  double s = 0.0, q = 0.0;
  for (int64_t i = 0; i < c; ++i) s += x[i];
  const double mu = s / c;
  for (int64_t i = 0; i < c; ++i) q += (x[i] - mu) * (x[i] - mu);
  const double r = 1.0 / std::sqrt(q / c + eps);
  for (int64_t i = 0; i < c; ++i) y[i] = (x[i] - mu) * r * (w ? w[i] : 1.0) + (b ? b[i] : 0.0);
  *mean = mu;
  *rstd = r;
}
void bwd_row_f64(const double* dy, const double* x, const double* w, double mu, double r, double* dx, double* dw,
                 double* db, int64_t c) {
  double sg = 0.0, sgx = 0.0;
  for (int64_t i = 0; i < c; ++i) {
    const double xh = (x[i] - mu) * r, g = dy[i] * (w ? w[i] : 1.0);
    sg += g;
    sgx += g * xh;
    if (dw) dw[i] += dy[i] * xh;
    if (db) db[i] += dy[i];
  }
  const double c1 = sg / c, c2 = sgx / c;
  for (int64_t i = 0; i < c; ++i) dx[i] = r * (dy[i] * (w ? w[i] : 1.0) - c1 - (x[i] - mu) * r * c2);
}

bool lowp(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

void check_params(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& p, const char* name) {
  if (!p) return;
  TORCH_CHECK(p->dim() == 1 && p->size(0) == x.size(1), op, ": ", name, " must be (C=", x.size(1), ",), got ",
              p->sizes());
  TORCH_CHECK(p->scalar_type() == x.scalar_type() || p->scalar_type() == at::kFloat, op, ": ", name,
              " must be float32 or x's dtype ", x.scalar_type(), ", got ", p->scalar_type());
}

// The output dtypes a call may ask for: x's own, or (autocast) fp16/bf16/fp32 for a 16/32-bit x.
void check_out_dtype(const at::Tensor& x, at::ScalarType out) {
  const auto xt = x.scalar_type();
  TORCH_CHECK(out == xt || (xt != at::kDouble && (lowp(out) || out == at::kFloat)),
              "babygpt::layer_norm_fwd: out_dtype ", out, " is not float16, bfloat16, float32 or x's dtype ", xt);
}

at::ScalarType acc_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Where the kernels can read t in place (0: float32, 1: bf16); float16 is converted to float32 first.
int kind_of(at::ScalarType t) { return t == at::kBFloat16 ? 1 : 0; }
at::Tensor readable(const at::Tensor& t) { return t.scalar_type() == at::kHalf ? t.to(at::kFloat).contiguous() : t.contiguous(); }
at::Tensor param(const std::optional<at::Tensor>& p, at::ScalarType acc) {
  return p ? p->to(acc).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias, double eps,
                                                              at::ScalarType out_dtype) {
  TORCH_CHECK(x.dim() == 2, "babygpt::layer_norm_fwd: x must be 2-D (N, C), got ", x.sizes());
  TORCH_CHECK(lowp(x.scalar_type()) || acc_of(x.scalar_type()) == x.scalar_type(), "babygpt::layer_norm_fwd: x must be float16, bfloat16, float32 or "
              "float64, got ", x.scalar_type());
  check_params("babygpt::layer_norm_fwd", x, weight, "weight");
  check_params("babygpt::layer_norm_fwd", x, bias, "bias");
  check_out_dtype(x, out_dtype);
  const int64_t n = x.size(0), c = x.size(1);
  const auto acc = acc_of(x.scalar_type());
  auto mean = at::empty({n}, x.options().dtype(acc)), rstd = at::empty({n}, x.options().dtype(acc));
  auto wa = param(weight, acc), ba = param(bias, acc);
  if (acc == at::kDouble) {
    auto xa = x.contiguous();
    auto y = at::empty({n, c}, xa.options());
    const double *xp = xa.data_ptr<double>(), *wp = weight ? wa.data_ptr<double>() : nullptr,
                 *bp = bias ? ba.data_ptr<double>() : nullptr;
    double *yp = y.data_ptr<double>(), *mp = mean.data_ptr<double>(), *rp = rstd.data_ptr<double>();
    at::parallel_for(0, n, grain_rows(c), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) fwd_row_f64(xp + r * c, wp, bp, yp + r * c, c, eps, mp + r, rp + r);
    });
    return {y, mean, rstd};
  }
  auto xa = readable(x);
  // float16 out: the rows are written in float32 and rounded after (the simple path).
  const auto stored = out_dtype == at::kHalf ? at::kFloat : out_dtype;
  auto y = at::empty({n, c}, x.options().dtype(stored));
  const auto row = ln_kernels().fwd[kind_of(xa.scalar_type())][kind_of(stored)];
  const int64_t xs = xa.element_size(), ys = y.element_size();
  const char* xp = static_cast<const char*>(xa.const_data_ptr());
  char* yp = static_cast<char*>(y.data_ptr());
  const float *wp = weight ? wa.data_ptr<float>() : nullptr, *bp = bias ? ba.data_ptr<float>() : nullptr;
  float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, n, grain_rows(c), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row(xp + r * c * xs, wp, bp, yp + r * c * ys, c, feps, mp + r, rp + r);
  });
  return {out_dtype == at::kHalf ? y.to(at::kHalf) : y, mean, rstd};
}

// dx in x's dtype; dweight and dbias (C,) in the statistics' dtype (float32, float64 for float64 x),
// which the Python backward casts to the parameters' dtypes; empty (numel 0) when not wanted.
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                              const std::optional<at::Tensor>& weight,
                                                              const at::Tensor& mean, const at::Tensor& rstd,
                                                              bool need_dweight, bool need_dbias) {
  TORCH_CHECK(x.dim() == 2, "babygpt::layer_norm_bwd: x must be 2-D (N, C), got ", x.sizes());
  TORCH_CHECK(dy.sizes() == x.sizes(), "babygpt::layer_norm_bwd: dy must have x's shape ", x.sizes(), ", got ",
              dy.sizes());
  check_params("babygpt::layer_norm_bwd", x, weight, "weight");
  // dy comes in the forward's output dtype: x's own, or a 16/32-bit one for a 16/32-bit x (autocast).
  TORCH_CHECK(dy.scalar_type() == x.scalar_type() ||
                  (x.scalar_type() != at::kDouble && (lowp(dy.scalar_type()) || dy.scalar_type() == at::kFloat)),
              "babygpt::layer_norm_bwd: dy must be float16, bfloat16, float32 or x's dtype ", x.scalar_type(),
              ", got ", dy.scalar_type());
  const int64_t n = x.size(0), c = x.size(1);
  const auto acc = acc_of(x.scalar_type());
  TORCH_CHECK(mean.numel() == n && rstd.numel() == n && mean.scalar_type() == acc && rstd.scalar_type() == acc,
              "babygpt::layer_norm_bwd: mean and rstd must be (N=", n, ",) ", acc, ", got ", mean.sizes(), " ",
              mean.scalar_type(), " and ", rstd.sizes(), " ", rstd.scalar_type());
  TORCH_CHECK(!need_dweight || weight, "babygpt::layer_norm_bwd: need_dweight without a weight");
  auto wa = param(weight, acc);
  auto ma = mean.contiguous(), ra = rstd.contiguous();
  // One running sum per part of the rows; zero-sized when that gradient is not wanted.
  const int64_t parts = row_parts(n);
  auto pw = at::zeros({need_dweight ? parts : 0, c}, x.options().dtype(acc));
  auto pb = at::zeros({need_dbias ? parts : 0, c}, x.options().dtype(acc));
  at::Tensor dx;
  if (acc == at::kDouble) {
    auto xa = x.contiguous(), da = dy.to(at::kDouble).contiguous();
    dx = at::empty({n, c}, xa.options());
    const double *dyp = da.data_ptr<double>(), *xp = xa.data_ptr<double>(), *wp = weight ? wa.data_ptr<double>() : nullptr;
    const double *mp = ma.data_ptr<double>(), *rp = ra.data_ptr<double>();
    double *dxp = dx.data_ptr<double>(), *pwp = need_dweight ? pw.data_ptr<double>() : nullptr,
           *pbp = need_dbias ? pb.data_ptr<double>() : nullptr;
    for_row_parts(n, c, [&](int64_t part, int64_t r) {
      bwd_row_f64(dyp + r * c, xp + r * c, wp, mp[r], rp[r], dxp + r * c, pwp ? pwp + part * c : nullptr,
                  pbp ? pbp + part * c : nullptr, c);
    });
  } else {
    auto xa = readable(x), da = readable(dy);
    dx = at::empty({n, c}, xa.options());  // float32 for a float16 x, rounded after
    const auto row = ln_kernels().bwd[kind_of(xa.scalar_type())][kind_of(da.scalar_type())];
    const int64_t xs = xa.element_size(), ds = da.element_size();
    const char *xp = static_cast<const char*>(xa.const_data_ptr()), *dyp = static_cast<const char*>(da.const_data_ptr());
    char* dxp = static_cast<char*>(dx.data_ptr());
    const float* wp = weight ? wa.data_ptr<float>() : nullptr;
    const float *mp = ma.data_ptr<float>(), *rp = ra.data_ptr<float>();
    float *pwp = need_dweight ? pw.data_ptr<float>() : nullptr, *pbp = need_dbias ? pb.data_ptr<float>() : nullptr;
    for_row_parts(n, c, [&](int64_t part, int64_t r) {
      row(dyp + r * c * ds, xp + r * c * xs, wp, mp[r], rp[r], dxp + r * c * xs, pwp ? pwp + part * c : nullptr,
          pbp ? pbp + part * c : nullptr, c);
    });
    if (x.scalar_type() == at::kHalf) dx = dx.to(at::kHalf);
  }
  // The parts, added in order: (parts, C) -> (C,); empty when that gradient is not wanted.
  auto total = [&](const at::Tensor& p) { return p.size(0) ? sum_parts(p) : at::empty({0}, p.options()); };
  return {dx, total(pw), total(pb)};
}

}  // namespace

// The instruction set of the LayerNorm rows in use ("avx512", "avx2" or "base"), for `babygpt info`.
const char* layer_norm_isa() { return ln_kernels().name; }

TORCH_LIBRARY_IMPL(babygpt, CPU, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd);
  m.impl("layer_norm_bwd", &layer_norm_bwd);
}

}  // namespace babygpt::cpu

// Fused LoRA linear on the CPU: y = x Wᵀ + b + scale · (x Aᵀ) Bᵀ.
//
// The three matmuls go through ATen's GEMM (MKL/OpenBLAS/oneDNN), which already beats anything
// hand-written here; what the op fuses is the bookkeeping: the bias and the low-rank update are
// accumulated into the same output buffer by `addmm_` (y is allocated and written once, no
// x·Wᵀ temporary plus a second add), and xa = x Aᵀ is kept for the backward instead of being
// recomputed. Low-precision inputs are computed in float32 and rounded once at the end.
#include <torch/extension.h>

namespace babygpt::cpu {
namespace {

at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check(const at::Tensor& x, const at::Tensor& w, const at::Tensor& a, const at::Tensor& bm) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && a.dim() == 2 && bm.dim() == 2,
              "babygpt::lora: x, weight, lora_a, lora_b must be 2-D");
  TORCH_CHECK(w.size(1) == x.size(1) && a.size(1) == x.size(1), "babygpt::lora: in_features mismatch");
  TORCH_CHECK(bm.size(0) == w.size(0) && bm.size(1) == a.size(0), "babygpt::lora: lora_b must be (out, r)");
}

std::tuple<at::Tensor, at::Tensor> lora_fwd(const at::Tensor& x, const at::Tensor& w,
                                            const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                            const at::Tensor& bm, double scale) {
  check(x, w, a, bm);
  const auto acc = acc_type(x);
  auto xf = x.to(acc);
  auto xa = at::mm(xf, a.to(acc).t());                                        // (N, r)
  at::Tensor y = bias.has_value() ? at::addmm(bias->to(acc), xf, w.to(acc).t())  // (N, out)
                                  : at::mm(xf, w.to(acc).t());
  y.addmm_(xa, bm.to(acc).t(), /*beta=*/1.0, /*alpha=*/scale);
  return {y.to(x.scalar_type()), xa};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& a, const at::Tensor& bm,
    const at::Tensor& xa, double scale, bool need_dweight, bool need_dbias) {
  check(x, w, a, bm);
  const auto acc = acc_type(x);
  const auto dt = x.scalar_type();
  auto dyf = dy.to(acc), xf = x.to(acc), af = a.to(acc), bmf = bm.to(acc), xaf = xa.to(acc);
  auto dy_b = at::mm(dyf, bmf);                                       // (N, r) = dy B
  auto dx = at::mm(dyf, w.to(acc)).addmm_(dy_b, af, 1.0, scale);      // dy W + scale (dy B) A
  auto dlora_b = at::mm(dyf.t(), xaf).mul_(scale);                    // (out, r) = scale dyᵀ xa
  auto dlora_a = at::mm(dy_b.t(), xf).mul_(scale);                    // (r, in)  = scale (dy B)ᵀ x
  // Two distinct empty tensors when not needed: outputs of an op must never alias each other.
  auto dw = need_dweight ? at::mm(dyf.t(), xf).to(dt) : at::empty({0}, x.options());  // (out, in)
  auto db = need_dbias ? dyf.sum(0).to(dt) : at::empty({0}, x.options());             // (out,)
  return {dx.to(dt), dw, db, dlora_a.to(dt), dlora_b.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(babygpt, CPU, m) {
  m.impl("lora_fwd", &lora_fwd);
  m.impl("lora_bwd", &lora_bwd);
}

}  // namespace babygpt::cpu

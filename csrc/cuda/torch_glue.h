// The op contract's four ops on top of the raw-pointer launchers: shape checks, contiguous
// inputs, output and scratch allocation, and the launch status turned into a C++ exception.
//
// Shared, textually, by two translation units that differ only in where the memory lives:
//   csrc/cuda/ops_cuda.cu   CUDA tensors, the current CUDA stream, a CUDAGuard;
//   csrc/emu/ops_emu.cpp    CPU tensors, the kernels run by csrc/emu/cudaemu.h.
// The includer defines, before including this file:
//   BABYGPT_GLUE_STREAM()        the cudaStream_t to launch on
//   BABYGPT_GLUE_GUARD(t)        a statement that makes t's device current (may be empty)
//   BABYGPT_GLUE_CHECK(err, op)  turns a launcher's cudaError_t into an exception
//   BABYGPT_GLUE_DEVICE_CHECK(t) a TORCH_CHECK that t is on the device this build serves
#pragma once

#include <optional>
#include <tuple>

#include "launchers.h"

namespace babygpt::cuda::glue {

inline DType dtype_of(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: TORCH_CHECK(false, op, ": the CUDA kernels take float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

inline void check_attn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "babygpt::attn: q, k, v must be 4-D");
  TORCH_CHECK(k.sizes() == v.sizes(), "babygpt::attn: k and v shapes differ");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3), "babygpt::attn: k does not match q in B or D");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "babygpt::attn: H must be a multiple of Hkv");
  TORCH_CHECK(!causal || q.size(2) <= k.size(2), "babygpt::attn: causal attention needs Tq <= Tk");
  TORCH_CHECK(q.size(3) <= kMaxHeadDim, "babygpt::attn: head dim ", q.size(3), " > ", kMaxHeadDim);
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "babygpt::attn: q, k, v dtypes differ");
  for (const at::Tensor* t : {&q, &k, &v}) BABYGPT_GLUE_DEVICE_CHECK(*t);
}

inline AttnParams attn_params(const at::Tensor& q, const at::Tensor& k, double scale, bool causal) {
  AttnParams p{};
  p.B = (int)q.size(0), p.H = (int)q.size(1), p.Hkv = (int)k.size(1);
  p.Tq = (int)q.size(2), p.Tk = (int)k.size(2), p.D = (int)q.size(3);
  p.scale = (float)scale, p.causal = causal;
  return p;
}

inline std::tuple<at::Tensor, at::Tensor> attn_fwd(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                                   double scale, bool causal) {
  check_attn(q_, k_, v_, causal);
  BABYGPT_GLUE_GUARD(q_);
  const DType dt = dtype_of(q_, "babygpt::attn_fwd");
  auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  auto o = at::empty_like(q);
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (q.numel() == 0 || k.size(2) == 0) return {o, lse};
  AttnParams p = attn_params(q, k, scale, causal);
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr();
  p.out = o.data_ptr(), p.lse_out = lse.data_ptr<float>();
  BABYGPT_GLUE_CHECK(launch_attn_fwd(dt, p, BABYGPT_GLUE_STREAM()), "babygpt::attn_fwd");
  return {o, lse};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_bwd(const at::Tensor& dout_, const at::Tensor& q_,
                                                               const at::Tensor& k_, const at::Tensor& v_,
                                                               const at::Tensor& o_, const at::Tensor& lse_,
                                                               double scale, bool causal) {
  check_attn(q_, k_, v_, causal);
  TORCH_CHECK(dout_.sizes() == q_.sizes() && o_.sizes() == q_.sizes(), "babygpt::attn_bwd: dout/o must match q");
  TORCH_CHECK(lse_.dim() == 3 && lse_.size(0) == q_.size(0) && lse_.size(1) == q_.size(1) &&
                  lse_.size(2) == q_.size(2),
              "babygpt::attn_bwd: lse must be (B, H, Tq)");
  BABYGPT_GLUE_GUARD(q_);
  const DType dt = dtype_of(q_, "babygpt::attn_bwd");
  const auto st = q_.scalar_type();
  auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  auto dout = dout_.to(st).contiguous(), o = o_.to(st).contiguous(), lse = lse_.to(at::kFloat).contiguous();
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  if (q.numel() == 0 || k.numel() == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  auto delta = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  AttnParams p = attn_params(q, k, scale, causal);
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr(), p.o = o.data_ptr(), p.dout = dout.data_ptr();
  p.lse = lse.data_ptr<float>(), p.delta = delta.data_ptr<float>();
  p.dq = dq.data_ptr(), p.dk = dk.data_ptr(), p.dv = dv.data_ptr();
  BABYGPT_GLUE_CHECK(launch_attn_bwd(dt, p, BABYGPT_GLUE_STREAM()), "babygpt::attn_bwd");
  return {dq, dk, dv};
}

// ------------------------------------------------------------------------------------ LoRA
inline void check_lora(const at::Tensor& x, const at::Tensor& w, const at::Tensor& a, const at::Tensor& bm) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && a.dim() == 2 && bm.dim() == 2,
              "babygpt::lora: x, weight, lora_a, lora_b must be 2-D");
  TORCH_CHECK(w.size(1) == x.size(1) && a.size(1) == x.size(1), "babygpt::lora: in_features mismatch");
  TORCH_CHECK(bm.size(0) == w.size(0) && bm.size(1) == a.size(0), "babygpt::lora: lora_b must be (out, r)");
  for (const at::Tensor* t : {&x, &w, &a, &bm}) BABYGPT_GLUE_DEVICE_CHECK(*t);
}

// Row-major (rows, cols) matrix t, or its transpose.
inline Mat mat(const at::Tensor& t, bool transposed = false) {
  const bool f32 = t.scalar_type() == at::kFloat;
  const int64_t ld = t.size(1);
  return transposed ? Mat{t.data_ptr(), 1, ld, f32} : Mat{t.data_ptr(), ld, 1, f32};
}

// C = alpha1 A1 B1 (+ alpha2 A2 B2) (+ bias), launched and checked.
inline void gemm(DType dt, at::Tensor& c, Mat a1, Mat b1, int k1, float alpha1, std::optional<Mat> a2 = {},
                 std::optional<Mat> b2 = {}, int k2 = 0, float alpha2 = 0.f, const void* bias = nullptr) {
  if (c.numel() == 0) return;
  GemmParams p{};
  p.a1 = a1, p.b1 = b1, p.K1 = k1, p.alpha1 = alpha1;
  if (a2) p.a2 = *a2, p.b2 = *b2, p.K2 = k2, p.alpha2 = alpha2;
  p.M = (int)c.size(0), p.N = (int)c.size(1), p.bias = bias;
  p.c = c.data_ptr(), p.ldc = c.size(1), p.c_f32 = c.scalar_type() == at::kFloat;
  BABYGPT_GLUE_CHECK(launch_gemm(dt, p, BABYGPT_GLUE_STREAM()), "babygpt::lora (gemm)");
}

inline std::tuple<at::Tensor, at::Tensor> lora_fwd(const at::Tensor& x_, const at::Tensor& w_,
                                                   const std::optional<at::Tensor>& bias_, const at::Tensor& a_,
                                                   const at::Tensor& bm_, double scale) {
  check_lora(x_, w_, a_, bm_);
  BABYGPT_GLUE_GUARD(x_);
  const DType dt = dtype_of(x_, "babygpt::lora_fwd");
  const auto st = x_.scalar_type();
  auto x = x_.contiguous(), w = w_.to(st).contiguous(), a = a_.to(st).contiguous(), bm = bm_.to(st).contiguous();
  std::optional<at::Tensor> bias;
  if (bias_) bias = bias_->to(st).contiguous();
  const int in = (int)x.size(1), r = (int)a.size(0);
  auto xa = at::empty({x.size(0), a.size(0)}, x.options().dtype(at::kFloat));
  auto y = at::empty({x.size(0), w.size(0)}, x.options());
  gemm(dt, xa, mat(x), mat(a, true), in, 1.f);                                   // xa = x Aᵀ
  gemm(dt, y, mat(x), mat(w, true), in, 1.f, mat(xa), mat(bm, true), r, (float)scale,  // x Wᵀ + s·xa Bᵀ + b
       bias ? bias->data_ptr() : nullptr);
  return {y, xa};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_bwd(
    const at::Tensor& dy_, const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& a_, const at::Tensor& bm_,
    const at::Tensor& xa_, double scale, bool need_dweight, bool need_dbias) {
  check_lora(x_, w_, a_, bm_);
  BABYGPT_GLUE_GUARD(x_);
  const DType dt = dtype_of(x_, "babygpt::lora_bwd");
  const auto st = x_.scalar_type();
  auto dy = dy_.to(st).contiguous(), x = x_.contiguous(), w = w_.to(st).contiguous();
  auto a = a_.to(st).contiguous(), bm = bm_.to(st).contiguous(), xa = xa_.to(at::kFloat).contiguous();
  const int n = (int)x.size(0), out = (int)w.size(0), r = (int)a.size(0);
  auto dyb = at::empty({n, r}, x.options().dtype(at::kFloat));
  auto dx = at::empty_like(x), da = at::empty_like(a), dbm = at::empty_like(bm);
  gemm(dt, dyb, mat(dy), mat(bm), out, 1.f);                                         // dy B
  gemm(dt, dx, mat(dy), mat(w), out, 1.f, mat(dyb), mat(a), r, (float)scale);        // dy W + s·(dy B) A
  gemm(dt, dbm, mat(dy, true), mat(xa), n, (float)scale);                            // s·dyᵀ xa
  gemm(dt, da, mat(dyb, true), mat(x), n, (float)scale);                             // s·(dy B)ᵀ x
  // Two distinct empty tensors: outputs of an op must not alias each other (opcheck's schema test).
  at::Tensor dw = at::empty({0}, x.options()), db = at::empty({0}, x.options());
  if (need_dweight) {
    dw = at::empty_like(w);
    gemm(dt, dw, mat(dy, true), mat(x), n, 1.f);                                     // dyᵀ x
  }
  if (need_dbias) {
    db = at::empty({out}, x.options());
    if (out > 0) BABYGPT_GLUE_CHECK(launch_colsum(dt, dy.data_ptr(), db.data_ptr(), n, out, BABYGPT_GLUE_STREAM()),
                                    "babygpt::lora_bwd (bias)");
  }
  // A product over an empty inner dimension is zero; the GEMM sees K = 0 and writes those zeros.
  return {dx, dw, db, da, dbm};
}

}  // namespace babygpt::cuda::glue

// The op contract's four ops on top of the launchers: the contract's checks (csrc/checks.h),
// inputs read in place where the kernels can (strided rows) and converted where they cannot,
// output and scratch allocation, and the launch status turned into a C++ exception.
//
// Shared, textually, by two translation units that differ only in where the memory lives:
//   csrc/cuda/ops_cuda.cu   CUDA tensors, the current CUDA stream, a CUDAGuard;
//   csrc/cuda/ops_emu.cpp   CPU tensors, the kernels run by the CPU emulator.
// The includer defines, before including this file:
//   BABYGPT_GLUE_STREAM()        the cudaStream_t to launch on
//   BABYGPT_GLUE_GUARD(t)        a statement that makes t's device current (may be empty)
//   BABYGPT_GLUE_CHECK(err, op)  turns a launcher's cudaError_t into an exception
//   BABYGPT_GLUE_DEVICE_CHECK(t) a TORCH_CHECK that t is on the device this build serves
// and registers the ops with BABYGPT_GLUE_IMPL(m) in its TORCH_LIBRARY_IMPL block.
#pragma once

#include <optional>
#include <tuple>

#include "../checks.h"
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
  checks::attn(q, k, v, causal);
  checks::head_dim(q);
  for (const at::Tensor* t : {&q, &k, &v}) BABYGPT_GLUE_DEVICE_CHECK(*t);
}

// t as the kernels read it: in place when its rows (last dim) are contiguous, whatever its other
// strides -- the q, k, v views of a fused qkv projection, the transposed dO -- else a copy.
inline at::Tensor with_contiguous_rows(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

inline Heads heads(const at::Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }

// seed is a CPU tensor (checks::dropout), so reading it costs no device synchronisation.
inline AttnParams attn_params(const at::Tensor& q, const at::Tensor& k, double scale, bool causal, double dropout_p,
                              const std::optional<at::Tensor>& seed) {
  AttnParams p{};
  p.B = (int)q.size(0), p.H = (int)q.size(1), p.Hkv = (int)k.size(1);
  p.Tq = (int)q.size(2), p.Tk = (int)k.size(2), p.D = (int)q.size(3);
  p.scale = (float)scale, p.causal = causal;
  if (checks::dropout(dropout_p, seed)) p.rng = dropout::make_rng(dropout_p, seed->item<int64_t>());
  return p;
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_fwd(const at::Tensor& q_, const at::Tensor& k_,
                                                               const at::Tensor& v_, double scale, bool causal,
                                                               double dropout_p,
                                                               const std::optional<at::Tensor>& seed) {
  check_attn(q_, k_, v_, causal);
  BABYGPT_GLUE_GUARD(q_);
  const DType dt = dtype_of(q_, "babygpt::attn_fwd");
  auto q = with_contiguous_rows(q_), k = with_contiguous_rows(k_), v = with_contiguous_rows(v_);
  auto o = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  // The rounding residual of o (csrc/schemas.h): fp16/bf16 only.
  auto o_lo = dt == DType::f32 ? at::empty({0}, q.options()) : at::empty(q.sizes(), q.options());
  if (q.numel() == 0 || k.size(2) == 0) return {o, lse, o_lo};
  AttnParams p = attn_params(q, k, scale, causal, dropout_p, seed);
  p.q = heads(q), p.k = heads(k), p.v = heads(v);
  p.out = heads(o), p.lse_out = lse.data_ptr<float>();
  if (o_lo.numel()) p.out_lo = heads(o_lo);
  BABYGPT_GLUE_CHECK(launch_attn_fwd(dt, p, BABYGPT_GLUE_STREAM()), "babygpt::attn_fwd");
  return {o, lse, o_lo};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_bwd(const at::Tensor& dout_, const at::Tensor& q_,
                                                               const at::Tensor& k_, const at::Tensor& v_,
                                                               const at::Tensor& o_, const at::Tensor& lse_,
                                                               const at::Tensor& o_lo_, double scale, bool causal,
                                                               double dropout_p,
                                                               const std::optional<at::Tensor>& seed) {
  check_attn(q_, k_, v_, causal);
  checks::attn_bwd(dout_, q_, o_, lse_, o_lo_);
  BABYGPT_GLUE_GUARD(q_);
  const DType dt = dtype_of(q_, "babygpt::attn_bwd");
  const auto st = q_.scalar_type();
  auto q = with_contiguous_rows(q_), k = with_contiguous_rows(k_), v = with_contiguous_rows(v_);
  auto dout = with_contiguous_rows(dout_.to(st)), o = with_contiguous_rows(o_.to(st));
  auto lse = lse_.to(at::kFloat).contiguous();
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  if (q.numel() == 0 || k.numel() == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  auto delta = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  AttnParams p = attn_params(q, k, scale, causal, dropout_p, seed);
  p.q = heads(q), p.k = heads(k), p.v = heads(v), p.o = heads(o), p.dout = heads(dout);
  const auto o_lo = with_contiguous_rows(o_lo_);
  if (dt != DType::f32 && o_lo.numel()) p.o_lo = heads(o_lo);
  p.lse = lse.data_ptr<float>(), p.delta = delta.data_ptr<float>();
  p.dq = heads(dq), p.dk = heads(dk), p.dv = heads(dv);
  BABYGPT_GLUE_CHECK(launch_attn_bwd(dt, p, BABYGPT_GLUE_STREAM()), "babygpt::attn_bwd");
  return {dq, dk, dv};
}

// ------------------------------------------------------------------------------------ LoRA
inline void check_lora(const at::Tensor& x, const at::Tensor& w, const at::Tensor& a, const at::Tensor& bm) {
  checks::lora(x, w, a, bm);
  for (const at::Tensor* t : {&x, &w, &a, &bm}) BABYGPT_GLUE_DEVICE_CHECK(*t);
}

// Row-major (rows, cols) matrix t, or its transpose.
inline Mat mat(const at::Tensor& t, bool transposed = false) {
  const bool f32 = t.scalar_type() == at::kFloat;
  const int64_t ld = t.size(1);
  return transposed ? Mat{t.data_ptr(), 1, ld, f32} : Mat{t.data_ptr(), ld, 1, f32};
}

// p (its products and bias) written into c, launched and checked.
inline void gemm(DType dt, at::Tensor& c, GemmParams p) {
  if (c.numel() == 0) return;
  p.M = (int)c.size(0), p.N = (int)c.size(1);
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
  gemm(dt, xa, {.a1 = mat(x), .b1 = mat(a, true), .K1 = in, .alpha1 = 1.f});  // xa = x Aᵀ
  gemm(dt, y, {.a1 = mat(x), .b1 = mat(w, true), .a2 = mat(xa), .b2 = mat(bm, true), .K1 = in, .K2 = r,
               .alpha1 = 1.f, .alpha2 = (float)scale, .bias = bias ? bias->data_ptr() : nullptr});  // x Wᵀ + s·xa Bᵀ + b
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
  const float s = (float)scale;
  auto dyb = at::empty({n, r}, x.options().dtype(at::kFloat));
  auto dx = at::empty_like(x), da = at::empty_like(a), dbm = at::empty_like(bm);
  gemm(dt, dyb, {.a1 = mat(dy), .b1 = mat(bm), .K1 = out, .alpha1 = 1.f});  // dy B
  gemm(dt, dx, {.a1 = mat(dy), .b1 = mat(w), .a2 = mat(dyb), .b2 = mat(a), .K1 = out, .K2 = r, .alpha1 = 1.f,
                .alpha2 = s});                                              // dy W + s·(dy B) A
  gemm(dt, dbm, {.a1 = mat(dy, true), .b1 = mat(xa), .K1 = n, .alpha1 = s});   // s·dyᵀ xa
  gemm(dt, da, {.a1 = mat(dyb, true), .b1 = mat(x), .K1 = n, .alpha1 = s});    // s·(dy B)ᵀ x
  // Two distinct empty tensors: outputs of an op must not alias each other (opcheck's schema test).
  at::Tensor dw = at::empty({0}, x.options()), db = at::empty({0}, x.options());
  if (need_dweight) {
    dw = at::empty_like(w);
    gemm(dt, dw, {.a1 = mat(dy, true), .b1 = mat(x), .K1 = n, .alpha1 = 1.f});  // dyᵀ x
  }
  if (need_dbias) {
    db = at::empty({out}, x.options());
    BABYGPT_GLUE_CHECK(launch_colsum(dt, {.x = dy.data_ptr(), .out = db.data_ptr(), .rows = n, .cols = out},
                                     BABYGPT_GLUE_STREAM()),
                       "babygpt::lora_bwd (bias)");
  }
  // A product over an empty inner dimension is zero; the GEMM sees K = 0 and writes those zeros.
  return {dx, dw, db, da, dbm};
}

}  // namespace babygpt::cuda::glue

// The four ops of the contract, for the includer's TORCH_LIBRARY_IMPL block.
#define BABYGPT_GLUE_IMPL(m)                              \
  do {                                                    \
    (m).impl("attn_fwd", &babygpt::cuda::glue::attn_fwd); \
    (m).impl("attn_bwd", &babygpt::cuda::glue::attn_bwd); \
    (m).impl("lora_fwd", &babygpt::cuda::glue::lora_fwd); \
    (m).impl("lora_bwd", &babygpt::cuda::glue::lora_bwd); \
  } while (0)

// The op contract's argument checks (shapes and dtypes, docs/design.md §2.3), shared by every
// implementation of it: csrc/cpu (CPU kernels), csrc/cuda/torch_glue.h (the CUDA kernels, on a GPU
// and under the emulator). Python validates inputs first with friendlier errors
// (babygpt_ext/ops/validate.py); these are the last line for direct torch.ops calls, with one
// wording everywhere.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "schemas.h"

namespace babygpt::checks {

// q (B, H, Tq, D); k, v (B, Hkv, Tk, D) with H % Hkv == 0; one dtype; causal needs Tq <= Tk.
inline void attn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "babygpt::attn: q, k, v must be 4-D");
  TORCH_CHECK(k.sizes() == v.sizes(), "babygpt::attn: k and v shapes differ");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3), "babygpt::attn: k does not match q in B or D");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "babygpt::attn: H must be a multiple of Hkv");
  TORCH_CHECK(!causal || q.size(2) <= k.size(2), "babygpt::attn: causal attention needs Tq <= Tk");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "babygpt::attn: q, k, v dtypes differ");
}

// The backward's extra inputs: dout and o shaped like q, lse (B, H, Tq), o_lo like o or empty
// (the forward returns it empty for fp32/fp64; an empty o_lo in fp16/bf16 takes delta from o alone).
inline void attn_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& o, const at::Tensor& lse,
                     const at::Tensor& o_lo) {
  TORCH_CHECK(dout.sizes() == q.sizes() && o.sizes() == q.sizes(), "babygpt::attn_bwd: dout/o must match q");
  TORCH_CHECK(o_lo.numel() == 0 || (o_lo.sizes() == q.sizes() && o_lo.scalar_type() == q.scalar_type()),
              "babygpt::attn_bwd: o_lo must be empty or match q in shape and dtype (it is the forward's third "
              "output), got ", o_lo.sizes(), " ", o_lo.scalar_type(), " for q ", q.sizes(), " ", q.scalar_type());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) && lse.size(2) == q.size(2),
              "babygpt::attn_bwd: lse must be (B, H, Tq)");
}

// A GPT layer's fused projection qkv (B, T, (H + 2 Hkv) D) with H % Hkv == 0 (attn_qkv_fwd/bwd).
inline void qkv(const at::Tensor& qkv, int64_t H, int64_t Hkv) {
  TORCH_CHECK(H > 0 && Hkv > 0 && H % Hkv == 0, "babygpt::attn_qkv: n_head must be a positive multiple of n_kv_head, "
              "got ", H, " and ", Hkv);
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) % (H + 2 * Hkv) == 0 && qkv.size(2) > 0,
              "babygpt::attn_qkv: qkv must be (B, T, (n_head + 2 n_kv_head) * D), got ", qkv.sizes(), " for n_head ",
              H, ", n_kv_head ", Hkv);
}

// Attention dropout's arguments: 0 <= p < 1, and with p > 0 a seed, one int64 element on the CPU
// (its value keys csrc/dropout_rng.h). Returns whether dropout is on.
inline bool dropout(double p, const std::optional<at::Tensor>& seed) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "babygpt::attn: dropout_p must be in [0, 1), got ", p);
  if (p == 0.0) return false;
  TORCH_CHECK(seed.has_value() && seed->numel() == 1 && seed->scalar_type() == at::kLong && seed->device().is_cpu(),
              "babygpt::attn: dropout_p > 0 needs a seed: a one-element int64 CPU tensor");
  return true;
}

// Kernels compiled for a bounded head dim (the GPU tiles) refuse a larger one.
inline void head_dim(const at::Tensor& q) {
  TORCH_CHECK(q.size(3) <= kMaxHeadDim, "babygpt::attn: head dim ", q.size(3), " > ", kMaxHeadDim);
}

// x (N, in), weight (out, in), lora_a (r, in), lora_b (out, r).
inline void lora(const at::Tensor& x, const at::Tensor& w, const at::Tensor& a, const at::Tensor& bm) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && a.dim() == 2 && bm.dim() == 2,
              "babygpt::lora: x, weight, lora_a, lora_b must be 2-D");
  TORCH_CHECK(w.size(1) == x.size(1) && a.size(1) == x.size(1), "babygpt::lora: in_features mismatch");
  TORCH_CHECK(bm.size(0) == w.size(0) && bm.size(1) == a.size(0), "babygpt::lora: lora_b must be (out, r)");
}

// The type every kernel accumulates in, and the dtype of lse and xa: float64 for float64 inputs,
// float32 for everything else.
inline at::ScalarType acc_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace babygpt::checks

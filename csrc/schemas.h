// The op contract's schemas (docs/design.md §2.2), shared by every namespace that implements it:
// `babygpt` (csrc/ops.cpp: CPU and CUDA kernels) and `babygpt_emu` (csrc/cuda/ops_emu.cpp: the CUDA
// kernels run on the CPU). One definition, so the namespaces cannot drift apart.
//
// Layouts: q (B, H, Tq, D); k, v (B, Hkv, Tk, D); o like q; lse (B, H, Tq) in float32 (float64
// when the inputs are float64); o_lo like o for fp16/bf16, numel 0 otherwise (docs/design.md §2.2). LoRA: x (N, in), weight (out, in), lora_a (r, in), lora_b (out, r);
// xa = x lora_aᵀ (N, r) is kept for the backward, in float32 (float64 for float64 inputs).
#pragma once

namespace babygpt {
// The largest head dimension the compiled kernels take (docs/design.md §2.3: D <= 256); Python reads it
// as build_info()["max_head_dim"].
constexpr int kMaxHeadDim = 256;
}  // namespace babygpt

#define BABYGPT_DEFINE_CONTRACT(m)                                                                        \
  do {                                                                                                    \
    /* dropout_p > 0 drops attention weights by the mask of dropout_rng.h keyed by seed (a       */   \
    /* one-element int64 CPU tensor, None when dropout_p == 0); the backward takes the same two.  */   \
    /* o_lo: for fp16/bf16 the rounding residual of o, lowp(o32 - lowp(o32)), so that o + o_lo  */   \
    /* carries the fp32 output into the backward's delta = rowsum(dO o); empty (numel 0) for      */   \
    /* fp32/fp64, whose o is already the accumulator's value.                                      */   \
    (m).def("attn_fwd(Tensor q, Tensor k, Tensor v, float scale, bool causal, float dropout_p=0.,"      \
            " Tensor? seed=None) -> (Tensor o, Tensor lse, Tensor o_lo)");                               \
    (m).def("attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor o_lo,"     \
            " float scale, bool causal, float dropout_p=0., Tensor? seed=None)"                         \
            " -> (Tensor dq, Tensor dk, Tensor dv)");                                                    \
    (m).def("lora_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor lora_a, Tensor lora_b, float scale)" \
            " -> (Tensor y, Tensor xa)");                                                                \
    /* dweight/dbias only when the frozen base needs them; otherwise empty (numel 0) tensors,  */        \
    /* which the Python autograd turns into None. */                                                     \
    (m).def("lora_bwd(Tensor dy, Tensor x, Tensor weight, Tensor lora_a, Tensor lora_b, Tensor xa,"      \
            " float scale, bool need_dweight, bool need_dbias) -> (Tensor dx, Tensor dweight,"           \
            " Tensor dbias, Tensor dlora_a, Tensor dlora_b)");                                           \
  } while (0)

// The fused ops of the training step: CPU kernels only (csrc/cpu), so only the `babygpt` namespace
// defines them; on other devices the eager composition runs them (ops/backends.py). x (N, F),
// bias (F,) or None; dbias is empty (numel 0) when need_dbias is false.
#define BABYGPT_DEFINE_CPU_FUSED(m)                                                                      \
  do {                                                                                                    \
    (m).def("bias_gelu_fwd(Tensor x, Tensor? bias) -> Tensor");                                          \
    (m).def("bias_gelu_bwd(Tensor dy, Tensor x, Tensor? bias, bool need_dbias) -> (Tensor dx, Tensor dbias)"); \
    /* LayerNorm over the last axis of x (N, C), output in out_dtype (the Python op picks it from  */   \
    /* autocast); mean, rstd (N,) float32 (float64 for float64 x). dweight, dbias (C,) in that     */   \
    /* statistics dtype, empty (numel 0) when not wanted; dx in x's dtype.                         */   \
    (m).def("layer_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, float eps, ScalarType out_dtype)"   \
            " -> (Tensor y, Tensor mean, Tensor rstd)");                                                \
    (m).def("layer_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor rstd,"             \
            " bool need_dweight, bool need_dbias) -> (Tensor dx, Tensor dweight, Tensor dbias)");       \
    /* A GPT layer's attention on its fused projection qkv (B, T, (H + 2 Hkv) D): q's heads, then */   \
    /* k's, then v's along the last axis; o and o_lo (B, T, H D), lse (B, H, T); dqkv like qkv.   */   \
    (m).def("attn_qkv_fwd(Tensor qkv, int n_head, int n_kv_head, float scale, bool causal,"             \
            " float dropout_p=0., Tensor? seed=None) -> (Tensor o, Tensor lse, Tensor o_lo)");          \
    (m).def("attn_qkv_bwd(Tensor dout, Tensor qkv, Tensor o, Tensor lse, Tensor o_lo, int n_head,"      \
            " int n_kv_head, float scale, bool causal, float dropout_p=0., Tensor? seed=None)"          \
            " -> Tensor dqkv");                                                                         \
  } while (0)

// One decoding step of a GPT on the CPU as one call: the token of each row (B,) at position pos ->
// next-token logits (B, V), writing every layer's new key and value into its preallocated cache.
// torch.classes.babygpt.GptDecoder(wte, wpe, params, k_caches, v_caches, n_head, eps, scale) checks
// the model once; .step(tok, pos) runs a position (generate/decode.py builds and calls it).
//
// Why one call: a step feeds one row per GEMM, so its arithmetic is small (gpt-mini: ~6 MFLOP and
// 11.4 MB of fp32 weights per token), while as PyTorch ops it is ~20 dispatches per layer, each with
// an allocation, and every GEMV of ATen forks the OpenMP pool. Profiled at gpt-mini, context 1024,
// 2 threads (AMD EPYC Zen 3): 2.5 ms per token, 64 % of it in addmm/mm calls of 20-80 µs on weights
// of 0.15-0.8 MB. Here a step is read-the-weights-once work: each Linear is a matrix-vector product
// against nn.Linear's (out, in) rows as stored, split over the threads by output features; the
// residual adds, the biases and c_fc's GELU are the products' epilogues; one query's attention per
// (row, head) reads the cache in place.
//
// The computation is GPT.forward's for one new position: pre-LayerNorm blocks,
// x + c_proj(attn(ln_1(x))), x + c_proj(gelu(c_fc(ln_2(x)))), then lm_head(ln_f(x)). float32 only
// (generate/decode.py runs other dtypes through its tensor-op plan). The arithmetic differs from
// the model's batched GEMMs only in summation order.
//
// params lists each block's 12 tensors (ln_1 w, b; c_attn w, b; attn c_proj w, b; ln_2 w, b; c_fc
// w, b; mlp c_proj w, b; weights (out, in) as nn.Linear stores them, biases and gains may be None),
// then ln_f w, b and lm_head w, b; caches are (B, Hkv, max_len, D).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "isa.h"

namespace babygpt::cpu {

void gelu_row_f32(const float* x, float* y, int64_t n);  // csrc/cpu/bias_gelu.cpp: the MLP's exact GELU

namespace decode_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define BABYGPT_VEC_FLOATS 8
#include "decode_simd.h"
#undef BABYGPT_VEC_FLOATS
#pragma GCC pop_options
}  // namespace decode_avx2
namespace decode_base {  // x86-64's SSE2
#define BABYGPT_VEC_FLOATS 4
#include "decode_simd.h"
#undef BABYGPT_VEC_FLOATS
}  // namespace decode_base

namespace {

struct DecodeKernels {
  decltype(&decode_base::linear_cols) linear_cols;
  decltype(&decode_base::layer_norm_row) layer_norm_row;
  decltype(&decode_base::attend_one) attend_one;
};

const DecodeKernels& kernels() {
  static const DecodeKernels k = [] {
    switch (chosen_isa()) {
      case Isa::avx512:  // a step is bound by reading the weights: 256-bit vectors keep up
      case Isa::avx2:
        return DecodeKernels{&decode_avx2::linear_cols, &decode_avx2::layer_norm_row, &decode_avx2::attend_one};
      default:
        return DecodeKernels{&decode_base::linear_cols, &decode_base::layer_norm_row, &decode_base::attend_one};
    }
  }();
  return k;
}

// The tensors of one block, in the order of the constructor's `params` (generate/decode.py builds it).
enum Param { kLn1W, kLn1B, kAttnW, kAttnB, kProjW, kProjB, kLn2W, kLn2B, kFcW, kFcB, kFc2W, kFc2B, kPerLayer };
// After the blocks: ln_f's weight and bias, lm_head's weight and bias.
enum Final { kLnfW, kLnfB, kHeadW, kHeadB, kFinal };

const float* ptr(const std::optional<at::Tensor>& t) { return t ? t->data_ptr<float>() : nullptr; }

// Output features per work item of a matrix-vector product, and items per parallel task: enough
// multiply-adds (~16K) to pay for waking a thread, so gpt-mini's 192-wide products still split in two.
constexpr int64_t kColsPerItem = 8;
int64_t grain_items(int64_t rows, int64_t k) { return std::max<int64_t>(1, 16384 / (kColsPerItem * k * rows)); }

// y (rows x n) = x (rows x k) wᵀ + b, or y += it; with gelu, y = gelu(x wᵀ + b).
void linear(const float* x, int64_t rows, int64_t k, const float* w, const float* b, float* y, int64_t n,
            bool accumulate, bool gelu) {
  const auto& kern = kernels();
  at::parallel_for(0, (n + kColsPerItem - 1) / kColsPerItem, grain_items(rows, k), [&](int64_t i0, int64_t i1) {
    const int64_t n0 = i0 * kColsPerItem, n1 = std::min(n, i1 * kColsPerItem);
    kern.linear_cols(x, rows, k, w, b, y, n, n0, n1, accumulate);
    if (gelu) {
      for (int64_t r = 0; r < rows; ++r) gelu_row_f32(y + r * n + n0, y + r * n + n0, n1 - n0);
    }
  });
}

// A weight of the model: a contiguous float32 CPU tensor of the given shape (None where optional).
void check_weight(const std::optional<at::Tensor>& t, const std::string& what, at::IntArrayRef shape, bool optional) {
  if (!t) {
    TORCH_CHECK(optional, "babygpt GptDecoder: ", what, " is missing");
    return;
  }
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu() && t->is_contiguous(),
              "babygpt GptDecoder: ", what, " must be a contiguous float32 CPU tensor, got ", t->scalar_type(),
              " on ", t->device(), t->is_contiguous() ? "" : " (strided)");
  TORCH_CHECK(t->sizes() == shape, "babygpt GptDecoder: ", what, " must be ", shape, ", got ", t->sizes());
}

}  // namespace

// The model's weights and caches, checked once; step() then runs one position. A class rather than
// an op taking the ~14 tensors per layer as arguments: converting those from Python costs ~1 µs
// each, which at gpt-mini's size is a sixth of the step.
struct GptDecoder : torch::CustomClassHolder {
  GptDecoder(at::Tensor wte, at::Tensor wpe, std::vector<std::optional<at::Tensor>> params,
             std::vector<at::Tensor> k_cache, std::vector<at::Tensor> v_cache, int64_t n_head, double eps,
             double scale)
      : wte_(std::move(wte)), wpe_(std::move(wpe)), params_(std::move(params)), k_(std::move(k_cache)),
        v_(std::move(v_cache)), n_head_(n_head), eps_(static_cast<float>(eps)), scale_(static_cast<float>(scale)) {
    n_layer_ = static_cast<int64_t>(k_.size());
    TORCH_CHECK(n_layer_ >= 1 && v_.size() == k_.size(), "babygpt GptDecoder: one key and one value cache per layer, "
                "got ", k_.size(), " and ", v_.size());
    TORCH_CHECK(static_cast<int64_t>(params_.size()) == n_layer_ * kPerLayer + kFinal, "babygpt GptDecoder: params "
                "must hold ", kPerLayer, " tensors per layer and ", kFinal, " after them (",
                n_layer_ * kPerLayer + kFinal, "), got ", params_.size());
    TORCH_CHECK(wte_.dim() == 2 && wpe_.dim() == 2 && wte_.size(1) == wpe_.size(1),
                "babygpt GptDecoder: wte (V, C) and wpe (block_size, C) must share C, got ", wte_.sizes(), " and ",
                wpe_.sizes());
    C_ = wte_.size(1), V_ = wte_.size(0);
    TORCH_CHECK(n_head_ >= 1 && C_ % n_head_ == 0, "babygpt GptDecoder: n_head=", n_head_, " must divide C=", C_);
    D_ = C_ / n_head_;
    const auto& kc0 = k_[0];
    TORCH_CHECK(kc0.dim() == 4 && kc0.size(3) == D_, "babygpt GptDecoder: caches must be (B, Hkv, max_len, D=", D_,
                "), got ", kc0.sizes());
    B_ = kc0.size(0), Hkv_ = kc0.size(1), T_ = kc0.size(2), qkv_n_ = C_ + 2 * Hkv_ * D_;
    TORCH_CHECK(Hkv_ >= 1 && n_head_ % Hkv_ == 0, "babygpt GptDecoder: n_head=", n_head_,
                " must be a multiple of the caches' Hkv=", Hkv_);
    for (int64_t l = 0; l < n_layer_; ++l) {
      for (const auto& c : {k_[l], v_[l]}) {
        TORCH_CHECK(c.sizes() == kc0.sizes() && c.scalar_type() == at::kFloat && c.is_contiguous() &&
                        c.device().is_cpu(),
                    "babygpt GptDecoder: the caches of layer ", l, " must be contiguous float32 CPU tensors ",
                    kc0.sizes(), ", got ", c.scalar_type(), " ", c.sizes());
      }
      const std::pair<const char*, std::vector<int64_t>> block[kPerLayer] = {
          {"ln_1.weight", {C_}}, {"ln_1.bias", {C_}}, {"attn.c_attn.weight", {qkv_n_, C_}},
          {"attn.c_attn.bias", {qkv_n_}}, {"attn.c_proj.weight", {C_, C_}}, {"attn.c_proj.bias", {C_}},
          {"ln_2.weight", {C_}}, {"ln_2.bias", {C_}}, {"mlp.c_fc.weight", {4 * C_, C_}}, {"mlp.c_fc.bias", {4 * C_}},
          {"mlp.c_proj.weight", {C_, 4 * C_}}, {"mlp.c_proj.bias", {C_}}};
      for (int i = 0; i < kPerLayer; ++i) {  // the weights are required, LayerNorm gains and biases optional
        const bool optional = i != kAttnW && i != kProjW && i != kFcW && i != kFc2W;
        const int64_t index = l * kPerLayer + i;
        check_weight(params_[index], "layer " + std::to_string(l) + " " + block[i].first + " (params[" +
                     std::to_string(index) + "])", block[i].second, optional);
      }
    }
    const int64_t f = n_layer_ * kPerLayer;
    check_weight(params_[f + kLnfW], "ln_f.weight", {C_}, true);
    check_weight(params_[f + kLnfB], "ln_f.bias", {C_}, true);
    check_weight(params_[f + kHeadW], "lm_head.weight", {V_, C_}, false);
    check_weight(params_[f + kHeadB], "lm_head.bias", {V_}, true);
    check_weight(wte_, "wte", {V_, C_}, false);
    check_weight(wpe_, "wpe", {wpe_.size(0), C_}, false);
    for (const auto& t : params_) w_.push_back(ptr(t));
  }

  // tok (B,) int64, the token of each row at position pos (the caches hold positions < pos) ->
  // next-token logits (B, V); writes position pos of every layer's key and value cache.
  at::Tensor step(const at::Tensor& tok, int64_t pos) {
    RECORD_FUNCTION("babygpt::GptDecoder.step", std::vector<c10::IValue>());  // a row in torch.profiler tables
    TORCH_CHECK(tok.dim() == 1 && tok.size(0) == B_ && tok.scalar_type() == at::kLong && tok.device().is_cpu(),
                "babygpt GptDecoder.step: tok must be a (B=", B_, ",) int64 CPU tensor, got ", tok.scalar_type(), " ",
                tok.sizes());
    TORCH_CHECK(pos >= 0 && pos < T_ && pos < wpe_.size(0), "babygpt GptDecoder.step: pos=", pos,
                " must be below the caches' max_len ", T_, " and wpe's ", wpe_.size(0), " positions");
    const auto tokc = tok.contiguous();
    const int64_t* ids = tokc.data_ptr<int64_t>();
    for (int64_t b = 0; b < B_; ++b) {  // no device to sync with: the check is free here
      TORCH_CHECK(ids[b] >= 0 && ids[b] < V_, "babygpt GptDecoder.step: token id ", ids[b], " of row ", b,
                  " is outside the vocabulary [0, ", V_, ")");
    }
    const auto& kern = kernels();
    const int64_t B = B_, C = C_, D = D_, H = n_head_, Hkv = Hkv_, T = T_, qkv_n = qkv_n_, kvw = Hkv * D;
    const int64_t L = pos + 1, group = H / Hkv;
    // Scratch, one allocation: the residual stream x, a normalised copy h, the qkv row, the heads'
    // outputs, the MLP's hidden row, and L attention weights per (row, head).
    auto scratch = at::empty({B * (3 * C + qkv_n + 4 * C) + B * H * L}, wte_.options());
    float* x = scratch.data_ptr<float>();
    float *h = x + B * C, *qkv = h + B * C, *att = qkv + B * qkv_n, *hid = att + B * C, *p = hid + B * 4 * C;
    const float *te = wte_.data_ptr<float>(), *pe = wpe_.data_ptr<float>() + pos * C;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t c = 0; c < C; ++c) x[b * C + c] = te[ids[b] * C + c] + pe[c];
    }
    // Heads per parallel task: ~16K multiply-adds of q·k and p·v each.
    const int64_t head_grain = std::max<int64_t>(1, 16384 / (L * D));
    for (int64_t l = 0; l < n_layer_; ++l) {
      const float* const* w = w_.data() + l * kPerLayer;
      for (int64_t b = 0; b < B; ++b) kern.layer_norm_row(x + b * C, w[kLn1W], w[kLn1B], eps_, C, h + b * C);
      linear(h, B, C, w[kAttnW], w[kAttnB], qkv, qkv_n, false, false);
      float *kc = k_[l].data_ptr<float>(), *vc = v_[l].data_ptr<float>();
      for (int64_t b = 0; b < B; ++b) {  // the new key and value of every kv head, into position pos
        for (int64_t g = 0; g < Hkv; ++g) {
          const int64_t slot = ((b * Hkv + g) * T + pos) * D;
          std::memcpy(kc + slot, qkv + b * qkv_n + C + g * D, D * sizeof(float));
          std::memcpy(vc + slot, qkv + b * qkv_n + C + kvw + g * D, D * sizeof(float));
        }
      }
      at::parallel_for(0, B * H, head_grain, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t b = i / H, hd = i % H, base = (b * Hkv + hd / group) * T * D;
          kern.attend_one(qkv + b * qkv_n + hd * D, kc + base, vc + base, L, D, scale_, p + i * L,
                          att + b * C + hd * D);  // the heads side by side: (B, C)
        }
      });
      linear(att, B, C, w[kProjW], w[kProjB], x, C, true, false);
      for (int64_t b = 0; b < B; ++b) kern.layer_norm_row(x + b * C, w[kLn2W], w[kLn2B], eps_, C, h + b * C);
      linear(h, B, C, w[kFcW], w[kFcB], hid, 4 * C, false, true);
      linear(hid, B, 4 * C, w[kFc2W], w[kFc2B], x, C, true, false);
    }
    const float* const* fin = w_.data() + n_layer_ * kPerLayer;
    for (int64_t b = 0; b < B; ++b) kern.layer_norm_row(x + b * C, fin[kLnfW], fin[kLnfB], eps_, C, h + b * C);
    auto logits = at::empty({B, V_}, wte_.options());
    linear(h, B, C, fin[kHeadW], fin[kHeadB], logits.data_ptr<float>(), V_, false, false);
    return logits;
  }

 private:
  at::Tensor wte_, wpe_;
  std::vector<std::optional<at::Tensor>> params_;  // held so the pointers in w_ stay valid
  std::vector<at::Tensor> k_, v_;
  std::vector<const float*> w_;  // params_' data, null for a missing bias or gain
  int64_t n_head_, n_layer_, B_, C_, D_, V_, Hkv_, T_, qkv_n_;
  float eps_, scale_;
};

TORCH_LIBRARY_FRAGMENT(babygpt, m) {
  m.class_<GptDecoder>("GptDecoder")
      .def(torch::init<at::Tensor, at::Tensor, std::vector<std::optional<at::Tensor>>, std::vector<at::Tensor>,
                       std::vector<at::Tensor>, int64_t, double, double>())
      .def("step", &GptDecoder::step);
}

}  // namespace babygpt::cpu

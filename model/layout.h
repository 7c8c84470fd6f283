// model/layout.h — the names, shapes and order of every tensor of the decoder, in one place.
//
// The CPU model (transformer.cpp) and the GPU model (transformer_cuda.cpp) declare their arenas from
// these lists and resolve their per-layer pointers with resolve_decoder_layers(), so the two can never
// disagree on a name (names are the join key of the tracer, dumps and diffs: DESIGN.md). Order is
// execution order. The one difference between the two is how attention saves its softmax for the
// backward: the CPU keeps the probabilities, the GPU the log-sum-exp of each row (kernels/cuda/ops.h).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/tensor.h"
#include "model/config.h"

namespace reftrain {

struct ModelTensor {
    enum class Kind {
        parameter,   // HF name; has a "grad:" twin
        activation,  // has a "grad:" twin
        statistic,   // saved for the backward (rstd, attention's softmax, logsumexp): no gradient
    };
    std::string name;
    std::vector<int64_t> shape;
    Kind kind;
};

enum class AttentionSaves {
    probabilities,  // "self_attn.attn_probs" (B, Hq, T, T): the CPU reference
    log_sum_exp,    // "self_attn.attn_lse" (B, Hq, T): the GPU (flash attention)
};

// "model.embed_tokens.weight", per layer "model.layers.{i}.input_layernorm.weight", ... (HF names).
std::vector<ModelTensor> parameter_tensors(const ModelConfig& c);
// "model.embed_tokens.out", per layer "model.layers.{i}.input_layernorm.out", ..., "model.norm.out",
// "logits", "loss.logsumexp" (the scalar "loss" is the CPU model's own).
std::vector<ModelTensor> activation_tensors(const ModelConfig& c, int64_t B, int64_t T, AttentionSaves saves);

// "model.layers.{i}." — the prefix of every tensor of decoder layer i.
std::string layer_prefix(int64_t i);

// The weights of decoder layer i, looked up by their HF names. TensorPtr is Tensor* for the training
// models and const Tensor* for inference (model/generate.cpp); q_norm and k_norm are null without QK-norm.
// Shapes (d = hidden_size, Hq / Hkv = query / key-value heads, D = head_dim, F = intermediate_size),
// as HF stores them: a linear layer's weight is (out, in).
template <class TensorPtr>
struct LayerWeights {
    TensorPtr input_layernorm{};            // (d)
    TensorPtr q_proj{};                     // (Hq D, d)
    TensorPtr k_proj{}, v_proj{};           // (Hkv D, d)
    TensorPtr o_proj{};                     // (d, Hq D)
    TensorPtr q_norm{}, k_norm{};           // (D), shared by every head; null without QK-norm
    TensorPtr post_attention_layernorm{};   // (d)
    TensorPtr gate_proj{}, up_proj{};       // (F, d)
    TensorPtr down_proj{};                  // (d, F)
};

// `param(name)` returns the tensor of that full name (Tensor* or const Tensor*).
template <class Lookup>
auto resolve_layer_weights(const ModelConfig& c, int64_t i, const Lookup& param) {
    const std::string p = layer_prefix(i);
    LayerWeights<decltype(param(p))> w;
    w.input_layernorm = param(p + "input_layernorm.weight");
    w.q_proj = param(p + "self_attn.q_proj.weight");
    w.k_proj = param(p + "self_attn.k_proj.weight");
    w.v_proj = param(p + "self_attn.v_proj.weight");
    w.o_proj = param(p + "self_attn.o_proj.weight");
    if (c.qk_norm) {
        w.q_norm = param(p + "self_attn.q_norm.weight");
        w.k_norm = param(p + "self_attn.k_norm.weight");
    }
    w.post_attention_layernorm = param(p + "post_attention_layernorm.weight");
    w.gate_proj = param(p + "mlp.gate_proj.weight");
    w.up_proj = param(p + "mlp.up_proj.weight");
    w.down_proj = param(p + "mlp.down_proj.weight");
    return w;
}

// Pointers into the arenas for one decoder layer, in the order of the forward. `input` is the previous
// layer's `out` (or the embedding output for layer 0): the residual stream is never copied. Exactly one
// of probs / lse is set (AttentionSaves); attn_logits_max is the CPU tracer's diagnostic, set later.
// Activation shapes: B rows of T tokens.
struct DecoderLayer : LayerWeights<Tensor*> {
    // activations, in execution order
    Tensor* input;                                  // (B, T, d) the residual stream entering the layer
    Tensor *ln1_out, *ln1_rstd;                     // (B, T, d), (B, T)
    Tensor* q;                                      // (B, T, Hq, D)
    Tensor *k, *v;                                  // (B, T, Hkv, D)
    Tensor *q_normed = nullptr, *q_rstd = nullptr;  // (B, T, Hq, D), (B, T, Hq)   QK-norm only
    Tensor *k_normed = nullptr, *k_rstd = nullptr;  // (B, T, Hkv, D), (B, T, Hkv) QK-norm only
    Tensor *q_rotary, *k_rotary;                    // (B, T, Hq, D), (B, T, Hkv, D)
    Tensor* probs = nullptr;                        // (B, Hq, T, T) softmax probabilities (CPU)
    Tensor* lse = nullptr;                          // (B, Hq, T) their log-sum-exp (GPU)
    Tensor* attn_out;                               // (B, T, Hq D)
    Tensor *o_out, *attn_residual, *ln2_out;        // (B, T, d)
    Tensor* ln2_rstd;                               // (B, T)
    Tensor *gate, *up, *act;                        // (B, T, F); act = silu(gate) * up
    Tensor *down, *out;                             // (B, T, d); out = attn_residual + down
    Tensor* attn_logits_max = nullptr;              // (B, Hq) the tracer's diagnostic (CPU)
};

// `param(name)` and `act(name)` look a tensor up by its full name in the caller's arenas.
std::vector<DecoderLayer> resolve_decoder_layers(const ModelConfig& c, AttentionSaves saves,
                                                 const std::function<Tensor*(const std::string&)>& param,
                                                 const std::function<Tensor*(const std::string&)>& act);

}  // namespace reftrain

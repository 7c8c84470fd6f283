// model/layout.cpp — the tensor lists of model/layout.h.
#include "model/layout.h"

namespace reftrain {

std::string layer_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

std::vector<ModelTensor> parameter_tensors(const ModelConfig& c) {
    const int64_t d = c.hidden_size, V = c.vocab_size, F = c.intermediate_size;
    const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
    std::vector<ModelTensor> out;
    auto param = [&](std::string name, std::vector<int64_t> shape) {
        out.push_back({std::move(name), std::move(shape), ModelTensor::Kind::parameter});
    };
    param("model.embed_tokens.weight", {V, d});
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string p = layer_prefix(i);
        param(p + "input_layernorm.weight", {d});
        param(p + "self_attn.q_proj.weight", {Hq * D, d});
        param(p + "self_attn.k_proj.weight", {Hkv * D, d});
        param(p + "self_attn.v_proj.weight", {Hkv * D, d});
        param(p + "self_attn.o_proj.weight", {d, Hq * D});
        if (c.qk_norm) {
            param(p + "self_attn.q_norm.weight", {D});
            param(p + "self_attn.k_norm.weight", {D});
        }
        param(p + "post_attention_layernorm.weight", {d});
        param(p + "mlp.gate_proj.weight", {F, d});
        param(p + "mlp.up_proj.weight", {F, d});
        param(p + "mlp.down_proj.weight", {d, F});
    }
    param("model.norm.weight", {d});
    if (!c.tie_word_embeddings) param("lm_head.weight", {V, d});
    return out;
}

std::vector<ModelTensor> activation_tensors(const ModelConfig& c, int64_t B, int64_t T, AttentionSaves saves) {
    const int64_t d = c.hidden_size, V = c.vocab_size, F = c.intermediate_size;
    const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
    std::vector<ModelTensor> out;
    auto act = [&](std::string name, std::vector<int64_t> shape) {
        out.push_back({std::move(name), std::move(shape), ModelTensor::Kind::activation});
    };
    auto stat = [&](std::string name, std::vector<int64_t> shape) {
        out.push_back({std::move(name), std::move(shape), ModelTensor::Kind::statistic});
    };
    act("model.embed_tokens.out", {B, T, d});
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string p = layer_prefix(i);
        act(p + "input_layernorm.out", {B, T, d});
        stat(p + "input_layernorm.rstd", {B, T});
        act(p + "self_attn.q_proj.out", {B, T, Hq, D});
        act(p + "self_attn.k_proj.out", {B, T, Hkv, D});
        act(p + "self_attn.v_proj.out", {B, T, Hkv, D});
        if (c.qk_norm) {
            act(p + "self_attn.q_normed", {B, T, Hq, D});
            stat(p + "self_attn.q_norm.rstd", {B, T, Hq});
            act(p + "self_attn.k_normed", {B, T, Hkv, D});
            stat(p + "self_attn.k_norm.rstd", {B, T, Hkv});
        }
        act(p + "self_attn.q_rotary", {B, T, Hq, D});
        act(p + "self_attn.k_rotary", {B, T, Hkv, D});
        if (saves == AttentionSaves::probabilities) {
            stat(p + "self_attn.attn_probs", {B, Hq, T, T});
        } else {
            stat(p + "self_attn.attn_lse", {B, Hq, T});
        }
        act(p + "self_attn.attn_out", {B, T, Hq * D});
        act(p + "self_attn.o_proj.out", {B, T, d});
        act(p + "attn_residual", {B, T, d});
        act(p + "post_attention_layernorm.out", {B, T, d});
        stat(p + "post_attention_layernorm.rstd", {B, T});
        act(p + "mlp.gate_proj.out", {B, T, F});
        act(p + "mlp.up_proj.out", {B, T, F});
        act(p + "mlp.act", {B, T, F});
        act(p + "mlp.down_proj.out", {B, T, d});
        act(p + "out", {B, T, d});
    }
    act("model.norm.out", {B, T, d});
    stat("model.norm.rstd", {B, T});
    act("logits", {B, T, V});
    stat("loss.logsumexp", {B, T});
    return out;
}

std::vector<DecoderLayer> resolve_decoder_layers(const ModelConfig& c, AttentionSaves saves,
                                                 const std::function<Tensor*(const std::string&)>& param,
                                                 const std::function<Tensor*(const std::string&)>& act) {
    std::vector<DecoderLayer> layers(static_cast<size_t>(c.num_hidden_layers));
    Tensor* previous = act("model.embed_tokens.out");
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string p = layer_prefix(i);
        auto A = [&](const std::string& n) { return act(p + n); };
        DecoderLayer& l = layers[static_cast<size_t>(i)];
        static_cast<LayerWeights<Tensor*>&>(l) = resolve_layer_weights(c, i, param);
        l.input = previous;
        l.ln1_out = A("input_layernorm.out");
        l.ln1_rstd = A("input_layernorm.rstd");
        l.q = A("self_attn.q_proj.out");
        l.k = A("self_attn.k_proj.out");
        l.v = A("self_attn.v_proj.out");
        if (c.qk_norm) {
            l.q_normed = A("self_attn.q_normed");
            l.q_rstd = A("self_attn.q_norm.rstd");
            l.k_normed = A("self_attn.k_normed");
            l.k_rstd = A("self_attn.k_norm.rstd");
        }
        l.q_rotary = A("self_attn.q_rotary");
        l.k_rotary = A("self_attn.k_rotary");
        if (saves == AttentionSaves::probabilities) {
            l.probs = A("self_attn.attn_probs");
        } else {
            l.lse = A("self_attn.attn_lse");
        }
        l.attn_out = A("self_attn.attn_out");
        l.o_out = A("self_attn.o_proj.out");
        l.attn_residual = A("attn_residual");
        l.ln2_out = A("post_attention_layernorm.out");
        l.ln2_rstd = A("post_attention_layernorm.rstd");
        l.gate = A("mlp.gate_proj.out");
        l.up = A("mlp.up_proj.out");
        l.act = A("mlp.act");
        l.down = A("mlp.down_proj.out");
        l.out = A("out");
        previous = l.out;
    }
    return layers;
}

}  // namespace reftrain

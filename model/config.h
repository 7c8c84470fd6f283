// model/config.h — the model configuration, with the field names of HF's Qwen3ForCausalLM.
//
// An HF `config.json` for Qwen3 (model_type "qwen3") or Llama (model_type "llama", which has no
// QK-norm) loads directly. Fields HF uses that do not change this model's math (token ids,
// torch_dtype, use_cache, ...) are accepted and ignored; fields that would change the math in a way
// we do not implement (attention_bias, rope_scaling, sliding windows, another activation) are
// refused with a message, and a key nobody knows is refused too: a typo must never be ignored.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace reftrain {

struct ModelConfig {
    // --- HF fields (Qwen3ForCausalLM names) ---
    int64_t vocab_size = 512;
    int64_t hidden_size = 128;              // d
    int64_t intermediate_size = 384;        // SwiGLU width
    int64_t num_hidden_layers = 4;
    int64_t num_attention_heads = 4;        // query heads
    int64_t num_key_value_heads = 2;        // GQA: must divide num_attention_heads
    int64_t head_dim = 32;                  // may differ from hidden_size / num_attention_heads
    int64_t max_position_embeddings = 128;  // longest sequence the RoPE table covers
    double rope_theta = 10000.0;
    double rms_norm_eps = 1e-6;
    bool tie_word_embeddings = false;       // lm_head shares model.embed_tokens.weight
    double initializer_range = 0.02;        // std of the normal init of every matrix

    // --- reftrain switches beyond HF (written to config.json under these names) ---
    bool qk_norm = true;                    // RMSNorm on q and k per head; false = Llama
    bool zero_init_output_projections = false;  // o_proj and down_proj start at zero

    // Reads an HF-style config.json. `source` names the file in error messages.
    static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
    static ModelConfig load(const std::string& path);
    // HF-compatible JSON ("architectures", "model_type", and every field above).
    nlohmann::json to_json() const;
    void save(const std::string& path) const;

    // Fails with a message naming `source` and the field when a value is out of range or
    // inconsistent (e.g. heads not divisible by KV heads).
    void validate(const std::string& source) const;

    int64_t q_dim() const { return num_attention_heads * head_dim; }
    int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

}  // namespace reftrain

// model/config.h — the model configuration, with the field names of HF's Qwen3ForCausalLM.
//
// An HF `config.json` for Qwen3 (model_type "qwen3"), Llama (model_type "llama", no QK-norm) or
// Mistral without a sliding window loads directly, whatever transformers version wrote it. Each key
// falls in one of three groups (model/config.cpp holds the lists):
//   - a key that changes the math (a bias, RoPE scaling, a sliding window, soft-capping, experts,
//     quantization, another activation, ...) must have the value our math implements, or loading is
//     refused with the key, its value and what is supported;
//   - a key within a small edit distance of one of those or of our own fields is a typo: refused with
//     "did you mean";
//   - every other key (generation settings, attn_implementation, id2label, keys other transformers
//     releases add) does not change the math, in HF's Qwen3/Llama models either: accepted, and the
//     ones not on our list of known-harmless HF keys are named in one warning line on stderr.
// RoPE scaling of type "linear" and "llama3" is implemented (kernels/rope_scaling.h), from either the
// transformers-4 `rope_scaling` object or the transformers-5 `rope_parameters` object.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kernels/rope_scaling.h"

namespace reftrain {

// The largest model validate() accepts, in elements of any one size product and in parameters: 2^40 (4 TiB
// in fp32), far above anything this framework trains and far below where an int64 product wraps.
constexpr int64_t kMaxModelParameters = int64_t{1} << 40;

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
    RopeScaling rope_scaling;               // HF rope_scaling / rope_parameters: none, linear or llama3
    double rms_norm_eps = 1e-6;
    bool tie_word_embeddings = false;       // lm_head shares model.embed_tokens.weight
    double initializer_range = 0.02;        // std of the normal init of every matrix

    // --- reftrain switches beyond HF (written to config.json under these names) ---
    bool qk_norm = true;                    // RMSNorm on q and k per head; false = Llama
    bool zero_init_output_projections = false;  // o_proj and down_proj start at zero
    // RoPE angles t * inv_freq: false = HF's float32 arithmetic (every HF checkpoint was trained with
    // it), true = exact fp64 ("rope_angles": "exact"; `reftrain dump --rope-angles exact`), to diff
    // an fp64 model that computes exact angles.
    bool exact_rope_angles = false;

    // Reads an HF-style config.json. `source` names the file in error messages and in the one warning
    // line (stderr) that lists the keys it ignored; `ignored_keys`, when given, receives that list.
    static ModelConfig from_json(const nlohmann::json& j, const std::string& source,
                                 std::vector<std::string>* ignored_keys = nullptr);
    static ModelConfig load(const std::string& path, std::vector<std::string>* ignored_keys = nullptr);
    // HF-compatible JSON ("architectures", "model_type", and every field above; the RoPE scaling as
    // transformers-4 `rope_scaling`, which transformers 5 reads too).
    nlohmann::json to_json() const;
    void save(const std::string& path) const;

    // Fails with a message naming `source` and the field when a value is out of range or
    // inconsistent (e.g. heads not divisible by KV heads).
    void validate(const std::string& source) const;

    // The key of a config.json that `key` is a typo of (one of our fields or a math-changing HF key),
    // or "" when it is none. Real HF keys never are: the bound is tuned on every config key of
    // transformers 5.24 (tests/data/hf_configs/transformers_5_24_config_keys.txt).
    static std::string typo_of(const std::string& key);

    // Checked by validate(): this and every other size product fits kMaxModelParameters.
    int64_t q_dim() const { return num_attention_heads * head_dim; }
    int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

}  // namespace reftrain

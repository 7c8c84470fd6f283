// model/config.cpp — see config.h. Every key of a config.json is one of: a field of ModelConfig; an
// HF key that changes the math, checked to have the value our math implements (refused otherwise,
// naming the key, its value and what is supported); a typo of one of those (refused, "did you mean");
// or a key that does not change the math, accepted. HF's own Qwen3/Llama models ignore keys they do
// not read just as we do, so accepting them loses nothing; the unknown ones among them are listed in
// one warning line so that nothing is ignored silently.
#include "model/config.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "kernels/json_strict.h"
#include "kernels/safetensors.h"  // write_file_atomically

namespace reftrain {

namespace {

using json = nlohmann::json;

// Fields of ModelConfig, read and written under these names ("rope_scaling" is read below).
const char* const kStructFields[] = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "rms_norm_eps",
    "tie_word_embeddings", "initializer_range", "qk_norm", "zero_init_output_projections", "rope_angles"};

// ---- keys that change the math ------------------------------------------------------------------------

// HF keys with their own check in check_math_keys() / read_rope() below.
const char* const kSpecialMathKeys[] = {
    "model_type", "architectures", "rope_scaling", "rope_parameters", "use_sliding_window", "sliding_window",
    "layer_types", "original_max_position_embeddings"};

bool is_null(const json& v, const ModelConfig&) { return v.is_null(); }
bool null_or_false(const json& v, const ModelConfig&) { return v.is_null() || v == false; }
bool null_or_zero(const json& v, const ModelConfig&) { return v.is_null() || (v.is_number() && v.get<double>() == 0); }
bool null_or_one(const json& v, const ModelConfig&) { return v.is_null() || (v.is_number() && v.get<double>() == 1); }
bool null_or_silu(const json& v, const ModelConfig&) { return v.is_null() || v == "silu"; }
bool null_or_empty(const json& v, const ModelConfig&) { return v.is_null() || (v.is_object() && v.empty()); }
bool null_or_head_dim(const json& v, const ModelConfig& c) {
    return v.is_null() || (v.is_number() && v.get<double>() == static_cast<double>(c.head_dim));
}
bool null_or_all_ones(const json& v, const ModelConfig&) {
    return v.is_null() || (v.is_array() && std::all_of(v.begin(), v.end(), [](const json& e) {
                               return e.is_number() && e.get<double>() == 1;
                           }));
}

// An HF key whose value must be one our math implements. Collected from HF's Qwen3, Qwen2, Llama and
// Mistral config classes and the keys of nearby architectures (Gemma, Granite, OLMo, Mixtral, ...)
// that a Qwen3/Llama-shaped config might carry.
struct MathKey {
    const char* key;
    bool (*accepts)(const json& value, const ModelConfig& config);
    const char* supported;  // what our math implements, for the message
};

const char kNoBiases[] = "false (this model has no biases: the Qwen3/Llama layout)";
const char kNoExperts[] = "absent, null or 0 (a dense SwiGLU MLP: no mixture of experts)";
const char kNoDropout[] = "absent, null or 0 (no dropout)";

const MathKey kMathKeys[] = {
    {"attention_bias", null_or_false, kNoBiases},
    {"mlp_bias", null_or_false, kNoBiases},
    {"qkv_bias", null_or_false, kNoBiases},
    {"use_qkv_bias", null_or_false, kNoBiases},
    {"use_bias", null_or_false, kNoBiases},
    {"hidden_act", null_or_silu, "\"silu\" (the SwiGLU MLP)"},
    {"hidden_activation", null_or_silu, "\"silu\" (the SwiGLU MLP)"},
    {"partial_rotary_factor", null_or_one, "1 (RoPE over the whole head)"},
    {"final_logit_softcapping", is_null, "null (no soft-capping of the logits)"},
    {"attn_logit_softcapping", is_null, "null (no soft-capping of the attention logits)"},
    {"quantization_config", is_null, "absent (unquantized weights)"},
    {"num_experts", null_or_zero, kNoExperts},
    {"num_local_experts", null_or_zero, kNoExperts},
    {"n_routed_experts", null_or_zero, kNoExperts},
    {"n_shared_experts", null_or_zero, kNoExperts},
    {"num_shared_experts", null_or_zero, kNoExperts},
    {"moe_num_experts", null_or_zero, kNoExperts},
    {"num_experts_per_tok", null_or_zero, kNoExperts},
    {"num_experts_per_token", null_or_zero, kNoExperts},
    {"query_pre_attn_scalar", null_or_head_dim, "null or head_dim (softmax scale 1/sqrt(head_dim))"},
    {"attention_multiplier", is_null, "null (softmax scale 1/sqrt(head_dim))"},
    {"embedding_multiplier", null_or_one, "null or 1 (embeddings used as they are)"},
    {"scale_emb", null_or_one, "null or 1 (embeddings used as they are)"},
    {"residual_multiplier", null_or_one, "null or 1 (plain residual sums)"},
    {"logits_scaling", null_or_one, "null or 1 (logits = lm_head output)"},
    {"logit_scale", null_or_one, "null or 1 (logits = lm_head output)"},
    {"clip_qkv", is_null, "null (q, k, v are not clipped)"},
    {"use_parallel_residual", null_or_false, "false (attention, then the MLP)"},
    {"parallel_attn", null_or_false, "false (attention, then the MLP)"},
    {"attention_chunk_size", is_null, "null (full causal attention)"},
    {"sliding_window_pattern", is_null, "null (no sliding-window layers)"},
    {"no_rope_layers", null_or_all_ones, "null or all 1 (RoPE in every layer)"},
    {"pretraining_tp", [](const json& v, const ModelConfig&) { return v.is_null() || v == 1; },
     "1 (exact linear layers)"},
    {"pruned_heads", null_or_empty, "{} (no pruned heads)"},
    {"attention_dropout", null_or_zero, kNoDropout},
    {"hidden_dropout", null_or_zero, kNoDropout},
    {"hidden_dropout_prob", null_or_zero, kNoDropout},
    {"attention_probs_dropout_prob", null_or_zero, kNoDropout},
    {"resid_pdrop", null_or_zero, kNoDropout},
    {"embd_pdrop", null_or_zero, kNoDropout},
    {"emb_pdrop", null_or_zero, kNoDropout},
    {"attn_pdrop", null_or_zero, kNoDropout},
    {"mlp_dropout", null_or_zero, kNoDropout},
    {"embedding_dropout", null_or_zero, kNoDropout},
    {"dropout", null_or_zero, kNoDropout},
};

// ---- keys that do not change the math ---------------------------------------------------------------

// Accepted silently: PretrainedConfig's common attributes (transformers 4 and 5), the generation
// settings transformers 4 kept in the model config, attention-kernel choices, token ids, and keys of
// Qwen3/Llama/Mistral/Qwen3-MoE configs that only matter together with a key refused above.
const char* const kHarmlessHfKeys[] = {
    // PretrainedConfig
    "_name_or_path", "_commit_hash", "transformers_version", "torch_dtype", "dtype", "use_bfloat16",
    "return_dict", "output_hidden_states", "output_attentions", "output_scores", "torchscript",
    "tf_legacy_loss", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "finetuning_task", "id2label", "label2id",
    "num_labels", "problem_type", "tokenizer_class", "prefix", "task_specific_params", "bos_token_id",
    "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache",
    "gradient_checkpointing", "attn_implementation", "_attn_implementation", "_attn_implementation_internal",
    "_attn_implementation_autoset", "experts_implementation", "_experts_implementation",
    "base_model_tp_plan", "base_model_pp_plan", "base_model_ep_plan", "_pre_quantization_dtype",
    "use_return_dict", "classifier_dropout",
    // generation settings
    "max_length", "min_length", "max_new_tokens", "min_new_tokens", "max_time", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "min_p",
    "epsilon_cutoff", "eta_cutoff", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "force_words_ids", "num_return_sequences",
    "return_dict_in_generate", "output_logits", "forced_bos_token_id", "forced_eos_token_id",
    "forced_decoder_ids", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "renormalize_logits", "sequence_bias", "guidance_scale", "low_memory",
    "penalty_alpha", "stop_strings", "cache_implementation", "cache_config", "return_legacy_cache",
    "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
    "prompt_lookup_num_tokens", "max_matching_ngram_size", "dola_layers", "watermarking_config",
    "token_healing", "compile_config", "disable_compile",
    // model-specific, harmless without the refused keys they go with
    "max_window_layers", "router_aux_loss_coef", "output_router_logits", "norm_topk_prob",
    "decoder_sparse_step", "moe_intermediate_size", "mlp_only_layers", "shared_expert_intermediate_size",
    "router_jitter_noise"};

// Real HF config keys (of other architectures) within the typo bound of one of our keys: not typos.
// Found by running typo_of over every config key of transformers 5.24; the test keeps it complete.
const char* const kNotTypos[] = {
    "_sliding_window_pattern", "architecture", "attention_heads", "attention_in_multiplier", "cat_hidden_layers",
    "dropout_p", "embed_dim_multiplier", "ffn_dropout", "hidden_sizes", "hidden_stride", "layer_type",
    "max_2d_position_embeddings", "num_position_embeddings", "post_norm_eps", "qk_head_dim", "qv_bias",
    "sliding_windows", "use_conv_bias", "v_head_dim"};

template <size_t N>
bool listed(const char* const (&list)[N], const std::string& key) {
    return std::any_of(std::begin(list), std::end(list), [&](const char* k) { return key == k; });
}

const MathKey* math_key(const std::string& key) {
    for (const MathKey& m : kMathKeys) {
        if (key == m.key) return &m;
    }
    return nullptr;
}

// Keys a typo is measured against: ours and the math-changing HF keys (a typo of a harmless key is
// harmless).
std::vector<std::string> typo_targets() {
    std::vector<std::string> keys;
    for (const char* k : kStructFields) keys.push_back(k);
    for (const char* k : kSpecialMathKeys) keys.push_back(k);
    for (const MathKey& m : kMathKeys) keys.push_back(m.key);
    return keys;
}

// The typo bound grows with the key: one edit in a short key already makes another word.
size_t typo_distance(const std::string& key) { return key.size() <= 4 ? 1 : key.size() <= 10 ? 2 : 3; }

std::string short_dump(const json& j) {
    std::string s = j.dump();
    return s.size() <= 60 ? s : s.substr(0, 57) + "...";
}

int64_t read_integer(const json& j, const std::string& field, const std::string& source) {
    check(j.is_number_integer(), source, ": field '", field, "' must be an integer, got ", j.type_name(), " ",
          short_dump(j));
    if (j.is_number_unsigned()) {
        check(j.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), source,
              ": field '", field, "' is too large: ", short_dump(j));
    }
    return j.get<int64_t>();
}

double read_number(const json& j, const std::string& field, const std::string& source) {
    check(j.is_number(), source, ": field '", field, "' must be a number, got ", j.type_name(), " ",
          short_dump(j));
    return j.get<double>();
}

bool read_bool(const json& j, const std::string& field, const std::string& source) {
    check(j.is_boolean(), source, ": field '", field, "' must be a boolean (true or false), got ",
          j.type_name(), " ", short_dump(j));
    return j.get<bool>();
}

std::string read_string(const json& j, const std::string& field, const std::string& source) {
    check(j.is_string(), source, ": field '", field, "' must be a string, got ", j.type_name(), " ",
          short_dump(j));
    return j.get<std::string>();
}

// ---- RoPE scaling -------------------------------------------------------------------------------------

const char kSupportedRope[] = "supported: \"default\" (no scaling), \"linear\", \"llama3\"";

// What one rope_scaling / rope_parameters object says.
struct RopeObject {
    RopeScaling scaling;
    std::optional<double> theta;                  // transformers 5 keeps rope_theta here
    bool original_max_position_embeddings_given = false;
};

// Reads a transformers-4 `rope_scaling` or transformers-5 `rope_parameters` object (`field` names
// it). HF accepts the type under "rope_type" or, before 4.45, "type". Keys the type does not use are
// ignored by HF too (it warns); we list them in the warning, unless they look like a typo of a key the
// type does use.
RopeObject read_rope(const json& rope, const std::string& field, const std::string& source,
                     std::vector<std::string>* ignored) {
    check(rope.is_object(), source, ": field '", field, "' must be an object or null, got ", short_dump(rope));
    std::string type = "default";
    if (rope.contains("rope_type")) type = read_string(rope["rope_type"], field + ".rope_type", source);
    if (rope.contains("type")) {
        const std::string old = read_string(rope["type"], field + ".type", source);
        check(!rope.contains("rope_type") || old == type, source, ": fields '", field, ".rope_type' (\"", type,
              "\") and '", field, ".type' (\"", old, "\") disagree");
        type = old;
    }
    RopeObject out;
    if (type == "linear") {
        out.scaling.type = RopeScaling::Type::linear;
    } else if (type == "llama3") {
        out.scaling.type = RopeScaling::Type::llama3;
    } else if (type != "default") {
        fail(source, ": field '", field, "' has rope_type \"", type, "\", which is not implemented (",
             type == "yarn" || type == "longrope" ? "it also rescales attention; " :
             type == "dynamic" ? "its frequencies change with the sequence length; " : "",
             kSupportedRope, ")");
    }

    std::vector<std::string> used = {"rope_type", "type", "rope_theta", "partial_rotary_factor"};
    if (out.scaling.type != RopeScaling::Type::none) used.push_back("factor");
    if (out.scaling.type == RopeScaling::Type::llama3) {
        for (const char* k : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) used.push_back(k);
    }
    for (const auto& [key, value] : rope.items()) {
        if (std::find(used.begin(), used.end(), key) != used.end()) continue;
        const std::string closest = closest_name(key, used, typo_distance(key));
        check(closest.empty(), source, ": unknown key '", field, ".", key, "' (did you mean '", field, ".", closest,
              "'?)");
        ignored->push_back(field + "." + key);
    }

    if (rope.contains("rope_theta")) out.theta = read_number(rope["rope_theta"], field + ".rope_theta", source);
    if (rope.contains("partial_rotary_factor")) {
        const json& p = rope["partial_rotary_factor"];
        check(null_or_one(p, ModelConfig{}), source, ": field '", field, ".partial_rotary_factor' is ",
              short_dump(p), ", but this model implements only 1 (RoPE over the whole head)");
    }
    auto required_number = [&](const char* key) {
        check(rope.contains(key), source, ": field '", field, "' of rope_type \"", type, "\" lacks '", key, "'");
        return read_number(rope[key], field + "." + key, source);
    };
    if (out.scaling.type != RopeScaling::Type::none) out.scaling.factor = required_number("factor");
    if (out.scaling.type == RopeScaling::Type::llama3) {
        out.scaling.low_freq_factor = required_number("low_freq_factor");
        out.scaling.high_freq_factor = required_number("high_freq_factor");
        // transformers 5 fills it in from max_position_embeddings when absent (see from_json).
        if (rope.contains("original_max_position_embeddings")) {
            out.scaling.original_max_position_embeddings = read_integer(
                rope["original_max_position_embeddings"], field + ".original_max_position_embeddings", source);
            out.original_max_position_embeddings_given = true;
        }
    }
    return out;
}

std::string describe(const RopeScaling& s) {
    switch (s.type) {
        case RopeScaling::Type::none: return "none";
        case RopeScaling::Type::linear: return concat("linear, factor ", s.factor);
        case RopeScaling::Type::llama3:
            return concat("llama3, factor ", s.factor, ", low_freq_factor ", s.low_freq_factor, ", high_freq_factor ",
                          s.high_freq_factor, ", original_max_position_embeddings ",
                          s.original_max_position_embeddings);
    }
    return "?";
}

// Reads rope_theta and the RoPE scaling from both places HF keeps them. transformers 5 reads
// rope_scaling first, then rope_parameters; we refuse the two when they disagree, and likewise a
// rope_theta given in more than one place with different values.
void read_rope_keys(const json& j, ModelConfig& c, const std::string& source, std::vector<std::string>* ignored) {
    std::optional<RopeObject> scaling, parameters;
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
        scaling = read_rope(j["rope_scaling"], "rope_scaling", source, ignored);
    }
    std::string parameters_field = "rope_parameters";
    if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
        const json& rope = j["rope_parameters"];
        // Models with several layer types nest one object per type ({"full_attention": {...}, ...}).
        if (rope.is_object() && rope.contains("full_attention") && rope["full_attention"].is_object()) {
            for (const auto& [key, value] : rope.items()) {
                check(key == "full_attention", source, ": field 'rope_parameters' has RoPE for layer type '", key,
                      "', but this model has only \"full_attention\" layers");
            }
            parameters_field = "rope_parameters.full_attention";
        }
        parameters = read_rope(parameters_field == "rope_parameters" ? rope : rope["full_attention"],
                               parameters_field, source, ignored);
    }

    // rope_theta: top level (transformers 4), or inside either object (transformers 5).
    std::string theta_field = j.contains("rope_theta") ? "rope_theta" : "";
    auto take_theta = [&](const std::optional<RopeObject>& r, const std::string& field) {
        if (!r || !r->theta) return;
        check(theta_field.empty() || *r->theta == c.rope_theta, source, ": fields '", theta_field, "' (", c.rope_theta,
              ") and '", field, ".rope_theta' (", *r->theta, ") disagree");
        c.rope_theta = *r->theta;
        theta_field = field + ".rope_theta";
    };
    take_theta(parameters, parameters_field);
    take_theta(scaling, "rope_scaling");
    if (!scaling && !parameters) return;

    // llama3's original context: the object's value, else a top-level key (Phi-3 style, which
    // transformers 5 prefers), else max_position_embeddings (transformers 5's default).
    auto complete = [&](RopeObject& r) {
        if (r.scaling.type != RopeScaling::Type::llama3) return;
        if (j.contains("original_max_position_embeddings")) {
            const int64_t top = read_integer(j["original_max_position_embeddings"], "original_max_position_embeddings",
                                             source);
            check(!r.original_max_position_embeddings_given || top == r.scaling.original_max_position_embeddings,
                  source, ": fields 'original_max_position_embeddings' (", top,
                  ") and the llama3 RoPE scaling's original_max_position_embeddings (",
                  r.scaling.original_max_position_embeddings, ") disagree");
            r.scaling.original_max_position_embeddings = top;
        } else if (!r.original_max_position_embeddings_given) {
            r.scaling.original_max_position_embeddings = c.max_position_embeddings;
        }
    };
    if (scaling) complete(*scaling);
    if (parameters) complete(*parameters);
    if (scaling && parameters) {
        check(scaling->scaling == parameters->scaling, source, ": fields 'rope_scaling' (", describe(scaling->scaling),
              ") and 'rope_parameters' (", describe(parameters->scaling), ") disagree");
    }
    c.rope_scaling = scaling ? scaling->scaling : parameters->scaling;
}

// ---- the other math checks ----------------------------------------------------------------------------

const char kSupportedTypes[] = "supported: qwen3, llama, mistral";
const char kQwen2Reason[] =
    "Qwen2/Qwen2.5 add biases to q_proj, k_proj and v_proj (hard-coded, no config key turns them off), "
    "and this model has no biases";

void check_math_keys(const json& j, const ModelConfig& c, const std::string& source) {
    if (j.contains("architectures")) {
        const json& a = j["architectures"];
        check(a.is_array() && !a.empty(), source, ": field 'architectures' must be a non-empty array, got ",
              short_dump(a));
        for (const json& name : a) {
            const std::string arch = read_string(name, "architectures", source);
            check(arch != "Qwen2ForCausalLM", source, ": field 'architectures' names Qwen2ForCausalLM, but ",
                  kQwen2Reason);
            check(arch == "Qwen3ForCausalLM" || arch == "LlamaForCausalLM" || arch == "MistralForCausalLM", source,
                  ": field 'architectures' names '", arch,
                  "', supported: Qwen3ForCausalLM, LlamaForCausalLM, MistralForCausalLM");
        }
    }
    for (const MathKey& m : kMathKeys) {
        if (!j.contains(m.key)) continue;
        check(m.accepts(j[m.key], c), source, ": field '", m.key, "' is ", short_dump(j[m.key]),
              ", but this model implements only ", m.supported);
    }
    bool sliding_window_disabled = false;
    if (j.contains("use_sliding_window")) {
        check(!read_bool(j["use_sliding_window"], "use_sliding_window", source), source,
              ": field 'use_sliding_window' is true, but this model implements only false "
              "(sliding-window attention is not implemented)");
        sliding_window_disabled = true;
    }
    // Qwen3 ships a sliding_window value with use_sliding_window false; Mistral-style configs use the
    // window whenever it is set, which only matters if it is shorter than the context.
    if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
        const int64_t window = read_integer(j["sliding_window"], "sliding_window", source);
        check(sliding_window_disabled || window >= c.max_position_embeddings, source,
              ": field 'sliding_window' is ", window, " (shorter than max_position_embeddings ",
              c.max_position_embeddings,
              ") and use_sliding_window is not false, but sliding-window attention is not implemented; "
              "supported: null, or a window >= max_position_embeddings");
    }
    if (j.contains("layer_types") && !j["layer_types"].is_null()) {
        const json& types = j["layer_types"];
        check(types.is_array(), source, ": field 'layer_types' must be an array, got ", types.type_name());
        for (const json& t : types) {
            check(t == "full_attention", source, ": field 'layer_types' has entry ", short_dump(t),
                  ", but this model implements only \"full_attention\" layers");
        }
        check(static_cast<int64_t>(types.size()) == c.num_hidden_layers, source, ": field 'layer_types' has ",
              types.size(), " entries, but num_hidden_layers is ", c.num_hidden_layers, " (one entry per layer)");
    }
}

}  // namespace

std::string ModelConfig::typo_of(const std::string& key) {
    if (listed(kStructFields, key) || listed(kSpecialMathKeys, key) || math_key(key) ||
        listed(kHarmlessHfKeys, key) || listed(kNotTypos, key)) {
        return "";
    }
    return closest_name(key, typo_targets(), typo_distance(key));
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source, std::vector<std::string>* ignored_keys) {
    check(j.is_object(), source, ": a model config must be a JSON object, got ", j.type_name());

    // A typo is reported before anything it might have caused.
    std::vector<std::string> ignored;
    for (const auto& [key, unused] : j.items()) {
        if (listed(kStructFields, key) || listed(kSpecialMathKeys, key) || math_key(key) ||
            listed(kHarmlessHfKeys, key)) {
            continue;
        }
        const std::string typo = typo_of(key);
        if (!typo.empty()) fail("unknown key '", key, "' in ", source, " (did you mean '", typo, "'?)");
        ignored.push_back(key);
    }

    ModelConfig c;
    auto integer = [&](const char* field, int64_t* out) {
        if (j.contains(field)) *out = read_integer(j[field], field, source);
    };
    auto number = [&](const char* field, double* out) {
        if (j.contains(field)) *out = read_number(j[field], field, source);
    };
    auto boolean = [&](const char* field, bool* out) {
        if (j.contains(field)) *out = read_bool(j[field], field, source);
    };
    integer("vocab_size", &c.vocab_size);
    integer("hidden_size", &c.hidden_size);
    integer("intermediate_size", &c.intermediate_size);
    integer("num_hidden_layers", &c.num_hidden_layers);
    integer("num_attention_heads", &c.num_attention_heads);
    integer("max_position_embeddings", &c.max_position_embeddings);
    number("rope_theta", &c.rope_theta);
    number("rms_norm_eps", &c.rms_norm_eps);
    boolean("tie_word_embeddings", &c.tie_word_embeddings);
    number("initializer_range", &c.initializer_range);
    boolean("zero_init_output_projections", &c.zero_init_output_projections);
    if (j.contains("rope_angles")) {
        check(j["rope_angles"] == "hf" || j["rope_angles"] == "exact", source, ": field 'rope_angles' must be \"hf\" "
              "(float32 angles, as HF computes them) or \"exact\" (fp64), got ", j["rope_angles"].dump());
        c.exact_rope_angles = j["rope_angles"] == "exact";
    }

    // HF leaves these two out (or null) when they take their derived value.
    if (j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()) {
        integer("num_key_value_heads", &c.num_key_value_heads);
    } else {
        c.num_key_value_heads = c.num_attention_heads;
    }
    if (j.contains("head_dim") && !j["head_dim"].is_null()) {
        integer("head_dim", &c.head_dim);
    } else if (c.num_attention_heads >= 1) {  // otherwise validate() names num_attention_heads
        check(c.hidden_size % c.num_attention_heads == 0, source,
              ": field 'head_dim' is absent and hidden_size ", c.hidden_size,
              " is not divisible by num_attention_heads ", c.num_attention_heads,
              "; set head_dim explicitly");
        c.head_dim = c.hidden_size / c.num_attention_heads;
    }

    // model_type picks the QK-norm default; an explicit "qk_norm" wins over it.
    if (j.contains("model_type")) {
        std::string type = read_string(j["model_type"], "model_type", source);
        if (type == "qwen3") {
            c.qk_norm = true;
        } else if (type == "llama" || type == "mistral") {
            c.qk_norm = false;
        } else if (type == "qwen2") {
            fail(source, ": field 'model_type' is 'qwen2', but ", kQwen2Reason, "; ", kSupportedTypes);
        } else {
            fail(source, ": field 'model_type' is '", type, "', ", kSupportedTypes);
        }
    }
    boolean("qk_norm", &c.qk_norm);

    read_rope_keys(j, c, source, &ignored);
    check_math_keys(j, c, source);
    c.validate(source);

    if (!ignored.empty()) {
        std::ostringstream line;
        line << source << ": ignoring " << ignored.size()
             << (ignored.size() == 1 ? " key that does not" : " keys that do not") << " change the math: ";
        for (size_t i = 0; i < ignored.size(); ++i) line << (i ? ", " : "") << ignored[i];
        std::cerr << line.str() << "\n";
    }
    if (ignored_keys) *ignored_keys = std::move(ignored);
    return c;
}

ModelConfig ModelConfig::load(const std::string& path, std::vector<std::string>* ignored_keys) {
    check(!std::filesystem::is_directory(path), path, ": cannot read model config: it is a directory");
    // A repeated key is refused like any other typo (nlohmann alone would keep the last one).
    const json j = read_json_file(path, "model config");
    return from_json(j, path, ignored_keys);
}

json ModelConfig::to_json() const {
    json j;
    j["architectures"] = json::array({qk_norm ? "Qwen3ForCausalLM" : "LlamaForCausalLM"});
    j["model_type"] = qk_norm ? "qwen3" : "llama";
    j["vocab_size"] = vocab_size;
    j["hidden_size"] = hidden_size;
    j["intermediate_size"] = intermediate_size;
    j["num_hidden_layers"] = num_hidden_layers;
    j["num_attention_heads"] = num_attention_heads;
    j["num_key_value_heads"] = num_key_value_heads;
    j["head_dim"] = head_dim;
    j["max_position_embeddings"] = max_position_embeddings;
    j["rope_theta"] = rope_theta;
    j["rms_norm_eps"] = rms_norm_eps;
    j["tie_word_embeddings"] = tie_word_embeddings;
    j["initializer_range"] = initializer_range;
    j["qk_norm"] = qk_norm;
    j["zero_init_output_projections"] = zero_init_output_projections;
    if (exact_rope_angles) j["rope_angles"] = "exact";  // written only when not HF's default
    // What HF needs to rebuild the same math.
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    if (rope_scaling.type == RopeScaling::Type::none) {
        j["rope_scaling"] = nullptr;
    } else {  // transformers-4 form; transformers 5 reads it into rope_parameters
        json scaling = {{"rope_type", rope_type_name(rope_scaling.type)}, {"factor", rope_scaling.factor}};
        if (rope_scaling.type == RopeScaling::Type::llama3) {
            scaling["low_freq_factor"] = rope_scaling.low_freq_factor;
            scaling["high_freq_factor"] = rope_scaling.high_freq_factor;
            scaling["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
        }
        j["rope_scaling"] = scaling;
    }
    j["torch_dtype"] = "float32";
    return j;
}

void ModelConfig::save(const std::string& path) const {
    validate(path);
    std::string text = to_json().dump(2) + "\n";
    write_file_atomically(path, text.data(), text.size());
}

void ModelConfig::validate(const std::string& source) const {
    const std::pair<const char*, int64_t> sizes[] = {
        {"vocab_size", vocab_size},
        {"hidden_size", hidden_size},
        {"intermediate_size", intermediate_size},
        {"num_hidden_layers", num_hidden_layers},
        {"num_attention_heads", num_attention_heads},
        {"num_key_value_heads", num_key_value_heads},
        {"head_dim", head_dim},
        {"max_position_embeddings", max_position_embeddings}};
    for (const auto& [field, value] : sizes) {
        check(value >= 1, source, ": field '", field, "' must be >= 1, got ", value);
    }
    // Every buffer the model allocates is a product of these fields, and a file can hold any integer. The
    // products are checked here, before anything is allocated: a product that wraps around 2^63 would
    // allocate a few bytes that the init then writes past (vocab_size = 2^63 - 1 did exactly that).
    auto product = [&](int64_t a, int64_t b, const char* what) {
        int64_t out = 0;
        check(!__builtin_mul_overflow(a, b, &out) && out <= kMaxModelParameters, source, ": the model is too large: ",
              what, " = ", a, " x ", b, " exceeds ", kMaxModelParameters, " (2^40) elements");
        return out;
    };
    auto sum = [&](int64_t a, int64_t b, const char* what) {
        int64_t out = 0;
        check(!__builtin_add_overflow(a, b, &out) && out <= kMaxModelParameters, source, ": the model is too large: ",
              what, " exceeds ", kMaxModelParameters, " (2^40) parameters");
        return out;
    };
    const int64_t q = product(num_attention_heads, head_dim, "num_attention_heads x head_dim");
    const int64_t kv = product(num_key_value_heads, head_dim, "num_key_value_heads x head_dim");
    int64_t layer = product(hidden_size, q, "hidden_size x num_attention_heads x head_dim (q_proj, o_proj)");
    layer = sum(layer, layer, "a layer's attention");
    layer = sum(layer, product(2, product(hidden_size, kv, "hidden_size x num_key_value_heads x head_dim (k_proj, v_proj)"),
                               "k_proj + v_proj"), "a layer's attention");
    layer = sum(layer, product(3, product(hidden_size, intermediate_size, "hidden_size x intermediate_size (MLP)"), "the MLP"),
                "a layer");
    const int64_t embedding = product(vocab_size, hidden_size, "vocab_size x hidden_size (embedding)");
    sum(product(num_hidden_layers, layer, "num_hidden_layers x a layer's parameters"), product(2, embedding, "embedding + lm_head"),
        "the parameter count");
    product(max_position_embeddings, head_dim, "max_position_embeddings x head_dim (the RoPE table)");
    check(num_attention_heads % num_key_value_heads == 0, source, ": field 'num_attention_heads' (",
          num_attention_heads, ") must be divisible by field 'num_key_value_heads' (", num_key_value_heads,
          ") for grouped-query attention");
    check(head_dim % 2 == 0, source,
          ": field 'head_dim' must be even (RoPE rotates pairs of dimensions), got ", head_dim);
    check(std::isfinite(rope_theta) && rope_theta > 0, source, ": field 'rope_theta' must be > 0, got ",
          rope_theta);
    if (rope_scaling.type != RopeScaling::Type::none) {
        check(std::isfinite(rope_scaling.factor) && rope_scaling.factor > 0, source,
              ": field 'rope_scaling.factor' must be > 0, got ", rope_scaling.factor);
    }
    if (rope_scaling.type == RopeScaling::Type::llama3) {
        check(std::isfinite(rope_scaling.low_freq_factor) && rope_scaling.low_freq_factor > 0, source,
              ": field 'rope_scaling.low_freq_factor' must be > 0, got ", rope_scaling.low_freq_factor);
        check(std::isfinite(rope_scaling.high_freq_factor) && rope_scaling.high_freq_factor > rope_scaling.low_freq_factor,
              source, ": field 'rope_scaling.high_freq_factor' must be > low_freq_factor (",
              rope_scaling.low_freq_factor, "), got ", rope_scaling.high_freq_factor);
        check(rope_scaling.original_max_position_embeddings >= 1, source,
              ": field 'rope_scaling.original_max_position_embeddings' must be >= 1, got ",
              rope_scaling.original_max_position_embeddings);
    }
    check(std::isfinite(rms_norm_eps) && rms_norm_eps > 0, source, ": field 'rms_norm_eps' must be > 0, got ",
          rms_norm_eps);
    check(std::isfinite(initializer_range) && initializer_range >= 0, source,
          ": field 'initializer_range' must be >= 0, got ", initializer_range);
}

}  // namespace reftrain

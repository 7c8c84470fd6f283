// model/config.cpp — see config.h. Reading a config is strict on purpose: every key is either a field
// we use, an HF key we know to be harmless (token ids, dtypes, versions), or an HF key checked to have
// the one value our math implements; anything else is refused, with the closest known key suggested.
#include "model/config.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "kernels/json_strict.h"
#include "kernels/safetensors.h"  // write_file_atomically

namespace reftrain {

namespace {

using json = nlohmann::json;

// Fields of ModelConfig, read and written under these names.
const char* const kStructFields[] = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "rms_norm_eps",
    "tie_word_embeddings", "initializer_range", "qk_norm", "zero_init_output_projections"};
// HF keys whose value is checked against what our math implements.
const char* const kCheckedHfKeys[] = {
    "model_type", "architectures", "attention_bias", "mlp_bias", "hidden_act", "rope_scaling",
    "use_sliding_window", "sliding_window", "attention_dropout", "pretraining_tp", "layer_types",
    "rope_parameters"};
// HF keys that do not affect the model's math: accepted whatever their value.
const char* const kIgnoredHfKeys[] = {
    "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype", "transformers_version",
    "use_cache", "max_window_layers", "_name_or_path"};

std::vector<std::string> known_keys() {
    std::vector<std::string> keys;
    for (const char* k : kStructFields) keys.push_back(k);
    for (const char* k : kCheckedHfKeys) keys.push_back(k);
    for (const char* k : kIgnoredHfKeys) keys.push_back(k);
    return keys;
}

std::string short_dump(const json& j) {
    std::string s = j.dump();
    return s.size() <= 60 ? s : s.substr(0, 57) + "...";
}

int64_t read_integer(const json& j, const char* field, const std::string& source) {
    check(j.is_number_integer(), source, ": field '", field, "' must be an integer, got ", j.type_name(), " ",
          short_dump(j));
    if (j.is_number_unsigned()) {
        check(j.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), source,
              ": field '", field, "' is too large: ", short_dump(j));
    }
    return j.get<int64_t>();
}

double read_number(const json& j, const char* field, const std::string& source) {
    check(j.is_number(), source, ": field '", field, "' must be a number, got ", j.type_name(), " ",
          short_dump(j));
    return j.get<double>();
}

bool read_bool(const json& j, const char* field, const std::string& source) {
    check(j.is_boolean(), source, ": field '", field, "' must be a boolean (true or false), got ",
          j.type_name(), " ", short_dump(j));
    return j.get<bool>();
}

std::string read_string(const json& j, const char* field, const std::string& source) {
    check(j.is_string(), source, ": field '", field, "' must be a string, got ", j.type_name(), " ",
          short_dump(j));
    return j.get<std::string>();
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Refuses HF keys whose value would change the math in a way this model does not implement.
void check_hf_keys(const json& j, const ModelConfig& c, const std::string& source) {
    if (j.contains("architectures")) {
        const json& a = j["architectures"];
        bool causal_lm = false;
        if (a.is_array()) {
            for (const json& name : a) {
                causal_lm |= name.is_string() && ends_with(name.get<std::string>(), "ForCausalLM");
            }
        }
        check(causal_lm, source, ": field 'architectures' must be an array naming a *ForCausalLM model, got ",
              short_dump(a));
    }
    for (const char* field : {"attention_bias", "mlp_bias"}) {
        if (j.contains(field)) {
            check(!read_bool(j[field], field, source), source, ": field '", field,
                  "' is true, but this model has no biases (Qwen3/Llama layout); set it to false");
        }
    }
    if (j.contains("hidden_act")) {
        std::string act = read_string(j["hidden_act"], "hidden_act", source);
        check(act == "silu", source, ": field 'hidden_act' is '", act,
              "', but only 'silu' (SwiGLU MLP) is implemented");
    }
    if (j.contains("rope_scaling")) {
        check(j["rope_scaling"].is_null(), source, ": field 'rope_scaling' is ",
              short_dump(j["rope_scaling"]),
              ", but RoPE scaling is not implemented (only plain RoPE with rope_theta); it must be null");
    }
    // transformers >= 5 writes {"rope_type": "default", "rope_theta": ...} instead of a top-level
    // rope_theta; any other rope_type (linear, dynamic, yarn, llama3, ...) rescales frequencies.
    if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
        const json& rope = j["rope_parameters"];
        check(rope.is_object(), source, ": field 'rope_parameters' must be an object, got ", short_dump(rope));
        if (rope.contains("rope_type")) {  // the most telling problem first
            check(rope["rope_type"] == "default", source, ": field 'rope_parameters.rope_type' is ",
                  short_dump(rope["rope_type"]), ", but only \"default\" RoPE is implemented (no scaling)");
        }
        for (const auto& [key, value] : rope.items()) {
            check(key == "rope_type" || key == "rope_theta", source, ": field 'rope_parameters' has key '", key,
                  "', but only rope_type \"default\" with rope_theta is implemented");
        }
    }
    bool sliding_window_disabled = false;
    if (j.contains("use_sliding_window")) {
        check(!read_bool(j["use_sliding_window"], "use_sliding_window", source), source,
              ": field 'use_sliding_window' is true, but sliding-window attention is not implemented");
        sliding_window_disabled = true;
    }
    // Qwen3 ships a sliding_window value with use_sliding_window false; Mistral-style configs use the
    // window whenever it is set, which only matters if it is shorter than the context.
    if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
        int64_t window = read_integer(j["sliding_window"], "sliding_window", source);
        check(sliding_window_disabled || window >= c.max_position_embeddings, source,
              ": field 'sliding_window' is ", window, " (shorter than max_position_embeddings ",
              c.max_position_embeddings,
              ") and use_sliding_window is not false, but sliding-window attention is not implemented; "
              "set sliding_window to null");
    }
    if (j.contains("attention_dropout")) {
        double p = read_number(j["attention_dropout"], "attention_dropout", source);
        check(p == 0.0, source, ": field 'attention_dropout' is ", p,
              ", but attention dropout is not implemented; it must be 0");
    }
    if (j.contains("pretraining_tp")) {
        int64_t tp = read_integer(j["pretraining_tp"], "pretraining_tp", source);
        check(tp == 1, source, ": field 'pretraining_tp' is ", tp,
              ", but only 1 (exact linear layers) is implemented");
    }
    if (j.contains("layer_types")) {
        const json& types = j["layer_types"];
        check(types.is_array(), source, ": field 'layer_types' must be an array, got ", types.type_name());
        for (const json& t : types) {
            check(t == "full_attention", source, ": field 'layer_types' has entry ", short_dump(t),
                  ", but only \"full_attention\" layers are implemented");
        }
    }
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
    check(j.is_object(), source, ": a model config must be a JSON object, got ", j.type_name());

    // A typo is reported before anything it might have caused.
    const std::vector<std::string> known = known_keys();
    for (const auto& [key, unused] : j.items()) {
        if (std::find(known.begin(), known.end(), key) != known.end()) continue;
        const std::string closest = closest_name(key, known);
        if (closest.empty()) fail("unknown key '", key, "' in ", source);
        fail("unknown key '", key, "' in ", source, " (did you mean '", closest, "'?)");
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
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object() && j["rope_parameters"].contains("rope_theta")) {
        const double nested = read_number(j["rope_parameters"]["rope_theta"], "rope_parameters.rope_theta", source);
        check(!j.contains("rope_theta") || nested == c.rope_theta, source, ": fields 'rope_theta' (", c.rope_theta,
              ") and 'rope_parameters.rope_theta' (", nested, ") disagree");
        c.rope_theta = nested;
    }
    number("rms_norm_eps", &c.rms_norm_eps);
    boolean("tie_word_embeddings", &c.tie_word_embeddings);
    number("initializer_range", &c.initializer_range);
    boolean("zero_init_output_projections", &c.zero_init_output_projections);

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
        } else {
            fail(source, ": field 'model_type' is '", type, "', supported: qwen3, llama, mistral");
        }
    }
    boolean("qk_norm", &c.qk_norm);

    check_hf_keys(j, c, source);
    c.validate(source);
    return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
    check(!std::filesystem::is_directory(path), path, ": cannot read model config: it is a directory");
    std::ifstream in(path);
    if (!in) fail(path, ": cannot open model config file: ", std::strerror(errno));
    std::stringstream text;
    text << in.rdbuf();

    // A repeated key is refused like any other typo (nlohmann alone would keep the last one).
    DuplicateKey duplicate;
    json j;
    try {
        j = parse_json_noting_duplicates(text.str(), &duplicate);
    } catch (const json::parse_error& e) {
        fail(path, ": invalid JSON in model config (", e.what(), ")");
    }
    check(duplicate.key.empty(), path, ": duplicate key '", duplicate.key, "' in model config");
    return from_json(j, path);
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
    // What HF needs to rebuild the same math.
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["rope_scaling"] = nullptr;
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
    check(num_attention_heads % num_key_value_heads == 0, source, ": field 'num_attention_heads' (",
          num_attention_heads, ") must be divisible by field 'num_key_value_heads' (", num_key_value_heads,
          ") for grouped-query attention");
    check(head_dim % 2 == 0, source,
          ": field 'head_dim' must be even (RoPE rotates pairs of dimensions), got ", head_dim);
    check(std::isfinite(rope_theta) && rope_theta > 0, source, ": field 'rope_theta' must be > 0, got ",
          rope_theta);
    check(std::isfinite(rms_norm_eps) && rms_norm_eps > 0, source, ": field 'rms_norm_eps' must be > 0, got ",
          rms_norm_eps);
    check(std::isfinite(initializer_range) && initializer_range >= 0, source,
          ": field 'initializer_range' must be >= 0, got ", initializer_range);
}

}  // namespace reftrain

// tests/test_config.cpp — model/config.h: HF Qwen3 and Llama config.json files load directly, the
// JSON round trip is lossless, and every refusal names the file and the field.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "model/config.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The config.json of Qwen/Qwen3-0.6B as published on the HF hub.
const char* const kQwen3_0_6B = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// A Llama-3.2-1B style config (without its rope_scaling block, which we refuse).
const char* const kLlama = R"({
  "_name_or_path": "meta-llama/Llama-3.2-1B",
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

class ConfigTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = testing::scratch_dir("config_" + testing::current_test_name());
    }

    std::string write(const std::string& name, const std::string& text) const {
        std::string p = (dir_ / name).string();
        std::ofstream(p) << text;
        return p;
    }

    // The Qwen3 config with one key changed (a null `value` removes the key).
    std::string write_qwen3_with(const std::string& name, const std::string& key, const json& value) const {
        json j = json::parse(kQwen3_0_6B);
        if (value.is_null()) {
            j.erase(key);
        } else {
            j[key] = value;
        }
        return write(name, j.dump(2));
    }

    // Loading `path` must fail with a message containing the file path and every phrase.
    void expect_load_error(const std::string& path, const std::vector<std::string>& phrases) const {
        try {
            ModelConfig::load(path);
        } catch (const Error& e) {
            std::string message = e.what();
            EXPECT_NE(message.find(path), std::string::npos) << "message lacks the file path:\n  " << message;
            for (const std::string& phrase : phrases) {
                EXPECT_NE(message.find(phrase), std::string::npos)
                    << "error message lacks \"" << phrase << "\":\n  " << message;
            }
            return;
        }
        ADD_FAILURE() << "loading " << path << " should have failed";
    }

    fs::path dir_;
};

TEST_F(ConfigTest, Qwen3_0_6B_ConfigLoads) {
    ModelConfig c = ModelConfig::load(write("config.json", kQwen3_0_6B));
    EXPECT_EQ(c.vocab_size, 151936);
    EXPECT_EQ(c.hidden_size, 1024);
    EXPECT_EQ(c.intermediate_size, 3072);
    EXPECT_EQ(c.num_hidden_layers, 28);
    EXPECT_EQ(c.num_attention_heads, 16);
    EXPECT_EQ(c.num_key_value_heads, 8);
    EXPECT_EQ(c.head_dim, 128);  // explicit, not hidden_size / heads = 64
    EXPECT_EQ(c.max_position_embeddings, 40960);
    EXPECT_EQ(c.rope_theta, 1000000.0);
    EXPECT_EQ(c.rms_norm_eps, 1e-6);
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_EQ(c.initializer_range, 0.02);
    EXPECT_TRUE(c.qk_norm);
    EXPECT_FALSE(c.zero_init_output_projections);
    EXPECT_EQ(c.q_dim(), 2048);
    EXPECT_EQ(c.kv_dim(), 1024);
}

TEST_F(ConfigTest, LlamaConfigLoadsWithoutQkNormAndDerivedHeadDim) {
    ModelConfig c = ModelConfig::load(write("config.json", kLlama));
    EXPECT_FALSE(c.qk_norm);
    EXPECT_EQ(c.head_dim, 64);  // absent: hidden_size / num_attention_heads
    EXPECT_EQ(c.num_key_value_heads, 8);
    EXPECT_EQ(c.rope_theta, 500000.0);
    EXPECT_EQ(c.rms_norm_eps, 1e-5);
    EXPECT_EQ(c.vocab_size, 128256);
}

TEST_F(ConfigTest, ExplicitQkNormOverridesModelType) {
    json j = json::parse(kLlama);
    j["qk_norm"] = true;
    EXPECT_TRUE(ModelConfig::from_json(j, "llama+qk_norm").qk_norm);
    j = json::parse(kQwen3_0_6B);
    j["qk_norm"] = false;
    EXPECT_FALSE(ModelConfig::from_json(j, "qwen3-qk_norm").qk_norm);
    j.erase("model_type");
    j.erase("qk_norm");
    EXPECT_TRUE(ModelConfig::from_json(j, "no model_type").qk_norm);  // the default
}

TEST_F(ConfigTest, KeyValueHeadsDefaultToAttentionHeads) {
    json j = json::parse(kLlama);
    j.erase("num_key_value_heads");
    EXPECT_EQ(ModelConfig::from_json(j, "mha").num_key_value_heads, 32);
}

TEST_F(ConfigTest, SlidingWindowAcceptedOnlyWhenDisabled) {
    json j = json::parse(kQwen3_0_6B);
    j["sliding_window"] = 4096;  // Qwen3 ships a window with use_sliding_window false
    EXPECT_NO_THROW(ModelConfig::from_json(j, "qwen3"));
    j.erase("use_sliding_window");  // Mistral style: a set window is used
    EXPECT_THROW(ModelConfig::from_json(j, "mistral"), Error);
    expect_load_error(write_qwen3_with("window.json", "use_sliding_window", true), {"'use_sliding_window'"});
}

TEST_F(ConfigTest, JsonRoundTripIsLossless) {
    ModelConfig c;
    c.vocab_size = 1000;
    c.hidden_size = 96;
    c.intermediate_size = 200;
    c.num_hidden_layers = 3;
    c.num_attention_heads = 6;
    c.num_key_value_heads = 3;
    c.head_dim = 24;
    c.max_position_embeddings = 77;
    c.rope_theta = 12345.678;
    c.rms_norm_eps = 1.2345e-7;
    c.tie_word_embeddings = true;
    c.initializer_range = 0.0123;
    c.zero_init_output_projections = true;
    for (bool qk_norm : {true, false}) {
        c.qk_norm = qk_norm;
        json j = c.to_json();
        EXPECT_EQ(j["architectures"][0], qk_norm ? "Qwen3ForCausalLM" : "LlamaForCausalLM");
        EXPECT_EQ(j["model_type"], qk_norm ? "qwen3" : "llama");
        EXPECT_EQ(j["hidden_act"], "silu");
        EXPECT_EQ(j["attention_bias"], false);
        EXPECT_TRUE(j["rope_scaling"].is_null());
        ModelConfig back = ModelConfig::from_json(j, "round trip");
        EXPECT_EQ(back.to_json(), j);
        EXPECT_EQ(back.rope_theta, c.rope_theta);
        EXPECT_EQ(back.rms_norm_eps, c.rms_norm_eps);
        EXPECT_EQ(back.qk_norm, qk_norm);
        EXPECT_EQ(back.zero_init_output_projections, true);

        const std::string p = (dir_ / "saved.json").string();
        c.save(p);
        for (const auto& e : fs::directory_iterator(fs::path(p).parent_path()))
            EXPECT_EQ(e.path().string().find(p + ".tmp"), std::string::npos) << "temp file left behind: " << e.path();
        EXPECT_EQ(ModelConfig::load(p).to_json(), j);
    }
    ModelConfig qwen = ModelConfig::load(write("qwen3.json", kQwen3_0_6B));
    EXPECT_EQ(ModelConfig::from_json(qwen.to_json(), "qwen3 round trip").to_json(), qwen.to_json());
}

// --- Refusals: each names the file and the field. ---

TEST_F(ConfigTest, UnknownKeyWithSuggestion) {
    expect_load_error(write_qwen3_with("typo.json", "hiden_size", 1024),
                      {"unknown key 'hiden_size'", "did you mean 'hidden_size'?"});
    // Nothing close: no suggestion.
    const std::string p = write_qwen3_with("unknown.json", "flash_attention_everywhere", true);
    expect_load_error(p, {"unknown key 'flash_attention_everywhere'"});
    try {
        ModelConfig::load(p);
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).find("did you mean"), std::string::npos) << e.what();
    }
}

TEST_F(ConfigTest, WrongTypes) {
    expect_load_error(write_qwen3_with("string.json", "hidden_size", "1024"),
                      {"field 'hidden_size' must be an integer", "got string \"1024\""});
    expect_load_error(write_qwen3_with("float.json", "num_hidden_layers", 28.5),
                      {"field 'num_hidden_layers' must be an integer", "28.5"});
    expect_load_error(write_qwen3_with("bool.json", "tie_word_embeddings", 1),
                      {"field 'tie_word_embeddings' must be a boolean"});
    expect_load_error(write_qwen3_with("number.json", "rope_theta", "1e6"),
                      {"field 'rope_theta' must be a number"});
}

TEST_F(ConfigTest, AttentionBiasRefused) {
    expect_load_error(write_qwen3_with("bias.json", "attention_bias", true),
                      {"'attention_bias'", "no biases"});
    expect_load_error(write_qwen3_with("mlp_bias.json", "mlp_bias", true), {"'mlp_bias'"});
}

TEST_F(ConfigTest, RopeScalingRefused) {
    json scaling = {{"rope_type", "llama3"}, {"factor", 32.0}};
    expect_load_error(write_qwen3_with("rope.json", "rope_scaling", scaling),
                      {"'rope_scaling'", "not implemented"});
}

TEST_F(ConfigTest, RopeParametersOfTransformers5) {
    // transformers >= 5 writes rope_theta inside rope_parameters.
    json j = json::parse(kQwen3_0_6B);
    j.erase("rope_theta");
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 12345.0}};
    ModelConfig c = ModelConfig::load(write("rope_parameters.json", j.dump(2)));
    EXPECT_EQ(c.rope_theta, 12345.0);
    expect_load_error(write_qwen3_with("rope_yarn.json", "rope_parameters",
                                       json{{"rope_type", "yarn"}, {"rope_theta", 1e6}, {"factor", 4.0}}),
                      {"'rope_parameters.rope_type'", "\"yarn\"", "only \"default\""});
    expect_load_error(write_qwen3_with("rope_disagree.json", "rope_parameters",
                                       json{{"rope_type", "default"}, {"rope_theta", 5.0}}),
                      {"'rope_theta'", "'rope_parameters.rope_theta'", "disagree"});
}

TEST_F(ConfigTest, HiddenActOtherThanSiluRefused) {
    expect_load_error(write_qwen3_with("gelu.json", "hidden_act", "gelu"),
                      {"'hidden_act'", "'gelu'", "silu"});
}

TEST_F(ConfigTest, OtherMathChangingHfKeysRefused) {
    expect_load_error(write_qwen3_with("type.json", "model_type", "qwen2"),
                      {"'model_type'", "'qwen2'", "supported: qwen3, llama, mistral"});
    expect_load_error(write_qwen3_with("arch.json", "architectures", json::array({"Qwen3Model"})),
                      {"'architectures'", "ForCausalLM"});
    expect_load_error(write_qwen3_with("dropout.json", "attention_dropout", 0.1), {"'attention_dropout'"});
    expect_load_error(write_qwen3_with("tp.json", "pretraining_tp", 2), {"'pretraining_tp'"});
    expect_load_error(
        write_qwen3_with("layers.json", "layer_types", json::array({"full_attention", "sliding_attention"})),
        {"'layer_types'", "sliding_attention"});
}

TEST_F(ConfigTest, HeadsNotDivisibleByKeyValueHeads) {
    expect_load_error(write_qwen3_with("gqa.json", "num_key_value_heads", 6),
                      {"'num_attention_heads' (16)", "'num_key_value_heads' (6)", "divisible"});
}

TEST_F(ConfigTest, OddHeadDim) {
    expect_load_error(write_qwen3_with("odd.json", "head_dim", 127), {"'head_dim'", "even", "127"});
    // Derived head_dim needs hidden_size divisible by the heads.
    json j = json::parse(kLlama);
    j["hidden_size"] = 2050;
    expect_load_error(write("indivisible.json", j.dump()), {"'head_dim'", "2050", "not divisible"});
}

TEST_F(ConfigTest, SizesMustBePositive) {
    expect_load_error(write_qwen3_with("zero.json", "num_hidden_layers", 0),
                      {"'num_hidden_layers'", ">= 1, got 0"});
    expect_load_error(write_qwen3_with("eps.json", "rms_norm_eps", 0.0), {"'rms_norm_eps'", "> 0"});
    expect_load_error(write_qwen3_with("theta.json", "rope_theta", -1.0), {"'rope_theta'", "> 0"});
}

TEST_F(ConfigTest, MissingFile) {
    expect_load_error((dir_ / "nope" / "config.json").string(), {"cannot open model config file"});
}

TEST_F(ConfigTest, InvalidJson) {
    expect_load_error(write("broken.json", "{\"hidden_size\": 1024,\n \"vocab_size\": }"),
                      {"invalid JSON", "line 2"});
    expect_load_error(write("dup.json", R"({"hidden_size": 1024, "hidden_size": 2048})"),
                      {"duplicate key 'hidden_size'"});
    expect_load_error(write("array.json", "[]"), {"must be a JSON object"});
}

}  // namespace
}  // namespace reftrain

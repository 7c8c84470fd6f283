// tests/test_config.cpp — model/config.h: HF Qwen3 and Llama config.json files load directly, the
// JSON round trip is lossless, and every refusal names the file and the field. The key rule: a key
// that changes the math must hold the value we implement (refused otherwise, naming key, value and
// what is supported), a near-miss of one of our keys is a typo (refused, "did you mean"), and every
// other key is accepted, the unknown ones named once in one warning line. A corpus of real
// config.json files (tests/data/hf_configs/) pins the outcome per file.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
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

// A Llama-3.2-1B style config without its rope_scaling block (the corpus has the real one).
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
    expect_load_error(write_qwen3_with("typo2.json", "num_attention_head", 16),
                      {"unknown key 'num_attention_head'", "did you mean 'num_attention_heads'?"});
    expect_load_error(write_qwen3_with("typo3.json", "rope_thta", 1e6),
                      {"unknown key 'rope_thta'", "did you mean 'rope_theta'?"});
    // Typos of math-changing HF keys too, and inside a RoPE object.
    expect_load_error(write_qwen3_with("typo4.json", "attention_bais", false),
                      {"unknown key 'attention_bais'", "did you mean 'attention_bias'?"});
    expect_load_error(write_qwen3_with("typo5.json", "tie_word_embedding", true),
                      {"did you mean 'tie_word_embeddings'?"});
    expect_load_error(write_qwen3_with("typo6.json", "rope_scaling",
                                       json{{"rope_type", "linear"}, {"factor", 2.0}, {"factr", 4.0}}),
                      {"unknown key 'rope_scaling.factr'", "did you mean 'rope_scaling.factor'?"});
}

// A key far from every key we know is accepted, and named once in one warning line on stderr.
TEST_F(ConfigTest, UnknownFarKeysAreAcceptedAndWarnedOnceInOneLine) {
    json j = json::parse(kQwen3_0_6B);
    j["flash_attention_everywhere"] = true;
    j["unsloth_fixed"] = true;
    j["my_training_notes"] = json{{"lr", 3e-4}};
    const std::string p = write("warned.json", j.dump(2));
    std::vector<std::string> ignored;
    ::testing::internal::CaptureStderr();
    const ModelConfig c = ModelConfig::load(p, &ignored);
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(c.to_json(), ModelConfig::from_json(json::parse(kQwen3_0_6B), "plain").to_json());
    EXPECT_EQ(std::set<std::string>(ignored.begin(), ignored.end()),
              (std::set<std::string>{"flash_attention_everywhere", "my_training_notes", "unsloth_fixed"}));
    EXPECT_EQ(ignored.size(), 3u);
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line, not one per key:\n" << err;
    EXPECT_NE(err.find(p + ": ignoring 3 keys that do not change the math: "), std::string::npos) << err;
    for (const std::string& key : ignored) {
        const size_t first = err.find(key);
        EXPECT_NE(first, std::string::npos) << key << " missing from: " << err;
        EXPECT_EQ(err.find(key, first + 1), std::string::npos) << key << " listed twice: " << err;
    }
    EXPECT_EQ(err.find("torch_dtype"), std::string::npos) << "a known harmless key was warned about: " << err;
}

// PretrainedConfig's attributes, generation settings, attention-kernel choices and math keys holding
// our value are known: accepted without a word.
TEST_F(ConfigTest, HarmlessHfKeysAreAcceptedSilently) {
    json j = json::parse(kQwen3_0_6B);
    const json harmless = {
        {"attn_implementation", "eager"}, {"output_attentions", false}, {"output_hidden_states", false},
        {"return_dict", true}, {"id2label", {{"0", "LABEL_0"}}}, {"label2id", {{"LABEL_0", 0}}},
        {"tokenizer_class", "Qwen2Tokenizer"}, {"chunk_size_feed_forward", 0}, {"max_length", 20},
        {"do_sample", true}, {"temperature", 0.6}, {"top_p", 0.95}, {"top_k", 20}, {"num_beams", 1},
        {"repetition_penalty", 1.0}, {"dtype", "bfloat16"}, {"_attn_implementation_autoset", true},
        {"is_decoder", false}, {"pad_token_id", nullptr}, {"problem_type", nullptr},
        {"quantization_config", nullptr}, {"num_experts", 0}, {"partial_rotary_factor", 1.0},
        {"final_logit_softcapping", nullptr}, {"pretraining_tp", 1}, {"mlp_bias", false},
        {"query_pre_attn_scalar", 128}, {"pruned_heads", json::object()}, {"hidden_dropout", 0.0}};
    for (const auto& [key, value] : harmless.items()) j[key] = value;
    std::vector<std::string> ignored;
    ::testing::internal::CaptureStderr();
    const ModelConfig c = ModelConfig::from_json(j, "harmless.json", &ignored);
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_TRUE(ignored.empty());
    EXPECT_EQ(err, "");
    EXPECT_EQ(c.to_json(), ModelConfig::from_json(json::parse(kQwen3_0_6B), "plain").to_json());
}

// Every config key of transformers 5.24 (all architectures) is either one we know or no typo of one.
TEST_F(ConfigTest, RealHfKeysAreNeverTakenForTypos) {
    std::ifstream in(std::string(REFTRAIN_SOURCE_DIR) + "/tests/data/hf_configs/transformers_5_24_config_keys.txt");
    ASSERT_TRUE(in) << "tests/data/hf_configs/transformers_5_24_config_keys.txt is missing";
    std::string key;
    size_t keys = 0;
    while (std::getline(in, key)) {
        if (key.empty() || key[0] == '#') continue;
        ++keys;
        EXPECT_EQ(ModelConfig::typo_of(key), "") << "the real HF key '" << key << "' would be refused as a typo";
    }
    EXPECT_GT(keys, 2000u);
    // The same bound still catches typos.
    EXPECT_EQ(ModelConfig::typo_of("hiden_size"), "hidden_size");
    EXPECT_EQ(ModelConfig::typo_of("num_attention_head"), "num_attention_heads");
    EXPECT_EQ(ModelConfig::typo_of("rope_thta"), "rope_theta");
    EXPECT_EQ(ModelConfig::typo_of("rms_norm_esp"), "rms_norm_eps");
    EXPECT_EQ(ModelConfig::typo_of("head_dims"), "head_dim");
    EXPECT_EQ(ModelConfig::typo_of("mlp_bais"), "mlp_bias");
    EXPECT_EQ(ModelConfig::typo_of("hidden_size"), "");  // a known key is no typo
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
                      {"field 'attention_bias' is true", "no biases"});
    expect_load_error(write_qwen3_with("mlp_bias.json", "mlp_bias", true), {"'mlp_bias'", "false"});
}

// Each math-changing key with a value other than ours: the message names the key, the value and what
// is supported.
TEST_F(ConfigTest, MathChangingKeysRefusedWithKeyValueAndWhatIsSupported) {
    struct Case {
        const char* key;
        json value;
        std::vector<std::string> phrases;
    };
    const std::vector<Case> cases = {
        {"partial_rotary_factor", 0.5, {"is 0.5", "1 (RoPE over the whole head)"}},
        {"final_logit_softcapping", 30.0, {"is 30.0", "null (no soft-capping of the logits)"}},
        {"attn_logit_softcapping", 50.0, {"is 50.0", "null (no soft-capping of the attention logits)"}},
        {"quantization_config", json{{"quant_method", "bitsandbytes"}}, {"bitsandbytes", "unquantized"}},
        {"num_experts", 128, {"is 128", "no mixture of experts"}},
        {"num_local_experts", 8, {"is 8", "no mixture of experts"}},
        {"num_experts_per_tok", 2, {"is 2", "no mixture of experts"}},
        {"n_routed_experts", 64, {"is 64", "no mixture of experts"}},
        {"query_pre_attn_scalar", 256, {"is 256", "null or head_dim"}},
        {"hidden_act", "gelu", {"is \"gelu\"", "\"silu\""}},
        {"hidden_activation", "gelu_pytorch_tanh", {"is \"gelu_pytorch_tanh\"", "\"silu\""}},
        {"attention_bias", true, {"is true", "no biases"}},
        {"qkv_bias", true, {"is true", "no biases"}},
        {"attention_dropout", 0.1, {"is 0.1", "no dropout"}},
        {"pretraining_tp", 2, {"is 2", "1 (exact linear layers)"}},
        {"clip_qkv", 8, {"is 8", "not clipped"}},
        {"residual_multiplier", 0.22, {"is 0.22", "plain residual sums"}},
        {"embedding_multiplier", 12.0, {"is 12.0", "embeddings used as they are"}},
        {"logits_scaling", 8.0, {"is 8.0", "lm_head output"}},
        {"no_rope_layers", json::array({1, 1, 0}), {"is [1,1,0]", "RoPE in every layer"}},
        {"use_parallel_residual", true, {"is true", "attention, then the MLP"}},
        {"attention_chunk_size", 8192, {"is 8192", "full causal attention"}},
        {"pruned_heads", json{{"0", {1}}}, {"no pruned heads"}},
        {"use_sliding_window", true, {"is true", "sliding-window attention is not implemented"}},
        {"sliding_window", 4096, {"is 4096", "sliding-window attention is not implemented"}},
        {"layer_types", json::array({"full_attention", "sliding_attention"}),
         {"\"sliding_attention\"", "only \"full_attention\""}},
    };
    for (const Case& c : cases) {
        std::vector<std::string> phrases = {std::string("field '") + c.key + "'"};
        phrases.insert(phrases.end(), c.phrases.begin(), c.phrases.end());
        json j = json::parse(kQwen3_0_6B);
        j[c.key] = c.value;
        if (std::string(c.key) == "sliding_window") j.erase("use_sliding_window");  // Mistral style: in use
        expect_load_error(write(std::string(c.key) + ".json", j.dump(2)), phrases);
    }
    // The value we implement passes for each of them (null, false, 0, 1, head_dim).
    json j = json::parse(kQwen3_0_6B);
    for (const char* key : {"final_logit_softcapping", "attn_logit_softcapping", "quantization_config", "clip_qkv",
                            "attention_chunk_size", "no_rope_layers"}) {
        j[key] = nullptr;
    }
    for (const char* key : {"num_experts", "num_local_experts", "num_experts_per_tok", "attention_dropout"}) j[key] = 0;
    for (const char* key : {"attention_bias", "qkv_bias", "use_parallel_residual", "use_sliding_window"}) j[key] = false;
    for (const char* key : {"partial_rotary_factor", "residual_multiplier", "embedding_multiplier", "pretraining_tp"}) {
        j[key] = 1;
    }
    j["query_pre_attn_scalar"] = 128;
    j["hidden_activation"] = "silu";
    j["no_rope_layers"] = json::array({1, 1, 1});
    EXPECT_NO_THROW(ModelConfig::from_json(j, "accepted values"));
}

TEST_F(ConfigTest, ArchitecturesWithBiasesOrExpertsRefused) {
    expect_load_error(write_qwen3_with("qwen2.json", "model_type", "qwen2"),
                      {"field 'model_type' is 'qwen2'", "q_proj, k_proj and v_proj", "no biases",
                       "supported: qwen3, llama, mistral"});
    expect_load_error(write_qwen3_with("qwen2_arch.json", "architectures", json::array({"Qwen2ForCausalLM"})),
                      {"'architectures'", "Qwen2ForCausalLM", "biases"});
    expect_load_error(write_qwen3_with("moe.json", "model_type", "qwen3_moe"),
                      {"'model_type'", "'qwen3_moe'", "supported: qwen3, llama, mistral"});
    expect_load_error(write_qwen3_with("gemma.json", "architectures", json::array({"Gemma2ForCausalLM"})),
                      {"'architectures'", "'Gemma2ForCausalLM'", "supported: Qwen3ForCausalLM"});
}

// ---- RoPE scaling ------------------------------------------------------------------------------------

json llama3_scaling() {
    return {{"factor", 32.0}, {"high_freq_factor", 4.0}, {"low_freq_factor", 1.0},
            {"original_max_position_embeddings", 8192}, {"rope_type", "llama3"}};
}

void expect_llama3(const RopeScaling& s, double factor, int64_t original) {
    EXPECT_EQ(s.type, RopeScaling::Type::llama3);
    EXPECT_EQ(s.factor, factor);
    EXPECT_EQ(s.low_freq_factor, 1.0);
    EXPECT_EQ(s.high_freq_factor, 4.0);
    EXPECT_EQ(s.original_max_position_embeddings, original);
}

TEST_F(ConfigTest, Llama3RopeScalingFromTransformers4And5) {
    // transformers 4: top-level rope_theta and a rope_scaling object.
    json j = json::parse(kLlama);
    j["rope_scaling"] = llama3_scaling();
    ModelConfig c = ModelConfig::from_json(j, "v4");
    expect_llama3(c.rope_scaling, 32.0, 8192);
    EXPECT_EQ(c.rope_theta, 500000.0);
    // Before 4.45 the type was under "type".
    j["rope_scaling"].erase("rope_type");
    j["rope_scaling"]["type"] = "llama3";
    expect_llama3(ModelConfig::from_json(j, "type").rope_scaling, 32.0, 8192);
    // transformers 5: everything inside rope_parameters, no top-level rope_theta.
    json v5 = json::parse(kLlama);
    v5.erase("rope_theta");
    v5.erase("rope_scaling");
    v5["rope_parameters"] = llama3_scaling();
    v5["rope_parameters"]["rope_theta"] = 500000.0;
    c = ModelConfig::from_json(v5, "v5");
    expect_llama3(c.rope_scaling, 32.0, 8192);
    EXPECT_EQ(c.rope_theta, 500000.0);
    // transformers 5 lets original_max_position_embeddings default to max_position_embeddings, and a
    // top-level one (Phi-3 style) fills it in.
    v5["rope_parameters"].erase("original_max_position_embeddings");
    expect_llama3(ModelConfig::from_json(v5, "v5 default").rope_scaling, 32.0, 131072);
    v5["original_max_position_embeddings"] = 4096;
    expect_llama3(ModelConfig::from_json(v5, "v5 top-level").rope_scaling, 32.0, 4096);
    // Both objects, agreeing: fine; disagreeing: refused.
    j = json::parse(kLlama);
    j["rope_scaling"] = llama3_scaling();
    j["rope_parameters"] = llama3_scaling();
    j["rope_parameters"]["rope_theta"] = 500000.0;
    expect_llama3(ModelConfig::from_json(j, "both").rope_scaling, 32.0, 8192);
    j["rope_parameters"]["factor"] = 8.0;
    expect_load_error(write("disagree.json", j.dump()), {"'rope_scaling'", "'rope_parameters'", "disagree"});
    j["rope_parameters"]["factor"] = 32.0;
    j["original_max_position_embeddings"] = 4096;
    expect_load_error(write("disagree2.json", j.dump()), {"'original_max_position_embeddings' (4096)", "disagree"});
}

TEST_F(ConfigTest, LinearRopeScalingFromTransformers4And5) {
    json j = json::parse(kLlama);
    j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
    ModelConfig c = ModelConfig::from_json(j, "v4 linear");
    EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::linear);
    EXPECT_EQ(c.rope_scaling.factor, 4.0);
    j.erase("rope_scaling");
    j.erase("rope_theta");
    j["rope_parameters"] = {{"rope_type", "linear"}, {"type", "linear"}, {"factor", 2.0}, {"rope_theta", 10000.0}};
    c = ModelConfig::from_json(j, "v5 linear");
    EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::linear);
    EXPECT_EQ(c.rope_scaling.factor, 2.0);
    EXPECT_EQ(c.rope_theta, 10000.0);
    // rope_type "default" in either object is no scaling.
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
    EXPECT_EQ(ModelConfig::from_json(j, "default").rope_scaling, RopeScaling{});
    j["rope_scaling"] = {{"rope_type", "default"}};
    EXPECT_EQ(ModelConfig::from_json(j, "default v4").rope_scaling, RopeScaling{});
}

TEST_F(ConfigTest, UnimplementedRopeTypesRefusedByName) {
    for (const char* type : {"yarn", "dynamic", "longrope", "ntk", "proportional", "su"}) {
        const json scaling = {{"rope_type", type}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}};
        expect_load_error(write_qwen3_with(std::string(type) + ".json", "rope_scaling", scaling),
                          {"field 'rope_scaling'", std::string("rope_type \"") + type + "\"", "not implemented",
                           "supported: \"default\" (no scaling), \"linear\", \"llama3\""});
        expect_load_error(write_qwen3_with(std::string(type) + "_v5.json", "rope_parameters", scaling),
                          {"field 'rope_parameters'", std::string("rope_type \"") + type + "\"", "not implemented"});
    }
}

TEST_F(ConfigTest, BadRopeScalingObjectsRefused) {
    json missing = llama3_scaling();
    missing.erase("low_freq_factor");
    expect_load_error(write_qwen3_with("missing.json", "rope_scaling", missing),
                      {"'rope_scaling'", "\"llama3\"", "lacks 'low_freq_factor'"});
    expect_load_error(write_qwen3_with("linear_no_factor.json", "rope_scaling", json{{"rope_type", "linear"}}),
                      {"lacks 'factor'"});
    json inverted = llama3_scaling();
    inverted["high_freq_factor"] = 1.0;
    expect_load_error(write_qwen3_with("inverted.json", "rope_scaling", inverted),
                      {"'rope_scaling.high_freq_factor'", "> low_freq_factor"});
    expect_load_error(write_qwen3_with("zero.json", "rope_scaling", json{{"rope_type", "linear"}, {"factor", 0}}),
                      {"'rope_scaling.factor'", "> 0"});
    expect_load_error(write_qwen3_with("types.json", "rope_scaling",
                                       json{{"rope_type", "linear"}, {"type", "llama3"}, {"factor", 2.0}}),
                      {"'rope_scaling.rope_type'", "'rope_scaling.type'", "disagree"});
    expect_load_error(write_qwen3_with("partial.json", "rope_parameters",
                                       json{{"rope_type", "default"}, {"partial_rotary_factor", 0.25}}),
                      {"'rope_parameters.partial_rotary_factor'", "0.25", "only 1"});
    expect_load_error(write_qwen3_with("per_layer.json", "rope_parameters",
                                       json{{"full_attention", {{"rope_type", "default"}}},
                                            {"sliding_attention", {{"rope_type", "default"}}}}),
                      {"'rope_parameters'", "'sliding_attention'", "only \"full_attention\""});
    expect_load_error(write_qwen3_with("string.json", "rope_scaling", "llama3"),
                      {"'rope_scaling' must be an object or null"});
    // A key the type does not use is ignored, as HF ignores it, and named in the warning.
    json j = json::parse(kLlama);
    j["rope_scaling"] = llama3_scaling();
    j["rope_scaling"]["attention_factor"] = 1.0;
    std::vector<std::string> ignored;
    ::testing::internal::CaptureStderr();
    ModelConfig::from_json(j, "extra", &ignored);
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(ignored, std::vector<std::string>{"rope_scaling.attention_factor"});
    EXPECT_NE(err.find("ignoring 1 key that does not change the math: rope_scaling.attention_factor"),
              std::string::npos) << err;
}

TEST_F(ConfigTest, RopeScalingRoundTripsThroughToJson) {
    ModelConfig c;
    c.qk_norm = false;
    c.rope_theta = 500000.0;
    c.max_position_embeddings = 1024;
    c.rope_scaling.type = RopeScaling::Type::llama3;
    c.rope_scaling.factor = 32.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 64;
    json j = c.to_json();
    // What transformers 4 and 5 read: the rope_scaling object with rope_type, next to rope_theta.
    EXPECT_EQ(j["rope_scaling"], (json{{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
                                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}}));
    EXPECT_EQ(j["rope_theta"], 500000.0);
    const std::string p = (dir_ / "scaled.json").string();
    c.save(p);
    ModelConfig back = ModelConfig::load(p);
    EXPECT_EQ(back.rope_scaling, c.rope_scaling);
    EXPECT_EQ(back.to_json(), j);

    c.rope_scaling = RopeScaling{};
    c.rope_scaling.type = RopeScaling::Type::linear;
    c.rope_scaling.factor = 2.5;
    j = c.to_json();
    EXPECT_EQ(j["rope_scaling"], (json{{"rope_type", "linear"}, {"factor", 2.5}}));
    back = ModelConfig::from_json(j, "linear round trip");
    EXPECT_EQ(back.rope_scaling, c.rope_scaling);
    EXPECT_EQ(back.to_json(), j);
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
                      {"'rope_parameters'", "rope_type \"yarn\"", "not implemented"});
    expect_load_error(write_qwen3_with("rope_disagree.json", "rope_parameters",
                                       json{{"rope_type", "default"}, {"rope_theta", 5.0}}),
                      {"'rope_theta'", "'rope_parameters.rope_theta'", "disagree"});
}

TEST_F(ConfigTest, HiddenActOtherThanSiluRefused) {
    expect_load_error(write_qwen3_with("gelu.json", "hidden_act", "gelu"),
                      {"'hidden_act'", "\"gelu\"", "silu"});
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
    expect_load_error((dir_ / "nope" / "config.json").string(), {"cannot open the model config"});
}

TEST_F(ConfigTest, InvalidJson) {
    expect_load_error(write("broken.json", "{\"hidden_size\": 1024,\n \"vocab_size\": }"),
                      {"model config is not valid JSON", "line 2"});
    expect_load_error(write("dup.json", R"({"hidden_size": 1024, "hidden_size": 2048})"),
                      {"key 'hidden_size' appears twice in the model config"});
    expect_load_error(write("array.json", "[]"), {"must be a JSON object"});
}

// ---- the corpus of real config.json files -------------------------------------------------------------

// One row per file of tests/data/hf_configs/ (README.md there says where each comes from). A file
// without a row, or a row without a file, fails: a change of outcome is never silent.
struct CorpusRow {
    const char* file;
    bool loads;
    // loads: the keys named in the warning line; refused: phrases the message must hold
    std::vector<std::string> detail;
    RopeScaling::Type rope = RopeScaling::Type::none;
    double rope_factor = 1.0;
    bool tied = false;
};

const std::vector<CorpusRow>& corpus_table() {
    using T = RopeScaling::Type;
    static const std::vector<CorpusRow> rows = {
        {"llama_3_1_8b.json", true, {}, T::llama3, 8.0, false},
        {"llama_3_2_1b.json", true, {}, T::llama3, 32.0, true},
        {"llama_3_2_3b.json", true, {}, T::llama3, 32.0, true},
        {"mistral_7b_v0_1.json", false, {"field 'sliding_window' is 4096", "sliding-window attention is not implemented"}},
        {"mistral_7b_v0_3.json", true, {}},
        {"qwen2_5_0_5b.json", false, {"field 'model_type' is 'qwen2'", "q_proj, k_proj and v_proj", "no biases"}},
        {"qwen2_5_1_5b.json", false, {"field 'model_type' is 'qwen2'", "q_proj, k_proj and v_proj", "no biases"}},
        {"qwen3_0_6b.json", true, {}, T::none, 1.0, true},
        {"qwen3_0_6b_finetune_extras.json", true, {"unsloth_version"}, T::none, 1.0, true},
        {"qwen3_1_7b.json", true, {}, T::none, 1.0, true},
        {"qwen3_30b_a3b.json", false, {"field 'model_type' is 'qwen3_moe'", "supported: qwen3, llama, mistral"}},
        {"qwen3_4b.json", true, {}, T::none, 1.0, true},
        {"qwen3_8b.json", true, {}},
        {"qwen3_8b_yarn.json", false, {"field 'rope_scaling'", "rope_type \"yarn\"", "not implemented"}},
        {"smollm2_135m.json", true, {"is_llama_config", "rope_interleaved"}, T::none, 1.0, true},
        {"smollm2_360m.json", true, {"is_llama_config", "rope_interleaved"}, T::none, 1.0, true},
        {"tinyllama_1_1b.json", true, {}},
        {"transformers_4_48_full_dump_llama.json", true, {}},
        {"transformers_4_51_llama3_scaling.json", true, {}, T::llama3, 32.0, false},
        {"transformers_5_24_0_linear_scaling.json", true, {}, T::linear, 4.0, false},
        {"transformers_5_24_0_llama3_scaling.json", true, {}, T::llama3, 32.0, true},
        {"transformers_5_24_0_qwen3_eager.json", true, {}, T::none, 1.0, true},
        {"vicuna_7b_v1_5_16k.json", true, {"max_sequence_length"}, T::linear, 4.0, false},
    };
    return rows;
}

TEST_F(ConfigTest, RealHfConfigCorpusLoadsOrIsRefusedAsTheTableSays) {
    const fs::path folder = fs::path(REFTRAIN_SOURCE_DIR) / "tests" / "data" / "hf_configs";
    std::map<std::string, const CorpusRow*> table;
    for (const CorpusRow& row : corpus_table()) table[row.file] = &row;
    std::set<std::string> seen;
    for (const auto& entry : fs::directory_iterator(folder)) {
        if (entry.path().extension() != ".json") continue;
        const std::string name = entry.path().filename().string();
        seen.insert(name);
        const auto found = table.find(name);
        if (found == table.end()) {
            ADD_FAILURE() << "tests/data/hf_configs/" << name << " has no row in corpus_table()";
            continue;
        }
        const CorpusRow& row = *found->second;
        const std::string path = entry.path().string();
        if (!row.loads) {
            expect_load_error(path, row.detail);
            continue;
        }
        std::vector<std::string> ignored;
        ::testing::internal::CaptureStderr();
        ModelConfig c;
        try {
            c = ModelConfig::load(path, &ignored);
        } catch (const Error& e) {
            ::testing::internal::GetCapturedStderr();
            ADD_FAILURE() << name << " should load, got: " << e.what();
            continue;
        }
        const std::string err = ::testing::internal::GetCapturedStderr();
        EXPECT_EQ(std::set<std::string>(ignored.begin(), ignored.end()),
                  std::set<std::string>(row.detail.begin(), row.detail.end())) << name;
        EXPECT_EQ(err.empty(), row.detail.empty()) << name << ": " << err;
        EXPECT_EQ(c.rope_scaling.type, row.rope) << name;
        EXPECT_EQ(c.rope_scaling.factor, row.rope_factor) << name;
        EXPECT_EQ(c.tie_word_embeddings, row.tied) << name;
        // What we write back loads again, to the same config.
        EXPECT_EQ(ModelConfig::from_json(c.to_json(), name + " round trip").to_json(), c.to_json()) << name;
    }
    for (const CorpusRow& row : corpus_table()) {
        EXPECT_TRUE(seen.count(row.file)) << "corpus_table() names " << row.file << ", which is not in " << folder;
    }
    EXPECT_GE(seen.size(), 20u);
}

// The published shapes survive loading (a spot check per family).
TEST_F(ConfigTest, CorpusShapes) {
    const fs::path folder = fs::path(REFTRAIN_SOURCE_DIR) / "tests" / "data" / "hf_configs";
    const ModelConfig llama = ModelConfig::load((folder / "llama_3_2_1b.json").string());
    EXPECT_FALSE(llama.qk_norm);
    EXPECT_EQ(llama.head_dim, 64);
    EXPECT_EQ(llama.num_key_value_heads, 8);
    EXPECT_EQ(llama.rope_theta, 500000.0);
    EXPECT_EQ(llama.rope_scaling.original_max_position_embeddings, 8192);
    EXPECT_EQ(llama.rope_scaling.low_freq_factor, 1.0);
    EXPECT_EQ(llama.rope_scaling.high_freq_factor, 4.0);
    const ModelConfig qwen = ModelConfig::load((folder / "qwen3_8b.json").string());
    EXPECT_TRUE(qwen.qk_norm);
    EXPECT_EQ(qwen.head_dim, 128);
    EXPECT_EQ(qwen.hidden_size, 4096);
    const ModelConfig smol = ModelConfig::load((folder / "smollm2_135m.json").string());
    EXPECT_EQ(smol.head_dim, 64);  // derived: 576 / 9
    EXPECT_EQ(smol.num_key_value_heads, 3);
    const ModelConfig v5 = ModelConfig::load((folder / "transformers_5_24_0_qwen3_eager.json").string());
    EXPECT_EQ(v5.rope_theta, 1000000.0);  // from rope_parameters
}

}  // namespace
}  // namespace reftrain

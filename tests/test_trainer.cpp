// tests/test_trainer.cpp — the training loop: run configs, accumulation, schedule units, bitwise resume.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kernels/error.h"
#ifdef REFTRAIN_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#include "train/checkpoint.h"
#include "train/grpo.h"
#include "train/ppo.h"
#include "train/schedule.h"
#include "train/trainer.h"
#include "tests/test_util.h"

using namespace reftrain;
using namespace reftrain::testing;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string temp_dir(const std::string& name) {
    return scratch_dir("trainer_" + name).string();
}

// A tiny run on the addition task with the byte tokenizer: seconds, not minutes.
std::vector<std::string> tiny_sets(const std::string& run_dir) {
    return {"run_dir=" + run_dir,
            "model.hidden_size=32",
            "model.intermediate_size=64",
            "model.num_hidden_layers=2",
            "model.num_attention_heads=4",
            "model.num_key_value_heads=2",
            "model.head_dim=8",
            "model.max_position_embeddings=64",
            "data.tokenizer=\"byte\"",
            "data.task_options={\"min_digits\": 1, \"max_digits\": 2}",
            "data.train_examples=300",
            "data.val_examples=20",
            "data.test_examples=20",
            "train.batch_size=4",
            "train.seq_len=48",
            "train.max_steps=6",
            "schedule.lr=0.003",
            "eval.every=0",
            "eval.exact_match_examples=5",
            "eval.samples=0"};
}

RunConfig tiny_config(const std::string& run_dir, std::vector<std::string> extra = {}) {
    std::vector<std::string> sets = tiny_sets(run_dir);
    sets.insert(sets.end(), extra.begin(), extra.end());
    return load_run_config("", sets);
}

double max_relative_difference(const Arena& a, const Arena& b) {
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
        const float* x = a.at(i).ptr<float>();
        const float* y = b.at(i).ptr<float>();
        for (int64_t j = 0; j < a.at(i).numel(); ++j) scale = std::max(scale, std::fabs(static_cast<double>(x[j])));
        for (int64_t j = 0; j < a.at(i).numel(); ++j) worst = std::max(worst, std::fabs(static_cast<double>(x[j]) - y[j]));
    }
    return worst / std::max(scale, 1e-30);
}

bool bitwise_equal(const Arena& a, const Arena& b) {
    return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

}  // namespace

// ---- run configs ------------------------------------------------------------------------------------

TEST(RunConfig, DefaultsParseAndSetOverrides) {
    const RunConfig c = load_run_config("", {"train.max_steps=17", "data.task=reversal", "schedule.kind=cosine"});
    EXPECT_EQ(c.train.max_steps, 17);
    EXPECT_EQ(c.data.task, "reversal");
    EXPECT_EQ(c.schedule.kind, "cosine");
    EXPECT_EQ(c.schedule.total_steps, 17) << "total_steps 0 means train.max_steps";
    EXPECT_EQ(c.resolved["train"]["max_steps"], 17);
}

TEST(RunConfig, RefusesUnknownKeysWithSuggestion) {
    EXPECT_NE(error_of([] { load_run_config("", {"train.max_step=3"}); }).find("unknown key 'train.max_step' (did you mean 'train.max_steps'?)"),
              std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"nonsense=3"}); }).find("unknown key 'nonsense'"), std::string::npos);
}

// A --set into a task's options changes the key it names and keeps the others (the config file's
// options stand); a config file's task_options replace the defaults whole.
TEST(RunConfig, SetIntoTaskOptionsKeepsTheOtherOptions) {
    const RunConfig c = load_run_config("", {R"(data.task_options={"min_digits": 2, "max_digits": 2})",
                                             "data.task_options.answer=reversed"});
    EXPECT_EQ(c.data.task_options.at("min_digits"), 2);
    EXPECT_EQ(c.data.task_options.at("max_digits"), 2);
    EXPECT_EQ(c.data.task_options.at("answer"), "reversed");
    const RunConfig scaled = load_run_config("", {R"(model.rope_scaling={"rope_type": "linear", "factor": 2.0})",
                                                  "model.rope_scaling.factor=4.0"});
    EXPECT_EQ(model_config_for_run(scaled, 300).rope_scaling.factor, 4.0);
    EXPECT_EQ(model_config_for_run(scaled, 300).rope_scaling.type, RopeScaling::Type::linear);
}

// The field table (train/config_fields.h) writes the defaults and reads the struct: a key written once
// reaches its member both ways, including a member of a member (train.beta2 -> adamw.beta2); a value the
// merge lets through but the member cannot hold is refused naming the key.
TEST(RunConfig, FieldTableRoundTripsAndRefusesWhatTheStructCannotHold) {
    const RunConfig c = load_run_config("", {"train.beta2=0.95", "seed=7", "eval.final_test=false"});
    EXPECT_EQ(c.train.adamw.beta2, 0.95);
    EXPECT_EQ(c.seed, 7u);
    EXPECT_FALSE(c.eval.final_test);
    EXPECT_EQ(c.resolved.at("train").at("beta2"), 0.95);
    const json defaults = default_run_config();
    EXPECT_EQ(defaults.at("train").at("seq_len"), TrainConfig{}.seq_len);
    EXPECT_EQ(defaults.at("schedule").at("kind"), ScheduleConfig{}.kind);
    EXPECT_TRUE(defaults.at("model").contains("hidden_size"));
    EXPECT_NE(error_of([] { load_run_config("", {"seed=-1"}); }).find("'seed' must be an integer >= 0, got -1"),
              std::string::npos);
    // A key's range sits on its line of the table; the message names the key, the rule and the value.
    EXPECT_NE(error_of([] { load_run_config("", {"train.seq_len=0"}); }).find("'train.seq_len' must be > 0, got 0"),
              std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"eval.every=-1"}); }).find("'eval.every' must be >= 0, got -1"),
              std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"train.precision=fp8"}); })
                  .find(R"('train.precision' must be one of "fp32", "bf16", "fp16", got "fp8")"),
              std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"bugs.forgot_zero_grd=true"}); })
                  .find("unknown bug switch 'bugs.forgot_zero_grd' (did you mean 'forgot-zero-grad'?)"),
              std::string::npos);
}

// A run config can train with HF's RoPE scaling: the object is handed whole to ModelConfig's reader,
// which checks it (a type we do not implement is refused there, by name).
TEST(RunConfig, RopeScalingObjectReachesTheModelConfig) {
    const RunConfig c = load_run_config("", {R"(model.rope_scaling={"rope_type": "linear", "factor": 2.0})"});
    const ModelConfig m = model_config_for_run(c, 300);
    EXPECT_EQ(m.rope_scaling.type, RopeScaling::Type::linear);
    EXPECT_EQ(m.rope_scaling.factor, 2.0);
    EXPECT_EQ(model_config_for_run(load_run_config("", {}), 300).rope_scaling.type, RopeScaling::Type::none);
    const RunConfig yarn = load_run_config("", {R"(model.rope_scaling={"rope_type": "yarn", "factor": 2.0})"});
    EXPECT_NE(error_of([&] { model_config_for_run(yarn, 300); }).find("yarn"), std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"model.rope_scaling=3"}); }).find("rope_scaling object or null"),
              std::string::npos);
}

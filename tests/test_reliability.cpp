// tests/test_reliability.cpp — regression tests for what a fuzzing campaign found in the parsers of user
// files (issue "Reliability"): each input below crashed, corrupted memory or was silently accepted before
// its fix. Now each is refused with a reftrain::Error that names the file (or --set) and the field.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "data/chat.h"
#include "debug/run_diff.h"
#include "kernels/json_strict.h"
#include "kernels/safetensors.h"
#include "model/config.h"
#include "model/transformer.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace reftrain {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;

std::string write(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
    return path.string();
}

// A small valid HF-style config with one field replaced.
std::string config_with(const std::string& field_and_value) {
    return R"({"vocab_size": 32, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4, "max_position_embeddings": 16, )" +
           field_and_value + "}";
}

std::string deep(int levels) { return std::string(static_cast<size_t>(levels), '[') + std::string(static_cast<size_t>(levels), ']'); }

// ---- 1. sizes from a config that wrap ---------------------------------------------------------------------

TEST(Reliability, HugeVocabSizeIsRefusedBeforeAnyAllocation) {
    const fs::path dir = testing::scratch_dir("rel_vocab");
    const std::string path = write(dir / "config.json", config_with(R"("torch_dtype": "float32")").replace(15, 2, "9223372036854775807"));
    expect_error([&] { ModelConfig::load(path); }, {path, "the model is too large", "vocab_size x hidden_size"});
}

TEST(Reliability, HeadsTimesHeadDimThatWrapsIsRefused) {
    ModelConfig c = testing::tiny_model_config();
    c.num_attention_heads = int64_t{1} << 40;
    c.num_key_value_heads = int64_t{1} << 40;
    c.head_dim = int64_t{1} << 40;
    expect_error([&] { c.validate("test config"); }, {"test config", "num_attention_heads x head_dim"});
}

TEST(Reliability, TooManyLayersAreRefusedWithTheFigureNotAfterAllocating) {
    ModelConfig c = testing::tiny_model_config();
    c.num_hidden_layers = int64_t{1} << 40;
    expect_error([&] { c.validate("test config"); }, {"the model is too large", "num_hidden_layers"});
    // A model that passes the size check but not this machine's memory: refused by the arena's budget,
    // with the figure, before the allocation.
    c = testing::tiny_model_config();
    c.vocab_size = int64_t{1} << 32;   // 2^38 parameters: valid, but 1 TiB in fp32
    c.hidden_size = 64;
    c.head_dim = 16;
    expect_error([&] { Transformer model(c, 1, 1); }, {"GiB", "of memory"});
}

TEST(Reliability, ArenaRefusesAShapeWhoseByteCountWraps) {
    Arena arena("test arena");
    expect_error([&] { arena.add("w", DType::F32, {int64_t{1} << 62, 8}); }, {"test arena", "'w'", "64-bit"});
}

TEST(Reliability, LayerTypesMustHaveOneEntryPerLayer) {
    const fs::path dir = testing::scratch_dir("rel_layer_types");
    const std::string path = write(dir / "config.json", config_with(R"("layer_types": ["full_attention", "full_attention", "full_attention"])"));
    expect_error([&] { ModelConfig::load(path); }, {path, "'layer_types' has 3 entries", "num_hidden_layers is 2"});
}

TEST(Reliability, AnUnsupportedArchitectureIsRefused) {
    const fs::path dir = testing::scratch_dir("rel_arch");
    const std::string path = write(dir / "config.json", config_with(R"("architectures": ["GPT2ForCausalLM"])"));
    expect_error([&] { ModelConfig::load(path); }, {path, "GPT2ForCausalLM"});
}

// ---- 2, 3. numbers out of a double's range, deep nesting, NUL bytes: one reader for every file ---------

TEST(Reliability, NumberTooLargeForADoubleIsRefusedNamingTheFile) {
    const fs::path dir = testing::scratch_dir("rel_1e400");
    const std::string config = write(dir / "config.json", config_with(R"("rope_theta": 1e400)"));
    expect_error([&] { ModelConfig::load(config); }, {config, "not valid JSON", "1e400"});
    const std::string run = write(dir / "run.json", R"({"schedule": {"lr": 1e400}})");
    expect_error([&] { load_run_config(run, {}); }, {run, "1e400"});
    expect_error([&] { load_run_config("", {"schedule.lr=1e400"}); }, {"--set 'schedule.lr=...'", "1e400"});
    const std::string jsonl = write(dir / "chats.jsonl", R"({"messages": [{"role": "user", "content": "x", "w": 1e400}]})" "\n");
    expect_error([&] { load_conversations_jsonl(jsonl); }, {jsonl + ":1", "1e400"});
    const std::string header = R"({"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}})";
    std::string file(8, '\0');
    for (int i = 0; i < 8; ++i) file[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    const std::string st = write(dir / "w.safetensors", file + header + std::string(4, '\0'));
    expect_error([&] { SafetensorsFile::open(st); }, {st, "not valid JSON"});
}

TEST(Reliability, DeeplyNestedJsonIsRefusedNotAStackOverflow) {
    const fs::path dir = testing::scratch_dir("rel_deep");
    const std::string nested = deep(100000);
    const std::string config = write(dir / "config.json", config_with(R"("rope_scaling": )" + nested));
    expect_error([&] { ModelConfig::load(config); }, {config, "nested deeper than 128 levels"});
    const std::string run = write(dir / "run.json", R"({"data": {"task_options": )" + nested + "}}");
    expect_error([&] { load_run_config(run, {}); }, {run, "nested deeper than 128 levels"});
    expect_error([&] { load_run_config("", {"data.task_options=" + nested}); }, {"--set", "nested deeper than 128 levels"});
    const std::string header = R"({"__metadata__": )" + nested + "}";
    std::string file(8, '\0');
    for (int i = 0; i < 8; ++i) file[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    const std::string st = write(dir / "w.safetensors", file + header);
    expect_error([&] { SafetensorsFile::open(st); }, {st, "nested deeper than 128 levels"});
    // 128 levels are still read.
    DuplicateKey duplicate;
    EXPECT_NO_THROW(parse_json_noting_duplicates(deep(128), &duplicate));
}

TEST(Reliability, TextAfterANulByteIsNotIgnored) {
    const fs::path dir = testing::scratch_dir("rel_nul");
    std::string text = config_with(R"("rope_theta": 10000.0)");
    text.insert(text.size() - 1, std::string("\0, \"hidden_size\": 99", 20));
    const std::string config = write(dir / "config.json", text);
    expect_error([&] { ModelConfig::load(config); }, {config, "NUL byte at offset"});
    const std::string jsonl = write(dir / "chats.jsonl", std::string(R"({"messages": []})") + std::string(1, '\0') + "\n");
    expect_error([&] { load_conversations_jsonl(jsonl); }, {jsonl + ":1", "NUL byte"});
}

// Found by tests/fuzz/fuzz_run_metrics.cpp: a step of 2^63 - 1 overflowed "2 * last step" in the diff (UBSan).
TEST(Reliability, MetricsWithAHugeStepDiffWithoutOverflow) {
    const std::string line = R"({"kind": "train", "step": 9223372036854775807, "loss": 1.0})" "\n";
    const RunMetrics a = parse_run_metrics(line, "a.jsonl");
    const RunMetrics b = parse_run_metrics(R"({"kind": "train", "step": 2305843009213693952, "loss": 1.0})" "\n", "b.jsonl");
    const RunDiffReport report = diff_runs(a, b, RunDiffOptions{});
    bool said = false;
    for (const std::string& w : report.warnings) said = said || w.find("B is much shorter than A") != std::string::npos;
    EXPECT_TRUE(said) << "a run whose last step is half the other's is called much shorter";
}

// ---- 5. values accepted without a word -------------------------------------------------------------------

TEST(Reliability, HyperparametersOutsideTheirRangeAreRefusedNamingTheRange) {
    expect_error([&] { load_run_config("", {"seed=-1"}); }, {"'seed' must be an integer >= 0, got -1"});
    expect_error([&] { load_run_config("", {"train.beta1=5"}); }, {"train.beta1", "must be in [0, "});
    expect_error([&] { load_run_config("", {"train.beta2=1.5"}); }, {"train.beta2", "must be in [0, "});
    expect_error([&] { load_run_config("", {"train.eps=-1"}); }, {"train.eps", "must be in [1e-30, 1]"});
    expect_error([&] { load_run_config("", {"train.weight_decay=-1e9"}); }, {"train.weight_decay", "must be in [0, 10]"});
    expect_error([&] { load_run_config("", {"tracer.frames=4611686018427387904"}); }, {"tracer.frames", "must be in [1, 100000]"});
    expect_error([&] { load_run_config("", {"schedule.lr=-0.1"}); }, {"schedule.lr", "must be in [0, 100]"});
    // Found by tests/fuzz/fuzz_run_config.cpp: a bare word that is not UTF-8 once escaped as nlohmann's
    // type_error from the message that quoted it.
    expect_error([&] { load_run_config("", {"seed=\xff"}); }, {"--set", "not valid UTF-8"});
    expect_error([&] { load_run_config("", {"bugs.tr\x89" "ain=true"}); }, {"--set", "not valid UTF-8"});   // in a key
    EXPECT_NO_THROW(load_run_config("", {"train.beta1=0.9", "train.beta2=0.95", "train.eps=1e-8", "train.weight_decay=0.1"}));
}

// ---- 4. checkpoints are verified whole before anything is loaded -----------------------------------------

class ReliabilityCheckpoint : public ::testing::Test {
protected:
    // A 1-step tiny run with a checkpoint; returns its directory.
    std::string make_checkpoint(const std::string& name) {
        dir_ = testing::scratch_dir(name);
        config_ = load_run_config("", {"run_dir=" + (dir_ / "run").string(), "threads=1", "model.hidden_size=16",
                                       "model.intermediate_size=24", "model.num_hidden_layers=1",
                                       "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.head_dim=8",
                                       "model.max_position_embeddings=64", "data.tokenizer=byte",
                                       "data.train_examples=50", "data.val_examples=0", "data.test_examples=0",
                                       "train.batch_size=2", "train.seq_len=32", "train.max_steps=3",
                                       "schedule.warmup_steps=0", "eval.every=0", "eval.final_test=false"});
        Trainer t(config_, log_);
        t.train_step();
        return t.save_checkpoint();
    }
    fs::path dir_;
    RunConfig config_;
    std::ostringstream log_;
};

TEST_F(ReliabilityCheckpoint, RunJsonOfTheWrongShapeIsRefusedNamingTheFile) {
    const std::string checkpoint = make_checkpoint("rel_ckpt_runjson");
    write(fs::path(checkpoint) / "run.json", R"({"train": {"batch_size": "two"}})");
    Trainer t(config_, log_);
    expect_error([&] { t.resume(checkpoint); }, {checkpoint + "/run.json", "train.batch_size"});
}

// Found by tests/fuzz/fuzz_checkpoint.cpp: an empty state.bin reached memcmp with a null pointer (UBSan).
TEST_F(ReliabilityCheckpoint, AnEmptyStateFileIsCalledTruncated) {
    const std::string checkpoint = make_checkpoint("rel_ckpt_empty_state");
    write(fs::path(checkpoint) / "state.bin", "");
    expect_error([&] { read_checkpoint_state(checkpoint); }, {checkpoint + "/state.bin", "truncated: 0 bytes"});
}

TEST_F(ReliabilityCheckpoint, AnEmptyRunJsonTakesTheDefaultsAndResumes) {
    // `{}` once gave "unexpected error: [json.exception.out_of_range.403] key 'run_dir' not found".
    const std::string checkpoint = make_checkpoint("rel_ckpt_empty");
    write(fs::path(checkpoint) / "run.json", "{}");
    Trainer t(config_, log_);
    try {
        t.resume(checkpoint);
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(checkpoint), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace reftrain

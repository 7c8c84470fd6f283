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

TEST(RunConfig, RefusesWrongTypesAndRanges) {
    EXPECT_NE(error_of([] { load_run_config("", {"train.max_steps=\"ten\""}); }).find("'train.max_steps' must be an integer"),
              std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"train.max_steps=2.5"}); }).find("'train.max_steps' must be an integer"),
              std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"train.batch_size=0"}); }).find("'train.batch_size' must be > 0"),
              std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"train.loss_normalization=mean"}); }).find("train.loss_normalization"),
              std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"data.jsonl=x.jsonl"}); }).find("set exactly one of 'data.task'"),
              std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"schedule.kind=wsd", "schedule.decay_fraction=1.5"}); })
                  .find("schedule.decay_fraction"),
              std::string::npos);
    EXPECT_NE(error_of([] { load_run_config("", {"oops"}); }).find("expected key=value"), std::string::npos);
}

TEST(RunConfig, FileErrorsNameTheFile) {
    const std::string dir = temp_dir("config_files");
    const std::string bad = dir + "/bad.json";
    std::ofstream(bad) << "{\"train\": {\"max_steps\": 3,}}";
    EXPECT_NE(error_of([&] { load_run_config(bad, {}); }).find(bad + ": the run config is not valid JSON"), std::string::npos);
    const std::string twice = dir + "/twice.json";
    std::ofstream(twice) << "{\"seed\": 1, \"seed\": 2}";
    EXPECT_NE(error_of([&] { load_run_config(twice, {}); }).find("'seed' appears twice"), std::string::npos);
    const std::string typo = dir + "/typo.json";
    std::ofstream(typo) << "{\"data\": {\"templat\": \"chatml\"}}";
    EXPECT_NE(error_of([&] { load_run_config(typo, {}); }).find(typo + ": unknown key 'data.templat' (did you mean 'data.template'?)"),
              std::string::npos);
    EXPECT_NE(error_of([&] { load_run_config(dir + "/missing.json", {}); }).find("cannot open"), std::string::npos);
}

TEST(RunConfig, ShippedConfigsParse) {
    for (const auto& entry : fs::directory_iterator(fs::path(REFTRAIN_SOURCE_DIR) / "configs")) {
        if (entry.path().extension() != ".json") continue;
        SCOPED_TRACE(entry.path().string());
        std::ifstream in(entry.path());
        const nlohmann::json file = nlohmann::json::parse(in);
        const std::string algorithm = file.value("algorithm", "");
        if (algorithm == "ppo") {
            EXPECT_NO_THROW(load_ppo_config(entry.path().string(), {}));
        } else if (algorithm == "grpo") {
            EXPECT_NO_THROW(load_grpo_config(entry.path().string(), {}));
        } else {
            EXPECT_EQ(algorithm, "") << "unknown algorithm";
            EXPECT_NO_THROW(load_run_config(entry.path().string(), {}));
        }
    }
}

// `reftrain train` on an RL config says which command runs it.
TEST(RunConfig, DeviceIsCpuOrCuda) {
    EXPECT_EQ(load_run_config("", {}).train.device, "cpu");
    EXPECT_TRUE(load_run_config("", {}).train.deterministic);
    EXPECT_EQ(load_run_config("", {"train.device=\"cuda\""}).train.device, "cuda");
    expect_error([] { load_run_config("", {"train.device=\"gpu\""}); },
                 {"'train.device' must be one of \"cpu\", \"cuda\", got \"gpu\""});
}

TEST(Trainer, CudaDeviceWithoutBackendOrGpuIsAClearError) {
    // A CPU-only build says the backend is missing; a CUDA build on a machine without a GPU (CI) says
    // there is no device. On a GPU machine the run starts (tests/cuda/ covers it).
#ifdef REFTRAIN_HAVE_CUDA
    const char* expected = "no CUDA device";
    int count = 0;
    if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0) GTEST_SKIP() << "this machine has a GPU";
#else
    const char* expected = "this build has no CUDA backend";
#endif
    std::ostringstream log;
    const RunConfig config = tiny_config(temp_dir("cuda_device"), {"train.device=\"cuda\""});
    expect_error([&] { Trainer trainer(config, log); }, {expected});
}

TEST(RunConfig, RlConfigIsRefusedNamingTheRlCommand) {
    const std::string path = std::string(REFTRAIN_SOURCE_DIR) + "/configs/cartpole.json";
    try {
        load_run_config(path, {});
        FAIL() << "an RL config was accepted as an SFT config";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("reftrain rl --config"), std::string::npos) << e.what();
    }
}

// ---- the optimizer step -----------------------------------------------------------------------------

// k micro-batches with "tokens" weighting give the gradient of one batch holding all of them, even
// when the micro-batches supervise different numbers of tokens (the packer makes them differ).
TEST(Trainer, AccumulationEqualsOneBigBatch) {
    const std::string dir = temp_dir("accumulation");
    std::ostringstream log;
    Trainer big(tiny_config(dir, {"train.batch_size=4", "train.grad_accum=1", "train.grad_clip=0"}), log);
    Trainer small(tiny_config(dir, {"train.batch_size=1", "train.grad_accum=4", "train.grad_clip=0"}), log);
    Trainer textbook(tiny_config(dir, {"train.batch_size=1", "train.grad_accum=4", "train.grad_clip=0",
                                       "train.loss_normalization=micro_batches"}),
                     log);
    const StepMetrics a = big.train_step();
    const StepMetrics b = small.train_step();
    textbook.train_step();
    ASSERT_EQ(a.supervised_tokens, b.supervised_tokens);
    EXPECT_NEAR(a.loss, b.loss, 1e-5 * a.loss);
    EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-5 * a.grad_norm);
    const double rel = max_relative_difference(big.model().grads(), small.model().grads());
    EXPECT_LT(rel, 1e-5) << "accumulated gradient differs from the big batch's";
    // Dividing by k instead is only right when every micro-batch supervises as many tokens: here they
    // do not, and the gradient visibly differs (this is what the "tokens" rule exists for).
    const double rel_textbook = max_relative_difference(big.model().grads(), textbook.model().grads());
    EXPECT_GT(rel_textbook, 1e-3);
}

TEST(Trainer, ScheduleAdvancesPerOptimizerStepNotPerMicroBatch) {
    const std::string dir = temp_dir("schedule_units");
    std::ostringstream log;
    Trainer trainer(tiny_config(dir, {"train.grad_accum=3", "schedule.kind=linear_warmup", "schedule.warmup_steps=4"}),
                    log);
    const ScheduleConfig schedule = load_run_config("", {"schedule.kind=linear_warmup", "schedule.warmup_steps=4",
                                                         "schedule.lr=0.003"})
                                        .schedule;
    for (int64_t step = 0; step < 4; ++step) {
        const StepMetrics m = trainer.train_step();
        EXPECT_EQ(m.step, step + 1);
        EXPECT_DOUBLE_EQ(m.lr, lr_at(schedule, step)) << "optimizer step " << step;
        EXPECT_EQ(trainer.optimizer().step_count(), step + 1) << "one AdamW update per 3 micro-batches";
    }
}

TEST(Trainer, ScheduleInvariantsWatchTheAppliedLrWithoutTheSwitch) {
    // A schedule sized in micro-batches (total_steps = grad_accum x max_steps) is followed step by
    // step, so the applied-LR check stays silent; schedule.completes_in_run names it instead.
    const std::string dir = temp_dir("schedule_sized");
    std::ostringstream log;
    Trainer sized(tiny_config(dir, {"train.grad_accum=4", "train.max_steps=6", "schedule.kind=cosine",
                                    "schedule.total_steps=24", R"(invariants={"default": "warn"})"}),
                  log);
    EXPECT_EQ(sized.invariants().violations("schedule.completes_in_run"), 1);
    sized.train_step();
    sized.train_step();
    EXPECT_EQ(sized.invariants().violations("schedule.counts_optimizer_steps"), 0);
    // The same run with its schedule in optimizer steps: both silent.
    Trainer right(tiny_config(dir, {"train.grad_accum=4", "train.max_steps=6", "schedule.kind=cosine"}), log);
    right.train_step();
    right.train_step();
    EXPECT_EQ(right.invariants().violations("schedule.completes_in_run"), 0);
    EXPECT_EQ(right.invariants().violations("schedule.counts_optimizer_steps"), 0);
    EXPECT_GE(right.invariants().evaluations("schedule.counts_optimizer_steps"), 2);
}

TEST(Trainer, LossFallsOnTheAdditionTask) {
    const std::string dir = temp_dir("loss_falls");
    std::ostringstream log;
    Trainer trainer(tiny_config(dir, {"train.max_steps=40", "train.batch_size=8"}), log);
    const double first = trainer.train_step().loss;
    double last = first;
    for (int i = 1; i < 40; ++i) last = trainer.train_step().loss;
    EXPECT_LT(last, 0.6 * first) << "40 AdamW steps should cut the loss well below its start";
    EXPECT_NEAR(first, std::log(static_cast<double>(trainer.model().config().vocab_size)), 0.5)
        << "a fresh model predicts about uniformly";
}

// ---- checkpoints through the trainer ----------------------------------------------------------------

TEST(Trainer, ResumeContinuesBitwise) {
    const std::string dir_a = temp_dir("resume_a"), dir_b = temp_dir("resume_b");
    std::ostringstream log;
    Trainer straight(tiny_config(dir_a, {"train.grad_accum=2"}), log);
    for (int i = 0; i < 6; ++i) straight.train_step();

    std::string checkpoint;
    {
        Trainer first_half(tiny_config(dir_b, {"train.grad_accum=2"}), log);
        for (int i = 0; i < 3; ++i) first_half.train_step();
        checkpoint = first_half.save_checkpoint();
        first_half.train_step();  // work after the checkpoint must not leak into the resumed run
    }
    Trainer resumed(tiny_config(dir_b, {"train.grad_accum=2"}), log);
    resumed.resume(checkpoint);
    EXPECT_EQ(resumed.step(), 3);
    for (int i = 0; i < 3; ++i) resumed.train_step();
    EXPECT_TRUE(bitwise_equal(straight.model().params(), resumed.model().params()))
        << "weights after 3 + resume + 3 steps differ from 6 straight steps";
    EXPECT_TRUE(bitwise_equal(straight.optimizer().moments(), resumed.optimizer().moments()));
    EXPECT_EQ(straight.packer().position(), resumed.packer().position());

    // "latest" finds the newest checkpoint of the run.
    Trainer again(tiny_config(dir_b, {"train.grad_accum=2"}), log);
    again.resume("latest");
    EXPECT_EQ(again.step(), 3);
}

TEST(Trainer, ResumeRefusesAnotherTemplate) {
    const std::string dir = temp_dir("resume_template");
    std::ostringstream log;
    std::string checkpoint;
    {
        Trainer trainer(tiny_config(dir), log);
        trainer.train_step();
        checkpoint = trainer.save_checkpoint();
    }
    Trainer other(tiny_config(dir, {"data.template=nanochat"}), log);
    EXPECT_NE(error_of([&] { other.resume(checkpoint); }).find("another chat template or tokenizer"), std::string::npos);
}

TEST(Trainer, RunWritesMetricsCheckpointAndScoresTheTestSplit) {
    const std::string dir = temp_dir("full_run");
    std::ostringstream log;
    Trainer trainer(tiny_config(dir, {"train.max_steps=4", "log_every=2", "eval.every=2", "eval.samples=1"}), log);
    trainer.run();
    const std::string text = log.str();
    EXPECT_NE(text.find("step 2/4 loss"), std::string::npos) << text;
    EXPECT_NE(text.find("eval step 2: val loss"), std::string::npos) << text;
    EXPECT_NE(text.find("sample: "), std::string::npos) << text;
    EXPECT_NE(text.find("test: exact match"), std::string::npos) << text;
    std::ifstream metrics(dir + "/metrics.jsonl");
    int train_lines = 0, eval_lines = 0, test_lines = 0;
    for (std::string line; std::getline(metrics, line);) {
        const json j = json::parse(line);
        const std::string kind = j.at("kind");
        if (kind == "train") {
            ++train_lines;
            EXPECT_TRUE(j.contains("grad_norm") && j.contains("lr") && j.contains("loss"));
        }
        eval_lines += kind == "eval";
        test_lines += kind == "test";
    }
    EXPECT_EQ(train_lines, 4);
    EXPECT_EQ(eval_lines, 2);  // step 2 and the final one
    EXPECT_EQ(test_lines, 1);
    EXPECT_TRUE(fs::exists(dir + "/checkpoints/step_0000004/model.safetensors"));
    EXPECT_TRUE(fs::exists(dir + "/checkpoints/step_0000004/config.json"));
}

// eval.stop_at_exact_match: a target never reached is said at the end of a full run; the key needs
// evals on a toy task and is a fraction. (Reached targets: scripts/grpo_demo_sweep.sh's logs, "stopping at
// step N: val exact match ...".)
TEST(Trainer, StopAtExactMatchIsCheckedAndSaysWhenNeverReached) {
    const std::string dir = temp_dir("stop_never");
    std::ostringstream log;
    Trainer trainer(tiny_config(dir, {"train.max_steps=4", "eval.every=2", "eval.samples=0",
                                      "eval.stop_at_exact_match=1.0"}),
                    log);
    trainer.run();
    EXPECT_EQ(trainer.step(), 4);
    EXPECT_NE(log.str().find("eval.stop_at_exact_match = 100.0% was never reached in 4 steps"), std::string::npos)
        << log.str();
    EXPECT_EQ(log.str().find("stopping at step"), std::string::npos);
    reftrain::testing::expect_error([&] { tiny_config(dir, {"eval.every=0", "eval.stop_at_exact_match=0.3"}); },
                          {"'eval.stop_at_exact_match' needs evals during training", "eval.every > 0 (got 0)"});
    reftrain::testing::expect_error([&] { tiny_config(dir, {"eval.every=2", "eval.stop_at_exact_match=35"}); },
                          {"'eval.stop_at_exact_match' is a fraction in [0, 1]", "got 35"});
}

TEST(Trainer, TooLongConversationsAreSkippedAndCountedNeverCut) {
    const std::string dir = temp_dir("too_long");
    const std::string jsonl = dir + "/chat.jsonl";
    {
        std::ofstream out(jsonl);
        out << R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})" << "\n";
        out << R"({"messages": [{"role": "user", "content": "tell me a long story"}, {"role": "assistant", "content": ")"
            << std::string(200, 'x') << R"("}]})" << "\n";
    }
    std::ostringstream log;
    const RunConfig config = tiny_config(dir, {"data.task=\"\"", "data.jsonl=" + jsonl});
    const RunData data = prepare_run_data(config.data, config.train.seq_len, config.seed, log);
    EXPECT_EQ(data.train_docs.size(), 1u);
    EXPECT_EQ(data.skipped_too_long, 1);
    EXPECT_NE(log.str().find("skipped 1 conversations longer than seq_len + 1 = 49 tokens"), std::string::npos)
        << log.str();
    // Nothing usable at all is an error, not an empty run.
    const RunConfig tiny_context = tiny_config(dir, {"data.task=\"\"", "data.jsonl=" + jsonl, "train.seq_len=8"});
    EXPECT_NE(error_of([&] { prepare_run_data(tiny_context.data, tiny_context.train.seq_len, tiny_context.seed, log); }).find("no training conversation is usable"),
              std::string::npos);
}

// ---- mixed precision through the loop ----------------------------------------------------------------

TEST(Trainer, EmulatedPrecisionTrainsCloseToFp32AndFp16ScalesTheLoss) {
    const std::string dir = temp_dir("precision");
    std::ostringstream log;
    Trainer fp32(tiny_config(dir), log);
    Trainer bf16(tiny_config(dir, {"train.precision=bf16"}), log);
    Trainer fp16(tiny_config(dir, {"train.precision=fp16"}), log);
    EXPECT_FALSE(fp32.loss_scaler().enabled());
    EXPECT_FALSE(bf16.loss_scaler().enabled()) << "bf16 has fp32's exponent range: no loss scaling";
    ASSERT_TRUE(fp16.loss_scaler().enabled());
    const StepMetrics a = fp32.train_step(), b = bf16.train_step(), c = fp16.train_step();
    EXPECT_NEAR(b.loss, a.loss, 2e-2) << "bf16 keeps 8 mantissa bits: the loss moves by about 1e-2 at most here";
    EXPECT_NEAR(c.loss, a.loss, 5e-3) << "fp16 keeps 11 mantissa bits";
    EXPECT_EQ(c.loss_scale, 65536.0);
    EXPECT_EQ(a.loss_scale, 1.0);
    // After a few steps the fp16 run is still finite, and the scale only ever halves on a skipped step.
    double scale = c.loss_scale;
    for (int i = 0; i < 5; ++i) {
        const StepMetrics m = fp16.train_step();
        EXPECT_TRUE(std::isfinite(m.loss));
        if (m.skipped) {
            EXPECT_EQ(fp16.loss_scaler().scale(), m.loss_scale / 2);
        } else {
            EXPECT_EQ(m.loss_scale, scale);
        }
        scale = fp16.loss_scaler().scale();
    }
}

TEST(Trainer, Fp16SkipsAStepWithInfiniteGradientsAndBacksOff) {
    const std::string dir = temp_dir("fp16_skip");
    std::ostringstream log;
    // A scale of 2^40 makes the scaled loss gradient overflow fp16 at once: the step must be skipped,
    // the weights left alone and the scale halved.
    Trainer trainer(tiny_config(dir, {"train.precision=fp16", "loss_scaler.init_scale=1099511627776.0",
                                      "tracer.policy=\"skip\""}),
                    log);
    std::vector<float> before(trainer.model().params().numel());
    std::memcpy(before.data(), trainer.model().params().data(), before.size() * sizeof(float));
    const StepMetrics m = trainer.train_step();
    EXPECT_TRUE(m.skipped);
    EXPECT_EQ(trainer.loss_scaler().scale(), 549755813888.0f);
    EXPECT_EQ(std::memcmp(before.data(), trainer.model().params().data(), before.size() * sizeof(float)), 0)
        << "a skipped step changed the weights";
    EXPECT_EQ(trainer.optimizer().step_count(), 0);
}

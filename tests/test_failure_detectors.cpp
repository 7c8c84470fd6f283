// tests/test_failure_detectors.cpp — the detectors of the newer failure-catalog rows, fed symptoms made
// WITHOUT any bug switch: a hand-made batch, user-side code written the way users write it (a loop that
// freezes a layer by restoring it, weights rounded to bf16 after the step, a gradient hook that writes inf,
// a resume that loads only the weights, user JSONL files that overlap), and each also stays silent on the
// healthy version. tests/test_failures.cpp runs the scenarios themselves (bug on vs off).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "data/chat.h"
#include "data/tasks.h"
#include "data/tokenizer.h"
#include "debug/invariants.h"
#include "kernels/bugs.h"
#include "kernels/dtype.h"
#include "kernels/error.h"
#include "kernels/random.h"
#include "probes/failure_detectors.h"
#include "tests/test_util.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/diagnostics.h"
#include "train/loss_spike.h"
#include "train/trainer.h"
#include "train/update_audit.h"

using namespace reftrain;
using reftrain::testing::scratch_dir;

namespace {

class FailureDetectors : public ::testing::Test {
protected:
    void SetUp() override { reset_bugs(); }
    void TearDown() override { reset_bugs(); }
};

RunConfig tiny_run(const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> sets = {"run_dir=" + scratch_dir("detectors_" + name).string(),
                                     "threads=1",
                                     "model.hidden_size=32",
                                     "model.intermediate_size=64",
                                     "model.num_hidden_layers=2",
                                     "model.num_attention_heads=4",
                                     "model.num_key_value_heads=2",
                                     "model.head_dim=8",
                                     "model.max_position_embeddings=64",
                                     "data.tokenizer=\"byte\"",
                                     "data.task_options={\"min_digits\": 1, \"max_digits\": 2}",
                                     "data.train_examples=400",
                                     "data.val_examples=0",
                                     "data.test_examples=0",
                                     "train.batch_size=8",
                                     "train.seq_len=48",
                                     "train.max_steps=40",
                                     "schedule.lr=0.003",
                                     "eval.every=0",
                                     "eval.exact_match_examples=0",
                                     "eval.final_test=false",
                                     "tracer.enabled=false",
                                     "invariants={\"default\": \"warn\"}"};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return load_run_config("", sets);
}

// ---- the loss-spike detector ------------------------------------------------------------------------------

TEST_F(FailureDetectors, LossSpikeDetectorIsQuietOnANoisyFallingCurveAndFiresOnASpike) {
    LossSpikeDetector detector(6.0, 20);
    // A falling curve with +-2 % noise: no spike anywhere.
    for (int i = 0; i < 60; ++i) {
        const double loss = 2.0 + 3.0 * std::exp(-i / 10.0) + 0.04 * std::sin(i * 1.7);
        EXPECT_FALSE(detector.observe(i, loss).has_value()) << "step " << i << " loss " << loss;
    }
    // A step at twice the settled loss: a spike, named with its step; it is not added to the history,
    // so the next normal step is quiet and a second spike fires again.
    const std::optional<LossSpike> spike = detector.observe(60, 4.2);
    ASSERT_TRUE(spike.has_value());
    EXPECT_EQ(spike->step, 60);
    EXPECT_GT(spike->z, 6.0);
    EXPECT_FALSE(detector.observe(61, 2.01).has_value());
    EXPECT_TRUE(detector.observe(62, 4.0).has_value());
    EXPECT_TRUE(detector.observe(63, std::nan("")).has_value()) << "a NaN loss is a spike";
}

TEST_F(FailureDetectors, LossSpikeDetectorCatchesAnEarlyDivergenceBeforeItHasAHistory) {
    LossSpikeDetector detector(6.0, 20);
    EXPECT_FALSE(detector.observe(0, 5.6).has_value());
    EXPECT_FALSE(detector.observe(1, 5.0).has_value());
    const std::optional<LossSpike> early = detector.observe(2, 9.0);   // > 1.5 x 5.6 at step 3
    ASSERT_TRUE(early.has_value());
    EXPECT_TRUE(early->above_first);
    LossSpikeDetector calm(6.0, 20);
    for (double loss : {5.6, 6.1, 5.9, 5.2, 4.8}) EXPECT_FALSE(calm.observe(0, loss).has_value()) << loss;
}

// A user's JSONL data with a pocket of garbage answers, no switch: the trainer's detector names the rows,
// and with loss_spike_skip the update of a spiking step is not applied.
std::string write_user_jsonl(const std::string& dir, int64_t garbage) {
    const std::string path = (scratch_dir(dir) / "train.jsonl").string();
    std::ofstream out(path);
    auto task = make_task("addition", nlohmann::json::parse(R"({"min_digits": 1, "max_digits": 2})"));
    for (const TaskExample& e : generate_split(*task, Split::train, 400, 3)) {
        out << nlohmann::json{{"messages", {{{"role", "user"}, {"content", e.prompt}},
                                            {{"role", "assistant"}, {"content", e.answer}}}}}.dump() << "\n";
    }
    Rng rng(99);
    for (int64_t i = 0; i < garbage; ++i) {
        std::string junk = "~~";
        for (int j = 0; j < 18; ++j) junk += static_cast<char>(33 + rng.below(94));
        out << nlohmann::json{{"messages", {{{"role", "user"}, {"content", "2+2"}},
                                            {{"role", "assistant"}, {"content", junk}}}}}.dump() << "\n";
    }
    return path;
}

TEST_F(FailureDetectors, TrainerNamesTheGarbageRowsOfASpikeAndCanSkipTheUpdate) {
    const std::string garbage = write_user_jsonl("spike_data", 4);
    for (bool skip : {false, true}) {
        std::ostringstream log;
        Trainer trainer(tiny_run(std::string("spike_") + (skip ? "skip" : "apply"),
                                 {"data.task=\"\"", "data.jsonl=\"" + garbage + "\"", "train.loss_spike_z=12",
                                  std::string("train.loss_spike_skip=") + (skip ? "true" : "false")}),
                        log);
        int64_t skipped = 0;
        for (int i = 0; i < 80; ++i) {
            const Arena& params = trainer.model().params();
            std::vector<std::byte> before(params.nbytes());
            std::memcpy(before.data(), params.data(), params.nbytes());
            const int64_t spikes_before = trainer.invariants().violations("loss.no_spike");
            const StepMetrics m = trainer.train_step();
            const bool spiked = trainer.invariants().violations("loss.no_spike") > spikes_before;
            const bool unchanged = std::memcmp(before.data(), params.data(), params.nbytes()) == 0;
            if (spiked) {
                EXPECT_EQ(unchanged, skip) << "step " << i + 1 << ": skip = " << skip;
            } else {
                EXPECT_FALSE(unchanged) << "step " << i + 1;
            }
            skipped += m.skipped;
        }
        ASSERT_GT(trainer.invariants().violations("loss.no_spike"), 0) << log.str();
        EXPECT_EQ(skipped > 0, skip);
        const std::string message = trainer.invariants().last_message("loss.no_spike");
        reftrain::testing::expect_contains(message, {"x the step-to-step noise", "highest rows: micro-batch 0 row",
                                                     "\"ant\\n~~"});
    }
    // The same run on clean data: silent.
    std::ostringstream log;
    Trainer clean(tiny_run("spike_clean", {"data.task=\"\"", "data.jsonl=\"" + write_user_jsonl("spike_clean_data", 0) + "\"",
                                           "train.loss_spike_z=12"}),
                  log);
    for (int i = 0; i < 80; ++i) clean.train_step();
    EXPECT_EQ(clean.invariants().violations("loss.no_spike"), 0) << clean.invariants().last_message("loss.no_spike");
    EXPECT_EQ(clean.invariants().evaluations("loss.no_spike"), 80);
}

// ---- the update audit -------------------------------------------------------------------------------------

TEST_F(FailureDetectors, UpdateAuditFindsALayerAUserLoopKeepsFrozenByRestoringIt) {
    // No switch: the user's loop copies layer 1's weights back after every step (what a frozen or
    // forgotten param group amounts to).
    std::ostringstream log;
    Trainer trainer(tiny_run("frozen"), log);
    Arena& params = trainer.model().params();
    std::vector<std::vector<float>> saved;
    for (const Tensor& p : params.tensors()) saved.emplace_back(p.ptr<float>(), p.ptr<float>() + p.numel());
    UpdateAudit audit, healthy;
    for (int i = 0; i < 10; ++i) {
        audit.before(params);
        trainer.train_step();
        for (size_t t = 0; t < params.size(); ++t) {
            if (params.at(t).name.rfind("model.layers.1.", 0) == 0) {
                std::memcpy(params.at(t).data, saved[t].data(), saved[t].size() * sizeof(float));
            }
        }
        audit.after(params, trainer.model().grads());
    }
    const std::vector<std::string> dead = audit.never_moved();
    ASSERT_FALSE(dead.empty());
    for (const std::string& name : dead) EXPECT_EQ(name.rfind("model.layers.1.", 0), 0u) << name;
    // A normal loop: every tensor moves.
    Trainer normal(tiny_run("unfrozen"), log);
    for (int i = 0; i < 5; ++i) {
        healthy.before(normal.model().params());
        normal.train_step();
        healthy.after(normal.model().params(), normal.model().grads());
    }
    EXPECT_TRUE(healthy.never_moved().empty());
    EXPECT_TRUE(healthy.stalled(0.5).empty());
    EXPECT_LT(healthy.stalled_fraction(), 1e-3);
}

TEST_F(FailureDetectors, UpdateAuditSeesStalledUpdatesWhenUserCodeKeepsTheWeightsInBf16) {
    // No switch: after every optimizer step the user's code stores the weights as bf16 (model.to(bfloat16)).
    std::ostringstream log;
    Trainer trainer(tiny_run("bf16_user"), log);
    Arena& params = trainer.model().params();
    auto to_bf16 = [&] {
        for (const Tensor& p : params.tensors()) {
            float* x = p.ptr<float>();
            for (int64_t j = 0; j < p.numel(); ++j) x[j] = bf16_to_float(float_to_bf16(x[j]));
        }
    };
    to_bf16();
    UpdateAudit audit;
    for (int i = 0; i < 10; ++i) {
        audit.before(params);
        trainer.train_step();
        to_bf16();
        audit.after(params, trainer.model().grads());
    }
    EXPECT_GT(audit.stalled_fraction(), 0.01);
    const std::vector<std::string> stalled = audit.stalled(0.5);
    ASSERT_FALSE(stalled.empty());
    for (const std::string& name : stalled) EXPECT_NE(name.find("norm"), std::string::npos) << name;
}

// ---- weight decay observed ------------------------------------------------------------------------------

TEST_F(FailureDetectors, DecayedTensorsAreObservedFromAZeroGradientStep) {
    std::ostringstream log;
    Trainer trainer(tiny_run("decay_probe"), log);
    const std::vector<std::string> decayed = tensors_decayed_by(trainer.model().params(), trainer.optimizer().config());
    for (const Tensor& p : trainer.model().params().tensors()) {
        const bool observed = std::find(decayed.begin(), decayed.end(), p.name) != decayed.end();
        EXPECT_EQ(observed, p.ndim == 2) << p.name;
    }
    ScopedBug bug("weight-decay-on-norms");
    EXPECT_EQ(tensors_decayed_by(trainer.model().params(), trainer.optimizer().config()).size(),
              trainer.model().params().size());
}

// ---- non-finite steps -------------------------------------------------------------------------------------

void poison_at_step(Trainer& trainer, int64_t poisoned) {
    trainer.set_grad_hook([poisoned](int64_t step, Arena& grads) {
        if (step == poisoned) grads.get("grad:model.norm.weight").ptr<float>()[0] = INFINITY;
    });
}

TEST_F(FailureDetectors, AnInfGradientFromAHookIsNeverApplied) {
    std::ostringstream log;
    // Fatal (the default): the run stops at the step, naming it; nothing was written.
    Trainer stops(tiny_run("inf_fatal", {R"(invariants={"grad.finite_before_update": "fatal"})"}), log);
    poison_at_step(stops, 2);
    stops.train_step();
    stops.train_step();
    const ArenaSnapshot before = snapshot({&stops.model().params(), &stops.optimizer().moments()});
    reftrain::testing::expect_error([&] { stops.train_step(); },
                                    {"grad.finite_before_update", "step 3: the gradient norm is inf"});
    EXPECT_FALSE(changed_by_skipped_step(before, snapshot({&stops.model().params(), &stops.optimizer().moments()})).fired);
    // Warn: the step is skipped and counted, the run goes on.
    Trainer skips(tiny_run("inf_warn"), log);
    poison_at_step(skips, 2);
    skips.train_step();
    skips.train_step();
    const ArenaSnapshot kept = snapshot({&skips.model().params(), &skips.optimizer().moments()});
    EXPECT_TRUE(skips.train_step().skipped);
    EXPECT_FALSE(changed_by_skipped_step(kept, snapshot({&skips.model().params(), &skips.optimizer().moments()})).fired);
    EXPECT_EQ(skips.invariants().violations("grad.finite_before_update"), 1);
    EXPECT_FALSE(skips.train_step().skipped);
}

TEST_F(FailureDetectors, ChangedBySkippedStepFiresOnAUserUpdateThatWritesNaN) {
    // No switch: the user's own update loop applies p -= lr * g with an inf g.
    std::ostringstream log;
    Trainer trainer(tiny_run("user_nan_update"), log);
    Arena& params = trainer.model().params();
    const ArenaSnapshot before = snapshot({&params});
    float* w = params.get("model.norm.weight").ptr<float>();
    w[0] -= 0.01f * INFINITY;
    const DetectorVerdict v = changed_by_skipped_step(before, snapshot({&params}));
    ASSERT_TRUE(v.fired);
    reftrain::testing::expect_contains(v.message, {"changed 1 weight/moment entries", "1 of them now NaN or inf",
                                                   "model.norm.weight"});
}

// ---- resume -----------------------------------------------------------------------------------------------

TEST_F(FailureDetectors, AResumeThatLoadsOnlyTheWeightsDiffersFromTheStraightRun) {
    // No switch: the user's resume code loads the weights into a fresh trainer and keeps its fresh optimizer.
    std::ostringstream log;
    Trainer straight(tiny_run("resume_straight", {"train.max_steps=8"}), log);
    for (int i = 0; i < 8; ++i) straight.train_step();
    const RunConfig config = tiny_run("resume_user", {"train.max_steps=8"});
    std::string checkpoint;
    {
        Trainer first(config, log);
        for (int i = 0; i < 4; ++i) first.train_step();
        checkpoint = first.save_checkpoint();
    }
    Trainer weights_only(config, log);
    TrainState state;
    load_checkpoint(checkpoint, weights_only.model(), nullptr, state);
    weights_only.packer().set_position(state.data);   // the user did restore the data position
    Trainer proper(config, log);
    proper.resume(checkpoint);
    for (int i = 0; i < 4; ++i) {
        weights_only.train_step();
        proper.train_step();
    }
    const ArenaSnapshot reference = snapshot({&straight.model().params(), &straight.optimizer().moments()});
    EXPECT_TRUE(snapshots_differ(snapshot({&weights_only.model().params(), &weights_only.optimizer().moments()}),
                                 reference, "weights-only resume").fired);
    const DetectorVerdict same =
        snapshots_differ(snapshot({&proper.model().params(), &proper.optimizer().moments()}), reference, "resume");
    EXPECT_FALSE(same.fired) << same.message;
}

// ---- data and templates -----------------------------------------------------------------------------------

TEST_F(FailureDetectors, SplitDisjointCatchesAUserValidationFileThatRepeatsTrainingConversations) {
    const std::string dir = scratch_dir("split_user").string();
    auto write = [&](const std::string& name, const std::vector<std::pair<std::string, std::string>>& rows) {
        const std::string path = dir + "/" + name;
        std::ofstream out(path);
        for (const auto& [q, a] : rows) {
            out << nlohmann::json{{"messages", {{{"role", "user"}, {"content", q}}, {{"role", "assistant"}, {"content", a}}}}}.dump()
                << "\n";
        }
        return path;
    };
    const std::string train = write("train.jsonl", {{"capital of France?", "Paris"}, {"2+2?", "4"}, {"hello", "hi"}});
    const std::string leaky = write("val_leaky.jsonl", {{"3+3?", "6"}, {"2+2?", "four"}});
    const std::string clean = write("val_clean.jsonl", {{"3+3?", "6"}, {"capital of Italy?", "Rome"}});
    std::ostringstream log;
    Trainer leaked(tiny_run("split_leaky", {"data.task=\"\"", "data.jsonl=\"" + train + "\"", "data.val_jsonl=\"" + leaky + "\"",
                                            "train.batch_size=2"}),
                   log);
    EXPECT_EQ(leaked.invariants().violations("data.split_disjoint"), 1);
    reftrain::testing::expect_contains(leaked.invariants().last_message("data.split_disjoint"),
                                       {"1 of 2 val items also occur in train", "2+2?"});
    Trainer fine(tiny_run("split_clean", {"data.task=\"\"", "data.jsonl=\"" + train + "\"", "data.val_jsonl=\"" + clean + "\"",
                                          "train.batch_size=2"}),
                 log);
    EXPECT_EQ(fine.invariants().violations("data.split_disjoint"), 0);
    EXPECT_EQ(fine.invariants().evaluations("data.split_disjoint"), 1);
}

TEST_F(FailureDetectors, SamplingPromptMustBeWhatTrainingPutBeforeTheAnswer) {
    const std::unique_ptr<Tokenizer> tokenizer = make_byte_tokenizer(ChatTemplate::special_tokens("chatml"));
    const ChatTemplate chat("chatml", *tokenizer);
    const Conversation with_answer{{{"user", "What is 2+2?"}, {"assistant", "4"}}, "test"};
    const Conversation prompt_only{{{"user", "What is 2+2?"}}, "test"};
    const RenderedConversation trained = chat.render(with_answer);
    const size_t answer_start = static_cast<size_t>(
        std::find(trained.supervised.begin(), trained.supervised.end(), 1) - trained.supervised.begin());
    auto pieces = [&](const std::vector<int64_t>& ids) {
        std::vector<std::string> out;
        for (int64_t id : ids) out.push_back(tokenizer->piece(id));
        return out;
    };
    const std::vector<int64_t> right = chat.render_prompt(prompt_only);
    EXPECT_FALSE(prompt_not_training_prefix(trained.ids, answer_start, right, pieces(trained.ids), pieces(right)).fired);
    // No switch: a user renders the prompt by hand, the HF way without add_generation_prompt.
    std::vector<int64_t> by_hand = {tokenizer->special_id("<|endoftext|>"), tokenizer->special_id("<|im_start|>")};
    for (int64_t id : tokenizer->encode("user\nWhat is 2+2?")) by_hand.push_back(id);
    by_hand.push_back(tokenizer->special_id("<|im_end|>"));
    for (int64_t id : tokenizer->encode("\n")) by_hand.push_back(id);
    const DetectorVerdict v = prompt_not_training_prefix(trained.ids, answer_start, by_hand, pieces(trained.ids), pieces(by_hand));
    ASSERT_TRUE(v.fired);
    reftrain::testing::expect_contains(v.message, {"sampling has (the end)", "training had '<|im_start|>'"});
    // ... or with a system prompt training never had.
    const std::vector<int64_t> with_system = chat.render_prompt(Conversation{{{"system", "Be brief."}, {"user", "What is 2+2?"}}, "t"});
    EXPECT_TRUE(prompt_not_training_prefix(trained.ids, answer_start, with_system, pieces(trained.ids), pieces(with_system)).fired);
}

TEST_F(FailureDetectors, MaskAuditCatchesAHandMadeRenderingThatSupervisesTheUser) {
    const std::unique_ptr<Tokenizer> tokenizer = make_byte_tokenizer(ChatTemplate::special_tokens("chatml"));
    const ChatTemplate chat("chatml", *tokenizer);
    const std::vector<Conversation> conversations = {{{{"user", "What is 2+2?"}, {"assistant", "4"}}, "test"}};
    std::vector<RenderedConversation> rendered = {chat.render(conversations[0])};
    EXPECT_TRUE(audit_masks(chat, conversations, rendered).pass);
    // The user's collator marks every token after BOS as a label (train_on_inputs = true).
    std::fill(rendered[0].supervised.begin() + 1, rendered[0].supervised.end(), 1);
    const DiagnosticResult r = audit_masks(chat, conversations, rendered);
    EXPECT_FALSE(r.pass) << r.verdict;
}

// ---- numbers -----------------------------------------------------------------------------------------------

TEST_F(FailureDetectors, LossPlateauFiresOnARunThatCannotLearnWithoutAnySwitch) {
    std::ostringstream log;
    // No switch: a learning rate of 0 (a user's scheduler that never leaves 0).
    Trainer frozen(tiny_run("plateau_lr0", {"schedule.lr=0"}), log);
    std::vector<double> curve;
    for (int i = 0; i < 40; ++i) curve.push_back(frozen.train_step().loss);
    const int64_t V = frozen.model().config().vocab_size;
    EXPECT_TRUE(loss_plateau_near_uniform(curve, V).fired);
    Trainer learns(tiny_run("plateau_lr"), log);
    curve.clear();
    for (int i = 0; i < 40; ++i) curve.push_back(learns.train_step().loss);
    EXPECT_FALSE(loss_plateau_near_uniform(curve, V).fired) << "last loss " << curve.back();
}

TEST_F(FailureDetectors, GradientsDifferNamesTheTensorAndToleratesRounding) {
    Arena a("a"), b("b");
    for (Arena* arena : {&a, &b}) {
        arena->add("grad:w", DType::F32, {2, 2});
        arena->add("grad:g", DType::F32, {2});
        arena->allocate();
    }
    const float w[] = {1.0f, -2.0f, 0.5f, 0.25f}, g[] = {3.0f, 4.0f};
    for (Arena* arena : {&a, &b}) {
        std::memcpy(arena->get("grad:w").data, w, sizeof(w));
        std::memcpy(arena->get("grad:g").data, g, sizeof(g));
    }
    a.get("grad:w").ptr<float>()[0] *= 1.0f + 1e-7f;
    EXPECT_FALSE(gradients_differ(a, b, "a", "b").fired);
    a.get("grad:g").ptr<float>()[1] = 3.0f;
    const DetectorVerdict v = gradients_differ(a, b, "accumulated", "big-batch");
    ASSERT_TRUE(v.fired);
    reftrain::testing::expect_contains(v.message, {"grad:g by 0.25"});
}

TEST_F(FailureDetectors, PairedTTellsARealGainFromSeedNoise) {
    const std::vector<double> a = {2.00, 2.10, 1.95, 2.05, 2.02};
    const std::vector<double> real = {1.90, 2.01, 1.84, 1.96, 1.91};     // 0.09-0.11 better on every seed
    const std::vector<double> noise = {2.03, 2.05, 1.99, 2.01, 2.06};    // +-0.05, no consistent sign
    const PairedComparison r = paired_t(a, real);
    EXPECT_NEAR(r.mean_difference, -0.1, 1e-12);
    EXPECT_TRUE(r.significant()) << r.t;
    const PairedComparison n = paired_t(a, noise);
    EXPECT_FALSE(n.significant()) << n.t;
    EXPECT_DOUBLE_EQ(n.critical_t, 4.604);   // 99 %, 4 degrees of freedom
    EXPECT_DOUBLE_EQ(paired_t(a, noise, 0.95).critical_t, 2.776);
    reftrain::testing::expect_error([&] { paired_t(a, noise, 0.9); }, {"level must be 0.95 or 0.99"});
    reftrain::testing::expect_error([] { paired_t({1.0}, {2.0}); }, {"at least 2 runs"});
}

}  // namespace

// tests/test_invariants.cpp — debug/invariants.h: the registry (modes off/warn/fatal, per-name
// overrides, configure with did-you-mean, rate-limited warnings) and every built-in invariant in both
// directions: it fires on a constructed bad input with a message naming it, its likely cause and its
// doc page, and it stays silent on the good input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "debug/invariants.h"
#include "kernels/arena.h"
#include "kernels/cpu/ops.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

using testing::expect_contains;
using testing::expect_error;
constexpr int64_t kIgnore = cpu::kIgnoreIndex;

// A registry in warn mode writing to a string, so a test sees both the return value and the text.
struct WarnRegistry {
    Invariants inv;
    std::ostringstream out;
    WarnRegistry() {
        inv.set_default_mode(InvariantMode::warn);
        inv.set_stream(out);
    }
};

// The check returned false, counted one violation, and the message names the invariant, its likely
// cause and its doc page, plus the given details.
void expect_fired(WarnRegistry& r, const std::string& name, bool returned, const std::vector<std::string>& details) {
    EXPECT_FALSE(returned) << name << " did not fire";
    EXPECT_EQ(r.inv.violations(name), 1) << name;
    const std::string& message = r.inv.last_message(name);
    expect_contains(message, {"invariant " + name + " violated", r.inv.info(name).cause,
                              "docs/invariants.md#" + name});
    expect_contains(message, details);
    expect_contains(r.out.str(), {"warning: invariant " + name});
}

void expect_silent(WarnRegistry& r, const std::string& name, bool returned) {
    EXPECT_TRUE(returned) << name << " fired on good input:\n" << r.inv.last_message(name);
    EXPECT_EQ(r.inv.violations(name), 0) << name;
    EXPECT_GE(r.inv.evaluations(name), 1) << name << " was not evaluated";
    EXPECT_EQ(r.out.str(), "");
}

// ---- the registry ---------------------------------------------------------------------------------------

TEST(Invariants, BuiltinsAreRegisteredWithTheirDocumentedDefaults) {
    const std::map<std::string, InvariantMode> expected = {
        {"mask.has_supervised_tokens", InvariantMode::fatal},  {"mask.aligned_with_targets", InvariantMode::fatal},
        {"template.bos_exactly_once", InvariantMode::fatal},
        {"schedule.counts_optimizer_steps", InvariantMode::fatal}, {"schedule.completes_in_run", InvariantMode::warn},
        {"grad.zeroed_at_cycle_start", InvariantMode::fatal},  {"loss.finite", InvariantMode::fatal},
        {"loss.no_spike", InvariantMode::warn}, {"grad.finite_before_update", InvariantMode::fatal},
        {"optimizer.decay_only_matrices", InvariantMode::warn},
        {"data.split_disjoint", InvariantMode::fatal},
        {"init.loss_near_log_vocab", InvariantMode::warn},
        {"rl.kl_nonnegative", InvariantMode::warn},
        {"rl.reward_scale_only", InvariantMode::warn},
        {"rl.uniform_group_zero_advantage", InvariantMode::fatal},
        {"rl.advantages_bounded", InvariantMode::warn},
        {"rl.ratio_moves_after_first_epoch", InvariantMode::warn},
        {"rl.sampler_matches_trainer", InvariantMode::warn},
        {"rl.token_weight_independent_of_length", InvariantMode::warn},
        {"grad.finite_on_all_ranks", InvariantMode::warn},
        {"dist.params_in_sync", InvariantMode::fatal},
        {"dist.batches_disjoint", InvariantMode::warn},
        {"dist.step_matches_one_process", InvariantMode::warn},
    };
    Invariants inv;
    EXPECT_EQ(inv.names().size(), expected.size());
    for (const auto& [name, mode] : expected) {
        ASSERT_TRUE(inv.known(name)) << name;
        EXPECT_EQ(inv.mode(name), mode) << name << " defaults to " << mode_name(inv.mode(name));
        const InvariantInfo& info = inv.info(name);
        EXPECT_FALSE(info.what.empty() || info.cause.empty() || info.check.empty()) << name;
        EXPECT_EQ(info.doc(), "docs/invariants.md#" + name);
    }
}

TEST(Invariants, OffIsNotEvaluatedNotCountedNotPrinted) {
    WarnRegistry r;
    r.inv.set_mode("loss.finite", InvariantMode::off);
    EXPECT_TRUE(check_loss_finite(r.inv, std::nan(""), 7));
    EXPECT_EQ(r.inv.evaluations("loss.finite"), 0);
    EXPECT_EQ(r.inv.violations("loss.finite"), 0);
    EXPECT_EQ(r.inv.last_message("loss.finite"), "");
    EXPECT_EQ(r.out.str(), "");
    EXPECT_TRUE(r.inv.report("loss.finite", false, "ignored"));  // report itself honours off too
    EXPECT_EQ(r.inv.violations("loss.finite"), 0);
}

TEST(Invariants, WarnCountsPrintsToTheStreamAndGoesOn) {
    WarnRegistry r;
    EXPECT_FALSE(check_loss_finite(r.inv, std::numeric_limits<double>::infinity(), 7));
    EXPECT_TRUE(check_loss_finite(r.inv, 1.5, 8));
    EXPECT_EQ(r.inv.evaluations("loss.finite"), 2);
    EXPECT_EQ(r.inv.violations("loss.finite"), 1);
    expect_contains(r.out.str(), {"warning: invariant loss.finite violated", "step 7: loss = inf",
                                  "likely cause:", "check:", "see: docs/invariants.md#loss.finite"});
}

TEST(Invariants, FatalThrowsAnInvariantViolationNamingTheInvariant) {
    Invariants inv;  // loss.finite is fatal by default
    std::ostringstream out;
    inv.set_stream(out);
    try {
        check_loss_finite(inv, std::nan(""), 3);
        ADD_FAILURE() << "a NaN loss did not throw in fatal mode";
    } catch (const InvariantViolation& e) {
        EXPECT_EQ(e.name, "loss.finite");
        expect_contains(e.what(), {"invariant loss.finite violated", "step 3", "docs/invariants.md#loss.finite"});
    }
    EXPECT_EQ(inv.violations("loss.finite"), 1);
    EXPECT_EQ(out.str(), "");  // fatal throws; it does not also print
    // It is a reftrain::Error, so code that reports Errors reports it too.
    expect_error([&] { check_loss_finite(inv, std::nan(""), 4); }, {"loss.finite", "step 4"});
}

TEST(Invariants, PerNameOverrideBeatsTheDefaultWhichBeatsTheBuiltin) {
    Invariants inv;
    std::ostringstream out;
    inv.set_stream(out);
    EXPECT_EQ(inv.mode("init.loss_near_log_vocab"), InvariantMode::warn);  // builtin
    inv.set_default_mode(InvariantMode::fatal);
    EXPECT_EQ(inv.mode("init.loss_near_log_vocab"), InvariantMode::fatal);  // default replaces builtins
    inv.set_mode("loss.finite", InvariantMode::warn);
    inv.set_default_mode(InvariantMode::off);
    EXPECT_EQ(inv.mode("loss.finite"), InvariantMode::warn);  // the override survives a new default
    EXPECT_EQ(inv.mode("mask.has_supervised_tokens"), InvariantMode::off);
    EXPECT_FALSE(check_loss_finite(inv, std::nan(""), 1));
    EXPECT_TRUE(check_has_supervised_tokens(inv, 0, 10, 1));
    EXPECT_EQ(inv.violations("mask.has_supervised_tokens"), 0);
}

TEST(Invariants, ConfigureReadsDefaultAndNames) {
    Invariants inv;
    inv.configure(nlohmann::json::parse(R"({"default": "warn", "mask.has_supervised_tokens": "fatal",
                                            "init.loss_near_log_vocab": "off"})"));
    EXPECT_EQ(inv.mode("loss.finite"), InvariantMode::warn);
    EXPECT_EQ(inv.mode("mask.has_supervised_tokens"), InvariantMode::fatal);
    EXPECT_EQ(inv.mode("init.loss_near_log_vocab"), InvariantMode::off);
    inv.configure(nlohmann::json::object());  // nothing to change
    EXPECT_EQ(inv.mode("loss.finite"), InvariantMode::warn);
}

TEST(Invariants, ConfigureRefusesUnknownNamesAndModesWithASuggestion) {
    Invariants inv;
    expect_error([&] { inv.configure({{"mask.has_supervised_token", "warn"}}); },
                 {"invariants: unknown invariant 'mask.has_supervised_token'",
                  "did you mean 'mask.has_supervised_tokens'?"});
    expect_error([&] { inv.configure({{"defualt", "warn"}}); },
                 {"unknown invariant 'defualt'", "did you mean 'default'?"});
    expect_error([&] { inv.configure({{"loss.finite", "fatl"}}); },
                 {"invariants.loss.finite: unknown mode 'fatl'", "off, warn or fatal", "did you mean 'fatal'?"});
    expect_error([&] { inv.configure({{"loss.finite", true}}); }, {"invariants.loss.finite", "got true"});
    expect_error([&] { inv.configure(nlohmann::json::array()); }, {"invariants: must be a JSON object"});
    expect_error([&] { inv.configure({{"default", "off"}, {"zzz", "warn"}}, "run.json: invariants"); },
                 {"run.json: invariants: unknown invariant 'zzz'"});
    // A refused config changes nothing, not even the entries before the bad one.
    EXPECT_EQ(inv.mode("loss.finite"), InvariantMode::fatal);
    expect_error([&] { inv.set_mode("loss.finit", InvariantMode::off); }, {"did you mean 'loss.finite'?"});
    expect_error([&] { inv.report("no.such", true); }, {"unknown invariant 'no.such'"});
}

TEST(Invariants, WarnPrintsTheFirstThreeThenCountsAtPowersOfTen) {
    WarnRegistry r;
    for (int i = 0; i < 120; ++i) check_loss_finite(r.inv, std::nan(""), i);
    const std::string text = r.out.str();
    auto count = [&](const std::string& phrase) {
        int64_t n = 0;
        for (size_t at = text.find(phrase); at != std::string::npos; at = text.find(phrase, at + 1)) ++n;
        return n;
    };
    EXPECT_EQ(count("violated:"), 3) << text;  // full messages
    EXPECT_EQ(count("further violations of loss.finite are counted"), 1);
    EXPECT_EQ(count("loss.finite: 10 violations so far (latest: step 9: loss = nan)"), 1) << text;
    EXPECT_EQ(count("loss.finite: 100 violations so far"), 1);
    EXPECT_EQ(count("violations so far"), 2);
    EXPECT_EQ(r.inv.violations("loss.finite"), 120);
    expect_contains(r.inv.summary(), {"loss.finite: 120 of 120 evaluations violated"});
    EXPECT_EQ(r.inv.summary().find("mask."), std::string::npos);  // only names that failed
}

TEST(Invariants, AddRegistersAnotherLayersInvariant) {
    WarnRegistry r;
    r.inv.add({"env.reward_in_range", "a reward is outside the environment's range", "a reward scaled twice",
               "the reward wrapper", InvariantMode::fatal});
    EXPECT_FALSE(r.inv.report("env.reward_in_range", false, "reward = 3.5"));
    expect_contains(r.inv.last_message("env.reward_in_range"),
                    {"reward = 3.5", "a reward scaled twice", "docs/invariants.md#env.reward_in_range"});
    expect_error([&] { r.inv.add({"loss.finite", "", "", "", InvariantMode::warn}); }, {"already registered"});
}

// ---- each invariant, both directions -------------------------------------------------------------------

TEST(InvariantChecks, HasSupervisedTokens) {
    {
        WarnRegistry r;
        const std::vector<int64_t> targets = {kIgnore, kIgnore, 5, kIgnore};
        expect_silent(r, "mask.has_supervised_tokens", check_has_supervised_tokens(r.inv, targets, 1));
    }
    {
        WarnRegistry r;
        const std::vector<int64_t> targets(6, kIgnore);
        expect_fired(r, "mask.has_supervised_tokens", check_has_supervised_tokens(r.inv, targets, 4),
                     {"step 4: 0 of 6 targets are supervised"});
    }
}

// One conversation: BOS, a user header and content, assistant content 20 21 and its end-of-turn 2,
// then the template's "\n" (30), which is not supervised.
const std::vector<int64_t> kIds = {1, 10, 11, 20, 21, 2, 30};
const std::vector<uint8_t> kSupervised = {0, 0, 0, 1, 1, 1, 0};

TEST(InvariantChecks, MaskAlignedForOneConversation) {
    {
        WarnRegistry r;
        const std::vector<int64_t> targets = {kIgnore, kIgnore, 20, 21, 2, kIgnore, kIgnore};
        expect_silent(r, "mask.aligned_with_targets", check_mask_aligned(r.inv, kIds, kSupervised, targets, "ex #1"));
    }
    {   // mask-off-by-one: targets shifted, flags not (target[t] = ids[t + 1] where supervised[t])
        WarnRegistry r;
        const std::vector<int64_t> targets = {kIgnore, kIgnore, kIgnore, 21, 2, 30, kIgnore};
        expect_fired(r, "mask.aligned_with_targets", check_mask_aligned(r.inv, kIds, kSupervised, targets, "ex #1"),
                     {"ex #1: 2 of 7 targets wrong", "position 2: target -100, expected 20"});
    }
    {
        WarnRegistry r;
        const std::vector<int64_t> short_targets = {kIgnore};
        expect_fired(r, "mask.aligned_with_targets",
                     check_mask_aligned(r.inv, kIds, kSupervised, short_targets, "ex #2"), {"lengths differ"});
    }
}

// A packed (B=2, T=8) batch made from rows of T+1 tokens with a chosen rule for the targets.
struct Batch {
    std::vector<int64_t> inputs, targets;
};
enum class Shift { correct, targets_unshifted, mask_unshifted, mask_shifted_twice };

Batch make_batch(Shift shift) {
    const std::vector<std::vector<int64_t>> rows = {{1, 10, 11, 20, 21, 2, 30, 1, 10},
                                                    {1, 12, 22, 23, 24, 2, 30, 1, 12}};
    const std::vector<std::vector<uint8_t>> flags = {{0, 0, 0, 1, 1, 1, 0, 0, 0}, {0, 0, 1, 1, 1, 1, 0, 0, 0}};
    const size_t T = 8;
    Batch b;
    for (size_t r = 0; r < rows.size(); ++r) {
        const auto& x = rows[r];
        const auto& s = flags[r];
        for (size_t t = 0; t < T; ++t) {
            b.inputs.push_back(x[t]);
            int64_t y = kIgnore;
            switch (shift) {
                case Shift::correct: y = s[t + 1] ? x[t + 1] : kIgnore; break;
                case Shift::targets_unshifted: y = s[t] ? x[t] : kIgnore; break;
                case Shift::mask_unshifted: y = s[t] ? x[t + 1] : kIgnore; break;
                case Shift::mask_shifted_twice: y = (t + 2 <= T && s[t + 2]) ? x[t + 1] : kIgnore; break;
            }
            b.targets.push_back(y);
        }
    }
    return b;
}

TEST(InvariantChecks, MaskAlignedForAPackedBatch) {
    const char* name = "mask.aligned_with_targets";
    const int64_t eot = 2;
    {
        WarnRegistry r;
        const Batch b = make_batch(Shift::correct);
        expect_silent(r, name, check_mask_aligned_batch(r.inv, b.inputs, b.targets, 2, 8, eot, 5));
    }
    {
        WarnRegistry r;
        const Batch b = make_batch(Shift::targets_unshifted);
        expect_fired(r, name, check_mask_aligned_batch(r.inv, b.inputs, b.targets, 2, 8, eot, 5),
                     {"step 5, batch (2, 8)", "supervised targets are not the next token",
                      "row 0 position 3: target 20 but the next input is 21"});
    }
    {   // the targets are all right, only the mask is late by one: rule 1 cannot see it, rule 2 does
        WarnRegistry r;
        const Batch b = make_batch(Shift::mask_unshifted);
        expect_fired(r, name, check_mask_aligned_batch(r.inv, b.inputs, b.targets, 2, 8, eot, 5),
                     {"positions after an end-of-turn are supervised",
                      "row 0 position 5: the input is the end-of-turn token 2 and its target 30 is supervised"});
        EXPECT_EQ(r.inv.last_message(name).find("are not the next token (first"), std::string::npos);
        WarnRegistry without_eot;
        expect_silent(without_eot, name,
                      check_mask_aligned_batch(without_eot.inv, b.inputs, b.targets, 2, 8, /*eot=*/-1, 5));
    }
    {   // the mask early by one: the end-of-turn token is never a target, so the model never learns to stop
        WarnRegistry r;
        const Batch b = make_batch(Shift::mask_shifted_twice);
        expect_fired(r, name, check_mask_aligned_batch(r.inv, b.inputs, b.targets, 2, 8, eot, 5),
                     {"supervised runs do not end at an end-of-turn",
                      "row 0 position 3: a run of supervised targets ends with 21, not the end-of-turn token 2"});
    }
    {
        WarnRegistry r;
        const Batch b = make_batch(Shift::correct);
        expect_error([&] { check_mask_aligned_batch(r.inv, b.inputs, b.targets, 3, 8, eot, 5); }, {"B * T = 3 * 8"});
    }
}

TEST(InvariantChecks, BosExactlyOnce) {
    const char* name = "template.bos_exactly_once";
    {
        WarnRegistry r;
        expect_silent(r, name, check_bos_exactly_once(r.inv, kIds, 1, "task addition #0"));
    }
    const std::vector<std::pair<std::vector<int64_t>, std::string>> bad = {
        {{1, 1, 10, 20}, "occurs 2 times at positions 0, 1"},   // bos-twice
        {{10, 20, 2}, "occurs 0 times; the first token is 10"},  // bos-missing
        {{10, 1, 20}, "occurs 1 times at positions 1"},          // not first
    };
    for (const auto& [ids, phrase] : bad) {
        WarnRegistry r;
        expect_fired(r, name, check_bos_exactly_once(r.inv, ids, 1, "task addition #3"),
                     {"task addition #3: BOS (id 1) " + phrase});
    }
}

TEST(InvariantChecks, ScheduleCountsOptimizerSteps) {
    const char* name = "schedule.counts_optimizer_steps";
    // A 4-step warmup to 1e-3, then cosine over 16 steps: every step's value is distinct.
    auto schedule = [](int64_t s) {
        return s < 4 ? 1e-3 * static_cast<double>(s + 1) / 4.0
                     : 1e-3 * 0.5 * (1.0 + std::cos(3.141592653589793 * static_cast<double>(s - 4) / 12.0));
    };
    {
        WarnRegistry r;
        expect_silent(r, name, check_schedule_counts_optimizer_steps(r.inv, 3, schedule(3), schedule, 12, 4));
    }
    {   // scheduler-per-microbatch: the value of step 12 applied at optimizer step 3
        WarnRegistry r;
        expect_fired(r, name, check_schedule_counts_optimizer_steps(r.inv, 3, schedule(12), schedule, 12, 4),
                     {"optimizer step 3 (0-based) applied lr", "the schedule's value at step 12, the number of "
                      "micro-batches seen (grad_accum 4): the schedule counts micro-batches"});
    }
    {   // an LR set by hand, which the schedule never gives
        WarnRegistry r;
        expect_fired(r, name, check_schedule_counts_optimizer_steps(r.inv, 3, 0.123, schedule, 12, 4),
                     {"a value the schedule never takes"});
    }
}

TEST(InvariantChecks, ScheduleCountsOptimizerStepsSeesAUserLoopWithoutTheSwitch) {
    // A hand-written loop the way users write it: the scheduler is stepped inside the micro-batch
    // loop (scheduler.step() next to backward()), and the optimizer applies whatever it holds. No
    // bug switch is involved; the check sees the LR the optimizer applied.
    const char* name = "schedule.counts_optimizer_steps";
    auto schedule = [](int64_t s) { return 1e-3 * std::min<double>(1.0, static_cast<double>(s + 1) / 8.0); };
    WarnRegistry r;
    int64_t scheduler_calls = 0, fired = 0;
    double lr = schedule(0);
    for (int64_t step = 0; step < 4; ++step) {
        for (int micro = 0; micro < 4; ++micro) lr = schedule(scheduler_calls++);  // scheduler.step() per micro-batch
        const double applied = lr;  // optimizer.step() uses it
        fired += !check_schedule_counts_optimizer_steps(r.inv, step, applied, schedule, 4 * step, 4);
    }
    EXPECT_EQ(fired, 4) << r.out.str();
    EXPECT_EQ(r.inv.violations(name), 4);
}

TEST(InvariantChecks, RewardScaleOnly) {
    const char* name = "rl.reward_scale_only";
    const std::vector<double> raw = {1.0, 0.0, -0.5, 2.0};
    {
        WarnRegistry r;
        const std::vector<double> scaled = {0.25, 0.0, -0.125, 0.5};
        expect_silent(r, name, check_reward_scale_only(r.inv, raw, scaled, 0.99, 2.0, 1, 0));
    }
    {   // A user's wrapper that standardises rewards, (r - mean) / std: no bug switch involved.
        WarnRegistry r;
        double mean = 0.0, var = 0.0;
        for (double x : raw) mean += x / 4.0;
        for (double x : raw) var += (x - mean) * (x - mean) / 4.0;
        std::vector<double> standardised;
        for (double x : raw) standardised.push_back((x - mean) / std::sqrt(var));
        expect_fired(r, name, check_reward_scale_only(r.inv, raw, standardised, 0.99, 2.0, 3, 17),
                     {"update 3, rollout step 17, copy 1: a raw reward of 0 became -0.65"});
    }
    {   // CartPole's +1 everywhere, minus the running mean (1): every reward becomes 0.
        WarnRegistry r;
        expect_fired(r, name,
                     check_reward_scale_only(r.inv, std::vector<double>{1, 1}, std::vector<double>{0, 0}, 0.99, 1.0, 1, 0),
                     {"a raw reward of 1 became 0"});
    }
    {   // ... or, with a running mean a hair under 1, 2e-8: positive, common to every copy, but far
        // below what dividing by a return's std can give (0.0025 for gamma 0.99 and rewards of 1).
        WarnRegistry r;
        expect_fired(r, name,
                     check_reward_scale_only(r.inv, std::vector<double>{1, 1}, std::vector<double>{2e-8, 2e-8}, 0.99, 1.0, 1, 0),
                     {"a factor of 2e-08, below the least a return-std normaliser gives", "a mean was subtracted"});
        WarnRegistry ok;  // a legitimate scale for such a task: 1 / std(G) with std(G) up to 100
        expect_silent(ok, name,
                      check_reward_scale_only(ok.inv, std::vector<double>{1, 1}, std::vector<double>{0.01, 0.01}, 0.99, 1.0, 1, 0));
    }
    {   // Two copies scaled differently at one step.
        WarnRegistry r;
        expect_fired(r, name,
                     check_reward_scale_only(r.inv, std::vector<double>{1, 1}, std::vector<double>{0.5, 0.25}, 0.99, 1.0, 1, 0),
                     {"scaled by 0.5 and by 0.25 at the same step"});
    }
}

TEST(InvariantChecks, ScheduleCompletesInRun) {
    const char* name = "schedule.completes_in_run";
    {
        WarnRegistry r;
        expect_silent(r, name, check_schedule_completes_in_run(r.inv, "cosine", 100, 100, 4));
        expect_silent(r, name, check_schedule_completes_in_run(r.inv, "constant", 400, 100, 4));  // no decay to miss
    }
    {   // sized in micro-batches
        WarnRegistry r;
        expect_fired(r, name, check_schedule_completes_in_run(r.inv, "cosine", 400, 100, 4),
                     {"schedule.total_steps is 400 optimizer steps but the run makes 100", "25% of the way",
                      "sized in micro-batches"});
    }
    {
        WarnRegistry r;
        expect_fired(r, name, check_schedule_completes_in_run(r.inv, "wsd", 80, 100, 1),
                     {"the last 20 steps train at the floor"});
    }
}

TEST(InvariantChecks, GradZeroedAtCycleStart) {
    const char* name = "grad.zeroed_at_cycle_start";
    Arena grads("grads");
    grads.add("grad:w", DType::F32, {2, 3});
    grads.add("grad:norm", DType::F64, {4});
    grads.add("grad:half", DType::BF16, {2});
    grads.allocate();
    {
        WarnRegistry r;
        grads.get("grad:w").ptr<float>()[4] = -0.0f;  // -0 is zero
        expect_silent(r, name, check_grad_zeroed(r.inv, grads, 0));
    }
    {   // forgot-zero-grad: last step's gradient is still there
        WarnRegistry r;
        grads.get("grad:norm").ptr<double>()[2] = 0.25;
        grads.get("grad:half").ptr<uint16_t>()[1] = float_to_bf16(1.0f);
        expect_fired(r, name, check_grad_zeroed(r.inv, grads, 9),
                     {"step 9: 2 of 12 gradient elements in 2 of 3 tensors are not 0",
                      "first: 'grad:norm' (4) element 2 = 0.25"});
    }
}

TEST(InvariantChecks, LossFinite) {
    const char* name = "loss.finite";
    {
        WarnRegistry r;
        expect_silent(r, name, check_loss_finite(r.inv, 2.5, 1));
    }
    for (double loss : {std::nan(""), std::numeric_limits<double>::infinity()}) {
        WarnRegistry r;
        expect_fired(r, name, check_loss_finite(r.inv, loss, 12), {"step 12: loss = "});
    }
}

TEST(InvariantChecks, DecayOnlyMatrices) {
    const char* name = "optimizer.decay_only_matrices";
    Arena params("params");
    params.add("model.embed_tokens.weight", DType::F32, {16, 4});
    params.add("model.layers.0.input_layernorm.weight", DType::F32, {4});
    params.add("model.layers.0.mlp.up_proj.weight", DType::F32, {8, 4});
    params.allocate();
    {
        WarnRegistry r;
        expect_silent(r, name, check_decay_only_matrices(r.inv, params, [](const std::string&, const Tensor& p) {
            return p.ndim == 2;
        }));
    }
    {   // weight-decay-on-norms: everything decayed
        WarnRegistry r;
        expect_fired(r, name, check_decay_only_matrices(r.inv, params, [](const std::string&, const Tensor&) {
            return true;
        }), {"1 tensors that are not 2-D are decayed: model.layers.0.input_layernorm.weight (4)"});
    }
    {   // a matrix left out of the decayed group (by name, the way grouping bugs usually happen)
        WarnRegistry r;
        expect_fired(r, name, check_decay_only_matrices(r.inv, params, [](const std::string& n, const Tensor& p) {
            return p.ndim == 2 && n.find("embed") == std::string::npos;
        }), {"1 2-D tensors are not decayed: model.embed_tokens.weight (16, 4)"});
    }
}

TEST(InvariantChecks, SplitDisjoint) {
    const char* name = "data.split_disjoint";
    const std::vector<std::string> train = {"37+48", "1+2", "12+5"};
    const std::vector<std::string> val = {"9+9", "40+1"};
    const std::vector<std::string> leaky_val = {"9+9", "12+5"};
    {
        WarnRegistry r;
        expect_silent(r, name, check_split_disjoint(r.inv, train, val, "train", "val"));
    }
    {   // split-leak
        WarnRegistry r;
        expect_fired(r, name, check_split_disjoint(r.inv, train, leaky_val, "train", "val"),
                     {"1 of 3 train items also occur in val (2 items); first: \"12+5\""});
    }
    const std::vector<int64_t> a = {1, 5, 6, 2}, b = {1, 5, 7, 2}, a_again = {1, 5, 6, 2};
    EXPECT_EQ(hash_token_ids(a), hash_token_ids(a_again));
    EXPECT_NE(hash_token_ids(a), hash_token_ids(b));
    const std::vector<uint64_t> train_hashes = {hash_token_ids(a)};
    {
        WarnRegistry r;
        const std::vector<uint64_t> val_hashes = {hash_token_ids(b)};
        expect_silent(r, name, check_split_disjoint(r.inv, train_hashes, val_hashes, "train", "val"));
    }
    {
        WarnRegistry r;
        const std::vector<uint64_t> val_hashes = {hash_token_ids(b), hash_token_ids(a_again)};
        expect_fired(r, name, check_split_disjoint(r.inv, train_hashes, val_hashes, "train", "val"),
                     {"1 of 1 train items also occur in val (2 items, compared by hash); first: train item 0"});
    }
}

TEST(InvariantChecks, InitLossNearLogVocab) {
    const char* name = "init.loss_near_log_vocab";
    const double ln_v = std::log(512.0);
    for (double loss : {ln_v, ln_v + 0.9, ln_v - 0.9}) {
        WarnRegistry r;
        expect_silent(r, name, check_init_loss(r.inv, loss, 512));
    }
    {   // bad-init-scale
        WarnRegistry r;
        expect_fired(r, name, check_init_loss(r.inv, 14.0, 512), {"first loss 14 vs ln(512) = 6.23", "nats above",
                                                                   "tolerance 1"});
    }
    {   // too good before any update: a leak
        WarnRegistry r;
        expect_fired(r, name, check_init_loss(r.inv, 1.0, 512), {"nats below"});
    }
    {
        WarnRegistry r;
        expect_fired(r, name, check_init_loss(r.inv, std::nan(""), 512), {"not finite"});
    }
    {   // a tighter tolerance is the caller's to choose
        WarnRegistry r;
        EXPECT_FALSE(check_init_loss(r.inv, ln_v + 0.5, 512, 0.25));
    }
    WarnRegistry r;
    expect_error([&] { check_init_loss(r.inv, 1.0, 1); }, {"vocab_size must be at least 2"});
}

TEST(InvariantChecks, KlNonnegative) {
    const char* name = "rl.kl_nonnegative";
    // Three sequences of 2, 1 and 3 tokens: per-sequence sums 0.3, 0.1, 0.2.
    const std::vector<int64_t> lengths = {2, 1, 3};
    {
        WarnRegistry r;
        expect_silent(r, name, check_kl_nonnegative(r.inv, std::vector<double>{0.5, -0.2, 0.1, 0.1, 0.3, -0.2},
                                                    lengths, 4));
    }
    {   // a negative mean inside the noise: sums -0.3, 0.2, 0.0 (mean -0.033, SE 0.15) is not evidence
        WarnRegistry r;
        expect_silent(r, name, check_kl_nonnegative(r.inv, std::vector<double>{-0.1, -0.2, 0.2, 0.0, 0.1, -0.1},
                                                    lengths, 4));
    }
    {   // exactly 0 everywhere (policy == reference at the first update) is fine
        WarnRegistry r;
        expect_silent(r, name, check_kl_nonnegative(r.inv, std::vector<double>(6, 0.0), lengths, 0));
    }
    {   // negative-kl: every sequence clearly below 0 (sums -0.3, -0.1, -0.2: mean -0.2, SE 0.058)
        WarnRegistry r;
        expect_fired(r, name,
                     check_kl_nonnegative(r.inv, std::vector<double>{-0.5, 0.2, -0.1, -0.1, -0.3, 0.2}, lengths, 7),
                     {"update 7", "per-sequence k1 mean -0.2", "over 3 sampled sequences", "per-token k1 mean -0.1"});
    }
    {
        WarnRegistry r;
        expect_fired(r, name,
                     check_kl_nonnegative(r.inv, std::vector<double>{0.1, std::nan(""), 0.1, 0.1, 0.1, 0.1}, lengths, 2),
                     {"1 of 6 per-token k1 values are not finite"});
    }
    {   // one sequence: no standard error, so only finiteness is checked
        WarnRegistry r;
        expect_silent(r, name, check_kl_nonnegative(r.inv, std::vector<double>{-1.0, -1.0}, std::vector<int64_t>{2}, 0));
    }
    WarnRegistry r;
    expect_error([&] { check_kl_nonnegative(r.inv, std::vector<double>{0.1}, lengths, 0); }, {"sum to 6"});
}

// The three GRPO checks of the RL catalog, fed numbers written by hand (no trainer, no switch): the
// symptom a user's own code would produce.
TEST(InvariantChecks, AdvantagesBounded) {
    const char* name = "rl.advantages_bounded";
    const std::vector<double> rewards = {10.0, 9.999, 9.999, 9.999};  // a near-constant group of 4
    {   // the exact standardisation: the lone 10.0 sits (G - 1) / sqrt(G) = 1.5 sample stds above the mean
        WarnRegistry r;
        const std::vector<double> a = {1.5, -0.5, -0.5, -0.5};
        expect_silent(r, name, check_advantages_bounded(r.inv, rewards, a, 4, true, 2));
    }
    {   // std-cancellation: the std came out ~1e-4 of its true size
        WarnRegistry r;
        const std::vector<double> a = {7.5, -2.5, -2.5, -2.5};
        expect_fired(r, name, check_advantages_bounded(r.inv, rewards, a, 4, true, 2),
                     {"update 2", "1 of 1 groups", "|A| = 7.5", "bound of 1.5", "9.999"});
    }
    {   // nan-reward-poisons-batch: one NaN reward, the whole group NaN
        WarnRegistry r;
        const std::vector<double> bad = {1.0, std::nan(""), 0.0, 0.0};
        const std::vector<double> a(4, std::nan(""));
        expect_fired(r, name, check_advantages_bounded(r.inv, bad, a, 4, true, 7), {"update 7", "nan"});
    }
    {   // without std normalisation the bound is the group's reward range
        WarnRegistry r;
        const std::vector<double> plain = {1.0, 0.0, 0.0, 0.0};
        expect_silent(r, name, check_advantages_bounded(r.inv, plain, {{0.75, -0.25, -0.25, -0.25}}, 4, false, 1));
        WarnRegistry r2;
        expect_fired(r2, name, check_advantages_bounded(r2.inv, plain, {{1.5, -0.25, -0.25, -0.25}}, 4, false, 1),
                     {"bound of 1", "(max - min)"});
    }
}

TEST(InvariantChecks, RatioMovesAfterFirstEpoch) {
    const char* name = "rl.ratio_moves_after_first_epoch";
    {   // epoch 2 of an update whose policy stepped: the ratio moved
        WarnRegistry r;
        expect_silent(r, name, check_ratio_moves(r.inv, 1, 0.031, true, 4));
    }
    {   // exp(logp - logp.detach()): exactly 1 everywhere
        WarnRegistry r;
        expect_fired(r, name, check_ratio_moves(r.inv, 2, 0.0, true, 4), {"update 4", "inner epoch 3", "= 0"});
    }
    {   // the first epoch, or a policy that did not move, proves nothing either way
        WarnRegistry r;
        EXPECT_TRUE(check_ratio_moves(r.inv, 0, 0.0, false, 1));
        EXPECT_TRUE(check_ratio_moves(r.inv, 1, 0.0, false, 1));
        EXPECT_EQ(r.inv.violations(name), 0);
    }
}

TEST(InvariantChecks, TokenWeightIndependentOfLength) {
    const char* name = "rl.token_weight_independent_of_length";
    {   // one 1 / N for every token (rounding of w / A allowed)
        WarnRegistry r;
        expect_silent(r, name, check_token_weights_equal(r.inv, 1.0 + 1e-15, 3.5, 3.1, 2));
    }
    {   // per-completion means: lengths 2 and 7 give weights 1/2 and 1/7 per unit of advantage
        WarnRegistry r;
        expect_fired(r, name, check_token_weights_equal(r.inv, 3.5, 5.2, 3.0, 4),
                     {"update 4", "3.5 times the smallest", "wrong completions 5.2", "right ones 3"});
    }
}

// The data-parallel checks on hand-made per-rank numbers (the runs under mpirun: tests/dist/).
TEST(InvariantChecks, ParamsInSync) {
    const char* name = "dist.params_in_sync";
    {
        WarnRegistry r;
        expect_silent(r, name, check_params_in_sync(r.inv, {42, 42, 42}, 0));
    }
    {
        WarnRegistry r;
        expect_fired(r, name, check_params_in_sync(r.inv, {42, 42, 7, 9}, 50), {"step 50", "rank(s) 2, 3 differ", "over 4 ranks"});
    }
}

TEST(InvariantChecks, GradFiniteOnAllRanks) {
    const char* name = "grad.finite_on_all_ranks";
    {
        WarnRegistry r;
        expect_silent(r, name, check_grad_finite_on_all_ranks(r.inv, {1, 1}, 3));
    }
    {
        WarnRegistry r;
        expect_fired(r, name, check_grad_finite_on_all_ranks(r.inv, {1, 0, 1}, 3), {"step 4", "rank(s) 1 of 3", "every rank skips"});
    }
}

TEST(InvariantChecks, BatchesDisjoint) {
    const char* name = "dist.batches_disjoint";
    {
        WarnRegistry r;
        expect_silent(r, name, check_batches_disjoint(r.inv, {1, 2, 3}, 0));
    }
    {
        WarnRegistry r;
        expect_fired(r, name, check_batches_disjoint(r.inv, {1, 2, 1}, 0), {"step 1", "ranks 0 and 2", "same token ids"});
    }
}

TEST(InvariantChecks, StepMatchesOneProcess) {
    const char* name = "dist.step_matches_one_process";
    {   // rounding of the summation order
        WarnRegistry r;
        expect_silent(r, name, check_step_matches_one_process(r.inv, 3e-8, 1e-4, 2.0, 2.0, 2, 0));
    }
    {   // two ranks' means summed: twice the gradient, relative error 1
        WarnRegistry r;
        expect_fired(r, name, check_step_matches_one_process(r.inv, 1.0, 1e-4, 4.0, 2.0, 2, 0),
                     {"step 1", "over 2 ranks", "ratio 2"});
    }
}

TEST(InvariantChecks, SamplerMatchesTrainer) {
    const char* name = "rl.sampler_matches_trainer";
    const std::vector<double> sampler = {-0.10, -2.30, -0.70, -1.20};
    {   // the same weights scored twice: rounding only
        WarnRegistry r;
        const std::vector<double> trainer = {-0.1000001, -2.3000002, -0.6999999, -1.2000001};
        expect_silent(r, name, check_sampler_matches_trainer(r.inv, sampler, trainer, 1e-3, 1));
    }
    {   // sampled at temperature 0.7, scored at 1: every log-prob shifted
        WarnRegistry r;
        const std::vector<double> trainer = {-0.25, -1.90, -0.80, -1.05};
        expect_fired(r, name, check_sampler_matches_trainer(r.inv, sampler, trainer, 1e-3, 3),
                     {"update 3", "over 4 sampled tokens", "largest 0.4", "token 1"});
    }
}

TEST(InvariantChecks, UniformGroupZeroAdvantage) {
    const char* name = "rl.uniform_group_zero_advantage";
    // Two groups of 4: the first mixed, the second uniform at 0.1.
    const std::vector<double> rewards = {1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1};
    {
        WarnRegistry r;
        const std::vector<double> a = {0.675, -0.225, -0.225, -0.225, 0.0, 0.0, -0.0, 0.0};
        expect_silent(r, name, check_uniform_group_zero_advantage(r.inv, rewards, a, 4, 3));
    }
    {   // within the tolerance
        WarnRegistry r;
        const std::vector<double> a = {0.675, -0.225, -0.225, -0.225, 1e-13, 0.0, 0.0, -1e-13};
        expect_silent(r, name, check_uniform_group_zero_advantage(r.inv, rewards, a, 4, 3));
    }
    {   // grpo-zero-signal: the rounding residue of the mean over a residue-sized std
        WarnRegistry r;
        const std::vector<double> a = {0.675, -0.225, -0.225, -0.225, -0.427, -0.427, -0.427, -0.427};
        expect_fired(r, name, check_uniform_group_zero_advantage(r.inv, rewards, a, 4, 5),
                     {"update 5", "1 of 1 groups with uniform rewards (of 2)", "largest |A| = 0.427", "group 1",
                      "every reward 0.1"});
    }
    {
        WarnRegistry r;
        const std::vector<double> a = {0.675, -0.225, -0.225, -0.225, std::nan(""), 0.0, 0.0, 0.0};
        EXPECT_FALSE(check_uniform_group_zero_advantage(r.inv, rewards, a, 4, 0));
    }
    {   // its default is fatal
        Invariants inv;
        std::ostringstream sink;
        inv.set_stream(sink);
        const std::vector<double> a = {0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5};
        EXPECT_THROW(check_uniform_group_zero_advantage(inv, rewards, a, 4, 0), InvariantViolation);
    }
    WarnRegistry r;
    expect_error([&] { check_uniform_group_zero_advantage(r.inv, rewards, std::vector<double>(8, 0.0), 3, 0); },
                 {"do not form groups of 3"});
}

}  // namespace
}  // namespace reftrain

// probes/failures_grpo.cpp — the GRPO entries of the failure catalog: grpo-zero-signal, negative-kl,
// ratio-always-one, sampler-logprob-mismatch, std-cancellation and nan-reward-poisons-batch.
//
// Each half trains the tiny addition model of the other scenarios (byte tokenizer, d = 48, 2 layers) for
// a few dozen SFT steps, saves it, and runs a few GRPO updates from it through the real GrpoTrainer
// (train/grpo.h), with invariants in warn mode so the buggy half keeps going. The curve has one value per
// GRPO update. The detectors are the invariants the trainer checks in every update.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "kernels/error.h"
#include "probes/failure_kit.h"
#include "probes/failures.h"
#include "train/grpo.h"
#include "train/trainer.h"

namespace reftrain {

namespace fs = std::filesystem;

namespace {

using failure_kit::log_of;

std::string fmt(double v, int precision = 3) {
    std::ostringstream s;
    s << std::setprecision(precision) << v;
    return s.str();
}

// A weak SFT model: 40 steps of the catalog's tiny addition run (it answers in the right format, and
// mostly wrongly). Returns its checkpoint directory.
std::string weak_sft_checkpoint(const FailureContext& ctx) {
    FailureContext sft = ctx;
    sft.run_dir = (fs::path(ctx.run_dir) / "sft").string();
    const RunConfig config = failure_kit::scenario_config(sft, {"tracer.enabled=false"});
    Trainer trainer(config, log_of(ctx));
    for (int64_t i = 0; i < config.train.max_steps; ++i) trainer.train_step();
    return trainer.save_checkpoint();
}

GrpoConfig scenario_grpo_config(const FailureContext& ctx, const std::string& init, const std::vector<std::string>& extra) {
    std::vector<std::string> sets = {"init=" + init, "run_dir=" + (fs::path(ctx.run_dir) / "grpo").string(),
                                     "seed=" + std::to_string(ctx.seed),
                                     "threads=1", "sampling.prompts_per_update=8", "sampling.group_size=8",
                                     "sampling.max_new_tokens=4", "seq_len=32", "micro_batch_size=32",
                                     "eval.examples=0", "log_every=0", "invariants={\"default\": \"warn\"}"};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return load_grpo_config("", sets);
}

void read_invariant(FailureHalf& half, GrpoTrainer& trainer, const std::string& name) {
    const int64_t violations = trainer.invariants().violations(name);
    half.detector_fired = violations > 0;
    half.detector_message = trainer.invariants().last_message(name);
    half.numbers.push_back({"invariant " + name, concat(violations, " violations in ",
                                                        trainer.invariants().evaluations(name), " updates")});
}

// A format reward of 0.1 (a wrong answer that ends its turn properly) makes most groups of the weak model
// uniform at 0.1, a value fp32 cannot average exactly.
FailureHalf grpo_zero_signal(const FailureContext& ctx) {
    GrpoTrainer trainer(scenario_grpo_config(ctx, weak_sft_checkpoint(ctx),
                                             {"reward.format=0.1", "advantage.std_normalize=true", "updates=8",
                                              "optimizer.lr=0.001"}),
                        log_of(ctx));
    FailureHalf half{.curve_name = "zero-advantage group fraction"};
    double uniform = 0.0, worst = 0.0, grad_norm = 0.0;
    const int64_t updates = trainer.config().updates;
    for (int64_t i = 0; i < updates; ++i) {
        const GrpoUpdateMetrics m = trainer.update();
        half.curve.push_back(m.zero_advantage_fraction);
        uniform += m.zero_signal_fraction / static_cast<double>(updates);
        worst = std::max(worst, m.max_abs_uniform_advantage);
        grad_norm += m.grad_norm / static_cast<double>(updates);
    }
    double zero_advantage = 0.0;
    for (double v : half.curve) zero_advantage += v / static_cast<double>(updates);
    half.numbers.push_back({"groups with uniform rewards (mean)", fmt(uniform)});
    half.numbers.push_back({"groups with all advantages 0 (mean)", fmt(zero_advantage)});
    half.numbers.push_back({"largest |advantage| in a uniform group", fmt(worst)});
    half.numbers.push_back({"pre-clip gradient norm (mean)", fmt(grad_norm)});
    read_invariant(half, trainer, "rl.uniform_group_zero_advantage");
    return half;
}

// A KL penalty strong enough to matter; the policy moves fast at this learning rate. The format reward
// gives the weak model's groups some spread (ended its turn or not) even when every answer is wrong, so the
// policy moves on every seed (with correctness alone, seed 2's groups were all 0 and nothing moved).
FailureHalf negative_kl(const FailureContext& ctx) {
    GrpoTrainer trainer(scenario_grpo_config(ctx, weak_sft_checkpoint(ctx),
                                             {"kl_coef=0.5", "updates=8", "optimizer.lr=0.002", "reward.format=0.1"}),
                        log_of(ctx));
    FailureHalf half{.curve_name = "logged KL k1 (per token)"};
    double last_k3 = 0.0, last_measured = 0.0;
    for (int64_t i = 0; i < trainer.config().updates; ++i) {
        const GrpoUpdateMetrics m = trainer.update();
        half.curve.push_back(m.kl_k1);
        last_k3 = m.kl_k3;
        last_measured = m.kl_measured;
    }
    half.numbers.push_back({"logged KL k1 at the last update", fmt(half.curve.back())});
    half.numbers.push_back({"logged KL k3 at the last update", fmt(last_k3)});
    // Measured from the two models' log-probs on the sampled tokens, not through the loss's pairing.
    half.numbers.push_back({"measured KL (log p - log p_ref) at the last update", fmt(last_measured)});
    read_invariant(half, trainer, "rl.kl_nonnegative");
    return half;
}

double mean_of(const std::vector<double>& v, size_t from = 0) {
    double sum = 0.0;
    size_t n = 0;
    for (size_t i = from; i < v.size(); ++i) sum += v[i], ++n;
    return n ? sum / static_cast<double>(n) : 0.0;
}

// Four inner epochs per update: after the first optimizer step the policy differs from the one that
// sampled, so the ratio must move and the clip must start to hold some tokens.
FailureHalf ratio_always_one(const FailureContext& ctx) {
    GrpoTrainer trainer(scenario_grpo_config(ctx, weak_sft_checkpoint(ctx),
                                             {"loss.inner_epochs=4", "loss.clip_eps=0.2", "updates=6",
                                              "optimizer.lr=0.003", "reward.format=0.1"}),
                        log_of(ctx));
    FailureHalf half{.curve_name = "clip fraction, inner epochs 2-4 (mean)"};
    double deviation = 0.0, first_epoch_clip = 0.0;
    for (int64_t i = 0; i < trainer.config().updates; ++i) {
        const GrpoUpdateMetrics m = trainer.update();
        half.curve.push_back(mean_of(m.clip_fraction, 1));
        deviation = std::max(deviation, *std::max_element(m.ratio_max_deviation.begin() + 1, m.ratio_max_deviation.end()));
        first_epoch_clip = std::max(first_epoch_clip, m.clip_fraction.front());
    }
    half.numbers.push_back({"clip fraction on inner epochs 2-4 (mean over updates)", fmt(mean_of(half.curve))});
    half.numbers.push_back({"largest |ratio - 1| on inner epochs 2-4", fmt(deviation)});
    half.numbers.push_back({"clip fraction on the first inner epoch (largest)", fmt(first_epoch_clip)});
    read_invariant(half, trainer, "rl.ratio_moves_after_first_epoch");
    return half;
}

// Sampling at temperature 0.7 with the sampler's log-probs as p_old (as a vLLM-style setup does to save
// a forward): the trainer must score softmax(logits / 0.7) too.
FailureHalf sampler_logprob_mismatch(const FailureContext& ctx) {
    GrpoTrainer trainer(scenario_grpo_config(ctx, weak_sft_checkpoint(ctx),
                                             {"sampling.temperature=0.7", "loss.old_logprobs=\"sampler\"",
                                              "loss.inner_epochs=2", "updates=6", "optimizer.lr=0.002",
                                              "reward.format=0.1"}),
                        log_of(ctx));
    FailureHalf half{.curve_name = "mean |log p_trainer - log p_sampler| before the first step"};
    double first_clip = 0.0, ratio_mean = 0.0, gap_max = 0.0;
    for (int64_t i = 0; i < trainer.config().updates; ++i) {
        const GrpoUpdateMetrics m = trainer.update();
        half.curve.push_back(m.logprob_gap_mean);
        first_clip += m.clip_fraction.front() / static_cast<double>(trainer.config().updates);
        ratio_mean += m.ratio_mean.front() / static_cast<double>(trainer.config().updates);
        gap_max = std::max(gap_max, m.logprob_gap_max);
    }
    half.numbers.push_back({"mean |log p_trainer - log p_sampler| at the first update", fmt(half.curve.front())});
    half.numbers.push_back({"largest |log p_trainer - log p_sampler|", fmt(gap_max)});
    half.numbers.push_back({"mean ratio before any step (should be 1)", fmt(ratio_mean)});
    half.numbers.push_back({"clip fraction before any step (should be 0)", fmt(first_clip)});
    read_invariant(half, trainer, "rl.sampler_matches_trainer");
    return half;
}

// A reward model whose scores barely separate the answers, as learned reward models' often do: 10.0 for a
// right answer, 9.9995 for a wrong one that ends its turn, 9.999 for one that does not (the verifier's 1,
// 0.5 and 0, squeezed into 0.001). Every group that is not uniform is near-constant.
FailureHalf std_cancellation(const FailureContext& ctx) {
    GrpoTrainer trainer(scenario_grpo_config(ctx, weak_sft_checkpoint(ctx),
                                             {"reward.correct=1.0", "reward.format=0.5", "advantage.std_normalize=true",
                                              "updates=6", "optimizer.lr=0.001"}),
                        log_of(ctx));
    trainer.set_reward_hook([](const std::string&, const std::string&, double verifier) { return 9.999 + 0.001 * verifier; });
    FailureHalf half{.curve_name = "largest |advantage| in the update"};
    for (int64_t i = 0; i < trainer.config().updates; ++i) half.curve.push_back(trainer.update().max_abs_advantage);
    const int64_t G = trainer.config().group_size;
    half.numbers.push_back({"largest |advantage|", fmt(*std::max_element(half.curve.begin(), half.curve.end()))});
    half.numbers.push_back({"bound (G - 1) / sqrt(G) for G = " + std::to_string(G),
                            fmt((static_cast<double>(G) - 1.0) / std::sqrt(static_cast<double>(G)))});
    read_invariant(half, trainer, "rl.advantages_bounded");
    return half;
}

// The user's reward function parses the answer as a number and returns NaN when it cannot (Python's
// float('nan') on a parse failure), written the way such functions are written.
double parse_or_nan_reward(const std::string&, const std::string& response, double reward) {
    bool digit = false;
    for (char ch : response) digit = digit || (ch >= '0' && ch <= '9');
    return digit ? reward : std::nan("");
}

FailureHalf nan_reward_poisons_batch(const FailureContext& ctx) {
    GrpoTrainer trainer(scenario_grpo_config(ctx, weak_sft_checkpoint(ctx),
                                             {"reward.format=0.1", "updates=6", "optimizer.lr=0.002",
                                              "sampling.max_new_tokens=3"}),
                        log_of(ctx));
    trainer.set_reward_hook(parse_or_nan_reward);
    FailureHalf half{.curve_name = "pre-clip gradient norm"};
    int64_t nonfinite = 0, skipped = 0;
    for (int64_t i = 0; i < trainer.config().updates; ++i) {
        const GrpoUpdateMetrics m = trainer.update();
        half.curve.push_back(m.grad_norm);
        nonfinite += m.nonfinite_rewards;
        skipped += m.skipped_steps;
    }
    half.numbers.push_back({"non-finite rewards from the reward function", std::to_string(nonfinite)});
    half.numbers.push_back({"updates whose step was skipped (non-finite gradient)",
                            concat(skipped, " of ", trainer.config().updates)});
    read_invariant(half, trainer, "rl.advantages_bounded");
    return half;
}

// A format reward of 0.1 gives the weak model's groups a spread; completions run from 1 to 4 tokens.
FailureHalf grpo_length_bias(const FailureContext& ctx) {
    GrpoTrainer trainer(scenario_grpo_config(ctx, weak_sft_checkpoint(ctx),
                                             {"reward.format=0.1", "updates=8", "optimizer.lr=0.002"}),
                        log_of(ctx));
    FailureHalf half{.curve_name = "largest / smallest token weight per unit of advantage"};
    double incorrect_first = 0.0, incorrect_last = 0.0;
    for (int64_t i = 0; i < trainer.config().updates; ++i) {
        const GrpoUpdateMetrics m = trainer.update();
        half.curve.push_back(m.token_weight_spread);
        if (i == 0) incorrect_first = m.incorrect_length;
        incorrect_last = m.incorrect_length;
    }
    half.numbers.push_back({"token weight spread (mean over updates)", fmt(mean_of(half.curve))});
    half.numbers.push_back({"mean length of wrong completions, first / last update",
                            fmt(incorrect_first) + " / " + fmt(incorrect_last)});
    read_invariant(half, trainer, "rl.token_weight_independent_of_length");
    return half;
}

}  // namespace

std::vector<FailureScenario> grpo_failure_scenarios() {
    std::vector<FailureScenario> c;
    c.push_back({
        .id = "grpo-zero-signal",
        .title = "GRPO groups with identical rewards get advantages from rounding noise",
        .source = "nanochat RL (Karpathy): groups whose rewards are all equal carry no signal; Liu et al. 2025, "
                  "'Understanding R1-Zero-Like Training' (Dr. GRPO), on dividing by the group std",
        .bug = "group statistics in fp32 with (r - mean) / (std + 1e-8) and no rule for uniform groups; the reward "
               "gives 0.1 to a wrong answer that ends its turn",
        .symptom = "groups whose samples all earned 0.1 get advantages of -0.41 instead of 0: every such sample "
                   "is pushed down although nothing distinguished it",
        .detector = "invariant rl.uniform_group_zero_advantage (every update); the zero-advantage group fraction "
                    "falls below the uniform-reward fraction",
        .fix = "group statistics in fp64, a group with max == min gets advantage exactly 0, and a std eps that is "
               "not tiny (1e-4)",
        .run = grpo_zero_signal});
    c.push_back({
        .id = "negative-kl",
        .title = "The KL to the reference computed with the log-probs paired the wrong way round",
        .source = "John Schulman, 'Approximating KL Divergence' (2020): k1 = log p - log q on samples from p",
        .bug = "the log-ratio is log p_ref - log p instead of log p - log p_ref (kl_coef 0.5)",
        .symptom = "the logged KL goes negative as the policy moves, and the KL penalty's gradient pushes the policy "
                   "away from the reference instead of back to it",
        .detector = "invariant rl.kl_nonnegative (every update): k1's mean over sampled sequences + 3 standard errors "
                    "< 0",
        .fix = "form the log-ratio in one place, policy first: log p(x) - log p_ref(x) on tokens sampled from p",
        .run = negative_kl});
    c.push_back({
        .id = "ratio-always-one",
        .title = "The importance ratio is computed against a detached copy of itself",
        .source = "TRL issue #2769 and torchforge PR #571: old log-probs taken as logp.detach() inside the epoch loop",
        .bug = "the old log-probs are re-taken from the current forward at every inner epoch, so "
               "ratio = exp(logp - logp.detach()) = 1 (4 inner epochs, clip 0.2)",
        .symptom = "the clip fraction stays exactly 0 and the ratio exactly 1 on inner epochs 2-4, although the "
                   "policy took an optimizer step before each: PPO's trust region never acts",
        .detector = "invariant rl.ratio_moves_after_first_epoch: on an inner epoch >= 2 after a step, some token's "
                    "ratio must differ from 1",
        .fix = "take the old log-probs once per update (from the sampler or the first inner forward), detach them, "
               "and keep them for every inner epoch",
        .run = ratio_always_one});
    c.push_back({
        .id = "sampler-logprob-mismatch",
        .title = "The trainer scores the samples under another distribution than the sampler drew them from",
        .source = "TRL issue #4159 and verl PR #3694: generation temperature not applied when the trainer "
                  "recomputes log-probs",
        .bug = "samples drawn at temperature 0.7 (their log-probs kept as p_old), scored by the trainer at "
               "temperature 1",
        .symptom = "before any step the ratio is not 1 and the clip already holds tokens: the update is "
                   "silently off-policy, and the KL to the reference is biased from the first update",
        .detector = "invariant rl.sampler_matches_trainer: before the first step, the trainer's log-probs of the "
                    "sampled tokens equal the sampler's (mean gap <= 1e-3)",
        .fix = "score softmax(logits / T) with the sampler's T (and its top-k/top-p) wherever the trainer "
               "computes log-probs of sampled tokens",
        .run = sampler_logprob_mismatch});
    c.push_back({
        .id = "std-cancellation",
        .title = "The group std computed as E[r^2] - E[r]^2 in fp32 cancels to nothing",
        .source = "NeMo-RL PR #4158: one-pass variance in low precision",
        .bug = "the group variance as E[r^2] - E[r]^2 in fp32 (clamped at 0); a reward model whose scores differ "
               "by at most 0.001 (10.0 right, 9.9995 wrong, 9.999 unfinished)",
        .symptom = "near-constant groups get advantages of 4 to 9 where no sample can be more than 2.47 sample stds "
                   "from its group's mean: a 0.001 reward difference dominates the update",
        .detector = "invariant rl.advantages_bounded: |A| <= (G - 1) / sqrt(G) with std normalisation, every "
                    "advantage finite",
        .fix = "two-pass statistics in fp64: the mean first, then the mean of (r - mean)^2",
        .run = std_cancellation});
    c.push_back({
        .id = "nan-reward-poisons-batch",
        .title = "One NaN reward poisons its group and the whole update",
        .source = "ms-swift issue #8123: a reward function's NaN reached the advantages",
        .bug = "rewards go into the group statistics unchecked; the reward function returns NaN when the answer "
               "has no digit",
        .symptom = "the group's advantages are NaN, the gradient norm is NaN and the step is skipped: the run "
                   "completes and learns nothing from those updates",
        .detector = "invariant rl.advantages_bounded (every advantage finite, and bounded); "
                    "grad.finite_before_update counts the skipped steps",
        .fix = "check rewards are finite before normalising; leave a group holding a non-finite reward out of the "
               "update and name the completion",
        .run = nan_reward_poisons_batch});
    c.push_back({
        .id = "grpo-length-bias",
        .title = "Per-sequence length normalisation pushes the tokens of long answers less",
        .source = "Liu et al. 2025, 'Understanding R1-Zero-Like Training' (Dr. GRPO); TRL PR #3138",
        .bug = "each completion's loss is the mean over its own tokens, then averaged over the completions",
        .symptom = "a token of a 4-token completion gets a quarter of the push a 1-token completion's token gets: "
                   "long wrong answers are penalised less per token, and over a long run wrong answers grow longer",
        .detector = "invariant rl.token_weight_independent_of_length: every sampled token's weight per unit of "
                    "advantage is the same (read back from the weights the backward gets)",
        .fix = "one normaliser for the whole update: every sampled token weighs 1 / N (Dr. GRPO)",
        .run = grpo_length_bias});
    return c;
}

}  // namespace reftrain

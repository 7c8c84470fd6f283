// probes/failures_grpo.cpp — the GRPO entries of the failure catalog: grpo-zero-signal and negative-kl.
//
// Each half trains the tiny addition model of the other scenarios (byte tokenizer, d = 48, 2 layers) for
// a few dozen SFT steps, saves it, and runs a few GRPO updates from it through the real GrpoTrainer
// (train/grpo.h), with invariants in warn mode so the buggy half keeps going. The curve has one value per
// GRPO update. The detectors are the invariants the trainer checks in every update.
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
    return c;
}

}  // namespace reftrain

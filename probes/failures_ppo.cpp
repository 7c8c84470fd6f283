// probes/failures_ppo.cpp — the PPO entries of the failure catalog (docs/failures/README.md, RL table).
//
// Six of the seven train PPO on one of Andy Jones' probe environments (probes/envs.h), where the
// correct value and policy are known in closed form, so the detector is the probe's own verdict: V
// and pi against probe_cases() within the stated tolerances (probes/probe_runs.h, run_probe). Each
// half takes well under a second on one core. reward-mean-shift needs a task with a "will to live", so it trains
// on CartPole for 64k steps; its detector is the trainer's invariant rl.reward_scale_only.
#include "probes/failure_kit.h"
#include "probes/failures.h"

#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "kernels/error.h"
#include "probes/probe_runs.h"
#include "train/ppo.h"

namespace reftrain {

namespace {

using failure_kit::log_of;

std::string fmt(double v, int precision = 3) {
    std::ostringstream s;
    s << std::fixed << std::setprecision(precision) << v;
    return s.str();
}

std::string fmt_list(const std::vector<double>& v) {
    std::string s = "(";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + fmt(v[i]);
    return s + ")";
}

// An observation as written in probes/envs.h: (1), (-1), (0).
std::string fmt_obs(const std::vector<double>& v) {
    std::ostringstream s;
    s << "(";
    for (size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
    s << ")";
    return s.str();
}

// Trains PPO on `env` with its probe config; `curve_of` reads the curve's value after every update.
FailureHalf probe_half(const FailureContext& ctx, const std::string& env, const std::string& curve_name,
                       const std::function<double(PpoTrainer&)>& curve_of) {
    PpoConfig config = probe_ppo_config(env, {});
    config.run_dir = ctx.run_dir;  // metrics.jsonl of this half
    config.seed = ctx.seed;
    FailureHalf half{curve_name, {}, {}, false, ""};
    const ProbeReport report = run_probe(config, log_of(ctx), [&](PpoTrainer& trainer, const PpoUpdateMetrics&) {
        half.curve.push_back(curve_of(trainer));
    });
    std::string wrong;
    for (const ProbeCheck& c : report.checks) {
        const std::string at = fmt_obs(c.obs), given = at.substr(1, at.size() - 2);
        half.numbers.push_back({"V" + at + " learned / correct", fmt(c.value) + " / " + fmt(c.expected_value)});
        if (!c.expected_probs.empty()) {
            half.numbers.push_back({"pi(.|" + given + ") learned / correct",
                                    fmt_list(c.probs) + " / " + fmt_list(c.expected_probs)});
        }
        if (c.ok) continue;
        wrong += concat(wrong.empty() ? "" : "; ", "V", at, " = ", fmt(c.value), " (correct ", fmt(c.expected_value),
                        ")");
        if (!c.expected_probs.empty()) {
            wrong += concat(", pi(.|", given, ") = ", fmt_list(c.probs), " (correct ", fmt_list(c.expected_probs), ")");
        }
    }
    half.numbers.push_back({"probe verdict", report.solved ? "SOLVED" : "NOT SOLVED"});
    half.detector_fired = !report.solved;
    if (half.detector_fired) {
        half.detector_message = concat("probe ", env, " NOT SOLVED after ", report.updates.size(), " updates: ", wrong,
                                       "; tolerances |V - V*| <= ", fmt(report.value_tolerance), ", |pi - pi*| <= ",
                                       fmt(report.prob_tolerance));
    }
    return half;
}

// reward-mean-shift: CartPole with reward normalisation, 125 updates of 512 steps.
FailureHalf reward_mean_shift(const FailureContext& ctx) {
    PpoConfig config =
        load_ppo_config("", {"normalize_reward=true", "total_timesteps=64000", "threads=1", "log_every=0"});
    config.run_dir = ctx.run_dir;
    config.seed = ctx.seed;
    PpoTrainer trainer(config, log_of(ctx));
    FailureHalf half{.curve_name = "mean return of the last 20 episodes"};
    auto last_mean = [&](size_t count) {
        const std::vector<double>& r = trainer.episode_returns();
        count = std::min(count, r.size());
        double s = 0.0;
        for (size_t k = r.size() - count; k < r.size(); ++k) s += r[k];
        return count ? s / static_cast<double>(count) : 0.0;
    };
    int64_t first_update = 0, steps_violating = 0;
    for (int64_t u = 0; u < trainer.num_updates(); ++u) {
        const PpoUpdateMetrics m = trainer.update();
        half.curve.push_back(last_mean(20));
        if (m.reward_scale_violations > 0 && first_update == 0) first_update = m.update;
        steps_violating += m.reward_scale_violations;
    }
    half.numbers.push_back({"mean return, last 20 episodes (max 500)", fmt(last_mean(20), 1)});
    half.numbers.push_back(
        {"episodes in 64k steps (more = shorter)", std::to_string(trainer.episode_returns().size())});
    half.numbers.push_back({"rollout steps whose rewards were not only scaled",
                            concat(steps_violating, " of ", trainer.invariants().evaluations("rl.reward_scale_only"))});
    half.detector_fired = steps_violating > 0;
    if (half.detector_fired) {
        half.detector_message = concat("(first at update ", first_update, "; the last message:) ",
                                       trainer.invariants().last_message("rl.reward_scale_only"));
    }
    return half;
}

}  // namespace

std::vector<FailureScenario> ppo_failure_scenarios() {
    std::vector<FailureScenario> c;
    c.push_back({
        .id = "probe-value-loss",
        .title = "The value loss regresses V onto the wrong target",
        .source = "Andy Jones, 'Debugging RL, Without the Agonizing Pain' (2021): probe environment 1",
        .bug = "the value loss uses the advantages A = R - V as the target instead of the returns R",
        .symptom = "on probe1 (one step, reward +1, V(0) = 1) V settles at 0.5, the fixed point of V = 1 - V",
        .detector = "probe1 verdict: |V(0) - 1| <= 0.05 (reftrain probe run probe1)",
        .fix = "regress V onto the returns (advantages + old values), never onto the advantages",
        .run = [](const FailureContext& ctx) {
                   return probe_half(ctx, "probe1", "V(0) (correct: 1)",
                                     [](PpoTrainer& t) { return t.value({0.0}); });
               }});
    c.push_back({
        .id = "probe-backprop",
        .title = "The critic never sees the observation",
        .source = "Andy Jones, 'Debugging RL, Without the Agonizing Pain' (2021): probe environment 2",
        .bug = "the critic reads a cleared (all-zero) input buffer instead of the observation",
        .symptom = "on probe2 (reward = observation = +-1) V is the same for both observations, near their mean 0",
        .detector = "probe2 verdict: |V(o) - o| <= 0.05 for o = +1 and -1",
        .fix = "feed the critic the observation (check with a backprop-to-input test: dV/dobs must not be 0)",
        .run = [](const FailureContext& ctx) {
                   return probe_half(ctx, "probe2", "V(+1) - V(-1) (correct: 2)",
                                     [](PpoTrainer& t) { return t.value({1.0}) - t.value({-1.0}); });
               }});
    c.push_back({
        .id = "discount-across-reset",
        .title = "Discounting runs across episode boundaries",
        .source = "Andy Jones, 'Debugging RL, Without the Agonizing Pain' (2021): probe environment 3",
        .bug = "GAE ignores the done flags: the last step of an episode bootstraps from the next episode's "
               "first value",
        .symptom = "on probe3 (two steps, reward 0 then +1, gamma 0.9) V(0) and V(1) climb far above 0.9 and 1",
        .detector = "probe3 verdict: |V(0) - gamma| and |V(1) - 1| <= 0.05",
        .fix = "stop the GAE recursion at every episode end and the bootstrap at every termination",
        .run = [](const FailureContext& ctx) {
                   return probe_half(ctx, "probe3", "V(0) (correct: 0.9)",
                                     [](PpoTrainer& t) { return t.value({0.0}); });
               }});
    c.push_back({
        .id = "advantage-sign",
        .title = "The policy gradient has the advantage's sign flipped",
        .source = "Andy Jones, 'Debugging RL, Without the Agonizing Pain' (2021): probe environment 4",
        .bug = "the clipped surrogate uses -A instead of A",
        .symptom = "on probe4 (+1 for action 1, -1 for action 0) the policy learns action 0 and V goes to -1",
        .detector = "probe4 verdict: |pi(1|0) - 1| <= 0.02 and |V(0) - 1| <= 0.05",
        .fix = "minimise -A * ratio (maximise the advantage-weighted likelihood), and test the sign on probe4",
        .run = [](const FailureContext& ctx) {
                   return probe_half(ctx, "probe4", "pi(1 | 0) (correct: 1)",
                                     [](PpoTrainer& t) { return t.action_probs({0.0})[1]; });
               }});
    c.push_back({
        .id = "stale-experience",
        .title = "Observations are paired with the wrong actions and rewards",
        .source = "Andy Jones, 'Debugging RL, Without the Agonizing Pain' (2021): probe environment 5",
        .bug = "the rollout stores the observation after the step, beside the action and reward of the step",
        .symptom = "on probe5 (reward +1 when the action matches the observation's sign) the policy cannot condition on "
                   "the observation and stays near 50/50, V near 0",
        .detector = "probe5 verdict: pi(correct action | o) within 0.02 of 1 and V(o) within 0.05 of 1 for o = +-1",
        .fix = "store the observation the action was chosen from, before stepping the environment",
        .run = [](const FailureContext& ctx) {
                   return probe_half(ctx, "probe5", "mean pi(correct action | o) (correct: 1)", [](PpoTrainer& t) {
                       return 0.5 * (t.action_probs({1.0})[1] + t.action_probs({-1.0})[0]);
                   });
               }});
    c.push_back({
        .id = "reward-mean-shift",
        .title = "Reward normalisation subtracts the mean",
        .source = "John Schulman, 'The Nuts and Bolts of Deep RL Research' (2016): rescale rewards, don't shift them",
        .bug = "the reward normaliser standardises rewards (subtracts their running mean) instead of only "
               "scaling them",
        .symptom = "CartPole pays +1 every step; minus the running mean (~1) every reward is ~0, surviving is worth "
                   "nothing, and the return stays at the random policy's ~22",
        .detector = "invariant rl.reward_scale_only (every rollout step): the rewards before and after "
                    "normalisation must differ by one positive factor",
        .fix = "divide rewards by the running std of the discounted return; never subtract a mean",
        .run = reward_mean_shift});
    c.push_back({
        .id = "truncation-as-termination",
        .title = "A time limit is treated as the end of the task",
        .source = "Huang et al., 'The 37 Implementation Details of PPO' (2022) and cleanrl's ppo.py, which both "
                  "note it; Pardo et al., 'Time Limits in Reinforcement Learning' (2018)",
        .bug = "GAE treats a truncation like a termination: no bootstrap from V(final observation)",
        .symptom = "on probe-timelimit (+1 forever, cut at 10 steps, the observation does not show the time) V(0) "
                   "settles near 4.1 (the mean truncated return) instead of 1 / (1 - 0.9) = 10",
        .detector = "probe-timelimit verdict: |V(0) - 1 / (1 - gamma)| <= 0.5",
        .fix = "bootstrap a truncated episode with gamma * V(final observation); stop only the GAE recursion",
        .run = [](const FailureContext& ctx) {
                   return probe_half(ctx, "probe-timelimit", "V(0) (correct: 10)",
                                     [](PpoTrainer& t) { return t.value({0.0}); });
               }});
    return c;
}

}  // namespace reftrain

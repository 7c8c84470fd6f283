// train/ppo.h — Proximal Policy Optimization (Schulman et al. 2017) for the classic environments,
// with the core details of "The 37 Implementation Details of PPO" (Huang et al., ICLR blog track
// 2022) as cleanrl's ppo.py implements them, plus correct truncation handling (cleanrl's ppo.py treats
// a time-limit truncation as a termination; we bootstrap it, see probes/envs.h).
//
// One update = a rollout of num_steps steps in each of num_envs copies (the batch), GAE, then
// update_epochs passes over the batch in num_minibatches shuffled minibatches: per-minibatch advantage
// normalisation, clipped surrogate, (optionally clipped) value loss, entropy bonus, global gradient
// clipping, Adam with eps 1e-5, and the learning rate annealed linearly to 0 over the run.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "debug/invariants.h"
#include "kernels/bugs.h"

namespace reftrain {

// ---- pure functions, unit-tested against hand-computed values -----------------------------------

// Generalized advantage estimation (Schulman et al. 2016) over a rollout stored time-major:
// index t * N + i is step t of copy i, for T steps and N copies. For each step:
//   next_value = truncated[t,i] ? final_values[t,i]          (V of the last observation of the episode)
//              : t + 1 < T      ? values[t+1, i]
//              :                  last_values[i]              (V of the observation after the rollout)
//   delta      = rewards[t,i] + gamma * next_value * (1 - terminated[t,i]) - values[t,i]
//   A[t,i]     = delta + gamma * lambda * (1 - (terminated[t,i] or truncated[t,i])) * A[t+1,i]
//   returns    = A + values
// final_values is read only where truncated. The recursion stops at every episode end (terminated
// or truncated); the bootstrap stops only at terminations. Under bugs.discount_across_reset the
// recursion and the bootstrap ignore the flags; under bugs.truncation_as_termination a truncation
// is treated exactly like a termination.
// One rollout of T steps of N environment copies, time-major: index t * N + i is step t of copy i.
struct RolloutView {
    int64_t T = 0, N = 0;
    std::span<const double> rewards, values;          // (T N)
    std::span<const uint8_t> terminated, truncated;   // (T N) flags
    std::span<const double> final_values;             // (T N) V of the episode's last observation; read where truncated
    std::span<const double> last_values;              // (N) V of the observation after the rollout
};
void compute_gae(const RolloutView& rollout, double gamma, double lambda, std::vector<double>& advantages,
                 std::vector<double>& returns);

// (x - mean) / (std + eps) with the unbiased std (torch's .std()), in place. n = 1 leaves x - mean.
void normalize_advantages(std::span<double> x, double eps = 1e-8);

// Two estimators of KL(old || new) from the log-ratios r = log pi_new(a) - log pi_old(a) of actions
// drawn from pi_old (John Schulman, "Approximating KL Divergence", 2020):
//   k1 = mean(-r)                 unbiased, can be negative on a finite sample
//   k3 = mean((exp(r) - 1) - r)   unbiased, and >= 0 term by term
double approx_kl_k1(std::span<const double> log_ratio);
double approx_kl_k3(std::span<const double> log_ratio);

// 1 - Var(returns - values) / Var(returns): 1 = the critic explains the returns, 0 = no better than a
// constant, < 0 = worse. NaN when Var(returns) = 0 (said so in the logs, never hidden).
double explained_variance(std::span<const double> values, std::span<const double> returns);

// ---- the PPO loss of one minibatch ------------------------------------------------------------------

struct PpoLossTerms {
    double policy_loss = 0.0;   // mean(max(-A r, -A clip(r, 1 - c, 1 + c))), r = pi_new(a) / pi_old(a)
    double value_loss = 0.0;    // 0.5 mean((v - R)^2), or with value clipping 0.5 mean(max(unclipped, clipped))
    double entropy = 0.0;       // mean entropy of pi_new
    double total = 0.0;         // policy_loss - ent_coef * entropy + vf_coef * value_loss
    int64_t clipped = 0;        // rows with |r - 1| > clip_coef
};
struct PpoLossCoefficients {
    double clip_coef = 0.2, ent_coef = 0.01, vf_coef = 0.5;
    bool clip_vloss = true;
};
// M rows of a minibatch: the new network's outputs, and what the rollout stored for them.
struct PpoMinibatch {
    int64_t M = 0, A = 0;                              // rows, actions
    std::span<const double> logits, values;            // new: (M, A), (M)
    std::span<const int64_t> actions;                  // (M)
    std::span<const double> old_logprobs;              // (M) log pi_old(a)
    std::span<const double> advantages;                // (M) already normalised if they are to be
    std::span<const double> value_targets;             // (M) the returns
    std::span<const double> old_values;                // (M)
};
struct PpoLossGradients {
    std::vector<double> dlogits;    // (M, A) d total / d logits
    std::vector<double> dvalues;    // (M)    d total / d values
    std::vector<double> log_ratio;  // (M)    log pi_new(a) - log pi_old(a)
};
// The loss of a minibatch, with its gradients written to `out`. Under bugs.advantage_sign the policy
// term uses -A.
PpoLossTerms ppo_loss(const PpoMinibatch& batch, const PpoLossCoefficients& coefficients, PpoLossGradients& out);

// ---- the trainer -----------------------------------------------------------------------------------

struct PpoConfig {
    std::string env = "cartpole";
    int64_t num_envs = 4;
    int64_t num_steps = 128;           // per copy per rollout
    int64_t total_timesteps = 500000;  // env steps over all copies
    double learning_rate = 2.5e-4;
    bool anneal_lr = true;
    double gamma = 0.99;
    double gae_lambda = 0.95;
    int64_t num_minibatches = 4;
    int64_t update_epochs = 4;
    bool norm_adv = true;
    double clip_coef = 0.2;
    bool clip_vloss = true;
    double ent_coef = 0.01;
    double vf_coef = 0.5;
    double max_grad_norm = 0.5;
    double adam_eps = 1e-5;
    double target_kl = 0.0;            // > 0: stop the epochs of an update early past this k3 KL
    bool normalize_reward = false;     // scale rewards by a running std of the discounted return
    std::vector<int64_t> hidden = {64, 64};
    int64_t max_episode_steps = -1;    // < 0: the environment's own limit
    uint64_t seed = 1;
    int64_t threads = 1;
    std::string run_dir;               // metrics.jsonl and the final weights go here ("" = nowhere)
    bool tensorboard = true;           // also write TensorBoard event files into run_dir (train/run_log.h)
    int64_t log_every = 10;            // print one line every N updates (0 = quiet)
    // Bug switches of the failure catalog, {"advantage-sign": true} (kernels/bugs.h), for experiments:
    // the trainer turns them on at construction and says so. Empty = leave the switches as they are.
    nlohmann::json bugs = nlohmann::json(nlohmann::json::value_t::object);
};

// Reads a PPO config: defaults, then the JSON file (if path is not empty), then "key=value" sets.
// Unknown keys get a did-you-mean, wrong types are refused, naming the file and the key. A top-level
// "algorithm": "ppo" in the file is accepted and dropped (`reftrain rl` dispatches on it); any other
// algorithm is refused.
PpoConfig load_ppo_config(const std::string& path, const std::vector<std::string>& sets);
// `base` with the "key=value" overrides applied and the whole checked; `source` names it in errors.
PpoConfig apply_ppo_sets(const PpoConfig& base, const std::vector<std::string>& sets, const std::string& source);
nlohmann::json to_json(const PpoConfig& config);

// What one update logs (metrics.jsonl has one JSON object per update with these names).
struct PpoUpdateMetrics {
    int64_t update = 0;
    int64_t global_step = 0;              // env steps so far
    double learning_rate = 0.0;
    double policy_loss = 0.0, value_loss = 0.0, entropy = 0.0;   // means over the update's minibatches
    double approx_kl_k1 = 0.0, approx_kl_k3 = 0.0;   // of the last minibatch of the last epoch
    double clip_fraction = 0.0;           // over all minibatches of the update
    double explained_variance = 0.0;
    double grad_norm = 0.0;               // pre-clip, mean over minibatches
    int64_t episodes = 0;                 // episodes that ended during this rollout
    double episode_return = 0.0;          // their mean (NaN when none ended)
    double episode_length = 0.0;
    double mean_return_last_100 = 0.0;    // over the last 100 episodes of the run (NaN before any)
    // Reward normalisation (normalize_reward), at this rollout's last step: the scale
    // 1 / sqrt(Var(discounted return) + 1e-8) (1 when off), and the rollout steps whose normalised
    // rewards were not the raw ones times one positive factor (invariant rl.reward_scale_only).
    double reward_scale = 1.0;
    int64_t reward_scale_violations = 0;
    int64_t epochs = 0;                   // epochs run (fewer than update_epochs when target_kl stopped it)
    double seconds = 0.0;                 // wall time since the start of the run
};

class ActorCritic;

class PpoTrainer {
public:
    explicit PpoTrainer(const PpoConfig& config, std::ostream& log);
    ~PpoTrainer();

    // One rollout + update; returns its metrics (also appended to metrics.jsonl, printed per log_every).
    PpoUpdateMetrics update();
    int64_t num_updates() const;          // total_timesteps / (num_envs * num_steps)
    // All updates; returns the metrics of each.
    std::vector<PpoUpdateMetrics> run();

    ActorCritic& agent();
    const PpoConfig& config() const { return config_; }
    // The PPO invariants (rl.reward_scale_only), their counts and last messages.
    Invariants& invariants();
    // Every episode finished so far, in order.
    const std::vector<double>& episode_returns() const;

    // V(obs) and pi(. | obs) of the current agent at one observation.
    double value(const std::vector<double>& obs);
    std::vector<double> action_probs(const std::vector<double>& obs);

private:
    struct Impl;
    PpoConfig config_;
    Bugs bugs_before_;               // the switches as they were before config.bugs; restored at the end
    std::unique_ptr<Impl> impl_;
};

}  // namespace reftrain

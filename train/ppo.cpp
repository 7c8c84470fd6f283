// train/ppo.cpp — PPO as in train/ppo.h: the pure functions (GAE, advantage normalisation, KL
// estimators, explained variance, the minibatch loss), the strict config loader, the trainer, and the
// probe runs.
//
// Read it next to cleanrl's ppo.py and Huang et al., "The 37 Implementation Details of PPO"; the
// blog's numbered core details ("detail 5" = GAE, ...) are named where they happen. Two differences
// on purpose: a time-limit truncation is bootstrapped with V(final observation) instead of being
// treated as a termination, and the loss's gradient is written out by hand (the actor and critic
// have explicit backward passes, no autograd), each term under the formula it differentiates.
//
// Bug switches (kernels/bugs.h) of the RL failure catalog sit beside the correct lines:
// probe_value_loss, probe_backprop, discount_across_reset, truncation_as_termination, advantage_sign,
// stale_experience and reward_mean_shift.
#include "train/ppo.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <numeric>
#include <sstream>

#include "debug/invariants.h"
#include "kernels/bugs.h"
#include "kernels/cpu/blas.h"
#include "kernels/error.h"
#include "kernels/json_strict.h"
#include "kernels/random.h"
#include "model/mlp.h"
#include "probes/envs.h"
#include "train/adamw.h"
#include "train/config_fields.h"
#include "train/grad_clip.h"
#include "train/run_config.h"
#include "train/run_log.h"

namespace reftrain {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}

// ---- pure functions ----------------------------------------------------------------------------------

void compute_gae(const RolloutView& rollout, double gamma, double lambda, std::vector<double>& advantages,
                 std::vector<double>& returns) {
    const auto [T, N, rewards, values, terminated, truncated, final_values, last_values] = rollout;
    const size_t n = static_cast<size_t>(T * N);
    check(T > 0 && N > 0, "compute_gae: T and N must be > 0, got T=", T, " N=", N);
    check(rewards.size() == n && values.size() == n && terminated.size() == n && truncated.size() == n &&
              final_values.size() == n,
          "compute_gae: rewards, values, terminated, truncated and final_values must each hold T*N = ", n,
          " entries; got ", rewards.size(), ", ", values.size(), ", ", terminated.size(), ", ", truncated.size(), ", ",
          final_values.size());
    check(last_values.size() == static_cast<size_t>(N), "compute_gae: last_values must hold N = ", N, " entries, got ",
          last_values.size());
    advantages.assign(n, 0.0);
    returns.assign(n, 0.0);
    for (int64_t i = 0; i < N; ++i) {
        double next_advantage = 0.0;  // A[t+1, i]
        for (int64_t t = T - 1; t >= 0; --t) {
            const size_t k = static_cast<size_t>(t * N + i);
            bool ends_bootstrap = terminated[k] != 0;                   // the value after a termination is 0
            bool ends_recursion = terminated[k] != 0 || truncated[k] != 0;  // the next step is another episode
            bool bootstrap_from_final = truncated[k] != 0;
            if (bugs().truncation_as_termination) {
                // BUG truncation-as-termination: the time limit is taken for the end of the MDP.
                ends_bootstrap = terminated[k] != 0 || truncated[k] != 0;
            }
            if (bugs().discount_across_reset) {
                // BUG discount-across-reset: the flags are ignored; the next episode's first value
                // (and advantage) leak into this episode's last step.
                ends_bootstrap = ends_recursion = bootstrap_from_final = false;
            }
            const double next_value = bootstrap_from_final ? final_values[k]
                                      : t + 1 < T          ? values[static_cast<size_t>((t + 1) * N + i)]
                                                           : last_values[static_cast<size_t>(i)];
            const double delta = rewards[k] + gamma * next_value * (ends_bootstrap ? 0.0 : 1.0) - values[k];
            next_advantage = delta + gamma * lambda * (ends_recursion ? 0.0 : 1.0) * next_advantage;
            advantages[k] = next_advantage;
            returns[k] = next_advantage + values[k];
        }
    }
}

void normalize_advantages(std::span<double> x, double eps) {
    const size_t n = x.size();
    if (n == 0) return;
    double mean = 0.0;
    for (double v : x) mean += v;
    mean /= static_cast<double>(n);
    if (n == 1) {
        x[0] -= mean;
        return;
    }
    double ss = 0.0;
    for (double v : x) ss += (v - mean) * (v - mean);
    const double std = std::sqrt(ss / static_cast<double>(n - 1));  // unbiased, as torch's .std()
    for (double& v : x) v = (v - mean) / (std + eps);
}

double approx_kl_k1(std::span<const double> log_ratio) {
    if (log_ratio.empty()) return 0.0;
    double s = 0.0;
    for (double r : log_ratio) s += -r;
    return s / static_cast<double>(log_ratio.size());
}

double approx_kl_k3(std::span<const double> log_ratio) {
    if (log_ratio.empty()) return 0.0;
    double s = 0.0;
    // expm1 keeps (e^r - 1) - r >= 0 in floating point too for tiny r (no cancellation below 0).
    for (double r : log_ratio) s += std::expm1(r) - r;
    return s / static_cast<double>(log_ratio.size());
}

double explained_variance(std::span<const double> values, std::span<const double> returns) {
    check(values.size() == returns.size(), "explained_variance: ", values.size(), " values but ", returns.size(),
          " returns");
    const size_t n = returns.size();
    if (n == 0) return kNaN;
    auto variance = [n](auto&& at) {  // population variance, as np.var
        double mean = 0.0;
        for (size_t i = 0; i < n; ++i) mean += at(i);
        mean /= static_cast<double>(n);
        double ss = 0.0;
        for (size_t i = 0; i < n; ++i) ss += (at(i) - mean) * (at(i) - mean);
        return ss / static_cast<double>(n);
    };
    const double var_returns = variance([&](size_t i) { return returns[i]; });
    if (var_returns == 0.0) return kNaN;
    const double var_residual = variance([&](size_t i) { return returns[i] - values[i]; });
    return 1.0 - var_residual / var_returns;
}

// ---- the PPO loss ----------------------------------------------------------------------------------------

PpoLossTerms ppo_loss(const PpoMinibatch& batch, const PpoLossCoefficients& coefficients, PpoLossGradients& out) {
    const auto [M, A, logits, values, actions, old_logprobs, advantages, value_targets, old_values] = batch;
    auto& [dlogits, dvalues, log_ratio] = out;
    const size_t rows = static_cast<size_t>(M);
    check(M > 0 && A > 0 && logits.size() >= rows * static_cast<size_t>(A) && values.size() >= rows &&
              actions.size() == rows && old_logprobs.size() == rows && advantages.size() == rows &&
              value_targets.size() == rows && old_values.size() == rows,
          "ppo_loss: expected logits (M, A) = (", M, ", ", A, ") and M entries of values, actions, old log-probs, "
          "advantages, value targets and old values");
    const double c = coefficients.clip_coef, inv_m = 1.0 / static_cast<double>(M);
    std::vector<double> logits_copy(logits.begin(), logits.begin() + static_cast<std::ptrdiff_t>(rows * A)), logp;
    log_softmax_rows(logits_copy, M, A, logp);
    dlogits.assign(rows * static_cast<size_t>(A), 0.0);
    dvalues.assign(rows, 0.0);
    log_ratio.resize(rows);
    PpoLossTerms terms;
    for (size_t r = 0; r < rows; ++r) {
        const double* lp = &logp[r * static_cast<size_t>(A)];
        double* dz = &dlogits[r * static_cast<size_t>(A)];
        const int64_t a = actions[r];
        check(a >= 0 && a < A, "ppo_loss: action ", a, " of row ", r, " is outside [0, ", A, ")");
        log_ratio[r] = lp[a] - old_logprobs[r];  // log pi_new(a) - log pi_old(a)
        const double ratio = std::exp(log_ratio[r]);
        terms.clipped += std::fabs(ratio - 1.0) > c;

        // Clipped surrogate (detail 8): max(-A r, -A clip(r, 1 - c, 1 + c)).
        double adv = advantages[r];
        if (bugs().advantage_sign) {
            adv = -adv;  // BUG advantage-sign: the policy climbs towards the worse actions
        }
        const double unclipped_term = -adv * ratio, clipped_term = -adv * std::clamp(ratio, 1.0 - c, 1.0 + c);
        terms.policy_loss += std::max(unclipped_term, clipped_term) * inv_m;
        // d/dlog pi(a): -A r where the unclipped term is the max (or the clip is inactive and the two
        // agree); 0 where the clipped term wins, being flat in r there. dlog pi(a)/dz_j = [j = a] - p_j.
        const double dlogp = unclipped_term >= clipped_term ? -adv * ratio * inv_m : 0.0;
        for (int64_t j = 0; j < A; ++j) dz[j] += dlogp * ((j == a ? 1.0 : 0.0) - std::exp(lp[j]));

        // Entropy bonus (detail 10): total -= ent_coef * mean(H), H = -sum_j p_j log p_j,
        // dH/dz_j = -p_j (log p_j + H).
        const double h = categorical_entropy(lp, A);
        terms.entropy += h * inv_m;
        for (int64_t j = 0; j < A; ++j) dz[j] += coefficients.ent_coef * inv_m * std::exp(lp[j]) * (lp[j] + h);

        // Value loss (detail 9): 0.5 (v - R)^2, or with clipping 0.5 max((v - R)^2, (v_clip - R)^2) with
        // v_clip = v_old + clip(v - v_old, -c, c). d/dv = v - R, except where the clipped term wins
        // while its clamp is active (flat in v there).
        const double v = values[r], target = value_targets[r];
        double dv = v - target;
        if (coefficients.clip_vloss) {
            const double v_clipped = old_values[r] + std::clamp(v - old_values[r], -c, c);
            const double unclipped = (v - target) * (v - target), clipped = (v_clipped - target) * (v_clipped - target);
            terms.value_loss += 0.5 * std::max(unclipped, clipped) * inv_m;
            if (unclipped < clipped && std::fabs(v - old_values[r]) > c) dv = 0.0;
        } else {
            terms.value_loss += 0.5 * (v - target) * (v - target) * inv_m;
        }
        dvalues[r] = coefficients.vf_coef * dv * inv_m;
    }
    terms.total = terms.policy_loss - coefficients.ent_coef * terms.entropy + coefficients.vf_coef * terms.value_loss;
    return terms;
}

// ---- config --------------------------------------------------------------------------------------------

namespace {

// Every key of a PPO config once (cleanrl's names): path, then the member it sets.
const ConfigFields<PpoConfig>& ppo_fields() {
    using P = PpoConfig;
    static const ConfigFields<PpoConfig> fields = [] {
        ConfigFields<PpoConfig> f;
        f.add("env", &P::env).add("num_envs", &P::num_envs).positive().add("num_steps", &P::num_steps).positive();
        f.add("total_timesteps", &P::total_timesteps).add("learning_rate", &P::learning_rate).positive();
        f.add("anneal_lr", &P::anneal_lr).add("gamma", &P::gamma).between(0, 1);
        f.add("gae_lambda", &P::gae_lambda).between(0, 1);
        f.add("num_minibatches", &P::num_minibatches).positive().add("update_epochs", &P::update_epochs).positive();
        f.add("norm_adv", &P::norm_adv).add("clip_coef", &P::clip_coef).positive().add("clip_vloss", &P::clip_vloss);
        f.add("ent_coef", &P::ent_coef).non_negative().add("vf_coef", &P::vf_coef).non_negative();
        f.add("max_grad_norm", &P::max_grad_norm);
        f.add("adam_eps", &P::adam_eps).positive().add("target_kl", &P::target_kl);
        f.add("normalize_reward", &P::normalize_reward).add("hidden", &P::hidden);
        f.add("max_episode_steps", &P::max_episode_steps).add("seed", &P::seed).add("threads", &P::threads).non_negative();
        f.add("run_dir", &P::run_dir).add("tensorboard", &P::tensorboard);
        f.add("log_every", &P::log_every).non_negative().add("bugs", &P::bugs);
        return f;
    }();
    return fields;
}

}  // namespace

json to_json(const PpoConfig& c) { return ppo_fields().write(c); }

namespace {

PpoConfig parse_ppo_config(const json& j, const std::string& source) {
    PpoConfig c;
    const json& hidden = j.at("hidden");
    const bool widths = hidden.is_array() && std::all_of(hidden.begin(), hidden.end(), [](const json& h) {
        return h.is_number_integer() && h.get<int64_t>() > 0;
    });
    check(widths, source, ": 'hidden' must be a list of positive integers (layer widths), got ", hidden.dump());
    ppo_fields().read(j, c, source);
    check(!c.hidden.empty(), source, ": 'hidden' must name at least one layer width, got []");
    check_bug_switches(c.bugs, source);

    const std::vector<std::string> envs = env_names();
    if (std::find(envs.begin(), envs.end(), c.env) == envs.end()) {
        const std::string closest = closest_name(c.env, envs);
        std::string known;
        for (const std::string& e : envs) known += (known.empty() ? "" : ", ") + e;
        fail(source, ": 'env' is \"", c.env, "\", not an environment",
             closest.empty() ? std::string() : concat(" (did you mean '", closest, "'?)"), "; known: ", known);
    }
    const int64_t batch = c.num_envs * c.num_steps;
    check(c.total_timesteps >= batch, source, ": 'total_timesteps' = ", c.total_timesteps,
          " is less than one rollout (num_envs * num_steps = ", batch, ")");
    check(batch % c.num_minibatches == 0, source, ": 'num_minibatches' = ", c.num_minibatches,
          " must divide the batch num_envs * num_steps = ", batch);
    return c;
}

}  // namespace

PpoConfig load_ppo_config(const std::string& path, const std::vector<std::string>& sets) {
    const MergedConfig merged = merge_config_sources(to_json(PpoConfig{}), "PPO config", "ppo", path, sets);
    return parse_ppo_config(merged.json, merged.source);
}

PpoConfig apply_ppo_sets(const PpoConfig& base, const std::vector<std::string>& sets, const std::string& source) {
    const MergedConfig merged = merge_config_sources(to_json(base), "PPO config", "ppo", "", sets);
    return parse_ppo_config(merged.json, sets.empty() ? source : source + " with its --set overrides");
}

// ---- reward normalisation --------------------------------------------------------------------------

namespace {

// Running mean and variance over batches (Chan et al.'s parallel update), as gymnasium's
// RunningMeanStd: starts at mean 0, var 1, count 1e-4.
struct RunningMeanStd {
    double mean = 0.0, var = 1.0, count = 1e-4;
    void update(const std::vector<double>& batch) {
        const double n = static_cast<double>(batch.size());
        double batch_mean = 0.0, batch_var = 0.0;
        for (double x : batch) batch_mean += x;
        batch_mean /= n;
        for (double x : batch) batch_var += (x - batch_mean) * (x - batch_mean);
        batch_var /= n;
        const double delta = batch_mean - mean, total = count + n;
        mean += delta * n / total;
        var = (var * count + batch_var * n + delta * delta * count * n / total) / total;
        count = total;
    }
};

// Gymnasium's NormalizeReward (Huang et al. detail "reward scaling"): each copy keeps its discounted
// return G <- gamma * G + r (reset at the episode's end); rewards are divided by the running std of G.
// They are never shifted: a constant added to every reward changes which policy is optimal, e.g. a
// negative reward per step makes ending the episode early the goal (Schulman, "Nuts and Bolts").
class RewardNormalizer {
public:
    RewardNormalizer(int64_t num_envs, double gamma) : gamma_(gamma), discounted_(static_cast<size_t>(num_envs), 0.0) {}

    // Updates the statistics with this step's raw rewards and scales them in place.
    void normalize(std::vector<double>& rewards, const std::vector<uint8_t>& terminated,
                   const std::vector<uint8_t>& truncated) {
        for (size_t i = 0; i < rewards.size(); ++i) discounted_[i] = gamma_ * discounted_[i] + rewards[i];
        return_stats_.update(discounted_);
        if (bugs().reward_mean_shift) reward_stats_.update(rewards);
        for (double& r : rewards) r = apply(r);
        for (size_t i = 0; i < rewards.size(); ++i) {
            if (terminated[i] || truncated[i]) discounted_[i] = 0.0;
        }
    }
    double scale() const { return 1.0 / std::sqrt(return_stats_.var + 1e-8); }
    // The map the last normalize() applied, for one raw reward.
    double apply(double reward) const {
        if (bugs().reward_mean_shift) {
            return (reward - reward_stats_.mean) * scale();  // BUG reward-mean-shift: standardised, mean removed
        } else {
            return reward * scale();
        }
    }

private:
    double gamma_;
    std::vector<double> discounted_;  // (N) each copy's discounted return so far
    RunningMeanStd return_stats_, reward_stats_;
};

// Samples from the categorical distribution with log-probabilities logp (A) by inverse CDF.
int64_t sample_categorical(const double* logp, int64_t A, Rng& rng) {
    const double u = rng.uniform();
    double cumulative = 0.0;
    for (int64_t a = 0; a < A; ++a) {
        cumulative += std::exp(logp[a]);
        if (u < cumulative) return a;
    }
    return A - 1;  // u fell in the rounding gap above the last cumulative sum
}

json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

json metrics_json(const PpoUpdateMetrics& m) {
    return json{{"update", m.update},
                {"global_step", m.global_step},
                {"learning_rate", m.learning_rate},
                {"policy_loss", number_or_null(m.policy_loss)},
                {"value_loss", number_or_null(m.value_loss)},
                {"entropy", number_or_null(m.entropy)},
                {"approx_kl_k1", number_or_null(m.approx_kl_k1)},
                {"approx_kl_k3", number_or_null(m.approx_kl_k3)},
                {"clip_fraction", number_or_null(m.clip_fraction)},
                {"explained_variance", number_or_null(m.explained_variance)},
                {"grad_norm", number_or_null(m.grad_norm)},
                {"episodes", m.episodes},
                {"episode_return", number_or_null(m.episode_return)},
                {"episode_length", number_or_null(m.episode_length)},
                {"mean_return_last_100", number_or_null(m.mean_return_last_100)},
                {"reward_scale", m.reward_scale},
                {"reward_scale_violations", m.reward_scale_violations},
                {"epochs", m.epochs},
                {"seconds", m.seconds}};
}

}  // namespace

// ---- the trainer ---------------------------------------------------------------------------------------

struct PpoTrainer::Impl {
    const PpoConfig& config;
    std::ostream& log;
    VecEnv envs;
    const int64_t N, T, obs_dim, A, batch, minibatch;
    ActorCritic agent;
    AdamW optimizer;
    Rng action_rng, minibatch_rng;
    RewardNormalizer reward_normalizer;
    Invariants invariants;  // rl.reward_scale_only; messages go to the log
    double max_abs_reward = 0.0;  // the largest raw reward so far, for rl.reward_scale_only
    int64_t updates_done = 0;
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    RunLog metrics;   // run_dir/metrics.jsonl and its TensorBoard mirror

    std::vector<double> next_obs;                           // (N, obs_dim) what the agent sees next
    // The rollout, time-major: index t * N + i is step t of copy i.
    std::vector<double> obs;                                // (T, N, obs_dim) seen BEFORE step t
    std::vector<int64_t> actions;                           // (T, N)
    std::vector<double> logprobs, rewards, values;          // (T, N) log pi_old(a), reward, V_old(obs)
    std::vector<uint8_t> terminated, truncated;             // (T, N)
    std::vector<double> final_values;                       // (T, N) V(final obs), read where truncated
    std::vector<double> last_values;                        // (N) V(next_obs) after the rollout
    std::vector<double> advantages, returns;                // (T, N)
    std::vector<double> episode_returns;                    // every finished episode, in order

    // Scratch for forward / backward.
    std::vector<double> logits, step_values, logp, zeros, unused_logits, unused_values;
    std::vector<double> mb_obs, mb_adv, mb_logprobs, mb_targets, mb_values;
    PpoLossGradients loss_grads;
    std::vector<int64_t> mb_actions;

    Impl(const PpoConfig& c, std::ostream& out)
        : config(c),
          log(out),
          envs(c.env, c.num_envs, c.seed, c.max_episode_steps),
          N(c.num_envs),
          T(c.num_steps),
          obs_dim(envs.spec().obs_dim),
          A(envs.spec().num_actions),
          batch(c.num_envs * c.num_steps),
          minibatch(c.num_envs * c.num_steps / c.num_minibatches),
          agent(ActorCriticConfig{envs.spec().obs_dim, envs.spec().num_actions, c.hidden}, std::max(N, minibatch)),
          // Detail 3: Adam with eps 1e-5 (torch's default 1e-8), no weight decay; the LR is set per update.
          optimizer(agent.params(), agent.grads(), AdamWConfig{c.learning_rate, 0.9, 0.999, c.adam_eps, 0.0}),
          action_rng(Rng::for_name(c.seed, "ppo.actions")),
          minibatch_rng(Rng::for_name(c.seed, "ppo.minibatches")),
          reward_normalizer(c.num_envs, c.gamma) {
        invariants.set_stream(out);
        agent.init_weights(c.seed);  // detail 2: orthogonal init, actor output gain 0.01 (model/mlp.h)
        next_obs = envs.reset();
        const size_t n = static_cast<size_t>(batch);
        obs.assign(n * static_cast<size_t>(obs_dim), 0.0);
        actions.assign(n, 0);
        logprobs.assign(n, 0.0);
        rewards.assign(n, 0.0);
        values.assign(n, 0.0);
        terminated.assign(n, 0);
        truncated.assign(n, 0);
        final_values.assign(n, 0.0);
    }

    // The agent's forward on n rows. BUG probe-backprop: the critic reads a cleared input buffer, so
    // V cannot depend on the observation. The actor's forward runs last, so backward() through it
    // gives the policy's gradient (minibatch_step redoes the critic's forward before its backward).
    void forward(const double* rows, int64_t n, std::vector<double>& out_logits, std::vector<double>& out_values) {
        if (bugs().probe_backprop) {
            zeros.assign(static_cast<size_t>(n * obs_dim), 0.0);
            agent.forward(zeros.data(), n, unused_logits, out_values);
            agent.forward(rows, n, out_logits, unused_values);
        } else {
            agent.forward(rows, n, out_logits, out_values);
        }
    }

    // One rollout of T steps in each of the N copies (detail 1: vectorised environments with
    // auto-reset). Fills the rollout buffers and the episode statistics of `m`.
    void rollout(PpoUpdateMetrics& m) {
        double return_sum = 0.0, length_sum = 0.0;
        std::vector<double> step_rewards(static_cast<size_t>(N)), truncated_obs;
        std::vector<int64_t> step_actions(static_cast<size_t>(N)), truncated_rows;
        for (int64_t t = 0; t < T; ++t) {
            const size_t row = static_cast<size_t>(t * N);
            forward(next_obs.data(), N, logits, step_values);
            log_softmax_rows(logits, N, A, logp);
            for (int64_t i = 0; i < N; ++i) {
                const int64_t a = sample_categorical(&logp[static_cast<size_t>(i * A)], A, action_rng);
                step_actions[static_cast<size_t>(i)] = a;
                actions[row + static_cast<size_t>(i)] = a;
                logprobs[row + static_cast<size_t>(i)] = logp[static_cast<size_t>(i * A + a)];
                values[row + static_cast<size_t>(i)] = step_values[static_cast<size_t>(i)];
            }
            envs.step(step_actions);
            double* stored_obs = &obs[row * static_cast<size_t>(obs_dim)];
            if (bugs().stale_experience) {
                // BUG stale-experience: stores the observation AFTER the step with this step's action
                // and reward, so the agent learns which action pays after seeing the wrong state.
                std::copy(envs.obs().begin(), envs.obs().end(), stored_obs);
            } else {
                std::copy(next_obs.begin(), next_obs.end(), stored_obs);  // the one the action was chosen from
            }
            step_rewards = envs.reward();
            if (config.normalize_reward) {
                reward_normalizer.normalize(step_rewards, envs.terminated(), envs.truncated());
                m.reward_scale = reward_normalizer.scale();
                // rl.reward_scale_only reads the rewards before and after: a pure positive scale or not.
                for (double r : envs.reward()) max_abs_reward = std::max(max_abs_reward, std::fabs(r));
                if (!check_reward_scale_only(invariants, envs.reward(), step_rewards, config.gamma, max_abs_reward,
                                             updates_done + 1, t)) {
                    ++m.reward_scale_violations;
                }
            }
            truncated_rows.clear();
            truncated_obs.clear();
            for (int64_t i = 0; i < N; ++i) {
                const size_t k = row + static_cast<size_t>(i);
                rewards[k] = step_rewards[static_cast<size_t>(i)];
                terminated[k] = envs.terminated()[static_cast<size_t>(i)];
                truncated[k] = envs.truncated()[static_cast<size_t>(i)] && !terminated[k];
                final_values[k] = 0.0;
                if (truncated[k]) {
                    truncated_rows.push_back(i);
                    const double* f = &envs.final_obs()[static_cast<size_t>(i * obs_dim)];
                    truncated_obs.insert(truncated_obs.end(), f, f + obs_dim);
                }
            }
            // A truncated episode is bootstrapped from V(its last observation); VecEnv has already
            // replaced it by the next episode's first observation in obs().
            if (!truncated_rows.empty()) {
                const int64_t n = static_cast<int64_t>(truncated_rows.size());
                forward(truncated_obs.data(), n, unused_logits, step_values);
                for (int64_t j = 0; j < n; ++j) {
                    final_values[row + static_cast<size_t>(truncated_rows[static_cast<size_t>(j)])] =
                        step_values[static_cast<size_t>(j)];
                }
            }
            for (const EpisodeRecord& e : envs.finished()) {
                episode_returns.push_back(e.ret);
                return_sum += e.ret;
                length_sum += static_cast<double>(e.length);
                ++m.episodes;
            }
            next_obs = envs.obs();
        }
        forward(next_obs.data(), N, logits, last_values);
        m.episode_return = m.episodes > 0 ? return_sum / static_cast<double>(m.episodes) : kNaN;
        m.episode_length = m.episodes > 0 ? length_sum / static_cast<double>(m.episodes) : kNaN;
        const size_t count = std::min<size_t>(100, episode_returns.size());
        double recent = 0.0;
        for (size_t k = episode_returns.size() - count; k < episode_returns.size(); ++k) recent += episode_returns[k];
        m.mean_return_last_100 = count > 0 ? recent / static_cast<double>(count) : kNaN;
    }

    // One minibatch: gather, forward, ppo_loss, backward, clip, Adam.
    void minibatch_step(const std::vector<int64_t>& indices, PpoUpdateMetrics& m, double lr, double& clipped) {
        const int64_t M = static_cast<int64_t>(indices.size());
        const size_t rows = static_cast<size_t>(M);
        mb_obs.resize(rows * static_cast<size_t>(obs_dim));
        mb_adv.resize(rows);
        mb_actions.resize(rows);
        mb_logprobs.resize(rows);
        mb_targets.resize(rows);
        mb_values.resize(rows);
        for (size_t r = 0; r < rows; ++r) {
            const size_t k = static_cast<size_t>(indices[r]);
            std::copy_n(&obs[k * static_cast<size_t>(obs_dim)], obs_dim, &mb_obs[r * static_cast<size_t>(obs_dim)]);
            mb_adv[r] = advantages[k];
            mb_actions[r] = actions[k];
            mb_logprobs[r] = logprobs[k];
            mb_values[r] = values[k];
            if (bugs().probe_value_loss) {
                mb_targets[r] = advantages[k];  // BUG probe-value-loss: V regresses onto A, not onto the return
            } else {
                mb_targets[r] = returns[k];
            }
        }
        if (config.norm_adv) normalize_advantages(mb_adv);  // detail 7: per minibatch, not per batch

        agent.zero_grad();
        forward(mb_obs.data(), M, logits, step_values);
        const PpoLossCoefficients coefficients{config.clip_coef, config.ent_coef, config.vf_coef, config.clip_vloss};
        const PpoLossTerms loss = ppo_loss({.M = M, .A = A, .logits = logits, .values = step_values, .actions = mb_actions,
                                            .old_logprobs = mb_logprobs, .advantages = mb_adv,
                                            .value_targets = mb_targets, .old_values = mb_values},
                                           coefficients, loss_grads);
        const std::vector<double>&dlogits = loss_grads.dlogits, &dvalues = loss_grads.dvalues;
        const std::vector<double>& log_ratio = loss_grads.log_ratio;
        if (bugs().probe_backprop) {
            agent.backward(dlogits, {});                                   // through the actor's forward
            agent.forward(zeros.data(), M, unused_logits, unused_values);  // the critic's (cleared) input again
            agent.backward({}, dvalues);
        } else {
            agent.backward(dlogits, dvalues);
        }
        // Detail 11: global gradient clipping at max_grad_norm; the pre-clip norm is logged.
        m.grad_norm += clip_grad_norm(agent.grads(), config.max_grad_norm);
        optimizer.step(lr);
        m.policy_loss += loss.policy_loss;
        m.value_loss += loss.value_loss;
        m.entropy += loss.entropy;
        clipped += static_cast<double>(loss.clipped);
        m.approx_kl_k1 = approx_kl_k1(log_ratio);
        m.approx_kl_k3 = approx_kl_k3(log_ratio);
    }

    PpoUpdateMetrics update(int64_t num_updates) {
        PpoUpdateMetrics m;
        m.update = updates_done + 1;
        // Detail 4: the learning rate falls linearly from learning_rate (first update) towards 0.
        const double fraction = config.anneal_lr ? 1.0 - static_cast<double>(updates_done) / num_updates : 1.0;
        m.learning_rate = fraction * config.learning_rate;

        rollout(m);
        m.global_step = envs.total_steps();
        // Detail 5: GAE, bootstrapped at the rollout's end and at truncations.
        compute_gae({.T = T, .N = N, .rewards = rewards, .values = values, .terminated = terminated,
                     .truncated = truncated, .final_values = final_values, .last_values = last_values},
                    config.gamma, config.gae_lambda, advantages, returns);

        std::vector<int64_t> order(static_cast<size_t>(batch));
        std::iota(order.begin(), order.end(), 0);
        std::vector<int64_t> indices;
        double clipped = 0.0;
        int64_t minibatches = 0;
        for (int64_t epoch = 0; epoch < config.update_epochs; ++epoch) {
            // Fisher-Yates with the trainer's own stream: the same seed shuffles the same way.
            for (int64_t k = batch - 1; k > 0; --k) {
                std::swap(order[static_cast<size_t>(k)],
                          order[static_cast<size_t>(minibatch_rng.below(static_cast<uint64_t>(k + 1)))]);
            }
            for (int64_t start = 0; start < batch; start += minibatch) {
                indices.assign(order.begin() + start, order.begin() + start + minibatch);
                minibatch_step(indices, m, m.learning_rate, clipped);
                ++minibatches;
            }
            ++m.epochs;
            if (config.target_kl > 0.0 && m.approx_kl_k3 > config.target_kl) break;  // cleanrl checks per epoch
        }
        const double per = 1.0 / static_cast<double>(minibatches);
        m.policy_loss *= per;
        m.value_loss *= per;
        m.entropy *= per;
        m.grad_norm *= per;
        m.clip_fraction = clipped / static_cast<double>(minibatches * minibatch);
        m.explained_variance = explained_variance(values, returns);
        ++updates_done;
        m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        return m;
    }
};

PpoTrainer::PpoTrainer(const PpoConfig& config, std::ostream& log) : config_(config), bugs_before_(bugs()) {
    if (config_.threads > 0) omp_set_num_threads(static_cast<int>(config_.threads));
    for (const auto& [name, on] : config_.bugs.items()) {
        set_bug(name, on.get<bool>());
        if (on.get<bool>()) {
            log << "WARNING: bug switch '" << name << "' is ON (kernels/bugs.h): this run is wrong on purpose\n";
        }
    }
    impl_ = std::make_unique<Impl>(config_, log);
    if (!config_.run_dir.empty()) {
        impl_->metrics.open(config_.run_dir, false, config_.tensorboard);
        impl_->metrics.write_config(to_json(config_));
    }
    if (config_.log_every > 0) {
        log << "ppo: " << config_.env << ", " << config_.num_envs << " copies x " << config_.num_steps
            << " steps = batch " << impl_->batch << " in " << config_.num_minibatches << " minibatches of "
            << impl_->minibatch << ", " << config_.update_epochs << " epochs; " << num_updates() << " updates ("
            << num_updates() * impl_->batch << " env steps); agent " << impl_->agent.num_parameters()
            << " parameters; " << omp_get_max_threads() << " threads\n";
        log << "blas: " << cpu::blas_summary() << "\n";
    }
}

PpoTrainer::~PpoTrainer() { bugs() = bugs_before_; }

Invariants& PpoTrainer::invariants() { return impl_->invariants; }

int64_t PpoTrainer::num_updates() const { return config_.total_timesteps / (config_.num_envs * config_.num_steps); }

PpoUpdateMetrics PpoTrainer::update() {
    const PpoUpdateMetrics m = impl_->update(num_updates());
    impl_->metrics.write(metrics_json(m));   // nothing without a run_dir
    // Repeated with every log line: a shifted reward is a different task, not a slower run.
    if (m.reward_scale_violations > 0 && config_.log_every > 0 && m.update % config_.log_every == 0) {
        impl_->log << "WARNING rl.reward_scale_only: " << m.reward_scale_violations
                   << " rollout steps of this update had rewards normalisation did more than scale: "
                   << impl_->invariants.last_message("rl.reward_scale_only") << "\n";
    }
    if (config_.log_every > 0 && (m.update % config_.log_every == 0 || m.update == num_updates())) {
        char line[400];
        std::snprintf(line, sizeof line,
                      "update %lld/%lld step %lld return %.1f (last 100: %.1f) len %.1f | pg %.4f vf %.4f ent %.3f "
                      "kl %.4f/%.4f clip %.3f ev %.3f gnorm %.3f lr %.2e | %.1f s\n",
                      (long long)m.update, (long long)num_updates(), (long long)m.global_step, m.episode_return,
                      m.mean_return_last_100, m.episode_length, m.policy_loss, m.value_loss, m.entropy, m.approx_kl_k1,
                      m.approx_kl_k3, m.clip_fraction, m.explained_variance, m.grad_norm, m.learning_rate, m.seconds);
        impl_->log << line << std::flush;
    }
    return m;
}

std::vector<PpoUpdateMetrics> PpoTrainer::run() {
    std::vector<PpoUpdateMetrics> all;
    while (impl_->updates_done < num_updates()) all.push_back(update());
    if (!config_.run_dir.empty()) {
        const std::string path = (fs::path(config_.run_dir) / "agent.safetensors").string();
        impl_->agent.save(path);
        if (config_.log_every > 0) impl_->log << "weights: " << path << "\n";
    }
    return all;
}

ActorCritic& PpoTrainer::agent() { return impl_->agent; }

const std::vector<double>& PpoTrainer::episode_returns() const { return impl_->episode_returns; }

double PpoTrainer::value(const std::vector<double>& obs) {
    check(static_cast<int64_t>(obs.size()) == impl_->obs_dim, "PpoTrainer::value: the observation has ", obs.size(),
          " numbers, ", config_.env, " has ", impl_->obs_dim);
    std::vector<double> logits, values;
    impl_->forward(obs.data(), 1, logits, values);
    return values[0];
}

std::vector<double> PpoTrainer::action_probs(const std::vector<double>& obs) {
    check(static_cast<int64_t>(obs.size()) == impl_->obs_dim, "PpoTrainer::action_probs: the observation has ",
          obs.size(), " numbers, ", config_.env, " has ", impl_->obs_dim);
    std::vector<double> logits, values, logp;
    impl_->forward(obs.data(), 1, logits, values);
    log_softmax_rows(logits, 1, impl_->A, logp);
    for (double& p : logp) p = std::exp(p);
    return logp;
}

}  // namespace reftrain

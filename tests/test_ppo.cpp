// tests/test_ppo.cpp — train/ppo.h: GAE around terminations, truncations and the rollout's end against
// hand-computed values (and under its two bug switches), advantage normalisation, the two KL
// estimators, explained variance, strict config loading, bitwise determinism, and every probe
// environment solved by PPO within its stated tolerance.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kernels/bugs.h"
#include "kernels/random.h"
#include "model/mlp.h"
#include "probes/probe_runs.h"
#include "tests/test_util.h"
#include "train/ppo.h"

namespace reftrain {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::expect_error;

class Ppo : public ::testing::Test {
protected:
    void SetUp() override { reset_bugs(); }
    void TearDown() override { reset_bugs(); }
};

struct Gae {
    std::vector<double> advantages, returns;
};

Gae gae(const std::vector<double>& rewards, const std::vector<double>& values, const std::vector<uint8_t>& terminated,
        const std::vector<uint8_t>& truncated, const std::vector<double>& final_values,
        const std::vector<double>& last_values, int64_t T, int64_t N, double gamma, double lambda) {
    Gae g;
    compute_gae({.T = T, .N = N, .rewards = rewards, .values = values, .terminated = terminated, .truncated = truncated,
                 .final_values = final_values, .last_values = last_values},
                gamma, lambda, g.advantages, g.returns);
    return g;
}

void expect_near_all(const std::vector<double>& got, const std::vector<double>& want, const char* what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << what << "[" << i << "]";
}

// ---- GAE -------------------------------------------------------------------------------------------

// One copy, three steps, gamma = lambda = 0.5, a termination at t = 1:
//   t=2: delta = 3 + 0.5 * 2 (last value) - 1.5 = 2.5             A = 2.5
//   t=1: terminated: delta = 2 - 1 = 1 (no bootstrap)            A = 1 (the recursion stops)
//   t=0: delta = 1 + 0.5 * 1 - 0.5 = 1                           A = 1 + 0.25 * 1 = 1.25
TEST_F(Ppo, GaeStopsAtATermination) {
    const Gae g = gae({1, 2, 3}, {0.5, 1, 1.5}, {0, 1, 0}, {0, 0, 0}, {0, 0, 0}, {2}, 3, 1, 0.5, 0.5);
    expect_near_all(g.advantages, {1.25, 1.0, 2.5}, "advantages");
    expect_near_all(g.returns, {1.75, 2.0, 4.0}, "returns");
}

// The same rollout with bugs.discount_across_reset: the termination is ignored, so t=1 bootstraps
// from the next episode's first value and inherits its advantage:
//   t=1: delta = 2 + 0.5 * 1.5 - 1 = 1.75,  A = 1.75 + 0.25 * 2.5 = 2.375
//   t=0: A = 1 + 0.25 * 2.375 = 1.59375
TEST_F(Ppo, GaeUnderDiscountAcrossResetLeaksIntoTheNextEpisode) {
    ScopedBug bug("discount-across-reset");
    const Gae g = gae({1, 2, 3}, {0.5, 1, 1.5}, {0, 1, 0}, {0, 0, 0}, {0, 0, 0}, {2}, 3, 1, 0.5, 0.5);
    expect_near_all(g.advantages, {1.59375, 2.375, 2.5}, "advantages");
}

// A truncation at t = 1 with V(final observation) = 4, gamma = lambda = 0.5:
//   t=2: delta = 1 + 0.5 * 3 (last value) - 2 = 0.5             A = 0.5
//   t=1: truncated: delta = 1 + 0.5 * 4 - 1 = 2 (bootstrapped)   A = 2 (the recursion stops)
//   t=0: delta = 1 + 0.5 * 1 - 0.5 = 1                           A = 1 + 0.25 * 2 = 1.5
TEST_F(Ppo, GaeBootstrapsATruncationFromTheFinalObservation) {
    const Gae g = gae({1, 1, 1}, {0.5, 1, 2}, {0, 0, 0}, {0, 1, 0}, {0, 4, 0}, {3}, 3, 1, 0.5, 0.5);
    expect_near_all(g.advantages, {1.5, 2.0, 0.5}, "advantages");
    expect_near_all(g.returns, {2.0, 3.0, 2.5}, "returns");
}

// bugs.truncation_as_termination: the same truncation loses its bootstrap: t=1: delta = 1 - 1 = 0.
TEST_F(Ppo, GaeUnderTruncationAsTerminationDropsTheBootstrap) {
    ScopedBug bug("truncation-as-termination");
    const Gae g = gae({1, 1, 1}, {0.5, 1, 2}, {0, 0, 0}, {0, 1, 0}, {0, 4, 0}, {3}, 3, 1, 0.5, 0.5);
    expect_near_all(g.advantages, {1.0, 0.0, 0.5}, "advantages");
}

// An episode both terminated and truncated on the same step counts as terminated: final_values unread.
TEST_F(Ppo, GaeTerminationWinsOverTruncation) {
    const Gae g = gae({1}, {0.25}, {1}, {1}, {100}, {50}, 1, 1, 0.9, 0.95);
    expect_near_all(g.advantages, {0.75}, "advantages");
}

// Two copies, two steps, time-major (index t * N + i), gamma = 0.9, lambda = 1, copy 0 terminates
// at t = 0, copy 1 runs through and bootstraps from last_values[1] = 2 at the rollout's end:
//   copy 0: t=1: delta = 0 + 0.9 * 1 - 0.4 = 0.5; t=0: delta = 1 - 0.2 = 0.8 (terminated)
//   copy 1: t=1: delta = 1 + 0.9 * 2 - 0.5 = 2.3; t=0: delta = 0 + 0.9 * 0.5 - 0.3 = 0.15, A = 0.15 + 0.9 * 2.3
TEST_F(Ppo, GaeKeepsCopiesApartInTimeMajorStorage) {
    const Gae g = gae({1, 0, 0, 1}, {0.2, 0.3, 0.4, 0.5}, {1, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}, {1.0, 2.0}, 2, 2,
                      0.9, 1.0);
    expect_near_all(g.advantages, {0.8, 0.15 + 0.9 * 2.3, 0.5, 2.3}, "advantages");
    expect_near_all(g.returns, {1.0, 0.3 + 0.15 + 0.9 * 2.3, 0.9, 2.8}, "returns");
}

TEST_F(Ppo, GaeRefusesMismatchedSizes) {
    std::vector<double> a, r;
    const std::vector<double> rewards = {1, 2}, values = {1}, final_values = {0, 0}, last_values = {0};
    const std::vector<uint8_t> flags = {0, 0};
    expect_error([&] { compute_gae({.T = 2, .N = 1, .rewards = rewards, .values = values, .terminated = flags,
                                    .truncated = flags, .final_values = final_values, .last_values = last_values},
                                   0.9, 0.9, a, r); },
                 {"compute_gae", "T*N = 2"});
}

// ---- advantage normalisation -------------------------------------------------------------------------

TEST_F(Ppo, NormalizeAdvantagesUsesTheUnbiasedStd) {
    std::vector<double> x = {1, 2, 3, 4};
    normalize_advantages(x);
    const double std = std::sqrt(5.0 / 3.0) + 1e-8;  // unbiased: sum of squares 5 over n - 1 = 3; plus eps
    expect_near_all(x, {-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std}, "normalised");
    std::vector<double> one = {7.0};
    normalize_advantages(one);
    EXPECT_EQ(one[0], 0.0);
    std::vector<double> same = {3.0, 3.0, 3.0};  // std 0: eps keeps it finite
    normalize_advantages(same);
    for (double v : same) EXPECT_EQ(v, 0.0);
}

// ---- KL estimators --------------------------------------------------------------------------------------

// k3 = (e^r - 1) - r >= 0 for every real r, term by term, tiny |r| included.
TEST_F(Ppo, KlK3IsNonNegativeTermByTerm) {
    Rng rng(3);
    for (int i = 0; i < 10000; ++i) {
        const double r = (rng.uniform() - 0.5) * (i % 3 == 0 ? 1e-9 : 10.0);
        const std::vector<double> one = {r};
        EXPECT_GE(approx_kl_k3(one), 0.0) << "r = " << r;
    }
}

// pi_old = (0.5, 0.3, 0.2), pi_new = (0.4, 0.4, 0.2): KL(old || new) = sum pi_old log(pi_old / pi_new).
struct TwoCategoricals {
    std::vector<double> p_old = {0.5, 0.3, 0.2}, p_new = {0.4, 0.4, 0.2};
    double kl() const {
        double s = 0.0;
        for (size_t a = 0; a < p_old.size(); ++a) s += p_old[a] * std::log(p_old[a] / p_new[a]);
        return s;
    }
    double log_ratio(size_t a) const { return std::log(p_new[a]) - std::log(p_old[a]); }
};

// Exact expectation: a "sample" holding each action in proportion to pi_old makes both means the
// expectation under pi_old, which for both estimators is KL(old || new).
TEST_F(Ppo, KlEstimatorsEqualTheExactKlInExpectation) {
    const TwoCategoricals d;
    std::vector<double> log_ratios;
    for (size_t a = 0; a < 3; ++a) {
        for (int k = 0; k < static_cast<int>(d.p_old[a] * 1000 + 0.5); ++k) log_ratios.push_back(d.log_ratio(a));
    }
    ASSERT_GT(d.kl(), 0.0);
    EXPECT_NEAR(approx_kl_k1(log_ratios), d.kl(), 1e-12);
    EXPECT_NEAR(approx_kl_k3(log_ratios), d.kl(), 1e-12);
}

// On samples drawn from pi_old, k1 may be negative on a small sample but its mean is KL >= 0: at
// n = 200000 both estimates lie within 3 standard errors of the exact KL, so k1 >= -3 SE.
TEST_F(Ppo, KlEstimatorsOnSamplesFromTheOldPolicy) {
    const TwoCategoricals d;
    Rng rng(11);
    const int n = 200000;
    std::vector<double> log_ratios;
    for (int i = 0; i < n; ++i) {
        const double u = rng.uniform();
        const size_t a = u < 0.5 ? 0 : u < 0.8 ? 1 : 2;
        log_ratios.push_back(d.log_ratio(a));
    }
    auto standard_error = [&](auto term) {
        double mean = 0.0, ss = 0.0;
        for (double r : log_ratios) mean += term(r);
        mean /= n;
        for (double r : log_ratios) ss += (term(r) - mean) * (term(r) - mean);
        return std::sqrt(ss / (n - 1) / n);
    };
    const double k1 = approx_kl_k1(log_ratios), k3 = approx_kl_k3(log_ratios);
    const double se1 = standard_error([](double r) { return -r; });
    const double se3 = standard_error([](double r) { return std::expm1(r) - r; });
    EXPECT_GE(k1, -3 * se1);
    EXPECT_NEAR(k1, d.kl(), 3 * se1);
    EXPECT_GE(k3, 0.0);
    EXPECT_NEAR(k3, d.kl(), 3 * se3);
}

// ---- the PPO loss ----------------------------------------------------------------------------------------

// One row by hand: logits (0, 0) so pi_new(1) = 0.5; pi_old(1) = 0.25, so r = 2, clipped to 1.2:
// policy term max(-1 * 2, -1 * 1.2) = -1.2 (the clipped one, flat: no policy gradient). Value: v = 1,
// v_old = 0.5, R = 3: v_clip = 0.7, max((1 - 3)^2, (0.7 - 3)^2) = 5.29, loss 2.645, flat in v.
TEST_F(Ppo, LossOfOneRowByHand) {
    const std::vector<double> logits = {0.0, 0.0}, values = {1.0}, old_logprobs = {std::log(0.25)}, adv = {1.0},
                              targets = {3.0}, old_values = {0.5};
    const std::vector<int64_t> actions = {1};
    const PpoMinibatch row{.M = 1, .A = 2, .logits = logits, .values = values, .actions = actions,
                           .old_logprobs = old_logprobs, .advantages = adv, .value_targets = targets,
                           .old_values = old_values};
    PpoLossGradients g;
    const std::vector<double>&dlogits = g.dlogits, &dvalues = g.dvalues, &log_ratio = g.log_ratio;
    const PpoLossTerms t = ppo_loss(row, PpoLossCoefficients{0.2, 0.0, 0.5, true}, g);
    EXPECT_NEAR(t.policy_loss, -1.2, 1e-12);
    EXPECT_NEAR(t.value_loss, 2.645, 1e-12);
    EXPECT_NEAR(t.entropy, std::log(2.0), 1e-12);
    EXPECT_NEAR(t.total, -1.2 + 0.5 * 2.645, 1e-12);
    EXPECT_EQ(t.clipped, 1);
    EXPECT_NEAR(log_ratio[0], std::log(2.0), 1e-12);
    EXPECT_EQ(dlogits[0], 0.0);
    EXPECT_EQ(dvalues[0], 0.0);
    // The advantage-sign bug flips A: max(2, 1.2) = 2, the unclipped term, with gradient -(-1) * 2 * (1 - 0.5).
    ScopedBug bug("advantage-sign");
    const PpoLossTerms flipped = ppo_loss(row, PpoLossCoefficients{0.2, 0.0, 0.5, true}, g);
    EXPECT_NEAR(flipped.policy_loss, 2.0, 1e-12);
    EXPECT_NEAR(dlogits[1], 1.0, 1e-12);
}

// ppo_loss's hand-written gradient against central differences of its own total, in fp64, on rows
// where the ratio is clipped on both sides and unclipped, and the value clamp is active and not.
TEST_F(Ppo, LossGradientMatchesFiniteDifferences) {
    const int64_t M = 24, A = 3;
    Rng rng(5);
    std::vector<double> logits(M * A), values(M), old_logprobs(M), advantages(M), targets(M), old_values(M);
    std::vector<int64_t> actions(M);
    for (double& z : logits) z = rng.normal();
    std::vector<double> logp;
    log_softmax_rows(logits, M, A, logp);
    for (int64_t r = 0; r < M; ++r) {
        actions[r] = static_cast<int64_t>(rng.below(A));
        old_logprobs[r] = logp[r * A + actions[r]] + (rng.uniform() - 0.5) * 1.2;  // ratios from e^-0.6 to e^0.6
        advantages[r] = rng.normal();
        targets[r] = rng.normal();
        values[r] = rng.normal();
        old_values[r] = values[r] + (rng.uniform() - 0.5);  // |v - v_old| up to 0.5, clamp at 0.2
    }
    for (bool clip_vloss : {true, false}) {
        const PpoLossCoefficients k{0.2, 0.01, 0.5, clip_vloss};
        auto minibatch = [&](const std::vector<double>& z, const std::vector<double>& v) {
            return PpoMinibatch{.M = M, .A = A, .logits = z, .values = v, .actions = actions,
                                .old_logprobs = old_logprobs, .advantages = advantages, .value_targets = targets,
                                .old_values = old_values};
        };
        PpoLossGradients g, unused;
        const std::vector<double>&dlogits = g.dlogits, &dvalues = g.dvalues;
        const PpoLossTerms terms = ppo_loss(minibatch(logits, values), k, g);
        EXPECT_GT(terms.clipped, 2);
        EXPECT_LT(terms.clipped, M - 2);
        EXPECT_NEAR(terms.total, terms.policy_loss - 0.01 * terms.entropy + 0.5 * terms.value_loss, 1e-12);
        auto total = [&](const std::vector<double>& z, const std::vector<double>& v) {
            return ppo_loss(minibatch(z, v), k, unused).total;
        };
        const double h = 1e-6;
        for (size_t i = 0; i < logits.size(); ++i) {
            std::vector<double> plus = logits, minus = logits;
            plus[i] += h;
            minus[i] -= h;
            EXPECT_NEAR(dlogits[i], (total(plus, values) - total(minus, values)) / (2 * h), 1e-8) << "logit " << i;
        }
        int64_t flat = 0;
        for (size_t i = 0; i < values.size(); ++i) {
            std::vector<double> plus = values, minus = values;
            plus[i] += h;
            minus[i] -= h;
            EXPECT_NEAR(dvalues[i], (total(logits, plus) - total(logits, minus)) / (2 * h), 1e-8) << "value " << i;
            flat += dvalues[i] == 0.0;
        }
        if (clip_vloss) {
            EXPECT_GT(flat, 0) << "no row exercised the value clamp";
        }
    }
}

// ---- explained variance --------------------------------------------------------------------------------

TEST_F(Ppo, ExplainedVariance) {
    const std::vector<double> returns = {1, 2, 3};
    EXPECT_NEAR(explained_variance(std::vector<double>{1, 2, 3}, returns), 1.0, 1e-12);
    EXPECT_NEAR(explained_variance(std::vector<double>{2, 2, 2}, returns), 0.0, 1e-12);
    // residual (0, 0, 1): variance 2/9; returns' variance 2/3 -> 1 - 1/3.
    EXPECT_NEAR(explained_variance(std::vector<double>{1, 2, 2}, returns), 2.0 / 3.0, 1e-12);
    EXPECT_LT(explained_variance(std::vector<double>{3, 2, 1}, returns), 0.0);
    EXPECT_TRUE(std::isnan(explained_variance(std::vector<double>{1, 2}, std::vector<double>{5, 5})));
}

// ---- config ---------------------------------------------------------------------------------------------

std::string write_config(const std::string& name, const std::string& text) {
    const fs::path path = testing::scratch_dir("ppo_" + name) / "config.json";
    std::ofstream(path) << text;
    return path.string();
}

TEST_F(Ppo, ConfigDefaultsAreCleanrls) {
    const PpoConfig c = load_ppo_config("", {});
    EXPECT_EQ(c.env, "cartpole");
    EXPECT_EQ(c.num_envs, 4);
    EXPECT_EQ(c.num_steps, 128);
    EXPECT_EQ(c.total_timesteps, 500000);
    EXPECT_EQ(c.learning_rate, 2.5e-4);
    EXPECT_EQ(c.adam_eps, 1e-5);
    EXPECT_EQ(c.max_grad_norm, 0.5);
    const std::string path = (fs::path(REFTRAIN_SOURCE_DIR) / "configs" / "cartpole.json").string();
    json file = to_json(load_ppo_config(path, {})), defaults = to_json(c);
    for (const char* where : {"run_dir", "log_every", "threads"}) {  // where and how it reports, not what it learns
        file.erase(where);
        defaults.erase(where);
    }
    EXPECT_EQ(file, defaults) << "configs/cartpole.json should hold cleanrl's defaults";
}

TEST_F(Ppo, ConfigIsStrict) {
    const std::string typo = write_config("typo", R"({"learning_rat": 0.001})");
    expect_error([&] { load_ppo_config(typo, {}); },
                 {typo, "unknown key 'learning_rat'", "did you mean 'learning_rate'"});
    const std::string wrong_int = write_config("wrong_int", R"({"num_envs": 2.5})");
    expect_error([&] { load_ppo_config(wrong_int, {}); }, {wrong_int, "'num_envs' must be an integer"});
    const std::string wrong_bool = write_config("wrong_bool", R"({"anneal_lr": "yes"})");
    expect_error([&] { load_ppo_config(wrong_bool, {}); }, {wrong_bool, "'anneal_lr' must be a boolean"});
    const std::string twice = write_config("twice", R"({"gamma": 0.9, "gamma": 0.99})");
    expect_error([&] { load_ppo_config(twice, {}); }, {twice, "'gamma' appears twice"});
    const std::string grpo = write_config("grpo", R"({"algorithm": "grpo"})");
    expect_error([&] { load_ppo_config(grpo, {}); }, {grpo, "'algorithm'"});
    const std::string ppo = write_config("ppo", R"({"algorithm": "ppo", "seed": 7})");
    EXPECT_EQ(load_ppo_config(ppo, {}).seed, 7u);
    expect_error([] { load_ppo_config("", {"gama=0.9"}); }, {"--set gama=0.9", "did you mean 'gamma'"});
    expect_error([] { load_ppo_config("", {"num_minibatches=3"}); }, {"'num_minibatches' = 3", "must divide"});
    expect_error([] { load_ppo_config("", {"env=cartpol"}); }, {"'env'", "did you mean 'cartpole'"});
    expect_error([] { load_ppo_config("", {"gamma=1.5"}); }, {"'gamma' must be in [0, 1], got 1.5"});
    expect_error([] { load_ppo_config("", {"hidden=[64, 0]"}); }, {"'hidden' must be a list of positive integers"});
    expect_error([] { load_ppo_config("", {"hidden=[64, -1]"}); }, {"'hidden'", "positive integers"});
    expect_error([] { load_ppo_config("", {"bugs={\"advantage-sing\": true}"}); }, {"did you mean 'advantage-sign'"});
    EXPECT_EQ(load_ppo_config("", {"gamma=0.9", "hidden=[32]"}).hidden, std::vector<int64_t>{32});
}

// ---- the trainer ----------------------------------------------------------------------------------------

PpoConfig short_cartpole(const std::string& run_dir = "") {
    return load_ppo_config("", {"num_envs=2", "num_steps=32", "total_timesteps=640", "num_minibatches=2",
                                "threads=1", "log_every=0", "run_dir=" + run_dir});
}

// Same seed, same bits: every logged number but the wall time.
TEST_F(Ppo, TwoRunsFromTheSameSeedAreBitwiseEqual) {
    std::ostringstream log;
    PpoTrainer a(short_cartpole(), log), b(short_cartpole(), log);
    const std::vector<PpoUpdateMetrics> ma = a.run(), mb = b.run();
    ASSERT_EQ(ma.size(), 10u);
    ASSERT_EQ(mb.size(), ma.size());
    for (size_t u = 0; u < ma.size(); ++u) {
        EXPECT_EQ(ma[u].global_step, mb[u].global_step);
        EXPECT_EQ(ma[u].policy_loss, mb[u].policy_loss) << "update " << u;
        EXPECT_EQ(ma[u].value_loss, mb[u].value_loss) << "update " << u;
        EXPECT_EQ(ma[u].entropy, mb[u].entropy) << "update " << u;
        EXPECT_EQ(ma[u].approx_kl_k1, mb[u].approx_kl_k1) << "update " << u;
        EXPECT_EQ(ma[u].approx_kl_k3, mb[u].approx_kl_k3) << "update " << u;
        EXPECT_EQ(ma[u].grad_norm, mb[u].grad_norm) << "update " << u;
        EXPECT_EQ(ma[u].clip_fraction, mb[u].clip_fraction) << "update " << u;
        EXPECT_EQ(ma[u].episodes, mb[u].episodes) << "update " << u;
    }
    EXPECT_EQ(a.episode_returns(), b.episode_returns());
    // A different seed is a different run (the test above would pass for a trainer that ignores seeds).
    PpoConfig other = short_cartpole();
    other.seed = 2;
    PpoTrainer c(other, log);
    EXPECT_NE(c.run().back().policy_loss, ma.back().policy_loss);
}

TEST_F(Ppo, RunWritesMetricsAndWeights) {
    const fs::path dir = testing::scratch_dir("ppo_run");
    PpoConfig config = short_cartpole(dir.string());
    config.log_every = 5;
    std::ostringstream log;
    PpoTrainer trainer(config, log);
    const std::vector<PpoUpdateMetrics> updates = trainer.run();
    std::ifstream in(dir / "metrics.jsonl");
    std::string line;
    int64_t lines = 0;
    while (std::getline(in, line)) {
        const json j = json::parse(line);
        for (const char* key : {"update", "global_step", "learning_rate", "policy_loss", "value_loss", "entropy",
                                "approx_kl_k1", "approx_kl_k3", "clip_fraction", "explained_variance", "grad_norm",
                                "episodes", "episode_return", "episode_length", "mean_return_last_100", "seconds"}) {
            EXPECT_TRUE(j.contains(key)) << key << " missing from " << line;
        }
        EXPECT_EQ(j["update"], ++lines);
    }
    EXPECT_EQ(lines, 10);
    EXPECT_TRUE(fs::exists(dir / "agent.safetensors"));
    EXPECT_NE(log.str().find("update 5/10"), std::string::npos) << log.str();
    // The learning rate anneals linearly: lr * (1 - (u - 1) / U).
    EXPECT_DOUBLE_EQ(updates[0].learning_rate, 2.5e-4);
    EXPECT_DOUBLE_EQ(updates[9].learning_rate, 2.5e-4 * 0.1);
    EXPECT_EQ(updates.back().global_step, 640);
}

// Reward normalisation only scales (rl.reward_scale_only); the reward-mean-shift bug breaks exactly that.
TEST_F(Ppo, RewardNormalisationOnlyScales) {
    PpoConfig config = short_cartpole();
    config.normalize_reward = true;
    std::ostringstream log;
    {
        PpoTrainer trainer(config, log);
        const PpoUpdateMetrics m = trainer.update();
        EXPECT_EQ(m.reward_scale_violations, 0);
        EXPECT_GT(trainer.invariants().evaluations("rl.reward_scale_only"), 0);
        EXPECT_GT(m.reward_scale, 0.0);
        EXPECT_NE(m.reward_scale, 1.0);
    }
    ScopedBug bug("reward-mean-shift");
    PpoTrainer trainer(config, log);
    EXPECT_GT(trainer.update().reward_scale_violations, 0);
    EXPECT_NE(trainer.invariants().last_message("rl.reward_scale_only").find("a raw reward of 1"), std::string::npos)
        << trainer.invariants().last_message("rl.reward_scale_only");
}

// ---- probes ---------------------------------------------------------------------------------------------

class PpoProbe : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override { reset_bugs(); }
    void TearDown() override { reset_bugs(); }
};

// Every probe is solved: V and pi within the report's tolerances of probe_cases(), in seconds.
TEST_P(PpoProbe, SolvedWithinTolerance) {
    std::ostringstream log, table;
    const ProbeReport report = run_probe(probe_ppo_config(GetParam(), {}), log);
    print_probe_report(report, table);
    EXPECT_TRUE(report.solved) << table.str();
    EXPECT_NE(table.str().find("verdict: SOLVED"), std::string::npos) << table.str();
    EXPECT_LE(report.value_tolerance, 0.05 * std::max(1.0, std::fabs(report.checks.front().expected_value)) + 1e-12);
    EXPECT_LT(report.seconds, 10.0) << "probe runs should take seconds";
}

INSTANTIATE_TEST_SUITE_P(All, PpoProbe,
                         ::testing::Values("probe1", "probe2", "probe3", "probe4", "probe5", "probe-timelimit",
                                           "bandit"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                             std::string name = info.param;
                             for (char& c : name) {
                                 if (c == '-') c = '_';
                             }
                             return name;
                         });

// A probe is not solved by doing nothing: an untrained agent fails the verdict.
TEST_F(Ppo, UntrainedAgentFailsTheProbe) {
    std::ostringstream log;
    PpoConfig config = probe_ppo_config("probe4", {"total_timesteps=128"});
    config.learning_rate = 1e-9;
    EXPECT_FALSE(run_probe(config, log).solved);
}

}  // namespace
}  // namespace reftrain

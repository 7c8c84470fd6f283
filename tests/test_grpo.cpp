// tests/test_grpo.cpp — GRPO (train/grpo.h) and the model support it needs: the weighted cross-entropy
// backward and per-token log-probs (finite differences in fp64), group advantages on hand values, the
// loss mask of sampled rows, the KL estimators, the config loader, and short runs on a tiny model
// (smoke, determinism, resuming from a GRPO checkpoint). The two invariants are tested in
// tests/test_invariants.cpp; the two catalog entries in tests/test_failures.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/chat.h"
#include "data/tokenizer.h"
#include "kernels/bugs.h"
#include "kernels/cpu/ops.h"
#include "model/generate.h"
#include "tests/gradcheck.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/grpo.h"
#include "train/trainer.h"

namespace reftrain {
namespace {

namespace fs = std::filesystem;
using testing::Buffer;
using testing::expect_error;
using testing::expect_gradients_match;
constexpr int64_t kIgnore = cpu::kIgnoreIndex;

class Grpo : public ::testing::Test {
protected:
    void SetUp() override { reset_bugs(); }
    void TearDown() override { reset_bugs(); }
};

// ---- the weighted cross-entropy -------------------------------------------------------------------------

TEST_F(Grpo, WeightedCrossEntropyBackwardMatchesFiniteDifferences) {
    const int64_t N = 6, V = 5;
    Rng rng(21);
    Buffer z("logits", {N, V}), lse("lse", {N}), dz("dlogits", {N, V}), logp("logprobs", {N});
    z.randomize(rng, 3.0);
    std::vector<int64_t> targets = {2, kIgnore, 0, 4, kIgnore, 1};
    const Tensor y(targets.data(), DType::I64, {N}, "targets");
    // Advantage-like weights of both signs; ignored rows weigh 0.
    std::vector<double> weights = {0.7, 0.0, -1.3, 0.25, 0.0, -0.05};
    const Tensor w(weights.data(), DType::F64, {N}, "weights");
    cpu::cross_entropy_forward(lse, z, y);
    cpu::cross_entropy_weighted_backward(dz, z, lse, y, w);
    // L = sum_n w_n CE_n = -sum_n w_n log p_n, from the per-row log-probs.
    expect_gradients_match("weighted cross_entropy", {&z}, {&dz}, [&] {
        cpu::cross_entropy_forward(lse, z, y);
        cpu::cross_entropy_target_logprobs(logp, z, lse, y);
        double L = 0.0;
        for (int64_t n = 0; n < N; ++n) L -= weights[n] * logp.values[n];
        return L;
    });
    for (int64_t v = 0; v < V; ++v) EXPECT_EQ(dz.values[1 * V + v], 0.0) << "ignored row 1 must get no gradient";
}

TEST_F(Grpo, WeightedBackwardWithEqualWeightsIsTheMeanBackward) {
    const int64_t N = 5, V = 7;
    Rng rng(22);
    Buffer z("logits", {N, V}), lse("lse", {N}), d_mean("d_mean", {N, V}), d_weighted("d_weighted", {N, V});
    z.randomize(rng, 2.0);
    std::vector<int64_t> targets = {3, 6, kIgnore, 0, 2};
    const Tensor y(targets.data(), DType::I64, {N}, "targets");
    std::vector<double> weights = {0.9 / 4, 0.9 / 4, 0.0, 0.9 / 4, 0.9 / 4};  // dloss 0.9 over M = 4 rows
    const Tensor w(weights.data(), DType::F64, {N}, "weights");
    cpu::cross_entropy_forward(lse, z, y);
    cpu::cross_entropy_backward(d_mean, z, lse, y, 0.9);
    cpu::cross_entropy_weighted_backward(d_weighted, z, lse, y, w);
    for (int64_t i = 0; i < N * V; ++i) EXPECT_NEAR(d_weighted.values[i], d_mean.values[i], 1e-15) << i;
}

TEST_F(Grpo, TargetLogprobsAreTheLogSoftmaxOfTheTarget) {
    const int64_t N = 4, V = 6;
    Rng rng(23);
    Buffer z("logits", {N, V}), lse("lse", {N}), logp("logprobs", {N});
    z.randomize(rng, 4.0);
    std::vector<int64_t> targets = {5, kIgnore, 0, 3};
    const Tensor y(targets.data(), DType::I64, {N}, "targets");
    const cpu::CrossEntropyResult ce = cpu::cross_entropy_forward(lse, z, y);
    cpu::cross_entropy_target_logprobs(logp, z, lse, y);
    double mean_ce = 0.0;
    for (int64_t n = 0; n < N; ++n) {
        if (targets[n] == kIgnore) {
            EXPECT_EQ(logp.values[n], 0.0);
            continue;
        }
        double sum = 0.0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(z.values[n * V + v]);
        const double direct = z.values[n * V + targets[n]] - std::log(sum);
        EXPECT_NEAR(logp.values[n], direct, 1e-13) << "row " << n;
        mean_ce -= logp.values[n] / 3.0;
    }
    EXPECT_NEAR(mean_ce, ce.loss, 1e-14) << "the log-probs are minus the per-row cross-entropies";
}

TEST_F(Grpo, WeightedBackwardRefusesAWeightOnAnIgnoredRow) {
    Buffer z("logits", {2, 3}), lse("lse", {2}), dz("dlogits", {2, 3});
    std::vector<int64_t> targets = {1, kIgnore};
    const Tensor y(targets.data(), DType::I64, {2}, "targets");
    std::vector<double> weights = {1.0, 0.5};
    const Tensor w(weights.data(), DType::F64, {2}, "weights");
    cpu::cross_entropy_forward(lse, z, y);
    expect_error([&] { cpu::cross_entropy_weighted_backward(dz, z, lse, y, w); },
                 {"row 1", "is ignored but has weight 0.5"});
    weights = {std::nan(""), 0.0};
    expect_error([&] { cpu::cross_entropy_weighted_backward(dz, z, lse, y, w); }, {"weight nan at row 0"});
}

// The whole model: backward_weighted against finite differences of -sum_n w_n log p_n, in fp64.
TEST_F(Grpo, TransformerWeightedBackwardMatchesFiniteDifferences) {
    ModelConfig c = testing::tiny_model_config();
    c.vocab_size = 19;
    const int64_t B = 2, T = 5;
    Transformer model(c, B, T, DType::F64);
    model.init_weights(5);
    Rng rng(6);
    std::vector<int64_t> ids(B * T), targets(B * T);
    std::vector<double> weights(B * T, 0.0);
    for (int64_t n = 0; n < B * T; ++n) {
        ids[n] = static_cast<int64_t>(rng.below(c.vocab_size));
        const bool sampled = n % T >= 2;  // the first two positions of each row are "prompt"
        targets[n] = sampled ? static_cast<int64_t>(rng.below(c.vocab_size)) : kIgnore;
        weights[n] = sampled ? rng.normal() : 0.0;
    }
    const Tensor ids_t(ids.data(), DType::I64, {B, T}, "input_ids");
    const Tensor targets_t(targets.data(), DType::I64, {B, T}, "targets");
    auto loss = [&] {
        model.forward(ids_t, targets_t);
        const std::vector<double> logp = model.target_logprobs();
        double L = 0.0;
        for (int64_t n = 0; n < B * T; ++n) L -= weights[n] * logp[n];
        return L;
    };
    model.zero_grad();
    loss();
    model.backward_weighted(weights);
    for (const char* name : {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                             "model.layers.1.mlp.down_proj.weight", "model.norm.weight"}) {
        Tensor& p = model.param(name);
        const Tensor& g = model.grad(name);
        Buffer x(p.name, {p.numel()}), dx(g.name, {p.numel()});
        std::memcpy(x.values.data(), p.data, p.nbytes());
        std::memcpy(dx.values.data(), g.data, g.nbytes());
        expect_gradients_match("backward_weighted", {&x}, {&dx}, [&] {
            std::memcpy(p.data, x.values.data(), p.nbytes());
            return loss();
        }, 60);
        std::memcpy(p.data, x.values.data(), p.nbytes());
    }
}

// At a logit temperature t the model scores softmax(logits / t): its log-probs equal the sampler's
// (sampling_logprob on the t = 1 logits), and backward_weighted is the gradient of that, in fp64.
TEST_F(Grpo, LogitTemperatureScoresWhatTheSamplerDrawsFrom) {
    ModelConfig c = testing::tiny_model_config();
    c.vocab_size = 19;
    const int64_t B = 2, T = 5, V = c.vocab_size;
    Transformer model(c, B, T, DType::F64);
    model.init_weights(8);
    Rng rng(9);
    std::vector<int64_t> ids(B * T), targets(B * T);
    std::vector<double> weights(B * T, 0.0);
    for (int64_t n = 0; n < B * T; ++n) {
        ids[n] = static_cast<int64_t>(rng.below(c.vocab_size));
        const bool sampled = n % T >= 2;
        targets[n] = sampled ? static_cast<int64_t>(rng.below(c.vocab_size)) : kIgnore;
        weights[n] = sampled ? rng.normal() : 0.0;
    }
    const Tensor ids_t(ids.data(), DType::I64, {B, T}, "input_ids");
    const Tensor targets_t(targets.data(), DType::I64, {B, T}, "targets");
    model.forward(ids_t, targets_t);
    std::vector<double> logits(model.acts().get("logits").ptr<double>(), model.acts().get("logits").ptr<double>() + B * T * V);
    const double t = 0.7;
    model.set_logit_temperature(t);
    model.forward(ids_t, targets_t);
    const std::vector<double> logp = model.target_logprobs();
    SamplingConfig sampler;
    sampler.temperature = t;
    for (int64_t n = 0; n < B * T; ++n) {
        if (targets[n] == kIgnore) continue;
        const std::vector<double> row(logits.begin() + n * V, logits.begin() + (n + 1) * V);
        EXPECT_NEAR(logp[n], sampling_logprob(row, sampler, targets[n]), 1e-12) << "position " << n;
    }
    auto loss = [&] {
        model.forward(ids_t, targets_t);
        const std::vector<double> lp = model.target_logprobs();
        double L = 0.0;
        for (int64_t n = 0; n < B * T; ++n) L -= weights[n] * lp[n];
        return L;
    };
    model.zero_grad();
    loss();
    model.backward_weighted(weights);
    for (const char* name : {"model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"}) {
        Tensor& p = model.param(name);
        const Tensor& g = model.grad(name);
        Buffer x(p.name, {p.numel()}), dx(g.name, {p.numel()});
        std::memcpy(x.values.data(), p.data, p.nbytes());
        std::memcpy(dx.values.data(), g.data, g.nbytes());
        expect_gradients_match("backward_weighted at temperature 0.7", {&x}, {&dx}, [&] {
            std::memcpy(p.data, x.values.data(), p.nbytes());
            return loss();
        }, 60);
        std::memcpy(p.data, x.values.data(), p.nbytes());
    }
    expect_error([&] { model.set_logit_temperature(0.0); }, {"set_logit_temperature: 0 must be finite and > 0"});
}

// ---- group advantages -----------------------------------------------------------------------------------

TEST_F(Grpo, GroupAdvantagesOnHandValues) {
    // Group 0: one right of four (mean 0.25, unbiased std 0.5); group 1: two right of four (mean 0.5,
    // std sqrt(1/3)); group 2: all wrong (no signal).
    const std::vector<double> rewards = {1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0};
    const GroupAdvantages plain = group_advantages(rewards, 4, false, 1e-4);
    const std::vector<double> expected = {0.75, -0.25, -0.25, -0.25, 0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0};
    for (size_t i = 0; i < rewards.size(); ++i) EXPECT_DOUBLE_EQ(plain.advantages[i], expected[i]) << i;
    EXPECT_EQ(plain.groups, 3);
    EXPECT_EQ(plain.uniform_groups, 1);
    EXPECT_EQ(plain.zero_advantage_groups, 1);

    const GroupAdvantages normalized = group_advantages(rewards, 4, true, 1e-4);
    EXPECT_DOUBLE_EQ(normalized.advantages[0], 0.75 / (0.5 + 1e-4));
    EXPECT_DOUBLE_EQ(normalized.advantages[1], -0.25 / (0.5 + 1e-4));
    EXPECT_DOUBLE_EQ(normalized.advantages[4], 0.5 / (std::sqrt(1.0 / 3.0) + 1e-4));
    for (size_t i = 8; i < 12; ++i) EXPECT_EQ(normalized.advantages[i], 0.0);
}

TEST_F(Grpo, UniformGroupsGetExactlyZeroEvenWhenTheirMeanIsInexact) {
    // Eight rewards of 0.1: the fp64 mean is not 0.1, so r - mean is not 0 by arithmetic...
    double sum = 0.0;
    for (int i = 0; i < 8; ++i) sum += 0.1;
    ASSERT_NE(sum / 8.0, 0.1) << "the premise of this test";
    // ... but the group carries no signal, and the rule gives exactly 0, normalised or not.
    const std::vector<double> rewards(16, 0.1);
    for (bool normalize : {false, true}) {
        const GroupAdvantages a = group_advantages(rewards, 8, normalize, 1e-4);
        for (double v : a.advantages) EXPECT_EQ(v, 0.0);
        EXPECT_EQ(a.uniform_groups, 2);
        EXPECT_EQ(a.zero_advantage_groups, 2);
        EXPECT_EQ(a.max_abs_uniform_advantage, 0.0);
    }
}

TEST_F(Grpo, ZeroSignalBugGivesUniformGroupsAnOrderOneAdvantage) {
    ScopedBug bug("grpo-zero-signal");
    std::vector<double> rewards(8, 0.1);                       // uniform, non-dyadic
    rewards.insert(rewards.end(), {1, 0, 0, 0, 0, 0, 0, 0});   // a mixed group is barely affected
    const GroupAdvantages a = group_advantages(rewards, 8, true, 1e-4);
    // fp32: the mean of eight 0.1f is 7.45e-9 above 0.1f, the unbiased std is sqrt(8/7) times that
    // residue, eps 1e-8: -7.45e-9 / (7.96e-9 + 1e-8) = -0.41.
    EXPECT_NEAR(a.advantages[0], -0.4147, 1e-4);
    EXPECT_GT(a.max_abs_uniform_advantage, 0.4);
    EXPECT_EQ(a.uniform_groups, 1);
    EXPECT_EQ(a.zero_advantage_groups, 0);
    EXPECT_NEAR(a.advantages[8], 0.875 / std::sqrt(0.125), 1e-4);
    // Dyadic rewards (all 0, all 1) are exact in fp32 too: the bug needs non-dyadic ones.
    const GroupAdvantages dyadic = group_advantages(std::vector<double>(8, 1.0), 8, true, 1e-4);
    for (double v : dyadic.advantages) EXPECT_EQ(v, 0.0);
}

// The one-pass fp32 variance of a near-constant group rounds to 0: the advantage of the one different
// reward is its 0.000875 difference over eps alone, far past what any G rewards allow.
TEST_F(Grpo, StdCancellationBugBlowsUpANearConstantGroup) {
    std::vector<double> rewards(8, 9.999);
    rewards[1] = 10.0;
    const double bound = 7.0 / std::sqrt(8.0);
    // Two-pass fp64: the lone 10 is 0.000875 above the mean and the std is 3.54e-4, so with eps 1e-4
    // A = 0.000875 / 4.54e-4 = 1.93, inside the bound; without eps it would be the bound itself.
    const GroupAdvantages good = group_advantages(rewards, 8, true, 1e-4);
    const double std = std::sqrt((0.000875 * 0.000875 + 7 * 0.000125 * 0.000125) / 7.0);  // deviations 7/8 and 1/8 of 0.001
    EXPECT_NEAR(good.advantages[1], 0.000875 / (std + 1e-4), 1e-6);
    EXPECT_LE(std::fabs(good.advantages[1]), bound);
    EXPECT_NEAR(group_advantages(rewards, 8, true, 1e-15).advantages[1], bound, 1e-6);
    ScopedBug bug("std-cancellation");
    // fp32 one-pass: E[r^2] and E[r]^2 agree to every bit fp32 holds, the variance clamps to 0 and
    // A = 0.000875 / (0 + 1e-4) = 8.75.
    const GroupAdvantages bad = group_advantages(rewards, 8, true, 1e-4);
    EXPECT_NEAR(bad.advantages[1], 8.75, 0.05);
    EXPECT_GT(std::fabs(bad.advantages[1]), 3.0 * bound);
}

TEST_F(Grpo, RewardAndGroupShapeErrors) {
    EXPECT_EQ(grpo_reward(true, true, 1.0, 0.1), 1.0);
    EXPECT_EQ(grpo_reward(false, true, 1.0, 0.1), 0.1);
    EXPECT_EQ(grpo_reward(false, false, 1.0, 0.1), 0.0);
    expect_error([] { group_advantages(std::vector<double>(7, 0.0), 4, false, 1e-4); }, {"do not form groups of 4"});
}

// ---- KL estimators --------------------------------------------------------------------------------------

TEST_F(Grpo, KlEstimatorsOnHandValues) {
    const double rho = kl_log_ratio(-1.0, -1.5);  // the policy gives the token more mass than the reference
    EXPECT_DOUBLE_EQ(rho, 0.5);
    EXPECT_DOUBLE_EQ(kl_k1(rho), 0.5);
    EXPECT_NEAR(kl_k3(rho), std::exp(-0.5) - 1.0 + 0.5, 1e-16);
    EXPECT_NEAR(kl_k3(rho), 0.10653065971263342, 1e-15);
    EXPECT_NEAR(kl_k3_grad(rho), 1.0 - std::exp(-0.5), 1e-16);
    // k3 >= 0 for every token, k1 is not; d k3 / d log p by central differences.
    for (double r : {-3.0, -0.2, 0.0, 1e-9, 0.7, 4.0}) {
        EXPECT_GE(kl_k3(r), 0.0) << r;
        const double h = 1e-6;
        const double numeric = (kl_k3(kl_log_ratio(-1.0 + h, -1.0 - r)) - kl_k3(kl_log_ratio(-1.0 - h, -1.0 - r))) / (2 * h);
        EXPECT_NEAR(kl_k3_grad(r), numeric, 1e-8) << r;
    }
    EXPECT_LT(kl_k1(-0.2), 0.0);
    // Expectations under p: both equal KL(p || q) exactly.
    const std::vector<double> p = {0.5, 0.3, 0.2}, q = {0.2, 0.3, 0.5};
    double kl = 0.0, e1 = 0.0, e3 = 0.0;
    for (size_t i = 0; i < p.size(); ++i) {
        kl += p[i] * std::log(p[i] / q[i]);
        const double r = kl_log_ratio(std::log(p[i]), std::log(q[i]));
        e1 += p[i] * kl_k1(r);
        e3 += p[i] * kl_k3(r);
    }
    EXPECT_NEAR(e1, kl, 1e-15);
    EXPECT_NEAR(e3, kl, 1e-15);
    EXPECT_GT(kl, 0.2);
}

TEST_F(Grpo, NegativeKlBugSwapsThePair) {
    ScopedBug bug("negative-kl");
    EXPECT_DOUBLE_EQ(kl_log_ratio(-1.0, -1.5), -0.5);
    const std::vector<double> p = {0.5, 0.3, 0.2}, q = {0.2, 0.3, 0.5};
    double e1 = 0.0, e3 = 0.0;
    for (size_t i = 0; i < p.size(); ++i) {
        const double r = kl_log_ratio(std::log(p[i]), std::log(q[i]));
        e1 += p[i] * kl_k1(r);
        e3 += p[i] * kl_k3(r);
    }
    EXPECT_LT(e1, -0.2) << "k1 estimates -KL";
    EXPECT_GT(e3, 0.0) << "k3 stays >= 0 whichever way round: it cannot show the bug";
}

// ---- the loss mask of sampled rows ------------------------------------------------------------------

TEST_F(Grpo, OnlySampledTokensIncludingTheEndOfTurnAreTargets) {
    auto tokenizer = make_byte_tokenizer(ChatTemplate::special_tokens("chatml"));
    ChatTemplate chat("chatml", *tokenizer);
    const std::vector<int64_t> prompt = chat.render_prompt(to_conversation({"12+34", ""}, "", false));
    const int64_t P = static_cast<int64_t>(prompt.size());
    std::vector<int64_t> completion = tokenizer->encode("46");
    completion.push_back(chat.end_of_turn_id());
    PolicyRow row{prompt, P};
    row.ids.insert(row.ids.end(), completion.begin(), completion.end());
    PolicyRow short_row{prompt, P};
    short_row.ids.push_back(chat.end_of_turn_id());  // an empty answer: only the end-of-turn is sampled
    const std::vector<PolicyRow> rows = {row, short_row};
    const int64_t B = 3, T = P + 4;
    std::vector<int64_t> inputs, targets;
    build_policy_batch(rows, B, T, 0, inputs, targets);
    ASSERT_EQ(static_cast<int64_t>(targets.size()), B * T);
    for (int64_t b = 0; b < B; ++b) {
        const int64_t n = b < 2 ? static_cast<int64_t>(rows[b].ids.size()) : 0;
        std::vector<int64_t> supervised;
        for (int64_t t = 0; t < T; ++t) {
            const int64_t y = targets[b * T + t];
            if (b < 2 && t + 1 < n) {
                EXPECT_EQ(inputs[b * T + t], rows[b].ids[t]);
            }
            // Every prompt and template token (the header "<|im_start|>assistant\n" included) is masked.
            if (t + 1 < P || t + 1 >= n) {
                EXPECT_EQ(y, kIgnore) << "row " << b << " position " << t;
            } else {
                EXPECT_EQ(y, rows[b].ids[t + 1]) << "row " << b << " position " << t;
                supervised.push_back(y);
            }
        }
        if (b == 0) {
            EXPECT_EQ(supervised, completion) << "the answer's tokens and its end-of-turn, in order";
        } else if (b == 1) {
            EXPECT_EQ(supervised, std::vector<int64_t>{chat.end_of_turn_id()});
        } else {
            EXPECT_TRUE(supervised.empty()) << "a padding row has no targets";
        }
    }
    PolicyRow too_long{prompt, P};
    too_long.ids.resize(static_cast<size_t>(T + 2), 5);
    expect_error([&] { build_policy_batch(std::vector<PolicyRow>{too_long}, 1, T, 0, inputs, targets); },
                 {"row 0 has", "more than seq_len + 1"});
}

// ---- config -----------------------------------------------------------------------------------------

TEST_F(Grpo, ConfigIsStrict) {
    const GrpoConfig c = load_grpo_config("", {"init=x", "sampling.group_size=4", "kl_coef=0.05",
                                                "data.task_options={\"max_digits\": 3}"});
    EXPECT_EQ(c.group_size, 4);
    EXPECT_EQ(c.kl_coef, 0.05);
    EXPECT_EQ(c.task_options.at("max_digits"), 3);
    expect_error([] { load_grpo_config("", {"init=x", "sampling.grup_size=4"}); },
                 {"unknown key 'sampling.grup_size'", "did you mean 'sampling.group_size'"});
    expect_error([] { load_grpo_config("", {"init=x", "updates=1.5"}); }, {"'updates' must be an integer"});
    // One bug-switch check for every config: GRPO used to accept any name here.
    expect_error([] { load_grpo_config("", {"init=x", "bugs.negative_kll=true"}); },
                 {"unknown bug switch 'bugs.negative_kll'", "did you mean 'negative-kl'"});
    expect_error([] { load_grpo_config("", {"init=x", "seed=-3"}); }, {"'seed' must be an integer >= 0"});
    expect_error([] { load_grpo_config("", {"init=x", "optimizer.lr=0.0"}); }, {"'optimizer.lr' must be > 0, got 0.0"});
    expect_error([] { load_grpo_config("", {"init=x", "algorithm=ppo"}); }, {"'algorithm' is \"ppo\""});
    expect_error([] { load_grpo_config("", {"init=x", "sampling.temperature=0"}); }, {"sampling.temperature"});
    expect_error([] { load_grpo_config("", {}); }, {"'init' must name an SFT checkpoint"});
    const GrpoConfig shipped = load_grpo_config(std::string(REFTRAIN_SOURCE_DIR) + "/configs/grpo_addition.json", {});
    EXPECT_EQ(shipped.resolved.at("algorithm"), "grpo");
}

// ---- runs on a tiny model ---------------------------------------------------------------------------

// One tiny SFT checkpoint (byte tokenizer, d = 32) shared by the run tests.
class GrpoRun : public Grpo {
protected:
    static std::string sft_dir() {
        static const std::string dir = [] {
            const fs::path root = testing::scratch_dir("grpo_sft");
            const RunConfig config = load_run_config(
                "", {"run_dir=" + root.string(), "threads=1", "model.hidden_size=32", "model.intermediate_size=64",
                     "model.num_hidden_layers=2", "model.num_attention_heads=4", "model.num_key_value_heads=2",
                     "model.head_dim=8", "model.max_position_embeddings=64", "data.tokenizer=byte",
                     "data.task_options={\"min_digits\": 1, \"max_digits\": 2}", "data.train_examples=300",
                     "data.val_examples=0", "data.test_examples=0", "train.batch_size=4", "train.seq_len=48",
                     "train.max_steps=8", "schedule.lr=0.003", "eval.every=0",
                     "eval.exact_match_examples=0", "eval.final_test=false"});
            std::ostringstream log;
            Trainer trainer(config, log);
            for (int i = 0; i < 8; ++i) trainer.train_step();
            return trainer.save_checkpoint();
        }();
        return dir;
    }
    static GrpoConfig tiny(const std::string& run_dir, std::vector<std::string> extra = {}) {
        std::vector<std::string> sets = {"init=" + sft_dir(), "run_dir=" + run_dir, "threads=1",
                                         "sampling.prompts_per_update=3", "sampling.group_size=4",
                                         "sampling.max_new_tokens=4", "seq_len=32", "micro_batch_size=5",
                                         "updates=3", "optimizer.lr=0.003", "eval.examples=6", "eval.samples=0",
                                         "log_every=0"};
        sets.insert(sets.end(), extra.begin(), extra.end());
        return load_grpo_config("", sets);
    }
    static std::string temp(const std::string& name) {
        return testing::scratch_dir("grpo_" + name).string();
    }
};

TEST_F(GrpoRun, AFewUpdatesRunAndLogWhatTheyShould) {
    std::ostringstream log;
    GrpoTrainer trainer(tiny(temp("smoke"), {"kl_coef=0.1", "reward.format=0.1"}), log);
    const GrpoRunResult result = trainer.run();
    ASSERT_EQ(result.updates.size(), 3u);
    ASSERT_EQ(result.evals.size(), 2u);
    EXPECT_EQ(result.evals.front().update, 0);
    EXPECT_EQ(result.evals.back().update, 3);
    EXPECT_EQ(result.evals.back().examples, 6);
    // The first update scores the same weights twice: every log-ratio is exactly 0.
    EXPECT_EQ(result.updates[0].kl_k1, 0.0);
    EXPECT_EQ(result.updates[0].kl_k3, 0.0);
    EXPECT_GT(result.updates[2].kl_k3, 0.0) << "the policy has moved away from the reference";
    for (const GrpoUpdateMetrics& m : result.updates) {
        EXPECT_TRUE(std::isfinite(m.loss) && std::isfinite(m.grad_norm));
        EXPECT_GE(m.mean_length, 1.0);
        EXPECT_LE(m.mean_length, 4.0);
        EXPECT_EQ(m.zero_signal_fraction, m.zero_advantage_fraction) << "uniform groups get exactly 0";
        EXPECT_EQ(m.max_abs_uniform_advantage, 0.0);
        EXPECT_NEAR(m.kl_measured, m.kl_k1, 1e-12) << "the loss pairs log p - log p_ref the right way round";
        EXPECT_GE(m.reward_mean, 0.0);
        EXPECT_LE(m.reward_mean, 1.0);
        // The lengths of right and wrong completions average back to the mean length.
        const double right = m.accuracy, wrong = 1.0 - m.accuracy;
        const double mixed = (right > 0 ? right * m.correct_length : 0.0) + (wrong > 0 ? wrong * m.incorrect_length : 0.0);
        EXPECT_NEAR(mixed, m.mean_length, 1e-12);
        EXPECT_EQ(m.correct_length < 0, m.accuracy == 0.0);
        ASSERT_EQ(m.clip_fraction.size(), 1u);
        EXPECT_EQ(m.ratio_mean[0], 1.0) << "one inner epoch: r = 1 exactly";
    }
    EXPECT_EQ(trainer.invariants().violations("rl.kl_nonnegative"), 0);
    EXPECT_EQ(trainer.invariants().evaluations("rl.uniform_group_zero_advantage"), 3);
    // metrics.jsonl: eval, 3 updates, eval.
    std::ifstream metrics(fs::path(trainer.config().run_dir) / "metrics.jsonl");
    std::vector<nlohmann::json> lines;
    for (std::string line; std::getline(metrics, line);) lines.push_back(nlohmann::json::parse(line));
    ASSERT_EQ(lines.size(), 5u);
    EXPECT_EQ(lines[0]["kind"], "eval");
    for (const char* key : {"reward_mean", "zero_advantage_fraction", "kl_k1", "kl_k3", "mean_length", "grad_norm"}) {
        EXPECT_TRUE(lines[1].contains(key)) << key;
    }
    // The final checkpoint is a valid init for another run (and for `reftrain sample`).
    EXPECT_EQ(resolve_checkpoint_dir(trainer.config().run_dir), result.checkpoint);
    std::ostringstream log2;
    GrpoTrainer again(tiny(temp("smoke_again"), {"init=" + trainer.config().run_dir, "updates=1"}), log2);
    EXPECT_EQ(std::memcmp(again.policy().params().data(), trainer.policy().params().data(),
                          trainer.policy().params().nbytes()),
              0);
}

// Inner epochs: the first is on-policy (ratio exactly 1, nothing clipped); after a step the ratio moves
// and the clip holds some tokens. The sampler's log-probs equal the trainer's before any step, at a
// temperature other than 1 too. A reward hook's NaN leaves its group out of the update.
TEST_F(GrpoRun, InnerEpochsClipAndTheSamplerAgreesWithTheTrainer) {
    std::ostringstream log;
    GrpoTrainer trainer(tiny(temp("epochs"), {"loss.inner_epochs=3", "loss.clip_eps=0.1", "optimizer.lr=0.01",
                                              "reward.format=0.1", "sampling.temperature=0.8"}),
                        log);
    int calls = 0;
    trainer.set_reward_hook([&](const std::string&, const std::string&, double r) {
        return ++calls == 2 ? std::nan("") : r;  // one NaN, in the first group of the first update
    });
    double moved = 0.0, clipped_later = 0.0;
    for (int u = 0; u < 3; ++u) {
        const GrpoUpdateMetrics m = trainer.update();
        ASSERT_EQ(m.clip_fraction.size(), 3u);
        EXPECT_EQ(m.ratio_max_deviation[0], 0.0) << "p_old is this very forward";
        EXPECT_EQ(m.clip_fraction[0], 0.0);
        moved = std::max(moved, m.ratio_max_deviation[2]);
        clipped_later = std::max(clipped_later, m.clip_fraction[2]);
        EXPECT_LT(m.logprob_gap_mean, 1e-5) << "update " << u;
        EXPECT_TRUE(std::isfinite(m.max_abs_advantage));
        EXPECT_EQ(m.skipped_steps, 0);
        EXPECT_EQ(m.nonfinite_rewards, u == 0 ? 1 : 0);
        EXPECT_LE(m.token_weight_spread, 1.0 + 1e-9) << "every token weighs 1 / N";
    }
    EXPECT_GT(moved, 0.0);
    EXPECT_GT(clipped_later, 0.0);
    EXPECT_NE(log.str().find("its group is left out of this update"), std::string::npos) << log.str();
    for (const char* name : {"rl.ratio_moves_after_first_epoch", "rl.sampler_matches_trainer", "rl.advantages_bounded",
                             "rl.token_weight_independent_of_length"}) {
        EXPECT_GT(trainer.invariants().evaluations(name), 0) << name;
        EXPECT_EQ(trainer.invariants().violations(name), 0) << name << ": " << trainer.invariants().last_message(name);
    }
}

TEST_F(GrpoRun, TwoRunsFromTheSameSeedAreBitwiseEqual) {
    GrpoRunResult results[2];
    std::vector<std::byte> weights[2];
    for (int i = 0; i < 2; ++i) {
        std::ostringstream log;
        GrpoTrainer trainer(tiny(temp("determinism_" + std::to_string(i)), {"advantage.std_normalize=true"}), log);
        results[i] = trainer.run();
        const Arena& p = trainer.policy().params();
        weights[i].assign(static_cast<const std::byte*>(p.data()), static_cast<const std::byte*>(p.data()) + p.nbytes());
    }
    EXPECT_TRUE(weights[0] == weights[1]) << "final weights differ";
    for (size_t u = 0; u < results[0].updates.size(); ++u) {
        const GrpoUpdateMetrics &a = results[0].updates[u], &b = results[1].updates[u];
        EXPECT_EQ(a.reward_mean, b.reward_mean);
        EXPECT_EQ(a.kl_k1, b.kl_k1);
        EXPECT_EQ(a.kl_k3, b.kl_k3);
        EXPECT_EQ(a.loss, b.loss);
        EXPECT_EQ(a.grad_norm, b.grad_norm);
        EXPECT_EQ(a.sampled_tokens, b.sampled_tokens);
    }
    EXPECT_EQ(results[0].evals.back().exact_match, results[1].evals.back().exact_match);
}

}  // namespace
}  // namespace reftrain

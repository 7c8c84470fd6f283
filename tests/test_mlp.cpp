// tests/test_mlp.cpp — the RL actor-critic (model/mlp.h) and its ops (kernels/cpu/activations.h).
//
// Bounds, and why:
// - Gradients: fp64 central differences, max |analytic - numeric| <= 1e-6 * max |gradient| per tensor
//   (tests/gradcheck.h). Mutations tried once and reverted, each caught here: dropping tanh's
//   derivative (dx += dout) fails Tanh and ActorCriticGradcheck; summing bias gradients over the
//   max_batch rows instead of the last forward's n fails ActorCriticGradcheck (stale rows).
// - Orthogonal init: W W^T (wide) or W^T W (tall, square) = gain^2 I to 1e-10 in fp64. The QR runs in
//   fp64, so the real error is ~1e-15; anything worse than 1e-10 is a wrong algorithm, not rounding.
// - First policy: |logit| < 0.05 for unit-scale Gaussian observations. With actor gain 0.01 a logit is
//   0.01 * (a unit row of the output weight) . h, |h| <= sqrt(64) = 8, so |logit| <= 0.08 in the
//   worst case and ~0.005 in practice; 0.05 fails for any gain >= ~0.1.
// - F32 vs F64: |f32 - f64| <= 1e-5 * (1 + |f64|) for logits and values, three hidden layers of
//   fp32 rounding (~1e-7 each, summed over 64-term dot products) stay well inside that.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "kernels/cpu/activations.h"
#include "kernels/random.h"
#include "model/mlp.h"
#include "tests/gradcheck.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

using testing::Buffer;
using testing::expect_error;
using testing::expect_gradients_match;
using testing::weighted_sum;

std::vector<double> random_values(int64_t count, uint64_t seed, double scale = 1.0) {
    Rng rng(seed);
    std::vector<double> v(static_cast<size_t>(count));
    for (double& x : v) x = scale * rng.normal();
    return v;
}

// ---- the ops ------------------------------------------------------------------------------------------

TEST(MlpOps, BiasAddGradcheck) {
    for (auto [N, C] : {std::tuple{5, 7}, std::tuple{1, 3}, std::tuple{16, 64}}) {
        Rng rng(11);
        Buffer x("x", {N, C}), b("bias", {C}), y("y", {N, C}), g("g", {N, C}), db("dbias", {C});
        x.randomize(rng); b.randomize(rng); g.randomize(rng);
        auto loss = [&] {
            y.values = x.values;
            cpu::bias_add_forward(y, b);
            return weighted_sum(y, g);
        };
        loss();
        cpu::bias_add_backward(db, g);
        expect_gradients_match("bias_add", {&b}, {&db}, loss);
    }
}

TEST(MlpOps, TanhGradcheck) {
    for (auto [N, C] : {std::tuple{5, 7}, std::tuple{1, 3}, std::tuple{16, 64}}) {
        Rng rng(12);
        Buffer x("x", {N, C}), y("y", {N, C}), g("g", {N, C}), dx("dx", {N, C});
        x.randomize(rng, 1.5); g.randomize(rng);
        cpu::tanh_forward(y, x);
        cpu::tanh_backward(dx, g, y);
        expect_gradients_match("tanh", {&x}, {&dx}, [&] {
            cpu::tanh_forward(y, x);
            return weighted_sum(y, g);
        });
    }
}

TEST(MlpOps, BackwardsAccumulate) {
    Buffer x("x", {2, 3}), y("y", {2, 3}), g("g", {2, 3}, 1.0), dx("dx", {2, 3}, 5.0), db("dbias", {3}, 5.0);
    x.values = {0.0, 1.0, -2.0, 0.5, 0.0, 3.0};
    cpu::tanh_forward(y, x);
    cpu::tanh_backward(dx, g, y);
    for (size_t i = 0; i < 6; ++i) EXPECT_DOUBLE_EQ(dx.values[i], 5.0 + 1.0 - y.values[i] * y.values[i]);
    cpu::bias_add_backward(db, g);
    for (double v : db.values) EXPECT_DOUBLE_EQ(v, 5.0 + 2.0);  // += the sum over 2 rows of 1
}

TEST(MlpOps, ShapeErrors) {
    Buffer out("out", {4, 3}), bias("bias", {5});
    expect_error([&] { cpu::bias_add_forward(out, bias); }, {"bias_add_forward", "out", "(4, 3)"});
    Buffer x("x", {4, 2});
    expect_error([&] { cpu::tanh_forward(out, x); }, {"tanh_forward", "out"});
}

// ---- the whole actor-critic -------------------------------------------------------------------------

// Every parameter of an F64 model against finite differences of
//   L = sum g_logits * logits + sum g_values * values
// over the first n < max_batch rows, with random (not init) parameters so no bias is zero.
TEST(ActorCritic, Gradcheck) {
    ActorCriticConfig config;
    config.obs_dim = 5;
    config.num_actions = 3;
    config.hidden = {8, 6};  // unequal widths: a transposed index cannot hide
    const int64_t max_batch = 9, n = 6;
    ActorCritic model(config, max_batch, DType::F64);
    Rng rng(21);
    std::vector<Buffer> params, grads;
    params.reserve(model.params().size());
    grads.reserve(model.params().size());
    for (const Tensor& t : model.params().tensors()) {
        Buffer p(t.name, {t.numel()}), g("grad:" + t.name, {t.numel()});
        p.randomize(rng, 0.6);
        params.push_back(p);
        grads.push_back(g);
    }
    auto copy_params_in = [&] {
        for (size_t i = 0; i < params.size(); ++i)
            std::memcpy(model.params().at(i).data, params[i].values.data(), params[i].values.size() * sizeof(double));
    };
    // A forward and backward over all max_batch rows first leave other values in the activation (and
    // activation-gradient) rows past n: a forward or backward that read them would fail the check.
    std::vector<double> logits, values;
    copy_params_in();
    const std::vector<double> stale_obs = random_values(max_batch * config.obs_dim, 22, 3.0);
    model.forward(stale_obs.data(), max_batch, logits, values);
    model.backward(random_values(max_batch * config.num_actions, 26), random_values(max_batch, 27));

    const std::vector<double> obs = random_values(n * config.obs_dim, 23);
    const std::vector<double> g_logits = random_values(n * config.num_actions, 24);
    const std::vector<double> g_values = random_values(n, 25);
    auto loss = [&] {
        copy_params_in();
        model.forward(obs.data(), n, logits, values);
        double s = 0.0;
        for (size_t i = 0; i < logits.size(); ++i) s += g_logits[i] * logits[i];
        for (size_t i = 0; i < values.size(); ++i) s += g_values[i] * values[i];
        return s;
    };
    loss();
    model.zero_grad();
    model.backward(g_logits, g_values);
    for (size_t i = 0; i < grads.size(); ++i)
        std::memcpy(grads[i].values.data(), model.grads().at(i).data, grads[i].values.size() * sizeof(double));

    std::vector<Buffer*> inputs;
    std::vector<const Buffer*> analytic;
    for (size_t i = 0; i < params.size(); ++i) {
        inputs.push_back(&params[i]);
        analytic.push_back(&grads[i]);
    }
    expect_gradients_match("actor-critic", inputs, analytic, loss);
}

// The two nets share nothing: a logits gradient leaves every critic gradient 0 and vice versa, and a
// second backward adds to the first.
TEST(ActorCritic, HeadsAreSeparateAndBackwardAccumulates) {
    ActorCriticConfig config;
    ActorCritic model(config, 16, DType::F64);
    model.init_weights(3);
    const int64_t n = 10;
    const std::vector<double> obs = random_values(n * config.obs_dim, 31);
    std::vector<double> logits, values;
    model.forward(obs.data(), n, logits, values);
    model.zero_grad();
    model.backward(random_values(n * config.num_actions, 32), {});
    for (const Tensor& g : model.grads().tensors()) {
        double sum_abs = 0.0;
        for (int64_t i = 0; i < g.numel(); ++i) sum_abs += std::abs(g.ptr<double>()[i]);
        if (g.name.rfind("grad:critic.", 0) == 0) {
            EXPECT_EQ(sum_abs, 0.0) << g.name;
        } else {
            EXPECT_GT(sum_abs, 0.0) << g.name;
        }
    }
    auto starts_with = [](const std::string& name, const char* prefix) { return name.rfind(prefix, 0) == 0; };
    std::vector<std::vector<double>> after_actor;
    for (const Tensor& g : model.grads().tensors()) after_actor.emplace_back(g.ptr<double>(), g.ptr<double>() + g.numel());
    model.backward({}, random_values(n, 33));
    double critic_abs = 0.0;
    for (size_t k = 0; k < model.grads().size(); ++k) {
        const Tensor& g = model.grads().at(k);
        for (int64_t i = 0; i < g.numel(); ++i) {
            if (starts_with(g.name, "grad:actor.")) {
                EXPECT_EQ(g.ptr<double>()[i], after_actor[k][i]) << g.name << " changed by a values-only backward";
            } else {
                critic_abs += std::abs(g.ptr<double>()[i]);
            }
        }
    }
    EXPECT_GT(critic_abs, 0.0);
}

TEST(ActorCritic, LayoutAndNames) {
    ActorCriticConfig config;  // CartPole: 4 -> 64 -> 64 -> {2, 1}
    ActorCritic model(config, 8);
    std::vector<std::string> names;
    for (const Tensor& t : model.params().tensors()) names.push_back(t.name + " " + t.shape_str());
    const std::vector<std::string> expected = {
        "actor.0.weight (64, 4)",   "actor.0.bias (64)",  "actor.2.weight (64, 64)", "actor.2.bias (64)",
        "actor.4.weight (2, 64)",   "actor.4.bias (2)",   "critic.0.weight (64, 4)", "critic.0.bias (64)",
        "critic.2.weight (64, 64)", "critic.2.bias (64)", "critic.4.weight (1, 64)", "critic.4.bias (1)"};
    EXPECT_EQ(names, expected);
    EXPECT_EQ(model.num_parameters(), 2 * (4 * 64 + 64 + 64 * 64 + 64) + 2 * 64 + 2 + 64 + 1);  // 9091
    EXPECT_TRUE(model.grads().contains("grad:actor.0.weight"));
    for (const char* act : {"obs", "actor.0.out", "actor.1.out", "actor.2.out", "actor.3.out", "logits",
                            "critic.0.out", "critic.1.out", "critic.2.out", "critic.3.out", "value"})
        EXPECT_TRUE(model.acts().contains(act)) << act;
}

// ---- init ---------------------------------------------------------------------------------------------

// W W^T (rows <= cols) or W^T W (rows > cols) must be gain^2 I.
void expect_orthogonal(const Tensor& w, double gain) {
    const int64_t rows = w.dim(0), cols = w.dim(1);
    const double* p = w.ptr<double>();
    const bool wide = rows <= cols;
    const int64_t k = wide ? rows : cols;
    double max_error = 0.0;
    for (int64_t i = 0; i < k; ++i) {
        for (int64_t j = 0; j < k; ++j) {
            double dot = 0.0;
            if (wide) for (int64_t c = 0; c < cols; ++c) dot += p[i * cols + c] * p[j * cols + c];
            else for (int64_t r = 0; r < rows; ++r) dot += p[r * cols + i] * p[r * cols + j];
            max_error = std::max(max_error, std::abs(dot - (i == j ? gain * gain : 0.0)));
        }
    }
    EXPECT_LE(max_error, 1e-10) << w.name << " " << w.shape_str() << " is not gain^2-orthogonal, gain " << gain;
}

TEST(ActorCritic, OrthogonalInitAndZeroBiases) {
    ActorCriticConfig config;
    config.obs_dim = 100;        // actor.0 / critic.0 are wide (64, 100)
    config.num_actions = 3;
    config.hidden = {64, 32};    // actor.2 tall (32, 64)... and a square layer below
    ActorCriticConfig square = config;
    square.obs_dim = 4;
    square.hidden = {64, 64};    // actor.0 tall (64, 4), actor.2 square (64, 64), heads wide
    for (const ActorCriticConfig& c : {config, square}) {
        ActorCritic model(c, 4, DType::F64);
        model.init_weights(7);
        for (const Tensor& t : model.params().tensors()) {
            if (t.ndim == 1) {
                for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t.ptr<double>()[i], 0.0) << t.name;
                continue;
            }
            const double gain = t.name == "actor.4.weight" ? 0.01 : t.name == "critic.4.weight" ? 1.0 : std::sqrt(2.0);
            expect_orthogonal(t, gain);
        }
        // Orthogonal is not the identity: a square weight must be a rotation far from gain * I.
        if (c.hidden[0] == c.hidden[1]) {
            const Tensor& w = model.params().get("actor.2.weight");
            double off_identity = 0.0;
            for (int64_t i = 0; i < 64; ++i)
                for (int64_t j = 0; j < 64; ++j)
                    off_identity = std::max(off_identity, std::abs(w.ptr<double>()[i * 64 + j] - (i == j ? std::sqrt(2.0) : 0.0)));
            EXPECT_GT(off_identity, 0.1);
        }
    }
}

TEST(ActorCritic, FirstPolicyIsNearUniform) {
    ActorCriticConfig config;
    ActorCritic model(config, 256);
    model.init_weights(1);
    const std::vector<double> obs = random_values(256 * config.obs_dim, 41);
    std::vector<double> logits, values;
    model.forward(obs.data(), 256, logits, values);
    double max_logit = 0.0, max_value = 0.0;
    for (double v : logits) max_logit = std::max(max_logit, std::abs(v));
    for (double v : values) max_value = std::max(max_value, std::abs(v));
    EXPECT_LT(max_logit, 0.05);
    EXPECT_GT(max_logit, 0.0);
    EXPECT_GT(max_value, 0.05) << "the critic (gain 1) should not be squashed like the actor";
}

TEST(ActorCritic, Deterministic) {
    ActorCriticConfig config;
    ActorCritic a(config, 64), b(config, 64), c(config, 64);
    a.init_weights(5);
    b.init_weights(5);
    c.init_weights(6);
    ASSERT_EQ(a.params().nbytes(), b.params().nbytes());
    EXPECT_EQ(std::memcmp(a.params().data(), b.params().data(), a.params().nbytes()), 0);
    EXPECT_NE(std::memcmp(a.params().data(), c.params().data(), a.params().nbytes()), 0);
    const std::vector<double> obs = random_values(64 * config.obs_dim, 51);
    std::vector<double> la, va, lb, vb;
    a.forward(obs.data(), 64, la, va);
    b.forward(obs.data(), 64, lb, vb);
    EXPECT_EQ(la, lb);
    EXPECT_EQ(va, vb);
    const std::vector<double> dl = random_values(64 * 2, 52), dv = random_values(64, 53);
    a.zero_grad();
    b.zero_grad();
    a.backward(dl, dv);
    b.backward(dl, dv);
    EXPECT_EQ(std::memcmp(a.grads().data(), b.grads().data(), a.grads().nbytes()), 0);
}

TEST(ActorCritic, Float32MatchesFloat64) {
    ActorCriticConfig config;
    ActorCritic f32(config, 128, DType::F32), f64(config, 128, DType::F64);
    f32.init_weights(9);
    f64.init_weights(9);
    const std::vector<double> obs = random_values(100 * config.obs_dim, 61);
    std::vector<double> l32, v32, l64, v64;
    f32.forward(obs.data(), 100, l32, v32);
    f64.forward(obs.data(), 100, l64, v64);
    double worst = 0.0;
    for (size_t i = 0; i < l64.size(); ++i) worst = std::max(worst, std::abs(l32[i] - l64[i]) / (1 + std::abs(l64[i])));
    for (size_t i = 0; i < v64.size(); ++i) worst = std::max(worst, std::abs(v32[i] - v64[i]) / (1 + std::abs(v64[i])));
    EXPECT_LE(worst, 1e-5);
    EXPECT_GT(worst, 0.0) << "F32 and F64 agree exactly: is the F32 model computing in fp64?";
}

TEST(ActorCritic, ForwardAndBackwardRefuseWrongSizes) {
    ActorCriticConfig config;
    ActorCritic model(config, 8);
    const std::vector<double> obs(9 * config.obs_dim, 0.0);
    std::vector<double> logits, values;
    expect_error([&] { model.backward({}, {}); }, {"before any forward"});
    expect_error([&] { model.forward(obs.data(), 9, logits, values); }, {"n = 9", "max_batch = 8"});
    model.forward(obs.data(), 5, logits, values);
    EXPECT_EQ(logits.size(), 10u);
    EXPECT_EQ(values.size(), 5u);
    expect_error([&] { model.backward(std::vector<double>(8, 0.0), {}); }, {"dlogits has 8 values", "10"});
    expect_error([&] { model.backward({}, std::vector<double>(4, 0.0)); }, {"dvalues has 4 values", "n = 5"});
}

// ---- categorical helpers --------------------------------------------------------------------------------

TEST(ActorCritic, LogSoftmaxAndEntropy) {
    std::vector<double> logp;
    // Uniform over A = 4 (any constant logit): log p = -log 4, entropy = log 4.
    log_softmax_rows({2.5, 2.5, 2.5, 2.5}, 1, 4, logp);
    for (double v : logp) EXPECT_NEAR(v, -std::log(4.0), 1e-15);
    EXPECT_NEAR(categorical_entropy(logp.data(), 4), std::log(4.0), 1e-15);
    // Two rows: p = (1/4, 3/4) from logits (0, log 3); and a row far out of exp's range.
    log_softmax_rows({0.0, std::log(3.0), 1000.0, 0.0}, 2, 2, logp);
    EXPECT_NEAR(logp[0], std::log(0.25), 1e-15);
    EXPECT_NEAR(logp[1], std::log(0.75), 1e-15);
    EXPECT_NEAR(categorical_entropy(logp.data(), 2), -(0.25 * std::log(0.25) + 0.75 * std::log(0.75)), 1e-15);
    EXPECT_EQ(logp[2], 0.0);
    EXPECT_EQ(logp[3], -1000.0);
    const double h = categorical_entropy(logp.data() + 2, 2);
    EXPECT_EQ(h, 0.0);  // p = (1, e^-1000 -> 0 in fp64): entropy 0, not NaN
    // An impossible action (logit -inf) contributes 0, not 0 * -inf = NaN.
    log_softmax_rows({0.0, -INFINITY}, 1, 2, logp);
    EXPECT_EQ(categorical_entropy(logp.data(), 2), 0.0);
    expect_error([&] { log_softmax_rows({0.0, 1.0, 2.0}, 2, 2, logp); }, {"log_softmax_rows", "fewer than n * A = 4"});
}

// ---- save / load ----------------------------------------------------------------------------------------

class ActorCriticFiles : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = testing::scratch_dir("mlp_" + testing::current_test_name());
    }
    std::string path(const std::string& name) const { return (dir_ / name).string(); }
    std::filesystem::path dir_;
};

TEST_F(ActorCriticFiles, SaveLoadRoundTrip) {
    ActorCriticConfig config;
    ActorCritic a(config, 32), b(config, 32);
    a.init_weights(71);
    b.init_weights(72);
    a.save(path("agent.safetensors"));
    b.load(path("agent.safetensors"));
    EXPECT_EQ(std::memcmp(a.params().data(), b.params().data(), a.params().nbytes()), 0);
    const std::vector<double> obs = random_values(32 * config.obs_dim, 73);
    std::vector<double> la, va, lb, vb;
    a.forward(obs.data(), 32, la, va);
    b.forward(obs.data(), 32, lb, vb);
    EXPECT_EQ(la, lb);
    EXPECT_EQ(va, vb);
}

TEST_F(ActorCriticFiles, LoadRefusesAnotherArchitecture) {
    ActorCriticConfig config;
    ActorCritic saved(config, 4);
    saved.init_weights(1);
    saved.save(path("agent.safetensors"));

    ActorCriticConfig shallower = config;
    shallower.hidden = {64};  // no actor.4 / critic.4
    ActorCritic one_layer(shallower, 4);
    expect_error([&] { one_layer.load(path("agent.safetensors")); },
                 {path("agent.safetensors"), "unexpected: ", "actor.4.weight", "critic.4.bias"});

    ActorCriticConfig deeper = config;
    deeper.hidden = {64, 64, 64};
    ActorCritic three_layers(deeper, 4);
    expect_error([&] { three_layers.load(path("agent.safetensors")); }, {path("agent.safetensors"), "missing: ", "actor.6.weight"});

    ActorCriticConfig narrower = config;
    narrower.hidden = {32, 32};
    ActorCritic narrow(narrower, 4);
    expect_error([&] { narrow.load(path("agent.safetensors")); },
                 {path("agent.safetensors"), "actor.0.weight", "(64, 4)", "(32, 4)"});
}

}  // namespace
}  // namespace reftrain

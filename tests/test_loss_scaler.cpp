// tests/test_loss_scaler.cpp — train/loss_scaler.h against hand-computed sequences of torch's
// GradScaler rules: growth exactly after growth_interval clean steps, backoff and skip on a non-finite
// gradient with the clean-step count reset, no growth into inf, the disabled scaler, unscaling equal to
// division (exactly for powers of two), detection of inf / -inf / NaN anywhere, and the checkpoint
// state round trip with its refusals.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/arena.h"
#include "kernels/random.h"
#include "train/loss_scaler.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

TEST(LossScaler, DefaultsAreTorchGradScalers) {
    const LossScaler scaler;
    EXPECT_EQ(scaler.scale(), 65536.0f);
    EXPECT_EQ(scaler.growth_tracker(), 0);
    EXPECT_EQ(scaler.config().growth_factor, 2.0);
    EXPECT_EQ(scaler.config().backoff_factor, 0.5);
    EXPECT_EQ(scaler.config().growth_interval, 2000);
}

TEST(LossScaler, GrowsExactlyAfter2000CleanSteps) {
    LossScaler scaler;
    for (int i = 1; i <= 1999; ++i) {
        ASSERT_FALSE(scaler.update(false));
        ASSERT_EQ(scaler.scale(), 65536.0f) << "grew early, after " << i << " clean steps";
        ASSERT_EQ(scaler.growth_tracker(), i);
    }
    EXPECT_FALSE(scaler.update(false));  // the 2000th clean step
    EXPECT_EQ(scaler.scale(), 131072.0f);
    EXPECT_EQ(scaler.growth_tracker(), 0);
    for (int i = 0; i < 1999; ++i) scaler.update(false);
    EXPECT_EQ(scaler.scale(), 131072.0f);
    scaler.update(false);
    EXPECT_EQ(scaler.scale(), 262144.0f);
}

TEST(LossScaler, OverflowSkipsHalvesAndRestartsTheCount) {
    LossScaler scaler;
    for (int i = 0; i < 1500; ++i) scaler.update(false);
    EXPECT_TRUE(scaler.update(true));  // skip
    EXPECT_EQ(scaler.scale(), 32768.0f);
    EXPECT_EQ(scaler.growth_tracker(), 0);
    EXPECT_EQ(scaler.skipped_steps(), 1);
    // The 1500 clean steps before the overflow no longer count: growth needs 2000 more.
    for (int i = 0; i < 1999; ++i) scaler.update(false);
    EXPECT_EQ(scaler.scale(), 32768.0f);
    scaler.update(false);
    EXPECT_EQ(scaler.scale(), 65536.0f);
}

// A scripted sequence with growth_interval 3, checked step by step against values worked out by hand
// from the rules in loss_scaler.h (C = clean, I = inf/NaN found).
TEST(LossScaler, ScriptedSequenceMatchesHandComputedValues) {
    LossScalerConfig config;
    config.init_scale = 8.0;
    config.growth_interval = 3;
    LossScaler scaler(config);
    struct Step { bool nonfinite; float scale; int64_t tracker; };
    const std::vector<Step> script = {
        {false, 8, 1}, {false, 8, 2}, {true, 4, 0},                  // overflow one step before growth
        {false, 4, 1}, {false, 4, 2}, {false, 8, 0},                 // 3 clean: grows
        {false, 8, 1}, {true, 4, 0}, {true, 2, 0}, {true, 1, 0},     // three overflows in a row
        {false, 1, 1}, {false, 1, 2}, {false, 2, 0}, {false, 2, 1}, {false, 2, 2}, {false, 4, 0},
        {true, 2, 0}, {false, 2, 1},
    };
    int64_t skipped = 0;
    for (size_t i = 0; i < script.size(); ++i) {
        EXPECT_EQ(scaler.update(script[i].nonfinite), script[i].nonfinite) << "step " << i;
        skipped += script[i].nonfinite;
        EXPECT_EQ(scaler.scale(), script[i].scale) << "step " << i;
        EXPECT_EQ(scaler.growth_tracker(), script[i].tracker) << "step " << i;
    }
    EXPECT_EQ(scaler.skipped_steps(), skipped);
}

TEST(LossScaler, ScaleIsFp32AndNeverGrowsIntoInf) {
    LossScalerConfig config;
    config.init_scale = std::ldexp(1.0, 127);
    config.growth_interval = 1;
    LossScaler scaler(config);
    scaler.update(false);  // 2^128 is inf in fp32: torch keeps the old scale
    EXPECT_EQ(scaler.scale(), std::ldexp(1.0f, 127));
    EXPECT_EQ(scaler.growth_tracker(), 0);

    // A factor that is not a power of two: the product is rounded to fp32 at every update.
    config.init_scale = 65536.0;
    config.backoff_factor = 0.3;
    LossScaler odd(config);
    float expected = 65536.0f;
    for (int i = 0; i < 5; ++i) {
        odd.update(true);
        expected = static_cast<float>(static_cast<double>(expected) * 0.3);
        EXPECT_EQ(odd.scale(), expected) << "backoff " << i;
    }
}

TEST(LossScaler, DisabledScalerIsOneAndNeverSkips) {
    LossScalerConfig config;
    config.enabled = false;
    LossScaler scaler(config);
    EXPECT_EQ(scaler.scale(), 1.0f);
    EXPECT_FALSE(scaler.update(true));
    EXPECT_FALSE(scaler.update(false));
    EXPECT_EQ(scaler.scale(), 1.0f);
    EXPECT_EQ(scaler.growth_tracker(), 0);
    EXPECT_EQ(scaler.skipped_steps(), 0);
}

TEST(LossScaler, RefusesBadConfig) {
    auto with = [](auto edit) { LossScalerConfig c; edit(c); return c; };
    testing::expect_error([&] { LossScaler(with([](LossScalerConfig& c) { c.growth_factor = 1.0; })); },
                          {"growth_factor", "> 1"});
    testing::expect_error([&] { LossScaler(with([](LossScalerConfig& c) { c.backoff_factor = 1.0; })); },
                          {"backoff_factor", "(0, 1)"});
    testing::expect_error([&] { LossScaler(with([](LossScalerConfig& c) { c.growth_interval = 0; })); },
                          {"growth_interval", ">= 1"});
    testing::expect_error([&] { LossScaler(with([](LossScalerConfig& c) { c.init_scale = 1e39; })); },
                          {"init_scale", "fp32"});
    testing::expect_error([&] { LossScaler(with([](LossScalerConfig& c) { c.init_scale = 0.0; })); },
                          {"init_scale"});
}

// Gradients with F32 and F64 tensors, one longer than any parallel chunk.
void fill_gradients(Arena& grads, uint64_t seed) {
    grads.add("grad:a", DType::F32, {3, 7});
    grads.add("grad:b", DType::F64, {5});
    grads.add("grad:c", DType::F32, {20000});
    grads.allocate();
    Rng rng(seed);
    for (const Tensor& t : grads.tensors()) {
        for (int64_t i = 0; i < t.numel(); ++i) {
            const double v = 1000.0 * rng.normal();
            if (t.dtype == DType::F32) t.ptr<float>()[i] = static_cast<float>(v);
            else t.ptr<double>()[i] = v;
        }
    }
}

TEST(UnscaleAndCheck, PowerOfTwoScaleEqualsDivisionExactly) {
    Arena grads("gradients"), original("copy");
    fill_gradients(grads, 1);
    fill_gradients(original, 1);
    EXPECT_FALSE(unscale_and_check(grads, 65536.0));
    for (size_t t = 0; t < grads.size(); ++t) {
        const Tensor& g = grads.at(t);
        const Tensor& o = original.at(t);
        for (int64_t i = 0; i < g.numel(); ++i) {
            if (g.dtype == DType::F32) ASSERT_EQ(g.ptr<float>()[i], o.ptr<float>()[i] / 65536.0f) << g.name << i;
            else ASSERT_EQ(g.ptr<double>()[i], o.ptr<double>()[i] / 65536.0) << g.name << i;
        }
    }
}

TEST(UnscaleAndCheck, OtherScalesMultiplyByTheFp32Reciprocal) {
    Arena grads("gradients"), original("copy");
    fill_gradients(grads, 2);
    fill_gradients(original, 2);
    const double scale = 3000.0;
    const float inv_scale = static_cast<float>(1.0 / scale);  // torch: scale.double().reciprocal().float()
    EXPECT_FALSE(unscale_and_check(grads, scale));
    for (size_t t = 0; t < grads.size(); ++t) {
        const Tensor& g = grads.at(t);
        const Tensor& o = original.at(t);
        for (int64_t i = 0; i < g.numel(); ++i) {
            if (g.dtype == DType::F32) {
                const float got = g.ptr<float>()[i], x = o.ptr<float>()[i];
                ASSERT_EQ(got, x * inv_scale) << g.name << i;
                // and within a couple of fp32 roundings of the true quotient
                ASSERT_NEAR(got, x / 3000.0, 2.5e-7 * std::fabs(x / 3000.0)) << g.name << i;
            } else {
                ASSERT_EQ(g.ptr<double>()[i], o.ptr<double>()[i] * static_cast<double>(inv_scale)) << g.name << i;
            }
        }
    }
}

TEST(UnscaleAndCheck, DetectsInfMinusInfAndNanAnywhere) {
    struct Case { const char* tensor; int64_t index; double value; };
    const Case cases[] = {{"grad:a", 0, kInf}, {"grad:c", 19999, -kInf}, {"grad:c", 12345, kNaN},
                          {"grad:b", 4, kNaN}, {"grad:b", 0, -kInf}};
    for (const Case& c : cases) {
        Arena grads("gradients");
        fill_gradients(grads, 3);
        Tensor& t = grads.get(c.tensor);
        if (t.dtype == DType::F32) t.ptr<float>()[c.index] = static_cast<float>(c.value);
        else t.ptr<double>()[c.index] = c.value;
        const float before = grads.get("grad:a").ptr<float>()[1];
        EXPECT_TRUE(unscale_and_check(grads, 1024.0)) << c.tensor << "[" << c.index << "] = " << c.value;
        // Everything is unscaled even so, as torch does.
        EXPECT_EQ(grads.get("grad:a").ptr<float>()[1], before / 1024.0f);
    }
    Arena clean("gradients");
    fill_gradients(clean, 3);
    clean.get("grad:c").ptr<float>()[7] = std::numeric_limits<float>::max();  // large but finite
    EXPECT_FALSE(unscale_and_check(clean, 1.0));
    EXPECT_EQ(clean.get("grad:c").ptr<float>()[7], std::numeric_limits<float>::max());  // scale 1: unchanged
}

TEST(UnscaleAndCheck, RefusesAScaleThatIsNotFiniteAndPositive) {
    Arena grads("gradients");
    fill_gradients(grads, 4);
    for (double bad : {0.0, -2.0, static_cast<double>(kInf), 1e-50}) {
        testing::expect_error([&] { unscale_and_check(grads, bad); }, {"unscale_and_check", "finite and > 0"});
    }
}

TEST(LossScaler, StateRoundTripsThroughJsonTextAndContinuesIdentically) {
    LossScalerConfig config;
    config.backoff_factor = 0.3;  // a scale that is not a power of two must survive the text exactly
    config.growth_interval = 7;
    LossScaler a(config);
    for (int i = 0; i < 3; ++i) a.update(true);
    for (int i = 0; i < 5; ++i) a.update(false);
    const std::string text = a.to_json().dump();
    LossScaler b(config);
    b.from_json(nlohmann::json::parse(text));
    EXPECT_EQ(b.scale(), a.scale());
    EXPECT_EQ(b.growth_tracker(), 5);
    EXPECT_EQ(b.skipped_steps(), 3);
    const bool script[] = {false, false, true, false, false, false, false, false, false, false};
    for (bool nonfinite : script) {
        EXPECT_EQ(a.update(nonfinite), b.update(nonfinite));
        EXPECT_EQ(a.scale(), b.scale());
        EXPECT_EQ(a.growth_tracker(), b.growth_tracker());
    }
}

TEST(LossScaler, RefusesBadState) {
    LossScaler scaler;  // growth_interval 2000
    const nlohmann::json good = scaler.to_json();
    auto edited = [&](const char* field, nlohmann::json value) { nlohmann::json s = good; s[field] = value; return s; };
    nlohmann::json missing = good;
    missing.erase("growth_tracker");
    testing::expect_error([&] { scaler.from_json(missing); }, {"loss scaler state", "'growth_tracker'", "missing"});
    testing::expect_error([&] { scaler.from_json(edited("growth_tracker", 2000)); },
                          {"'growth_tracker'", "[0, 2000)", "2000"});
    testing::expect_error([&] { scaler.from_json(edited("growth_tracker", 1.5)); }, {"'growth_tracker'", "integer"});
    testing::expect_error([&] { scaler.from_json(edited("scale", -1.0)); }, {"'scale'", "> 0"});
    testing::expect_error([&] { scaler.from_json(edited("scale", 0.1)); }, {"'scale'", "fp32"});  // not an fp32 value
    testing::expect_error([&] { scaler.from_json(edited("scale", "big")); }, {"'scale'", "number"});
    testing::expect_error([&] { scaler.from_json(edited("skipped_steps", -3)); }, {"'skipped_steps'", ">= 0"});
    testing::expect_error([&] { scaler.from_json(nlohmann::json::array()); }, {"loss scaler state", "object"});
    EXPECT_EQ(scaler.scale(), 65536.0f);  // nothing was half-loaded
    EXPECT_EQ(scaler.growth_tracker(), 0);
}

}  // namespace
}  // namespace reftrain

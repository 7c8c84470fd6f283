// tests/test_schedule.cpp — train/schedule.h: the value of every kind at chosen steps against the
// formulas of the header, validation messages naming their field, and the rule that the schedule is
// indexed by optimizer step under gradient accumulation (docs/failures/README.md: scheduler-per-microbatch).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <numbers>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "train/schedule.h"

namespace reftrain {
namespace {

constexpr double kTolerance = 1e-15;  // relative; the formulas are evaluated in fp64

ScheduleConfig make(const std::string& kind, double lr, int64_t warmup, int64_t total) {
    ScheduleConfig c;
    c.kind = kind;
    c.lr = lr;
    c.warmup_steps = warmup;
    c.total_steps = total;
    return c;
}

void expect_lr(const ScheduleConfig& c, int64_t step, double expected) {
    EXPECT_NEAR(lr_at(c, step), expected, kTolerance * std::max(1.0, std::abs(expected)))
        << c.kind << " (" << c.decay_shape << ") at step " << step;
}

void expect_invalid(const ScheduleConfig& c, const std::string& field, const std::string& phrase) {
    try {
        validate(c);
        ADD_FAILURE() << "validate accepted a config with a bad " << field;
    } catch (const Error& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find(field), std::string::npos) << "message lacks \"" << field << "\": " << message;
        EXPECT_NE(message.find(phrase), std::string::npos) << "message lacks \"" << phrase << "\": " << message;
    }
}

TEST(Schedule, ConstantIsLrEverywhere) {
    ScheduleConfig c = make("constant", 3e-4, 0, 0);
    validate(c);
    for (int64_t step : {0, 1, 10, 1000000}) expect_lr(c, step, 3e-4);
    EXPECT_EQ(decay_start_step(make("constant", 1.0, 0, 50)), 50);
}

TEST(Schedule, LinearWarmupRampsFromLrOverWarmupToLr) {
    ScheduleConfig c = make("linear_warmup", 1e-3, 10, 0);
    validate(c);
    expect_lr(c, 0, 1e-3 / 10);  // the first update is not wasted at lr = 0
    expect_lr(c, 4, 1e-3 * 5 / 10);
    expect_lr(c, 9, 1e-3);       // warmup - 1 reaches lr
    expect_lr(c, 10, 1e-3);
    expect_lr(c, 12345, 1e-3);
    for (int64_t s = 1; s < 10; ++s) EXPECT_GT(lr_at(c, s), lr_at(c, s - 1)) << "warmup must increase at " << s;
}

TEST(Schedule, CosineWarmsUpThenFollowsTheHalfCosineToTheFinalFraction) {
    ScheduleConfig c = make("cosine", 2e-3, 10, 110);
    c.final_lr_fraction = 0.1;
    validate(c);
    const double lr_min = 0.1 * 2e-3;
    expect_lr(c, 0, 2e-3 / 10);
    expect_lr(c, 9, 2e-3);
    expect_lr(c, 10, 2e-3);                          // p = 0: the peak
    expect_lr(c, 60, lr_min + (2e-3 - lr_min) / 2);  // p = 0.5: the midpoint
    expect_lr(c, 35, lr_min + (2e-3 - lr_min) * (1 + std::cos(std::numbers::pi * 0.25)) / 2);
    expect_lr(c, 110, lr_min);                       // p = 1: the final fraction
    expect_lr(c, 111, lr_min);                       // past the end it stays there
    expect_lr(c, 100000, lr_min);
    for (int64_t s = 11; s <= 110; ++s) EXPECT_LT(lr_at(c, s), lr_at(c, s - 1)) << "cosine must decrease at " << s;

    // warmup == total_steps leaves no decay span; the value after warmup is the final one.
    ScheduleConfig edge = make("cosine", 1.0, 5, 5);
    validate(edge);
    expect_lr(edge, 4, 1.0);
    expect_lr(edge, 5, 0.0);
}

TEST(Schedule, WsdIsStableUntilTheDecayStartThenEachShapeDecaysToLrMin) {
    for (const char* shape : {"linear", "cosine", "sqrt"}) {
        ScheduleConfig c = make("wsd", 1e-3, 5, 100);
        c.decay_fraction = 0.25;
        c.final_lr_fraction = 0.05;
        c.decay_shape = shape;
        validate(c);
        const double lr_min = 0.05 * 1e-3;
        const int64_t start = decay_start_step(c);
        EXPECT_EQ(start, 100 - 25);
        expect_lr(c, 0, 1e-3 / 5);
        expect_lr(c, 4, 1e-3);
        for (int64_t s = 5; s <= start; ++s) expect_lr(c, s, 1e-3);  // stable, including the decay's first step
        for (int64_t s = start + 1; s <= 100; ++s) {
            EXPECT_LT(lr_at(c, s), lr_at(c, s - 1)) << shape << " must decrease at step " << s;
        }
        expect_lr(c, 100, lr_min);
        expect_lr(c, 500, lr_min);
        // The shape's formula at a quarter of the decay (step start + 25 / 4 is not integral, so
        // evaluate q exactly at a step).
        const int64_t s = start + 10;
        const double q = 10.0 / 25.0;
        const double remaining = std::string(shape) == "linear"   ? 1 - q
                                 : std::string(shape) == "cosine" ? (1 + std::cos(std::numbers::pi * q)) / 2
                                                                  : 1 - std::sqrt(q);
        expect_lr(c, s, lr_min + (1e-3 - lr_min) * remaining);
    }
}

TEST(Schedule, WsdDecayStartRoundsTheDecayLength) {
    ScheduleConfig c = make("wsd", 1.0, 0, 10);
    c.decay_fraction = 0.25;  // 2.5 decay steps: llround gives 3 (half away from zero)
    EXPECT_EQ(decay_start_step(c), 7);
    c.decay_fraction = 0.21;  // 2.1 -> 2
    EXPECT_EQ(decay_start_step(c), 8);
    c.decay_fraction = 0.0;   // no decay: stable at lr forever
    validate(c);
    EXPECT_EQ(decay_start_step(c), 10);
    expect_lr(c, 10, 1.0);
    expect_lr(c, 99, 1.0);
    c.decay_fraction = 1.0;   // decay from step 0
    EXPECT_EQ(decay_start_step(c), 0);
    expect_lr(c, 0, 1.0);
    expect_lr(c, 5, 0.5);
}

TEST(Schedule, ValidationNamesTheField) {
    ScheduleConfig c = make("cosine", 1e-3, 10, 100);
    validate(c);

    ScheduleConfig bad = c;
    bad.kind = "cosnie";
    expect_invalid(bad, "schedule.kind", "cosnie");
    bad = c;
    bad.kind = "wsd";
    bad.decay_shape = "exp";
    expect_invalid(bad, "schedule.decay_shape", "exp");
    bad = c;
    bad.warmup_steps = -1;
    expect_invalid(bad, "schedule.warmup_steps", ">= 0");
    bad = c;
    bad.total_steps = -5;
    expect_invalid(bad, "schedule.total_steps", ">= 0");
    bad = c;
    bad.warmup_steps = 101;
    expect_invalid(bad, "schedule.warmup_steps", "longer than schedule.total_steps");
    bad = c;
    bad.total_steps = 0;
    bad.warmup_steps = 0;
    expect_invalid(bad, "schedule.total_steps", "required");
    bad.kind = "wsd";
    expect_invalid(bad, "schedule.total_steps", "required");
    bad = c;
    bad.final_lr_fraction = 1.5;
    expect_invalid(bad, "schedule.final_lr_fraction", "[0, 1]");
    bad = c;
    bad.decay_fraction = -0.1;
    expect_invalid(bad, "schedule.decay_fraction", "[0, 1]");
    bad = c;
    bad.lr = std::nan("");
    expect_invalid(bad, "schedule.lr", "finite");
    bad = make("constant", 1e-3, 10, 0);
    expect_invalid(bad, "schedule.warmup_steps", "linear_warmup");
    bad = make("wsd", 1e-3, 90, 100);  // decay of 20 steps starts at 80, inside the warmup
    expect_invalid(bad, "schedule.warmup_steps", "runs into the WSD decay");

    // linear_warmup needs no total_steps.
    validate(make("linear_warmup", 1e-3, 10, 0));
}

// A miniature training loop: N optimizer steps of k micro-batches each. The correct loop asks the
// schedule once per optimizer step, at the optimizer step index; the buggy loop (the bug the header
// warns about) asks at the micro-batch index. Both record the lr every optimizer update used.
std::vector<double> lrs_used(const ScheduleConfig& c, int64_t optimizer_steps, int64_t micro_batches,
                             bool index_by_micro_batch) {
    std::vector<double> used;
    int64_t micro_batch = 0;
    for (int64_t step = 0; step < optimizer_steps; ++step) {
        double lr = 0.0;
        for (int64_t m = 0; m < micro_batches; ++m, ++micro_batch) {
            // forward + backward of one micro-batch would go here; the last one closes the step
            if (index_by_micro_batch) lr = lr_at(c, micro_batch);
        }
        if (!index_by_micro_batch) lr = lr_at(c, step);
        used.push_back(lr);  // optimizer.step(lr)
    }
    return used;
}

TEST(Schedule, GradientAccumulationIndexesByOptimizerStep) {
    ScheduleConfig c = make("cosine", 1e-3, 4, 20);
    c.final_lr_fraction = 0.1;
    validate(c);
    const std::vector<double> reference = lrs_used(c, 20, 1, false);
    for (int64_t k : {2, 3, 8}) {
        EXPECT_EQ(lrs_used(c, 20, k, false), reference) << "k = " << k << " micro-batches per step";
        // The check above would catch the bug: indexing by micro-batch gives another sequence
        // (the warmup ends k times too early and the decay runs k times too fast).
        const std::vector<double> buggy = lrs_used(c, 20, k, true);
        EXPECT_NE(buggy, reference) << "k = " << k;
        EXPECT_EQ(buggy.back(), 0.1 * 1e-3);  // already at the floor long before the end
    }
}

}  // namespace
}  // namespace reftrain

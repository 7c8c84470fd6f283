// train/schedule.cpp — see schedule.h for the formulas. Every kind shares the same warmup ramp, so
// lr_at handles warmup first and each kind only describes what comes after it.
#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "kernels/error.h"

namespace reftrain {

namespace {

bool is_known_kind(const std::string& kind) {
    return kind == "constant" || kind == "linear_warmup" || kind == "cosine" || kind == "wsd";
}

bool is_known_shape(const std::string& shape) { return shape == "linear" || shape == "cosine" || shape == "sqrt"; }

void check_fraction(double value, const char* field) {
    check(std::isfinite(value) && value >= 0.0 && value <= 1.0, "schedule.", field,
          ": must be a fraction in [0, 1], got ", value);
}

}  // namespace

void validate(const ScheduleConfig& config) {
    check(is_known_kind(config.kind), "schedule.kind: unknown schedule '", config.kind,
          "' (expected constant, linear_warmup, cosine or wsd)");
    check(is_known_shape(config.decay_shape), "schedule.decay_shape: unknown shape '", config.decay_shape,
          "' (expected linear, cosine or sqrt)");
    check(std::isfinite(config.lr) && config.lr >= 0.0, "schedule.lr: must be a finite number >= 0, got ",
          config.lr);
    check(config.warmup_steps >= 0, "schedule.warmup_steps: must be >= 0, got ", config.warmup_steps);
    check(config.total_steps >= 0, "schedule.total_steps: must be >= 0, got ", config.total_steps);
    check_fraction(config.final_lr_fraction, "final_lr_fraction");
    check_fraction(config.decay_fraction, "decay_fraction");

    // A warmup the kind would ignore is a config mistake, not a no-op the user should discover later.
    check(config.kind != "constant" || config.warmup_steps == 0, "schedule.warmup_steps: must be 0 for kind "
          "'constant', got ", config.warmup_steps, " (use kind 'linear_warmup' to warm up)");
    const bool decays = config.kind == "cosine" || config.kind == "wsd";
    check(!decays || config.total_steps >= 1, "schedule.total_steps: required (>= 1) for kind '", config.kind,
          "', got ", config.total_steps);
    // total_steps = 0 means "not given" for constant and linear_warmup.
    check(config.total_steps == 0 || config.warmup_steps <= config.total_steps, "schedule.warmup_steps: ",
          config.warmup_steps, " is longer than schedule.total_steps (", config.total_steps, ")");
    if (config.kind == "wsd") {
        const int64_t decay_start = decay_start_step(config);
        check(config.warmup_steps <= decay_start, "schedule.warmup_steps: ", config.warmup_steps,
              " runs into the WSD decay, which starts at step ", decay_start, " (total_steps ",
              config.total_steps, " - round(decay_fraction ", config.decay_fraction, " * total_steps))");
    }
}

int64_t decay_start_step(const ScheduleConfig& config) {
    if (config.kind != "wsd") return config.total_steps;
    // llround rounds halves away from zero: decay_fraction 0.25 of 10 steps is 3 decay steps.
    return config.total_steps - std::llround(config.decay_fraction * static_cast<double>(config.total_steps));
}

double lr_at(const ScheduleConfig& config, int64_t step) {
    check(step >= 0, "schedule: optimizer step must be >= 0, got ", step);
    const double lr = config.lr;
    if (config.kind == "constant") return lr;
    // (step + 1): the first update already moves the weights, so it must not use lr = 0.
    if (step < config.warmup_steps) {
        return lr * static_cast<double>(step + 1) / static_cast<double>(config.warmup_steps);
    }
    if (config.kind == "linear_warmup") return lr;

    const double lr_min = config.final_lr_fraction * lr;
    if (config.kind == "cosine") {
        const int64_t span = config.total_steps - config.warmup_steps;
        double p = span > 0 ? static_cast<double>(step - config.warmup_steps) / static_cast<double>(span) : 1.0;
        p = std::min(1.0, std::max(0.0, p));
        return lr_min + (lr - lr_min) * (1.0 + std::cos(std::numbers::pi * p)) / 2.0;
    }
    if (config.kind == "wsd") {
        const int64_t decay_start = decay_start_step(config);
        const int64_t decay_steps = config.total_steps - decay_start;
        if (step < decay_start || decay_steps == 0) return lr;  // stable phase (forever without a decay)
        const double q = std::min(1.0, static_cast<double>(step - decay_start) / static_cast<double>(decay_steps));
        double remaining = 1.0 - q;                                                      // linear
        if (config.decay_shape == "cosine") remaining = (1.0 + std::cos(std::numbers::pi * q)) / 2.0;
        if (config.decay_shape == "sqrt") remaining = 1.0 - std::sqrt(q);               // Hägele et al. 2024
        return lr_min + (lr - lr_min) * remaining;
    }
    fail("schedule.kind: unknown schedule '", config.kind, "' (expected constant, linear_warmup, cosine or wsd)");
}

}  // namespace reftrain

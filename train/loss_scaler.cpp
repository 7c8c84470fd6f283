// train/loss_scaler.cpp — see loss_scaler.h for the rules and their source.
#include "train/loss_scaler.h"

#include <cmath>
#include <limits>

#include "kernels/error.h"

namespace reftrain {

namespace {

void check_config(const LossScalerConfig& c) {
    check(std::isfinite(c.init_scale) && c.init_scale > 0.0 &&
              std::isfinite(static_cast<float>(c.init_scale)) && static_cast<float>(c.init_scale) > 0.0f,
          "loss scaler: init_scale must be finite and > 0 in fp32, got ", c.init_scale);
    check(std::isfinite(c.growth_factor) && c.growth_factor > 1.0, "loss scaler: growth_factor must be > 1, got ",
          c.growth_factor);
    check(c.backoff_factor > 0.0 && c.backoff_factor < 1.0, "loss scaler: backoff_factor must be in (0, 1), got ",
          c.backoff_factor);
    check(c.growth_interval >= 1 && c.growth_interval <= std::numeric_limits<int32_t>::max(),
          "loss scaler: growth_interval must be >= 1 (and fit torch's int32 tracker), got ", c.growth_interval);
}

}  // namespace

LossScaler::LossScaler(const LossScalerConfig& config)
    : config_(config), scale_(static_cast<float>(config.init_scale)) {
    check_config(config_);
}

bool LossScaler::update(bool found_nonfinite) {
    if (!config_.enabled) return false;
    if (found_nonfinite) {
        // The product is formed in double (torch passes the factors as double) and stored as fp32.
        scale_ = static_cast<float>(static_cast<double>(scale_) * config_.backoff_factor);
        growth_tracker_ = 0;
        ++skipped_steps_;
        return true;
    }
    const int64_t successful = growth_tracker_ + 1;
    if (successful == config_.growth_interval) {
        const float grown = static_cast<float>(static_cast<double>(scale_) * config_.growth_factor);
        if (std::isfinite(grown)) scale_ = grown;  // never grow past fp32's range into inf
        growth_tracker_ = 0;
    } else {
        growth_tracker_ = successful;
    }
    return false;
}

nlohmann::json LossScaler::to_json() const {
    // A float converted to double prints with enough digits to read back the same fp32 value.
    return {{"scale", static_cast<double>(scale_)},
            {"growth_tracker", growth_tracker_},
            {"skipped_steps", skipped_steps_}};
}

void LossScaler::from_json(const nlohmann::json& state) {
    check(state.is_object(), "loss scaler state: expected a JSON object, got ", state.dump());
    for (const char* field : {"scale", "growth_tracker", "skipped_steps"}) {
        check(state.contains(field), "loss scaler state: field '", field, "' is missing in ", state.dump());
    }
    check(state["scale"].is_number(), "loss scaler state: field 'scale' must be a number, got ", state["scale"].dump());
    check(state["growth_tracker"].is_number_integer(), "loss scaler state: field 'growth_tracker' must be an integer, got ",
          state["growth_tracker"].dump());
    check(state["skipped_steps"].is_number_integer(), "loss scaler state: field 'skipped_steps' must be an integer, got ",
          state["skipped_steps"].dump());
    const double scale = state["scale"].get<double>();
    const int64_t tracker = state["growth_tracker"].get<int64_t>();
    const int64_t skipped = state["skipped_steps"].get<int64_t>();
    check(std::isfinite(scale) && scale > 0.0 && static_cast<double>(static_cast<float>(scale)) == scale,
          "loss scaler state: field 'scale' must be a finite fp32 value > 0, got ", state["scale"].dump());
    // A tracker at or past growth_interval would never equal it again: the scale could never grow.
    check(tracker >= 0 && tracker < config_.growth_interval, "loss scaler state: field 'growth_tracker' must be in [0, ",
          config_.growth_interval, ") (growth_interval), got ", tracker);
    check(skipped >= 0, "loss scaler state: field 'skipped_steps' must be >= 0, got ", skipped);
    scale_ = static_cast<float>(scale);
    growth_tracker_ = tracker;
    skipped_steps_ = skipped;
}

namespace {

// Returns whether any g[i] is non-finite; multiplies every g[i] by inv_scale (in T's precision).
template <class T>
bool unscale_tensor(T* g, int64_t n, T inv_scale) {
    bool nonfinite = false;
#pragma omp parallel for schedule(static) reduction(|| : nonfinite)
    for (int64_t i = 0; i < n; ++i) {
        const T v = g[i];
        if (!std::isfinite(v)) nonfinite = true;  // judged before unscaling, as torch does
        g[i] = v * inv_scale;
    }
    return nonfinite;
}

}  // namespace

bool unscale_and_check(Arena& grads, double scale) {
    const float scale_fp32 = static_cast<float>(scale);  // the scale is an fp32 number, as in torch
    check(std::isfinite(scale_fp32) && scale_fp32 > 0.0f, "unscale_and_check: the loss scale must be finite and > 0 in "
          "fp32, got ", scale, " (after many overflowing steps in a row the scale underflows: the run has diverged)");
    // torch: inv_scale = scale.double().reciprocal().float().
    const float inv_scale = static_cast<float>(1.0 / static_cast<double>(scale_fp32));
    bool nonfinite = false;
    for (size_t t = 0; t < grads.size(); ++t) {
        Tensor& g = grads.at(t);
        dispatch_float(g.dtype, "unscale_and_check", [&](auto tag) {
            using T = decltype(tag);
            nonfinite = unscale_tensor(g.ptr<T>(), g.numel(), static_cast<T>(inv_scale)) || nonfinite;
        });
    }
    return nonfinite;
}

}  // namespace reftrain

// train/loss_scaler.h — dynamic loss scaling for fp16 training (docs/precision.md).
//
// fp16 keeps 5 exponent bits: gradients below 2^-24 flush to zero. The loss is therefore multiplied
// by a large scale S before backward, so every gradient is S times larger while it is in fp16; the
// gradients are divided by S again (in fp32) before clipping and the optimizer. When S is too large
// some gradient overflows to inf (or becomes NaN): that step is skipped and S is halved. When
// growth_interval steps in a row were clean, S is doubled to use the range again.
//
// The rules are torch.cuda.amp.GradScaler's (torch/cuda/amp/grad_scaler.py and the kernel
// _amp_update_scale_ in aten/src/ATen/native/cuda/AmpKernels.cu, torch >= 1.11), followed exactly:
//   - the scale is an fp32 number, init_scale = 2^16 by default;
//   - update(found_nonfinite = true):  scale = fp32(scale * backoff_factor), growth_tracker = 0,
//                                      and the optimizer step is skipped;
//   - update(found_nonfinite = false): growth_tracker += 1; when it reaches growth_interval,
//                                      scale = fp32(scale * growth_factor) unless that is inf (then
//                                      the scale stays), and growth_tracker = 0;
//   - unscaling multiplies each gradient by inv_scale = fp32(1 / fp64(scale)) in fp32 (fp64 for fp64
//     gradients), and "non-finite" is decided on the gradient BEFORE that multiplication.
// So with the defaults the scale first grows after exactly 2000 consecutive clean steps, and an
// overflowing step both halves the scale and restarts the count of clean steps.
//
// One deliberate difference: torch lets backoff drive the scale to 0 after ~166 overflowing steps in
// a row and then divides by it; unscale_and_check refuses a scale that is not finite and > 0 with an
// error, because a run in that state is dead and must say so.
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

#include "kernels/arena.h"

namespace reftrain {

struct LossScalerConfig {
    double init_scale = 65536.0;    // 2^16, torch's default
    double growth_factor = 2.0;     // must be > 1
    double backoff_factor = 0.5;    // must be in (0, 1)
    int64_t growth_interval = 2000; // consecutive clean steps before the scale grows; >= 1
    bool enabled = true;            // the trainer enables it for compute dtype fp16 only
};

class LossScaler {
public:
    // Fails with a message naming the field when the config is out of range.
    explicit LossScaler(const LossScalerConfig& config = {});

    // The factor to multiply the loss by before backward (exactly 1 when disabled).
    float scale() const { return config_.enabled ? scale_ : 1.0f; }
    // Consecutive clean steps since the last growth or overflow (0 .. growth_interval - 1).
    int64_t growth_tracker() const { return growth_tracker_; }
    // Steps skipped because of a non-finite gradient since the start of the run (checkpointed).
    int64_t skipped_steps() const { return skipped_steps_; }
    bool enabled() const { return config_.enabled; }
    const LossScalerConfig& config() const { return config_; }

    // Call once per optimizer step, after unscale_and_check, with what it returned. Returns whether
    // the optimizer step must be skipped (= found_nonfinite). Disabled: changes nothing, returns false
    // (as torch, a disabled scaler never skips; the trainer's own non-finite check applies).
    bool update(bool found_nonfinite);

    // State for TrainState.extra: {"scale": <fp32 value>, "growth_tracker": n, "skipped_steps": n}.
    nlohmann::json to_json() const;
    // Restores that state; fails naming the field when one is missing, of the wrong type or out of
    // range (scale finite and > 0, growth_tracker in [0, growth_interval), skipped_steps >= 0).
    void from_json(const nlohmann::json& state);

private:
    LossScalerConfig config_;
    float scale_;                    // fp32, as torch keeps it
    int64_t growth_tracker_ = 0;
    int64_t skipped_steps_ = 0;
};

// Unscales every gradient in place: g = g * inv_scale with inv_scale = fp32(1 / fp64(scale)),
// computed in fp32 for F32 gradients and fp64 for F64 (torch's opmath types). Returns true when any
// gradient was inf, -inf or NaN before unscaling. The gradients are unscaled even then (as torch
// does); the caller skips the step. scale is taken as fp32 and must be finite and > 0 there.
bool unscale_and_check(Arena& grads, double scale);

}  // namespace reftrain

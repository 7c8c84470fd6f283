// train/schedule.h — learning-rate schedules, indexed by OPTIMIZER step.
//
// `step` counts optimizer updates from 0, never micro-batches: with gradient accumulation over k
// micro-batches the schedule advances once per k forward/backward passes (docs/failures/README.md:
// scheduler-per-microbatch is the bug of stepping it per micro-batch).
//
//   constant       lr
//   linear_warmup  lr * (step + 1) / warmup_steps while step < warmup_steps, then lr
//   cosine         warmup as above, then lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2,
//                  p = (step - warmup) / (total - warmup) clamped to [0, 1]
//   wsd            warmup, stable at lr, then decay over the last decay_fraction * total_steps steps
//                  (decay starts at step total_steps - round(decay_fraction * total_steps)) to lr_min
//                  with decay_shape linear | cosine | sqrt ("1 - sqrt", Hägele et al. 2024)
// lr_min = final_lr_fraction * lr. Steps past total_steps stay at the final value.
#pragma once

#include <cstdint>
#include <string>

namespace reftrain {

struct ScheduleConfig {
    std::string kind = "constant";     // constant | linear_warmup | cosine | wsd
    double lr = 1e-3;
    int64_t warmup_steps = 0;
    int64_t total_steps = 0;            // required by cosine and wsd
    double final_lr_fraction = 0.0;     // cosine and wsd end at final_lr_fraction * lr
    double decay_fraction = 0.2;        // wsd only
    std::string decay_shape = "linear"; // wsd only
};

// Fails naming the field (prefix "schedule.") for an unknown kind/shape, negative counts, warmup
// longer than total_steps, fractions outside [0, 1], total_steps missing for cosine/wsd.
void validate(const ScheduleConfig& config);
double lr_at(const ScheduleConfig& config, int64_t step);
// First optimizer step of the WSD decay phase (total_steps for other kinds).
int64_t decay_start_step(const ScheduleConfig& config);

}  // namespace reftrain

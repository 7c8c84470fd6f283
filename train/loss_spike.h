// train/loss_spike.h — the loss z-score spike detector of the training loop (train.loss_spike_z).
//
// Each step's loss is compared with the mean and standard deviation of the last `window` accepted
// losses: z = (loss - mean) / max(std, 0.01 * mean). A step whose z reaches the threshold is a spike:
// the trainer names the step, its micro-batches' rows with their own losses and text (a pocket of
// bad data shows as a few rows far above the rest), and with train.loss_spike_skip drops the update
// (PaLM, Chowdhery et al. 2022, restarted from before a spike and skipped the batches). A spike is
// not added to the history, so one bad pocket does not raise the bar for the next. The floor on the
// deviation keeps a smooth, slowly falling curve from calling a 1 % wobble a spike.
//
// Before there is enough history for a z-score (the first min_history steps, where a run without warmup
// diverges), a loss above 1.5 x the first step's loss is a spike too: a run that has learned anything
// never gets back above its loss at init, and 1.5 x ln V is far past every healthy early wobble.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>

namespace reftrain {

struct LossSpike {
    int64_t step = 0;        // 0-based optimizer step
    double loss = 0.0;
    double mean = 0.0, std = 0.0, z = 0.0;
    bool above_first = false;   // over kDivergenceFactor x the first step's loss
};

inline constexpr double kDivergenceFactor = 1.5;

class LossSpikeDetector {
public:
    LossSpikeDetector(double z_threshold, int64_t window, int64_t min_history = 5)
        : z_threshold_(z_threshold), window_(window), min_history_(min_history) {}
    // Returns the spike when `loss` is one; otherwise adds it to the history. A non-finite loss is
    // always a spike once there is any history (its z is infinite).
    std::optional<LossSpike> observe(int64_t step, double loss);
    // z of `loss` against the current history (0 before min_history losses).
    double z_of(double loss) const;

private:
    double z_threshold_;
    int64_t window_, min_history_;
    std::deque<double> history_;
    double first_ = 0.0;
    bool have_first_ = false;
};

}  // namespace reftrain

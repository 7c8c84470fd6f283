// train/loss_spike.h — the loss z-score spike detector of the training loop (train.loss_spike_z).
//
// Each step's loss is compared with the last `window` accepted losses: z = (loss - median) / noise, where
// the noise is the step-to-step spread (a robust one: the median absolute deviation of consecutive
// differences, scaled to a standard deviation), floored at 1 % of the median. Median and differences
// ignore a trend, so the fast fall of the first steps neither hides a spike nor reads as one (a plain
// mean and standard deviation over a falling window are wide there: a bad batch at step 15 went unseen,
// entered the history, and hid the next six). Healthy 8-row steps of the catalog's model wobble up to
// z ~ 7; a garbage row gives z ~ 30: the scenarios use a threshold of 12. A step whose z reaches the threshold is
// a spike: the trainer names the step, its micro-batches' rows with their own losses and text (a pocket
// of bad data shows as a few rows far above the rest), and with train.loss_spike_skip drops the update
// (PaLM, Chowdhery et al. 2022, restarted from before a spike and skipped the batches). A spike is not
// added to the history, so one bad pocket does not raise the bar for the next.
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
    double mean = 0.0, std = 0.0, z = 0.0;   // mean: the recent median; std: the step-to-step noise
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
    struct Baseline {
        double center = 0.0, noise = 0.0;
    };
    Baseline baseline() const;   // of history_ (at least 2 losses)
    double z_threshold_;
    int64_t window_, min_history_;
    std::deque<double> history_;
    double first_ = 0.0;
    bool have_first_ = false;
};

}  // namespace reftrain

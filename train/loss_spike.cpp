// train/loss_spike.cpp — see loss_spike.h.
#include "train/loss_spike.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace reftrain {

double LossSpikeDetector::z_of(double loss) const {
    if (static_cast<int64_t>(history_.size()) < min_history_) return 0.0;
    if (!std::isfinite(loss)) return std::numeric_limits<double>::infinity();
    double mean = 0.0;
    for (double v : history_) mean += v;
    mean /= static_cast<double>(history_.size());
    double var = 0.0;
    for (double v : history_) var += (v - mean) * (v - mean);
    const double std = std::sqrt(var / static_cast<double>(history_.size()));
    return (loss - mean) / std::max(std, 0.01 * std::fabs(mean) + 1e-12);
}

std::optional<LossSpike> LossSpikeDetector::observe(int64_t step, double loss) {
    const double z = z_of(loss);
    const bool above_first = have_first_ && !(loss <= kDivergenceFactor * first_);
    if (!have_first_ && std::isfinite(loss)) {
        first_ = loss;
        have_first_ = true;
    }
    if (z >= z_threshold_ || above_first) {
        double mean = 0.0, var = 0.0;
        for (double v : history_) mean += v;
        const double n = static_cast<double>(std::max<size_t>(history_.size(), 1));
        mean /= n;
        for (double v : history_) var += (v - mean) * (v - mean);
        return LossSpike{step, loss, mean, std::sqrt(var / n), z, above_first};
    }
    history_.push_back(loss);
    if (static_cast<int64_t>(history_.size()) > window_) history_.pop_front();
    return std::nullopt;
}

}  // namespace reftrain

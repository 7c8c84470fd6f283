// train/loss_spike.cpp — see loss_spike.h.
#include "train/loss_spike.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace reftrain {

// The centre is the median of the recent losses and the scale their step-to-step noise: the median
// absolute deviation of consecutive differences, x 1.4826 (a normal's standard deviation) / sqrt 2. All
// three are robust: a trend does not widen them (the fast fall of the first steps neither hides a spike
// nor reads as one), and one bad step that slipped into the history does not either (a standard
// deviation of the differences grew so much from one missed spike that the next six were missed too).
LossSpikeDetector::Baseline LossSpikeDetector::baseline() const {
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        const size_t n = v.size();
        return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    };
    Baseline b;
    b.center = median(std::vector<double>(history_.begin(), history_.end()));
    std::vector<double> diffs;
    for (size_t i = 1; i < history_.size(); ++i) diffs.push_back(history_[i] - history_[i - 1]);
    const double typical = median(diffs);
    for (double& d : diffs) d = std::fabs(d - typical);
    b.noise = 1.4826 * median(diffs) / std::sqrt(2.0);
    return b;
}

double LossSpikeDetector::z_of(double loss) const {
    if (static_cast<int64_t>(history_.size()) < min_history_) return 0.0;
    if (!std::isfinite(loss)) return std::numeric_limits<double>::infinity();
    const Baseline b = baseline();
    return (loss - b.center) / std::max(b.noise, 0.01 * std::fabs(b.center) + 1e-12);
}

std::optional<LossSpike> LossSpikeDetector::observe(int64_t step, double loss) {
    const double z = z_of(loss);
    const bool above_first = have_first_ && !(loss <= kDivergenceFactor * first_);
    if (!have_first_ && std::isfinite(loss)) {
        first_ = loss;
        have_first_ = true;
    }
    if (z >= z_threshold_ || above_first) {
        LossSpike spike{step, loss, 0.0, 0.0, z, above_first};
        if (history_.size() >= 2) {
            const Baseline b = baseline();
            spike.mean = b.center;
            spike.std = b.noise;
        }
        return spike;
    }
    history_.push_back(loss);
    if (static_cast<int64_t>(history_.size()) > window_) history_.pop_front();
    return std::nullopt;
}

}  // namespace reftrain

// train/update_audit.cpp — see update_audit.h.
#include "train/update_audit.h"

#include <cmath>

#include "kernels/error.h"

namespace reftrain {

void UpdateAudit::before(const Arena& params) {
    saved_.clear();
    for (const Tensor& p : params.tensors()) saved_.push_back(values_as_f64(p));
    if (stats_.empty()) {
        for (const Tensor& p : params.tensors()) stats_.push_back({p.name, 0, 0, 0});
    }
    check(stats_.size() == params.size(), "UpdateAudit: ", params.size(), " parameters, the audit started with ",
          stats_.size());
}

void UpdateAudit::after(const Arena& params, const Arena& grads) {
    check(saved_.size() == params.size() && grads.size() == params.size(),
          "UpdateAudit::after: call before() first with the same parameters (and twin gradients)");
    for (size_t i = 0; i < params.size(); ++i) {
        const std::vector<double> now = values_as_f64(params.at(i)), g = values_as_f64(grads.at(i));
        TensorUpdateStats& s = stats_[i];
        for (size_t j = 0; j < now.size(); ++j) {
            const bool moved = now[j] != saved_[i][j];
            s.changed += moved;
            if (g[j] != 0.0 && std::isfinite(g[j])) {
                ++s.with_gradient;
                s.unchanged_with_gradient += !moved;
            }
        }
    }
    ++steps_;
}

std::vector<std::string> UpdateAudit::never_moved() const {
    std::vector<std::string> out;
    for (const TensorUpdateStats& s : stats_) {
        if (s.with_gradient > 0 && s.changed == 0) out.push_back(s.name);
    }
    return out;
}

std::vector<std::string> UpdateAudit::stalled(double fraction) const {
    std::vector<std::string> out;
    for (const TensorUpdateStats& s : stats_) {
        if (s.with_gradient > 0 && s.stalled_fraction() >= fraction) out.push_back(s.name);
    }
    return out;
}

double UpdateAudit::stalled_fraction() const {
    int64_t with = 0, stalled = 0;
    for (const TensorUpdateStats& s : stats_) {
        with += s.with_gradient;
        stalled += s.unchanged_with_gradient;
    }
    return with > 0 ? static_cast<double>(stalled) / static_cast<double>(with) : 0.0;
}

}  // namespace reftrain

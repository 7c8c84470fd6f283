// train/update_audit.h — did the optimizer step move what it should? Per-tensor bookkeeping of the
// updates a run actually applied, observed from the weights and gradients alone (any optimizer).
//
// Call before(params) just before an optimizer step and after(params, grads) just after it (the
// gradients the step used). Over all audited steps it counts, per tensor, the elements that had a
// non-zero gradient and the ones among them whose weight did not change. Two symptoms read off it:
//   - a tensor that never moved in any audited step while its gradients were non-zero: it is not in the
//     optimizer (a dead layer, a frozen or forgotten param group);
//   - stalled updates: a large fraction of elements with a gradient whose weight stayed bit-identical.
//     fp32 master weights move by lr-sized steps (~1e-3) that fp32 (ulp ~1e-7 x |w|) always resolves;
//     bf16 weights (8 significant bits) round away any update under half an ulp, 2^-9 |w|.
// In PyTorch: keep p.detach().clone() before optimizer.step() and compare with p after it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/arena.h"

namespace reftrain {

struct TensorUpdateStats {
    std::string name;
    int64_t with_gradient = 0;             // element-steps with a non-zero, finite gradient
    int64_t unchanged_with_gradient = 0;   // ... whose weight stayed bit-identical
    int64_t changed = 0;                   // element-steps whose weight changed at all
    double stalled_fraction() const {
        return with_gradient > 0 ? static_cast<double>(unchanged_with_gradient) / static_cast<double>(with_gradient) : 0.0;
    }
};

class UpdateAudit {
public:
    void before(const Arena& params);
    void after(const Arena& params, const Arena& grads);
    int64_t steps() const { return steps_; }
    const std::vector<TensorUpdateStats>& tensors() const { return stats_; }
    // Tensors with gradients in the audited steps that never changed at all.
    std::vector<std::string> never_moved() const;
    // Tensors whose stalled fraction is at least `fraction`.
    std::vector<std::string> stalled(double fraction) const;
    // Over all tensors: stalled element-steps / element-steps with a gradient.
    double stalled_fraction() const;

private:
    std::vector<std::vector<double>> saved_;
    std::vector<TensorUpdateStats> stats_;
    int64_t steps_ = 0;
};

}  // namespace reftrain

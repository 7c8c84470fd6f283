// train/adamw.h — AdamW (Loshchilov & Hutter 2019) with decoupled weight decay on matrices only.
//
// Moments live in their own arena ("adam.m:<param>", "adam.v:<param>") in the parameters' dtype:
// fp32 when training (fp32 master weights and moments), fp64 only in tests. The update is written
// term for term like torch.optim.AdamW (single-tensor path), so the two agree to rounding:
//   p <- p * (1 - lr * wd)                      wd applied only to 2-D tensors (see below)
//   m <- b1 m + (1 - b1) g
//   v <- b2 v + (1 - b2) g^2
//   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Why matrices only: decaying RMSNorm gains pulls them towards 0, which fights the normalisation
// they exist to scale (a later invariant, optimizer.decay_only_matrices, checks this grouping).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kernels/arena.h"

namespace reftrain {

struct AdamWConfig {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
};

class AdamW {
public:
    // `params` and `grads` are twin arenas (same order, grads named "grad:<param>").
    AdamW(Arena& params, Arena& grads, const AdamWConfig& config);

    // One update with learning rate `lr` (the schedule's value for this optimizer step).
    void step(double lr);
    void step() { step(config_.lr); }

    int64_t step_count() const { return step_count_; }
    // The learning rate of the last step() (NaN before the first): what was applied, for the
    // invariant schedule.counts_optimizer_steps.
    double last_lr() const { return last_lr_; }
    // Restored from a checkpoint together with the moments (bias correction depends on it).
    void set_step_count(int64_t steps) { step_count_ = steps; }
    const AdamWConfig& config() const { return config_; }
    Arena& moments() { return moments_; }
    // True when weight decay applies to this parameter (2-D tensors: all matrices, embeddings).
    static bool decays(const Tensor& param) { return param.ndim == 2; }

private:
    Arena& params_;
    Arena& grads_;
    AdamWConfig config_;
    Arena moments_{"adam moments"};
    int64_t step_count_ = 0;
    double last_lr_ = std::numeric_limits<double>::quiet_NaN();
    std::string last_block_prefix_;   // "model.layers.<L-1>." (the dead-layer switch)
};

// The parameters an AdamW step with `config` decays, observed rather than asked: one step on a
// one-element stand-in for every parameter (same name and number of axes) with zero gradients, where
// anything that moves was moved by the decay alone (probed with a decay of 0.1 if config has none).
// Feeds the invariant optimizer.decay_only_matrices.
std::vector<std::string> tensors_decayed_by(const Arena& params, const AdamWConfig& config);

}  // namespace reftrain

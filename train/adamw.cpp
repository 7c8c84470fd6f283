// train/adamw.cpp — see adamw.h for the update rule.
#include "train/adamw.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/bugs.h"
#include "kernels/dtype.h"

namespace reftrain {

AdamW::AdamW(Arena& params, Arena& grads, const AdamWConfig& config)
    : params_(params), grads_(grads), config_(config) {
    check(params.size() == grads.size(), "AdamW: ", params.size(), " parameters but ", grads.size(), " gradients");
    for (size_t i = 0; i < params.size(); ++i) {
        const Tensor& p = params.at(i);
        check(grads.at(i).name == "grad:" + p.name && grads.at(i).numel() == p.numel(),
              "AdamW: gradient '", grads.at(i).name, "' does not match parameter '", p.name, "'");
        std::vector<int64_t> shape(p.shape.begin(), p.shape.begin() + p.ndim);
        moments_.add("adam.m:" + p.name, p.dtype, shape);
        moments_.add("adam.v:" + p.name, p.dtype, shape);
    }
    moments_.allocate();
    // The last transformer block's prefix, for the dead-layer switch ("model.layers.<L-1>.").
    int64_t last = -1;
    for (size_t i = 0; i < params.size(); ++i) {
        const std::string& name = params.at(i).name;
        if (name.rfind("model.layers.", 0) == 0) last = std::max<int64_t>(last, std::stoll(name.substr(13)));
    }
    if (last >= 0) last_block_prefix_ = "model.layers." + std::to_string(last) + ".";
}

void AdamW::step(double lr) {
    ++step_count_;
    last_lr_ = lr;
    const double b1 = config_.beta1, b2 = config_.beta2, eps = config_.eps;
    const double bias_correction1 = 1.0 - std::pow(b1, static_cast<double>(step_count_));
    const double bias_correction2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(step_count_)));
    const double step_size = lr / bias_correction1;
    for (size_t i = 0; i < params_.size(); ++i) {
        const Tensor& param = params_.at(i);
        // BUG dead-layer: the last block was never handed to the optimizer (a frozen or forgotten param group).
        if (bugs().dead_layer && !last_block_prefix_.empty() && param.name.rfind(last_block_prefix_, 0) == 0) continue;
        // BUG weight-decay-on-norms: one param group for everything, norm gains included.
        const double decay = (bugs().weight_decay_on_norms || decays(param)) ? config_.weight_decay : 0.0;
        const bool bf16_weights = bugs().bf16_master_weights;
        dispatch_float(param.dtype, "AdamW::step", [&](auto tag) {
            using T = decltype(tag);
            T* p = param.ptr<T>();
            const T* g = grads_.at(i).ptr<T>();
            T* m = moments_.at(2 * i).ptr<T>();
            T* v = moments_.at(2 * i + 1).ptr<T>();
            const T keep = static_cast<T>(1.0 - lr * decay), c1 = static_cast<T>(1.0 - b1), c2 = static_cast<T>(1.0 - b2);
            const T tb1 = static_cast<T>(b1), tb2 = static_cast<T>(b2), teps = static_cast<T>(eps);
            const T tstep = static_cast<T>(step_size), tbc2 = static_cast<T>(bias_correction2_sqrt);
            const int64_t n = param.numel();
            // The update of one element; the loop below stays free of calls and branches, so it vectorises.
            // Element-wise, so threads (only for tensors large enough to be worth a fork) change no bits.
#pragma omp parallel for schedule(static) if (n >= 16384)
            for (int64_t j = 0; j < n; ++j) {
                p[j] *= keep;
                m[j] = tb1 * m[j] + c1 * g[j];
                v[j] = tb2 * v[j] + c2 * g[j] * g[j];
                p[j] -= tstep * m[j] / (std::sqrt(v[j]) / tbc2 + teps);
            }
            // BUG bf16-master-weights: the weights live in bf16, so each update is rounded to bf16's
            // 8 significant bits; an update under half a bf16 step of the weight vanishes.
            if (bf16_weights) {
                for (int64_t j = 0; j < n; ++j) p[j] = static_cast<T>(bf16_to_float(float_to_bf16(static_cast<float>(p[j]))));
            }
        });
    }
}


std::vector<std::string> tensors_decayed_by(const Arena& params, const AdamWConfig& config) {
    // One element per parameter, under the parameter's name and with its number of axes (all the decay
    // rule may look at), holding 1; zero gradients; fresh moments. Adam's own term is then 0 / (0 + eps)
    // = 0, so whatever moves was moved by weight decay alone. Probed with a decay of 0.1 when the run has
    // none, to see the grouping the optimizer would use. Costs a few bytes per tensor, not a copy of the
    // model.
    Arena probe("decay probe"), grads("decay probe grads");
    for (const Tensor& p : params.tensors()) {
        const std::vector<int64_t> ones(static_cast<size_t>(p.ndim), 1);
        probe.add(p.name, p.dtype, ones);
        grads.add("grad:" + p.name, p.dtype, ones);
    }
    probe.allocate();
    grads.allocate();
    grads.zero();
    for (const Tensor& t : probe.tensors()) {
        dispatch_float(t.dtype, "tensors_decayed_by", [&](auto tag) { *t.ptr<decltype(tag)>() = 1; });
    }
    AdamWConfig with_decay = config;
    if (with_decay.weight_decay == 0.0) with_decay.weight_decay = 0.1;
    AdamW optimizer(probe, grads, with_decay);
    optimizer.step(1e-2);
    std::vector<std::string> moved;
    for (const Tensor& t : probe.tensors()) {
        bool changed = false;
        dispatch_float(t.dtype, "tensors_decayed_by", [&](auto tag) { changed = *t.ptr<decltype(tag)>() != 1; });
        if (changed) moved.push_back(t.name);
    }
    return moved;
}

}  // namespace reftrain

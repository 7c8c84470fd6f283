// train/adamw.cpp — see adamw.h for the update rule.
#include "train/adamw.h"

#include <cmath>

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
        const double decay = decays(param) ? config_.weight_decay : 0.0;
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
#pragma omp parallel for schedule(static)
            for (int64_t j = 0; j < n; ++j) {
                p[j] *= keep;
                m[j] = tb1 * m[j] + c1 * g[j];
                v[j] = tb2 * v[j] + c2 * g[j] * g[j];
                p[j] -= tstep * m[j] / (std::sqrt(v[j]) / tbc2 + teps);
            }
        });
    }
}

}  // namespace reftrain

// train/grad_clip.cpp — see grad_clip.h.
//
// Determinism: each tensor is cut into fixed chunks of kChunk elements (a constant, never derived from
// the thread count); threads fill one fp64 partial sum per chunk, and the partials are added in chunk
// order, tensor after tensor in arena order. The order of additions is therefore the same for any
// number of threads, and so are the bits of the norm.
#include "train/grad_clip.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace reftrain {

namespace {

constexpr int64_t kChunk = 4096;

template <class T>
double sum_of_squares(const T* g, int64_t n) {
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
        double s = 0.0;
        for (int64_t i = begin; i < end; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
        partial[static_cast<size_t>(c)] = s;
    }
    double total = 0.0;
    for (double s : partial) total += s;
    return total;
}

}  // namespace

double global_grad_norm(const Arena& grads) {
    double total = 0.0;
    for (const Tensor& g : grads.tensors()) {
        dispatch_float(g.dtype, "global_grad_norm", [&](auto tag) {
            using T = decltype(tag);
            total += sum_of_squares(g.ptr<T>(), g.numel());
        });
    }
    return std::sqrt(total);
}

double clip_grad_norm(Arena& grads, double max_norm) {
    const double norm = global_grad_norm(grads);
    clip_to_norm(grads, norm, max_norm);
    return norm;
}

void clip_to_norm(Arena& grads, double norm, double max_norm) {
    // A non-finite norm is returned untouched: scaling by max_norm / inf would zero the gradients and
    // hide the overflow from the loop's skip-step policy, which must see it.
    if (max_norm <= 0.0 || !std::isfinite(norm) || norm <= max_norm) return;
    const double scale = max_norm / (norm + 1e-6);  // torch.nn.utils.clip_grad_norm_'s coefficient
    for (size_t t = 0; t < grads.size(); ++t) {
        Tensor& g = grads.at(t);
        dispatch_float(g.dtype, "clip_grad_norm", [&](auto tag) {
            using T = decltype(tag);
            T* p = g.ptr<T>();
            const T s = static_cast<T>(scale);
            const int64_t n = g.numel();
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < n; ++i) p[i] *= s;
        });
    }
}

}  // namespace reftrain

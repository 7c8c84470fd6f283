// kernels/cpu/cross_entropy.cpp — fused softmax + cross-entropy with an ignore index.
//
// For each row n with a supervised target y = targets[n] (not kIgnoreIndex):
//   lse[n]  = log sum_v exp(z[n, v])                     (max-shifted, summed in fp64)
//   loss    = (1 / M) * sum_n (lse[n] - z[n, y])           M = number of supervised rows
//   dz[n,v] += dloss / M * (exp(z[n, v] - lse[n]) - [v == y])
// Ignored rows contribute nothing and get no gradient. When M = 0 the mean is undefined: we return
// loss = 0 with no_supervised_tokens = true instead of 0/0 = NaN (PyTorch returns NaN there). A batch
// where nothing is supervised is almost always a masking bug, so the flag exists for the invariant
// mask.has_supervised_tokens to shout about; the loss value itself must never poison the run.
#include <cmath>

#include "kernels/cpu/ops.h"

namespace reftrain::cpu {

namespace {

template <class T>
double forward_impl(const Tensor& logsumexp, const Tensor& logits, const Tensor& targets, int64_t* supervised) {
    const int64_t N = logits.dim(0), V = logits.dim(1);
    const T* z = logits.ptr<T>();
    const int64_t* y = targets.ptr<int64_t>();
    T* lse = logsumexp.ptr<T>();
    double total = 0.0;
    int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count)
    for (int64_t n = 0; n < N; ++n) {
        const T* row = z + n * V;
        T max_logit = row[0];
        for (int64_t v = 1; v < V; ++v) max_logit = row[v] > max_logit ? row[v] : max_logit;
        double sum = 0.0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v] - max_logit));
        lse[n] = static_cast<T>(max_logit + std::log(sum));
        if (y[n] != kIgnoreIndex) ++count;
    }
    // The loss sum runs in row order on one thread so that it is bitwise reproducible.
    for (int64_t n = 0; n < N; ++n) {
        if (y[n] != kIgnoreIndex) total += static_cast<double>(lse[n]) - static_cast<double>(z[n * V + y[n]]);
    }
    *supervised = count;
    return count > 0 ? total / static_cast<double>(count) : 0.0;
}

template <class T>
void backward_impl(const Tensor& dlogits, const Tensor& logits, const Tensor& logsumexp, const Tensor& targets,
                   double dloss, int64_t supervised) {
    const int64_t N = logits.dim(0), V = logits.dim(1);
    const T* z = logits.ptr<T>();
    const T* lse = logsumexp.ptr<T>();
    const int64_t* y = targets.ptr<int64_t>();
    T* dz = dlogits.ptr<T>();
    const T scale = static_cast<T>(dloss / static_cast<double>(supervised));
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        if (y[n] == kIgnoreIndex) continue;
        const T* row = z + n * V;
        T* drow = dz + n * V;
        for (int64_t v = 0; v < V; ++v) drow[v] += scale * std::exp(row[v] - lse[n]);
        drow[y[n]] -= scale;
    }
}

void check_targets(const Tensor& targets, int64_t N, int64_t V, const char* op) {
    expect_dtype(targets, DType::I64, op, "targets");
    check(targets.numel() == N, op, ": ", targets.numel(), " targets for ", N, " rows of logits");
    const int64_t* y = targets.ptr<int64_t>();
    for (int64_t n = 0; n < N; ++n) {
        check(y[n] == kIgnoreIndex || (y[n] >= 0 && y[n] < V), op, ": target ", y[n], " at row ", n, " of '",
              targets.name, "' is neither a token id in [0, ", V, ") nor the ignore index ", kIgnoreIndex);
    }
}

}  // namespace

CrossEntropyResult cross_entropy_forward(const Tensor& logsumexp, const Tensor& logits, const Tensor& targets) {
    const int64_t N = logits.dim(0), V = logits.dim(1);
    expect_shape(logits, {N, V}, "cross_entropy_forward", "logits");
    expect_shape(logsumexp, {N}, "cross_entropy_forward", "logsumexp");
    expect_same_dtype(logits, logsumexp, "cross_entropy_forward");
    check(V > 0, "cross_entropy_forward: logits '", logits.name, "' have an empty vocabulary axis");
    check_targets(targets, N, V, "cross_entropy_forward");
    CrossEntropyResult result;
    dispatch_float(logits.dtype, "cross_entropy_forward", [&](auto t) {
        result.loss = forward_impl<decltype(t)>(logsumexp, logits, targets, &result.supervised_tokens);
    });
    result.no_supervised_tokens = result.supervised_tokens == 0;
    return result;
}

void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& logsumexp,
                            const Tensor& targets, double dloss) {
    const int64_t N = logits.dim(0), V = logits.dim(1);
    expect_shape(dlogits, {N, V}, "cross_entropy_backward", "dlogits");
    expect_shape(logsumexp, {N}, "cross_entropy_backward", "logsumexp");
    expect_same_dtype(logits, dlogits, "cross_entropy_backward");
    check_targets(targets, N, V, "cross_entropy_backward");
    int64_t supervised = 0;
    const int64_t* y = targets.ptr<int64_t>();
    for (int64_t n = 0; n < N; ++n) supervised += y[n] != kIgnoreIndex;
    if (supervised == 0) return;  // nothing supervised: no gradient, and no division by zero
    dispatch_float(logits.dtype, "cross_entropy_backward", [&](auto t) {
        backward_impl<decltype(t)>(dlogits, logits, logsumexp, targets, dloss, supervised);
    });
}

}  // namespace reftrain::cpu

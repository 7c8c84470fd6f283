// kernels/cpu/cross_entropy.cpp — fused softmax + cross-entropy with an ignore index.
//
// For each row n with a supervised target y = targets[n] (not kIgnoreIndex):
//   lse[n]  = log sum_v exp(z[n, v])                     (max-shifted, summed in fp64 in vec_math.h's
//                                                          lane order, chunk by chunk)
//   loss    = (1 / M) * sum_n (lse[n] - z[n, y])           M = number of supervised rows
//   dz[n,v] += dloss / M * (exp(z[n, v] - lse[n]) - [v == y])
// Ignored rows contribute nothing and get no gradient. When M = 0 the mean is undefined: we return
// loss = 0 with no_supervised_tokens = true instead of 0/0 = NaN (PyTorch returns NaN there). A batch
// where nothing is supervised is almost always a masking bug, so the flag exists for the invariant
// mask.has_supervised_tokens to shout about; the loss value itself must never poison the run.
//
// The per-row form (reinforcement learning: a policy-gradient loss weights every sampled token by its
// advantage) reads the same saved lse:
//   logp[n]  = z[n, y] - lse[n]                            (= -CE_n; 0 at ignored rows)
//   L        = sum_n w[n] * CE_n = -sum_n w[n] * logp[n]
//   dz[n,v] += w[n] * (exp(z[n, v] - lse[n]) - [v == y])
// With w[n] = dloss / M on every supervised row it is the backward above.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace reftrain::cpu {

namespace {

// Rows are exponentiated kChunk entries at a time through a stack buffer (kernels/cpu/vec_math.h).
constexpr int64_t kChunk = 1024;

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
        const T max_logit = max_value(row, V);
        double sum = 0.0;
        for (int64_t lo = 0; lo < V; lo += kChunk) {  // exp in vectorised chunks, summed in fp64
            const int64_t len = std::min(kChunk, V - lo);
            T e[kChunk];
            for (int64_t v = 0; v < len; ++v) e[v] = row[lo + v] - max_logit;
            exp_array(e, e, len);
            sum += sum_f64(e, len);  // fixed lane order within a chunk
        }
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
void target_logprobs_impl(const Tensor& logprobs, const Tensor& logits, const Tensor& logsumexp,
                          const Tensor& targets) {
    const int64_t N = logits.dim(0), V = logits.dim(1);
    const T* z = logits.ptr<T>();
    const T* lse = logsumexp.ptr<T>();
    const int64_t* y = targets.ptr<int64_t>();
    double* out = logprobs.ptr<double>();
    for (int64_t n = 0; n < N; ++n) {
        out[n] = y[n] == kIgnoreIndex ? 0.0 : static_cast<double>(z[n * V + y[n]]) - static_cast<double>(lse[n]);
    }
}

template <class T>
void weighted_backward_impl(const Tensor& dlogits, const Tensor& logits, const Tensor& logsumexp,
                            const Tensor& targets, const Tensor& weights) {
    const int64_t N = logits.dim(0), V = logits.dim(1);
    const T* z = logits.ptr<T>();
    const T* lse = logsumexp.ptr<T>();
    const int64_t* y = targets.ptr<int64_t>();
    const double* w = weights.ptr<double>();
    T* dz = dlogits.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        if (y[n] == kIgnoreIndex || w[n] == 0.0) continue;
        const T scale = static_cast<T>(w[n]);
        const T* row = z + n * V;
        T* drow = dz + n * V;
        for (int64_t lo = 0; lo < V; lo += kChunk) {
            const int64_t len = std::min(kChunk, V - lo);
            T e[kChunk];
            for (int64_t v = 0; v < len; ++v) e[v] = row[lo + v] - lse[n];
            exp_array(e, e, len);
            for (int64_t v = 0; v < len; ++v) drow[lo + v] += scale * e[v];
        }
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

// The mean loss's gradient is the weighted one with weight dloss / M on each of the M supervised rows.
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
    std::vector<double> weights(static_cast<size_t>(N), 0.0);
    for (int64_t n = 0; n < N; ++n) {
        if (y[n] != kIgnoreIndex) weights[n] = dloss / static_cast<double>(supervised);
    }
    const Tensor weights_view(weights.data(), DType::F64, {N}, "row_weights");
    dispatch_float(logits.dtype, "cross_entropy_backward", [&](auto t) {
        weighted_backward_impl<decltype(t)>(dlogits, logits, logsumexp, targets, weights_view);
    });
}

void cross_entropy_target_logprobs(const Tensor& logprobs, const Tensor& logits, const Tensor& logsumexp,
                                   const Tensor& targets) {
    const int64_t N = logits.dim(0), V = logits.dim(1);
    expect_shape(logits, {N, V}, "cross_entropy_target_logprobs", "logits");
    expect_shape(logsumexp, {N}, "cross_entropy_target_logprobs", "logsumexp");
    expect_shape(logprobs, {N}, "cross_entropy_target_logprobs", "logprobs");
    expect_same_dtype(logits, logsumexp, "cross_entropy_target_logprobs");
    expect_dtype(logprobs, DType::F64, "cross_entropy_target_logprobs", "logprobs");
    check_targets(targets, N, V, "cross_entropy_target_logprobs");
    dispatch_float(logits.dtype, "cross_entropy_target_logprobs", [&](auto t) {
        target_logprobs_impl<decltype(t)>(logprobs, logits, logsumexp, targets);
    });
}

void cross_entropy_weighted_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& logsumexp,
                                     const Tensor& targets, const Tensor& weights) {
    const int64_t N = logits.dim(0), V = logits.dim(1);
    expect_shape(dlogits, {N, V}, "cross_entropy_weighted_backward", "dlogits");
    expect_shape(logsumexp, {N}, "cross_entropy_weighted_backward", "logsumexp");
    expect_shape(weights, {N}, "cross_entropy_weighted_backward", "weights");
    expect_same_dtype(logits, dlogits, "cross_entropy_weighted_backward");
    expect_same_dtype(logits, logsumexp, "cross_entropy_weighted_backward");
    expect_dtype(weights, DType::F64, "cross_entropy_weighted_backward", "weights");
    check_targets(targets, N, V, "cross_entropy_weighted_backward");
    const int64_t* y = targets.ptr<int64_t>();
    const double* w = weights.ptr<double>();
    for (int64_t n = 0; n < N; ++n) {
        check(std::isfinite(w[n]), "cross_entropy_weighted_backward: weight ", w[n], " at row ", n, " of '",
              weights.name, "' is not finite");
        check(y[n] != kIgnoreIndex || w[n] == 0.0, "cross_entropy_weighted_backward: row ", n, " of '",
              targets.name, "' is ignored but has weight ", w[n], " (ignored rows must weigh 0)");
    }
    dispatch_float(logits.dtype, "cross_entropy_weighted_backward", [&](auto t) {
        weighted_backward_impl<decltype(t)>(dlogits, logits, logsumexp, targets, weights);
    });
}

}  // namespace reftrain::cpu

// kernels/cpu/attention_decode.cpp — attention of a few new tokens against a KV cache (inference only).
//
// The math is attention_forward's (attention.cpp) restricted to the rows of the new tokens: with L
// cached positions of which the last n are new (p = L - n), query head h reading KV head
// g = h / (Hq / Hkv), and scale = 1/sqrt(D):
//   S[i, s] = scale * q[i] . k[s]                for s <= p + i   (causal among the new tokens too)
//   P[i, :] = softmax(S[i, :]),  out[i] = sum_s P[i, s] v[s]
// There is no backward: generation never trains. The cache is (L, Hkv, D), one sequence, no batch.
//
// Unlike attention_forward, which runs BLAS in the compute dtype, every product and sum here is
// accumulated in fp64 in ascending s / d order and rounded once at the end. One thread owns one
// (i, h) pair, so results are bitwise identical for any thread count, and the only difference from
// the full forward is the rounding of that forward itself (the KV-cache test bounds it).
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"

namespace reftrain::cpu {

namespace {

template <class T>
void decode_impl(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache) {
    const int64_t n = q.dim(0), Hq = q.dim(1), D = q.dim(2), L = k_cache.dim(0), Hkv = k_cache.dim(1);
    const int64_t group = Hq / Hkv, first_position = L - n;
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    const T* qp = q.ptr<T>();
    const T* kp = k_cache.ptr<T>();
    const T* vp = v_cache.ptr<T>();
    T* op = out.ptr<T>();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t h = 0; h < Hq; ++h) {
            const int64_t g = h / group, visible = first_position + i + 1;  // positions 0..p+i
            const T* qi = qp + (i * Hq + h) * D;
            std::vector<double> weights(visible), acc(D, 0.0);
            double max_score = -INFINITY;
            for (int64_t s = 0; s < visible; ++s) {
                const T* ks = kp + (s * Hkv + g) * D;
                double dot = 0.0;
                for (int64_t e = 0; e < D; ++e) dot += static_cast<double>(qi[e]) * ks[e];
                weights[s] = scale * dot;
                max_score = weights[s] > max_score ? weights[s] : max_score;
            }
            double sum = 0.0;
            for (int64_t s = 0; s < visible; ++s) {
                weights[s] = std::exp(weights[s] - max_score);  // max subtracted: no overflow
                sum += weights[s];
            }
            for (int64_t s = 0; s < visible; ++s) {
                const T* vs = vp + (s * Hkv + g) * D;
                const double p = weights[s] / sum;
                for (int64_t e = 0; e < D; ++e) acc[e] += p * vs[e];
            }
            T* oi = op + (i * Hq + h) * D;
            for (int64_t e = 0; e < D; ++e) oi[e] = static_cast<T>(acc[e]);
        }
    }
}

}  // namespace

void attention_decode_forward(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache) {
    const char* op = "attention_decode_forward";
    const int64_t n = q.dim(0), Hq = q.dim(1), D = q.dim(2), L = k_cache.dim(0), Hkv = k_cache.dim(1);
    expect_shape(q, {n, Hq, D}, op, "q");
    expect_shape(out, {n, Hq, D}, op, "out");
    expect_shape(k_cache, {L, Hkv, D}, op, "k_cache");
    expect_shape(v_cache, {L, Hkv, D}, op, "v_cache");
    check(n >= 1 && n <= L, op, ": ", n, " new tokens but only ", L,
          " cached positions; the cache must already hold the new tokens' keys and values");
    check(Hkv > 0 && Hq % Hkv == 0, op, ": ", Hq, " query heads are not a multiple of ", Hkv, " key/value heads");
    expect_same_dtype(q, out, op);
    expect_same_dtype(q, k_cache, op);
    expect_same_dtype(q, v_cache, op);
    dispatch_float(q.dtype, op, [&](auto t) { decode_impl<decltype(t)>(out, q, k_cache, v_cache); });
}

}  // namespace reftrain::cpu

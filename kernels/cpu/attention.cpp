// kernels/cpu/attention.cpp — causal scaled-dot-product attention with grouped-query heads (GQA).
//
// Per batch row b and query head h (which reads KV head g = h / (Hq / Hkv)), with scale = 1/sqrt(D):
//   forward   S[t, s] = scale * q[t] . k[s]                      for s <= t (the causal mask)
//             P[t, :] = softmax(S[t, :]) over s <= t,  P[t, s] = 0 for s > t
//             out[t]  = sum_s P[t, s] v[s]
//   backward  dP[t, s] = dout[t] . v[s]
//             dS[t, s] = P[t, s] (dP[t, s] - sum_s' P[t, s'] dP[t, s'])     (softmax Jacobian)
//             dq[t]   += scale * sum_s dS[t, s] k[s]
//             dk[s]   += scale * sum_t dS[t, s] q[t]     (summed over the Hq/Hkv query heads of g)
//             dv[s]   += sum_t P[t, s] dout[t]           (likewise)
// Tensors keep the (B, T, H, D) layout the projections produce, so no transpose is ever materialised;
// a head is a strided slice. The forward splits work over (b, h); the backward over (b, g), so the
// thread that owns a KV head is the only one that writes its dk and dv.
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"

namespace reftrain::cpu {

namespace {

template <class T>
inline T dot(const T* a, const T* b, int64_t n) {
    T sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

template <class T>
void forward_impl(const Tensor& out, const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v) {
    const int64_t B = q.dim(0), Tn = q.dim(1), Hq = q.dim(2), D = q.dim(3), Hkv = k.dim(2);
    const int64_t group = Hq / Hkv;
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(D)));
    const T* qp = q.ptr<T>();
    const T* kp = k.ptr<T>();
    const T* vp = v.ptr<T>();
    T* op = out.ptr<T>();
    T* pp = probs.ptr<T>();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < Hq; ++h) {
            const int64_t g = h / group;
            for (int64_t t = 0; t < Tn; ++t) {
                const T* qt = qp + ((b * Tn + t) * Hq + h) * D;
                T* row = pp + ((b * Hq + h) * Tn + t) * Tn;
                T max_score = -INFINITY;
                for (int64_t s = 0; s <= t; ++s) {
                    row[s] = scale * dot(qt, kp + ((b * Tn + s) * Hkv + g) * D, D);
                    if (row[s] > max_score) max_score = row[s];
                }
                double sum = 0.0;
                for (int64_t s = 0; s <= t; ++s) {
                    row[s] = std::exp(row[s] - max_score);
                    sum += row[s];
                }
                const T inv_sum = static_cast<T>(1.0 / sum);
                for (int64_t s = 0; s <= t; ++s) row[s] *= inv_sum;
                for (int64_t s = t + 1; s < Tn; ++s) row[s] = 0;

                T* ot = op + ((b * Tn + t) * Hq + h) * D;
                for (int64_t d = 0; d < D; ++d) ot[d] = 0;
                for (int64_t s = 0; s <= t; ++s) {
                    const T p = row[s];
                    const T* vs = vp + ((b * Tn + s) * Hkv + g) * D;
                    for (int64_t d = 0; d < D; ++d) ot[d] += p * vs[d];
                }
            }
        }
    }
}

template <class T>
void backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                   const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v) {
    const int64_t B = q.dim(0), Tn = q.dim(1), Hq = q.dim(2), D = q.dim(3), Hkv = k.dim(2);
    const int64_t group = Hq / Hkv;
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(D)));
    const T* qp = q.ptr<T>();
    const T* kp = k.ptr<T>();
    const T* vp = v.ptr<T>();
    const T* dop = dout.ptr<T>();
    const T* pp = probs.ptr<T>();
    T* dqp = dq.data ? dq.ptr<T>() : nullptr;
    T* dkp = dk.data ? dk.ptr<T>() : nullptr;
    T* dvp = dv.data ? dv.ptr<T>() : nullptr;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t g = 0; g < Hkv; ++g) {
            std::vector<T> dscore(Tn);
            for (int64_t h = g * group; h < (g + 1) * group; ++h) {
                for (int64_t t = 0; t < Tn; ++t) {
                    const T* row = pp + ((b * Hq + h) * Tn + t) * Tn;
                    const T* dot_ = dop + ((b * Tn + t) * Hq + h) * D;
                    const T* qt = qp + ((b * Tn + t) * Hq + h) * D;
                    // dP and the softmax Jacobian, row t.
                    double weighted = 0.0;
                    for (int64_t s = 0; s <= t; ++s) {
                        dscore[s] = dot(dot_, vp + ((b * Tn + s) * Hkv + g) * D, D);
                        weighted += static_cast<double>(row[s]) * dscore[s];
                    }
                    const T w = static_cast<T>(weighted);
                    for (int64_t s = 0; s <= t; ++s) dscore[s] = row[s] * (dscore[s] - w);
                    if (dqp) {
                        T* dqt = dqp + ((b * Tn + t) * Hq + h) * D;
                        for (int64_t s = 0; s <= t; ++s) {
                            const T c = scale * dscore[s];
                            const T* ks = kp + ((b * Tn + s) * Hkv + g) * D;
                            for (int64_t d = 0; d < D; ++d) dqt[d] += c * ks[d];
                        }
                    }
                    for (int64_t s = 0; s <= t; ++s) {
                        const int64_t kv = ((b * Tn + s) * Hkv + g) * D;
                        if (dkp) {
                            const T c = scale * dscore[s];
                            for (int64_t d = 0; d < D; ++d) dkp[kv + d] += c * qt[d];
                        }
                        if (dvp) {
                            const T p = row[s];
                            for (int64_t d = 0; d < D; ++d) dvp[kv + d] += p * dot_[d];
                        }
                    }
                }
            }
        }
    }
}

void check_args(const Tensor& out, const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v,
                const char* op, const char* out_arg) {
    const int64_t B = q.dim(0), T = q.dim(1), Hq = q.dim(2), D = q.dim(3), Hkv = k.dim(2);
    expect_shape(q, {B, T, Hq, D}, op, "q");
    expect_shape(k, {B, T, Hkv, D}, op, "k");
    expect_shape(v, {B, T, Hkv, D}, op, "v");
    expect_shape(probs, {B, Hq, T, T}, op, "probs");
    if (out.data) expect_shape(out, {B, T, Hq, D}, op, out_arg);
    check(Hkv > 0 && Hq % Hkv == 0, op, ": ", Hq, " query heads are not a multiple of ", Hkv, " key/value heads");
    expect_same_dtype(q, k, op);
    expect_same_dtype(q, v, op);
    expect_same_dtype(q, probs, op);
}

}  // namespace

void attention_forward(const Tensor& out, const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v) {
    check_args(out, probs, q, k, v, "attention_forward", "out");
    dispatch_float(q.dtype, "attention_forward", [&](auto t) { forward_impl<decltype(t)>(out, probs, q, k, v); });
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v) {
    check_args(dout, probs, q, k, v, "attention_backward", "dout");
    if (dq.data) expect_shape(dq, {q.dim(0), q.dim(1), q.dim(2), q.dim(3)}, "attention_backward", "dq");
    if (dk.data) expect_shape(dk, {k.dim(0), k.dim(1), k.dim(2), k.dim(3)}, "attention_backward", "dk");
    if (dv.data) expect_shape(dv, {v.dim(0), v.dim(1), v.dim(2), v.dim(3)}, "attention_backward", "dv");
    dispatch_float(q.dtype, "attention_backward",
                   [&](auto t) { backward_impl<decltype(t)>(dq, dk, dv, dout, probs, q, k, v); });
}

}  // namespace reftrain::cpu

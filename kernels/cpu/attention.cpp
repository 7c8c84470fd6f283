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
// a head is a strided slice, and each product above is one GEMM on such slices (kernels/cpu/blas.h).
// The forward splits work over (b, h); the backward over (b, g), so the thread that owns a KV head is
// the only one that writes its dk and dv. A GEMM inside the parallel loop runs single-threaded
// (OpenBLAS's OpenMP build checks omp_in_parallel), so threads are never oversubscribed.
#include <cmath>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"

namespace reftrain::cpu {

namespace {

// Head h of batch row b is the (T, D) matrix starting at q + (b T Hq + h) D with row stride Hq D;
// the products below run on those strided slices directly. The scores are computed for the full
// (T, T) square and the upper triangle is then overwritten: half the multiply is wasted, but BLAS
// on the square is still several times faster than any triangular loop we could write here.
template <class T>
void forward_impl(const Tensor& out, const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v) {
    const int64_t B = q.dim(0), Tn = q.dim(1), Hq = q.dim(2), D = q.dim(3), Hkv = k.dim(2);
    const int64_t group = Hq / Hkv;
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(D)));
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < Hq; ++h) {
            const int64_t g = h / group;
            const T* qh = q.ptr<T>() + (b * Tn * Hq + h) * D;   // (T, D), row stride Hq D
            const T* kg = k.ptr<T>() + (b * Tn * Hkv + g) * D;  // (T, D), row stride Hkv D
            const T* vg = v.ptr<T>() + (b * Tn * Hkv + g) * D;
            T* oh = out.ptr<T>() + (b * Tn * Hq + h) * D;
            T* P = probs.ptr<T>() + (b * Hq + h) * Tn * Tn;      // (T, T)
            gemm(false, true, Tn, Tn, D, scale, qh, Hq * D, kg, Hkv * D, T(0), P, Tn);  // S = scale Q K^T
            for (int64_t t = 0; t < Tn; ++t) {                    // causal softmax, row by row
                T* row = P + t * Tn;
                T max_score = row[0];
                for (int64_t s = 1; s <= t; ++s) max_score = row[s] > max_score ? row[s] : max_score;
                double sum = 0.0;
                for (int64_t s = 0; s <= t; ++s) {
                    row[s] = std::exp(row[s] - max_score);
                    sum += row[s];
                }
                const T inv_sum = static_cast<T>(1.0 / sum);
                for (int64_t s = 0; s <= t; ++s) row[s] *= inv_sum;
                for (int64_t s = t + 1; s < Tn; ++s) row[s] = 0;  // the mask: no weight on the future
            }
            gemm(false, false, Tn, D, Tn, T(1), P, Tn, vg, Hkv * D, T(0), oh, Hq * D);  // O = P V
        }
    }
}

template <class T>
void backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                   const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v) {
    const int64_t B = q.dim(0), Tn = q.dim(1), Hq = q.dim(2), D = q.dim(3), Hkv = k.dim(2);
    const int64_t group = Hq / Hkv;
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(D)));
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t g = 0; g < Hkv; ++g) {
            std::vector<T> dS(Tn * Tn);  // dP, then turned into dS in place
            const T* kg = k.ptr<T>() + (b * Tn * Hkv + g) * D;
            const T* vg = v.ptr<T>() + (b * Tn * Hkv + g) * D;
            for (int64_t h = g * group; h < (g + 1) * group; ++h) {
                const T* qh = q.ptr<T>() + (b * Tn * Hq + h) * D;
                const T* doh = dout.ptr<T>() + (b * Tn * Hq + h) * D;
                const T* P = probs.ptr<T>() + (b * Hq + h) * Tn * Tn;
                gemm(false, true, Tn, Tn, D, T(1), doh, Hq * D, vg, Hkv * D, T(0), dS.data(), Tn);  // dP = dO V^T
                for (int64_t t = 0; t < Tn; ++t) {  // softmax Jacobian: dS = P (dP - rowsum(P dP))
                    const T* p = P + t * Tn;
                    T* row = dS.data() + t * Tn;
                    double weighted = 0.0;
                    for (int64_t s = 0; s <= t; ++s) weighted += static_cast<double>(p[s]) * row[s];
                    const T w = static_cast<T>(weighted);
                    for (int64_t s = 0; s <= t; ++s) row[s] = p[s] * (row[s] - w);
                    for (int64_t s = t + 1; s < Tn; ++s) row[s] = 0;
                }
                if (dq.data) {  // dQ += scale dS K
                    T* dqh = dq.ptr<T>() + (b * Tn * Hq + h) * D;
                    gemm(false, false, Tn, D, Tn, scale, dS.data(), Tn, kg, Hkv * D, T(1), dqh, Hq * D);
                }
                if (dk.data) {  // dK += scale dS^T Q
                    T* dkg = dk.ptr<T>() + (b * Tn * Hkv + g) * D;
                    gemm(true, false, Tn, D, Tn, scale, dS.data(), Tn, qh, Hq * D, T(1), dkg, Hkv * D);
                }
                if (dv.data) {  // dV += P^T dO
                    T* dvg = dv.ptr<T>() + (b * Tn * Hkv + g) * D;
                    gemm(true, false, Tn, D, Tn, T(1), P, Tn, doh, Hq * D, T(1), dvg, Hkv * D);
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

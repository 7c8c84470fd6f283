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
//
// Two bug switches (kernels/bugs.h, docs/failures/README.md) sit beside the correct lines, each applied to the
// forward and the backward alike, so the backward stays the exact gradient of the buggy forward and a
// run trains normally with the bug in (tests/test_diagnostics.cpp gradchecks both):
//   causal_leak      row t of the mask also admits s = t + 1                 (causality diagnostic)
//   view_vs_permute  the (B*T) token rows are regrouped as if the layout were (T, B) before attention
//                    and put back after, so "a sequence" mixes batch rows   (batch-independence)
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <initializer_list>
#include <limits>
#include <vector>

#include "kernels/bugs.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace reftrain::cpu {

namespace {

// The last key position query t may attend to.
inline int64_t last_visible(int64_t t, int64_t Tn) {
    if (bugs().causal_leak) return std::min(t + 1, Tn - 1);  // BUG causal-leak: t also sees t + 1
    return t;                                                // correct: nothing after t
}

// Head h of batch row b is the (T, D) matrix starting at q + (b T Hq + h) D with row stride Hq D;
// the products below run on those strided slices directly.
//
// Causal blocks: the query rows go in blocks of kRows, and a block's products run only over the keys
// some row of it can see, [0, visible_columns(block)): for T = 128 and kRows = 32 that is 62.5% of the
// (T, T) square instead of all of it. Within a block, the entries past a row's last visible key are
// written as 0 (the mask), and the entries past the block's columns are never written: the saved
// probs are zeroed there once per forward and the backward's scratch dS starts zeroed, so every
// product below may read any rectangle of P or dS and find exact zeros above the diagonal.
constexpr int64_t kRows = 32;

// One past the last key any row in [r0, r1) may attend to.
inline int64_t visible_columns(int64_t r1, int64_t Tn) { return last_visible(r1 - 1, Tn) + 1; }

// The first query row that sees key c0 (rows before it have all of [c0, ...) masked).
inline int64_t first_row_seeing(int64_t c0, int64_t Tn) {
    int64_t t = c0;
    while (t > 0 && last_visible(t - 1, Tn) >= c0) --t;
    return t;
}

template <class T>
void forward_impl(const Tensor& out, const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v,
                  const Tensor& logits_max) {
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
            T head_max = -std::numeric_limits<T>::infinity();  // for logits_max; NaN stays NaN
            for (int64_t r0 = 0; r0 < Tn; r0 += kRows) {
                const int64_t r1 = std::min(Tn, r0 + kRows), rows = r1 - r0, cols = visible_columns(r1, Tn);
                T* Pb = P + r0 * Tn;
                gemm(false, true, rows, cols, D, scale, qh + r0 * Hq * D, Hq * D, kg, Hkv * D, T(0), Pb, Tn);  // S = scale Q K^T
                for (int64_t t = r0; t < r1; ++t) {                   // causal softmax, row by row
                    T* row = P + t * Tn;
                    const int64_t last = last_visible(t, Tn);            // t, unless the causal_leak bug is on
                    const T max_score = max_value(row, last + 1);         // kernels/cpu/vec_math.h
                    for (int64_t s = 0; s <= last; ++s) row[s] -= max_score;
                    exp_array(row, row, last + 1);                       // vectorised
                    const double sum = sum_f64(row, last + 1);           // fp64, fixed lane order
                    if (std::isnan(sum) || std::isnan(head_max)) {
                        head_max = std::numeric_limits<T>::quiet_NaN();
                    } else if (max_score > head_max) {
                        head_max = max_score;
                    }
                    const T inv_sum = static_cast<T>(1.0 / sum);
                    for (int64_t s = 0; s <= last; ++s) row[s] *= inv_sum;
                    for (int64_t s = last + 1; s < Tn; ++s) row[s] = 0;  // the mask: no weight on the future
                }
                gemm(false, false, rows, D, cols, T(1), Pb, Tn, vg, Hkv * D, T(0), oh + r0 * Hq * D, Hq * D);  // O = P V
            }
            if (logits_max.data) logits_max.ptr<T>()[b * Hq + h] = head_max;
        }
    }
}

template <class T>
void backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                   const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v) {
    const int64_t B = q.dim(0), Tn = q.dim(1), Hq = q.dim(2), D = q.dim(3), Hkv = k.dim(2);
    const int64_t group = Hq / Hkv;
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(D)));
    // The gradients of KV head g of batch row b, from its query heads. dS is the caller's (T, T) scratch:
    // dP, then turned into dS in place. Every head writes the same positions of it (the causal blocks
    // do not depend on the head), so the positions no head writes stay zero from the first zeroing.
    auto kv_head = [&](int64_t b, int64_t g, T* dS) {
        const T* kg = k.ptr<T>() + (b * Tn * Hkv + g) * D;
        const T* vg = v.ptr<T>() + (b * Tn * Hkv + g) * D;
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
            const T* qh = q.ptr<T>() + (b * Tn * Hq + h) * D;
            const T* doh = dout.ptr<T>() + (b * Tn * Hq + h) * D;
            const T* P = probs.ptr<T>() + (b * Hq + h) * Tn * Tn;
            for (int64_t r0 = 0; r0 < Tn; r0 += kRows) {
                const int64_t r1 = std::min(Tn, r0 + kRows), rows = r1 - r0, cols = visible_columns(r1, Tn);
                T* dSb = dS + r0 * Tn;
                gemm(false, true, rows, cols, D, T(1), doh + r0 * Hq * D, Hq * D, vg, Hkv * D, T(0), dSb, Tn);  // dP = dO V^T
                for (int64_t t = r0; t < r1; ++t) {  // softmax Jacobian: dS = P (dP - rowsum(P dP))
                    const T* p = P + t * Tn;
                    T* row = dS + t * Tn;
                    const int64_t last = last_visible(t, Tn);
                    const T w = static_cast<T>(dot_f64(p, row, last + 1));  // fp64, fixed lane order
                    for (int64_t s = 0; s <= last; ++s) row[s] = p[s] * (row[s] - w);
                    for (int64_t s = last + 1; s < cols; ++s) row[s] = 0;
                }
                if (dq.data) {  // dQ += scale dS K
                    T* dqh = dq.ptr<T>() + (b * Tn * Hq + h) * D;
                    gemm(false, false, rows, D, cols, scale, dSb, Tn, kg, Hkv * D, T(1), dqh + r0 * Hq * D, Hq * D);
                }
            }
            // dK and dV by blocks of keys: key block [c0, c1) gets contributions from rows t >= the
            // first row that sees c0; P and dS are exact zeros wherever a row cannot see a key.
            for (int64_t c0 = 0; c0 < Tn; c0 += kRows) {
                const int64_t c1 = std::min(Tn, c0 + kRows), keys = c1 - c0, t0 = first_row_seeing(c0, Tn);
                if (dk.data) {  // dK += scale dS^T Q
                    T* dkg = dk.ptr<T>() + (b * Tn * Hkv + g) * D;
                    gemm(true, false, keys, D, Tn - t0, scale, dS + t0 * Tn + c0, Tn, qh + t0 * Hq * D,
                         Hq * D, T(1), dkg + c0 * Hkv * D, Hkv * D);
                }
                if (dv.data) {  // dV += P^T dO
                    T* dvg = dv.ptr<T>() + (b * Tn * Hkv + g) * D;
                    gemm(true, false, keys, D, Tn - t0, T(1), P + t0 * Tn + c0, Tn, doh + t0 * Hq * D, Hq * D, T(1),
                         dvg + c0 * Hkv * D, Hkv * D);
                }
            }
        }
    };
#pragma omp parallel
    {
        std::vector<T> dS(Tn * Tn);  // one scratch per thread, zeroed once (see kv_head)
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < B; ++b) {
            for (int64_t g = 0; g < Hkv; ++g) kv_head(b, g, dS.data());
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

// ---- BUG view-vs-permute: token rows regrouped as if (B, T) were (T, B) -------------------------------
// Every (B, T, H, D) tensor's (B*T) token rows read as a (T, B) grid: regrouped row b*T + t is original
// row t*B + b. A bijection, so the buggy attention is the correct attention of a permuted input, with
// its exact gradient; it only mixes batch rows (and positions) into each "sequence". Runs `op` on
// regrouped copies of outputs then inputs, and puts the outputs' rows back (they accumulate, so their
// current contents travel through the regrouping too). Tensors without data pass through.
void on_regrouped_rows(std::initializer_list<const Tensor*> outputs, std::initializer_list<const Tensor*> inputs,
                       const std::function<void(const std::vector<Tensor>&)>& op) {
    std::vector<const Tensor*> all(outputs);
    all.insert(all.end(), inputs);
    std::vector<std::vector<std::byte>> copies(all.size());
    std::vector<Tensor> views;
    auto for_each_row = [](const Tensor& x, auto&& copy_row) {
        const int64_t B = x.dim(0), Tn = x.dim(1), row = static_cast<int64_t>(x.nbytes()) / (B * Tn);
        for (int64_t b = 0; b < B; ++b) {
            for (int64_t t = 0; t < Tn; ++t) copy_row((b * Tn + t) * row, (t * B + b) * row, row);
        }
    };
    for (size_t i = 0; i < all.size(); ++i) {
        views.push_back(*all[i]);
        if (!all[i]->data) continue;
        copies[i].resize(all[i]->nbytes());
        const auto* src = static_cast<const std::byte*>(all[i]->data);
        for_each_row(*all[i], [&](int64_t grouped, int64_t original, int64_t n) {
            std::copy_n(src + original, n, copies[i].data() + grouped);
        });
        views.back().data = copies[i].data();
    }
    op(views);
    for (size_t i = 0; i < outputs.size(); ++i) {
        if (!all[i]->data) continue;
        auto* dst = static_cast<std::byte*>(all[i]->data);
        for_each_row(*all[i], [&](int64_t grouped, int64_t original, int64_t n) {
            std::copy_n(copies[i].data() + grouped, n, dst + original);
        });
    }
}

void forward(const Tensor& out, const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v,
             const Tensor& logits_max) {
    dispatch_float(q.dtype, "attention_forward",
                   [&](auto t) { forward_impl<decltype(t)>(out, probs, q, k, v, logits_max); });
}

void backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& probs,
              const Tensor& q, const Tensor& k, const Tensor& v) {
    dispatch_float(q.dtype, "attention_backward",
                   [&](auto t) { backward_impl<decltype(t)>(dq, dk, dv, dout, probs, q, k, v); });
}

}  // namespace

void attention_forward(const Tensor& out, const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& logits_max) {
    check_args(out, probs, q, k, v, "attention_forward", "out");
    if (logits_max.data) {
        expect_shape(logits_max, {q.dim(0), q.dim(2)}, "attention_forward", "logits_max");
        expect_same_dtype(q, logits_max, "attention_forward");
    }
    if (bugs().view_vs_permute && q.dim(0) > 1) {  // BUG view-vs-permute: heads split over a (T, B) view
        return on_regrouped_rows({&out}, {&q, &k, &v},
                                 [&](auto& r) { forward(r[0], probs, r[1], r[2], r[3], logits_max); });
    }
    forward(out, probs, q, k, v, logits_max);
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v) {
    check_args(dout, probs, q, k, v, "attention_backward", "dout");
    if (dq.data) expect_shape(dq, {q.dim(0), q.dim(1), q.dim(2), q.dim(3)}, "attention_backward", "dq");
    if (dk.data) expect_shape(dk, {k.dim(0), k.dim(1), k.dim(2), k.dim(3)}, "attention_backward", "dk");
    if (dv.data) expect_shape(dv, {v.dim(0), v.dim(1), v.dim(2), v.dim(3)}, "attention_backward", "dv");
    if (bugs().view_vs_permute && q.dim(0) > 1) {  // BUG view-vs-permute: the forward's regrouping, undone after
        return on_regrouped_rows({&dq, &dk, &dv}, {&dout, &q, &k, &v},
                                 [&](auto& r) { backward(r[0], r[1], r[2], r[3], probs, r[4], r[5], r[6]); });
    }
    backward(dq, dk, dv, dout, probs, q, k, v);
}

}  // namespace reftrain::cpu

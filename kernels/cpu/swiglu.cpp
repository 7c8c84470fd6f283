// kernels/cpu/swiglu.cpp — the SwiGLU gate (Shazeer 2020): out = silu(gate) * up.
//
// With s = sigmoid(g):  silu(g) = g s,  silu'(g) = s (1 + g (1 - s))
//   dgate += dout * up * s * (1 + g (1 - s))
//   dup   += dout * silu(g)
#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace reftrain::cpu {

namespace {

// Elements go in blocks of kBlock: exp(-g) for a block in one vectorised call (kernels/cpu/vec_math.h),
// then the arithmetic. Blocks are fixed by the index alone, so the split over threads changes no bits.
constexpr int64_t kBlock = 512;

// s[i] = sigmoid(g[i]) = 1 / (1 + exp(-g[i])) for i < n.
template <class T>
void sigmoid_block(const T* g, T* s, int64_t n) {
    for (int64_t i = 0; i < n; ++i) s[i] = -g[i];
    exp_array(s, s, n);
    for (int64_t i = 0; i < n; ++i) s[i] = T(1) / (T(1) + s[i]);
}

template <class T>
void forward_impl(const Tensor& out, const Tensor& gate, const Tensor& up) {
    const int64_t n = out.numel(), blocks = (n + kBlock - 1) / kBlock;
    const T* g = gate.ptr<T>();
    const T* u = up.ptr<T>();
    T* o = out.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t lo = b * kBlock, len = std::min(kBlock, n - lo);
        T s[kBlock];
        sigmoid_block(g + lo, s, len);
        for (int64_t i = 0; i < len; ++i) o[lo + i] = g[lo + i] * s[i] * u[lo + i];
    }
}

template <class T>
void backward_impl(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                   const Tensor& up) {
    const int64_t n = dout.numel(), blocks = (n + kBlock - 1) / kBlock;
    const T* g = gate.ptr<T>();
    const T* u = up.ptr<T>();
    const T* dy = dout.ptr<T>();
    T* dg = dgate.data ? dgate.ptr<T>() : nullptr;
    T* du = dup.data ? dup.ptr<T>() : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t lo = b * kBlock, len = std::min(kBlock, n - lo);
        T s[kBlock];
        sigmoid_block(g + lo, s, len);
        if (dg) {
            for (int64_t i = 0; i < len; ++i) {
                const int64_t j = lo + i;
                dg[j] += dy[j] * u[j] * s[i] * (T(1) + g[j] * (T(1) - s[i]));
            }
        }
        if (du) {
            for (int64_t i = 0; i < len; ++i) du[lo + i] += dy[lo + i] * g[lo + i] * s[i];
        }
    }
}

}  // namespace

void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up) {
    const int64_t N = gate.dim(0), F = gate.dim(1);
    expect_shape(gate, {N, F}, "swiglu_forward", "gate");
    expect_shape(up, {N, F}, "swiglu_forward", "up");
    expect_shape(out, {N, F}, "swiglu_forward", "out");
    expect_same_dtype(gate, up, "swiglu_forward");
    expect_same_dtype(gate, out, "swiglu_forward");
    dispatch_float(gate.dtype, "swiglu_forward", [&](auto t) { forward_impl<decltype(t)>(out, gate, up); });
}

void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up) {
    const int64_t N = gate.dim(0), F = gate.dim(1);
    expect_shape(dout, {N, F}, "swiglu_backward", "dout");
    expect_shape(up, {N, F}, "swiglu_backward", "up");
    if (dgate.data) expect_shape(dgate, {N, F}, "swiglu_backward", "dgate");
    if (dup.data) expect_shape(dup, {N, F}, "swiglu_backward", "dup");
    dispatch_float(gate.dtype, "swiglu_backward",
                   [&](auto t) { backward_impl<decltype(t)>(dgate, dup, dout, gate, up); });
}

}  // namespace reftrain::cpu

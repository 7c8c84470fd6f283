// kernels/cpu/swiglu.cpp — the SwiGLU gate (Shazeer 2020): out = silu(gate) * up.
//
// With s = sigmoid(g):  silu(g) = g s,  silu'(g) = s (1 + g (1 - s))
//   dgate += dout * up * s * (1 + g (1 - s))
//   dup   += dout * silu(g)
#include <cmath>

#include "kernels/cpu/ops.h"

namespace reftrain::cpu {

namespace {

template <class T>
T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

template <class T>
void forward_impl(const Tensor& out, const Tensor& gate, const Tensor& up) {
    const int64_t n = out.numel();
    const T* g = gate.ptr<T>();
    const T* u = up.ptr<T>();
    T* o = out.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) o[i] = g[i] * sigmoid(g[i]) * u[i];
}

template <class T>
void backward_impl(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                   const Tensor& up) {
    const int64_t n = dout.numel();
    const T* g = gate.ptr<T>();
    const T* u = up.ptr<T>();
    const T* dy = dout.ptr<T>();
    T* dg = dgate.data ? dgate.ptr<T>() : nullptr;
    T* du = dup.data ? dup.ptr<T>() : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        const T s = sigmoid(g[i]);
        if (dg) dg[i] += dy[i] * u[i] * s * (T(1) + g[i] * (T(1) - s));
        if (du) du[i] += dy[i] * g[i] * s;
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

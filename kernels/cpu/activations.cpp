// kernels/cpu/activations.cpp — bias add and tanh for the actor-critic MLP (see activations.h).
//
//   bias:  out[n, c] = y[n, c] + b[c]        db[c] += sum_n dout[n, c]   (summed in fp64, rows in order)
//   tanh:  out = tanh(x)                     dx += dout * (1 - out^2)
// tanh's backward reads the saved output rather than x: one multiply instead of another tanh, and the
// same numbers the forward produced.
#include <cmath>

#include "kernels/cpu/activations.h"

namespace reftrain::cpu {

namespace {

template <class T>
void bias_add_forward_impl(const Tensor& out, const Tensor& bias) {
    const int64_t N = out.dim(0), C = out.dim(1);
    T* y = out.ptr<T>();
    const T* b = bias.ptr<T>();
#pragma omp parallel for schedule(static) if (N * C > 65536)
    for (int64_t n = 0; n < N; ++n) {
        T* row = y + n * C;
        for (int64_t c = 0; c < C; ++c) row[c] += b[c];
    }
}

template <class T>
void bias_add_backward_impl(const Tensor& dbias, const Tensor& dout) {
    const int64_t N = dout.dim(0), C = dout.dim(1);
    const T* dy = dout.ptr<T>();
    T* db = dbias.ptr<T>();
    // One thread per channel, rows in order: the sum does not depend on the thread count.
#pragma omp parallel for schedule(static) if (N * C > 65536)
    for (int64_t c = 0; c < C; ++c) {
        double sum = 0.0;
        for (int64_t n = 0; n < N; ++n) sum += static_cast<double>(dy[n * C + c]);
        db[c] += static_cast<T>(sum);
    }
}

template <class T>
void tanh_forward_impl(const Tensor& out, const Tensor& x) {
    const int64_t n = out.numel();
    const T* in = x.ptr<T>();
    T* y = out.ptr<T>();
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(in[i]);
}

template <class T>
void tanh_backward_impl(const Tensor& dx, const Tensor& dout, const Tensor& out) {
    const int64_t n = dout.numel();
    const T* dy = dout.ptr<T>();
    const T* y = out.ptr<T>();
    T* g = dx.ptr<T>();
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) g[i] += dy[i] * (T(1) - y[i] * y[i]);
}

}  // namespace

void bias_add_forward(const Tensor& out, const Tensor& bias) {
    const int64_t C = bias.dim(0);
    expect_shape(bias, {C}, "bias_add_forward", "bias");
    expect_shape(out, {-1, C}, "bias_add_forward", "out");
    expect_same_dtype(out, bias, "bias_add_forward");
    dispatch_float(out.dtype, "bias_add_forward", [&](auto t) { bias_add_forward_impl<decltype(t)>(out, bias); });
}

void bias_add_backward(const Tensor& dbias, const Tensor& dout) {
    if (!dbias.data) return;
    const int64_t C = dbias.dim(0);
    expect_shape(dbias, {C}, "bias_add_backward", "dbias");
    expect_shape(dout, {-1, C}, "bias_add_backward", "dout");
    expect_same_dtype(dbias, dout, "bias_add_backward");
    dispatch_float(dout.dtype, "bias_add_backward", [&](auto t) { bias_add_backward_impl<decltype(t)>(dbias, dout); });
}

void tanh_forward(const Tensor& out, const Tensor& x) {
    const int64_t N = x.dim(0), C = x.dim(1);
    expect_shape(x, {N, C}, "tanh_forward", "x");
    expect_shape(out, {N, C}, "tanh_forward", "out");
    expect_same_dtype(out, x, "tanh_forward");
    dispatch_float(x.dtype, "tanh_forward", [&](auto t) { tanh_forward_impl<decltype(t)>(out, x); });
}

void tanh_backward(const Tensor& dx, const Tensor& dout, const Tensor& out) {
    if (!dx.data) return;
    const int64_t N = out.dim(0), C = out.dim(1);
    expect_shape(out, {N, C}, "tanh_backward", "out");
    expect_shape(dout, {N, C}, "tanh_backward", "dout");
    expect_shape(dx, {N, C}, "tanh_backward", "dx");
    expect_same_dtype(dx, dout, "tanh_backward");
    expect_same_dtype(dx, out, "tanh_backward");
    dispatch_float(out.dtype, "tanh_backward", [&](auto t) { tanh_backward_impl<decltype(t)>(dx, dout, out); });
}

}  // namespace reftrain::cpu

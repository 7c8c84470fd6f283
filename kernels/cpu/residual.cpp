// kernels/cpu/residual.cpp — the residual add: out = a + b; the gradient passes through to both.
#include "kernels/cpu/ops.h"

namespace reftrain::cpu {

namespace {

template <class T>
void forward_impl(const Tensor& out, const Tensor& a, const Tensor& b) {
    const int64_t n = out.numel();
    const T* x = a.ptr<T>();
    const T* y = b.ptr<T>();
    T* o = out.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
}

template <class T>
void accumulate(const Tensor& dst, const Tensor& src) {
    if (!dst.data) return;
    const int64_t n = src.numel();
    const T* s = src.ptr<T>();
    T* d = dst.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) d[i] += s[i];
}

}  // namespace

void residual_forward(const Tensor& out, const Tensor& a, const Tensor& b) {
    check(a.numel() == out.numel() && b.numel() == out.numel(), "residual_forward: '", a.name, "' ",
          a.shape_str(), " + '", b.name, "' ", b.shape_str(), " -> '", out.name, "' ", out.shape_str(),
          ": sizes differ");
    expect_same_dtype(a, b, "residual_forward");
    expect_same_dtype(a, out, "residual_forward");
    dispatch_float(out.dtype, "residual_forward", [&](auto t) { forward_impl<decltype(t)>(out, a, b); });
}

void residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout) {
    for (const Tensor* d : {&da, &db}) {
        if (d->data) {
            check(d->numel() == dout.numel(), "residual_backward: '", d->name, "' ", d->shape_str(),
                  " and '", dout.name, "' ", dout.shape_str(), ": sizes differ");
            expect_same_dtype(*d, dout, "residual_backward");
        }
    }
    dispatch_float(dout.dtype, "residual_backward", [&](auto t) {
        accumulate<decltype(t)>(da, dout);
        accumulate<decltype(t)>(db, dout);
    });
}

}  // namespace reftrain::cpu

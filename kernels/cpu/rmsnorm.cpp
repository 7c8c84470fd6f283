// kernels/cpu/rmsnorm.cpp — RMSNorm (Zhang & Sennrich 2019), as in Qwen3/Llama, no bias, no mean.
//
// forward:   r[n] = (mean_c x[n,c]^2 + eps)^(-1/2)        (sums in fp64, in vec_math.h's lane order)
//            y[n,c] = x[n,c] * r[n] * w[c]
// backward:  with g[c] = dy[n,c] * w[c],
//            dx[n,c] += r[n] * g[c] - r[n]^3 / C * x[n,c] * sum_k g[k] x[n,k]
//            dw[c]   += sum_n dy[n,c] * x[n,c] * r[n]
// The derivative of r: dr/dx[c] = -r^3 x[c] / C, which is where the second term of dx comes from.
// dw is a sum over rows; it is split over columns so that each column is summed by one thread.
#include <omp.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace reftrain::cpu {

namespace {

template <class T>
void forward_impl(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight, double eps) {
    const int64_t N = x.dim(0), C = x.dim(1);
    const T* in = x.ptr<T>();
    const T* w = weight.ptr<T>();
    T* o = out.ptr<T>();
    T* r = rstd.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        const T* row = in + n * C;
        const double sum_squares = dot_f64(row, row, C);  // fixed lane order (kernels/cpu/vec_math.h)
        const T inv_rms = static_cast<T>(1.0 / std::sqrt(sum_squares / C + eps));
        r[n] = inv_rms;
        for (int64_t c = 0; c < C; ++c) o[n * C + c] = (row[c] * inv_rms) * w[c];
    }
}

template <class T>
void backward_impl(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                   const Tensor& weight, const Tensor& rstd) {
    const int64_t N = x.dim(0), C = x.dim(1);
    const T* in = x.ptr<T>();
    const T* w = weight.ptr<T>();
    const T* dy = dout.ptr<T>();
    const T* r = rstd.ptr<T>();
    if (dx.data) {
        T* dxp = dx.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            const T* row = in + n * C;
            const T* grow = dy + n * C;
            const double dot = dot3_f64(grow, w, row, C);  // sum_k dy[k] w[k] x[k]
            const T rn = r[n];
            const T coeff = static_cast<T>(static_cast<double>(rn) * rn * rn * dot / C);
            for (int64_t c = 0; c < C; ++c) dxp[n * C + c] += rn * (grow[c] * w[c]) - coeff * row[c];
        }
    }
    if (dweight.data) {
        T* dw = dweight.ptr<T>();
#pragma omp parallel
        {
            const int threads = omp_get_num_threads(), me = omp_get_thread_num();
            const int64_t begin = C * me / threads, end = C * (me + 1) / threads;
            std::vector<double> acc(end - begin, 0.0);
            for (int64_t n = 0; n < N; ++n) {
                const T* row = in + n * C;
                const T* grow = dy + n * C;
                const double rn = r[n];
                for (int64_t c = begin; c < end; ++c) acc[c - begin] += static_cast<double>(grow[c]) * row[c] * rn;
            }
            for (int64_t c = begin; c < end; ++c) dw[c] += static_cast<T>(acc[c - begin]);
        }
    }
}

}  // namespace

void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight, double eps) {
    const int64_t N = x.dim(0), C = x.dim(1);
    expect_shape(x, {N, C}, "rmsnorm_forward", "x");
    expect_shape(weight, {C}, "rmsnorm_forward", "weight");
    expect_shape(out, {N, C}, "rmsnorm_forward", "out");
    expect_shape(rstd, {N}, "rmsnorm_forward", "rstd");
    expect_same_dtype(x, weight, "rmsnorm_forward");
    expect_same_dtype(x, out, "rmsnorm_forward");
    expect_same_dtype(x, rstd, "rmsnorm_forward");
    dispatch_float(x.dtype, "rmsnorm_forward", [&](auto t) { forward_impl<decltype(t)>(out, rstd, x, weight, eps); });
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd) {
    const int64_t N = x.dim(0), C = x.dim(1);
    expect_shape(dout, {N, C}, "rmsnorm_backward", "dout");
    expect_shape(weight, {C}, "rmsnorm_backward", "weight");
    expect_shape(rstd, {N}, "rmsnorm_backward", "rstd");
    if (dx.data) expect_shape(dx, {N, C}, "rmsnorm_backward", "dx");
    if (dweight.data) expect_shape(dweight, {C}, "rmsnorm_backward", "dweight");
    expect_same_dtype(x, dout, "rmsnorm_backward");
    dispatch_float(x.dtype, "rmsnorm_backward",
                   [&](auto t) { backward_impl<decltype(t)>(dx, dweight, dout, x, weight, rstd); });
}

}  // namespace reftrain::cpu

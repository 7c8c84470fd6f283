// kernels/cpu/matmul.cpp — the linear layer (x @ W^T) through CBLAS (OpenBLAS).
//
// Row-major throughout. With W stored (OC, IC) as in torch.nn.Linear:
//   forward   out (N, OC)  = x (N, IC) @ W^T          sgemm(NoTrans, Trans)
//   backward  dx (N, IC)  += dout (N, OC) @ W         sgemm(NoTrans, NoTrans, beta = 1)
//             dW (OC, IC) += dout^T (OC, N) @ x       sgemm(Trans, NoTrans, beta = 1)
// beta = 1 is what makes the backward accumulate (see the conventions in ops.h).
#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"

namespace reftrain::cpu {

namespace {

// The typed GEMM of blas.h on Tensor views, dispatched on the output's dtype.
void gemm_views(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Tensor& a, int64_t lda,
                const Tensor& b, int64_t ldb, double beta, const Tensor& c, int64_t ldc) {
    dispatch_float(c.dtype, "linear", [&](auto tag) {
        using T = decltype(tag);
        gemm(trans_a, trans_b, m, n, k, T(1), a.ptr<T>(), lda, b.ptr<T>(), ldb, static_cast<T>(beta), c.ptr<T>(), ldc);
    });
}

}  // namespace

void linear_forward(const Tensor& out, const Tensor& x, const Tensor& weight) {
    const int64_t N = x.dim(0), IC = x.dim(1), OC = weight.dim(0);
    expect_shape(x, {N, IC}, "linear_forward", "x");
    expect_shape(weight, {OC, IC}, "linear_forward", "weight");
    expect_shape(out, {N, OC}, "linear_forward", "out");
    expect_same_dtype(x, weight, "linear_forward");
    expect_same_dtype(x, out, "linear_forward");
    if (N == 0) return;
    gemm_views(false, true, N, OC, IC, x, IC, weight, IC, 0.0, out, OC);
}

void linear_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                     const Tensor& weight) {
    const int64_t N = x.dim(0), IC = x.dim(1), OC = weight.dim(0);
    expect_shape(dout, {N, OC}, "linear_backward", "dout");
    expect_shape(weight, {OC, IC}, "linear_backward", "weight");
    if (N == 0) return;
    if (dx.data) {
        expect_shape(dx, {N, IC}, "linear_backward", "dx");
        expect_same_dtype(dx, dout, "linear_backward");
        gemm_views(false, false, N, IC, OC, dout, OC, weight, IC, 1.0, dx, IC);
    }
    if (dweight.data) {
        expect_shape(dweight, {OC, IC}, "linear_backward", "dweight");
        expect_same_dtype(dweight, dout, "linear_backward");
        gemm_views(true, false, OC, IC, N, dout, OC, x, IC, 1.0, dweight, IC);
    }
}

}  // namespace reftrain::cpu

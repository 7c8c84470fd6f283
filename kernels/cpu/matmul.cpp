// kernels/cpu/matmul.cpp — the linear layer (x @ W^T) through CBLAS (OpenBLAS).
//
// Row-major throughout. With W stored (OC, IC) as in torch.nn.Linear:
//   forward   out (N, OC)  = x (N, IC) @ W^T          sgemm(NoTrans, Trans)
//   backward  dx (N, IC)  += dout (N, OC) @ W         sgemm(NoTrans, NoTrans, beta = 1)
//             dW (OC, IC) += dout^T (OC, N) @ x       sgemm(Trans, NoTrans, beta = 1)
// beta = 1 is what makes the backward accumulate (see the conventions in ops.h).
//
// Each product runs as 1, 2, 4 or 8 chunks, each one single-threaded GEMM, the chunks spread over
// the threads (chunked_gemm below: the token rows for the forward and dx, dW's rows for dW; columns
// when there are too few rows). Two reasons:
//   speed   OpenBLAS threads one GEMM by cutting it into panels and synchronising its threads after
//           each; on the 2-core VM of docs/benchmarks.md those fine-grained waits made the tiny
//           config's GEMMs ~1.4x slower whenever the host was busy (88 against 64 ms per step),
//           while single-threaded GEMMs side by side ran at full speed.
//   bits    OpenBLAS's threaded path does not always give the bits of its single-threaded one (a
//           dW of 1030 rows differed at 3 threads). A chunk is one call with the same arguments at
//           any thread count (OpenBLAS does not thread a call made inside a parallel region), and
//           the chunks depend on the shape alone, so the results are the same at every thread count
//           (tests/test_ops_gradcheck.cpp).
// The price: on one thread the chunks cost a few percent against one GEMM per product (dW's chunks
// each pack all of x again), and a product too small to cut runs on one thread.
#include <algorithm>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"

namespace reftrain::cpu {

namespace {

// The largest of 1, 2, 4, 8 that is at most n / unit: a count that 2 or 4 threads share evenly (3
// chunks on 2 threads would leave one thread idle for a third of the product).
int64_t power_of_two_chunks(int64_t n, int64_t unit) {
    int64_t chunks = 1;
    while (chunks < 8 && 2 * chunks * unit <= n) chunks *= 2;
    return chunks;
}

// C (M, N) = op(A) op(B) + beta C as chunks of C: of its rows when it has at least 2 * min_rows of
// them, else of its columns (from 64 each), else one chunk. Every chunk runs inside the parallel
// region, a single chunk too, so that OpenBLAS never threads a call.
template <class T>
void chunked_gemm(int64_t min_rows, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                  const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
    const bool by_rows = M >= 2 * min_rows;
    const int64_t chunks = by_rows ? power_of_two_chunks(M, min_rows) : power_of_two_chunks(N, 64);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
        if (by_rows) {
            const int64_t m0 = M * c / chunks, m1 = M * (c + 1) / chunks;
            gemm(ta, tb, m1 - m0, N, K, T(1), ta ? A + m0 : A + m0 * lda, lda, B, ldb, beta, C + m0 * ldc, ldc);
        } else {
            const int64_t n0 = N * c / chunks, n1 = N * (c + 1) / chunks;
            gemm(ta, tb, M, n1 - n0, K, T(1), A, lda, tb ? B + n0 * ldb : B + n0, ldb, beta, C + n0, ldc);
        }
    }
}

// Chunks of the token rows from 256 rows each; of dW's rows (output features) from 64.
constexpr int64_t kTokenRows = 256, kWeightRows = 64;

}  // namespace

void linear_forward(const Tensor& out, const Tensor& x, const Tensor& weight) {
    const int64_t N = x.dim(0), IC = x.dim(1), OC = weight.dim(0);
    expect_shape(x, {N, IC}, "linear_forward", "x");
    expect_shape(weight, {OC, IC}, "linear_forward", "weight");
    expect_shape(out, {N, OC}, "linear_forward", "out");
    expect_same_dtype(x, weight, "linear_forward");
    expect_same_dtype(x, out, "linear_forward");
    if (N == 0) return;
    dispatch_float(out.dtype, "linear_forward", [&](auto tag) {
        using T = decltype(tag);
        chunked_gemm(kTokenRows, false, true, N, OC, IC, x.ptr<T>(), IC, weight.ptr<T>(), IC, T(0), out.ptr<T>(), OC);
    });
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
        dispatch_float(dx.dtype, "linear_backward", [&](auto tag) {
            using T = decltype(tag);
            chunked_gemm(kTokenRows, false, false, N, IC, OC, dout.ptr<T>(), OC, weight.ptr<T>(), IC, T(1), dx.ptr<T>(), IC);
        });
    }
    if (dweight.data) {
        expect_shape(dweight, {OC, IC}, "linear_backward", "dweight");
        expect_same_dtype(dweight, dout, "linear_backward");
        dispatch_float(dweight.dtype, "linear_backward", [&](auto tag) {
            using T = decltype(tag);
            chunked_gemm(kWeightRows, true, false, OC, IC, N, dout.ptr<T>(), OC, x.ptr<T>(), IC, T(1), dweight.ptr<T>(), IC);
        });
    }
}

}  // namespace reftrain::cpu

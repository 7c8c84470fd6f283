// kernels/cpu/blas.h — typed row-major GEMM over CBLAS, for the ops that are matrix products.
//
// C (M, N) = alpha * op(A) @ op(B) + beta * C, op = transpose when the flag is set; lda/ldb/ldc are
// row strides, which is how attention addresses one head inside a (B, T, H, D) tensor without a copy.
#pragma once

#include <cblas.h>

#include <cstdint>

namespace reftrain::cpu {

inline void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}

inline void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                 int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace reftrain::cpu

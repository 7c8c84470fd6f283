// kernels/cpu/blas.h — typed row-major GEMM over OpenBLAS, and which OpenBLAS kernels are running.
//
// C (M, N) = alpha * op(A) @ op(B) + beta * C, op = transpose when the flag is set; lda/ldb/ldc are
// row strides, which is how attention addresses one head inside a (B, T, H, D) tensor without a copy.
//
// Why OpenBLAS is loaded at run time (kernels/cpu/blas.cpp) rather than linked: a DYNAMIC_ARCH
// OpenBLAS picks its kernels ("core") once, in its load-time constructor, from the CPU's *model
// number*. Debian 12's 0.3.21 does not know the model numbers of CPUs newer than itself and falls
// back to its SSE3 core (Prescott) on them: 3x slower training on an AVX-512 Intel Xeon, silently.
// The only documented way to choose the core is the OPENBLAS_CORETYPE environment variable, read by
// that constructor, so it must be set before the library is loaded. blas.cpp therefore chooses the
// core from the CPU's *feature flags* (AVX-512, AVX2+FMA, AVX), sets the variable, then dlopen()s the
// library CMake found. A core set by the user in OPENBLAS_CORETYPE always wins. The choice depends on
// the CPU only, so every run on one machine uses the same kernels and gets the same bits.
#pragma once

#include <cstdint>
#include <string>

namespace reftrain::cpu {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// What is running, for every run's start-up lines and every benchmark.
struct BlasInfo {
    std::string library_path;  // the shared object loaded
    std::string version;       // "0.3.21"
    std::string config;        // openblas_get_config(): build options, e.g. "... DYNAMIC_ARCH ... USE_OPENMP ..."
    std::string threading;     // "OpenMP", "pthreads" or "sequential"
    std::string core;          // the kernels in use, as OpenBLAS names them (openblas_get_corename)
    std::string requested;     // the core asked for through OPENBLAS_CORETYPE ("" = OpenBLAS's own pick)
    std::string chosen_by;     // "the environment" (the user's OPENBLAS_CORETYPE), "reftrain" (CPU flags), "OpenBLAS"
    std::string cpu_features;  // the flags the choice rests on, e.g. "avx512f avx512bw avx512dq avx512vl avx2 fma"
};

// Loads OpenBLAS on first use (thread-safe); throws reftrain::Error naming the library if it cannot.
const BlasInfo& blas_info();

// One line: "OpenBLAS 0.3.21 (OpenMP), core SkylakeX (chosen by reftrain from the CPU flags: ...), 2 threads".
std::string blas_summary();

// The core reftrain asks for on this CPU, from its flags alone ("" = none: leave it to OpenBLAS).
std::string core_for_cpu_flags();

// OpenBLAS's own thread count (with its OpenMP flavour this follows omp_set_num_threads).
int blas_threads();
void set_blas_threads(int threads);

}  // namespace reftrain::cpu

// kernels/cpu/vec_math.h — exp over arrays, vectorised, for the softmaxes, the cross-entropy and SiLU;
// and the row reductions (max, fp64 sums and dot products) of the softmaxes, norms and cross-entropy.
//
// A scalar expf costs ~10 ns; the tiny config evaluates a few million per step (attention softmax,
// cross-entropy forward and backward, SwiGLU forward and backward), which made exp the largest cost
// outside the GEMMs. fp32 arrays go through SLEEF's vector exp (Debian's libsleef, the library
// PyTorch's CPU kernels use; 1.0 ulp bound, the "u10" functions), 16 lanes with AVX-512, 8 with AVX2,
// else SLEEF's scalar exp. fp64 arrays (gradient checks, tight parity tests) keep std::exp.
//
// Determinism: the kernel is chosen once per process from the CPU's feature flags (as the OpenBLAS
// core is: kernels/cpu/blas.h), and every element goes through that one kernel: a tail shorter than
// a vector is padded into a full vector, never handed to a scalar function. So exp(x) is the same bits
// wherever x sits in an array, and an op that splits its rows over threads gets the same bits for
// any thread count.
#pragma once

#include <cmath>
#include <cstdint>

namespace reftrain::cpu {

// y[i] = exp(x[i]) for i < n; x == y is allowed.
void exp_array(const float* x, float* y, int64_t n);
inline void exp_array(const double* x, double* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

// The fp32 exp kernel in use, for start-up lines and benchmarks: "SLEEF expf16_u10 (AVX-512)", ...
const char* exp_kernel_name();

// ---- row reductions in a fixed order ---------------------------------------------------------------
//
// The softmaxes, the RMSNorms and the cross-entropy reduce each row in fp64. One running sum is a chain
// of dependent adds, ~3 cycles each, that the compiler may not reorder or vectorise (IEEE addition is
// not associative, and we build without -ffast-math); at ~10M terms per tiny-config step that chain
// alone was ~7% of the step. These keep kSumLanes partial sums instead: term i goes to partial sum
// i % kSumLanes, and the partial sums are combined in one fixed tree at the end. The lanes are
// independent, so the compiler vectorises them (one zmm of doubles with AVX-512), and the order
// depends on n alone: the same row gives the same bits at any position, on any thread, for any
// thread count. It differs from a single running sum in the last bits, as any other order would.
constexpr int64_t kSumLanes = 8;

// sum over i < n of term(i), in the lane order above.
template <class Term>
inline double lane_sum(int64_t n, Term term) {
    double acc[kSumLanes] = {};
    int64_t i = 0;
    for (; i + kSumLanes <= n; i += kSumLanes) {
        for (int64_t j = 0; j < kSumLanes; ++j) acc[j] += term(i + j);
    }
    for (int64_t j = 0; i + j < n; ++j) acc[j] += term(i + j);
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

// sum_i x[i], in fp64.
template <class T>
inline double sum_f64(const T* x, int64_t n) {
    return lane_sum(n, [x](int64_t i) { return static_cast<double>(x[i]); });
}

// sum_i a[i] b[i], the products in fp64.
template <class T>
inline double dot_f64(const T* a, const T* b, int64_t n) {
    return lane_sum(n, [a, b](int64_t i) { return static_cast<double>(a[i]) * static_cast<double>(b[i]); });
}

// sum_i a[i] b[i] c[i], the products in fp64, (a b) first.
template <class T>
inline double dot3_f64(const T* a, const T* b, const T* c, int64_t n) {
    return lane_sum(n, [a, b, c](int64_t i) {
        return static_cast<double>(a[i]) * static_cast<double>(b[i]) * static_cast<double>(c[i]);
    });
}

// The largest of x[0..n), n >= 1, for shifting a softmax. 16 running maxima, combined at the end. A
// NaN may or may not be the answer, depending on where it sits; either way the softmax or log-sum-exp
// it shifts comes out NaN (exp(NaN) enters its sum), so the result of the row does not depend on it.
// For a row without NaN the maximum is exact whatever the order.
template <class T>
inline T max_value(const T* x, int64_t n) {
    constexpr int64_t kLanes = 16;
    if (n < kLanes) {
        T m = x[0];
        for (int64_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
        return m;
    }
    T m[kLanes];
    for (int64_t j = 0; j < kLanes; ++j) m[j] = x[j];
    int64_t i = kLanes;
    for (; i + kLanes <= n; i += kLanes) {
        for (int64_t j = 0; j < kLanes; ++j) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
    }
    for (int64_t j = 0; i + j < n; ++j) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
    T best = m[0];
    for (int64_t j = 1; j < kLanes; ++j) best = m[j] > best ? m[j] : best;
    return best;
}

}  // namespace reftrain::cpu

// kernels/cpu/vec_math.h — exp over arrays, vectorised, for the softmaxes, the cross-entropy and SiLU.
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

}  // namespace reftrain::cpu

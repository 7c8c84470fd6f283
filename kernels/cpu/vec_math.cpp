// kernels/cpu/vec_math.cpp — the fp32 exp kernels and their one-time choice (see vec_math.h).
#include "kernels/cpu/vec_math.h"

#include <sleef.h>

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>

// SLEEF's fixed-ISA entry points. sleef.h declares them only when the translation unit itself is
// compiled for that ISA (-march=native on an AVX-512 machine); otherwise they are declared here, for
// functions compiled for the ISA through target attributes, so a build that assumes no AVX can use them.
// GCC takes the ISA from a pragma, clang from an attribute applied to the declarations.
#if !defined(__AVX512F__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
extern "C" __m512 Sleef_expf16_u10avx512f(__m512);
#pragma clang attribute pop
#else
#pragma GCC push_options
#pragma GCC target("avx512f")
extern "C" __m512 Sleef_expf16_u10avx512f(__m512);
#pragma GCC pop_options
#endif
#endif
#if !defined(__AVX__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
extern "C" __m256 Sleef_expf8_u10avx2(__m256);
#pragma clang attribute pop
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
extern "C" __m256 Sleef_expf8_u10avx2(__m256);
#pragma GCC pop_options
#endif
#endif
#endif

namespace reftrain::cpu {

namespace {

struct ExpKernel {
    void (*run)(const float*, float*, int64_t);
    const char* name;
};

void exp_scalar(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = Sleef_expf_u10(x[i]);
}

#if defined(__x86_64__)
// The last partial vector is loaded with a mask (lanes past n read as 0) and stored with the same
// mask, so it goes through the vector function like every other element.
__attribute__((target("avx512f"))) void exp_avx512(const float* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, Sleef_expf16_u10avx512f(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, mask, Sleef_expf16_u10avx512f(_mm512_maskz_loadu_ps(mask, x + i)));
    }
}

__attribute__((target("avx2,fma"))) void exp_avx2(const float* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, Sleef_expf8_u10avx2(_mm256_loadu_ps(x + i)));
    if (i < n) {
        alignas(32) float pad[8] = {};
        std::copy(x + i, x + n, pad);
        _mm256_store_ps(pad, Sleef_expf8_u10avx2(_mm256_load_ps(pad)));
        std::copy(pad, pad + (n - i), y + i);
    }
}
#endif

ExpKernel choose() {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return {exp_avx512, "SLEEF expf16_u10 (AVX-512)"};
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {exp_avx2, "SLEEF expf8_u10 (AVX2)"};
#endif
    return {exp_scalar, "SLEEF expf_u10 (scalar)"};
}

const ExpKernel& kernel() {
    static const ExpKernel chosen = choose();
    return chosen;
}

}  // namespace

void exp_array(const float* x, float* y, int64_t n) {
    if (n > 0) kernel().run(x, y, n);
}

const char* exp_kernel_name() { return kernel().name; }

}  // namespace reftrain::cpu

// tests/test_round.cpp — cpu::round_to_precision, the CPU emulation of bf16/fp16 storage.
//
// Hand-picked values with known answers: ties to even, the fp16 overflow edge (65504 is the largest
// fp16, 65520 the first value that rounds to inf), fp16 subnormals (2^-24 the smallest, halfway cases
// to even), bf16 overflow near FLT_MAX, NaN (including a signalling payload that naive truncation would
// turn into inf), -0.0, the F32 no-op and the refusals. The answers for 3.4e38 etc. were checked
// against torch 1.13's .to(torch.bfloat16 / float16). The bit-for-bit comparison with PyTorch on a
// million random values is tests/python/test_precision_emulation.py, which drives
// RoundPrecision.RoundsSafetensorsFileNamedByEnvironment below (skipped when its variables are unset).
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <omp.h>

#include "kernels/cpu/ops.h"
#include "kernels/dtype.h"
#include "kernels/random.h"
#include "kernels/safetensors.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

float rounded(float x, DType precision) {
    float value = x;
    cpu::round_to_precision(Tensor(&value, DType::F32, {1}, "x"), precision);
    return value;
}

// Equality of bit patterns, so that -0.0 != 0.0 and the exact value is compared.
void expect_rounds_to(float x, DType precision, float expected) {
    const float got = rounded(x, precision);
    EXPECT_EQ(float_bits(got), float_bits(expected))
        << dtype_name(precision) << ": " << x << " (0x" << std::hex << float_bits(x) << ") rounded to " << got
        << " (0x" << float_bits(got) << "), expected " << expected << " (0x" << float_bits(expected) << ")";
}

TEST(RoundPrecision, Bf16TiesToEven) {
    const float ulp = std::ldexp(1.0f, -7);  // bf16 spacing in [1, 2)
    expect_rounds_to(1.0f + ulp / 2, DType::BF16, 1.0f);                    // tie, 1.0 is even
    expect_rounds_to(1.0f + 3 * ulp / 2, DType::BF16, 1.0f + 2 * ulp);      // tie, 1 + 2ulp is even
    expect_rounds_to(std::nextafter(1.0f + ulp / 2, 2.0f), DType::BF16, 1.0f + ulp);  // just above the tie
    expect_rounds_to(std::nextafter(1.0f + ulp / 2, 0.0f), DType::BF16, 1.0f);        // just below
    expect_rounds_to(-(1.0f + 3 * ulp / 2), DType::BF16, -(1.0f + 2 * ulp));
    expect_rounds_to(1.0f + ulp, DType::BF16, 1.0f + ulp);  // representable: unchanged
    // bf16 keeps fp32's exponent range: its smallest subnormal is 2^-133, ties to even below it.
    expect_rounds_to(std::ldexp(1.0f, -133), DType::BF16, std::ldexp(1.0f, -133));
    expect_rounds_to(std::ldexp(1.0f, -134), DType::BF16, 0.0f);
    expect_rounds_to(3 * std::ldexp(1.0f, -134), DType::BF16, std::ldexp(1.0f, -132));
    expect_rounds_to(std::ldexp(1.0f, -149), DType::BF16, 0.0f);  // fp32's smallest subnormal
}

TEST(RoundPrecision, F16TiesToEven) {
    const float ulp = std::ldexp(1.0f, -10);  // fp16 spacing in [1, 2)
    expect_rounds_to(1.0f + ulp / 2, DType::F16, 1.0f);
    expect_rounds_to(1.0f + 3 * ulp / 2, DType::F16, 1.0f + 2 * ulp);
    expect_rounds_to(std::nextafter(1.0f + ulp / 2, 2.0f), DType::F16, 1.0f + ulp);
    expect_rounds_to(2049.0f, DType::F16, 2048.0f);  // spacing 2 in [2048, 4096): ties to even
    expect_rounds_to(2051.0f, DType::F16, 2052.0f);
    expect_rounds_to(-2051.0f, DType::F16, -2052.0f);
    expect_rounds_to(0.1f, DType::F16, 0.0999755859375f);
}

TEST(RoundPrecision, F16OverflowBoundary) {
    expect_rounds_to(65504.0f, DType::F16, 65504.0f);    // the largest fp16
    expect_rounds_to(65519.0f, DType::F16, 65504.0f);
    expect_rounds_to(65519.99f, DType::F16, 65504.0f);   // below the midpoint to 65536 (= 2^16): rounds down
    expect_rounds_to(std::nextafter(65520.0f, 0.0f), DType::F16, 65504.0f);
    expect_rounds_to(65520.0f, DType::F16, kInf);        // the midpoint: ties to the even "65536" = inf
    expect_rounds_to(-65520.0f, DType::F16, -kInf);
    expect_rounds_to(1e5f, DType::F16, kInf);
    expect_rounds_to(3.4e38f, DType::F16, kInf);
    expect_rounds_to(kInf, DType::F16, kInf);
    expect_rounds_to(-kInf, DType::F16, -kInf);
}

TEST(RoundPrecision, F16Subnormals) {
    const float tiny = std::ldexp(1.0f, -24);  // the smallest fp16 subnormal, 5.96e-8
    expect_rounds_to(tiny, DType::F16, tiny);
    expect_rounds_to(tiny / 2, DType::F16, 0.0f);                        // tie between 0 and 2^-24: 0 is even
    expect_rounds_to(std::nextafter(tiny / 2, 1.0f), DType::F16, tiny);  // just above the tie
    expect_rounds_to(3 * tiny / 2, DType::F16, 2 * tiny);                // tie between 1 and 2 units: 2
    expect_rounds_to(5 * tiny / 2, DType::F16, 2 * tiny);                // tie between 2 and 3 units: 2
    expect_rounds_to(1023 * tiny, DType::F16, 1023 * tiny);              // the largest subnormal
    expect_rounds_to(1023.5f * tiny, DType::F16, std::ldexp(1.0f, -14)); // tie to the smallest normal (even)
    expect_rounds_to(std::ldexp(1.0f, -14), DType::F16, std::ldexp(1.0f, -14));
    expect_rounds_to(1e-8f, DType::F16, 0.0f);
    expect_rounds_to(-tiny / 4, DType::F16, -0.0f);  // underflow keeps the sign
    expect_rounds_to(-1.4e-45f, DType::F16, -0.0f);  // fp32 subnormal input
}

TEST(RoundPrecision, Bf16OverflowNearFltMax) {
    const float bf16_max = bits_float(0x7f7f0000u);  // 3.3895314e38
    expect_rounds_to(bf16_max, DType::BF16, bf16_max);
    expect_rounds_to(bits_float(0x7f7f7fffu), DType::BF16, bf16_max);  // just below the midpoint to 2^128
    expect_rounds_to(bits_float(0x7f7f8000u), DType::BF16, kInf);      // the midpoint: ties to even = inf
    // torch 1.13: torch.tensor(3.4e38).to(torch.bfloat16) is inf, as is FLT_MAX.
    expect_rounds_to(3.4e38f, DType::BF16, kInf);
    expect_rounds_to(FLT_MAX, DType::BF16, kInf);
    expect_rounds_to(-FLT_MAX, DType::BF16, -kInf);
    expect_rounds_to(kInf, DType::BF16, kInf);
}

TEST(RoundPrecision, NanStaysNanAndNegativeZeroKeepsItsSign) {
    const float nans[] = {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                          bits_float(0x7f800001u),   // signalling, payload only in the low bits: not inf
                          bits_float(0xff800001u), bits_float(0x7fffffffu)};
    for (DType precision : {DType::BF16, DType::F16}) {
        for (float nan : nans) {
            EXPECT_TRUE(std::isnan(rounded(nan, precision)))
                << dtype_name(precision) << ": NaN 0x" << std::hex << float_bits(nan) << " became "
                << rounded(nan, precision);
        }
        expect_rounds_to(-0.0f, precision, -0.0f);
        expect_rounds_to(0.0f, precision, 0.0f);
    }
}

TEST(RoundPrecision, F32IsANoOpBitForBit) {
    std::vector<float> values = {1.0f + std::ldexp(1.0f, -20), 65520.0f, 1e-30f, -0.0f, bits_float(0x7f800001u),
                                 FLT_MAX, 1.4e-45f};
    const std::vector<float> before = values;
    cpu::round_to_precision(Tensor(values.data(), DType::F32, {static_cast<int64_t>(values.size())}, "x"), DType::F32);
    for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(float_bits(values[i]), float_bits(before[i])) << i;
}

TEST(RoundPrecision, RefusesWrongDtypes) {
    double d = 1.0;
    testing::expect_error([&] { cpu::round_to_precision(Tensor(&d, DType::F64, {1}, "acts.x"), DType::BF16); },
                          {"round_to_precision", "acts.x", "F64", "expected F32"});
    float f = 1.0f;
    for (DType bad : {DType::F64, DType::I32, DType::U8}) {
        testing::expect_error([&] { cpu::round_to_precision(Tensor(&f, DType::F32, {1}, "acts.y"), bad); },
                              {"round_to_precision", "precision must be F32, BF16 or F16", dtype_name(bad), "acts.y"});
    }
}

// Every element of a long tensor, rounded by the parallel loop, equals the scalar conversion of
// kernels/dtype.h (the threads split the work without changing any result).
TEST(RoundPrecision, ParallelLoopEqualsScalarConversion) {
    const int64_t n = 100003;
    std::vector<float> input(n);
    Rng rng(11);
    for (int64_t i = 0; i < n; ++i) {
        input[i] = static_cast<float>(rng.normal() * std::ldexp(1.0, static_cast<int>(i % 60) - 30));
    }
    const int threads = omp_get_max_threads();
    omp_set_num_threads(4);
    for (DType precision : {DType::BF16, DType::F16}) {
        std::vector<float> x = input;
        cpu::round_to_precision(Tensor(x.data(), DType::F32, {n}, "x"), precision);
        int64_t mismatches = 0;
        for (int64_t i = 0; i < n; ++i) {
            const float expected = precision == DType::BF16 ? bf16_to_float(float_to_bf16(input[i]))
                                                            : f16_to_float(float_to_f16(input[i]));
            mismatches += float_bits(x[i]) != float_bits(expected);
        }
        EXPECT_EQ(mismatches, 0) << dtype_name(precision);
    }
    omp_set_num_threads(threads);
}

// Driven by tests/python/test_precision_emulation.py: reads the F32 tensor "x" from the safetensors
// file $REFTRAIN_ROUND_IN and writes "bf16" and "f16" (x rounded through each, stored as F32) to
// $REFTRAIN_ROUND_OUT. Without those variables there is nothing to do.
TEST(RoundPrecision, RoundsSafetensorsFileNamedByEnvironment) {
    const char* in = std::getenv("REFTRAIN_ROUND_IN");
    const char* out = std::getenv("REFTRAIN_ROUND_OUT");
    if (in == nullptr || out == nullptr) GTEST_SKIP() << "REFTRAIN_ROUND_IN / REFTRAIN_ROUND_OUT not set";
    const SafetensorsFile file = SafetensorsFile::open(in);
    const SafetensorsEntry& entry = file.entry("x");
    ASSERT_EQ(entry.dtype, DType::F32) << in << ": tensor 'x' must be F32";
    std::vector<float> bf16(static_cast<size_t>(entry.numel()));
    file.read_into("x", Tensor(bf16.data(), DType::F32, entry.shape, "x"));
    std::vector<float> f16 = bf16;
    const Tensor bf16_tensor(bf16.data(), DType::F32, entry.shape, "bf16");
    const Tensor f16_tensor(f16.data(), DType::F32, entry.shape, "f16");
    cpu::round_to_precision(bf16_tensor, DType::BF16);
    cpu::round_to_precision(f16_tensor, DType::F16);
    save_safetensors(out, {bf16_tensor, f16_tensor});
}

}  // namespace
}  // namespace reftrain

// tests/test_dtype.cpp — the fp32 <-> bf16/fp16 conversions of kernels/dtype.h.
//
// Hand-picked values with known bit patterns (rounding ties, the fp16 overflow edge, subnormals,
// NaN and infinities), exhaustive round trips over all 65536 patterns, and a sweep over fp32 bit
// patterns against an independent reference: pick the nearer of the two neighbouring representable
// values in fp64, ties to the even pattern. Bit-exact agreement with PyTorch is a Python test.
#include <cmath>
#include <cstdint>
#include <limits>

#include <gtest/gtest.h>

#include "kernels/dtype.h"

namespace reftrain {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(DtypeTest, NamesSizesAndParsing) {
    const DType all[] = {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::I64, DType::U8};
    const size_t sizes[] = {4, 8, 2, 2, 4, 8, 1};
    for (int i = 0; i < 7; ++i) {
        EXPECT_EQ(dtype_size(all[i]), sizes[i]) << dtype_name(all[i]);
        DType parsed = DType::U8;
        ASSERT_TRUE(dtype_from_name(dtype_name(all[i]), &parsed));
        EXPECT_EQ(parsed, all[i]);
    }
    DType unused;
    EXPECT_FALSE(dtype_from_name("F8_E4M3", &unused));
    EXPECT_FALSE(dtype_from_name("f32", &unused));  // safetensors names are upper case
    EXPECT_TRUE(dtype_is_float(DType::BF16));
    EXPECT_FALSE(dtype_is_float(DType::I64));
}

TEST(DtypeTest, Bf16KnownBitPatterns) {
    EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
    EXPECT_EQ(float_to_bf16(-2.5f), 0xc020);
    EXPECT_EQ(float_to_bf16(0.0f), 0x0000);
    EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
    EXPECT_EQ(float_to_bf16(kInf), 0x7f80);
    EXPECT_EQ(float_to_bf16(-kInf), 0xff80);
    // Ties: 1 + 2^-8 lies halfway between 0x3f80 and 0x3f81 -> the even one, 0x3f80;
    // 1 + 3*2^-8 lies halfway between 0x3f81 and 0x3f82 -> 0x3f82.
    EXPECT_EQ(float_to_bf16(bits_float(0x3f808000u)), 0x3f80);
    EXPECT_EQ(float_to_bf16(bits_float(0x3f818000u)), 0x3f82);
    // Just above a tie rounds up, just below rounds down.
    EXPECT_EQ(float_to_bf16(bits_float(0x3f808001u)), 0x3f81);
    EXPECT_EQ(float_to_bf16(bits_float(0x3f807fffu)), 0x3f80);
    // FLT_MAX is past the last bf16 value plus half an ulp: rounds to inf.
    EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);
    EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
    EXPECT_EQ(bf16_to_float(0xc020), -2.5f);
    EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(kNaN))));
    EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(-kNaN))));
    // A NaN whose payload sits only in the low 16 bits must not truncate to inf.
    EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(bits_float(0x7f800001u)))));
}

TEST(DtypeTest, F16KnownBitPatterns) {
    EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
    EXPECT_EQ(float_to_f16(-2.5f), 0xc100);
    EXPECT_EQ(float_to_f16(0.0f), 0x0000);
    EXPECT_EQ(float_to_f16(-0.0f), 0x8000);
    EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);   // largest finite fp16
    EXPECT_EQ(float_to_f16(65519.99f), 0x7bff);  // just under the rounding edge
    EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);   // the edge itself rounds (to even) to inf
    EXPECT_EQ(float_to_f16(-65520.0f), 0xfc00);
    EXPECT_EQ(float_to_f16(kInf), 0x7c00);
    EXPECT_EQ(float_to_f16(-kInf), 0xfc00);
    EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
    EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
    EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24: even (0)
    EXPECT_EQ(float_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // tie between 1 and 2 ulps: even (2)
    EXPECT_EQ(float_to_f16(-std::ldexp(3.0f, -25)), 0x8002);
    EXPECT_EQ(float_to_f16(1e-8f), 0x0000);                         // below half the smallest subnormal
    EXPECT_EQ(float_to_f16(1e-7f), 0x0002);                         // 1e-7 / 2^-24 = 1.68 -> 2
    EXPECT_EQ(float_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // normal tie -> even
    EXPECT_EQ(float_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);
    EXPECT_EQ(f16_to_float(0x7bff), 65504.0f);
    EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.0f, -24));
    EXPECT_EQ(f16_to_float(0xc100), -2.5f);
    EXPECT_EQ(f16_to_float(0xfc00), -kInf);
    EXPECT_TRUE(std::signbit(f16_to_float(0x8000)));
    EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(kNaN))));
    EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(bits_float(0x7f800001u)))));
}

// Decoding every pattern against the IEEE formula, then encoding it back to the same pattern.
TEST(DtypeTest, F16ExhaustiveDecodeAndRoundTrip) {
    int nan_count = 0;
    for (uint32_t h = 0; h < 65536; ++h) {
        const uint16_t bits = static_cast<uint16_t>(h);
        const int sign = bits >> 15, exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
        const float value = f16_to_float(bits);
        if (exponent == 0x1f && mantissa != 0) {
            ASSERT_TRUE(std::isnan(value)) << std::hex << h;
            ++nan_count;
            continue;
        }
        double expected = exponent == 0x1f ? INFINITY
                          : exponent == 0  ? std::ldexp(static_cast<double>(mantissa), -24)
                                           : std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
        if (sign) expected = -expected;
        ASSERT_EQ(static_cast<double>(value), expected) << std::hex << h;
        ASSERT_EQ(float_to_f16(value), bits) << std::hex << h;
        ASSERT_EQ(float_bits(f16_to_float(float_to_f16(value))), float_bits(value)) << std::hex << h;
    }
    EXPECT_EQ(nan_count, 2 * 1023);
}

TEST(DtypeTest, Bf16ExhaustiveRoundTrip) {
    int nan_count = 0;
    for (uint32_t h = 0; h < 65536; ++h) {
        const uint16_t bits = static_cast<uint16_t>(h);
        const float value = bf16_to_float(bits);
        if (std::isnan(value)) {
            ++nan_count;
            ASSERT_TRUE(std::isnan(bf16_to_float(float_to_bf16(value)))) << std::hex << h;
            continue;
        }
        ASSERT_EQ(float_to_bf16(value), bits) << std::hex << h;
        ASSERT_EQ(float_bits(bf16_to_float(float_to_bf16(value))), float_bits(value)) << std::hex << h;
    }
    EXPECT_EQ(nan_count, 2 * 127);
}

// Reference rounding: the positive patterns 0..last_finite are increasing in value; find the two
// neighbours of x and take the nearer, ties to the even pattern. `overflow_value` is where the
// pattern after last_finite would sit if the exponent did not run out (IEEE rounds to inf there).
template <class Decode>
uint16_t reference_round(double x, uint16_t last_finite, double overflow_value, Decode decode) {
    auto value_of = [&](uint32_t p) {
        return p > last_finite ? overflow_value : static_cast<double>(decode(p));
    };
    uint32_t lo = 0, hi = last_finite + 1u;  // invariant: value_of(lo) <= x < value_of(hi)
    if (x >= overflow_value) return static_cast<uint16_t>(last_finite + 1u);
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        (value_of(mid) <= x ? lo : hi) = mid;
    }
    double below = x - value_of(lo), above = value_of(hi) - x;
    if (below < above) return static_cast<uint16_t>(lo);
    if (above < below) return static_cast<uint16_t>(hi);
    return static_cast<uint16_t>(lo % 2 == 0 ? lo : hi);
}

TEST(DtypeTest, RoundingMatchesNearestEvenReferenceOnFp32Sweep) {
    auto f16 = [](uint32_t p) { return f16_to_float(static_cast<uint16_t>(p)); };
    auto bf16 = [](uint32_t p) { return bf16_to_float(static_cast<uint16_t>(p)); };
    // Every 241st positive finite fp32 pattern, plus each one's negation; 241 is odd so the sweep
    // lands on both even and odd low bits (ties included).
    for (uint64_t u = 0; u < 0x7f800000u; u += 241) {
        const float x = bits_float(static_cast<uint32_t>(u));
        const uint16_t want_f16 = reference_round(x, 0x7bff, 65536.0, f16);
        const uint16_t want_bf16 = reference_round(x, 0x7f7f, std::ldexp(1.0, 128), bf16);
        ASSERT_EQ(float_to_f16(x), want_f16) << "x = " << x << " bits 0x" << std::hex << u;
        ASSERT_EQ(float_to_f16(-x), want_f16 | 0x8000) << "x = " << -x;
        ASSERT_EQ(float_to_bf16(x), want_bf16) << "x = " << x << " bits 0x" << std::hex << u;
        ASSERT_EQ(float_to_bf16(-x), want_bf16 | 0x8000) << "x = " << -x;
    }
}

}  // namespace
}  // namespace reftrain

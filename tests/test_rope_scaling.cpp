// tests/test_rope_scaling.cpp — RoPE scaling (linear, llama3): the inverse frequencies against an fp64
// formula written here and against HF transformers' own float32 numbers, the tables, and the model:
// scaling changes the forward at positions > 0 only where the rule says it should.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/random.h"
#include "model/transformer.h"

namespace reftrain {
namespace {

RopeScaling llama3(double factor, double low, double high, int64_t original) {
    RopeScaling s;
    s.type = RopeScaling::Type::llama3;
    s.factor = factor;
    s.low_freq_factor = low;
    s.high_freq_factor = high;
    s.original_max_position_embeddings = original;
    return s;
}

RopeScaling linear(double factor) {
    RopeScaling s;
    s.type = RopeScaling::Type::linear;
    s.factor = factor;
    return s;
}

// The rules of kernels/rope_scaling.h in fp64, written from the formulas (Meta's Llama 3.1 reference
// apply_scaling and kaiokendev's interpolation), not from rope.cpp.
enum class Band { kept, blended, divided };
struct Expected {
    double inv_freq;
    Band band;
};
std::vector<Expected> expected_inverse_frequencies(int64_t D, double theta, const RopeScaling& s) {
    std::vector<Expected> out;
    for (int64_t i = 0; i < D / 2; ++i) {
        const double f = std::pow(theta, -static_cast<double>(2 * i) / static_cast<double>(D));
        if (s.type == RopeScaling::Type::none) { out.push_back({f, Band::kept}); continue; }
        if (s.type == RopeScaling::Type::linear) { out.push_back({f / s.factor, Band::divided}); continue; }
        const double L = static_cast<double>(s.original_max_position_embeddings);
        const double wavelength = 2 * M_PI / f;
        if (wavelength < L / s.high_freq_factor) {
            out.push_back({f, Band::kept});
        } else if (wavelength > L / s.low_freq_factor) {
            out.push_back({f / s.factor, Band::divided});
        } else {
            const double smooth = (L / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
            out.push_back({(1 - smooth) * f / s.factor + smooth * f, Band::blended});
        }
    }
    return out;
}

// Worst relative difference, and how many frequencies fell in each band (kept, blended, divided), so
// that a case that never reaches the blended band cannot pass for a test of it.
void expect_matches_fp64(int64_t D, double theta, const RopeScaling& s, std::array<int, 3> min_per_band) {
    const std::vector<float> got = cpu::rope_inverse_frequencies(D, theta, s);
    const std::vector<Expected> want = expected_inverse_frequencies(D, theta, s);
    ASSERT_EQ(got.size(), want.size());
    std::array<int, 3> count{};
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
        worst = std::max(worst, std::abs(got[i] - want[i].inv_freq) / want[i].inv_freq);
        ++count[static_cast<size_t>(want[i].band)];
    }
    // A float32 chain of ~8 operations: a few float32 ulps (6e-8 each). Measured <= 4.1e-7.
    EXPECT_LT(worst, 1e-6) << "D " << D << ", theta " << theta;
    for (size_t b = 0; b < 3; ++b) EXPECT_GE(count[b], min_per_band[b]) << "band " << b << ", D " << D;
}

TEST(RopeScaling, InverseFrequenciesMatchTheFp64Formula) {
    // Llama 3.2 1B / 3B and 3.1 8B: head_dim 64 and 128, theta 500000, L 8192, factors 32 and 8.
    expect_matches_fp64(64, 500000.0, llama3(32.0, 1.0, 4.0, 8192), {15, 3, 14});
    expect_matches_fp64(128, 500000.0, llama3(8.0, 1.0, 4.0, 8192), {29, 6, 29});
    // A small context so all three bands hold several frequencies; non-integer factors.
    expect_matches_fp64(48, 10000.0, llama3(5.5, 1.5, 7.25, 200), {4, 4, 16});
    expect_matches_fp64(128, 10000.0, linear(4.0), {0, 0, 64});
    expect_matches_fp64(20, 1e6, linear(2.5), {0, 0, 10});
    expect_matches_fp64(64, 500000.0, RopeScaling{}, {32, 0, 0});
}

// HF transformers 5.24's _compute_llama3_parameters / _compute_linear_scaling_rope_parameters on the
// CPU, as float32 bit patterns (printed with struct.pack('<f')): Llama 3.2 1B (head_dim 64, theta
// 500000, factor 32, low 1, high 4, L 8192), vicuna-7b-v1.5-16k (head_dim 128, theta 10000, linear
// factor 4), and a llama3 case chosen because three plausible rewrites of the formula each change at
// least one bit of it (head_dim 64, theta 500000, factor 8, L 18075): 2 pi / inv_freq as one division
// instead of reciprocal * 2 pi, L / wavelength likewise, and a fused multiply-add in the blend.
TEST(RopeScaling, InverseFrequenciesAreHfTransformersBitForBit) {
    const uint32_t llama_3_2_1b[] = {
        0x3f800000, 0x3f29e1c6, 0x3ee177bc, 0x3e959ee3, 0x3e4693b0, 0x3e03c6a0, 0x3daee4ad, 0x3d681e67,
        0x3d1a08c8, 0x3ccc6f49, 0x3c87a9c3, 0x3c340d6d, 0x3beef74f, 0x3b9e9402, 0x3b527720, 0x3aa9279b,
        0x39e13620, 0x38cb98f7, 0x37a3418d, 0x3758ac81, 0x370fc8f8, 0x36bed4f4, 0x367d45c3, 0x3628126b,
        0x35df10c4, 0x359406cb, 0x35447610, 0x35025f34, 0x34ad07a7, 0x3465a54d, 0x341864a7, 0x33ca41b0};
    const uint32_t vicuna_16k[] = {
        0x3e800000, 0x3e5dafd7, 0x3e3ff911, 0x3e263de0, 0x3e0ff59a, 0x3df953cf, 0x3dd7e89b, 0x3dbaf81b,
        0x3da1e89b, 0x3d8c3504, 0x3d72d423, 0x3d5247ed, 0x3d361887, 0x3d1db040, 0x3d088d77, 0x3cec7fd6,
        0x3ccccccd, 0x3cb15978, 0x3c99940d, 0x3c84fe4d, 0x3c6655c2, 0x3c47763f, 0x3c2cba15, 0x3c159348,
        0x3c0186e3, 0x3be054d2, 0x3bc2434f, 0x3ba8398b, 0x3b91ad39, 0x3b7c4d33, 0x3b5a7bf2, 0x3b3d3311,
        0x3b23d70a, 0x3b0de12d, 0x3af5b9b0, 0x3ad4ca15, 0x3ab8449c, 0x3a9f91cc, 0x3a8a2e77, 0x3a6f520e,
        0x3a4f3e38, 0x3a33770f, 0x3a1b690d, 0x3a06946f, 0x39e91528, 0x39c9d75c, 0x39aec98e, 0x39975c0e,
        0x3983126f, 0x396301e2, 0x3944948c, 0x392a3b44, 0x39136a16, 0x38ff4fac, 0x38dd1725, 0x38bf74d7,
        0x38a5cb60, 0x388f9272, 0x3878a815, 0x385753e4, 0x383a7753, 0x38217916, 0x380bd472, 0x37f22ce2};
    const uint32_t llama3_l18075[] = {
        0x3f800000, 0x3f29e1c6, 0x3ee177bc, 0x3e959ee3, 0x3e4693b0, 0x3e03c6a0, 0x3daee4ad, 0x3d681e67,
        0x3d1a08c8, 0x3ccc6f49, 0x3c87a9c3, 0x3c340d6d, 0x3beef74f, 0x3b9e9402, 0x3b527720, 0x3b0baa41,
        0x3ab95d21, 0x3a18b71a, 0x396863db, 0x389c14bf, 0x380fc8f8, 0x37bed4f4, 0x377d45c3, 0x3728126b,
        0x36df10c4, 0x369406cb, 0x36447610, 0x36025f34, 0x35ad07a7, 0x3565a54d, 0x351864a7, 0x34ca41b0};
    auto expect_bits = [](const std::vector<float>& got, const uint32_t* want, size_t n, const char* label) {
        ASSERT_EQ(got.size(), n) << label;
        int differing = 0;
        for (size_t i = 0; i < n; ++i) {
            uint32_t bits;
            std::memcpy(&bits, &got[i], sizeof bits);
            if (bits != want[i]) {
                ++differing;
                ADD_FAILURE() << label << " inv_freq[" << i << "] = " << got[i] << " (0x" << std::hex << bits
                              << "), HF has 0x" << want[i] << std::dec;
            }
        }
        EXPECT_EQ(differing, 0) << label;
    };
    expect_bits(cpu::rope_inverse_frequencies(64, 500000.0, llama3(32.0, 1.0, 4.0, 8192)), llama_3_2_1b, 32,
                "Llama 3.2 1B");
    expect_bits(cpu::rope_inverse_frequencies(128, 10000.0, linear(4.0)), vicuna_16k, 64, "vicuna 16k linear");
    expect_bits(cpu::rope_inverse_frequencies(64, 500000.0, llama3(8.0, 1.0, 4.0, 18075)), llama3_l18075, 32,
                "llama3 L 18075");
}

TEST(RopeScaling, LinearFactorOneIsPlainRopeBitwise) {
    const int64_t T = 300, D = 24;
    std::vector<float> cos_plain(T * D), sin_plain(T * D), cos_linear(T * D), sin_linear(T * D);
    cpu::rope_tables(Tensor(cos_plain.data(), DType::F32, {T, D}, "cos"), Tensor(sin_plain.data(), DType::F32, {T, D}, "sin"),
                     1e6);
    cpu::rope_tables(Tensor(cos_linear.data(), DType::F32, {T, D}, "cos"),
                     Tensor(sin_linear.data(), DType::F32, {T, D}, "sin"), 1e6, linear(1.0));
    EXPECT_EQ(cos_plain, cos_linear);
    EXPECT_EQ(sin_plain, sin_linear);
    // And a factor other than 1 changes every row but row 0 (angle 0 at position 0).
    cpu::rope_tables(Tensor(cos_linear.data(), DType::F32, {T, D}, "cos"),
                     Tensor(sin_linear.data(), DType::F32, {T, D}, "sin"), 1e6, linear(2.0));
    for (int64_t t = 0; t < T; ++t) {
        const bool same = std::equal(cos_plain.begin() + t * D, cos_plain.begin() + (t + 1) * D, cos_linear.begin() + t * D);
        EXPECT_EQ(same, t == 0) << "row " << t;
    }
}

// The table rows are cos/sin of float32(t) * inv_freq, with the scaled frequencies.
TEST(RopeScaling, TablesUseTheScaledFrequencies) {
    const int64_t T = 5000, D = 16;
    const RopeScaling s = llama3(8.0, 1.0, 4.0, 64);
    std::vector<double> cos(T * D), sin(T * D);
    cpu::rope_tables(Tensor(cos.data(), DType::F64, {T, D}, "cos"), Tensor(sin.data(), DType::F64, {T, D}, "sin"), 10000.0, s);
    const std::vector<float> inv_freq = cpu::rope_inverse_frequencies(D, 10000.0, s);
    for (int64_t t : {0, 1, 17, 4999}) {
        for (int64_t i = 0; i < D / 2; ++i) {
            const double angle = static_cast<double>(static_cast<float>(t) * inv_freq[static_cast<size_t>(i)]);
            EXPECT_EQ(cos[t * D + i], static_cast<double>(static_cast<float>(std::cos(angle)))) << t << ", " << i;
            EXPECT_EQ(cos[t * D + i + D / 2], cos[t * D + i]);
            EXPECT_EQ(sin[t * D + i], static_cast<double>(static_cast<float>(std::sin(angle)))) << t << ", " << i;
        }
    }
}

// ---- the model ------------------------------------------------------------------------------------

ModelConfig long_context_config() {
    ModelConfig c;
    c.vocab_size = 31;
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = 16;  // wavelengths 6.3, 20, 63, 199, ... with theta 10000
    c.max_position_embeddings = 48;
    c.initializer_range = 0.3;
    return c;
}

// Per-position max |logit difference| / max |logit| between two models with the same weights.
std::vector<double> logit_differences(const ModelConfig& a, const ModelConfig& b, DType dtype) {
    const int64_t T = a.max_position_embeddings, V = a.vocab_size;
    Transformer first(a, 1, T, dtype), second(b, 1, T, dtype);
    first.init_weights(5);
    std::memcpy(second.params().data(), first.params().data(), first.params().nbytes());
    std::vector<int64_t> ids(T);
    Rng rng(6);
    for (auto& id : ids) id = static_cast<int64_t>(rng.below(V));
    first.forward(Tensor(ids.data(), DType::I64, {1, T}, "input_ids"), Tensor());
    second.forward(Tensor(ids.data(), DType::I64, {1, T}, "input_ids"), Tensor());
    std::vector<double> diff(T);
    dispatch_float(dtype, "logit_differences", [&](auto tag) {
        using F = decltype(tag);
        const F* x = first.acts().get("logits").template ptr<F>();
        const F* y = second.acts().get("logits").template ptr<F>();
        for (int64_t t = 0; t < T; ++t) {
            double d = 0, scale = 0;
            for (int64_t v = 0; v < V; ++v) {
                d = std::max(d, std::abs(static_cast<double>(x[t * V + v]) - static_cast<double>(y[t * V + v])));
                scale = std::max(scale, std::abs(static_cast<double>(x[t * V + v])));
            }
            diff[static_cast<size_t>(t)] = d / scale;
        }
    });
    return diff;
}

TEST(RopeScaling, ForwardWithLlama3ScalingDiffersFromPlainRopeAfterPositionZero) {
    const ModelConfig plain = long_context_config();
    ModelConfig scaled = plain;
    scaled.rope_scaling = llama3(8.0, 1.0, 4.0, 64);
    const std::vector<double> diff = logit_differences(plain, scaled, DType::F64);
    // Position 0 has angle 0 under any scaling, and causal attention sees only position 0 there.
    EXPECT_EQ(diff[0], 0.0);
    double late = 0.0;
    for (size_t t = 24; t < diff.size(); ++t) late = std::max(late, diff[t]);
    // Measured 0.36 at the late positions: the slow frequencies turn 8x slower.
    EXPECT_GT(late, 1e-2) << "llama3 scaling did not change the logits at positions 24..47";
}

TEST(RopeScaling, Llama3LeavesEveryShortWavelengthAlone) {
    // With L / high_freq_factor above every wavelength, llama3 keeps every frequency: the model is
    // plain RoPE, bitwise.
    const ModelConfig plain = long_context_config();
    ModelConfig scaled = plain;
    scaled.rope_scaling = llama3(8.0, 1.0, 4.0, int64_t{1} << 40);
    for (double d : logit_differences(plain, scaled, DType::F32)) EXPECT_EQ(d, 0.0);
}

TEST(RopeScaling, LinearFactorRescalesPositions) {
    // Linear scaling by 2 is plain RoPE at half the position: table row 2t is the plain row t.
    const int64_t T = 40, D = 16;
    std::vector<double> cos_plain(T * D), sin_plain(T * D), cos_linear(T * D), sin_linear(T * D);
    cpu::rope_tables(Tensor(cos_plain.data(), DType::F64, {T, D}, "cos"), Tensor(sin_plain.data(), DType::F64, {T, D}, "sin"),
                     10000.0);
    cpu::rope_tables(Tensor(cos_linear.data(), DType::F64, {T, D}, "cos"),
                     Tensor(sin_linear.data(), DType::F64, {T, D}, "sin"), 10000.0, linear(2.0));
    double worst = 0.0;
    for (int64_t t = 0; t < T / 2; ++t) {
        for (int64_t i = 0; i < D; ++i) {
            worst = std::max(worst, std::abs(cos_linear[2 * t * D + i] - cos_plain[t * D + i]));
            worst = std::max(worst, std::abs(sin_linear[2 * t * D + i] - sin_plain[t * D + i]));
        }
    }
    // float32 angles: (2t) * (f / 2) and t * f differ by at most an ulp of the angle (< 2e-6 here).
    EXPECT_LT(worst, 2e-6);
}

}  // namespace
}  // namespace reftrain

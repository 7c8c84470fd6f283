// tests/test_ops_gradcheck.cpp — every CPU op's backward against central finite differences in fp64.
//
// Bound: max |analytic - numeric| <= 1e-6 * max |gradient| per input tensor (see gradcheck.h for why).
// Shapes include the awkward ones: T = 1, head_dim not a multiple of 8, GQA and MQA, repeated ids.
// A second group of tests pins behaviour that a gradient check cannot see (layouts, accumulation,
// the zero-supervised-tokens case, error messages).
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <omp.h>

#include "kernels/cpu/ops.h"
#include "tests/gradcheck.h"

namespace reftrain {
namespace {

using testing::Buffer;
using testing::expect_gradients_match;
using testing::weighted_sum;

TEST(OpsGradcheck, Linear) {
    for (auto [N, IC, OC] : {std::tuple{5, 7, 3}, std::tuple{1, 4, 9}}) {
        Rng rng(1);
        Buffer x("x", {N, IC}), w("w", {OC, IC}), y("y", {N, OC}), g("g", {N, OC});
        x.randomize(rng); w.randomize(rng); g.randomize(rng);
        Buffer dx("dx", {N, IC}), dw("dw", {OC, IC});
        cpu::linear_forward(y, x, w);
        cpu::linear_backward(dx, dw, g, x, w);
        expect_gradients_match("linear", {&x, &w}, {&dx, &dw}, [&] {
            cpu::linear_forward(y, x, w);
            return weighted_sum(y, g);
        });
    }
}

TEST(OpsGradcheck, Embedding) {
    const int64_t V = 6, N = 9, C = 5;
    Rng rng(2);
    Buffer table("table", {V, C}), y("y", {N, C}), g("g", {N, C}), dtable("dtable", {V, C});
    table.randomize(rng); g.randomize(rng);
    std::vector<int64_t> ids = {0, 3, 3, 5, 1, 3, 0, 2, 5};  // repeats: the scatter-add must sum them
    Tensor id_view(ids.data(), DType::I64, {N}, "ids");
    cpu::embedding_forward(y, id_view, table);
    cpu::embedding_backward(dtable, g, id_view);
    expect_gradients_match("embedding", {&table}, {&dtable}, [&] {
        cpu::embedding_forward(y, id_view, table);
        return weighted_sum(y, g);
    });
    EXPECT_EQ(dtable.values[4 * C], 0.0) << "id 4 never appears, its row must get no gradient";
}

TEST(OpsGradcheck, RMSNorm) {
    for (auto [N, C] : {std::tuple{4, 7}, std::tuple{1, 10}, std::tuple{6, 32}}) {
        Rng rng(3);
        Buffer x("x", {N, C}), w("w", {C}), y("y", {N, C}), r("rstd", {N}), g("g", {N, C});
        x.randomize(rng); w.randomize(rng); g.randomize(rng);
        Buffer dx("dx", {N, C}), dw("dw", {C});
        cpu::rmsnorm_forward(y, r, x, w, 1e-6);
        cpu::rmsnorm_backward(dx, dw, g, x, w, r);
        expect_gradients_match("rmsnorm", {&x, &w}, {&dx, &dw}, [&] {
            cpu::rmsnorm_forward(y, r, x, w, 1e-6);
            return weighted_sum(y, g);
        });
    }
}

TEST(OpsGradcheck, RoPE) {
    for (auto [B, T, H, D] : {std::tuple{2, 5, 3, 6}, std::tuple{1, 1, 2, 10}, std::tuple{2, 4, 1, 32}}) {
        Rng rng(4);
        Buffer cos("cos", {T + 2, D}), sin("sin", {T + 2, D});  // table longer than T, as in the model
        cpu::rope_tables(cos, sin, 10000.0);
        Buffer x("x", {B, T, H, D}), y("y", {B, T, H, D}), g("g", {B, T, H, D}), dx("dx", {B, T, H, D});
        x.randomize(rng); g.randomize(rng);
        cpu::rope_forward(y, x, cos, sin);
        cpu::rope_backward(dx, g, cos, sin);
        expect_gradients_match("rope", {&x}, {&dx}, [&] {
            cpu::rope_forward(y, x, cos, sin);
            return weighted_sum(y, g);
        });
    }
}

TEST(OpsGradcheck, AttentionGQA) {
    // (B, T, Hq, Hkv, D): GQA, MQA, MHA with odd head_dim, and T = 1.
    for (auto [B, T, Hq, Hkv, D] : {std::tuple{2, 5, 4, 2, 6}, std::tuple{1, 6, 6, 1, 5},
                                    std::tuple{2, 4, 3, 3, 10}, std::tuple{2, 1, 4, 2, 12}}) {
        Rng rng(5);
        Buffer q("q", {B, T, Hq, D}), k("k", {B, T, Hkv, D}), v("v", {B, T, Hkv, D});
        Buffer y("y", {B, T, Hq, D}), p("probs", {B, Hq, T, T}), g("g", {B, T, Hq, D});
        q.randomize(rng); k.randomize(rng); v.randomize(rng); g.randomize(rng);
        Buffer dq("dq", {B, T, Hq, D}), dk("dk", {B, T, Hkv, D}), dv("dv", {B, T, Hkv, D});
        cpu::attention_forward(y, p, q, k, v);
        cpu::attention_backward(dq, dk, dv, g, p, q, k, v);
        auto loss = [&] {
            cpu::attention_forward(y, p, q, k, v);
            return weighted_sum(y, g);
        };
        if (T == 1) {
            // One position attends only to itself: out = v, and q, k get exactly zero gradient.
            expect_gradients_match("attention T=1", {&v}, {&dv}, loss);
            for (double d : dq.values) EXPECT_EQ(d, 0.0);
            for (double d : dk.values) EXPECT_EQ(d, 0.0);
        } else {
            expect_gradients_match("attention", {&q, &k, &v}, {&dq, &dk, &dv}, loss);
        }
    }
}

TEST(OpsGradcheck, SwiGLU) {
    const int64_t N = 3, F = 5;
    Rng rng(6);
    Buffer gate("gate", {N, F}), up("up", {N, F}), y("y", {N, F}), g("g", {N, F});
    gate.randomize(rng, 2.0); up.randomize(rng); g.randomize(rng);
    Buffer dgate("dgate", {N, F}), dup("dup", {N, F});
    cpu::swiglu_forward(y, gate, up);
    cpu::swiglu_backward(dgate, dup, g, gate, up);
    expect_gradients_match("swiglu", {&gate, &up}, {&dgate, &dup}, [&] {
        cpu::swiglu_forward(y, gate, up);
        return weighted_sum(y, g);
    });
}

TEST(OpsGradcheck, Residual) {
    Rng rng(7);
    Buffer a("a", {3, 4}), b("b", {3, 4}), y("y", {3, 4}), g("g", {3, 4}), da("da", {3, 4}), db("db", {3, 4});
    a.randomize(rng); b.randomize(rng); g.randomize(rng);
    cpu::residual_forward(y, a, b);
    cpu::residual_backward(da, db, g);
    expect_gradients_match("residual", {&a, &b}, {&da, &db}, [&] {
        cpu::residual_forward(y, a, b);
        return weighted_sum(y, g);
    });
}

TEST(OpsGradcheck, CrossEntropyWithIgnoreIndex) {
    const int64_t N = 6, V = 5;
    Rng rng(8);
    Buffer z("logits", {N, V}, 0.0), lse("lse", {N}), dz("dlogits", {N, V});
    z.randomize(rng, 3.0);
    std::vector<int64_t> targets = {2, cpu::kIgnoreIndex, 0, 4, cpu::kIgnoreIndex, 1};
    Tensor y(targets.data(), DType::I64, {N}, "targets");
    const double dloss = 0.7;
    cpu::CrossEntropyResult r = cpu::cross_entropy_forward(lse, z, y);
    EXPECT_EQ(r.supervised_tokens, 4);
    EXPECT_FALSE(r.no_supervised_tokens);
    cpu::cross_entropy_backward(dz, z, lse, y, dloss);
    expect_gradients_match("cross_entropy", {&z}, {&dz},
                           [&] { return dloss * cpu::cross_entropy_forward(lse, z, y).loss; });
    for (int64_t v = 0; v < V; ++v) {
        EXPECT_EQ(dz.values[1 * V + v], 0.0) << "ignored row 1 must get no gradient";
        EXPECT_EQ(dz.values[4 * V + v], 0.0) << "ignored row 4 must get no gradient";
    }
}

TEST(OpsGradcheck, TheCheckCatchesAGradientOffByOnePercent) {
    // The harness must be able to fail: a backward that is 1% too large, or has one wrong element.
    Rng rng(12);
    Buffer x("x", {4, 5}), w("w", {3, 5}), y("y", {4, 3}), g("g", {4, 3}), dx("dx", {4, 5}), dw("dw", {3, 5});
    x.randomize(rng); w.randomize(rng); g.randomize(rng);
    cpu::linear_backward(dx, dw, g, x, w);
    auto loss = [&] {
        cpu::linear_forward(y, x, w);
        return weighted_sum(y, g);
    };
    Buffer scaled(dx);
    for (double& v : scaled.values) v *= 1.01;
    EXPECT_NONFATAL_FAILURE(expect_gradients_match("scaled", {&x}, {&scaled}, loss), "off at element");
    Buffer one_wrong(dw);
    one_wrong.values[7] = -one_wrong.values[7];
    EXPECT_NONFATAL_FAILURE(expect_gradients_match("sign", {&w}, {&one_wrong}, loss), "off at element 7");
}

// ---- behaviour a gradient check cannot see --------------------------------------------------------------

TEST(OpsBehaviour, CrossEntropyZeroSupervisedTokensIsZeroNotNaN) {
    Buffer z("logits", {3, 4}, 1.5), lse("lse", {3}), dz("dlogits", {3, 4});
    std::vector<int64_t> targets(3, cpu::kIgnoreIndex);
    Tensor y(targets.data(), DType::I64, {3}, "targets");
    cpu::CrossEntropyResult r = cpu::cross_entropy_forward(lse, z, y);
    EXPECT_EQ(r.loss, 0.0);
    EXPECT_TRUE(r.no_supervised_tokens);
    EXPECT_EQ(r.supervised_tokens, 0);
    cpu::cross_entropy_backward(dz, z, lse, y, 1.0);
    for (double d : dz.values) EXPECT_EQ(d, 0.0);
}

TEST(OpsBehaviour, CrossEntropyUniformLogitsGiveLogV) {
    Buffer z("logits", {2, 7}, 0.25), lse("lse", {2});
    std::vector<int64_t> targets = {3, 6};
    Tensor y(targets.data(), DType::I64, {2}, "targets");
    EXPECT_NEAR(cpu::cross_entropy_forward(lse, z, y).loss, std::log(7.0), 1e-15);
}

TEST(OpsBehaviour, CrossEntropyRejectsOutOfRangeTarget) {
    Buffer z("logits", {2, 4}), lse("lse", {2});
    std::vector<int64_t> targets = {1, 4};
    Tensor y(targets.data(), DType::I64, {2}, "targets");
    try {
        cpu::cross_entropy_forward(lse, z, y);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("target 4 at row 1"), std::string::npos) << e.what();
    }
}

TEST(OpsBehaviour, EmbeddingRejectsOutOfRangeId) {
    Buffer table("table", {4, 2}), y("y", {2, 2});
    std::vector<int64_t> ids = {1, 7};
    Tensor id_view(ids.data(), DType::I64, {2}, "ids");
    try {
        cpu::embedding_forward(y, id_view, table);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("token id 7 at position 1"), std::string::npos) << e.what();
    }
}

TEST(OpsBehaviour, RoPEUsesRotateHalfLayout) {
    // D = 4, h = 2: dimension 0 pairs with dimension 2 (HF layout), not with dimension 1.
    const double theta = 10000.0;
    Buffer cos("cos", {2, 4}), sin("sin", {2, 4});
    cpu::rope_tables(cos, sin, theta);
    Buffer x("x", {1, 2, 1, 4}), y("y", {1, 2, 1, 4});
    x.values = {0, 0, 0, 0, 1, 0, 0, 0};  // position 1, unit vector on dimension 0
    cpu::rope_forward(y, x, cos, sin);
    // Table values are float32 numbers (HF's angles), widened for the fp64 model.
    EXPECT_EQ(y.values[4 + 0], static_cast<double>(static_cast<float>(std::cos(1.0))));
    EXPECT_EQ(y.values[4 + 1], 0.0);
    EXPECT_EQ(y.values[4 + 2], static_cast<double>(static_cast<float>(std::sin(1.0))));
    EXPECT_EQ(y.values[4 + 3], 0.0);
    // Second frequency: theta^(-2/4) = 0.01 rad per position (as a float32 angle).
    EXPECT_NEAR(cos.values[4 + 1], std::cos(std::pow(theta, -0.5)), 1e-7);
    EXPECT_EQ(cos.values[4 + 3], cos.values[4 + 1]);
}

TEST(OpsBehaviour, AttentionIsCausalAndRowsSumToOne) {
    const int64_t B = 1, T = 4, H = 2, D = 3;
    Rng rng(9);
    Buffer q("q", {B, T, H, D}), k("k", {B, T, H, D}), v("v", {B, T, H, D}), y("y", {B, T, H, D}), p("p", {B, H, T, T});
    q.randomize(rng); k.randomize(rng); v.randomize(rng);
    cpu::attention_forward(y, p, q, k, v);
    for (int64_t h = 0; h < H; ++h) {
        for (int64_t t = 0; t < T; ++t) {
            double sum = 0.0;
            for (int64_t s = 0; s < T; ++s) {
                const double prob = p.values[(h * T + t) * T + s];
                if (s > t) {
                    EXPECT_EQ(prob, 0.0) << "position " << t << " sees future position " << s;
                }
                sum += prob;
            }
            EXPECT_NEAR(sum, 1.0, 1e-14);
        }
        for (int64_t d = 0; d < D; ++d) EXPECT_DOUBLE_EQ(y.values[h * D + d], v.values[h * D + d]) << "t=0 attends only to itself";
    }
    // Changing a future value must not change an earlier output.
    std::vector<double> before(y.values);
    v.values[(3 * H + 0) * D + 1] += 5.0;
    cpu::attention_forward(y, p, q, k, v);
    for (int64_t i = 0; i < 3 * H * D; ++i) EXPECT_EQ(y.values[i], before[i]);
}

TEST(OpsBehaviour, BackwardAccumulates) {
    // Backward ops add into gradients (ops.h); calling twice doubles them.
    Rng rng(10);
    Buffer x("x", {3, 4}), w("w", {4}), y("y", {3, 4}), r("r", {3}), g("g", {3, 4}), dx("dx", {3, 4}), dw("dw", {4});
    x.randomize(rng); w.randomize(rng); g.randomize(rng);
    cpu::rmsnorm_forward(y, r, x, w, 1e-6);
    cpu::rmsnorm_backward(dx, dw, g, x, w, r);
    Buffer once_dx(dx), once_dw(dw);
    cpu::rmsnorm_backward(dx, dw, g, x, w, r);
    for (size_t i = 0; i < dx.values.size(); ++i) EXPECT_DOUBLE_EQ(dx.values[i], 2 * once_dx.values[i]);
    for (size_t i = 0; i < dw.values.size(); ++i) EXPECT_DOUBLE_EQ(dw.values[i], 2 * once_dw.values[i]);
}

TEST(OpsBehaviour, ShapeMismatchNamesOpArgumentAndShapes) {
    Buffer x("x", {3, 4}), w("w", {5, 3}), y("y", {3, 5});
    try {
        cpu::linear_forward(y, x, w);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("linear_forward"), std::string::npos) << m;
        EXPECT_NE(m.find("'weight'"), std::string::npos) << m;
        EXPECT_NE(m.find("(5, 3)"), std::string::npos) << m;
    }
}

TEST(OpsBehaviour, ResultsDoNotDependOnThreadCount) {
    Rng rng(11);
    const int64_t N = 64, C = 48;
    Buffer x("x", {N, C}), w("w", {C}), y("y", {N, C}), r("r", {N}), g("g", {N, C});
    x.randomize(rng); w.randomize(rng); g.randomize(rng);
    Buffer dw1("dw", {C}), dw2("dw", {C});
    cpu::rmsnorm_forward(y, r, x, w, 1e-6);
    omp_set_num_threads(1);
    cpu::rmsnorm_backward(Tensor{}, dw1, g, x, w, r);
    omp_set_num_threads(3);
    cpu::rmsnorm_backward(Tensor{}, dw2, g, x, w, r);
    omp_set_num_threads(omp_get_num_procs());
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dw1.values[c], dw2.values[c]);
}

}  // namespace
}  // namespace reftrain

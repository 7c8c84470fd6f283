// tests/test_ops_gradcheck.cpp — every CPU op's backward against central finite differences in fp64.
//
// Bound: max |analytic - numeric| <= 1e-6 * max |gradient| per input tensor (see gradcheck.h for why).
// Shapes include the awkward ones: T = 1, head_dim not a multiple of 8, GQA and MQA, repeated ids.
// A second group of tests pins behaviour that a gradient check cannot see (layouts, accumulation,
// the zero-supervised-tokens case, error messages).
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <optional>

#include "kernels/bugs.h"
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

// The attention runs its products by blocks of 32 query rows over the keys each block can see, and
// dK/dV by blocks of 32 keys over the rows that see them (kernels/cpu/attention.cpp). T = 70 has two
// full blocks and a partial one; the causal-leak bug moves every block edge by one key.
TEST(OpsGradcheck, AttentionAcrossCausalBlocks) {
    const int64_t B = 1, T = 70, Hq = 2, Hkv = 1, D = 4;
    for (const bool leak : {false, true}) {
        std::optional<ScopedBug> bug;
        if (leak) bug.emplace("causal-leak");
        Rng rng(12);
        Buffer q("q", {B, T, Hq, D}), k("k", {B, T, Hkv, D}), v("v", {B, T, Hkv, D});
        Buffer y("y", {B, T, Hq, D}), p("probs", {B, Hq, T, T}), g("g", {B, T, Hq, D}), m("logits_max", {B, Hq});
        q.randomize(rng); k.randomize(rng); v.randomize(rng); g.randomize(rng);
        Buffer dq("dq", {B, T, Hq, D}), dk("dk", {B, T, Hkv, D}), dv("dv", {B, T, Hkv, D});
        cpu::attention_forward(y, p, q, k, v, m);
        // The forward against the textbook formula on the full square.
        for (int64_t h = 0; h < Hq; ++h) {
            double top = -INFINITY;
            for (int64_t t = 0; t < T; ++t) {
                const int64_t last = leak ? std::min(t + 1, T - 1) : t;
                std::vector<double> score(T);
                double row_max = -INFINITY, sum = 0.0;
                for (int64_t s = 0; s <= last; ++s) {
                    double dot = 0.0;
                    for (int64_t e = 0; e < D; ++e) dot += q.values[(t * Hq + h) * D + e] * k.values[s * Hkv * D + e];
                    score[s] = dot / std::sqrt(double(D));
                    row_max = std::max(row_max, score[s]);
                }
                top = std::max(top, row_max);
                for (int64_t s = 0; s <= last; ++s) sum += std::exp(score[s] - row_max);
                for (int64_t s = 0; s < T; ++s) {
                    const double want = s <= last ? std::exp(score[s] - row_max) / sum : 0.0;
                    const double got = p.values[(h * T + t) * T + s];
                    if (s > last) {
                        ASSERT_EQ(got, 0.0) << "leak " << leak << " h " << h << " t " << t << " s " << s;
                    } else {
                        ASSERT_NEAR(got, want, 1e-12) << "leak " << leak << " h " << h << " t " << t << " s " << s;
                    }
                }
                for (int64_t e = 0; e < D; ++e) {
                    double want = 0.0;
                    for (int64_t s = 0; s <= last; ++s) want += std::exp(score[s] - row_max) / sum * v.values[s * Hkv * D + e];
                    ASSERT_NEAR(y.values[(t * Hq + h) * D + e], want, 1e-12) << "leak " << leak << " t " << t;
                }
            }
            EXPECT_NEAR(m.values[h], top, 1e-12) << "logits_max, leak " << leak << " head " << h;
        }
        cpu::attention_backward(dq, dk, dv, g, p, q, k, v);
        expect_gradients_match(leak ? "attention T=70, causal-leak" : "attention T=70", {&q, &k, &v}, {&dq, &dk, &dv}, [&] {
            cpu::attention_forward(y, p, q, k, v);
            return weighted_sum(y, g);
        });
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

// A NaN score makes its row's softmax NaN, and the head's logits_max NaN from then on.
TEST(OpsBehaviour, AttentionLogitsMaxTurnsNaNWithItsSoftmax) {
    const int64_t B = 2, T = 40, H = 1, D = 2;
    Rng rng(13);
    Buffer q("q", {B, T, H, D}), k("k", {B, T, H, D}), v("v", {B, T, H, D}), y("y", {B, T, H, D});
    Buffer p("p", {B, H, T, T}), m("logits_max", {B, H});
    q.randomize(rng); k.randomize(rng); v.randomize(rng);
    q.values[(1 * T + 35) * D] = std::nan("");  // batch row 1, position 35 (the second block of rows)
    cpu::attention_forward(y, p, q, k, v, m);
    EXPECT_TRUE(std::isfinite(m.values[0])) << m.values[0];
    EXPECT_TRUE(std::isnan(m.values[1])) << m.values[1];
}

// Every op that splits work over threads: the same bits with 1 and 3 threads, in fp32 (where the
// vectorised exp and the attention's blocks live) at sizes that leave partial blocks everywhere.
TEST(OpsBehaviour, Fp32ResultsDoNotDependOnThreadCount) {
    struct F32 {
        std::vector<float> v;
        Tensor t;
        F32(std::string name, std::initializer_list<int64_t> shape, Rng* rng = nullptr)
            : t(nullptr, DType::F32, shape, std::move(name)) {
            v.assign(t.numel(), 0.0f);
            if (rng) for (float& x : v) x = static_cast<float>(2.0 * rng->normal());
            t.data = v.data();
        }
        operator const Tensor&() const { return t; }
    };
    auto run = [](int threads) {
        omp_set_num_threads(threads);
        Rng rng(14);
        const int64_t B = 3, T = 70, Hq = 4, Hkv = 2, D = 8, N = 37, V = 1500, F = 1001;
        F32 q("q", {B, T, Hq, D}, &rng), k("k", {B, T, Hkv, D}, &rng), v("v", {B, T, Hkv, D}, &rng);
        F32 y("y", {B, T, Hq, D}), p("p", {B, Hq, T, T}), m("m", {B, Hq}), g("g", {B, T, Hq, D}, &rng);
        F32 dq("dq", {B, T, Hq, D}), dk("dk", {B, T, Hkv, D}), dv("dv", {B, T, Hkv, D});
        cpu::attention_forward(y, p, q, k, v, m);
        cpu::attention_backward(dq, dk, dv, g, p, q, k, v);
        F32 gate("gate", {N, F}, &rng), up("up", {N, F}, &rng), act("act", {N, F}), dact("dact", {N, F}, &rng);
        F32 dgate("dgate", {N, F}), dup("dup", {N, F});
        cpu::swiglu_forward(act, gate, up);
        cpu::swiglu_backward(dgate, dup, dact, gate, up);
        F32 logits("logits", {N, V}, &rng), lse("lse", {N}), dlogits("dlogits", {N, V});
        std::vector<int64_t> ids(N);
        for (int64_t n = 0; n < N; ++n) ids[n] = n % 5 == 0 ? cpu::kIgnoreIndex : (n * 37) % V;
        const Tensor targets(ids.data(), DType::I64, {N}, "targets");
        const double loss = cpu::cross_entropy_forward(lse, logits, targets).loss;
        cpu::cross_entropy_backward(dlogits, logits, lse, targets, 1.0);
        std::vector<float> all;
        for (const F32* t : {&y, &p, &m, &dq, &dk, &dv, &act, &dgate, &dup, &lse, &dlogits}) {
            all.insert(all.end(), t->v.begin(), t->v.end());
        }
        all.push_back(static_cast<float>(loss));
        return all;
    };
    const std::vector<float> one = run(1), three = run(3);
    omp_set_num_threads(omp_get_num_procs());
    ASSERT_EQ(one.size(), three.size());
    EXPECT_EQ(std::memcmp(one.data(), three.data(), one.size() * sizeof(float)), 0);
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

// The linear layer runs its products in chunks spread over the threads (kernels/cpu/matmul.cpp):
// shapes with one chunk, with chunks of rows, and with chunks of columns (few rows, many features), for
// the forward, dx and dW. In fp64 every chunked product equals the textbook sums; in fp32 the bits are
// the same at 1 to 4 threads (3 threads share the chunks unevenly).
TEST(OpsBehaviour, LinearChunksAreExactAndTheirBitsDoNotDependOnThreadCount) {
    struct Shape { int64_t N, IC, OC; };
    for (const Shape s : {Shape{100, 24, 40}, Shape{300, 17, 70}, Shape{1100, 48, 200}, Shape{1030, 200, 48},
                          Shape{64, 300, 700}, Shape{500, 2000, 100}}) {
        Rng rng(static_cast<uint64_t>(s.N + s.IC));
        Buffer x("x", {s.N, s.IC}), w("w", {s.OC, s.IC}), dy("dy", {s.N, s.OC});
        x.randomize(rng); w.randomize(rng); dy.randomize(rng);
        Buffer y("y", {s.N, s.OC}), dx("dx", {s.N, s.IC}, 0.5), dw("dw", {s.OC, s.IC}, 0.25);
        cpu::linear_forward(y, x, w);
        cpu::linear_backward(dx, dw, dy, x, w);
        double worst = 0.0;
        for (int64_t n = 0; n < s.N; ++n) {
            for (int64_t o = 0; o < s.OC; ++o) {
                double want = 0.0;
                for (int64_t i = 0; i < s.IC; ++i) want += x.values[n * s.IC + i] * w.values[o * s.IC + i];
                worst = std::max(worst, std::fabs(y.values[n * s.OC + o] - want) / (1.0 + std::fabs(want)));
            }
            for (int64_t i = 0; i < s.IC; ++i) {
                double want = 0.5;
                for (int64_t o = 0; o < s.OC; ++o) want += dy.values[n * s.OC + o] * w.values[o * s.IC + i];
                worst = std::max(worst, std::fabs(dx.values[n * s.IC + i] - want) / (1.0 + std::fabs(want)));
            }
        }
        for (int64_t o = 0; o < s.OC; ++o) {
            for (int64_t i = 0; i < s.IC; ++i) {
                double want = 0.25;
                for (int64_t n = 0; n < s.N; ++n) want += dy.values[n * s.OC + o] * x.values[n * s.IC + i];
                worst = std::max(worst, std::fabs(dw.values[o * s.IC + i] - want) / (1.0 + std::fabs(want)));
            }
        }
        EXPECT_LT(worst, 1e-12) << s.N << "x" << s.IC << "x" << s.OC;

        auto run_f32 = [&](int threads) {
            omp_set_num_threads(threads);
            std::vector<float> xf(x.values.begin(), x.values.end()), wf(w.values.begin(), w.values.end());
            std::vector<float> dyf(dy.values.begin(), dy.values.end()), out(s.N * s.OC), dxf(s.N * s.IC, 0.5f);
            std::vector<float> dwf(s.OC * s.IC, 0.25f);
            const Tensor xt(xf.data(), DType::F32, {s.N, s.IC}, "x"), wt(wf.data(), DType::F32, {s.OC, s.IC}, "w");
            const Tensor dyt(dyf.data(), DType::F32, {s.N, s.OC}, "dy"), yt(out.data(), DType::F32, {s.N, s.OC}, "y");
            const Tensor dxt(dxf.data(), DType::F32, {s.N, s.IC}, "dx"), dwt(dwf.data(), DType::F32, {s.OC, s.IC}, "dw");
            cpu::linear_forward(yt, xt, wt);
            cpu::linear_backward(dxt, dwt, dyt, xt, wt);
            out.insert(out.end(), dxf.begin(), dxf.end());
            out.insert(out.end(), dwf.begin(), dwf.end());
            return out;
        };
        const std::vector<float> one = run_f32(1);
        for (int threads : {2, 3, 4}) {
            const std::vector<float> other = run_f32(threads);
            EXPECT_EQ(std::memcmp(one.data(), other.data(), one.size() * sizeof(float)), 0)
                << s.N << "x" << s.IC << "x" << s.OC << " at " << threads << " threads";
        }
        omp_set_num_threads(omp_get_num_procs());
    }
}

}  // namespace
}  // namespace reftrain

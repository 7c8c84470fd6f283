// tests/test_op_clock.cpp — the per-op time table (debug/op_clock.h) on its own and on a model.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "debug/op_clock.h"
#include "model/transformer.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

TEST(OpClock, LayerIndexBecomesN) {
    EXPECT_EQ(OpClock::layer_generic("model.layers.12.mlp.up_proj.out"), "model.layers.N.mlp.up_proj.out");
    EXPECT_EQ(OpClock::layer_generic("grad:model.layers.0.self_attn.q_proj.out"), "grad:model.layers.N.self_attn.q_proj.out");
    EXPECT_EQ(OpClock::layer_generic("logits"), "logits");
    EXPECT_EQ(OpClock::layer_generic("layers.x"), "layers.x");
}

TEST(OpClock, LapsChargeTheIntervalSinceThePreviousOne) {
    for (OpClock::Clock kind : {OpClock::Clock::wall, OpClock::Clock::thread_cpu}) {
        OpClock clock(kind);
        clock.start();
        volatile double sink = 0;
        for (int i = 0; i < 2000000; ++i) sink = sink + 1e-9 * i;  // some CPU work
        clock.lap("work");
        clock.lap("op", "model.layers.3.x");
        clock.lap("op", "model.layers.7.x");
        const std::vector<OpClock::Row> rows = clock.rows();
        ASSERT_EQ(rows.size(), 2u);
        EXPECT_EQ(rows[0].key, "work");  // largest first
        EXPECT_GT(rows[0].seconds, 0.0);
        EXPECT_EQ(rows[1].key, "op model.layers.N.x");
        EXPECT_EQ(rows[1].calls, 2);
        EXPECT_DOUBLE_EQ(clock.total_seconds(), rows[0].seconds + rows[1].seconds);
        const std::string table = clock.table(2);
        EXPECT_NE(table.find("op model.layers.N.x"), std::string::npos) << table;
        EXPECT_NE(table.find("total"), std::string::npos) << table;
        clock.clear();
        EXPECT_TRUE(clock.rows().empty());
    }
}

// On a model: every op of forward and backward gets a row, the rows tile the passes, and the clock
// changes no number.
TEST(OpClock, TimesEveryOpOfAModelWithoutChangingIt) {
    const ModelConfig c = testing::tiny_model_config();
    const int64_t B = 2, T = 8;
    std::vector<int64_t> ids(B * T), targets(B * T);
    for (int64_t i = 0; i < B * T; ++i) {
        ids[i] = (7 * i + 3) % c.vocab_size;
        targets[i] = (5 * i + 1) % c.vocab_size;
    }
    const Tensor ids_t(ids.data(), DType::I64, {B, T}, "input_ids");
    const Tensor targets_t(targets.data(), DType::I64, {B, T}, "targets");
    Transformer plain(c, B, T), timed(c, B, T);
    plain.init_weights(3);
    timed.init_weights(3);
    OpClock clock;
    timed.set_op_clock(&clock);
    plain.forward(ids_t, targets_t);
    plain.backward();
    timed.forward(ids_t, targets_t);
    timed.backward();
    EXPECT_EQ(std::memcmp(plain.grads().data(), timed.grads().data(), plain.grads().nbytes()), 0);
    std::set<std::string> keys;
    int64_t calls = 0;
    for (const OpClock::Row& r : clock.rows()) {
        keys.insert(r.key);
        calls += r.calls;
    }
    for (const std::string want : {"embedding_forward model.embed_tokens.out",
                                   "linear_forward model.layers.N.self_attn.q_proj.out",
                                   "attention_forward model.layers.N.self_attn.attn_out",
                                   "cross_entropy_forward loss.logsumexp", "zero activation gradients",
                                   "attention_backward grad:model.layers.N.self_attn.q_rotary",
                                   "embedding_backward grad:model.embed_tokens.weight"}) {
        EXPECT_TRUE(keys.count(want)) << want;
    }
    EXPECT_EQ(keys.count("tracer"), 0u) << "no tracer set";
    EXPECT_GT(calls, 20 * c.num_hidden_layers);
}

}  // namespace
}  // namespace reftrain

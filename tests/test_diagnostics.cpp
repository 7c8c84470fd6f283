// tests/test_diagnostics.cpp — every diagnostic of train/diagnostics.h passes on a healthy tiny model and
// fails on its failing case (a bug switch, a bad init, a dead layer, a wrong gradient, a bad mask); and
// the two attention bug switches are honest: each buggy backward is the exact gradient of its forward.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kernels/bugs.h"
#include "kernels/random.h"
#include "model/generate.h"
#include "tests/test_util.h"
#include "train/diagnostics.h"

namespace reftrain {
namespace {

namespace fs = std::filesystem;

class Diagnostics : public ::testing::Test {
protected:
    void SetUp() override { reset_bugs(); }
    void TearDown() override { reset_bugs(); }
};

ModelConfig tiny_config() {
    ModelConfig c = testing::tiny_model_config();
    c.vocab_size = 40;
    c.intermediate_size = 32;
    c.head_dim = 4;
    c.max_position_embeddings = 16;
    c.initializer_range = 0.02;  // the usual init: the diagnostics judge a model as a fresh run has it
    return c;
}

struct Fixture {
    ModelConfig config;
    Transformer model;
    Batch batch;
    explicit Fixture(ModelConfig c = tiny_config(), int64_t B = 3, int64_t T = 12)
        : config(c), model(c, B, T), batch(random_batch(B, T, c.vocab_size, 11)) {
        model.init_weights(5);
    }
};

// ---- init-loss ------------------------------------------------------------------------------------------

TEST_F(Diagnostics, InitLossOfAHealthyInitIsNearLnV) {
    Fixture f;
    const DiagnosticResult r = check_init_loss(f.model, f.batch);
    EXPECT_TRUE(r.pass) << format_result(r);
    EXPECT_NEAR(r.number("ln_V"), std::log(40.0), 1e-12);
    EXPECT_LT(std::fabs(r.number("excess")), 0.05) << "initializer_range 0.02 should give logits of std ~0.1";
}

TEST_F(Diagnostics, InitLossFailsOnAFarTooLargeInitScale) {  // bad-init-scale
    ModelConfig c = tiny_config();
    c.initializer_range = 1.0;
    Fixture f(c);
    const DiagnosticResult r = check_init_loss(f.model, f.batch);
    EXPECT_FALSE(r.pass) << format_result(r);
    EXPECT_GT(r.number("excess"), 1.0);
    testing::expect_contains(r.verdict, {"exceeds ln V", "bad-init-scale"});
}

// ---- overfit-batch ----------------------------------------------------------------------------------------

TEST_F(Diagnostics, OverfitBatchFitsWithAHealthyModel) {
    Fixture f;
    OverfitOptions o;
    o.lr = 1e-2;  // a 16-wide model memorising 33 random tokens needs a higher lr than the default
    const DiagnosticResult r = check_overfit_batch(f.model, f.batch, o);
    EXPECT_TRUE(r.pass) << format_result(r);
    EXPECT_LT(r.number("final_loss"), 0.05);
}

TEST_F(Diagnostics, OverfitBatchFailsWhenTheUpdatesNeverReachTheWeights) {  // dead-layer
    Fixture f;
    OverfitOptions o;
    o.frozen_prefixes = {"model."};  // every tensor but lm_head is dead: a fixed random feature map
    o.lr = 1e-2;  // the lr that lets the healthy model fit (above)
    const DiagnosticResult r = check_overfit_batch(f.model, f.batch, o);
    EXPECT_FALSE(r.pass) << format_result(r);
    // The live lm_head over fixed random features still lowers the loss ("trains ok"), but stalls
    // well short of memorising the batch.
    EXPECT_GT(r.number("final_loss"), 2 * o.max_final_loss);
    EXPECT_EQ(r.number("frozen_tensors"), static_cast<double>(f.model.params().size() - 1));
    testing::expect_contains(r.verdict, {"could not fit one batch", "dead-layer"});
}

TEST_F(Diagnostics, OverfitBatchFailsAtLearningRateZero) {
    Fixture f;
    OverfitOptions o;
    o.lr = 0.0;
    o.steps = 5;
    const DiagnosticResult r = check_overfit_batch(f.model, f.batch, o);
    EXPECT_FALSE(r.pass) << format_result(r);
    EXPECT_DOUBLE_EQ(r.number("final_loss"), r.number("initial_loss"));
}

// ---- grad-flow ----------------------------------------------------------------------------------------------

TEST_F(Diagnostics, GradFlowEveryParameterLivesInAHealthyModel) {
    Fixture f;
    std::vector<std::byte> before(f.model.params().data(), f.model.params().data() + f.model.params().nbytes());
    const DiagnosticResult r = check_grad_flow(f.model, f.batch, 1e-3);
    EXPECT_TRUE(r.pass) << format_result(r);
    EXPECT_EQ(r.number("dead_parameters"), 0);
    // AdamW's first step moves each entry by ~lr, so the update/data ratio of a matrix ~ lr / 0.02.
    EXPECT_GT(r.number("max_update_data_ratio"), 1e-2);
    EXPECT_LT(r.number("max_update_data_ratio"), 1e-1);
    EXPECT_EQ(std::memcmp(before.data(), f.model.params().data(), before.size()), 0) << "weights not restored";
    testing::expect_contains(r.table, {"model.layers.1.mlp.down_proj.weight", "update/data"});
}

TEST_F(Diagnostics, GradFlowNamesTheParametersBehindAZeroedOutputProjection) {  // dead-layer
    Fixture f;
    Tensor& o_proj = f.model.param("model.layers.0.self_attn.o_proj.weight");
    std::memset(o_proj.data, 0, o_proj.nbytes());
    const DiagnosticResult r = check_grad_flow(f.model, f.batch, 1e-3);
    EXPECT_FALSE(r.pass) << format_result(r);
    // Nothing reaches q, k, v, their norms and the block's input norm; o_proj itself still learns.
    EXPECT_EQ(r.number("dead_parameters"), 6);
    testing::expect_contains(r.verdict, {"exactly zero gradient", "model.layers.0.input_layernorm.weight"});
    testing::expect_contains(r.table, {"DEAD"});
    EXPECT_EQ(r.table.find("model.layers.0.self_attn.o_proj.weight                             0.000e+00"),
              std::string::npos);
}

TEST_F(Diagnostics, GradFlowAtStepZeroOfZeroInitOutputProjectionsIsAllDeadUpstream) {
    ModelConfig c = tiny_config();
    c.zero_init_output_projections = true;
    Fixture f(c);
    const DiagnosticResult r = check_grad_flow(f.model, f.batch, 1e-3);
    EXPECT_FALSE(r.pass);
    // Per layer: input_layernorm, q, k, v, q_norm, k_norm, post_attention_layernorm, gate, up.
    EXPECT_EQ(r.number("dead_parameters"), 9 * c.num_hidden_layers);
}

// ---- causality ----------------------------------------------------------------------------------------------

TEST_F(Diagnostics, CausalityHoldsExactlyInAHealthyModel) {
    Fixture f;
    const DiagnosticResult r = check_causality(f.model, f.batch, {0, 3, 7, 10});
    EXPECT_TRUE(r.pass) << format_result(r);
    EXPECT_EQ(r.number("max_grad_after_t"), 0.0);  // exactly
}

TEST_F(Diagnostics, CausalityFailsUnderTheCausalLeakBug) {  // causal-leak
    Fixture f;
    ScopedBug bug("causal-leak");
    const DiagnosticResult r = check_causality(f.model, f.batch, {0, 5});
    EXPECT_FALSE(r.pass) << format_result(r);
    EXPECT_EQ(r.number("leaking_positions"), 2);
    testing::expect_contains(r.verdict, {"position 0", "input at position 1", "causal-leak"});
}

// ---- batch-independence -------------------------------------------------------------------------------------

TEST_F(Diagnostics, BatchRowsAreIndependentInAHealthyModel) {
    Fixture f;
    const DiagnosticResult r = check_batch_independence(f.model, f.batch);
    EXPECT_TRUE(r.pass) << format_result(r);
    EXPECT_EQ(r.number("max_grad_other_rows"), 0.0);
    EXPECT_EQ(r.number("rows_checked"), 3);
}

TEST_F(Diagnostics, BatchIndependenceFailsUnderTheViewVsPermuteBug) {  // view-vs-permute
    Fixture f;
    ScopedBug bug("view-vs-permute");
    const DiagnosticResult r = check_batch_independence(f.model, f.batch);
    EXPECT_FALSE(r.pass) << format_result(r);
    EXPECT_GT(r.number("max_grad_other_rows"), 0.0);
    testing::expect_contains(r.verdict, {"rows mix", "view-vs-permute"});
}

TEST_F(Diagnostics, BatchIndependenceNeedsTwoRows) {
    Fixture f(tiny_config(), 1, 8);
    testing::expect_error([&] { check_batch_independence(f.model, f.batch); }, {"batch_size >= 2"});
}

// ---- gradcheck ----------------------------------------------------------------------------------------------

TEST_F(Diagnostics, GradcheckPassesOnTheModelsBackward) {
    const DiagnosticResult r = check_gradcheck(tiny_config(), random_batch(3, 12, 40, 3));
    EXPECT_TRUE(r.pass) << format_result(r);
    EXPECT_LT(r.number("max_error_ratio"), 0.5);  // margin, not just under the bound
    EXPECT_GT(r.number("max_abs_grad"), 1e-3);
}

TEST_F(Diagnostics, GradcheckFailsWhenTheAnalyticGradientIsScaled) {
    // backward(2) is what a loss scale that is never divided out (or an accumulation weight applied
    // twice) does: the analytic gradient is twice the derivative of the loss that forward reports.
    GradcheckOptions o;
    o.loss_weight = 2.0;
    const DiagnosticResult r = check_gradcheck(tiny_config(), random_batch(3, 12, 40, 3), o);
    EXPECT_FALSE(r.pass) << format_result(r);
    EXPECT_GT(r.number("max_error_ratio"), 1e3);
    testing::expect_contains(r.table, {"WRONG"});
}

// The scenarios are honest: with either attention bug on, training runs on the exact gradient of the
// buggy forward, so what the diagnostics see is the bug's forward, not a broken backward.
TEST_F(Diagnostics, BuggyAttentionVariantsKeepTheirTrueGradient) {
    const Batch batch = random_batch(3, 12, 40, 3);
    auto loss_of = [&] {
        Fixture f(tiny_config(), 2, 8);
        f.model.init_weights(1);
        Batch cut = random_batch(2, 8, 40, 3);
        return f.model.forward(cut.input_ids_tensor(), cut.targets_tensor()).loss;
    };
    const double healthy = loss_of();
    for (const std::string bug : {"causal-leak", "view-vs-permute"}) {
        ScopedBug on(bug);
        const DiagnosticResult r = check_gradcheck(tiny_config(), batch);  // rows 2, seq_len 8, seed 1
        EXPECT_TRUE(r.pass) << bug << ":\n" << format_result(r);
        EXPECT_NE(loss_of(), healthy) << bug << " does not change the forward: the switch is not wired";
    }
}

// ---- kv-cache -----------------------------------------------------------------------------------------------

TEST_F(Diagnostics, KvCacheMatchesTheFullRecompute) {
    Fixture f;
    const std::vector<int64_t> prompt(f.batch.input_ids.begin(), f.batch.input_ids.begin() + 10);
    const DiagnosticResult r = check_kv_cache(f.model, prompt);
    EXPECT_TRUE(r.pass) << format_result(r);
    EXPECT_LT(r.number("relative_diff"), 1e-5);
}

TEST_F(Diagnostics, KvCacheDisagreesWhenTheFullPathLeaksTheFuture) {
    // The decode path attends over the cache only (it cannot leak); the full recompute under
    // causal-leak lets each position see the next, so the two differ from position 0 on.
    Fixture f;
    ScopedBug bug("causal-leak");
    const std::vector<int64_t> prompt(f.batch.input_ids.begin(), f.batch.input_ids.begin() + 10);
    const DiagnosticResult r = check_kv_cache(f.model, prompt);
    EXPECT_FALSE(r.pass) << format_result(r);
    EXPECT_EQ(r.number("first_mismatch_position"), 0);
    testing::expect_contains(r.table, {"MISMATCH"});
}

// ---- mask ---------------------------------------------------------------------------------------------------

struct ChatFixture {
    std::unique_ptr<Tokenizer> tokenizer = make_byte_tokenizer(ChatTemplate::special_tokens("chatml"));
    ChatTemplate chat{"chatml", *tokenizer};
    std::vector<Conversation> conversations = {
        {{{"user", "2+3"}, {"assistant", "5"}}, "test #0"},
        {{{"system", "be brief"}, {"user", "hi"}, {"assistant", "hello"}, {"user", "bye"}, {"assistant", "ok"}},
         "test #1"},
    };
};

TEST_F(Diagnostics, MaskAuditPassesOnTheTemplatesRendering) {
    ChatFixture c;
    const DiagnosticResult r = audit_masks(c.chat, c.conversations);
    EXPECT_TRUE(r.pass) << format_result(r);
    // "5" + end, "hello" + end, "ok" + end.
    EXPECT_EQ(r.number("supervised_tokens"), 2 + 6 + 3);
    testing::expect_contains(r.table, {"[[5<|im_end|>]]"});
}

TEST_F(Diagnostics, MaskAuditFailsOnHandMadeBadMasks) {
    ChatFixture c;
    std::vector<RenderedConversation> good;
    for (const Conversation& conv : c.conversations) good.push_back(c.chat.render(conv));
    struct Case {
        std::string what, key, phrase;
        std::function<void(RenderedConversation&)> corrupt;
    };
    const std::vector<Case> cases = {
        {"no BOS", "bos_errors", "BOS", [](RenderedConversation& r) {
             r.ids.erase(r.ids.begin());
             r.supervised.erase(r.supervised.begin());
         }},
        {"a user token supervised", "span_errors", "supervised span", [](RenderedConversation& r) { r.supervised[4] = 1; }},
        {"nothing supervised", "unsupervised_conversations", "no supervised token",
         [](RenderedConversation& r) { std::fill(r.supervised.begin(), r.supervised.end(), 0); }},
        {"end-of-turn unsupervised", "span_errors", "expected", [](RenderedConversation& r) {
             for (size_t t = 1; t < r.supervised.size(); ++t) {
                 if (r.supervised[t - 1] && !r.supervised[t]) { r.supervised[t - 1] = 0; break; }
             }
         }},
        {"flags shorter than ids", "length_mismatches", "flags", [](RenderedConversation& r) { r.supervised.pop_back(); }},
    };
    for (const Case& k : cases) {
        std::vector<RenderedConversation> bad = good;
        k.corrupt(bad[1]);
        const DiagnosticResult r = audit_masks(c.chat, c.conversations, bad);
        EXPECT_FALSE(r.pass) << k.what << ":\n" << format_result(r);
        EXPECT_EQ(r.number(k.key), 1) << k.what;
        testing::expect_contains(r.verdict, {"test #1", k.phrase});
    }
}

TEST_F(Diagnostics, MaskAuditCatchesTheDataBugSwitches) {
    ChatFixture c;
    {
        ScopedBug bug("mask-off-by-one");
        const DiagnosticResult r = audit_masks(c.chat, c.conversations);
        EXPECT_FALSE(r.pass);
        EXPECT_EQ(r.number("target_errors"), 2);
    }
    {
        ScopedBug bug("bos-twice");
        const DiagnosticResult r = audit_masks(c.chat, c.conversations);
        EXPECT_FALSE(r.pass);
        EXPECT_EQ(r.number("bos_errors"), 2);
    }
}

TEST_F(Diagnostics, PackedBatchTargetsMustBeTheNextInput) {
    Batch batch = random_batch(2, 6, 40, 1);
    int64_t supervised = 0;
    EXPECT_EQ(misaligned_batch_targets(batch, &supervised), 0);
    EXPECT_EQ(supervised, 10);
    batch.targets[2] = batch.input_ids[2];  // predicts the current token: off by one
    EXPECT_EQ(misaligned_batch_targets(batch), 1);
}

// ---- from a run config (the CLI path) ------------------------------------------------------------------------

std::vector<std::string> tiny_run(const std::string& jsonl) {
    return {"data.tokenizer=\"byte\"",        "data.task=\"\"",
            "data.jsonl=\"" + jsonl + "\"",   "model.hidden_size=16",
            "model.intermediate_size=32",     "model.num_hidden_layers=1",
            "model.num_attention_heads=2",    "model.num_key_value_heads=1",
            "model.head_dim=8",               "model.max_position_embeddings=64",
            "train.batch_size=2",             "train.seq_len=48"};
}

std::string write_jsonl(const std::string& name, const std::string& text) {
    const fs::path path = testing::scratch_dir("diagnostics_" + name) / "data.jsonl";
    std::ofstream(path) << text;
    return path.string();
}

TEST_F(Diagnostics, MaskFromARunConfigFailsOnAConversationWithoutAnAssistantTurn) {
    const std::string good = R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})";
    const std::string no_answer = R"({"messages": [{"role": "user", "content": "anyone there?"}]})";
    std::ostringstream log;
    const RunConfig healthy = load_run_config("", tiny_run(write_jsonl("good", good + "\n" + good + "\n")));
    const DiagnosticResult ok = run_diagnostic("mask", healthy, {}, log);
    EXPECT_TRUE(ok.pass) << format_result(ok);
    EXPECT_EQ(ok.number("packed_misaligned_targets"), 0);

    const RunConfig broken = load_run_config("", tiny_run(write_jsonl("bad", good + "\n" + no_answer + "\n")));
    const DiagnosticResult r = run_diagnostic("mask", broken, {}, log);
    EXPECT_FALSE(r.pass) << format_result(r);
    EXPECT_EQ(r.number("unsupervised_conversations"), 1);
    testing::expect_contains(r.verdict, {":2", "no supervised token"});

    // labels-all-masked lives in the packer (every target ignored): the packed-batch audit catches it.
    ScopedBug bug("labels-all-masked");
    const DiagnosticResult masked = run_diagnostic("mask", healthy, {}, log);
    EXPECT_FALSE(masked.pass) << format_result(masked);
    EXPECT_EQ(masked.number("packed_supervised_targets"), 0);
    testing::expect_contains(masked.verdict, {"labels-all-masked"});
}

TEST_F(Diagnostics, RunDiagnosticBuildsTheRunsModelAndRefusesUnknownNames) {
    const std::string good = R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})";
    const RunConfig config = load_run_config("", tiny_run(write_jsonl("run", good + "\n" + good + "\n")));
    std::ostringstream log;
    const DiagnosticResult r = run_diagnostic("causality", config, {}, log);
    EXPECT_TRUE(r.pass) << format_result(r);
    testing::expect_contains(format_result(r), {"diagnose causality: PASS", "max_grad_after_t = 0"});
    testing::expect_error([&] { run_diagnostic("causalty", config, {}, log); }, {"unknown diagnostic", "causality"});
}

// ---- black-box checks: any model, any decode loop, no switch needed -----------------------------------------

// reftrain's model as a black box: the logits of a (B, T) batch.
LogitsFn logits_of(Transformer& model) {
    return [&model](const std::vector<int64_t>& ids, int64_t B, int64_t T) {
        std::vector<int64_t> copy = ids;
        model.forward(Tensor(copy.data(), DType::I64, {B, T}, "input_ids"), Tensor());
        const Tensor& logits = model.acts().get("logits");
        std::vector<double> out(static_cast<size_t>(logits.numel()));
        for (size_t i = 0; i < out.size(); ++i) out[i] = logits.ptr<float>()[i];
        return out;
    };
}

// A user's toy "model", written the way a bug is written in user code: the logits at t read a running
// sum of the tokens up to t, and (`peek`) the next token too; (`batch_norm`) every position's logits
// are centred over the batch, as a BatchNorm over the batch axis would.
LogitsFn user_model(bool peek, bool batch_norm, int64_t V) {
    return [=](const std::vector<int64_t>& ids, int64_t B, int64_t T) {
        std::vector<double> out(static_cast<size_t>(B * T * V));
        for (int64_t b = 0; b < B; ++b) {
            double sum = 0.0;
            for (int64_t t = 0; t < T; ++t) {
                sum += static_cast<double>(ids[b * T + t]);
                const double next = peek && t + 1 < T ? static_cast<double>(ids[b * T + t + 1]) : 0.0;
                for (int64_t v = 0; v < V; ++v) out[(b * T + t) * V + v] = std::sin(0.1 * sum * (v + 1) + 0.3 * next);
            }
        }
        if (batch_norm) {
            for (int64_t i = 0; i < T * V; ++i) {
                double mean = 0.0;
                for (int64_t b = 0; b < B; ++b) mean += out[b * T * V + i] / static_cast<double>(B);
                for (int64_t b = 0; b < B; ++b) out[b * T * V + i] -= mean;
            }
        }
        return out;
    };
}

TEST_F(Diagnostics, CausalityByPerturbationAgreesWithTheGradientCheckOnOurModel) {
    Fixture f;
    EXPECT_TRUE(check_causality_by_perturbation(logits_of(f.model), f.batch.input_ids, 3, 12, 40).pass);
    ScopedBug bug("causal-leak");
    const DiagnosticResult r = check_causality_by_perturbation(logits_of(f.model), f.batch.input_ids, 3, 12, 40);
    EXPECT_FALSE(r.pass) << format_result(r);
    EXPECT_EQ(r.number("leaking_positions"), 11);   // every token is seen one position early
}

TEST_F(Diagnostics, CausalityByPerturbationCatchesAUserModelThatPeeksAtTheNextToken) {
    const std::vector<int64_t> ids = random_batch(2, 10, 30, 4).input_ids;
    EXPECT_TRUE(check_causality_by_perturbation(user_model(false, false, 30), ids, 2, 10, 30).pass);
    const DiagnosticResult r = check_causality_by_perturbation(user_model(true, false, 30), ids, 2, 10, 30);
    EXPECT_FALSE(r.pass);
    testing::expect_contains(r.verdict, {"9 of 9 perturbed positions change earlier outputs", "position t sees the future"});
}

TEST_F(Diagnostics, BatchIndependenceByPerturbationCatchesOurBugAndAUserBatchNorm) {
    Fixture f;
    EXPECT_TRUE(check_batch_independence_by_perturbation(logits_of(f.model), f.batch.input_ids, 3, 12, 40).pass);
    {
        ScopedBug bug("view-vs-permute");
        EXPECT_FALSE(check_batch_independence_by_perturbation(logits_of(f.model), f.batch.input_ids, 3, 12, 40).pass);
    }
    const std::vector<int64_t> ids = random_batch(3, 6, 30, 5).input_ids;
    EXPECT_TRUE(check_batch_independence_by_perturbation(user_model(false, false, 30), ids, 3, 6, 30).pass);
    const DiagnosticResult r = check_batch_independence_by_perturbation(user_model(false, true, 30), ids, 3, 6, 30);
    EXPECT_FALSE(r.pass);
    testing::expect_contains(r.verdict, {"3 of 3 rows change other rows' outputs", "batch rows are mixed"});
}

TEST_F(Diagnostics, DecodeLoopComparedWithTheFullForwardCatchesAUserLoopThatResetsTheCache) {
    Fixture f(tiny_config(), 1, 10);
    const std::vector<int64_t> prompt(f.batch.input_ids.begin(), f.batch.input_ids.begin() + 10);
    std::vector<double> full = logits_of(f.model)(prompt, 1, 10);
    InferenceSession right(f.model, 10);
    EXPECT_TRUE(compare_decode_with_full([&](int64_t token) { return right.feed({token}); }, prompt, full, 40).pass);
    // No switch: the user's loop clears the cache before every token, so each one sits at position 0 and
    // sees nothing before it.
    InferenceSession wrong(f.model, 10);
    const DiagnosticResult r = compare_decode_with_full(
        [&](int64_t token) {
            wrong.reset();
            return wrong.feed({token});
        },
        prompt, full, 40);
    EXPECT_FALSE(r.pass);
    EXPECT_EQ(r.number("first_mismatch_position"), 1);   // position 0 has nothing before it either way
}

}  // namespace
}  // namespace reftrain

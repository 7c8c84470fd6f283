// tests/test_tracer.cpp — the frame-buffered NaN tracer (debug/tracer.h) and the mixed-precision
// emulation of the model (Transformer::set_precision): statistics against brute force, the ring, a
// silent run on a healthy model, an injected overflow named at exactly its tensor with the run-up and
// the dump, fp16 overflow to inf, and bf16 training numerics.
//
// TracerFixture.InjectedOverflowWritesDump also leaves its dump under
// REFTRAIN_BINARY_DIR/tracer_fixture/ (or $REFTRAIN_TRACER_FIXTURE_DIR), where
// tests/python/test_tracer_dump.py reads it back with the Python safetensors package.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "debug/tracer.h"
#include "kernels/dtype.h"
#include "kernels/random.h"
#include "kernels/safetensors.h"
#include "model/transformer.h"
#include "train/adamw.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

ModelConfig small_config() {
    ModelConfig c = testing::tiny_model_config();
    c.head_dim = 8;
    c.initializer_range = 0.1;
    return c;
}

struct Batch {
    std::vector<int64_t> ids, targets;
    Tensor ids_tensor, targets_tensor;
    Batch(int64_t B, int64_t T, int64_t V, uint64_t seed) : ids(B * T), targets(B * T) {
        Rng rng(seed);
        for (auto& id : ids) id = static_cast<int64_t>(rng.below(V));
        for (auto& t : targets) t = static_cast<int64_t>(rng.below(V));
        ids_tensor = Tensor(ids.data(), DType::I64, {B, T}, "input_ids");
        targets_tensor = Tensor(targets.data(), DType::I64, {B, T}, "targets");
    }
};

// One optimizer step the way the trainer runs it with a tracer: frame per step, parameters recorded
// after the update, the update skipped when the step tripped.
double train_step(Transformer& model, AdamW& optimizer, FrameTracer& tracer, const Batch& batch, int64_t step) {
    tracer.begin_step(step);
    model.zero_grad();
    const ForwardResult r = model.forward(batch.ids_tensor, batch.targets_tensor);
    model.backward();
    if (!tracer.tripped()) {
        optimizer.step();
        tracer.record("adamw.update", model.params().tensors());
    }
    tracer.end_step();
    return r.loss;
}

FrameTracer::Options quiet_options(std::ostream& log, const std::string& run_dir = "") {
    FrameTracer::Options o;
    o.run_dir = run_dir;
    o.log = &log;
    return o;
}

// ---- statistics and the ring -----------------------------------------------------------------------------

// The statistics by brute force in fp64: rms, min and max of |x| over the finite values, and how many
// are not finite.
template <class V>
std::tuple<double, double, double, int64_t> brute_force_stats(const V& values) {
    double sum = 0, lo = INFINITY, hi = 0;
    int64_t bad = 0;
    for (auto e : values) {
        if (!std::isfinite(e)) { ++bad; continue; }
        sum += double(e) * double(e);
        lo = std::min(lo, double(std::fabs(e)));
        hi = std::max(hi, double(std::fabs(e)));
    }
    return {std::sqrt(sum / double(values.size() - bad)), lo, hi, bad};
}

TEST(TensorStats, MatchBruteForceWithNonFiniteValues) {
    // Large enough for several chunks, with inf, -inf and NaN sprinkled in.
    std::vector<float> x(100003);
    Rng rng(5);
    for (auto& v : x) v = static_cast<float>(rng.normal() * 3.0);
    x[7] = std::numeric_limits<float>::infinity();
    x[50000] = -std::numeric_limits<float>::infinity();
    x[99999] = std::numeric_limits<float>::quiet_NaN();
    x[123] = 0.0f;
    const auto [rms, lo, hi, bad] = brute_force_stats(x);
    const TensorStats s = tensor_stats(Tensor(x.data(), DType::F32, {static_cast<int64_t>(x.size())}, "x"));
    EXPECT_EQ(s.nonfinite, 3);
    EXPECT_EQ(s.abs_min, 0.0);
    EXPECT_EQ(s.abs_max, hi);
    // Partial sums of 16 squares per lane are fp32 (then fp64 across blocks): 1e-6 relative is the bound.
    EXPECT_NEAR(s.rms, rms, 1e-6 * s.rms);

    // A small F64 tensor with known values: |x| in {0.5, 2, 4}, rms = sqrt((0.25 + 4 + 16) / 3).
    std::vector<double> y{-0.5, 2.0, 4.0, std::nan("")};
    const TensorStats t = tensor_stats(Tensor(y.data(), DType::F64, {4}, "y"));
    EXPECT_EQ(t.abs_min, 0.5);
    EXPECT_EQ(t.abs_max, 4.0);
    EXPECT_DOUBLE_EQ(t.rms, std::sqrt(20.25 / 3.0));
    EXPECT_EQ(t.nonfinite, 1);

    // Nothing finite: magnitudes are 0, every element counted.
    std::vector<float> z(5, std::numeric_limits<float>::infinity());
    const TensorStats u = tensor_stats(Tensor(z.data(), DType::F32, {5}, "z"));
    EXPECT_EQ(u.nonfinite, 5);
    EXPECT_EQ(u.abs_max, 0.0);
    EXPECT_EQ(u.rms, 0.0);

    // Finite values whose squares leave fp32's range still give a finite, exact-to-1e-6 rms.
    for (float value : {FLT_MAX, 1e-30f, 3e-42f /* subnormal */}) {
        std::vector<float> w(1000, value);
        w[3] = -value;
        const TensorStats e = tensor_stats(Tensor(w.data(), DType::F32, {1000}, "w"));
        EXPECT_EQ(e.nonfinite, 0) << value;
        EXPECT_EQ(e.abs_max, double(value));
        EXPECT_EQ(e.abs_min, double(value));
        EXPECT_NEAR(e.rms, double(value), 1e-6 * double(value)) << value;
    }

    std::vector<int64_t> ints(3);
    EXPECT_THROW(tensor_stats(Tensor(ints.data(), DType::I64, {3}, "ids")), Error);
}

// Finite tensors of ordinary magnitude take the vector fast path (debug/tracer.cpp); it must agree
// with the brute force as the careful loop does: -0.0 counts as |0|, the tail after the last 256-block
// is included, a chunk with one NaN falls back without spoiling the others, in fp32 and fp64.
TEST(TensorStats, FastPathMatchesBruteForce) {
    Rng rng(8);
    std::vector<float> x(300007);  // 10 chunks of 32k and a tail
    for (auto& v : x) v = static_cast<float>(rng.normal() * 0.02);
    for (int64_t i = 0; i < 1000; ++i) x[40000 + i] = 1e-30f;  // a tiny patch: its squares underflow
    for (int pass = 0; pass < 2; ++pass) {
        if (pass == 1) {
            x[777] = -0.0f;  // the smallest magnitude, negative zero
            x[150001] = std::numeric_limits<float>::quiet_NaN();
        }
        const auto [rms, lo, hi, bad] = brute_force_stats(x);
        const TensorStats s = tensor_stats(Tensor(x.data(), DType::F32, {static_cast<int64_t>(x.size())}, "x"));
        EXPECT_EQ(s.nonfinite, bad) << pass;
        EXPECT_EQ(s.abs_max, hi) << pass;
        EXPECT_EQ(s.abs_min, lo) << pass;
        EXPECT_FALSE(std::signbit(s.abs_min)) << pass;
        EXPECT_NEAR(s.rms, rms, 1e-6 * rms) << pass;
    }
    std::vector<double> y(70001);
    for (auto& v : y) v = rng.normal() * 1e3;
    const auto [rms, lo, hi, bad] = brute_force_stats(y);
    const TensorStats t = tensor_stats(Tensor(y.data(), DType::F64, {static_cast<int64_t>(y.size())}, "y"));
    EXPECT_EQ(t.nonfinite, 0);
    EXPECT_EQ(t.abs_max, hi);
    EXPECT_EQ(t.abs_min, lo);
    EXPECT_NEAR(t.rms, rms, 1e-12 * rms);
}

TEST(FrameTracer, RingKeepsExactlyKFrames) {
    std::ostringstream log;
    FrameTracer::Options o = quiet_options(log);
    o.frames = 3;
    FrameTracer tracer(o);
    std::vector<float> x(4);
    Tensor t(x.data(), DType::F32, {4}, "x");
    for (int64_t step = 0; step < 7; ++step) {
        tracer.begin_step(step);
        std::fill(x.begin(), x.end(), static_cast<float>(step + 1));
        tracer.record("fill", {&t});
        tracer.end_step();
        EXPECT_EQ(tracer.frame_count(), static_cast<size_t>(std::min<int64_t>(step + 1, 3)));
    }
    ASSERT_EQ(tracer.frame_count(), 3u);
    for (size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(tracer.frame(i).step, static_cast<int64_t>(4 + i));
        ASSERT_TRUE(tracer.find(tracer.frame(i), "x").has_value());
        EXPECT_EQ(tracer.find(tracer.frame(i), "x")->abs_max, 5.0 + i);
    }
    EXPECT_THROW(tracer.frame(3), Error);
    EXPECT_FALSE(tracer.find(tracer.frame(0), "never recorded").has_value());
    EXPECT_EQ(tracer.trips(), 0);
    FrameTracer::Options empty_ring;
    empty_ring.frames = 0;
    EXPECT_THROW(FrameTracer{empty_ring}, Error);
}

TEST(FrameTracer, FirstIncidentStaysAtTheFirstTripWhenBadStepsAreSkipped) {
    // tracer.policy = skip: later steps trip too; the first incident is where the run first went wrong.
    std::ostringstream log;
    FrameTracer tracer(quiet_options(log));
    std::vector<float> x(2, 1.0f), y(2, 1.0f);
    Tensor tx(x.data(), DType::F32, {2}, "x"), ty(y.data(), DType::F32, {2}, "y");
    for (int64_t step = 0; step < 4; ++step) {
        tracer.begin_step(step);
        x[0] = step >= 1 ? std::numeric_limits<float>::infinity() : 1.0f;  // x goes bad at step 1
        y[0] = step >= 2 ? std::numeric_limits<float>::quiet_NaN() : 1.0f;
        tracer.record(step >= 2 ? "later" : "first", {step >= 2 ? &ty : &tx});
        tracer.end_step();
    }
    EXPECT_EQ(tracer.trips(), 3);
    ASSERT_TRUE(tracer.first_incident() && tracer.incident());
    EXPECT_EQ(tracer.first_incident()->step, 1);
    EXPECT_EQ(tracer.first_incident()->tensor, "x");
    EXPECT_EQ(tracer.incident()->step, 3);
    EXPECT_EQ(tracer.incident()->tensor, "y");
}

TEST(FrameTracer, RecordStatsAppendsPrecomputedStatisticsInOrder) {
    // The GPU's path (model/transformer_cuda.cpp): statistics computed on the device arrive by name.
    std::ostringstream log;
    FrameTracer tracer(quiet_options(log));
    std::vector<float> x = {1.0f, -3.0f};
    Tensor t(x.data(), DType::F32, {2}, "a");
    tracer.begin_step(0);
    tracer.record("op1", {&t});
    tracer.record_stats("op2", "b", TensorStats{0.5, 2.0, 1.25, 0});
    tracer.record_stats("op3", "c", TensorStats{0.0, 0.0, 0.0, 7});  // non-finite: recorded, never trips
    tracer.end_step();
    ASSERT_EQ(tracer.frame_count(), 1u);
    const auto& entries = tracer.frame(0).entries;
    ASSERT_EQ(entries.size(), 3u);
    EXPECT_EQ(tracer.name(entries[1].name), "b");
    EXPECT_EQ(tracer.name(entries[1].op), "op2");
    EXPECT_EQ(entries[1].stats.abs_max, 2.0);
    EXPECT_EQ(entries[1].stats.rms, 1.25);
    EXPECT_EQ(tracer.name(entries[2].name), "c");
    EXPECT_EQ(entries[2].stats.nonfinite, 7);
    EXPECT_FALSE(tracer.tripped());
    // disabled: nothing is appended
    tracer.set_enabled(false);
    tracer.begin_step(1);
    tracer.record_stats("op2", "b", TensorStats{});
    tracer.end_step();
    for (size_t i = 0; i < tracer.frame_count(); ++i) {
        if (tracer.frame(i).step == 1) {
            EXPECT_TRUE(tracer.frame(i).entries.empty());
        }
    }
    EXPECT_EQ(tracer.frame(0).entries.size(), 3u);
}

// ---- the tracer on the model ----------------------------------------------------------------------------

TEST(FrameTracer, SilentOnHealthyModelAndChangesNoNumber) {
    const ModelConfig c = small_config();
    const int64_t B = 2, T = 8;
    Batch batch(B, T, c.vocab_size, 11);
    Transformer traced(c, B, T), plain(c, B, T);
    traced.init_weights(3);
    plain.init_weights(3);
    AdamW opt_traced(traced.params(), traced.grads(), AdamWConfig{.lr = 1e-2});
    AdamW opt_plain(plain.params(), plain.grads(), AdamWConfig{.lr = 1e-2});
    std::ostringstream log;
    FrameTracer tracer(quiet_options(log));
    traced.set_tracer(&tracer);
    for (int64_t step = 0; step < 6; ++step) {
        const double loss = train_step(traced, opt_traced, tracer, batch, step);
        plain.zero_grad();
        const double plain_loss = plain.forward(batch.ids_tensor, batch.targets_tensor).loss;
        plain.backward();
        opt_plain.step();
        EXPECT_EQ(loss, plain_loss) << "the tracer changed the loss at step " << step;
        EXPECT_FALSE(tracer.tripped()) << "step " << step;
    }
    EXPECT_EQ(tracer.trips(), 0);
    EXPECT_TRUE(log.str().empty()) << log.str();
    EXPECT_EQ(std::memcmp(traced.params().data(), plain.params().data(), plain.params().nbytes()), 0);

    // Every activation, activation gradient and parameter gradient is in the last frame.
    const FrameTracer::Frame& last = tracer.frame(tracer.frame_count() - 1);
    for (const Tensor& t : traced.acts().tensors()) EXPECT_TRUE(tracer.find(last, t.name).has_value()) << t.name;
    for (const Tensor& t : traced.grads().tensors()) EXPECT_TRUE(tracer.find(last, t.name).has_value()) << t.name;
    for (const Tensor& t : traced.params().tensors()) EXPECT_TRUE(tracer.find(last, t.name).has_value()) << t.name;
    EXPECT_TRUE(tracer.find(last, "grad:model.layers.0.mlp.up_proj.out").has_value());
    // The attention-logit statistic: positive (q.q/sqrt(D) on the diagonal after QK-norm) and finite.
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string name = "model.layers." + std::to_string(i) + ".self_attn.attn_logits_max";
        auto s = tracer.find(last, name);
        ASSERT_TRUE(s.has_value()) << name;
        EXPECT_EQ(s->nonfinite, 0);
        EXPECT_GT(s->abs_max, 0.0);
    }
}

TEST(FrameTracer, AttnLogitsMaxMatchesBruteForce) {
    const ModelConfig c = small_config();
    const int64_t B = 2, T = 8, Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
    Batch batch(B, T, c.vocab_size, 4);
    Transformer model(c, B, T);
    model.init_weights(9);
    std::ostringstream log;
    FrameTracer tracer(quiet_options(log));
    model.set_tracer(&tracer);
    tracer.begin_step(0);
    model.forward(batch.ids_tensor, batch.targets_tensor);
    const float* q = model.acts().get("model.layers.1.self_attn.q_rotary").ptr<float>();
    const float* k = model.acts().get("model.layers.1.self_attn.k_rotary").ptr<float>();
    const float* got = model.trace_acts().get("model.layers.1.self_attn.attn_logits_max").ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < Hq; ++h) {
            double want = -INFINITY;
            for (int64_t t = 0; t < T; ++t) {
                for (int64_t s = 0; s <= t; ++s) {
                    double dot = 0;
                    for (int64_t e = 0; e < D; ++e) {
                        dot += double(q[((b * T + t) * Hq + h) * D + e]) * k[((b * T + s) * Hkv + h / (Hq / Hkv)) * D + e];
                    }
                    want = std::max(want, dot / std::sqrt(double(D)));
                }
            }
            EXPECT_NEAR(got[b * Hq + h], want, 1e-5 * std::max(1.0, std::fabs(want))) << "b " << b << " h " << h;
        }
    }
}

// The acceptance test of the issue. Four healthy steps, then layer 1's up_proj weight is set to
// FLT_MAX: its output overflows (|x| > 1 times FLT_MAX) while everything before it, layer 0 and
// layer 1's gate_proj included, stays finite.
TEST(TracerFixture, InjectedOverflowWritesDump) {
    namespace fs = std::filesystem;
    // tests/python/test_tracer_dump.py points this at its own work dir, so ctest -j running both
    // tests at once cannot race on one directory.
    const char* override_dir = std::getenv("REFTRAIN_TRACER_FIXTURE_DIR");
    const fs::path run_dir = override_dir != nullptr ? fs::path(override_dir) : fs::path(REFTRAIN_BINARY_DIR) / "tracer_fixture";
    fs::remove_all(run_dir);
    const ModelConfig c = small_config();
    const int64_t B = 2, T = 8, healthy_steps = 4;
    Batch batch(B, T, c.vocab_size, 21);
    Transformer model(c, B, T);
    model.init_weights(1);
    AdamW optimizer(model.params(), model.grads(), AdamWConfig{.lr = 1e-2});
    std::ostringstream log;
    FrameTracer tracer(quiet_options(log, run_dir.string()));
    tracer.set_enabled(true);
    model.set_tracer(&tracer);
    for (int64_t step = 0; step < healthy_steps; ++step) train_step(model, optimizer, tracer, batch, step);
    ASSERT_EQ(tracer.trips(), 0) << log.str();

    const std::string bad = "model.layers.1.mlp.up_proj.out";
    Tensor& w = model.param("model.layers.1.mlp.up_proj.weight");
    for (int64_t i = 0; i < w.numel(); ++i) w.ptr<float>()[i] = FLT_MAX;
    std::vector<float> params_before(model.params().nbytes() / 4);
    std::memcpy(params_before.data(), model.params().data(), model.params().nbytes());
    train_step(model, optimizer, tracer, batch, healthy_steps);

    ASSERT_TRUE(tracer.tripped());
    ASSERT_TRUE(tracer.incident().has_value());
    const FrameTracer::Incident& incident = *tracer.incident();
    EXPECT_EQ(incident.tensor, bad);
    EXPECT_EQ(incident.op, "linear_forward");
    EXPECT_EQ(incident.step, healthy_steps);
    EXPECT_EQ(incident.inputs,
              (std::vector<std::string>{"model.layers.1.post_attention_layernorm.out", "model.layers.1.mlp.up_proj.weight"}));
    EXPECT_GT(incident.stats.nonfinite, 0);
    EXPECT_EQ(tracer.trips(), 1);
    // Skip policy in train_step: the update was not applied.
    EXPECT_EQ(std::memcmp(params_before.data(), model.params().data(), model.params().nbytes()), 0);

    // The tripped frame: everything recorded before the bad tensor is finite (layer 0 among it), and
    // the bad tensor is the first non-finite entry.
    const FrameTracer::Frame& tripped = tracer.frame(tracer.frame_count() - 1);
    EXPECT_EQ(tripped.step, healthy_steps);
    size_t first_bad = tripped.entries.size();
    for (size_t i = 0; i < tripped.entries.size(); ++i) {
        if (tripped.entries[i].stats.nonfinite > 0) { first_bad = i; break; }
    }
    ASSERT_LT(first_bad, tripped.entries.size());
    EXPECT_EQ(tracer.name(tripped.entries[first_bad].name), bad);
    EXPECT_EQ(tracer.find(tripped, "model.layers.0.out")->nonfinite, 0);
    EXPECT_EQ(tracer.find(tripped, "model.layers.1.mlp.gate_proj.out")->nonfinite, 0);

    // The run-up: the healthy frames before it hold finite rows for the bad tensor and its input.
    ASSERT_EQ(tracer.frame_count(), static_cast<size_t>(healthy_steps + 1));
    for (size_t i = 0; i < static_cast<size_t>(healthy_steps); ++i) {
        auto s = tracer.find(tracer.frame(i), bad);
        ASSERT_TRUE(s.has_value());
        EXPECT_EQ(s->nonfinite, 0);
        EXPECT_GT(s->rms, 0.0);
        EXPECT_EQ(tracer.find(tracer.frame(i), "model.layers.1.post_attention_layernorm.out")->nonfinite, 0);
    }
    EXPECT_NE(incident.runup.find("first non-finite value at step 4 in '" + bad + "'"), std::string::npos);
    EXPECT_NE(incident.runup.find("<- went bad here"), std::string::npos);
    EXPECT_NE(log.str().find(incident.runup), std::string::npos);

    // The JSON report parses and carries the run-up: four healthy rows and the bad one per tensor.
    ASSERT_FALSE(incident.report_path.empty());
    std::ifstream report_file(incident.report_path);
    const nlohmann::json report = nlohmann::json::parse(report_file);
    EXPECT_EQ(report["tensor"], bad);
    EXPECT_EQ(report["step"], healthy_steps);
    EXPECT_EQ(report["op"], "linear_forward");
    ASSERT_EQ(report["runup"][bad].size(), static_cast<size_t>(healthy_steps + 1));
    EXPECT_EQ(report["runup"][bad][0]["nonfinite"], 0);
    EXPECT_GT(report["runup"][bad][healthy_steps]["nonfinite"].get<int64_t>(), 0);
    EXPECT_TRUE(report["runup"].contains("model.layers.1.mlp.up_proj.weight"));

    // The dump: the op's output and both inputs, the output holding the non-finite values.
    const SafetensorsFile dump = SafetensorsFile::open(incident.dump_path);
    EXPECT_EQ(dump.entries().size(), 3u);
    EXPECT_TRUE(dump.contains(bad));
    EXPECT_TRUE(dump.contains("model.layers.1.post_attention_layernorm.out"));
    EXPECT_TRUE(dump.contains("model.layers.1.mlp.up_proj.weight"));
    EXPECT_EQ(dump.metadata().at("tensor"), bad);
    std::vector<float> out(static_cast<size_t>(dump.entry(bad).numel()));
    dump.read_into(bad, Tensor(out.data(), DType::F32, dump.entry(bad).shape, bad));
    EXPECT_EQ(tensor_stats(Tensor(out.data(), DType::F32, {static_cast<int64_t>(out.size())}, bad)).nonfinite,
              incident.stats.nonfinite);

    // The next healthy step (weight restored) trips nothing new.
    std::memcpy(w.data, std::vector<float>(w.numel(), 0.01f).data(), w.nbytes());
    train_step(model, optimizer, tracer, batch, healthy_steps + 1);
    EXPECT_FALSE(tracer.tripped());
    EXPECT_EQ(tracer.trips(), 1);
}

// ---- precision emulation ---------------------------------------------------------------------------------

TEST(Precision, Fp16OverflowIsNamedAtTheFirstTensorPast65504) {
    const ModelConfig c = small_config();
    const int64_t B = 2, T = 8;
    Batch batch(B, T, c.vocab_size, 8);
    // Layer 0's up_proj scaled by 1e5: its weights (std 0.1 * 1e5 = 1e4) stay below 65504 (checked
    // below) but its outputs (sums of 16 products, rms ~ 4e4) pass 65504: fine in fp32, inf in fp16.
    auto make = [&](Transformer& model) {
        model.init_weights(2);
        Tensor& w = model.param("model.layers.0.mlp.up_proj.weight");
        for (int64_t i = 0; i < w.numel(); ++i) w.ptr<float>()[i] *= 1e5f;
    };
    for (DType precision : {DType::F32, DType::F16}) {
        Transformer model(c, B, T);
        make(model);
        model.set_precision(precision);
        std::ostringstream log;
        FrameTracer tracer(quiet_options(log));
        model.set_tracer(&tracer);
        tracer.begin_step(0);
        model.forward(batch.ids_tensor, batch.targets_tensor);
        model.backward();
        if (precision == DType::F32) {
            EXPECT_FALSE(tracer.tripped()) << log.str();
            EXPECT_GT(tracer.find(tracer.current_frame(), "model.layers.0.mlp.up_proj.out")->abs_max, 65504.0);
            continue;
        }
        ASSERT_TRUE(tracer.tripped());
        EXPECT_EQ(tracer.incident()->tensor, "model.layers.0.mlp.up_proj.out");
        // The fp16 compute copy of the weight is finite: the overflow is the activation's own.
        const TensorStats w16 = tensor_stats(model.compute_params().get("model.layers.0.mlp.up_proj.weight"));
        EXPECT_EQ(w16.nonfinite, 0);
        EXPECT_LE(w16.abs_max, 65504.0);
        // Every entry before it fits in fp16.
        for (const FrameTracer::Entry& e : tracer.current_frame().entries) {
            if (tracer.name(e.name) == "model.layers.0.mlp.up_proj.out") break;
            EXPECT_LE(e.stats.abs_max, 65504.0) << tracer.name(e.name);
            EXPECT_EQ(e.stats.nonfinite, 0) << tracer.name(e.name);
        }
        // Rounding overflowed to inf (not NaN) in the stored activation.
        const Tensor& up = model.acts().get("model.layers.0.mlp.up_proj.out");
        int64_t infinite = 0;
        for (int64_t i = 0; i < up.numel(); ++i) infinite += std::isinf(up.ptr<float>()[i]);
        EXPECT_EQ(infinite, tracer.incident()->stats.nonfinite);
    }
}

TEST(Precision, Bf16LossCloseToFp32AndActivationsRepresentable) {
    const ModelConfig c = small_config();
    const int64_t B = 2, T = 8;
    Batch batch(B, T, c.vocab_size, 6);
    Transformer fp32(c, B, T), bf16(c, B, T);
    fp32.init_weights(4);
    bf16.init_weights(4);
    bf16.set_precision(DType::BF16);
    const double loss32 = fp32.forward(batch.ids_tensor, batch.targets_tensor).loss;
    const double loss16 = bf16.forward(batch.ids_tensor, batch.targets_tensor).loss;
    bf16.backward();
    // bf16 keeps 8 significant bits (relative rounding error <= 2^-9 ~ 2e-3 per stored value); through
    // two layers the loss (~ln 23 = 3.1) moves by a few 1e-3 at most. Stated bound: 1e-2 absolute.
    EXPECT_NEAR(loss16, loss32, 1e-2);
    RecordProperty("loss_fp32", std::to_string(loss32));
    RecordProperty("loss_bf16", std::to_string(loss16));
    EXPECT_NE(loss16, loss32) << "bf16 emulation changed nothing";
    auto saved_statistic = [](const std::string& n) {
        return n.ends_with("rstd") || n.ends_with("attn_probs") || n == "loss" || n == "loss.logsumexp";
    };
    auto expect_bf16 = [](const Tensor& t) {
        const float* p = t.ptr<float>();
        int64_t off = 0;
        for (int64_t i = 0; i < t.numel(); ++i) off += bf16_to_float(float_to_bf16(p[i])) != p[i];
        EXPECT_EQ(off, 0) << t.name << ": values not representable in bf16";
    };
    for (const Tensor& t : bf16.acts().tensors()) {
        if (!saved_statistic(t.name)) expect_bf16(t);
    }
    for (const Tensor& t : bf16.act_grads().tensors()) expect_bf16(t);
    for (const Tensor& t : bf16.compute_params().tensors()) expect_bf16(t);
    // The master weights stay fp32 (init draws are not bf16 values) and so do the gradients.
    int64_t master_off = 0;
    const Tensor& w = bf16.param("model.layers.0.mlp.up_proj.weight");
    for (int64_t i = 0; i < w.numel(); ++i) master_off += bf16_to_float(float_to_bf16(w.ptr<float>()[i])) != w.ptr<float>()[i];
    EXPECT_GT(master_off, w.numel() / 2);

    // F64 models refuse emulation; unknown precisions are refused too.
    Transformer f64(c, B, T, DType::F64);
    try {
        f64.set_precision(DType::BF16);
        ADD_FAILURE() << "F64 model accepted BF16 emulation";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("needs an F32 model"), std::string::npos) << e.what();
    }
    EXPECT_NO_THROW(f64.set_precision(DType::F32));
    EXPECT_THROW(fp32.set_precision(DType::I64), Error);
}

}  // namespace
}  // namespace reftrain

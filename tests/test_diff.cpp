// tests/test_diff.cpp — debug/diff.h on small synthetic dumps: walk order, the error measure and the
// tolerances, the first failure, shape mismatches, one-sided names, exit statuses and the report text.
// (tests/python/test_diff.py runs the CLI on real dumps from reftrain, the mirror and the hook script.)
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "debug/diff.h"
#include "kernels/safetensors.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

using namespace reftrain::testing;
namespace fs = std::filesystem;

// A named tensor with its own storage, written through save_safetensors.
struct Stored {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<double> values;
    DType dtype = DType::F32;
};

class DiffTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = testing::scratch_dir("diff_" + testing::current_test_name());
    }

    // Writes the tensors in the given order; `order` (when not empty) goes to reftrain.order.
    std::string write(const std::string& file, const std::vector<Stored>& tensors,
                      const std::vector<std::string>& order = {}) {
        std::vector<std::vector<float>> f32;
        std::vector<std::vector<double>> f64;
        std::vector<std::vector<int64_t>> i64;
        f32.reserve(tensors.size());
        f64.reserve(tensors.size());
        i64.reserve(tensors.size());
        std::vector<Tensor> views;
        for (const Stored& s : tensors) {
            void* data = nullptr;
            if (s.dtype == DType::F64) {
                data = f64.emplace_back(s.values).data();
            } else if (s.dtype == DType::I64) {
                data = i64.emplace_back(s.values.begin(), s.values.end()).data();
            } else {
                data = f32.emplace_back(s.values.begin(), s.values.end()).data();
            }
            views.emplace_back(data, s.dtype == DType::BF16 ? DType::F32 : s.dtype, s.shape, s.name);
        }
        std::map<std::string, std::string> metadata;
        if (!order.empty()) metadata[kDumpOrderKey] = encode_dump_order(order);
        const std::string p = (dir_ / file).string();
        // BF16 entries: the whole file is stored as bf16 (save_safetensors converts float tensors).
        bool any_bf16 = false;
        for (const Stored& s : tensors) any_bf16 |= s.dtype == DType::BF16;
        save_safetensors(p, views, metadata, any_bf16 ? std::optional<DType>(DType::BF16) : std::nullopt);
        return p;
    }

    fs::path dir_;
};

DiffOptions tolerances(std::optional<double> rtol, std::optional<double> atol) {
    DiffOptions options;
    options.rtol = rtol;
    options.atol = atol;
    options.jump = 0;  // these tests are about the tolerance alone, not the suspicious-row test
    return options;
}

std::vector<std::string> names_of(const std::vector<TensorDiff>& rows) {
    std::vector<std::string> out;
    for (const TensorDiff& r : rows) out.push_back(r.name);
    return out;
}

TEST_F(DiffTest, WalksAsStoredOrderAndNamesTheFirstTensorOverTolerance) {
    // Stored in the file as c, b, a; the execution order says a, b, c. b and c both differ: b is first.
    std::vector<std::string> order = {"a", "b", "c"};
    std::string pa = write("a.safetensors", {{"c", {2}, {1, 2}}, {"b", {2}, {1, 2}}, {"a", {2}, {1, 2}}}, order);
    std::string pb = write("b.safetensors", {{"a", {2}, {1, 2}}, {"c", {2}, {1, 3}}, {"b", {2}, {1, 2.5}}});
    DiffReport report = diff_dump_files(pa, pb);
    EXPECT_EQ(names_of(report.tensors), order);
    EXPECT_EQ(report.order_source, "A's reftrain.order");
    EXPECT_TRUE(report.warnings.empty());
    EXPECT_EQ(report.first_failure(), 1);
    EXPECT_EQ(report.failure_count(), 2);
    EXPECT_EQ(report.exit_status(), 1);
    // b: max_abs 0.5, scale max(2, 2.5) = 2.5, max_rel 0.2.
    EXPECT_DOUBLE_EQ(report.tensors[1].max_abs, 0.5);
    EXPECT_DOUBLE_EQ(report.tensors[1].scale, 2.5);
    EXPECT_DOUBLE_EQ(report.tensors[1].max_rel, 0.2);
    EXPECT_EQ(report.tensors[1].worst_index, std::vector<int64_t>{1});

    // Swapped: A (pb) has no order, so B's is used, and the error is symmetric.
    DiffReport swapped = diff_dump_files(pb, pa);
    EXPECT_EQ(swapped.order_source, "B's reftrain.order");
    EXPECT_EQ(names_of(swapped.tensors), order);
    EXPECT_DOUBLE_EQ(swapped.tensors[1].max_rel, 0.2);

    const std::string text = format_diff_report(report, false);
    expect_contains(text, {"first tensor over tolerance: b (max rel 2.00e-01 > rtol 1e-04)", "worst element (1): A 2, B 2.5",
                           "1 more tensors not listed"});
    EXPECT_EQ(text.find("\n    3  c"), std::string::npos) << "rows after the first failure are listed:\n" << text;
    EXPECT_NE(format_diff_report(report, true).find("    3  c "), std::string::npos);
}

TEST_F(DiffTest, WithoutAStoredOrderWalksTheFileLayoutAndWarns) {
    std::string pa = write("a.safetensors", {{"z", {1}, {1}}, {"y", {1}, {1}}});
    std::string pb = write("b.safetensors", {{"y", {1}, {1}}, {"z", {1}, {1}}});
    DiffReport report = diff_dump_files(pa, pb);
    EXPECT_EQ(names_of(report.tensors), (std::vector<std::string>{"z", "y"}));
    EXPECT_EQ(report.order_source, "A's file layout");
    ASSERT_EQ(report.warnings.size(), 1u);
    expect_contains(report.warnings[0], {"reftrain.order", "need not be execution order"});
    EXPECT_EQ(report.exit_status(), 0);
    expect_contains(format_diff_report(report, false), {"warning: neither file", "no tensor over tolerance"});
}

TEST_F(DiffTest, NamesMissingFromTheStoredOrderAreWalkedLastWithAWarning) {
    std::string pa = write("a.safetensors", {{"late", {1}, {1}}, {"x", {1}, {1}}}, {"x"});
    std::string pb = write("b.safetensors", {{"x", {1}, {1}}, {"late", {1}, {1}}, {"b_only", {1}, {0}}});
    DiffReport report = diff_dump_files(pa, pb);
    EXPECT_EQ(names_of(report.tensors), (std::vector<std::string>{"x", "late"}));
    EXPECT_EQ(report.only_in_b, std::vector<std::string>{"b_only"});
    ASSERT_EQ(report.warnings.size(), 1u);
    expect_contains(report.warnings[0], {"2 tensor(s) are not in A's reftrain.order"});
}

TEST_F(DiffTest, TolerancePerDtypeUsesTheCoarserSideAndCanBeOverridden) {
    EXPECT_DOUBLE_EQ(default_tolerance(DType::F64, DType::F64).rtol, 1e-9);
    EXPECT_DOUBLE_EQ(default_tolerance(DType::F32, DType::F64).rtol, 1e-4);
    EXPECT_DOUBLE_EQ(default_tolerance(DType::F64, DType::F32).rtol, 1e-4);
    EXPECT_DOUBLE_EQ(default_tolerance(DType::BF16, DType::F32).rtol, 3e-2);
    EXPECT_DOUBLE_EQ(default_tolerance(DType::F16, DType::F64).rtol, 4e-3);
    EXPECT_DOUBLE_EQ(default_tolerance(DType::I64, DType::I64).rtol, 0.0);
    EXPECT_DOUBLE_EQ(default_tolerance(DType::I64, DType::I64).atol, 0.0);

    // A relative change of 1e-6 of the scale: within f32's tolerance, over f64's.
    const double x = 1.0 + 1e-6;
    std::string a64 = write("a64.safetensors", {{"t", {3}, {1, -2, 0.5}, DType::F64}}, {"t"});
    std::string b64 = write("b64.safetensors", {{"t", {3}, {x, -2, 0.5}, DType::F64}}, {"t"});
    std::string b32 = write("b32.safetensors", {{"t", {3}, {x, -2, 0.5}, DType::F32}}, {"t"});
    DiffReport f64 = diff_dump_files(a64, b64);
    EXPECT_EQ(f64.exit_status(), 1);
    EXPECT_NEAR(f64.tensors[0].max_rel, 5e-7, 1e-12);  // 1e-6 / scale 2
    EXPECT_EQ(diff_dump_files(a64, b32).exit_status(), 0);
    EXPECT_DOUBLE_EQ(diff_dump_files(a64, b32).tensors[0].tolerance.rtol, 1e-4);
    EXPECT_EQ(diff_dump_files(a64, b64, tolerances(1e-6, std::nullopt)).exit_status(), 0);
    EXPECT_EQ(diff_dump_files(a64, b32, tolerances(1e-9, 1e-12)).exit_status(), 1);
    // atol alone carries an all-near-zero tensor (scale 1e-9): rtol is meaningless there.
    std::string tiny_a = write("tiny_a.safetensors", {{"g", {2}, {1e-9, 0}, DType::F64}}, {"g"});
    std::string tiny_b = write("tiny_b.safetensors", {{"g", {2}, {0, 0}, DType::F64}}, {"g"});
    EXPECT_EQ(diff_dump_files(tiny_a, tiny_b).exit_status(), 1);
    EXPECT_EQ(diff_dump_files(tiny_a, tiny_b, tolerances(std::nullopt, 1e-8)).exit_status(), 0);
    expect_contains(format_diff_report(diff_dump_files(tiny_a, tiny_b), false), {"max abs 1.00e-09 > atol 1e-12"});
    // Integer tensors compare exactly.
    std::string ia = write("ia.safetensors", {{"ids", {2}, {3, 4}, DType::I64}}, {"ids"});
    std::string ib = write("ib.safetensors", {{"ids", {2}, {3, 5}, DType::I64}}, {"ids"});
    EXPECT_EQ(diff_dump_files(ia, ib).exit_status(), 1);
    EXPECT_EQ(diff_dump_files(ia, ia).exit_status(), 0);
    // bf16 on one side: the bf16 rounding of 1/3 (0.333984375) passes, a 10% change does not.
    std::string exact = write("exact.safetensors", {{"w", {2}, {1.0 / 3, 1}, DType::F64}}, {"w"});
    std::string rounded = write("rounded.safetensors", {{"w", {2}, {1.0 / 3, 1}, DType::BF16}}, {"w"});
    std::string off = write("off.safetensors", {{"w", {2}, {1.0 / 3 + 0.1, 1}, DType::BF16}}, {"w"});
    DiffReport bf16 = diff_dump_files(exact, rounded);
    EXPECT_EQ(bf16.tensors[0].dtype_b, DType::BF16);
    EXPECT_EQ(bf16.exit_status(), 0);
    EXPECT_GT(bf16.tensors[0].max_abs, 0.0);
    EXPECT_EQ(diff_dump_files(exact, off).exit_status(), 1);
}

TEST_F(DiffTest, ShapeMismatchIsADifferenceButUnitDimensionsAreNot) {
    std::vector<std::string> order = {"loss", "m", "after"};
    std::string pa = write("a.safetensors", {{"loss", {}, {2.5}}, {"m", {2, 3}, {1, 2, 3, 4, 5, 6}}, {"after", {1}, {0}}}, order);
    std::string pb = write("b.safetensors", {{"loss", {1}, {2.5}}, {"m", {3, 2}, {1, 2, 3, 4, 5, 6}}, {"after", {1}, {9}}});
    DiffReport report = diff_dump_files(pa, pb);
    ASSERT_EQ(report.tensors.size(), 3u);
    EXPECT_TRUE(report.tensors[0].ok()) << report.tensors[0].verdict();  // () vs (1,)
    EXPECT_EQ(report.tensors[1].status, TensorStatus::ShapeMismatch);
    EXPECT_EQ(report.first_failure(), 1);
    EXPECT_EQ(report.tensors[1].verdict(), "shape (2, 3) in A vs (3, 2) in B");
    expect_contains(format_diff_report(report, false), {"first tensor over tolerance: m (shape (2, 3) in A vs (3, 2) in B)"});
}

TEST_F(DiffTest, NamesOnOneSideAreListedAndCountOnlyWhenStrict) {
    std::string pa = write("a.safetensors", {{"shared", {2}, {1, 2}}, {"a_only", {1}, {0}}}, {"shared", "a_only"});
    std::string pb = write("b.safetensors", {{"b_only", {1}, {0}}, {"shared", {2}, {1, 2}}});
    DiffReport report = diff_dump_files(pa, pb);
    EXPECT_EQ(report.only_in_a, std::vector<std::string>{"a_only"});
    EXPECT_EQ(report.only_in_b, std::vector<std::string>{"b_only"});
    EXPECT_EQ(report.exit_status(), 0);
    expect_contains(format_diff_report(report, false),
                    {"1 tensor(s) only in A: a_only", "1 tensor(s) only in B: b_only", "no tensor over tolerance"});
    DiffOptions strict_options;
    strict_options.strict = true;
    DiffReport strict = diff_dump_files(pa, pb, strict_options);
    EXPECT_EQ(strict.exit_status(), 1);
    expect_contains(format_diff_report(strict, false), {"--strict"});
}

TEST_F(DiffTest, NonFiniteValuesDifferUnlessTheSameOnBothSides) {
    const double nan = std::nan(""), inf = INFINITY;
    std::string pa = write("a.safetensors", {{"same", {3}, {nan, inf, 1}}, {"t", {3}, {1, nan, 2}}}, {"same", "t"});
    std::string pb = write("b.safetensors", {{"same", {3}, {nan, inf, 1}}, {"t", {3}, {1, 5, 2}}});
    DiffReport report = diff_dump_files(pa, pb);
    EXPECT_TRUE(report.tensors[0].ok());
    EXPECT_EQ(report.tensors[0].nonfinite_in_both, 2);
    EXPECT_EQ(report.tensors[1].status, TensorStatus::OverTolerance);
    EXPECT_EQ(report.tensors[1].nonfinite_mismatches, 1);
    EXPECT_EQ(report.tensors[1].worst_index, std::vector<int64_t>{1});
    EXPECT_TRUE(std::isinf(report.tensors[1].max_abs));
    expect_contains(report.tensors[1].verdict(), {"1 NaN/Inf"});
    // Even with huge tolerances an Inf error stays over.
    EXPECT_EQ(diff_dump_files(pa, pb, tolerances(1e30, 1e30)).exit_status(), 1);
}

TEST_F(DiffTest, AllZeroTensorsAndMultiDimensionalWorstIndex) {
    std::string pa = write("a.safetensors", {{"z", {2, 2}, {0, 0, 0, 0}}, {"m", {2, 3}, {0, 0, 0, 0, 0, 1}}}, {"z", "m"});
    std::string pb = write("b.safetensors", {{"z", {2, 2}, {0, 0, 0, 0}}, {"m", {2, 3}, {0, 0, 0, 0, 0, 2}}});
    DiffReport report = diff_dump_files(pa, pb);
    EXPECT_TRUE(report.tensors[0].ok());
    EXPECT_EQ(report.tensors[0].max_rel, 0.0);
    EXPECT_EQ(report.tensors[1].worst_index, (std::vector<int64_t>{1, 2}));
    EXPECT_DOUBLE_EQ(report.tensors[1].a_at_worst, 1.0);
    EXPECT_DOUBLE_EQ(report.tensors[1].b_at_worst, 2.0);
}

TEST_F(DiffTest, UnreadableInputThrowsNamingTheFile) {
    std::string good = write("good.safetensors", {{"t", {1}, {1}}}, {"t"});
    std::string other = write("other.safetensors", {{"u", {1}, {1}}}, {"u"});
    expect_error([&] { diff_dump_files(good, (dir_ / "absent.safetensors").string()); }, {"absent.safetensors"});
    expect_error([&] { diff_dump_files(good, other); }, {"share no tensor name", "good.safetensors", "other.safetensors"});

    std::vector<float> one = {1};
    std::string bad_order = (dir_ / "bad_order.safetensors").string();
    save_safetensors(bad_order, {Tensor(one.data(), DType::F32, {1}, "t")}, {{kDumpOrderKey, "{\"t\": 1}"}});
    expect_error([&] { diff_dump_files(bad_order, good); }, {"bad_order.safetensors", "reftrain.order", "JSON list"});
    std::string bad_json = (dir_ / "bad_json.safetensors").string();
    save_safetensors(bad_json, {Tensor(one.data(), DType::F32, {1}, "t")}, {{kDumpOrderKey, "[\"t\""}});
    expect_error([&] { diff_dump_files(bad_json, good); }, {"bad_json.safetensors", "not valid JSON"});
    std::string not_strings = (dir_ / "not_strings.safetensors").string();
    save_safetensors(not_strings, {Tensor(one.data(), DType::F32, {1}, "t")}, {{kDumpOrderKey, "[\"t\", 3]"}});
    expect_error([&] { diff_dump_files(not_strings, good); }, {"not_strings.safetensors", "holds 3"});
}

TEST_F(DiffTest, OrderMetadataRoundTrips) {
    std::vector<std::string> names = {"model.embed_tokens.weight", "grad:lm_head.weight", "quote\"name"};
    std::vector<float> one = {1};
    std::string p = (dir_ / "o.safetensors").string();
    save_safetensors(p, {Tensor(one.data(), DType::F32, {1}, "x")}, {{kDumpOrderKey, encode_dump_order(names)}});
    std::optional<std::vector<std::string>> back = read_dump_order(SafetensorsFile::open(p));
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(*back, names);
    std::string none = write("none.safetensors", {{"x", {1}, {1}}});
    EXPECT_FALSE(read_dump_order(SafetensorsFile::open(none)).has_value());
}


// ---- in-memory dumps: coverage, suspicious rows, localisation, layouts

NamedArray array_of(const std::string& name, std::vector<int64_t> shape, const std::function<double(int64_t)>& f,
                    DType dtype = DType::F32) {
    NamedArray a{name, dtype, shape, {}};
    for (int64_t i = 0; i < a.numel(); ++i) a.values.push_back(f(i));
    return a;
}

Dump dump_of(std::vector<NamedArray> tensors, bool with_order = true) {
    Dump d;
    d.path = "mem";
    if (with_order) {
        d.order.emplace();
        for (const NamedArray& t : tensors) d.order->push_back(t.name);
    }
    d.tensors = std::move(tensors);
    d.reindex();
    return d;
}

// A small "model": a parameter, its gradient, and an activation chain.
std::vector<NamedArray> tiny_step(double act_error = 0.0, int64_t bad_position = -1) {
    auto smooth = [](int64_t i) { return std::sin(0.37 * static_cast<double>(i)) + 1.5; };
    return {array_of("w.weight", {3, 2}, smooth),
            array_of("model.embed_tokens.out", {2, 4, 3}, smooth),
            array_of("model.layers.0.input_layernorm.out", {2, 4, 3}, smooth),
            array_of("model.layers.0.mlp.act", {2, 4, 3},
                     [&](int64_t i) {
                         const int64_t t = (i / 3) % 4;
                         return smooth(i) * (1.0 + ((bad_position < 0 || t == bad_position) ? act_error : 0.0));
                     }),
            array_of("logits", {2, 4, 3}, smooth),
            array_of("grad:w.weight", {3, 2}, smooth)};
}

TEST(DiffCoverage, AMissingParameterOrGradientOrNoActivationIsInsufficientUnlessPartial) {
    DiffReport full = diff_dumps(dump_of(tiny_step()), dump_of(tiny_step()));
    EXPECT_EQ(full.exit_status(), 0);
    EXPECT_TRUE(full.coverage.sufficient());
    EXPECT_EQ(full.coverage.params, 1);
    EXPECT_EQ(full.coverage.activations, 2);

    std::vector<NamedArray> without_grad = tiny_step();
    without_grad.pop_back();
    DiffReport thin = diff_dumps(dump_of(tiny_step()), dump_of(without_grad));
    EXPECT_EQ(thin.exit_status(), 3);
    ASSERT_EQ(thin.coverage.gaps.size(), 1u);
    expect_contains(thin.coverage.gaps[0], {"1 parameter gradient(s) of A have no counterpart: grad:w.weight"});
    expect_contains(format_diff_report(thin, false), {"insufficient coverage", "--partial"});
    DiffOptions partial;
    partial.partial = true;
    EXPECT_EQ(diff_dumps(dump_of(tiny_step()), dump_of(without_grad), partial).exit_status(), 0);

    // Only the embedding and the logits shared: no activation in between was compared.
    std::vector<NamedArray> ends = tiny_step();
    ends.erase(ends.begin() + 2, ends.begin() + 4);
    DiffReport hollow = diff_dumps(dump_of(tiny_step()), dump_of(ends));
    EXPECT_EQ(hollow.exit_status(), 3);
    expect_contains(hollow.coverage.gaps.back(), {"no activation between the embedding and the logits"});
    // A difference outranks thin coverage: exit 1, not 3.
    std::vector<NamedArray> wrong = without_grad;
    wrong[4].values[0] += 1.0;
    EXPECT_EQ(diff_dumps(dump_of(tiny_step()), dump_of(wrong)).exit_status(), 1);
}

TEST(DiffSuspicious, AJumpFarAboveTheFloorIsFlaggedAndRoundOffIsNot) {
    // 3e-5 relative: within f32's 1e-4, 30x the least floor 1e-6.
    DiffReport jump = diff_dumps(dump_of(tiny_step()), dump_of(tiny_step(3e-5)));
    EXPECT_EQ(jump.first_failure(), -1);
    ASSERT_EQ(jump.first_flagged(), 3);
    EXPECT_TRUE(jump.tensors[3].suspicious);
    EXPECT_EQ(jump.exit_status(), 1);
    expect_contains(format_diff_report(jump, false), {"first suspicious tensor: model.layers.0.mlp.act", "SUSPICIOUS"});
    // Round-off (5e-7) is not; nor is the same jump with the test off.
    EXPECT_EQ(diff_dumps(dump_of(tiny_step()), dump_of(tiny_step(5e-7))).exit_status(), 0);
    DiffOptions off;
    off.jump = 0;
    EXPECT_EQ(diff_dumps(dump_of(tiny_step()), dump_of(tiny_step(3e-5)), off).exit_status(), 0);
    // A floor set by earlier tensors carries: 3e-5 after tensors already at 1e-5 is only 3x.
    std::vector<NamedArray> a = tiny_step(), b = tiny_step(3e-5);
    b[2].values[5] *= 1.0 + 1e-5;
    EXPECT_EQ(diff_dumps(dump_of(a), dump_of(b)).exit_status(), 0);
}

TEST(DiffLocalisation, SignaturesAlongPositionsHeadsAndRows) {
    auto base = [](int64_t i) { return std::cos(0.11 * static_cast<double>(i)) + 2.0; };
    // (B=2, T=5, H=4, D=2) rotary tensor wrong from position 1 on, growing: RoPE.
    auto rotary = [&](double scale) {
        return array_of("model.layers.0.self_attn.q_rotary", {2, 5, 4, 2}, [&](int64_t i) {
            const int64_t t = (i / 8) % 5;
            return base(i) + scale * static_cast<double>(t);
        });
    };
    std::vector<NamedArray> a = {array_of("x.out", {2, 5, 8}, base), rotary(0.0)};
    std::vector<NamedArray> b = {array_of("x.out", {2, 5, 8}, base), rotary(0.1)};
    DiffReport rope = diff_dumps(dump_of(a), dump_of(b));
    ASSERT_TRUE(rope.localisation);
    expect_contains(rope.localisation->signature, {"position 0 agrees"});
    expect_contains(rope.localisation->cause, {"RoPE", "rotate-half"});
    // The same at rounding level (1e-8 per position): float32 vs exact angles.
    std::vector<NamedArray> b64 = {array_of("x.out", {2, 5, 8}, base), rotary(1e-8)};
    for (auto& t : a) t.dtype = DType::F64;
    for (auto& t : b64) t.dtype = DType::F64;
    DiffReport angles = diff_dumps(dump_of(a), dump_of(b64));
    ASSERT_TRUE(angles.localisation);
    expect_contains(angles.localisation->cause, {"float32 vs exact RoPE angles", "--rope-angles exact"});

    // (B, H=4, T=3, T) attention probabilities wrong on heads 1 and 2 only: head grouping.
    auto probs = [&](bool swap) {
        return array_of("model.layers.0.self_attn.attn_probs", {1, 4, 3, 3}, [&](int64_t i) {
            const int64_t h = i / 9, q = (i / 3) % 3, k = i % 3;
            if (k > q) return 0.0;
            const double v = 1.0 / static_cast<double>(q + 1) + 0.05 * static_cast<double>(k - q) * (h + 1);
            return swap && (h == 1 || h == 2) ? v + 0.1 * static_cast<double>(k) : v;
        });
    };
    DiffReport heads = diff_dumps(dump_of({array_of("x.out", {1, 3, 2}, base), probs(false)}),
                                  dump_of({array_of("x.out", {1, 3, 2}, base), probs(true)}));
    ASSERT_TRUE(heads.localisation);
    expect_contains(heads.localisation->signature, {"heads 0, 3 agree, heads 1-2 do not"});
    expect_contains(heads.localisation->cause, {"repeat_interleave"});

    // Weight above the diagonal in B: a causal leak, named directly.
    NamedArray leak = probs(false);
    leak.values[1] = 0.25;  // head 0, query 0, key 1
    DiffReport causal = diff_dumps(dump_of({array_of("x.out", {1, 3, 2}, base), probs(false)}),
                                   dump_of({array_of("x.out", {1, 3, 2}, base), leak}));
    ASSERT_TRUE(causal.localisation);
    expect_contains(causal.localisation->signature, {"query 0 weight on key 1"});
    expect_contains(causal.localisation->cause, {"causal mask"});

    // One position only (a 3-D activation): a shift or a mask.
    DiffReport shift = diff_dumps(dump_of(tiny_step()), dump_of(tiny_step(0.5, 2)));
    ASSERT_TRUE(shift.localisation);
    expect_contains(shift.localisation->signature, {"only position 2 differs"});

    // Only batch row 1: rows mixing.
    std::vector<NamedArray> rows = tiny_step();
    for (int64_t i = 12; i < 24; ++i) rows[3].values[i] += 0.5;
    DiffReport mixing = diff_dumps(dump_of(tiny_step()), dump_of(rows));
    ASSERT_TRUE(mixing.localisation);
    expect_contains(mixing.localisation->signature, {"batch rows 0 agree, rows 1 do not"});
    expect_contains(format_diff_report(mixing, false), {"where model.layers.0.mlp.act differs", "batch: 0:", "likely cause:"});
}

TEST(DiffLayout, MergedDimensionsCompareAndPermutedOnesDoNot) {
    auto f = [](int64_t i) { return static_cast<double>(i % 7) - 3.0; };
    DiffOptions partial;
    partial.partial = true;
    // (B, T, H*D) against (B, T, H, D): the same elements in the same order.
    DiffReport merged = diff_dumps(dump_of({array_of("q.out", {2, 3, 4, 2}, f)}), dump_of({array_of("q.out", {2, 3, 8}, f)}),
                                   partial);
    EXPECT_EQ(merged.tensors[0].status, TensorStatus::Ok);
    // (B, H, T, D) against (B, T, H, D) with H != T: another layout, a shape mismatch.
    DiffReport permuted = diff_dumps(dump_of({array_of("q.out", {2, 3, 4, 2}, f)}),
                                     dump_of({array_of("q.out", {2, 4, 3, 2}, f)}), partial);
    EXPECT_EQ(permuted.tensors[0].status, TensorStatus::ShapeMismatch);
    ASSERT_TRUE(permuted.localisation);
    expect_contains(permuted.localisation->cause, {"permute"});
}

TEST(DiffTolerance, AGradientThatCancelsToNearZeroIsJudgedAtTheBackwardPassScale) {
    // The largest gradient is ~2; grad:b.weight is ~3e-7 everywhere: pure cancellation noise.
    auto big = [](int64_t i) { return 2.0 * std::sin(0.3 * static_cast<double>(i)); };
    auto tiny = [](double noise) {
        return [noise](int64_t i) { return 3e-7 * std::cos(static_cast<double>(i)) + (i == 2 ? noise : 0.0); };
    };
    auto step = [&](double noise) {
        std::vector<NamedArray> t = tiny_step();
        t.push_back(array_of("b.weight", {4}, big));
        t.push_back(array_of("grad:b.weight", {4}, tiny(noise)));
        t.push_back(array_of("grad:c.weight", {6}, big));
        t.insert(t.begin(), array_of("c.weight", {6}, big));
        return t;
    };
    // 3e-7 of rounding (1.5e-7 of the largest gradient): within rtol/100 * 2 = 2e-6.
    DiffReport noise = diff_dumps(dump_of(step(0.0)), dump_of(step(3e-7)));
    EXPECT_EQ(noise.exit_status(), 0) << format_diff_report(noise, true);
    // 1e-5 of the largest gradient is a real difference, over tolerance.
    DiffReport real = diff_dumps(dump_of(step(0.0)), dump_of(step(2e-5)));
    EXPECT_EQ(real.exit_status(), 1);
    EXPECT_EQ(real.tensors[real.first_failure()].name, "grad:b.weight");
}

TEST(DiffGrouping, OneSidedNamesGroupByLayer) {
    EXPECT_EQ(group_names_by_layer({"model.layers.0.self_attn.q_rotary", "model.layers.1.self_attn.q_rotary",
                                    "model.layers.3.self_attn.q_rotary", "model.norm.rstd", "h.2.x"}),
              (std::vector<std::string>{"model.layers.{0-1, 3}.self_attn.q_rotary", "model.norm.rstd", "h.2.x"}));
}

}  // namespace
}  // namespace reftrain

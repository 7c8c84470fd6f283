// tests/test_report.cpp — what `reftrain report` is built from: the tracer's per-step summary
// (debug/tracer_summary.h), the SVG charts (debug/chart.h) and the page itself (debug/report.h), on
// metrics files written the way the trainer writes them. The page in a real browser is
// tests/python/test_report_cli.py's business.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "debug/chart.h"
#include "debug/report.h"
#include "debug/tracer_summary.h"
#include "kernels/error.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

size_t count(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

TEST(TracerSummary, GroupsStripTheLayerIndexAndKeepGrad) {
    std::string group;
    int64_t layer = 0;
    tracer_group_of("model.layers.3.mlp.down_proj.out", &group, &layer);
    EXPECT_EQ(group, "mlp.down_proj.out");
    EXPECT_EQ(layer, 3);
    tracer_group_of("grad:model.layers.12.self_attn.q_proj.weight", &group, &layer);
    EXPECT_EQ(group, "grad:self_attn.q_proj.weight");
    EXPECT_EQ(layer, 12);
    tracer_group_of("model.embed_tokens.out", &group, &layer);
    EXPECT_EQ(group, "model.embed_tokens.out");
    EXPECT_EQ(layer, -1);
    tracer_group_of("model.layers.x.mlp.out", &group, &layer);   // not a layer index: its own group
    EXPECT_EQ(group, "model.layers.x.mlp.out");
    EXPECT_EQ(layer, -1);
}

// One frame with two layers of one group, a gradient written twice, and the parameters after the update.
FrameTracer::Frame record_frame(FrameTracer& tracer, float attn_value) {
    std::vector<float> a0(8, 1.0f), a1(8, attn_value), g(8, 2.0f), g2(8, -3.0f), w(8, 70000.0f);
    const Tensor t0(a0.data(), DType::F32, {8}, "model.layers.0.self_attn.o_proj.out");
    const Tensor t1(a1.data(), DType::F32, {8}, "model.layers.1.self_attn.o_proj.out");
    const Tensor tg(g.data(), DType::F32, {8}, "grad:model.layers.1.mlp.up_proj.weight");
    const Tensor tg2(g2.data(), DType::F32, {8}, "grad:model.layers.1.mlp.up_proj.weight");
    const Tensor tw(w.data(), DType::F32, {8}, "model.norm.weight");
    tracer.begin_step(4);
    tracer.record("linear_forward", {&t0});
    tracer.record("linear_forward", {&t1});
    tracer.record("linear_backward", {&tg});
    tracer.record("linear_backward", {&tg2});
    tracer.record("adamw.update", {&tw});
    tracer.end_step();
    return tracer.frame(tracer.frame_count() - 1);
}

TEST(TracerSummary, WorstPerGroupAndLayerAndTheFirstTensorNearItsDtypeLimit) {
    FrameTracer::Options options;
    options.policy = FrameTracer::Policy::skip;
    FrameTracer tracer(options);
    // fp16 compute: 7000 is within 10x of 65504 (6550.4); the parameters at 70000 are fp32 master weights,
    // far from 3.4e38, so they are not the near-overflow tensor even though they are the largest.
    const TracerSummary s = summarize_frame(tracer, record_frame(tracer, 7000.0f), 65504.0);
    EXPECT_EQ(s.step, 4);
    ASSERT_EQ(s.groups.size(), 4u);
    EXPECT_EQ(s.groups[0].group, "self_attn.o_proj.out");
    EXPECT_EQ(s.groups[0].layer, 0);
    EXPECT_DOUBLE_EQ(s.groups[1].abs_max, 7000.0);
    EXPECT_EQ(s.groups[2].group, "grad:mlp.up_proj.weight");
    EXPECT_DOUBLE_EQ(s.groups[2].abs_max, 3.0);   // the worse of its two writes
    EXPECT_EQ(s.groups[3].group, "model.norm.weight");
    EXPECT_EQ(s.groups[3].layer, -1);
    EXPECT_EQ(s.worst_tensor, "model.norm.weight");
    EXPECT_EQ(s.near_overflow_tensor, "model.layers.1.self_attn.o_proj.out");
    EXPECT_DOUBLE_EQ(s.near_overflow_limit, 65504.0);

    const json line = tracer_summary_json(s);
    EXPECT_EQ(line["kind"], "tracer");
    EXPECT_EQ(line["groups"]["self_attn.o_proj.out"]["layers"], json({0, 1}));
    EXPECT_EQ(line["near_overflow"]["tensor"], "model.layers.1.self_attn.o_proj.out");
}

TEST(TracerSummary, GradientsNearTheLimitAreNotTheRunUp) {
    FrameTracer::Options options;
    options.policy = FrameTracer::Policy::skip;
    FrameTracer tracer(options);
    // A scaled fp16 activation gradient at 60000, then an activation at 7000: the activation is named.
    std::vector<float> g(8, 60000.0f), a(8, 7000.0f);
    const Tensor tg(g.data(), DType::F32, {8}, "grad:model.norm.out");
    const Tensor ta(a.data(), DType::F32, {8}, "model.layers.0.mlp.down_proj.out");
    tracer.begin_step(0);
    tracer.record("rmsnorm_backward", {&tg});
    tracer.record("linear_forward", {&ta});
    tracer.end_step();
    const TracerSummary s = summarize_frame(tracer, tracer.frame(tracer.frame_count() - 1), 65504.0);
    EXPECT_EQ(s.near_overflow_tensor, "model.layers.0.mlp.down_proj.out");
    EXPECT_EQ(s.worst_tensor, "grad:model.norm.out");   // the worst is still the worst, gradient or not
}

TEST(TracerSummary, NothingNearTheLimitGivesNull) {
    FrameTracer::Options options;
    options.policy = FrameTracer::Policy::skip;
    FrameTracer tracer(options);
    const TracerSummary s = summarize_frame(tracer, record_frame(tracer, 6000.0f), 65504.0);   // 6000 < 6550.4
    EXPECT_TRUE(s.near_overflow_tensor.empty());
    EXPECT_TRUE(tracer_summary_json(s)["near_overflow"].is_null());
    // In bf16 or fp32 nothing of this frame is near 3.4e38.
    EXPECT_TRUE(summarize_frame(tracer, record_frame(tracer, 7000.0f), 3.4e38).near_overflow_tensor.empty());
}

TEST(Chart, NonFinitePointsAreMarkedMarksAndThresholdsDrawnTextEscaped) {
    ChartSpec spec{"loss <of> \"run\""};
    ChartLine line{"train & val", "#123456"};
    line.x = {1, 2, 3, 4};
    line.y = {1.0, std::nan(""), 0.5, INFINITY};
    spec.lines = {line};
    spec.marks = {{2.0, "loss.finite"}};
    spec.hlines = {{0.75, "clip"}};
    const std::string svg = svg_chart(spec);
    EXPECT_EQ(count(svg, "class=\"nonfinite\""), 2u);
    EXPECT_NE(svg.find("2 non-finite"), std::string::npos);
    EXPECT_EQ(count(svg, "class=\"mark\""), 1u);
    EXPECT_EQ(count(svg, "class=\"hline\""), 1u);
    EXPECT_NE(svg.find("loss &lt;of&gt; &quot;run&quot;"), std::string::npos);
    EXPECT_NE(svg.find("train &amp; val"), std::string::npos);
    EXPECT_EQ(svg.find("<of>"), std::string::npos);
}

TEST(Chart, HeatmapColoursCellsOnALogScaleAndOutlinesTheMarkedColumn) {
    HeatmapSpec spec{"h", "|x|"};
    spec.rows = {"a", "b"};
    spec.columns = {10, 20, 30};
    spec.values = {{1.0, 10.0, 100.0}, {std::nan(""), 1e4, 1e4}};
    spec.marked_column = 2;
    spec.mark_label = "near overflow";
    const std::string svg = svg_heatmap(spec);
    EXPECT_GE(count(svg, "class=\"cells\""), 3u);   // four levels at least: 1, 10, 100, 1e4
    EXPECT_EQ(count(svg, "class=\"mark\""), 1u);
    EXPECT_NE(svg.find("10k (log scale)"), std::string::npos);   // the legend's top
}

// A run directory written the way the trainer writes one.
fs::path write_run(const std::string& name, const std::vector<json>& lines, const json& config) {
    const fs::path dir = fs::path(testing::scratch_dir("report")) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream metrics(dir / "metrics.jsonl");
    for (const json& l : lines) metrics << l.dump() << "\n";
    if (!config.is_null()) std::ofstream(dir / "run_config.json") << config.dump(2);
    return dir;
}

TEST(Report, TrainingPageHasEveryChartTheInvariantsSamplesAndTheHeatmaps) {
    std::vector<json> lines;
    for (int step = 1; step <= 20; ++step) {
        lines.push_back({{"kind", "train"}, {"step", step}, {"loss", 3.0 / step}, {"lr", 1e-3}, {"tokens", 512},
                         {"supervised_tokens", 100}, {"seconds", 0.01}, {"grad_norm", step == 7 ? 5.0 : 0.5}});
        if (step == 9) lines.push_back({{"kind", "invariant"}, {"step", 9}, {"name", "loss.no_spike"}, {"details", "z=7"}});
        if (step % 10 == 0) {
            lines.push_back({{"kind", "eval"}, {"step", step}, {"val_loss", 1.0}, {"val_tokens", 50}, {"exact_match", 0.5},
                             {"samples", {{{"prompt", "1+1=<b>"}, {"response", "2"}, {"answer", "2"}, {"correct", true}}}}});
            json groups = {{"mlp.out", {{"layers", {0, 1}}, {"abs_max", {1.0, 7000.0}}, {"rms", {0.1, 2.0}}}}};
            lines.push_back({{"kind", "tracer"}, {"step", step}, {"groups", groups},
                             {"worst_tensor", "model.layers.1.mlp.out"}, {"worst_abs_max", 7000.0},
                             {"near_overflow", step == 20 ? json{{"tensor", "model.layers.1.mlp.out"}, {"abs_max", 7000.0},
                                                                 {"limit", 65504.0}}
                                                          : json(nullptr)}});
        }
    }
    lines.push_back({{"kind", "test"}, {"step", 20}, {"exact_match", 0.75}, {"examples", 4}});
    const fs::path dir = write_run("training", lines, {{"train", {{"grad_clip", 1.0}}}, {"model", {{"num_hidden_layers", 2}}}});
    const std::string page = render_run_report(dir.string());
    EXPECT_EQ(page.rfind("<!DOCTYPE html>", 0), 0u);
    EXPECT_GE(count(page, "<svg class=\"chart\""), 5u);   // loss, exact match, lr, grad norm, throughput
    EXPECT_EQ(count(page, "<svg class=\"heatmap\""), 2u);
    EXPECT_NE(page.find("1 of 20 clipped"), std::string::npos);
    EXPECT_NE(page.find("train.grad_clip = 1"), std::string::npos);
    EXPECT_GE(count(page, "class=\"mark\""), 2u);          // the invariant on loss and grad norm, the heat map's column
    EXPECT_NE(page.find("loss.no_spike"), std::string::npos);
    EXPECT_NE(page.find("1+1=&lt;b&gt;"), std::string::npos);   // a sample, escaped
    EXPECT_NE(page.find("step 20: model.layers.1.mlp.out reached 7000, within 10x of its dtype&#39;s 65504"), std::string::npos);
    EXPECT_NE(page.find("exact match 75% on 4"), std::string::npos);
    EXPECT_NE(page.find("grad_clip"), std::string::npos);   // the config
    EXPECT_EQ(page.find("<script"), std::string::npos);
    EXPECT_EQ(page.find("http://"), page.find("http://www.w3.org/2000/svg"));   // no network but the SVG namespace
}

TEST(Report, UpdateLinesOfPpoAndGrpoGetAChartPerField) {
    std::vector<json> lines;
    for (int u = 1; u <= 5; ++u) {
        lines.push_back({{"update", u}, {"mean_return", 10.0 * u}, {"approx_kl", 0.01 * u}, {"clip_fraction", 0.1 / u},
                         {"entropy", 0.7 - 0.01 * u}, {"explained_variance", u % 2 ? -0.5 : 0.5}, {"epochs", 4},
                         {"episode_return", u == 3 ? json(nullptr) : json(20.0 * u)}, {"seconds", 0.1 * u}});
    }
    const fs::path dir = write_run("ppo", lines, json());
    const std::string page = render_run_report(dir.string());
    EXPECT_GE(count(page, "<svg class=\"chart\""), 5u);
    for (const char* field : {"mean_return", "approx_kl", "clip_fraction", "entropy", "explained_variance"}) {
        EXPECT_NE(page.find(std::string("<title>") + field + "</title>"), std::string::npos) << field;
    }
    EXPECT_NE(page.find("No run_config.json"), std::string::npos);
    EXPECT_NE(page.find("The same in every line: epochs = 4"), std::string::npos);   // a constant is text, not a chart
    EXPECT_EQ(page.find("<title>epochs</title>"), std::string::npos);
    EXPECT_EQ(page.find("class=\"nonfinite\""), std::string::npos);   // a null episode_return is a gap, not a "!"
    EXPECT_EQ(page.find("explained_variance (log)"), std::string::npos);   // crosses zero: a linear axis
}

TEST(Report, FailureScenarioPageShowsBothHalvesWithTheDetectorMarked) {
    const fs::path dir = fs::path(testing::scratch_dir("report")) / "failure";
    fs::remove_all(dir);
    fs::create_directories(dir);
    const json half_bug = {{"curve", {1.0, 2.0, nullptr, 8.0}}, {"loss", json::array()}, {"numbers", json::array({json::array({"max loss", "8"})})},
                           {"detector_fired", true}, {"detector_message", "loss went up"}, {"detector_step", 2}};
    const json half_ok = {{"curve", {1.0, 0.9, 0.8, 0.7}}, {"loss", json::array()}, {"numbers", json::array({json::array({"max loss", "1"})})},
                          {"detector_fired", false}, {"detector_message", ""}, {"detector_step", -1}};
    std::ofstream(dir / "failure.json") << json{{"id", "demo"}, {"title", "a demo"}, {"curve_name", "loss"},
                                                {"with_bug", half_bug}, {"without_bug", half_ok}, {"detector_works", true}}
                                               .dump();
    const std::string page = render_run_report(dir.string());
    EXPECT_EQ(count(page, "<svg class=\"chart\""), 2u);
    EXPECT_NE(page.find("detector fired at step 3"), std::string::npos);
    EXPECT_EQ(count(page, "class=\"mark\""), 1u);          // on the buggy half only
    EXPECT_EQ(count(page, "class=\"nonfinite\""), 1u);     // the null point, marked
    EXPECT_NE(page.find("FIRED"), std::string::npos);
    EXPECT_NE(page.find("silent"), std::string::npos);
}

TEST(Report, AFailureRecordOfTheWrongShapeIsAClearError) {
    const fs::path dir = fs::path(testing::scratch_dir("report")) / "odd_failure";
    fs::create_directories(dir);
    // "numbers" an object instead of [name, value] pairs, a curve of strings: read what can be read, never throw
    // a JSON exception.
    const json half = {{"curve", {"a", "b"}}, {"numbers", {{"max loss", "8"}}}, {"detector_step", "x"}};
    std::ofstream(dir / "failure.json") << json{{"with_bug", half}, {"without_bug", half}}.dump();
    EXPECT_NO_THROW(render_run_report(dir.string()));
    std::ofstream(dir / "failure.json") << "[1, 2]";
    try {
        render_run_report(dir.string());
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("failure.json"), std::string::npos) << e.what();
    }
}

// Found by the fuzzer (tests/fuzz/fuzz_run_metrics.cpp): tokens/seconds past int64 was cast to an integer
// (undefined behaviour); a series whose range is tiny against its values kept the tick loop from moving.
TEST(Report, ExtremeNumbersDrawWithoutOverflowOrHanging) {
    const fs::path dir = write_run("extreme", {{{"kind", "train"}, {"step", 1}, {"loss", 1e10}, {"tokens", 1e300}, {"seconds", 1e-300}},
                                               {{"kind", "train"}, {"step", 2}, {"loss", 1e10 + 1e-5}, {"tokens", 1}, {"seconds", 1}}},
                                   json());
    const std::string page = render_run_report(dir.string());
    EXPECT_NE(page.find("tokens/s over"), std::string::npos);
    EXPECT_GE(count(page, "<svg class=\"chart\""), 3u);
}

// Found by the long fuzz campaign (fuzz_run_metrics, 2026-12-04): a test record's "examples" of 1.8e21
// went through nlohmann's float-to-int64 cast, undefined behaviour (on x86 it printed INT64_MIN). An
// integer field out of its type's range now shows the fallback, as any other odd value does.
TEST(Report, IntegerFieldsOutOfRangeShowTheFallback) {
    for (const json& examples : {json(1.8e21), json(-1e30), json(18446744073709551615ull)}) {
        const fs::path dir = write_run("int_range", {{{"kind", "test"}, {"step", 5}, {"exact_match", 0.5}, {"examples", examples}},
                                                     {{"kind", "train"}, {"step", 1}, {"loss", 2.0}}},
                                       json());
        const std::string page = render_run_report(dir.string());
        EXPECT_NE(page.find("on 0 held-out problems at step 5"), std::string::npos) << examples.dump();
        EXPECT_EQ(page.find("-9223372036854775808"), std::string::npos) << examples.dump();
    }
}

TEST(Report, MissingOrBadMetricsAreClearErrors) {
    const fs::path empty = fs::path(testing::scratch_dir("report")) / "empty";
    fs::create_directories(empty);
    try {
        render_run_report(empty.string());
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("metrics.jsonl"), std::string::npos) << e.what();
    }
    const fs::path bad = write_run("bad", {}, json());
    std::ofstream(bad / "metrics.jsonl") << "{\"kind\":\"train\",\"step\":1}\nnot json\n";
    try {
        render_run_report(bad.string());
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace reftrain

// debug/report.cpp — the run report page (debug/report.h).
#include "debug/report.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <tuple>
#include <type_traits>

#include "debug/chart.h"
#include "debug/run_diff.h"
#include "kernels/error.h"
#include "kernels/json_strict.h"
#include "kernels/safetensors.h"

namespace fs = std::filesystem;

namespace reftrain {

namespace {

using nlohmann::json;

constexpr const char* kBlue = "#1f77b4";
constexpr const char* kOrange = "#ff7f0e";
constexpr const char* kRed = "#d62728";
constexpr const char* kGreen = "#2ca02c";
constexpr const char* kPurple = "#9467bd";

// A number of a record, NaN when the field is missing or null (a skipped step's grad_norm).
double number(const json& values, const std::string& field) {
    const auto it = values.find(field);
    if (it == values.end() || !it->is_number()) return std::nan("");
    return it->get<double>();
}

// A field of a record read as T, or `fallback` when it is missing or of another type: the page shows what it
// can of a file written by another version or by hand, and never throws over one odd value.
template <typename T>
T field(const json& object, const char* key, T fallback) {
    if (!object.is_object()) return fallback;
    const auto it = object.find(key);
    if (it == object.end()) return fallback;
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
        // nlohmann converts a float or a large unsigned to an integer with a plain cast, which is undefined
        // behaviour out of range (fuzz_run_metrics: "examples": 1.8e21); such a value is "odd" too.
        if (it->is_number_float()) {
            const double v = it->template get<double>();
            const bool fits = v >= static_cast<double>(std::numeric_limits<T>::min()) &&
                              v < static_cast<double>(std::numeric_limits<T>::max());  // max rounds up to 2^k
            return fits ? static_cast<T>(v) : fallback;
        }
        if (it->is_number_unsigned() &&
            it->template get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
            return fallback;
        }
    }
    try {
        return it->template get<T>();
    } catch (const json::exception&) {
        return fallback;
    }
}

bool has_number(const json& values, const std::string& field) {
    const auto it = values.find(field);
    return it != values.end() && (it->is_number() || it->is_null());
}

// The records of one kind, in file order.
std::vector<const MetricsRecord*> of_kind(const RunMetrics& metrics, const std::string& kind) {
    std::vector<const MetricsRecord*> out;
    for (const MetricsRecord& r : metrics.records) {
        if (r.kind == kind) out.push_back(&r);
    }
    return out;
}

ChartLine line_of(const std::vector<const MetricsRecord*>& records, const std::string& field, const std::string& name,
                  const std::string& color, double scale = 1.0) {
    ChartLine line;
    line.name = name;
    line.color = color;
    for (const MetricsRecord* r : records) {
        if (!has_number(r->values, field)) continue;
        line.x.push_back(static_cast<double>(r->step));
        line.y.push_back(number(r->values, field) * scale);
    }
    return line;
}

// A log axis when every finite value is positive and they span more than two decades (a series that
// crosses zero, like a policy loss or an explained variance, keeps a linear axis: a log one would drop
// half of it).
bool wants_log(const std::vector<ChartLine>& lines) {
    double lo = INFINITY, hi = 0.0;
    for (const ChartLine& l : lines) {
        for (const double v : l.y) {
            if (!std::isfinite(v)) continue;
            if (v <= 0.0) return false;
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
    }
    return hi > 0.0 && hi / lo > 100.0;
}

// The fields a person looks at first in an RL run, in this order; any other follows in file order.
int field_rank(const std::string& field) {
    static const std::vector<std::string> first = {
        "mean_return_last_100", "episode_return", "exact_match", "accuracy", "reward_mean", "loss", "policy_loss",
        "value_loss", "approx_kl_k1", "approx_kl_k3", "kl_k1", "kl_k3", "kl_measured", "clip_fraction", "entropy",
        "explained_variance", "zero_advantage_fraction", "grad_norm", "learning_rate", "lr"};
    const auto it = std::find(first.begin(), first.end(), field);
    return it == first.end() ? static_cast<int>(first.size()) : static_cast<int>(it - first.begin());
}

// The resolved config: RUN_DIR/run_config.json, else the latest checkpoint's run.json; null if neither.
json read_config(const fs::path& run_dir, std::string* source) {
    std::vector<fs::path> candidates = {run_dir / "run_config.json"};
    std::ifstream latest(run_dir / "checkpoints" / "latest");
    std::string name;
    if (latest >> name) candidates.push_back(run_dir / "checkpoints" / name / "run.json");
    for (const fs::path& path : candidates) {
        if (!fs::exists(path)) continue;
        *source = path.string();
        return read_json_file(path.string(), "run config");
    }
    return json();
}

std::string page_head(const std::string& title) {
    return "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>" + html_escape(title) +
           "</title>\n<style>\n"
           "body{font-family:sans-serif;margin:20px 28px;color:#222;background:#fafafa;max-width:1500px}\n"
           "h1{font-size:20px;margin:0 0 6px}h2{font-size:16px;margin:26px 0 8px;border-bottom:1px solid #ccc;padding-bottom:3px}\n"
           ".grid{display:flex;flex-wrap:wrap;gap:10px}.grid svg{border:1px solid #ddd;background:white}\n"
           "table{border-collapse:collapse;font-size:12px;background:white}td,th{border:1px solid #ddd;padding:3px 7px;"
           "text-align:left;vertical-align:top}th{background:#f0f0f0}\n"
           ".ok{color:#2ca02c;font-weight:bold}.bad{color:#d62728;font-weight:bold}.note{color:#555;font-size:13px}\n"
           "pre{background:white;border:1px solid #ddd;padding:8px;font-size:11px;max-height:420px;overflow:auto}\n"
           ".summary td:first-child{color:#555}.heat{overflow-x:auto;background:white;border:1px solid #ddd}\n"
           "</style></head><body>\n";
}

// --- the sections -------------------------------------------------------------------------------------

struct Page {
    std::ostringstream html;
    std::vector<ChartMark> invariant_marks;   // every invariant warning, for the training charts
};

void summary_section(Page& page, const RunMetrics& metrics, const json& config, const std::string& run_dir) {
    std::map<std::string, int64_t> kinds;
    for (const MetricsRecord& r : metrics.records) ++kinds[r.kind];
    const auto train = of_kind(metrics, "train");
    const auto tests = of_kind(metrics, "test");
    page.html << "<table class=\"summary\">\n<tr><td>run directory</td><td>" << html_escape(run_dir) << "</td></tr>\n";
    page.html << "<tr><td>metrics</td><td>" << html_escape(metrics.path) << ": " << metrics.records.size() << " lines (";
    bool first = true;
    for (const auto& [kind, n] : kinds) {
        page.html << (first ? "" : ", ") << n << " " << html_escape(kind);
        first = false;
    }
    page.html << ")</td></tr>\n";
    if (!train.empty() && metrics.indexed_by_update) {
        page.html << "<tr><td>updates logged</td><td>" << train.front()->step << " to " << train.back()->step
                  << "</td></tr>\n";
    } else if (!train.empty()) {
        page.html << "<tr><td>steps logged</td><td>" << train.front()->step << " to " << train.back()->step << "</td></tr>\n";
        double tokens = 0, seconds = 0;
        int64_t skipped = 0;
        for (const MetricsRecord* r : train) {
            const double t = number(r->values, "tokens"), s = number(r->values, "seconds");
            if (std::isfinite(t) && std::isfinite(s)) tokens += t, seconds += s;
            skipped += field(r->values, "skipped", false) ? 1 : 0;
        }
        if (seconds > 0) {
            page.html << "<tr><td>throughput</td><td>" << short_number(tokens / seconds) << " tokens/s over "
                      << short_number(seconds) << " s of steps</td></tr>\n";
        }
        page.html << "<tr><td>skipped steps</td><td>" << skipped << "</td></tr>\n";
    }
    for (const MetricsRecord* r : tests) {
        page.html << "<tr><td>test</td><td>exact match " << short_number(100.0 * number(r->values, "exact_match")) << "% on "
                  << field(r->values, "examples", int64_t{0}) << " held-out problems at step " << r->step << "</td></tr>\n";
    }
    if (config.is_object() && config.contains("model") && config["model"].is_object()) {
        const json& m = config["model"];
        page.html << "<tr><td>model</td><td>" << field(m, "num_hidden_layers", 0) << " layers, hidden "
                  << field(m, "hidden_size", 0) << ", heads " << field(m, "num_attention_heads", 0) << "/"
                  << field(m, "num_key_value_heads", 0) << ", vocab " << field(m, "vocab_size", 0) << "</td></tr>\n";
    }
    page.html << "</table>\n";
}

std::vector<ChartMark> invariant_marks(const RunMetrics& metrics) {
    std::vector<ChartMark> marks;
    for (const MetricsRecord* r : of_kind(metrics, "invariant")) {
        marks.push_back({static_cast<double>(r->step), field(r->values, "name", std::string("invariant")), kOrange});
    }
    return marks;
}

void invariant_section(Page& page, const RunMetrics& metrics) {
    const auto events = of_kind(metrics, "invariant");
    if (events.empty()) return;
    page.html << "<h2>Invariant warnings (" << events.size() << ")</h2>\n<p class=\"note\">Each is a dashed orange line "
              << "on the training charts; docs/invariants.md explains every name.</p>\n<table class=\"invariants\">"
              << "<tr><th>step</th><th>invariant</th><th>details</th></tr>\n";
    const size_t shown = std::min<size_t>(events.size(), 40);
    for (size_t i = 0; i < shown; ++i) {
        const MetricsRecord* r = events[i];
        page.html << "<tr><td>" << r->step << "</td><td>" << html_escape(field(r->values, "name", std::string())) << "</td><td>"
                  << html_escape(field(r->values, "details", std::string())) << "</td></tr>\n";
    }
    page.html << "</table>\n";
    if (shown < events.size()) page.html << "<p class=\"note\">... and " << events.size() - shown << " more in metrics.jsonl.</p>\n";
}

void training_section(Page& page, const RunMetrics& metrics, const json& config) {
    const auto train = of_kind(metrics, "train");
    const auto evals = of_kind(metrics, "eval");
    const auto tests = of_kind(metrics, "test");
    page.html << "<h2>Training</h2>\n<div class=\"grid\">\n";

    ChartSpec loss{"loss"};
    loss.y_label = "cross-entropy";
    loss.lines = {line_of(train, "loss", "train loss", kBlue), line_of(evals, "val_loss", "val loss", kOrange)};
    loss.lines[1].dots = true;
    loss.log_y = wants_log(loss.lines);
    loss.marks = page.invariant_marks;
    page.html << svg_chart(loss);

    ChartLine em = line_of(evals, "exact_match", "val", kGreen, 100.0);
    if (!em.x.empty() || !tests.empty()) {
        ChartSpec spec{"exact match"};
        spec.y_label = "% of problems";
        spec.y_min = 0.0;
        spec.y_max = 100.0;
        ChartLine test = line_of(tests, "exact_match", "test", kRed, 100.0);
        test.dots = true;
        spec.lines = {em, test};
        page.html << svg_chart(spec);
    }

    ChartSpec lr{"learning rate"};
    lr.y_label = "lr";
    lr.lines = {line_of(train, "lr", "lr", kPurple)};
    page.html << svg_chart(lr);

    // Pre-clip gradient norm, the threshold, and every step it was clipped.
    ChartSpec gnorm{"gradient norm (before clipping)"};
    gnorm.y_label = "global L2 norm";
    gnorm.lines = {line_of(train, "grad_norm", "grad norm", kBlue)};
    double clip = 0.0;
    if (config.is_object() && config.contains("train") && config["train"].is_object()) {
        clip = field(config["train"], "grad_clip", 0.0);
    }
    if (clip > 0.0) {
        ChartLine clipped{"clipped steps", kRed};
        clipped.dots = true;
        for (size_t i = 0; i < gnorm.lines[0].x.size(); ++i) {
            if (gnorm.lines[0].y[i] > clip) {
                clipped.x.push_back(gnorm.lines[0].x[i]);
                clipped.y.push_back(gnorm.lines[0].y[i]);
            }
        }
        gnorm.title += ": " + std::to_string(clipped.x.size()) + " of " + std::to_string(gnorm.lines[0].x.size()) + " clipped";
        gnorm.hlines.push_back({clip, "train.grad_clip = " + short_number(clip)});
        gnorm.lines.push_back(clipped);
    }
    gnorm.log_y = wants_log(gnorm.lines);
    gnorm.marks = page.invariant_marks;
    page.html << svg_chart(gnorm);

    ChartSpec speed{"throughput"};
    speed.y_label = "tokens/s";
    ChartLine tps{"tokens/s", kGreen};
    for (const MetricsRecord* r : train) {
        const double t = number(r->values, "tokens"), s = number(r->values, "seconds");
        if (!std::isfinite(t) || !std::isfinite(s) || s <= 0.0) continue;
        tps.x.push_back(static_cast<double>(r->step));
        tps.y.push_back(t / s);
    }
    speed.lines = {tps};
    page.html << svg_chart(speed);

    // fp16: the loss scale, and the steps whose update was skipped.
    ChartLine scale = line_of(train, "loss_scale", "loss scale", kBlue);
    std::vector<ChartMark> skipped;
    for (const MetricsRecord* r : train) {
        if (field(r->values, "skipped", false)) skipped.push_back({static_cast<double>(r->step), "skipped step", kRed});
    }
    if (!scale.x.empty() || !skipped.empty()) {
        ChartSpec spec{"loss scale and skipped steps (" + std::to_string(skipped.size()) + " skipped)"};
        spec.y_label = "loss scale";
        spec.log_y = true;
        spec.lines = {scale};
        spec.marks = skipped;
        page.html << svg_chart(spec);
    }
    ChartLine reduce = line_of(train, "allreduce_seconds", "all-reduce", kOrange);
    if (!reduce.x.empty()) {
        ChartSpec spec{"gradient all-reduce per step"};
        spec.y_label = "seconds";
        spec.lines = {reduce, line_of(train, "seconds", "whole step", kBlue)};
        page.html << svg_chart(spec);
    }
    page.html << "</div>\n";
}

void samples_section(Page& page, const RunMetrics& metrics) {
    std::vector<const MetricsRecord*> with_samples;
    for (const MetricsRecord* r : of_kind(metrics, "eval")) {
        if (r->values.contains("samples") && r->values["samples"].is_array() && !r->values["samples"].empty()) {
            with_samples.push_back(r);
        }
    }
    if (with_samples.empty()) return;
    // At most 12 evals, spread over the run (first and last included), 4 samples each: the page stays small.
    std::vector<const MetricsRecord*> chosen;
    const size_t n = with_samples.size(), keep = std::min<size_t>(n, 12);
    for (size_t i = 0; i < keep; ++i) chosen.push_back(with_samples[keep == 1 ? 0 : i * (n - 1) / (keep - 1)]);
    page.html << "<h2>Samples at each eval</h2>\n<p class=\"note\">Greedy answers to held-out problems"
              << (keep < n ? " (" + std::to_string(keep) + " of " + std::to_string(n) + " evals)" : "")
              << ".</p>\n<table class=\"samples\"><tr><th>step</th><th>prompt</th><th>answer given</th><th>expected</th>"
              << "<th></th></tr>\n";
    for (const MetricsRecord* r : chosen) {
        size_t shown = 0;
        for (const json& s : r->values["samples"]) {
            if (!s.is_object() || shown++ >= 4) continue;
            const bool ok = field(s, "correct", false);
            page.html << "<tr><td>" << r->step << "</td><td>" << html_escape(field(s, "prompt", std::string())) << "</td><td>"
                      << html_escape(field(s, "response", std::string())) << "</td><td>"
                      << html_escape(field(s, "answer", std::string())) << "</td><td class=\"" << (ok ? "ok\">correct" : "bad\">wrong")
                      << "</td></tr>\n";
        }
    }
    page.html << "</table>\n";
}

void tracer_section(Page& page, const RunMetrics& metrics) {
    // By step: a run-up written when the tracer tripped follows the due line of a later step in the file.
    auto lines = of_kind(metrics, "tracer");
    std::stable_sort(lines.begin(), lines.end(), [](const MetricsRecord* a, const MetricsRecord* b) { return a->step < b->step; });
    if (lines.empty()) return;
    // Rows: every (group, layer) seen; activations first, then gradients, then the parameters after the
    // update; within each, by group then layer, so one group's layers sit together.
    auto category = [](const std::string& group) {
        if (group.rfind("grad:", 0) == 0) return 1;
        const bool parameter = group.size() > 7 && (group.compare(group.size() - 7, 7, ".weight") == 0);
        return parameter ? 2 : 0;
    };
    std::set<std::tuple<int, std::string, int64_t>> rows;
    for (const MetricsRecord* r : lines) {
        if (!r->values.contains("groups") || !r->values["groups"].is_object()) continue;
        for (const auto& [group, g] : r->values["groups"].items()) {
            if (!g.is_object() || !g.contains("layers") || !g["layers"].is_array()) continue;
            for (const json& layer : g["layers"]) {
                if (layer.is_number_integer()) rows.insert({category(group), group, layer.get<int64_t>()});
            }
        }
    }
    std::map<std::tuple<std::string, int64_t>, size_t> row_index;
    std::vector<std::string> labels;
    for (const auto& [kind, group, layer] : rows) {
        row_index[{group, layer}] = labels.size();
        labels.push_back(layer >= 0 ? "L" + std::to_string(layer) + " " + group : group);
    }
    // Columns: the tracer lines, bucketed to at most 160 (each bucket shows its worst value).
    const size_t n = lines.size(), columns = std::min<size_t>(n, 160);
    HeatmapSpec abs_map{"tracer: worst |x| per tensor group and layer", "|x|"}, rms_map{"tracer: rms per tensor group and layer", "rms"};
    abs_map.css_class = rms_map.css_class = "heatmap";
    abs_map.rows = rms_map.rows = labels;
    abs_map.values.assign(labels.size(), std::vector<double>(columns, std::nan("")));
    rms_map.values = abs_map.values;
    for (size_t c = 0; c < columns; ++c) {
        const size_t begin = c * n / columns, end = (c + 1) * n / columns;
        abs_map.columns.push_back(static_cast<double>(lines[end - 1]->step));
        for (size_t i = begin; i < end; ++i) {
            const json& values = lines[i]->values;
            if (!values.contains("groups") || !values["groups"].is_object()) continue;
            for (const auto& item : values["groups"].items()) {
                // Named, not a structured binding: the lambda below captures it (clang 14 cannot capture those).
                const std::string& group = item.key();
                const json& g = item.value();
                if (!g.is_object() || !g.contains("layers") || !g["layers"].is_array()) continue;
                for (size_t k = 0; k < g["layers"].size(); ++k) {
                    const json& layer = g["layers"][k];
                    if (!layer.is_number_integer()) continue;
                    const size_t row = row_index[{group, layer.get<int64_t>()}];
                    auto take = [&](const char* field, std::vector<std::vector<double>>& into) {
                        if (!g.contains(field) || !g[field].is_array() || k >= g[field].size() || !g[field][k].is_number()) return;
                        const double v = g[field][k].get<double>();
                        double& cell = into[row][c];
                        cell = std::isnan(cell) ? v : std::max(cell, v);
                    };
                    take("abs_max", abs_map.values);
                    take("rms", rms_map.values);
                }
            }
            if (abs_map.marked_column < 0 && values.contains("near_overflow") && values["near_overflow"].is_object()) {
                const json& near = values["near_overflow"];
                abs_map.marked_column = static_cast<int>(c);
                char figures[96];   // exact, not 65.5k: the limit is a number people know (65504)
                std::snprintf(figures, sizeof figures, " reached %.6g, within 10x of its dtype's %.6g",
                              field(near, "abs_max", 0.0), field(near, "limit", 0.0));
                abs_map.mark_label = "step " + std::to_string(lines[i]->step) + ": " + field(near, "tensor", std::string()) + figures;
            }
        }
    }
    rms_map.columns = abs_map.columns;
    page.html << "<h2>Tracer statistics</h2>\n<p class=\"note\">" << n << " tracer lines (every tracer.summary_every steps, "
              << "and every frame of the run-up when the tracer tripped)"
              << (columns < n ? "; each column holds the worst of " + std::to_string((n + columns - 1) / columns) + " lines" : "")
              << ". Rows are tensor groups, layer by layer (L0, L1, ...); grad: rows are gradients.";
    const json& last = lines.back()->values;
    if (last.contains("worst_tensor")) {
        page.html << " At the last line (step " << lines.back()->step << ") the largest |x| was "
                  << html_escape(short_number(field(last, "worst_abs_max", 0.0))) << " in "
                  << html_escape(field(last, "worst_tensor", std::string())) << ".";
    }
    page.html << (abs_map.marked_column >= 0 ? " <span class=\"bad\">" + html_escape(abs_map.mark_label) + "</span>" : "")
              << "</p>\n<div class=\"heat\">" << svg_heatmap(abs_map) << "</div>\n<div class=\"heat\">" << svg_heatmap(rms_map)
              << "</div>\n";
}

// Every kind not drawn above (PPO and GRPO updates and evals): one chart per numeric field.
void other_kinds_section(Page& page, const RunMetrics& metrics, const std::set<std::string>& drawn) {
    std::vector<std::string> kinds;
    for (const MetricsRecord& r : metrics.records) {
        if (!drawn.count(r.kind) && std::find(kinds.begin(), kinds.end(), r.kind) == kinds.end()) kinds.push_back(r.kind);
    }
    const char* colors[] = {kBlue, kOrange, kGreen, kRed, kPurple};
    for (const std::string& kind : kinds) {
        const auto records = of_kind(metrics, kind);
        std::vector<std::string> fields;
        for (const MetricsRecord* r : records) {
            for (const auto& [field, value] : r->values.items()) {
                if (field == "step" || field == "update" || field == "kind" || !(value.is_number() || value.is_null())) continue;
                if (std::find(fields.begin(), fields.end(), field) == fields.end()) fields.push_back(field);
            }
        }
        if (fields.empty()) continue;
        std::stable_sort(fields.begin(), fields.end(),
                         [](const std::string& a, const std::string& b) { return field_rank(a) < field_rank(b); });
        const std::string axis = metrics.indexed_by_update ? "update" : "step";
        page.html << "<h2>" << html_escape(kind == "train" && metrics.indexed_by_update ? "updates" : kind) << " ("
                  << records.size() << " lines)</h2>\n<div class=\"grid\">\n";
        std::vector<std::string> constant;   // a field that never changes is a line of text, not a chart
        for (size_t i = 0; i < fields.size(); ++i) {
            ChartLine line = line_of(records, fields[i], fields[i], colors[i % 5]);
            line.mark_nonfinite = false;   // null here means "no value at this update"
            bool same = !line.y.empty();
            for (const double v : line.y) same = same && (v == line.y.front());
            if (same && records.size() > 1) {
                constant.push_back(fields[i] + " = " + short_number(line.y.front()));
                continue;
            }
            ChartSpec spec{fields[i]};
            spec.x_label = axis;
            spec.y_label = fields[i];
            spec.width = 360;
            spec.height = 220;
            line.dots = records.size() <= 30;
            spec.lines = {line};
            spec.log_y = wants_log(spec.lines);
            page.html << svg_chart(spec);
        }
        page.html << "</div>\n";
        if (!constant.empty()) {
            page.html << "<p class=\"note\">The same in every line: ";
            for (size_t i = 0; i < constant.size(); ++i) page.html << (i ? ", " : "") << html_escape(constant[i]);
            page.html << ".</p>\n";
        }
    }
}

// A failure scenario's directory (`reftrain failure run ID --run-dir D` writes D/ID/failure.json): both
// halves' curves side by side, the detector's first firing marked on each, and the numbers.
std::string render_failure_report(const std::string& dir, const fs::path& path) {
    const json f = read_json_file(path.string(), "failure record");
    check(f.is_object() && f.contains("with_bug") && f.contains("without_bug") && f["with_bug"].is_object() &&
              f["without_bug"].is_object(),
          path.string(), ": expected an object with 'with_bug' and 'without_bug' (written by `reftrain failure run`)");
    auto text = [&](const char* key) { return f.contains(key) && f[key].is_string() ? f[key].get<std::string>() : std::string(); };
    const std::string curve_name = text("curve_name").empty() ? "curve" : text("curve_name");
    auto values = [](const json& half, const char* key) {
        std::vector<double> out;
        if (!half.contains(key) || !half[key].is_array()) return out;
        for (const json& v : half[key]) out.push_back(v.is_number() ? v.get<double>() : std::nan(""));
        return out;
    };
    // Both halves on the same y range, so that the eye compares like with like.
    auto shared_range = [&](const std::string& key, double* lo, double* hi) {
        *lo = INFINITY;
        *hi = -INFINITY;
        for (const json* half : {&f["with_bug"], &f["without_bug"]}) {
            for (const double v : values(*half, key.c_str())) {
                if (!std::isfinite(v) || (field(f, "log_scale", false) && key == "curve" && v <= 0.0)) continue;
                *lo = std::min(*lo, v);
                *hi = std::max(*hi, v);
            }
        }
        if (*hi > *lo && !(field(f, "log_scale", false) && key == "curve")) {
            const double pad = (*hi - *lo) * 0.05;
            *lo -= pad;
            *hi += pad;
        }
    };
    auto half_chart = [&](const json& half, const std::string& title, const std::string& color, const std::string& key,
                          const std::string& y_label) {
        ChartSpec spec{title};
        shared_range(key, &spec.y_min, &spec.y_max);
        spec.y_label = y_label;
        spec.x_label = "optimizer step (or update)";
        spec.log_y = field(f, "log_scale", false) && key == "curve";
        ChartLine line{y_label, color};
        line.y = values(half, key.c_str());
        for (size_t i = 0; i < line.y.size(); ++i) line.x.push_back(static_cast<double>(i + 1));
        spec.lines = {line};
        const int64_t at = field(half, "detector_step", int64_t{-1});
        if (at >= 0 && field(half, "detector_fired", false)) {
            spec.marks.push_back({static_cast<double>(at + 1), "detector first fired (step " + std::to_string(at + 1) + ")", kRed});
            spec.title += " — detector fired at step " + std::to_string(at + 1);
        }
        return svg_chart(spec);
    };
    const json& bug = f["with_bug"];
    const json& fixed = f["without_bug"];
    std::ostringstream html;
    html << page_head("reftrain failure: " + text("id"));
    html << "<h1>failure " << html_escape(text("id")) << ": " << html_escape(text("title")) << "</h1>\n";
    html << "<table class=\"summary\"><tr><td>symptom</td><td>" << html_escape(text("symptom")) << "</td></tr>\n"
         << "<tr><td>bug</td><td>" << html_escape(text("bug")) << "</td></tr>\n<tr><td>detector</td><td>"
         << html_escape(text("detector")) << "</td></tr>\n<tr><td>fix</td><td>" << html_escape(text("fix")) << "</td></tr>\n"
         << "<tr><td>source</td><td>" << html_escape(text("source")) << "</td></tr>\n<tr><td>seed</td><td>"
         << field(f, "seed", int64_t{1}) << "</td></tr>\n<tr><td>verdict</td><td class=\""
         << (field(f, "detector_works", false) ? "ok\">the detector fires on the bug and stays silent without it"
                                              : "bad\">the detector does not separate the two runs")
         << "</td></tr></table>\n";
    html << "<h2>" << html_escape(curve_name) << ", same seed: with the bug | without it</h2>\n<div class=\"grid\">\n"
         << half_chart(bug, "with the bug", kRed, "curve", curve_name)
         << half_chart(fixed, "without the bug", kBlue, "curve", curve_name) << "</div>\n";
    if (!values(bug, "loss").empty() && curve_name != "loss") {
        html << "<h2>training loss</h2>\n<div class=\"grid\">\n" << half_chart(bug, "with the bug", kRed, "loss", "loss")
             << half_chart(fixed, "without the bug", kBlue, "loss", "loss") << "</div>\n";
    }
    html << "<h2>The symptom in numbers</h2>\n<table class=\"numbers\"><tr><th></th><th>with the bug</th><th>without</th></tr>\n";
    auto numbers_of = [](const json& half) {
        return half.contains("numbers") && half["numbers"].is_array() ? half["numbers"] : json::array();
    };
    const json with_numbers = numbers_of(bug);
    const json without_numbers = numbers_of(fixed);
    for (size_t i = 0; i < with_numbers.size(); ++i) {
        const json& w = with_numbers[i];
        if (!w.is_array() || w.size() != 2) continue;
        const json& o = i < without_numbers.size() ? without_numbers[i] : json();
        html << "<tr><td>" << html_escape(w[0].is_string() ? w[0].get<std::string>() : w[0].dump()) << "</td><td>"
             << html_escape(w[1].is_string() ? w[1].get<std::string>() : w[1].dump()) << "</td><td>"
             << html_escape(o.is_array() && o.size() == 2 ? (o[1].is_string() ? o[1].get<std::string>() : o[1].dump()) : "")
             << "</td></tr>\n";
    }
    html << "</table>\n<h2>What the detector said</h2>\n<table class=\"detector\">";
    for (const auto& [label, half] : {std::pair<const char*, const json*>{"with the bug", &bug}, {"without the bug", &fixed}}) {
        const bool fired = field(*half, "detector_fired", false);
        html << "<tr><td>" << label << "</td><td class=\"" << (fired ? "bad\">FIRED" : "ok\">silent") << "</td><td>"
             << html_escape(field(*half, "detector_message", std::string())) << "</td></tr>\n";
    }
    html << "</table>\n";
    // The halves' own run directories, when their trainer wrote metrics (the tracer's run-up, for one).
    for (const char* half : {"with_bug", "without_bug"}) {
        const fs::path sub = fs::path(dir) / half;
        if (fs::exists(sub / "metrics.jsonl")) {
            html << "<p class=\"note\">" << half << " has its own run directory: <code>reftrain report "
                 << html_escape(sub.string()) << "</code></p>\n";
        }
    }
    html << "<p class=\"note\">Written by <code>reftrain report</code> from " << html_escape(path.string())
         << "; no network, no script.</p>\n</body></html>\n";
    return html.str();
}

std::string render_page(const std::string& run_dir);

}  // namespace

std::string render_run_report(const std::string& run_dir) {
    try {
        return render_page(run_dir);
    } catch (const json::exception& e) {   // a value of a shape the page does not expect, anywhere in the files
        fail(run_dir, ": cannot draw the report: a value in metrics.jsonl, failure.json or the run config has an "
                      "unexpected type (", e.what(), ")");
    }
}

namespace {

std::string render_page(const std::string& run_dir) {
    const fs::path failure = fs::path(run_dir) / "failure.json";
    if (fs::exists(failure) && !fs::exists(fs::path(run_dir) / "metrics.jsonl")) return render_failure_report(run_dir, failure);
    const RunMetrics metrics = read_run_metrics(run_dir);
    std::string config_source;
    const json config = read_config(fs::path(run_dir), &config_source);
    Page page;
    const std::string name = fs::path(run_dir).lexically_normal().filename().string();
    page.html << page_head("reftrain report: " + name);
    page.html << "<h1>reftrain run report: " << html_escape(name) << "</h1>\n";
    summary_section(page, metrics, config, run_dir);
    page.invariant_marks = invariant_marks(metrics);   // drawn on the training charts, listed after them
    std::set<std::string> drawn = {"invariant", "tracer"};
    bool training = false;
    for (const MetricsRecord& r : metrics.records) {
        training = training || (r.kind == "train" && r.values.contains("loss") && !metrics.indexed_by_update);
    }
    if (training) {
        training_section(page, metrics, config);
        drawn.insert({"train", "eval", "test"});
    }
    invariant_section(page, metrics);
    if (training) samples_section(page, metrics);
    tracer_section(page, metrics);
    other_kinds_section(page, metrics, drawn);
    page.html << "<h2>Resolved config</h2>\n";
    if (config.is_null()) {
        page.html << "<p class=\"note\">No run_config.json and no checkpoint in " << html_escape(run_dir) << ".</p>\n";
    } else {
        page.html << "<p class=\"note\">" << html_escape(config_source) << "</p>\n<pre>" << html_escape(config.dump(2))
                  << "</pre>\n";
    }
    page.html << "<p class=\"note\">Written by <code>reftrain report</code> from the files above; no network, no script.</p>\n"
              << "</body></html>\n";
    return page.html.str();
}

}  // namespace

std::string write_run_report(const std::string& run_dir, const std::string& out_path) {
    const std::string path = out_path.empty() ? (fs::path(run_dir) / "report.html").string() : out_path;
    const std::string html = render_run_report(run_dir);
    write_file_atomically(path, html.data(), html.size());
    return path;
}

}  // namespace reftrain

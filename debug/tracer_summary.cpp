// debug/tracer_summary.cpp — a tracer frame reduced to per-group numbers (debug/tracer_summary.h).
#include "debug/tracer_summary.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <utility>

namespace reftrain {

void tracer_group_of(const std::string& name, std::string* group, int64_t* layer) {
    // "grad:" stays in front of the group: a gradient and its tensor are different rows of a heat map.
    const std::string prefix = name.rfind("grad:", 0) == 0 ? "grad:" : "";
    const std::string rest = name.substr(prefix.size());
    const std::string layers = "model.layers.";
    *layer = -1;
    *group = name;
    if (rest.rfind(layers, 0) != 0) return;
    const size_t digits_end = rest.find('.', layers.size());
    if (digits_end == std::string::npos || digits_end == layers.size()) return;
    const std::string digits = rest.substr(layers.size(), digits_end - layers.size());
    if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) return;
    *layer = std::stoll(digits);
    *group = prefix + rest.substr(digits_end + 1);
}

TracerSummary summarize_frame(const FrameTracer& tracer, const FrameTracer::Frame& frame, double compute_max) {
    TracerSummary s;
    s.step = frame.step;
    std::map<std::pair<std::string, int64_t>, size_t> index;   // (group, layer) -> position in s.groups
    const double fp32_max = static_cast<double>(std::numeric_limits<float>::max());
    for (const FrameTracer::Entry& e : frame.entries) {
        const std::string& name = tracer.name(e.name);
        std::string group;
        int64_t layer = -1;
        tracer_group_of(name, &group, &layer);
        auto [it, fresh] = index.emplace(std::make_pair(group, layer), s.groups.size());
        if (fresh) s.groups.push_back({group, layer});
        TracerGroupStats& g = s.groups[it->second];
        g.abs_max = std::max(g.abs_max, e.stats.abs_max);
        g.rms = std::max(g.rms, e.stats.rms);
        g.nonfinite += e.stats.nonfinite;
        if (s.worst_tensor.empty() || e.stats.abs_max > s.worst_abs_max) {
            s.worst_tensor = name;
            s.worst_abs_max = e.stats.abs_max;
        }
        // Gradients are left out: under fp16 the loss scaler drives them towards the limit on purpose and
        // skips the step when they pass it. Parameters (and the fp32 master copy after the update) hold fp32.
        const bool gradient = name.rfind("grad:", 0) == 0;
        const bool parameter = tracer.name(e.op) == "adamw.update" ||
                               (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0);
        const double limit = parameter ? fp32_max : compute_max;
        if (!gradient && s.near_overflow_tensor.empty() && e.stats.abs_max >= limit / 10.0) {
            s.near_overflow_tensor = name;
            s.near_overflow_abs_max = e.stats.abs_max;
            s.near_overflow_limit = limit;
        }
    }
    return s;
}

namespace {

// 4 significant digits: %.4g read back, so the JSON holds 1234 or 0.01234, not 17 digits of noise.
double four_digits(double v) {
    if (!std::isfinite(v) || v == 0.0) return v;
    char text[32];
    std::snprintf(text, sizeof text, "%.4g", v);
    return std::strtod(text, nullptr);
}

}  // namespace

nlohmann::json tracer_summary_json(const TracerSummary& s) {
    using nlohmann::json;
    json groups(json::value_t::object);
    for (const TracerGroupStats& g : s.groups) {
        json& entry = groups[g.group];
        if (entry.is_null()) entry = {{"layers", json::array()}, {"abs_max", json::array()}, {"rms", json::array()}};
        entry["layers"].push_back(g.layer);
        entry["abs_max"].push_back(four_digits(g.abs_max));
        entry["rms"].push_back(four_digits(g.rms));
        if (g.nonfinite > 0) entry["nonfinite"] = entry.value("nonfinite", int64_t{0}) + g.nonfinite;
    }
    json line = {{"kind", "tracer"},
                 {"step", s.step},
                 {"worst_abs_max", four_digits(s.worst_abs_max)},   // top level: TensorBoard plots it (tracer/worst_abs_max)
                 {"worst_tensor", s.worst_tensor},
                 {"near_overflow", nullptr},
                 {"groups", std::move(groups)}};
    if (!s.near_overflow_tensor.empty()) {
        line["near_overflow"] = {{"tensor", s.near_overflow_tensor},
                                 {"abs_max", four_digits(s.near_overflow_abs_max)},
                                 {"limit", s.near_overflow_limit}};   // exact: 65504, not 65500
    }
    return line;
}

}  // namespace reftrain

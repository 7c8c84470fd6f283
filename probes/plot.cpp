// probes/plot.cpp — ASCII and SVG line charts (see plot.h); the SVG is debug/chart.h's.
#include "probes/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "debug/chart.h"
#include "kernels/error.h"
#include "kernels/safetensors.h"  // write_file_atomically

namespace reftrain {

namespace {

struct Range {
    double lo = 0.0, hi = 1.0;
    size_t steps = 1;
};

double transform(double v, bool log_y) { return log_y ? std::log10(std::max(v, 1e-30)) : v; }

Range range_of(const std::vector<Series>& series, bool log_y) {
    Range r;
    bool any = false;
    for (const Series& s : series) {
        r.steps = std::max(r.steps, s.values.size());
        for (double v : s.values) {
            if (!std::isfinite(v) || (log_y && v <= 0.0)) continue;
            const double t = transform(v, log_y);
            r.lo = any ? std::min(r.lo, t) : t;
            r.hi = any ? std::max(r.hi, t) : t;
            any = true;
        }
    }
    if (!any) { r.lo = 0.0; r.hi = 1.0; }
    if (r.hi - r.lo < 1e-12) { r.lo -= 0.5; r.hi += 0.5; }
    return r;
}

std::string format_value(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4g", v);
    return buf;
}

}  // namespace

std::string ascii_chart(const std::vector<Series>& series, const std::string& title, int width, int height,
                        bool log_y) {
    const Range r = range_of(series, log_y);
    std::vector<std::string> grid(static_cast<size_t>(height), std::string(static_cast<size_t>(width), ' '));
    for (const Series& s : series) {
        for (size_t i = 0; i < s.values.size(); ++i) {
            const int x = r.steps <= 1 ? 0 : static_cast<int>(std::lround(double(i) * (width - 1) / double(r.steps - 1)));
            const double v = s.values[i];
            if (!std::isfinite(v)) {
                grid[0][static_cast<size_t>(x)] = '!';
                continue;
            }
            const double t = transform(v, log_y);
            const int y = static_cast<int>(std::lround((t - r.lo) / (r.hi - r.lo) * (height - 1)));
            grid[static_cast<size_t>(height - 1 - y)][static_cast<size_t>(x)] = s.mark;
        }
    }
    const auto label = [&](double t) { return format_value(log_y ? std::pow(10.0, t) : t); };
    std::ostringstream out;
    out << title << (log_y ? " (log scale)" : "") << "\n";
    for (int row = 0; row < height; ++row) {
        std::string axis(10, ' ');
        if (row == 0) axis = label(r.hi);
        if (row == height - 1) axis = label(r.lo);
        axis.resize(10, ' ');
        out << axis << "|" << grid[static_cast<size_t>(row)] << "\n";
    }
    std::string axis_line(static_cast<size_t>(width), '-');
    std::string markers;
    for (const Series& s : series) {
        if (s.marker < 0) continue;
        const int x = r.steps <= 1 ? 0 : static_cast<int>(std::lround(double(s.marker) * (width - 1) / double(r.steps - 1)));
        axis_line[static_cast<size_t>(std::clamp(x, 0, width - 1))] = '^';
        markers += "   ^ " + s.name + ": " + s.marker_label + " at step " + std::to_string(s.marker + 1);
    }
    out << std::string(10, ' ') << "+" << axis_line << "\n";
    out << std::string(11, ' ') << "step 1" << std::string(static_cast<size_t>(std::max(1, width - 12)), ' ') << r.steps
        << "\n";
    out << "  ";
    for (const Series& s : series) out << s.mark << " " << s.name << "   ";
    out << "(! = not finite)" << markers << "\n";
    return out.str();
}

// The file is the run report's chart (debug/chart.h) on its own: one line per series against the step
// (1-based), a series' marker as a labelled mark in its colour.
void write_svg_chart(const std::string& path, const std::vector<Series>& series, const std::string& title,
                     const std::string& x_label, const std::string& y_label, bool log_y) {
    ChartSpec spec{.title = title, .x_label = x_label, .y_label = y_label, .log_y = log_y, .width = 640, .height = 400};
    for (const Series& s : series) {
        ChartLine line{.name = s.name, .color = s.color};
        for (size_t i = 0; i < s.values.size(); ++i) {
            line.x.push_back(static_cast<double>(i + 1));
            line.y.push_back(s.values[i]);
        }
        spec.lines.push_back(std::move(line));
        if (s.marker >= 0) {
            spec.marks.push_back(ChartMark{.x = static_cast<double>(s.marker + 1),
                                           .label = s.marker_label + " (step " + std::to_string(s.marker + 1) + ")",
                                           .color = s.color,
                                           .show_label = true});
        }
    }
    const std::string text = svg_chart(spec);
    write_file_atomically(path, text.data(), text.size());
}

}  // namespace reftrain

// probes/plot.cpp — ASCII and SVG line charts (see plot.h).
#include "probes/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

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

void write_svg_chart(const std::string& path, const std::vector<Series>& series, const std::string& title,
                     const std::string& x_label, const std::string& y_label, bool log_y) {
    const Range r = range_of(series, log_y);
    const double W = 640, H = 400, left = 70, right = 20, top = 40, bottom = 50;
    const double pw = W - left - right, ph = H - top - bottom;
    auto px = [&](size_t i) { return left + (r.steps <= 1 ? 0.0 : pw * double(i) / double(r.steps - 1)); };
    auto py = [&](double v) { return top + ph * (1.0 - (transform(v, log_y) - r.lo) / (r.hi - r.lo)); };
    std::ostringstream svg;
    svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
        << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    svg << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    svg << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << title << "</text>\n";
    svg << "<line x1=\"" << left << "\" y1=\"" << top + ph << "\" x2=\"" << left + pw << "\" y2=\"" << top + ph
        << "\" stroke=\"black\"/>\n";
    svg << "<line x1=\"" << left << "\" y1=\"" << top << "\" x2=\"" << left << "\" y2=\"" << top + ph
        << "\" stroke=\"black\"/>\n";
    const auto label = [&](double t) { return format_value(log_y ? std::pow(10.0, t) : t); };
    for (int k = 0; k <= 4; ++k) {
        const double t = r.lo + (r.hi - r.lo) * k / 4.0;
        const double y = top + ph * (1.0 - k / 4.0);
        svg << "<text x=\"" << left - 6 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">" << label(t) << "</text>\n";
        svg << "<line x1=\"" << left << "\" y1=\"" << y << "\" x2=\"" << left + pw << "\" y2=\"" << y
            << "\" stroke=\"#ddd\"/>\n";
    }
    svg << "<text x=\"" << left << "\" y=\"" << H - 15 << "\">1</text>\n";
    svg << "<text x=\"" << left + pw << "\" y=\"" << H - 15 << "\" text-anchor=\"end\">" << r.steps << "</text>\n";
    svg << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">" << x_label
        << "</text>\n";
    svg << "<text x=\"16\" y=\"" << top + ph / 2 << "\" transform=\"rotate(-90 16 " << top + ph / 2
        << ")\" text-anchor=\"middle\">" << y_label << (log_y ? " (log)" : "") << "</text>\n";
    double legend_y = top + 14;
    for (const Series& s : series) {
        std::string points;
        auto flush = [&] {
            if (!points.empty()) {
                svg << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.8\" points=\"" << points
                    << "\"/>\n";
            }
            points.clear();
        };
        int64_t nonfinite = 0;
        for (size_t i = 0; i < s.values.size(); ++i) {
            const double v = s.values[i];
            if (!std::isfinite(v)) {
                // Marked, not dropped: a "!" in the series' colour on the top edge at that step.
                flush();
                ++nonfinite;
                svg << "<text class=\"nonfinite\" x=\"" << px(i) << "\" y=\"" << top - 4
                    << "\" text-anchor=\"middle\" font-weight=\"bold\" fill=\"" << s.color << "\">!</text>\n";
                continue;
            }
            if (log_y && v <= 0.0) {
                flush();
                continue;
            }
            char buf[64];
            std::snprintf(buf, sizeof buf, "%.1f,%.1f ", px(i), py(v));
            points += buf;
        }
        flush();
        if (s.marker >= 0) {
            const double x = px(static_cast<size_t>(s.marker));
            svg << "<line class=\"marker\" x1=\"" << x << "\" y1=\"" << top << "\" x2=\"" << x << "\" y2=\"" << top + ph
                << "\" stroke=\"" << s.color << "\" stroke-dasharray=\"4,3\"/>\n";
            svg << "<text x=\"" << x + 3 << "\" y=\"" << top + ph - 4 << "\" fill=\"" << s.color << "\">" << s.marker_label
                << " (step " << s.marker + 1 << ")</text>\n";
        }
        svg << "<text x=\"" << left + pw - 4 << "\" y=\"" << legend_y << "\" text-anchor=\"end\" fill=\"" << s.color
            << "\">" << s.name
            << (nonfinite > 0 ? " (! = " + std::to_string(nonfinite) + " non-finite steps)" : std::string()) << "</text>\n";
        legend_y += 16;
    }
    svg << "</svg>\n";
    const std::string text = svg.str();
    write_file_atomically(path, text.data(), text.size());
}

}  // namespace reftrain

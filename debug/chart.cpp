// debug/chart.cpp — inline SVG line charts and heat maps (debug/chart.h).
#include "debug/chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <sstream>

namespace reftrain {

std::string html_escape(const std::string& text) {
    std::string out;
    out.reserve(text.size());
    for (const char c : text) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            case '\'': out += "&#39;"; break;
            default: out += c;
        }
    }
    return out;
}

std::string short_number(double v) {
    char text[32];
    if (!std::isfinite(v)) return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
    const double a = std::fabs(v);
    if (a >= 1e4 && a < 1e9) {   // throughput and token counts read better as 80k, 1.23M
        std::snprintf(text, sizeof text, "%.3g%s", a >= 1e6 ? v / 1e6 : v / 1e3, a >= 1e6 ? "M" : "k");
    } else if (a != 0.0 && (a < 1e-3 || a >= 1e9)) {
        std::snprintf(text, sizeof text, "%.2e", v);
    } else {
        std::snprintf(text, sizeof text, "%.4g", v);
    }
    return text;
}

namespace {

// An axis label: as short as it can be read (3e-05, 0.005, 80k), so that it fits the margin.
std::string tick_label(double v) {
    if (std::fabs(v) >= 1e4 && std::fabs(v) < 1e9) return short_number(v);
    char text[32];
    std::snprintf(text, sizeof text, "%.3g", v);
    return text;
}

// A coordinate with one decimal: enough for a screen, and short in the file.
std::string num(double v) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f", v);
    return text;
}

// About `target` round tick values (1, 2 or 5 times a power of ten) covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target) {
    std::vector<double> ticks;
    if (!(hi > lo)) return {lo};
    const double raw = (hi - lo) / std::max(1, target);
    const double power = std::pow(10.0, std::floor(std::log10(raw)));
    double step = power;
    for (const double m : {1.0, 2.0, 5.0, 10.0}) {
        step = m * power;
        if (step >= raw) break;
    }
    // Counted, not accumulated: where lo is huge against the step, t += step would never move.
    const double start = std::ceil(lo / step) * step;
    for (int k = 0; k <= 2 * target + 2; ++k) {
        const double t = start + k * step;
        if (!(t <= hi + step * 1e-9)) break;
        ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
    }
    return ticks;
}

// Viridis-like sequential palette: t in [0, 1] -> dark blue .. green .. yellow.
std::string palette(double t) {
    static const double stops[][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
    t = std::clamp(t, 0.0, 1.0) * 4.0;
    const int i = std::min(3, static_cast<int>(t));
    const double f = t - i;
    char text[8];
    std::snprintf(text, sizeof text, "#%02x%02x%02x", static_cast<int>(stops[i][0] + f * (stops[i + 1][0] - stops[i][0])),
                  static_cast<int>(stops[i][1] + f * (stops[i + 1][1] - stops[i][1])),
                  static_cast<int>(stops[i][2] + f * (stops[i + 1][2] - stops[i][2])));
    return text;
}

}  // namespace

std::string svg_chart(const ChartSpec& spec) {
    // The title on the first line, the legend on the second, then the plot.
    const double W = spec.width, H = spec.height, left = 62, right = 14, top = 40, bottom = 40;
    const double pw = W - left - right, ph = H - top - bottom;
    // Ranges over the finite points (and the horizontal lines, so a threshold is always in view).
    double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
    auto ty = [&](double v) { return spec.log_y ? std::log10(v) : v; };
    auto usable = [&](double v) { return std::isfinite(v) && (!spec.log_y || v > 0.0); };
    for (const ChartLine& line : spec.lines) {
        for (size_t i = 0; i < line.x.size() && i < line.y.size(); ++i) {
            x_lo = std::min(x_lo, line.x[i]);
            x_hi = std::max(x_hi, line.x[i]);
            if (!usable(line.y[i])) continue;
            y_lo = std::min(y_lo, ty(line.y[i]));
            y_hi = std::max(y_hi, ty(line.y[i]));
        }
    }
    for (const auto& [y, label] : spec.hlines) {
        if (!usable(y)) continue;
        y_lo = std::min(y_lo, ty(y));
        y_hi = std::max(y_hi, ty(y));
    }
    for (const ChartMark& m : spec.marks) {
        x_lo = std::min(x_lo, m.x);
        x_hi = std::max(x_hi, m.x);
    }
    if (!std::isfinite(x_lo)) x_lo = 0, x_hi = 1;
    if (!std::isfinite(y_lo)) y_lo = 0, y_hi = 1;
    if (x_hi <= x_lo) x_hi = x_lo + 1;
    const bool fixed = std::isfinite(spec.y_min) && std::isfinite(spec.y_max) && spec.y_max > spec.y_min &&
                       (!spec.log_y || spec.y_min > 0.0);
    if (fixed) {
        y_lo = ty(spec.y_min);
        y_hi = ty(spec.y_max);
    } else if (y_hi <= y_lo) {   // a flat series: give it some room
        const double pad = std::fabs(y_lo) > 0 ? std::fabs(y_lo) * 0.1 : 1.0;
        y_lo -= pad;
        y_hi += pad;
    } else {
        const double pad = (y_hi - y_lo) * 0.05;
        y_lo -= pad;
        y_hi += pad;
    }
    auto px = [&](double x) { return left + pw * (x - x_lo) / (x_hi - x_lo); };
    auto py = [&](double v) { return top + ph * (1.0 - (ty(v) - y_lo) / (y_hi - y_lo)); };

    std::ostringstream svg;
    svg << "<svg class=\"" << spec.css_class << "\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
        << "\" viewBox=\"0 0 " << W << " " << H << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
    svg << "<title>" << html_escape(spec.title) << "</title>\n";
    svg << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    svg << "<text x=\"" << num(left) << "\" y=\"18\" font-size=\"13\" font-weight=\"bold\">" << html_escape(spec.title)
        << "</text>\n";
    // Grid and tick labels.
    if (spec.log_y) {
        // A label every decade, or every few when they are many (at most about 6).
        const int first = static_cast<int>(std::ceil(y_lo)), last = static_cast<int>(std::floor(y_hi));
        const int every = std::max(1, (last - first + 5) / 6);
        for (int e = first; e <= last; e += every) {
            const double y = top + ph * (1.0 - (e - y_lo) / (y_hi - y_lo));
            svg << "<line x1=\"" << num(left) << "\" y1=\"" << num(y) << "\" x2=\"" << num(left + pw) << "\" y2=\"" << num(y)
                << "\" stroke=\"#e5e5e5\"/><text x=\"" << num(left - 5) << "\" y=\"" << num(y + 4)
                << "\" text-anchor=\"end\">1e" << e << "</text>\n";
        }
    } else {
        for (const double t : nice_ticks(y_lo, y_hi, 4)) {
            const double y = top + ph * (1.0 - (t - y_lo) / (y_hi - y_lo));
            svg << "<line x1=\"" << num(left) << "\" y1=\"" << num(y) << "\" x2=\"" << num(left + pw) << "\" y2=\"" << num(y)
                << "\" stroke=\"#e5e5e5\"/><text x=\"" << num(left - 5) << "\" y=\"" << num(y + 4)
                << "\" text-anchor=\"end\">" << tick_label(t) << "</text>\n";
        }
    }
    for (const double t : nice_ticks(x_lo, x_hi, 5)) {
        svg << "<text x=\"" << num(px(t)) << "\" y=\"" << num(top + ph + 14) << "\" text-anchor=\"middle\">"
            << tick_label(t) << "</text>\n";
    }
    svg << "<rect x=\"" << num(left) << "\" y=\"" << num(top) << "\" width=\"" << num(pw) << "\" height=\"" << num(ph)
        << "\" fill=\"none\" stroke=\"#999\"/>\n";
    svg << "<text x=\"" << num(left + pw / 2) << "\" y=\"" << num(H - 6) << "\" text-anchor=\"middle\">"
        << html_escape(spec.x_label) << "</text>\n";
    svg << "<text x=\"12\" y=\"" << num(top + ph / 2) << "\" transform=\"rotate(-90 12 " << num(top + ph / 2)
        << ")\" text-anchor=\"middle\">" << html_escape(spec.y_label) << (spec.log_y ? " (log)" : "") << "</text>\n";

    for (const ChartMark& m : spec.marks) {
        svg << "<line class=\"mark\" x1=\"" << num(px(m.x)) << "\" y1=\"" << num(top) << "\" x2=\"" << num(px(m.x))
            << "\" y2=\"" << num(top + ph) << "\" stroke=\"" << m.color << "\" stroke-dasharray=\"4,3\"><title>"
            << html_escape(m.label) << "</title></line>\n";
        if (m.show_label) {
            svg << "<text class=\"mark-label\" x=\"" << num(px(m.x) + 3) << "\" y=\"" << num(top + ph - 4) << "\" fill=\""
                << m.color << "\">" << html_escape(m.label) << "</text>\n";
        }
    }
    double legend_x = left + pw;
    std::vector<std::string> legend;
    for (const ChartLine& line : spec.lines) {
        std::string points;
        int64_t nonfinite = 0;
        const char* radius = line.x.size() > 200 ? "1.4" : "2.6";   // many points: small dots, the line stays visible
        auto flush = [&] {
            if (!points.empty() && !line.dots) {
                svg << "<polyline class=\"series\" fill=\"none\" stroke=\"" << line.color
                    << "\" stroke-width=\"1.6\" points=\"" << points << "\"/>\n";
            }
            points.clear();
        };
        for (size_t i = 0; i < line.x.size() && i < line.y.size(); ++i) {
            const double v = line.y[i];
            if (!std::isfinite(v) && !line.mark_nonfinite) {   // no value here: a gap
                flush();
                continue;
            }
            if (!std::isfinite(v)) {   // marked, never dropped
                flush();
                ++nonfinite;
                svg << "<text class=\"nonfinite\" x=\"" << num(px(line.x[i])) << "\" y=\"" << num(top + 10)
                    << "\" text-anchor=\"middle\" font-weight=\"bold\" fill=\"" << line.color << "\">!</text>\n";
                continue;
            }
            if (spec.log_y && v <= 0.0) {
                flush();
                continue;
            }
            if (line.dots) {
                svg << "<circle class=\"point\" cx=\"" << num(px(line.x[i])) << "\" cy=\"" << num(py(v)) << "\" r=\"" << radius << "\" fill=\""
                    << line.color << "\"/>\n";
            } else {
                points += num(px(line.x[i])) + "," + num(py(v)) + " ";
            }
        }
        flush();
        legend.push_back("<tspan fill=\"" + line.color + "\">" + html_escape(line.name) +
                         (nonfinite > 0 ? " (" + std::to_string(nonfinite) + " non-finite: !)" : "") + "</tspan>");
    }
    // Thresholds over the series, their label with a white halo so that dense points never hide it.
    for (const auto& [y, label] : spec.hlines) {
        if (!usable(y)) continue;
        svg << "<line class=\"hline\" x1=\"" << num(left) << "\" y1=\"" << num(py(y)) << "\" x2=\"" << num(left + pw)
            << "\" y2=\"" << num(py(y)) << "\" stroke=\"#333\" stroke-dasharray=\"5,4\"/><text x=\"" << num(left + pw - 4)
            << "\" y=\"" << num(py(y) - 4) << "\" text-anchor=\"end\" fill=\"#222\" stroke=\"white\" stroke-width=\"3\" "
            << "paint-order=\"stroke\">" << html_escape(label) << "</text>\n";
    }
    // The legend on the line under the title, right-aligned.
    if (!legend.empty()) {
        svg << "<text class=\"legend\" x=\"" << num(legend_x) << "\" y=\"33\" text-anchor=\"end\">";
        for (size_t i = 0; i < legend.size(); ++i) svg << (i ? "  " : "") << legend[i];
        svg << "</text>\n";
    }
    svg << "</svg>\n";
    return svg.str();
}

std::string svg_heatmap(const HeatmapSpec& spec) {
    const size_t R = spec.rows.size(), C = spec.columns.size();
    const double label_w = 250, top = 34, cell_h = 9, legend_h = 40, right = 16;
    const double cell_w = C == 0 ? 4 : std::clamp(640.0 / static_cast<double>(C), 2.0, 40.0);
    const double W = label_w + cell_w * static_cast<double>(C) + right, H = top + cell_h * static_cast<double>(R) + legend_h;
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const auto& row : spec.values) {
        for (const double v : row) {
            if (!std::isfinite(v) || v <= 0.0) continue;
            lo = std::min(lo, std::log10(v));
            hi = std::max(hi, std::log10(v));
        }
    }
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (hi <= lo) hi = lo + 1;
    // One <path> per colour level: a heat map of thousands of cells stays small in the page.
    const int levels = 32;
    std::map<int, std::string> paths;
    for (size_t r = 0; r < R && r < spec.values.size(); ++r) {
        const std::vector<double>& row = spec.values[r];
        size_t c = 0;
        while (c < C && c < row.size()) {
            const double v = row[c];
            if (!std::isfinite(v) || v <= 0.0) {
                ++c;
                continue;
            }
            const int level = std::clamp(static_cast<int>((std::log10(v) - lo) / (hi - lo) * (levels - 1) + 0.5), 0, levels - 1);
            size_t end = c + 1;   // a run of cells of the same level is one rectangle
            while (end < C && end < row.size() && std::isfinite(row[end]) && row[end] > 0.0 &&
                   std::clamp(static_cast<int>((std::log10(row[end]) - lo) / (hi - lo) * (levels - 1) + 0.5), 0, levels - 1) == level) {
                ++end;
            }
            std::string& d = paths[level];   // appended piece by piece (GCC's -Wrestrict misfires on a chain of +)
            d += 'M';
            d += num(label_w + cell_w * double(c));
            d += ' ';
            d += num(top + cell_h * double(r));
            d += 'h';
            d += num(cell_w * double(end - c));
            d += 'v';
            d += num(cell_h);
            d += "h-";
            d += num(cell_w * double(end - c));
            d += 'z';
            c = end;
        }
    }
    std::ostringstream svg;
    svg << "<svg class=\"" << spec.css_class << "\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << num(W) << "\" height=\""
        << num(H) << "\" viewBox=\"0 0 " << num(W) << " " << num(H) << "\" font-family=\"sans-serif\" font-size=\"9\">\n";
    svg << "<title>" << html_escape(spec.title) << "</title>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    svg << "<text x=\"4\" y=\"16\" font-size=\"13\" font-weight=\"bold\">" << html_escape(spec.title) << "</text>\n";
    for (const auto& [level, d] : paths) {
        svg << "<path class=\"cells\" fill=\"" << palette(double(level) / (levels - 1)) << "\" d=\"" << d << "\"/>\n";
    }
    for (size_t r = 0; r < R; ++r) {
        svg << "<text x=\"" << num(label_w - 4) << "\" y=\"" << num(top + cell_h * double(r) + cell_h - 1.5)
            << "\" text-anchor=\"end\">" << html_escape(spec.rows[r]) << "</text>\n";
    }
    // Column steps: the first, the last and a few between.
    for (const double t : nice_ticks(C ? spec.columns.front() : 0, C ? spec.columns.back() : 1, 6)) {
        if (C < 2) break;
        const double f = (t - spec.columns.front()) / std::max(1e-9, spec.columns.back() - spec.columns.front());
        const double x = label_w + cell_w * (f * double(C - 1) + 0.5);
        svg << "<text x=\"" << num(x) << "\" y=\"" << num(top - 3) << "\" text-anchor=\"middle\">" << short_number(t)
            << "</text>\n";
    }
    if (spec.marked_column >= 0 && static_cast<size_t>(spec.marked_column) < C) {
        const double x = label_w + cell_w * spec.marked_column;
        svg << "<rect class=\"mark\" x=\"" << num(x) << "\" y=\"" << num(top) << "\" width=\"" << num(cell_w) << "\" height=\""
            << num(cell_h * double(R)) << "\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>\n";
        svg << "<text x=\"" << num(std::min(x, W - 300)) << "\" y=\"" << num(top + cell_h * double(R) + 13)
            << "\" fill=\"#d62728\">" << html_escape(spec.mark_label) << "</text>\n";
    }
    // The colour legend: log10 range.
    const double ly = top + cell_h * double(R) + 20;
    for (int i = 0; i < 20; ++i) {
        svg << "<rect x=\"" << num(label_w + i * 8) << "\" y=\"" << num(ly) << "\" width=\"8\" height=\"10\" fill=\""
            << palette(i / 19.0) << "\"/>";
    }
    svg << "\n<text x=\"" << num(label_w - 4) << "\" y=\"" << num(ly + 9) << "\" text-anchor=\"end\">"
        << html_escape(spec.value_label) << " " << short_number(std::pow(10.0, lo)) << "</text><text x=\""
        << num(label_w + 164) << "\" y=\"" << num(ly + 9) << "\">" << short_number(std::pow(10.0, hi))
        << " (log scale)</text>\n";
    svg << "</svg>\n";
    return svg.str();
}

}  // namespace reftrain

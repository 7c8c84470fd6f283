// debug/chart.h — inline SVG charts for the run report (debug/report.h): line charts against the step,
// and heat maps of the tracer's statistics. Each returns one <svg> element as text, to be pasted into
// an HTML page; nothing is fetched, no script runs.
//
// Honest pictures first: a non-finite point is not dropped but drawn as a "!" on the top edge and
// counted in the legend; a log axis says so; marks (a detector's firing, an invariant warning) are
// dashed vertical lines with their label.
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace reftrain {

struct ChartLine {
    std::string name{};
    std::string color = "#1f77b4";
    std::vector<double> x{}, y{};   // same length; y may hold NaN/inf (drawn as "!")
    bool dots = false;          // points (evals, clip events) instead of a line
    bool mark_nonfinite = true; // false: a non-finite y is a gap and nothing more (a field with no value
                                // at that update, like PPO's episode return when no episode ended)
};

struct ChartMark {
    double x = 0.0;
    std::string label{};
    std::string color = "#d62728";
    bool show_label = false;    // the label as text beside the line (a chart saved as its own file, where
                                // no page around it explains the mark), not only as its tooltip
};

struct ChartSpec {
    std::string title{}, x_label = "step", y_label{};
    bool log_y = false;                              // values <= 0 are left out of a log axis
    std::vector<ChartLine> lines{};
    std::vector<ChartMark> marks{};                  // vertical dashed lines
    std::vector<std::pair<double, std::string>> hlines{};   // horizontal dashed lines (a clip threshold)
    double y_min = NAN, y_max = NAN;                 // a fixed y range (both finite), e.g. 0..100 for a percentage,
                                                     // or the same range for two charts set side by side
    int width = 470, height = 270;
    std::string css_class = "chart";                 // the <svg>'s class (tests look for it)
};

std::string svg_chart(const ChartSpec& spec);

// Rows x columns of values coloured on a log10 scale (a sequential palette from dark blue to yellow,
// with a legend of the range); NaN cells are left blank. `columns` are the steps of the columns.
struct HeatmapSpec {
    std::string title{}, value_label{};
    std::vector<std::string> rows{};
    std::vector<double> columns{};
    std::vector<std::vector<double>> values{};   // [row][column]
    int marked_column = -1;                      // outlined, with mark_label (the first near-overflow step)
    std::string mark_label{};
    std::string css_class = "heatmap";
};

std::string svg_heatmap(const HeatmapSpec& spec);

// Text made safe for HTML and SVG (&, <, >, ", ').
std::string html_escape(const std::string& text);

// A short human form of a number: 0.000123 -> "1.23e-04", 0.5 -> "0.5", 80000 -> "80k", 1234567 -> "1.23M",
// 5e12 -> "5.00e+12".
std::string short_number(double v);

}  // namespace reftrain

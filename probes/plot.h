// probes/plot.h — small plots for the failure scenarios: an ASCII chart for the terminal and an SVG
// file for a person to open. Both draw one or more named series against the step index.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace reftrain {

struct Series {
    std::string name;
    std::vector<double> values;   // one per step; non-finite values are drawn as gaps / '!'
    char mark = '*';              // ASCII marker
    std::string color = "#d62728";  // SVG stroke
    int64_t marker = -1;          // a step to mark on this series (0-based; -1 = none), e.g. a detector's first firing
    std::string marker_label{};   // what the marker means ("detector fired")
};

// A width x height character chart with a y-axis range and a legend line. Non-finite points are
// marked '!' on the top row, so "it went NaN here" is visible rather than silently dropped. A series'
// marker shows as '^' under the axis at its step, explained on the legend line.
std::string ascii_chart(const std::vector<Series>& series, const std::string& title, int width = 60, int height = 12,
                        bool log_y = false);

// Writes an SVG line chart to `path` (atomically), drawn by the run report's svg_chart (debug/chart.h).
// A non-finite point breaks the line and is marked with a "!" on the top edge at its step; the legend
// counts them. A series' marker is a dashed vertical line in its colour at that step, labelled.
void write_svg_chart(const std::string& path, const std::vector<Series>& series, const std::string& title,
                     const std::string& x_label, const std::string& y_label, bool log_y = false);

}  // namespace reftrain

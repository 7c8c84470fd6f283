// tests/test_plot.cpp — probes/plot.h: non-finite points are marked in both charts, never dropped.
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "probes/plot.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

size_t count_of(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

TEST(Plot, NonFinitePointsAreMarkedInTheSvgAndTheAsciiChart) {
    const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
    const Series bad{"with bug", {1.0, 2.0, nan, inf, 1.5}, '*', "#d62728"};
    const Series good{"without bug", {1.0, 0.9, 0.8, 0.7, 0.6}, 'o', "#1f77b4"};
    const std::string path = (testing::scratch_dir("plot") / "chart.svg").string();
    write_svg_chart(path, {bad, good}, "loss", "step", "loss");
    std::ifstream in(path);
    std::stringstream svg;
    svg << in.rdbuf();
    EXPECT_EQ(count_of(svg.str(), "class=\"nonfinite\""), 2u) << svg.str();
    EXPECT_NE(svg.str().find(">with bug (2 non-finite: !)<"), std::string::npos) << svg.str();
    EXPECT_NE(svg.str().find(">without bug<"), std::string::npos) << "a finite series gets no count";
    // The ASCII chart: '!' in the plot area itself (its legend line always explains the mark).
    const std::string ascii = ascii_chart({bad, good}, "loss");
    const std::string body = ascii.substr(0, ascii.find("not finite"));
    const std::string body_without_legend = body.substr(0, body.rfind('\n'));
    EXPECT_NE(body_without_legend.find('!'), std::string::npos) << ascii;
    const std::string clean = ascii_chart({good}, "loss");
    EXPECT_EQ(clean.substr(0, clean.rfind('\n', clean.find("not finite"))).find('!'), std::string::npos) << clean;
}

TEST(Plot, TheStepWhereADetectorFiredIsMarked) {
    Series bad{"with bug", {1.0, 1.2, 3.0, 2.0, 1.1}, '*', "#d62728", 2, "detector first fired"};
    const Series good{"without bug", {1.0, 0.9, 0.8, 0.7, 0.6}, 'o', "#1f77b4"};
    const std::string ascii = ascii_chart({bad, good}, "loss", 41, 6);
    // Step 3 of 5 on a 41-column axis is column 20; the legend names the series and the step.
    const std::string axis = ascii.substr(ascii.find("+"), 42);
    EXPECT_EQ(axis.find('^'), 21u) << ascii;
    EXPECT_NE(ascii.find("^ with bug: detector first fired at step 3"), std::string::npos) << ascii;
    const std::string path = (testing::scratch_dir("plot_marker") / "chart.svg").string();
    write_svg_chart(path, {bad, good}, "loss", "step", "loss");
    std::ifstream in(path);
    std::stringstream svg;
    svg << in.rdbuf();
    EXPECT_EQ(count_of(svg.str(), "class=\"mark\""), 1u) << svg.str();
    EXPECT_EQ(count_of(svg.str(), "class=\"mark-label\""), 1u) << "the mark is labelled on the chart itself";
    EXPECT_NE(svg.str().find("detector first fired (step 3)"), std::string::npos);
    bad.marker = -1;
    EXPECT_EQ(ascii_chart({bad, good}, "loss").find('^'), std::string::npos);
}

}  // namespace
}  // namespace reftrain

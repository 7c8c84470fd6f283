// tests/failure_pages.h — a catalog entry's docs page quotes what `reftrain failure run ID` prints today:
// every figure of the page's "Measured:" sentences must be a number of the printed report (to 1 %).
// Shared by tests/test_failures.cpp (one process) and tests/dist/ (the data-parallel entries, mpirun).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

namespace reftrain::testing {

// The numbers of every "Measured:" sentence of docs/failures/ID.md (up to the sentence's end). A figure
// that depends on the BLAS kernel is quoted with its alternative right after it, "X (with
// OPENBLAS_CORETYPE=NAME: Y)": each such pair comes back as one entry with two candidates, so the page
// holds on a machine whose OpenBLAS picks either kernel (run the test with OPENBLAS_CORETYPE=Haswell to
// check the other).
inline std::vector<std::vector<std::string>> measured_figures(const std::string& page) {
    std::vector<std::vector<std::string>> figures;
    const std::regex sentence(R"(Measured:([\s\S]*?)(\.\s+(?=[A-Z*(])|\.\s*$|\n\n))");
    const std::regex alternative(R"((-?[0-9][0-9.e+-]*) \(with OPENBLAS_CORETYPE=\w+: (-?[0-9][0-9.e+-]*)\))");
    const std::regex number(R"((^|[^\w.^])(-?[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?)(?![\w]))");
    for (std::sregex_iterator m(page.begin(), page.end(), sentence), end; m != end; ++m) {
        std::string text = (*m)[1].str();
        for (std::smatch a; std::regex_search(text, a, alternative);) {
            figures.push_back({a[1].str(), a[2].str()});
            text = a.prefix().str() + " " + a.suffix().str();
        }
        for (std::sregex_iterator n(text.begin(), text.end(), number); n != end; ++n) figures.push_back({(*n)[2].str()});
    }
    return figures;
}

// True when the printed report holds `figure` as a number, to 1 % (or 1e-6 absolute near 0).
inline bool printed(const std::vector<double>& numbers, const std::string& figure) {
    const double x = std::stod(figure);
    for (double y : numbers) {
        if (std::fabs(x - y) <= 0.01 * std::max(std::fabs(x), std::fabs(y)) + 1e-6) return true;
    }
    return false;
}

// The page docs/failures/ID.md exists, quotes figures, and each is in `printed_text`.
inline void expect_page_quotes_report(const std::string& id, const std::string& printed_text_in) {
    // The page quotes what the scenario prints today: every figure of its "Measured:" sentences is a
    // number of this run's report.
    std::ifstream in(std::string(REFTRAIN_SOURCE_DIR) + "/docs/failures/" + id + ".md");
    ASSERT_TRUE(in) << "docs/failures/" << id << ".md is missing";
    std::stringstream page;
    page << in.rdbuf();
    const std::vector<std::vector<std::string>> figures = measured_figures(page.str());
    EXPECT_FALSE(figures.empty()) << "docs/failures/" << id << ".md quotes no 'Measured:' figures";
    std::vector<double> numbers;
    const std::string& printed_text = printed_text_in;
    const std::regex number(R"(-?[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?)");
    for (std::sregex_iterator n(printed_text.begin(), printed_text.end(), number), end; n != end; ++n) numbers.push_back(std::stod(n->str()));
    for (const std::vector<std::string>& candidates : figures) {
        bool found = false;
        for (const std::string& figure : candidates) found = found || printed(numbers, figure);
        EXPECT_TRUE(found) << "docs/failures/" << id << ".md quotes " << candidates[0]
                           << (candidates.size() > 1 ? " (or " + candidates[1] + ")" : "")
                           << " in a Measured: sentence, but `reftrain failure run " << id << "` does not print it";
    }
}

}  // namespace reftrain::testing

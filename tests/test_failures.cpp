// tests/test_failures.cpp — every runnable failure in both directions: its detector fires with the bug
// switched on and stays silent with it off, from the same seed (docs/failures/README.md, probes/failures.h).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "kernels/bugs.h"
#include "kernels/error.h"
#include "probes/failures.h"
#include "tests/test_util.h"

using namespace reftrain;
namespace fs = std::filesystem;

namespace {

class FailureCatalog : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override { reset_bugs(); }
    void TearDown() override { reset_bugs(); }
};

// The numbers of every "Measured:" sentence of docs/failures/ID.md (up to the sentence's end). A figure
// that depends on the BLAS kernel is quoted with its alternative right after it, "X (with
// OPENBLAS_CORETYPE=NAME: Y)": each such pair comes back as one entry with two candidates, so the page
// holds on a machine whose OpenBLAS picks either kernel (run the test with OPENBLAS_CORETYPE=Haswell to
// check the other).
std::vector<std::vector<std::string>> measured_figures(const std::string& page) {
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
bool printed(const std::vector<double>& numbers, const std::string& figure) {
    const double x = std::stod(figure);
    for (double y : numbers) {
        if (std::fabs(x - y) <= 0.01 * std::max(std::fabs(x), std::fabs(y)) + 1e-6) return true;
    }
    return false;
}

TEST_P(FailureCatalog, DetectorFiresWithTheBugAndStaysSilentWithout) {
    const std::string id = GetParam();
    const fs::path dir = reftrain::testing::scratch_dir("failure_" + id);
    std::ostringstream out;
    const FailureReport report = run_failure(id, dir.string(), out);
    EXPECT_TRUE(report.with_bug.detector_fired) << id << ": the detector missed the bug\n" << out.str();
    EXPECT_FALSE(report.without_bug.detector_fired) << id << ": false alarm without the bug: "
                                                    << report.without_bug.detector_message;
    EXPECT_FALSE(report.with_bug.detector_message.empty());
    EXPECT_EQ(report.with_bug.curve.size(), report.without_bug.curve.size());
    EXPECT_TRUE(fs::exists(dir / (id + ".svg")));
    EXPECT_NE(out.str().find("fix: "), std::string::npos);
    EXPECT_TRUE(bugs() == Bugs{}) << id << " left a bug switch on";

    // The page quotes what the scenario prints today: every figure of its "Measured:" sentences is a
    // number of this run's report.
    std::ifstream in(std::string(REFTRAIN_SOURCE_DIR) + "/docs/failures/" + id + ".md");
    ASSERT_TRUE(in) << "docs/failures/" << id << ".md is missing";
    std::stringstream page;
    page << in.rdbuf();
    const std::vector<std::vector<std::string>> figures = measured_figures(page.str());
    EXPECT_FALSE(figures.empty()) << "docs/failures/" << id << ".md quotes no 'Measured:' figures";
    std::vector<double> numbers;
    const std::string printed_text = out.str();
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

std::vector<std::string> catalog_ids() {
    std::vector<std::string> ids;
    for (const FailureScenario& s : failure_catalog()) ids.push_back(s.id);
    return ids;
}

INSTANTIATE_TEST_SUITE_P(All, FailureCatalog, ::testing::ValuesIn(catalog_ids()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                             std::string name = info.param;
                             for (char& c : name) {
                                 if (c == '-') c = '_';
                             }
                             return name;
                         });

TEST(FailureCatalogIndex, UnknownIdIsRefusedWithTheList) {
    try {
        find_failure("causal-leek");
        FAIL() << "accepted an unknown id";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("causal-leak"), std::string::npos) << e.what();
    }
}

}  // namespace

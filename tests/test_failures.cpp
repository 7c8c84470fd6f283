// tests/test_failures.cpp — every runnable failure in both directions: its detector fires with the bug
// switched on and stays silent with it off, from the same seed (docs/failures/README.md, probes/failures.h).
#include <gtest/gtest.h>

#include <filesystem>
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

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
#include "tests/failure_pages.h"
#include "tests/test_util.h"

using namespace reftrain;
namespace fs = std::filesystem;

namespace {

using reftrain::testing::expect_page_quotes_report;

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

    expect_page_quotes_report(id, out.str());
}

std::vector<std::string> catalog_ids() {
    std::vector<std::string> ids;
    // The data-parallel entries need two ranks: tests/dist/ runs them under mpirun (ctest mpi.dist_tests).
    for (const FailureScenario& s : failure_catalog()) {
        if (s.ranks == 1) ids.push_back(s.id);
    }
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

// A data-parallel entry in one process is refused with the command that runs it (tests/dist/ runs them).
TEST(FailureCatalogIndex, DataParallelEntryInOneProcessNamesTheLaunchCommand) {
    std::ostringstream out;
    reftrain::testing::expect_error([&] { run_failure("clip-per-rank", reftrain::testing::scratch_dir("dp").string(), out); },
                                    {"failure clip-per-rank needs 2 ranks", "mpirun -np 2 build/reftrain failure run clip-per-rank"});
    int data_parallel = 0;
    for (const FailureScenario& s : failure_catalog()) data_parallel += s.ranks > 1;
    EXPECT_EQ(data_parallel, 4);
    EXPECT_EQ(failure_catalog().size(), 50u);
}

TEST(FailureCatalogIndex, UnknownIdIsRefusedWithTheList) {
    try {
        find_failure("causal-leek");
        FAIL() << "accepted an unknown id";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("causal-leak"), std::string::npos) << e.what();
    }
}

}  // namespace

// tests/fuzz/fuzz_run_metrics.cpp — libFuzzer harness for the readers of a run directory's records:
// parse_run_metrics (debug/run_diff.h), the reader of metrics.jsonl that `reftrain diff-runs` and
// `reftrain report` use, and the report page itself (debug/report.h), which also reads failure.json.
//
// The first byte picks what the rest is:
//   'F'  a failure scenario's failure.json; the report of that directory is drawn
//   else metrics.jsonl (the first byte is dropped only when it is 'M', so a plain metrics file works as a
//        seed too): a file that parses is diffed against itself and the diff formatted, as diff-runs
//        would, and the report page of a directory holding it is drawn, tracer heat maps included.
#include <cstdint>
#include <filesystem>
#include <string>

#include "debug/report.h"
#include "debug/run_diff.h"
#include "kernels/error.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// This process's run directory for the report: scratch_dir()/run, holding one of the two files.
const std::string& run_dir() {
    static const std::string dir = [] {
        const std::string path = reftrain_fuzz::scratch_dir() + "/run";
        std::filesystem::create_directories(path);
        return path;
    }();
    return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view input = reftrain_fuzz::as_text(data, size);
    const char mode = input.empty() ? 'M' : input.front();
    if (!input.empty() && (mode == 'F' || mode == 'M')) input.remove_prefix(1);
    const std::string& dir = run_dir();
    std::error_code ignored;
    try {
        if (mode == 'F') {
            std::filesystem::remove(dir + "/metrics.jsonl", ignored);
            reftrain_fuzz::write_bytes(dir + "/failure.json", input);
            (void)reftrain::render_run_report(dir);
        } else {
            const std::string text(input);
            const reftrain::RunMetrics run = reftrain::parse_run_metrics(text, "fuzz/metrics.jsonl");
            const reftrain::RunDiffReport report = reftrain::diff_runs(run, run);
            (void)reftrain::format_run_diff_report(report, /*all=*/true);
            std::filesystem::remove(dir + "/failure.json", ignored);
            reftrain_fuzz::write_bytes(dir + "/metrics.jsonl", input);
            (void)reftrain::render_run_report(dir);
        }
    } catch (const reftrain::Error&) {
        // Refused with the project's error type: the expected outcome for bad input.
    }
    return 0;
}

// tests/fuzz/fuzz_run_metrics.cpp — libFuzzer harness for parse_run_metrics (debug/run_diff.h), the
// reader of metrics.jsonl files that `reftrain diff-runs` compares. It takes text, so no file is written.
// A file that parses is then diffed against itself and the report formatted, as diff-runs would: the
// comparison is where the parsed values (numbers, nulls, "skipped") are first used.
#include <cstdint>
#include <string>

#include "debug/run_diff.h"
#include "kernels/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reftrain_fuzz::as_text(data, size));
    try {
        const reftrain::RunMetrics run = reftrain::parse_run_metrics(text, "fuzz/metrics.jsonl");
        const reftrain::RunDiffReport report = reftrain::diff_runs(run, run);
        (void)reftrain::format_run_diff_report(report, /*all=*/true);
    } catch (const reftrain::Error&) {
        // Refused with the project's error type: the expected outcome for bad input.
    }
    return 0;
}

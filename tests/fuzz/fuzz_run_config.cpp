// tests/fuzz/fuzz_run_config.cpp — libFuzzer harness for load_run_config (train/run_config.h).
//
// Two modes, chosen by the first byte so that one corpus drives both:
//   'S'  the rest is "key=value" lines, passed as --set overrides with no file (path "")
//   else the rest is the run config file itself (the first byte is dropped only when it is 'F', so a
//        plain JSON seed works as a file seed too)
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "tests/fuzz/fuzz_util.h"
#include "train/run_config.h"

// The field table behind every run config is a function-local static, built on the first call. Built
// here, before the first input, so that libFuzzer's leak check (which compares allocations per input)
// does not count that one-time table as a leak of whatever input came first.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)reftrain::default_run_config();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view input = reftrain_fuzz::as_text(data, size);
    try {
        if (!input.empty() && input.front() == 'S') {
            input.remove_prefix(1);
            (void)reftrain::load_run_config("", reftrain_fuzz::split_lines(input));
        } else {
            if (!input.empty() && input.front() == 'F') input.remove_prefix(1);
            const std::string path = reftrain_fuzz::write_input_file(input, "run.json");
            (void)reftrain::load_run_config(path, {});
        }
    } catch (const reftrain::Error&) {
        // Refused with the project's error type: the expected outcome for bad input.
    }
    return 0;
}

// tests/fuzz/fuzz_name_map.cpp — libFuzzer harness for NameMap::load (debug/name_map.h), the reader of
// tensor-name map files (maps/*.json). A map that loads is printed back with to_json_text().
//
// An "extends" entry names another file relative to the map, so the fuzzer can point the map at itself
// (the input is written to name_map.json) or at any file on the machine; an endless self-extension is a
// finding (the loader should refuse the cycle), not a harness artefact.
#include <cstdint>

#include "debug/name_map.h"
#include "kernels/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = reftrain_fuzz::write_input_file(reftrain_fuzz::as_text(data, size), "name_map.json");
    try {
        const reftrain::NameMap map = reftrain::NameMap::load(path);
        (void)map.size();
        (void)map.to_json_text();
    } catch (const reftrain::Error&) {
        // Refused with the project's error type: the expected outcome for bad input.
    }
    return 0;
}

// tests/fuzz/fuzz_model_config.cpp — libFuzzer harness for ModelConfig::load (model/config.h), the
// reader of HF config.json files. A config that loads is validated too and written back with to_json(),
// as `reftrain` does when it saves a checkpoint, so a value that passes the reader but breaks the writer
// shows up here.
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "model/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = reftrain_fuzz::write_input_file(reftrain_fuzz::as_text(data, size), "config.json");
    try {
        std::vector<std::string> ignored_keys;
        const reftrain::ModelConfig config = reftrain::ModelConfig::load(path, &ignored_keys);
        config.validate(path);
        (void)config.to_json().dump();
    } catch (const reftrain::Error&) {
        // Refused with the project's error type: the expected outcome for bad input.
    }
    return 0;
}

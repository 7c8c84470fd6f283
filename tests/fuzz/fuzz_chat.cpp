// tests/fuzz/fuzz_chat.cpp — libFuzzer harness for load_conversations_jsonl (data/chat.h): the input is
// a conversations file, one {"messages": [{"role": ..., "content": ...}, ...]} object per line.
#include <cstdint>

#include "data/chat.h"
#include "kernels/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path =
        reftrain_fuzz::write_input_file(reftrain_fuzz::as_text(data, size), "conversations.jsonl");
    try {
        (void)reftrain::load_conversations_jsonl(path);
    } catch (const reftrain::Error&) {
        // Refused with the project's error type: the expected outcome for bad input.
    }
    return 0;
}

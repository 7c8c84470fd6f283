// tests/fuzz/fuzz_safetensors.cpp — libFuzzer harness for SafetensorsFile::open (kernels/safetensors.h).
//
// The input is a whole .safetensors file (u64 header length, JSON header, data buffer). open() must
// accept it or throw reftrain::Error; a file that opens promises every tensor's bytes in range, so the
// harness then reads each small tensor back, converted to F32 or I64, which would touch any byte a
// faulty bounds check let through (ASan reports it).
#include <cstdint>
#include <vector>

#include "kernels/error.h"
#include "kernels/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// Tensors up to this many elements are read back; bigger ones would only slow the fuzzer down.
constexpr int64_t kMaxReadBackElements = 1 << 16;

void read_back(const reftrain::SafetensorsFile& file, const reftrain::SafetensorsEntry& entry) {
    using reftrain::DType;
    if (entry.numel() > kMaxReadBackElements) return;
    (void)file.raw_data(entry.name);
    // Float dtypes convert to F32; integer ones to I64 (U8, I32, I64 do; others throw reftrain::Error).
    const DType target = reftrain::dtype_is_float(entry.dtype) ? DType::F32 : DType::I64;
    std::vector<int64_t> storage(static_cast<size_t>(entry.numel()) + 1);  // 8 bytes per element fits both
    const reftrain::Tensor dst(storage.data(), target, entry.shape, entry.name);
    file.read_into(entry.name, dst);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = reftrain_fuzz::write_input_file(reftrain_fuzz::as_text(data, size), "input.safetensors");
    try {
        const reftrain::SafetensorsFile file = reftrain::SafetensorsFile::open(path);
        for (const reftrain::SafetensorsEntry& entry : file.entries()) {
            try {
                read_back(file, entry);
            } catch (const reftrain::Error&) {
                // A dtype that does not convert is refused per tensor; the others are still read.
            }
        }
        (void)file.metadata();
    } catch (const reftrain::Error&) {
        // Refused with the project's error type: the expected outcome for bad input.
    }
    return 0;
}

// tests/fuzz/fuzz_checkpoint.cpp — libFuzzer harness for read_checkpoint_state and
// read_checkpoint_run_config (train/checkpoint.h).
//
// A checkpoint directory holds state.bin (magic "RFTSTATE", u32 version, u64 payload length, payload,
// u32 CRC-32 of the payload; the payload is u64 header length, the JSON header, then the raw moments)
// and run.json; those are the only files these two readers open. Random bytes almost never carry a
// matching CRC-32, so most of state.bin's parser would sit behind the checksum. The first byte of the
// input therefore picks what the rest is:
//   'B'  the whole state.bin, as is (magic, version, length and CRC checks)
//   'R'  run.json
//   else the payload's JSON header, up to the first NUL byte, and after it the moment bytes; the harness
//        frames them into a state.bin with a correct length and CRC-32 (the first byte is dropped only
//        when it is 'H', so a plain JSON header works as a seed too)
#include <algorithm>
#include <cstdint>
#include <string>

#include <zlib.h>

#include "kernels/error.h"
#include "tests/fuzz/fuzz_util.h"
#include "train/checkpoint.h"

namespace {

void append_le(std::string& out, uint64_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

// state.bin around `header` (JSON text) and `moments`, framed as train/checkpoint.cpp writes it.
std::string frame_state_file(std::string_view header, std::string_view moments) {
    std::string payload;
    append_le(payload, header.size(), 8);
    payload.append(header);
    payload.append(moments);
    const uint32_t crc = static_cast<uint32_t>(
        crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(payload.data()), static_cast<uInt>(payload.size())));
    std::string file = "RFTSTATE";
    append_le(file, reftrain::kCheckpointVersion, 4);
    append_le(file, payload.size(), 8);
    file += payload;
    append_le(file, crc, 4);
    return file;
}

// The checkpoint directory of this process: scratch_dir()/checkpoint.
const std::string& checkpoint_dir() {
    static const std::string dir = [] {
        const std::string path = reftrain_fuzz::scratch_dir() + "/checkpoint";
        std::filesystem::create_directories(path);
        return path;
    }();
    return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view input = reftrain_fuzz::as_text(data, size);
    const char mode = input.empty() ? 'H' : input.front();
    if (!input.empty() && (mode == 'B' || mode == 'R' || mode == 'H')) input.remove_prefix(1);
    const std::string& dir = checkpoint_dir();
    try {
        if (mode == 'R') {
            reftrain_fuzz::write_bytes(dir + "/run.json", input);
            (void)reftrain::read_checkpoint_run_config(dir).dump();
        } else if (mode == 'B') {
            reftrain_fuzz::write_bytes(dir + "/state.bin", input);
            (void)reftrain::read_checkpoint_state(dir);
        } else {
            const size_t split = std::min(input.find('\0'), input.size());
            const std::string_view moments = split < input.size() ? input.substr(split + 1) : std::string_view{};
            reftrain_fuzz::write_bytes(dir + "/state.bin", frame_state_file(input.substr(0, split), moments));
            (void)reftrain::read_checkpoint_state(dir);
        }
    } catch (const reftrain::Error&) {
        // Refused with the project's error type: the expected outcome for bad input.
    }
    return 0;
}

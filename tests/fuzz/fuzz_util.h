// tests/fuzz/fuzz_util.h — what every libFuzzer harness of tests/fuzz shares.
//
// Most reftrain parsers read a path, not a buffer, so a harness writes each input to a file first.
// Every process gets its own scratch directory, /dev/shm/reftrain_fuzz.<pid> (/tmp without /dev/shm),
// made once and removed at exit: the same path is rewritten for each input, so nothing piles up, and
// parallel fuzzers (-jobs=N) never share a file. The project's rule for bad input is a reftrain::Error
// naming the file; a harness therefore catches that one type and lets anything else escape, which
// libFuzzer reports as a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

namespace reftrain_fuzz {

// The fuzz input as text (it may hold any byte, NUL included).
inline std::string_view as_text(const uint8_t* data, size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// This process's scratch directory, created on first use and removed at exit.
inline const std::string& scratch_dir() {
    // Never destroyed, so that the exit handler below can still read it.
    static const std::string& dir = *new std::string([] {
        // In memory (/dev/shm, a tmpfs) where there is one: a write to a disk file system costs more
        // than most parsers' work on the input (ext4's truncate alone was 8% of a harness's time).
        const char* base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
        return std::string(base) + "/reftrain_fuzz." + std::to_string(::getpid());
    }());
    static const bool created = [] {
        std::filesystem::create_directories(dir);
        std::atexit([] {
            std::error_code ignored;
            std::filesystem::remove_all(dir, ignored);
        });
        return true;
    }();
    (void)created;
    return dir;
}

// Writes `bytes` to `path`, replacing it; aborts when it cannot (a harness bug, not a finding).
inline void write_bytes(const std::string& path, std::string_view bytes) {
    std::FILE* file = std::fopen(path.c_str(), "wb");
    if (!file || std::fwrite(bytes.data(), 1, bytes.size(), file) != bytes.size() || std::fclose(file) != 0) {
        std::perror(path.c_str());
        std::abort();
    }
}

// Writes the input to scratch_dir()/name and returns that path.
inline std::string write_input_file(std::string_view bytes, const std::string& name) {
    const std::string path = scratch_dir() + "/" + name;
    write_bytes(path, bytes);
    return path;
}

// Splits `text` at '\n' (a trailing '\r' is kept: the parser under test sees the bytes as given).
inline std::vector<std::string> split_lines(std::string_view text) {
    std::vector<std::string> lines;
    size_t start = 0;
    while (start <= text.size()) {
        const size_t end = text.find('\n', start);
        if (end == std::string_view::npos) {
            if (start < text.size()) lines.emplace_back(text.substr(start));
            break;
        }
        lines.emplace_back(text.substr(start, end - start));
        start = end + 1;
    }
    return lines;
}

}  // namespace reftrain_fuzz

// tests/test_util.h — small assertions shared by the GoogleTest suites.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "model/config.h"

namespace reftrain::testing {

// The tiny model the unit tests share: GQA (4 query heads on 2 KV heads), QK-norm, head_dim 6 (not
// 16 / 4 and not a multiple of 8, so no code may assume either), 2 layers, and an init std of 0.3,
// large enough that attention is far from uniform. A test that needs another shape changes fields.
inline ModelConfig tiny_model_config() {
    ModelConfig c;
    c.vocab_size = 23;
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 6;
    c.max_position_embeddings = 8;
    c.initializer_range = 0.3;
    return c;
}

// The message of the reftrain::Error that `body` throws; a test failure (and "") if it throws none.
inline std::string error_of(const std::function<void()>& body) {
    try {
        body();
    } catch (const Error& e) {
        return e.what();
    }
    ADD_FAILURE() << "expected a reftrain::Error";
    return "";
}

// Every phrase must occur in `message`.
inline void expect_contains(const std::string& message, const std::vector<std::string>& phrases) {
    for (const std::string& phrase : phrases) {
        EXPECT_NE(message.find(phrase), std::string::npos) << "error message lacks \"" << phrase << "\":\n  " << message;
    }
}

// `body` must throw a reftrain::Error whose message contains every phrase; returns the message.
inline std::string expect_error(const std::function<void()>& body, const std::vector<std::string>& phrases) {
    const std::string message = error_of(body);
    if (!message.empty()) expect_contains(message, phrases);
    return message;
}

// The name of the running GoogleTest test (for per-test file names).
inline std::string current_test_name() { return ::testing::UnitTest::GetInstance()->current_test_info()->name(); }

// A fresh, empty directory for this test process: <tmp>/reftrain_test_<name>_<pid>.
// ctest runs every test in its own process, two at a time in CI, so a fixed name shared by two
// tests (or by two runs of the suite) lets one process delete files the other is writing; the pid
// keeps them apart. The directories are removed when the process exits, unless
// REFTRAIN_KEEP_TEST_DIRS is set (to look at what a failing test wrote).
inline std::filesystem::path scratch_dir(const std::string& name) {
    struct Cleanup {
        std::vector<std::filesystem::path> dirs;
        ~Cleanup() {
            if (std::getenv("REFTRAIN_KEEP_TEST_DIRS") != nullptr) return;
            std::error_code ignored;
            for (const auto& dir : dirs) std::filesystem::remove_all(dir, ignored);
        }
    };
    static Cleanup cleanup;
    const std::filesystem::path dir =
        std::filesystem::temp_directory_path() / ("reftrain_test_" + name + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    cleanup.dirs.push_back(dir);
    return dir;
}

}  // namespace reftrain::testing

// tests/test_util.h — small assertions shared by the GoogleTest suites.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "kernels/error.h"

namespace reftrain::testing {

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

}  // namespace reftrain::testing

// kernels/error.h — the one error type of reftrain.
//
// Every failure the user can cause (a bad file, a wrong shape, an unknown config key) is reported by
// throwing reftrain::Error whose message names the file or op, the field, and what was expected.
// `fail(...)` concatenates its arguments with operator<< so call sites read like a sentence:
//   fail(path, ": tensor '", name, "' has shape ", got, ", expected ", want);
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace reftrain {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

template <class... Parts>
std::string concat(const Parts&... parts) {
    std::ostringstream out;
    (out << ... << parts);
    return out.str();
}

template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
    throw Error(concat(parts...));
}

// check(cond, parts...) — fail with the message when cond is false. Used for preconditions that a
// caller can violate (shapes, dtypes), never for internal logic that cannot go wrong.
template <class... Parts>
inline void check(bool condition, const Parts&... parts) {
    if (!condition) fail(parts...);
}

}  // namespace reftrain

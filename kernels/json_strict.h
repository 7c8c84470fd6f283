// kernels/json_strict.h — the one JSON reader of files users hand in.
//
// nlohmann::json keeps the last of two equal keys in an object, so {"lr": 1, "lr": 2} silently
// means lr = 2. Every JSON input of reftrain (configs, safetensors headers, checkpoints, chat JSONL,
// metrics) goes through parse_json_noting_duplicates instead, and the caller refuses a repeat with a
// message of its own. It also refuses what a file must never be able to do to the program:
//   - a NUL byte (some readers stop at it and ignore the rest; the rest was meant to be read);
//   - nesting deeper than kMaxJsonDepth (deeply nested values overflow the stack when copied or printed);
//   - a number too large for a double (1e400: nlohmann throws out_of_range, not parse_error).
// Every such refusal is a nlohmann::json::exception, so a caller that catches json::exception (never only
// parse_error) turns each into an error naming its file.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/error.h"

namespace reftrain {

// Deeper than any config, header or state reftrain writes (they nest 4 levels) by far.
constexpr int kMaxJsonDepth = 128;

// A refusal of the reader itself (NUL byte, nesting), as a json::exception like nlohmann's own.
struct JsonInputError : nlohmann::json::exception {
    explicit JsonInputError(const std::string& what) : nlohmann::json::exception(900, what.c_str()) {}
};

struct DuplicateKey {
    std::string key;  // empty when every key is unique
    size_t depth = 0; // 1 = a key of the top-level object, 2 = one level further in, ...
};

// Parses `text`; throws a nlohmann::json::exception on invalid JSON, a NUL byte, nesting deeper than
// kMaxJsonDepth or a number out of a double's range (callers add the file name). The first repeated key,
// if any, is reported through `duplicate`.
inline nlohmann::json parse_json_noting_duplicates(std::string_view text, DuplicateKey* duplicate) {
    using json = nlohmann::json;
    if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
        throw JsonInputError("a NUL byte at offset " + std::to_string(nul) + " (JSON text has none)");
    }
    std::vector<std::set<std::string>> open_objects;
    int depth = 0;
    *duplicate = DuplicateKey{};
    auto on_event = [&](int, json::parse_event_t event, json& parsed) {
        if (event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) {
            if (++depth > kMaxJsonDepth) {
                throw JsonInputError("nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
            }
        } else if (event == json::parse_event_t::object_end || event == json::parse_event_t::array_end) {
            --depth;
        }
        if (event == json::parse_event_t::object_start) {
            open_objects.emplace_back();
        } else if (event == json::parse_event_t::object_end) {
            open_objects.pop_back();
        } else if (event == json::parse_event_t::key && duplicate->key.empty()) {
            const auto& key = parsed.get_ref<const std::string&>();
            if (!open_objects.back().insert(key).second) *duplicate = DuplicateKey{key, open_objects.size()};
        }
        return true;
    };
    return json::parse(text.begin(), text.end(), on_event);
}

// The one reader of JSON files (model configs, run/PPO/GRPO configs): refuses a missing file, invalid
// JSON and a key that appears twice, each naming the file; `what` names the kind ("model config").
inline nlohmann::json read_json_file(const std::string& path, const std::string& what) {
    std::ifstream in(path, std::ios::binary);
    check(static_cast<bool>(in), path, ": cannot open the ", what, " (", std::strerror(errno), ")");
    std::stringstream text;
    text << in.rdbuf();
    DuplicateKey duplicate;
    nlohmann::json j;
    try {
        j = parse_json_noting_duplicates(text.str(), &duplicate);
    } catch (const nlohmann::json::exception& e) {
        fail(path, ": the ", what, " is not valid JSON: ", e.what());
    }
    check(duplicate.key.empty(), path, ": key '", duplicate.key, "' appears twice in the ", what,
          " (which one did you mean?)");
    return j;
}

// Levenshtein distance (insertions, deletions, substitutions), for "did you mean" suggestions.
inline size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t substitute = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
            diagonal = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitute});
        }
    }
    return row[b.size()];
}

// The candidate nearest to `key` within edit distance `max_distance` (3 unless told), or "" when none is
// that close. Callers whose inputs legitimately hold names near their own (HF config.json files hold
// keys of other architectures) pass a tighter bound and keep a list of such names.
inline std::string closest_name(std::string_view key, const std::vector<std::string>& candidates,
                                size_t max_distance = 3) {
    std::string closest;
    size_t best = max_distance + 1;
    for (const std::string& candidate : candidates) {
        // The distance is at least the difference in length: a candidate that cannot beat the best
        // so far is skipped without the O(|key|·|candidate|) table (a fuzzed or pasted key can be long).
        const size_t length_gap = key.size() > candidate.size() ? key.size() - candidate.size()
                                                                 : candidate.size() - key.size();
        if (length_gap >= best) continue;
        const size_t d = edit_distance(key, candidate);
        if (d < best) { best = d; closest = candidate; }
    }
    return closest;
}

}  // namespace reftrain

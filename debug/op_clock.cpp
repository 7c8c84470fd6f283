// debug/op_clock.cpp — the per-op time table (see op_clock.h).
#include "debug/op_clock.h"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace reftrain {

std::string OpClock::layer_generic(std::string_view name) {
    std::string out(name);
    const size_t at = out.find("layers.");
    if (at == std::string::npos) return out;
    size_t end = at + 7;
    while (end < out.size() && out[end] >= '0' && out[end] <= '9') ++end;
    if (end == at + 7) return out;  // "layers." not followed by an index
    return out.substr(0, at + 7) + "N" + out.substr(end);
}

double OpClock::now() const {
    if (clock_ == Clock::thread_cpu) {
        timespec ts{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void OpClock::lap(std::string_view key) {
    const double t = now();
    auto it = by_key_.find(key);
    if (it == by_key_.end()) it = by_key_.emplace(std::string(key), Row{std::string(key)}).first;
    it->second.seconds += t - last_;
    it->second.calls += 1;
    last_ = t;
}

void OpClock::lap(std::string_view op, std::string_view output_name) {
    std::string key(op);
    if (!output_name.empty()) key += " " + layer_generic(output_name);
    lap(key);
}

std::vector<OpClock::Row> OpClock::rows() const {
    std::vector<Row> out;
    for (const auto& [key, row] : by_key_) out.push_back(row);
    std::stable_sort(out.begin(), out.end(), [](const Row& a, const Row& b) { return a.seconds > b.seconds; });
    return out;
}

double OpClock::total_seconds() const {
    double total = 0.0;
    for (const auto& [key, row] : by_key_) total += row.seconds;
    return total;
}

std::string OpClock::table(int64_t steps) const {
    const double total = total_seconds(), per = steps > 0 ? static_cast<double>(steps) : 1.0;
    std::string out;
    char line[512];
    std::snprintf(line, sizeof line, "  %9s  %6s  %9s  %s\n", "ms/step", "share", "calls/step", "op and its first output");
    out += line;
    for (const Row& r : rows()) {
        std::snprintf(line, sizeof line, "  %9.3f  %5.1f%%  %9.1f  %s\n", 1e3 * r.seconds / per,
                      total > 0 ? 100.0 * r.seconds / total : 0.0, static_cast<double>(r.calls) / per, r.key.c_str());
        out += line;
    }
    std::snprintf(line, sizeof line, "  %9.3f  %5.1f%%  %9s  total\n", 1e3 * total / per, 100.0, "");
    out += line;
    return out;
}

}  // namespace reftrain

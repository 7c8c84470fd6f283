// train/progress.cpp — the live progress line (train/progress.h).
#include "train/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace reftrain {

std::string format_duration(double seconds) {
    const int64_t s = static_cast<int64_t>(std::max(0.0, seconds) + 0.5);
    char buf[32];
    if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
    else std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
    return buf;
}

std::string format_progress(const ProgressState& s, int columns) {
    const int limit = std::max(20, columns - 1);
    auto bar = [&](int width) {
        std::string out;
        if (width <= 0) return out;
        const int64_t done = s.max_steps > 0 ? width * std::clamp(s.step, int64_t{0}, s.max_steps) / s.max_steps : 0;
        const size_t filled = static_cast<size_t>(std::clamp<int64_t>(done, 0, width));
        out += '[';
        out.append(filled, '#');
        out.append(static_cast<size_t>(width) - filled, '.');
        out += "] ";
        return out;
    };
    char core[96], lr[32], gnorm[32], speed[32], eta[48];
    std::snprintf(core, sizeof core, "step %lld/%lld loss %.4f", (long long)s.step, (long long)s.max_steps, s.loss);
    std::snprintf(lr, sizeof lr, " lr %.2e", s.lr);
    std::snprintf(gnorm, sizeof gnorm, " gnorm %.3f", s.grad_norm);
    std::snprintf(speed, sizeof speed, " %.0f tok/s", s.tokens_per_second);
    std::snprintf(eta, sizeof eta, " ETA %s", format_duration(s.eta_seconds).c_str());
    // From the fullest line to the barest; the first that fits is drawn.
    const std::string tail_full = std::string(core) + lr + gnorm + speed + eta;
    const std::string tail_short = std::string(core) + eta;
    for (const int width : {30, 20, 10}) {
        const std::string line = bar(width) + tail_full;
        if (static_cast<int>(line.size()) <= limit) return line;
    }
    for (const int width : {10, 0}) {
        const std::string line = bar(width) + tail_short;
        if (static_cast<int>(line.size()) <= limit) return line;
    }
    return std::string(core).substr(0, static_cast<size_t>(limit));
}

int terminal_columns(int fd) {
    winsize size{};
    if (::ioctl(fd, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
    if (const char* env = std::getenv("COLUMNS")) {
        const int n = std::atoi(env);
        if (n > 0) return n;
    }
    return 80;
}

}  // namespace reftrain

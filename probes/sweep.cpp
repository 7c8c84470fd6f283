// probes/sweep.cpp — the paired PPO seed sweep (see sweep.h).
#include "probes/sweep.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "kernels/error.h"
#include "train/ppo.h"

namespace reftrain {

namespace {

// The mean return of the last `count` finished episodes (all of them when fewer).
double last_mean(const std::vector<double>& returns, size_t count) {
    count = std::min(count, returns.size());
    double sum = 0.0;
    for (size_t k = returns.size() - count; k < returns.size(); ++k) sum += returns[k];
    return count ? sum / static_cast<double>(count) : 0.0;
}

double one_run(const SweepOptions& o, const std::vector<std::string>& extra, int64_t seed, const std::string& name) {
    std::vector<std::string> sets = o.sets;
    sets.insert(sets.end(), extra.begin(), extra.end());
    sets.push_back("seed=" + std::to_string(seed));
    sets.push_back("threads=1");
    sets.push_back("log_every=0");
    sets.push_back("run_dir=\"" + (o.run_dir.empty() ? std::string() : (std::filesystem::path(o.run_dir) / name).string()) + "\"");
    const PpoConfig config = load_ppo_config(o.config_path, sets);
    std::ostringstream quiet;
    PpoTrainer trainer(config, quiet);
    trainer.run();
    return last_mean(trainer.episode_returns(), 100);
}

std::string fmt(double v, int precision = 4) {
    std::ostringstream s;
    s.precision(precision);
    s << v;
    return s.str();
}

}  // namespace

std::string SweepResult::verdict() const {
    const PairedComparison& p = comparison;
    std::ostringstream s;
    s << "B - A = " << fmt(p.mean_difference) << " +- " << fmt(p.standard_error, 3) << " (s.e.) over " << p.pairs
      << " seeds, t = " << fmt(p.t, 3) << "; ";
    if (p.significant()) {
        s << "|t| > " << fmt(p.critical_t, 3) << ": B differs from A beyond seed noise";
    } else {
        s << "|t| <= " << fmt(p.critical_t, 3) << ": the difference is inside seed noise (no claim either way)";
    }
    return s.str();
}

SweepResult run_ppo_sweep(const SweepOptions& o, std::ostream& out) {
    check(o.seeds >= 2, "sweep: --seeds must be >= 2 for a paired t-test, got ", o.seeds);
    check(o.b_seed_offset >= 0, "sweep: --b-seed-offset must be >= 0, got ", o.b_seed_offset);
    check(!o.b_sets.empty() || o.b_seed_offset > 0, "sweep: B is A (no --b change and no --b-seed-offset)");
    const auto start = std::chrono::steady_clock::now();
    SweepResult r;
    char line[200];
    std::snprintf(line, sizeof line, "%6s %14s %14s %10s\n", "seed", "A", "B", "B - A");
    out << line;
    for (int64_t seed = 1; seed <= o.seeds; ++seed) {
        r.a.push_back(one_run(o, {}, seed, "a_seed" + std::to_string(seed)));
        r.b.push_back(one_run(o, o.b_sets, seed + o.b_seed_offset, "b_seed" + std::to_string(seed + o.b_seed_offset)));
        std::snprintf(line, sizeof line, "%6lld %14.2f %14.2f %+10.2f\n", static_cast<long long>(seed), r.a.back(),
                      r.b.back(), r.b.back() - r.a.back());
        out << line << std::flush;
    }
    r.comparison = paired_t(r.a, r.b, o.level);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return r;
}

}  // namespace reftrain

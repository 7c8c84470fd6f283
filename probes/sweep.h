// probes/sweep.h — a paired seed sweep: does configuration B differ from A by more than seed noise?
//
// One seed proves nothing in RL: two runs of the same PPO config on different seeds can differ by more
// than a real implementation detail does (Henderson et al. 2018, "Deep RL That Matters"). The sweep
// runs A and B on the same seeds 1..N (B optionally on seed + offset, the null control), takes one
// number per run (PPO: the mean return of the last 100 episodes), and tests the per-seed differences
// B - A with a paired t-test (probes/failure_detectors.h, paired_t). It says "inside seed noise" when
// |t| does not clear the critical value, whatever the means look like.
// `reftrain sweep` (tools/cmd_rl.cpp) prints it; docs/failures/no-adv-normalisation.md and
// adam-eps.md quote it.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "probes/failure_detectors.h"

namespace reftrain {

struct SweepOptions {
    std::string config_path;            // a PPO config ("" = defaults)
    std::vector<std::string> sets;      // applied to A and B
    std::vector<std::string> b_sets;    // applied to B only: the change under test
    int64_t seeds = 8;                  // seeds 1..N
    int64_t b_seed_offset = 0;          // B runs on seed + offset (> 0: a null control, pure seed noise)
    double level = 0.99;                // two-sided confidence level of the verdict (0.95 or 0.99)
    std::string run_dir;                // "" = nothing written
};

struct SweepResult {
    std::vector<double> a, b;           // the last-100-episode mean return per seed
    PairedComparison comparison;
    double seconds = 0.0;
    // "B - A = m +- se over N seeds, t = ..., |t| > crit: B differs from A" or "... inside seed noise".
    std::string verdict() const;
};

// Runs the 2N PPO runs (single-threaded each) and compares them; prints one line per seed to `out`.
SweepResult run_ppo_sweep(const SweepOptions& options, std::ostream& out);

}  // namespace reftrain

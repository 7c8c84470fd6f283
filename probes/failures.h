// probes/failures.h — the catalog of runnable failures (docs/failures/README.md): folklore you can run.
//
// A scenario trains a toy task twice from the same seed: once with its bug switch on (kernels/bugs.h)
// and once without. Each half reports a symptom curve (loss, LR, grad norm, ...) and whether the
// detector for this bug fired, with its message. `reftrain failure run ID` prints both curves as an
// ASCII chart, writes an SVG plot into the run directory, says which detector fired and prints the
// fix. A scenario is correct when the detector fires with the bug and stays silent without it; the
// tests (tests/test_failures.cpp) assert exactly that for every entry.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <utility>
#include <vector>

namespace reftrain {

struct FailureHalf {
    std::string curve_name{};                            // what the curve measures ("loss", "lr", ...)
    std::vector<double> curve{};                         // one value per optimizer step
    std::vector<std::pair<std::string, std::string>> numbers{};  // the symptom in numbers
    bool detector_fired = false;
    std::string detector_message{};                      // what the detector said (empty when silent)
    int64_t detector_step = -1;      // 0-based step of the curve where the detector first fired (-1: not per step)
    std::vector<double> loss{};      // the training loss per step, when the curve measures something else
};

struct FailureContext {
    bool bug = false;            // the half with the bug switched on
    std::string run_dir;         // this half's directory (checkpoints, tracer dumps)
    std::ostream* log = nullptr; // the training log of this half
    uint64_t seed = 1;           // both halves' seed (`failure run ID --seed N`); the docs quote seed 1
};

struct FailureScenario {
    std::string id;        // docs/failures/README.md id, e.g. "forgot-zero-grad"
    std::string title;
    std::string source;    // who told the world about it (cited; our own words in the doc page)
    std::string bug;       // what the switch does
    std::string symptom;   // what a user sees
    std::string detector;  // what catches it
    std::string fix;
    bool log_scale = false;  // draw the curve on a log axis
    std::function<FailureHalf(const FailureContext&)> run;
    int ranks = 1;           // > 1: a data-parallel entry, run under `mpirun -np ranks` (probes/failures_dist.cpp)
};

const std::vector<FailureScenario>& failure_catalog();
// The reinforcement-learning entries, appended to the catalog after the language-model ones:
// probe-value-loss, probe-backprop, discount-across-reset, advantage-sign, stale-experience,
// reward-mean-shift, truncation-as-termination (probes/failures_ppo.cpp) and grpo-zero-signal,
// negative-kl (probes/failures_grpo.cpp). Their curve is one value per update, not per SFT step.
std::vector<FailureScenario> ppo_failure_scenarios();
// The language-model entries added after the first ten (probes/failures_lm.cpp).
std::vector<FailureScenario> lm_failure_scenarios();
std::vector<FailureScenario> grpo_failure_scenarios();
// The data-parallel entries (clip-per-rank, grads-not-averaged, data-not-sharded, init-not-broadcast), last:
// `mpirun -np 2 reftrain failure run dist`.
std::vector<FailureScenario> dist_failure_scenarios();
const FailureScenario& find_failure(const std::string& id);   // fails listing the ids

struct FailureReport {
    FailureHalf with_bug, without_bug;
    bool detector_works() const { return with_bug.detector_fired && !without_bug.detector_fired; }
};

// Runs both halves (bug on, then off, same seed), prints the report to `out`, writes
// <run_dir>/<id>.svg, and returns the two halves. A data-parallel entry needs world() to have its ranks
// (else it fails saying how to launch it); every rank runs both halves, and only rank 0 prints and plots.
FailureReport run_failure(const std::string& id, const std::string& run_dir, std::ostream& out, uint64_t seed = 1);

}  // namespace reftrain

// probes/probe_runs.h — the probe environments' use: train PPO on one (small, seconds on one core) and
// check the learned V and pi against the answers probe_cases() states (probes/envs.h, docs/envs.md).
// `reftrain rl probe`, the probe tests and the PPO failure scenarios run through here.
#pragma once

#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "train/ppo.h"

namespace reftrain {

struct ProbeCheck {
    std::vector<double> obs;
    double value = 0.0, expected_value = 0.0;
    std::vector<double> probs, expected_probs;   // expected empty = any policy is fine
    bool ok = false;
};
struct ProbeReport {
    std::string env;
    std::vector<ProbeCheck> checks;
    double value_tolerance = 0.0, prob_tolerance = 0.0;  // the epsilons the verdict used
    bool solved = false;                                 // every check ok
    std::vector<PpoUpdateMetrics> updates;
    double seconds = 0.0;
};
// The PPO config a probe environment is trained with (small, seconds on one core), then `sets`.
PpoConfig probe_ppo_config(const std::string& env, const std::vector<std::string>& sets);
// Trains PPO on a probe environment and checks V and pi against probe_cases() within the tolerances:
// |V - V*| <= 0.05 * max(1, max |V*|) and every |pi(a) - pi*(a)| <= 0.02. `after_update`, when given,
// is called after every update (the failure catalog records its curves through it).
ProbeReport run_probe(const PpoConfig& config, std::ostream& log,
                      const std::function<void(PpoTrainer&, const PpoUpdateMetrics&)>& after_update = {});
// Prints the table of learned vs correct values and probabilities, and the verdict.
void print_probe_report(const ProbeReport& report, std::ostream& out);

}  // namespace reftrain

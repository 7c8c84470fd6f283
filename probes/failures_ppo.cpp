// probes/failures_ppo.cpp — the PPO entries of the failure catalog (filled in by the PPO work).
#include "probes/failures.h"

namespace reftrain {

std::vector<FailureScenario> ppo_failure_scenarios() { return {}; }

}  // namespace reftrain

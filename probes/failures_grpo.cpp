// probes/failures_grpo.cpp — the GRPO entries of the failure catalog (filled in by the GRPO work).
#include "probes/failures.h"

namespace reftrain {

std::vector<FailureScenario> grpo_failure_scenarios() { return {}; }

}  // namespace reftrain

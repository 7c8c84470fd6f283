// train/grpo.h — GRPO (group-relative policy optimisation; Shao et al. 2024, DeepSeekMath) for the
// chat transformer on a verifiable toy task.
//
// CONTRACT SKETCH (the GRPO work completes this header): per update, draw P prompts from the task's
// train split, sample a group of G completions per prompt with the KV cache (model/generate.h), reward
// each by the task's verifier, advantage = reward - group mean (optionally / (group std + eps), eps
// stated), token-level policy-gradient loss on the sampled assistant tokens only (prompt and template
// tokens masked), optional KL to a frozen reference; log reward mean, zero-advantage-group fraction,
// KL (k1 and k3) and sampled lengths.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace reftrain {

// `reftrain rl --config F [--set k=v ...]` when F says "algorithm": "grpo": loads the GRPO config,
// runs it, prints and writes its metrics; returns the process exit code.
int run_grpo_command(const std::string& config_path, const std::vector<std::string>& sets, std::ostream& out);

}  // namespace reftrain

// train/grpo.h — GRPO (group-relative policy optimisation; Shao et al. 2024, DeepSeekMath) for the
// chat transformer on a verifiable toy task, starting from an SFT checkpoint of `reftrain train`.
//
// One update (GrpoTrainer::update; docs/grpo.md has the derivation and the measured runs):
//   1. draw P prompts from the task's TRAIN split and render each with the checkpoint's chat template
//   2. sample G completions per prompt with the KV cache (model/generate.h) at sampling.temperature,
//      each ending at the end-of-turn token or after max_new_tokens
//   3. reward each by the task's verifier: reward.correct when right (and the turn ended: a completion
//      cut off at max_new_tokens has not answered), else reward.format when the model ended its turn
//      with a non-empty answer, else 0
//   4. advantage A = r - mean(group) (fp64; / (std(group) + std_eps) when std_normalize); a group whose
//      rewards are all equal carries no signal and gets A = 0 exactly (group_advantages)
//   5. rows = prompt + completion; targets = the completion's tokens including its end-of-turn, prompt
//      and template tokens masked (build_policy_batch). With N = number of sampled tokens in the update:
//        L = (1/N) sum_t [ -A_t log p(x_t) + kl_coef * k3_t ],  k3_t = exp(-rho_t) - 1 + rho_t,
//        rho_t = log p(x_t) - log p_ref(x_t)     (p_ref: a frozen copy of the initial weights)
//      backpropagated through Transformer::backward_weighted with per-token weights
//        w_t = -dL/dlog p(x_t) = (A_t - kl_coef * (1 - exp(-rho_t))) / N
//   6. clip the global gradient norm, one AdamW step.
// Sampling and the update use the same weights, so the run is on-policy: PPO's ratio is 1 and its clip
// never acts, which is why there is none. Logged per update: reward mean, accuracy of the samples, the
// fraction of zero-signal groups (uniform rewards) and of zero-advantage groups, KL k1 and k3 (per-token
// means against the reference, logged even when kl_coef = 0), sampled lengths, grad norm, seconds.
// Checked per update: invariants rl.uniform_group_zero_advantage and rl.kl_nonnegative.
// Held-out exact match (greedy, the task's TEST split, the task verifier) before the first update,
// every eval.every updates and after the last. Deterministic on the CPU for a given thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/chat.h"
#include "data/tasks.h"
#include "data/tokenizer.h"
#include "debug/invariants.h"
#include "kernels/bugs.h"
#include "kernels/random.h"
#include "model/transformer.h"
#include "train/adamw.h"

namespace reftrain {

// ---- configuration ----------------------------------------------------------------------------------

struct GrpoConfig {
    std::string run_dir = "runs/grpo";
    // The SFT checkpoint to start from: a checkpoint directory (run_dir/checkpoints/step_NNNNNNN) or a
    // run directory, whose checkpoints/latest is used. Model, tokenizer, chat template, system prompt
    // and (unless data.task is set) the task come from it.
    std::string init;
    uint64_t seed = 1;
    int64_t threads = 0;                 // OpenMP threads; 0 = leave the default
    std::string task;                    // "" = the checkpoint's task (data.task)
    nlohmann::json task_options = nlohmann::json(nlohmann::json::value_t::object);   // used only when task is set
    double reward_correct = 1.0;         // the verifier says the answer is right
    double reward_format = 0.0;          // wrong, but the turn ended with a non-empty answer
    int64_t prompts_per_update = 16;     // P
    int64_t group_size = 8;              // G
    double temperature = 1.0;            // the loss scores the model at temperature 1 (see docs/grpo.md)
    int64_t top_k = 0;
    int64_t max_new_tokens = 8;
    bool std_normalize = false;          // A = (r - mean) / (std + std_eps), std unbiased (G - 1)
    double std_eps = 1e-4;               // as TRL's GRPOTrainer
    double kl_coef = 0.0;                // 0 = no KL term (the KL is still measured and logged)
    // PPO-style inner epochs (DeepSeekMath's mu): each update samples once, then takes inner_epochs
    // optimizer steps on the same samples with the clipped ratio r = p / p_old. With 1 the ratio is
    // exactly 1 and the update is the plain policy gradient.
    int64_t inner_epochs = 1;
    double clip_eps = 0.2;
    // Where p_old comes from: "trainer" (the policy's own forward before the first inner step, detached)
    // or "sampler" (the log-probs the sampler recorded, as a vLLM-style setup saves that forward).
    std::string old_logprobs = "trainer";
    AdamWConfig adamw{1e-4, 0.9, 0.999, 1e-8, 0.0};
    double max_grad_norm = 1.0;          // <= 0: no clipping (the norm is still logged)
    int64_t updates = 100;
    int64_t seq_len = 32;                // T of the update's rows: prompt + completion must fit in T + 1
    int64_t micro_batch_size = 32;       // rows per forward/backward (the last one is padded)
    int64_t eval_examples = 500;         // distinct test-split problems, greedy
    int64_t eval_every = 0;              // 0 = only before the first and after the last update
    int64_t eval_max_new_tokens = 16;
    int64_t eval_samples = 3;            // printed examples per eval
    int64_t log_every = 1;               // print one line every N updates (0 = quiet)
    bool tensorboard = true;             // also write TensorBoard event files into run_dir (train/run_log.h)
    nlohmann::json invariants = nlohmann::json(nlohmann::json::value_t::object);   // {"default": "warn", ...}
    nlohmann::json bugs = nlohmann::json(nlohmann::json::value_t::object);         // {"negative-kl": true}, for experiments
    nlohmann::json resolved;             // the full JSON this was parsed from (printed, saved)
};

// Every key with its default (printed by the command at start-up). Sections: data, reward, sampling,
// advantage, optimizer, eval; "algorithm": "grpo" is part of it (`reftrain rl` dispatches on it).
nlohmann::json default_grpo_config();
// Defaults, then the JSON file (if path is not empty), then "dotted.key=value" sets, merged strictly
// (train/run_config.h: unknown keys with a did-you-mean, wrong types refused, naming file and key).
// A top-level "algorithm" other than "grpo" is refused.
GrpoConfig load_grpo_config(const std::string& path, const std::vector<std::string>& sets);
GrpoConfig parse_grpo_config(const nlohmann::json& resolved, const std::string& source);

// ---- the pieces, unit-tested on hand values (tests/test_grpo.cpp) -------------------------------------

struct GroupAdvantages {
    std::vector<double> advantages;     // one per completion, groups consecutive
    int64_t groups = 0;
    int64_t uniform_groups = 0;         // rewards all equal: no signal in the group
    int64_t zero_advantage_groups = 0;  // every advantage exactly 0 (equals uniform_groups when correct)
    double max_abs_uniform_advantage = 0.0;  // largest |A| inside a uniform group (0 when correct)
};
// rewards holds consecutive groups of group_size. Per group, in fp64: A = r - mean; with std_normalize
// A = (r - mean) / (std + std_eps), std the unbiased standard deviation (0 for a group of one). A group
// with max == min gets A = 0 exactly (its mean need not be exact: 0.1 * 8 / 8 != 0.1 in floating point).
// BUG grpo-zero-signal: fp32 statistics, eps 1e-8 and no uniform-group rule (std_normalize as given).
GroupAdvantages group_advantages(std::span<const double> rewards, int64_t group_size, bool std_normalize,
                                 double std_eps);

// The reward of one completion (step 3 above).
double grpo_reward(bool correct, bool ended_turn_with_answer, double reward_correct, double reward_format);

// KL(policy || reference) estimators on a token x sampled from the policy (John Schulman, "Approximating
// KL Divergence", 2020), from the log-ratio rho = log p(x) - log p_ref(x):
//   k1 = rho                      unbiased, negative on many single tokens
//   k3 = exp(-rho) - 1 + rho      unbiased, >= 0 for every token (it is (r - 1) - log r, r = p_ref / p)
//   d k3 / d log p = 1 - exp(-rho)
// kl_log_ratio is the one place the pair is formed. BUG negative-kl: it returns log p_ref - log p.
double kl_log_ratio(double logp_policy, double logp_reference);
double kl_k1(double log_ratio);
double kl_k3(double log_ratio);
double kl_k3_grad(double log_ratio);

// A prompt and the completion sampled for it, as token ids.
struct PolicyRow {
    std::vector<int64_t> ids;      // prompt followed by the completion (its end-of-turn included)
    int64_t prompt_tokens = 0;     // how many of ids are the prompt (template tokens included)
};
// Lays rows out as one (B, T) batch, row-major: inputs[b, t] = ids[t] (pad_id after the row) and
// targets[b, t] = ids[t + 1] when position t + 1 is a sampled token (t + 1 >= prompt_tokens), else
// kIgnoreIndex. So exactly the completion's tokens are targets, each at the position that predicts it;
// prompt and template tokens never are. rows.size() <= B (missing rows are all padding); a row longer
// than T + 1 tokens is an error naming it.
void build_policy_batch(std::span<const PolicyRow> rows, int64_t B, int64_t T, int64_t pad_id,
                        std::vector<int64_t>& inputs, std::vector<int64_t>& targets);

// ---- the trainer ------------------------------------------------------------------------------------

struct GrpoUpdateMetrics {
    int64_t update = 0;                  // updates done after this one
    double reward_mean = 0.0;
    double accuracy = 0.0;               // fraction of sampled completions the verifier accepts
    double zero_signal_fraction = 0.0;   // groups whose rewards are all equal
    double zero_advantage_fraction = 0.0;  // groups whose advantages are all exactly 0
    double max_abs_uniform_advantage = 0.0;
    double kl_k1 = 0.0, kl_k3 = 0.0;     // per-token means against the reference, as the loss forms them
    // The same KL measured on its own: the mean of log p(x) - log p_ref(x) over the sampled tokens,
    // straight from the two models' log-probs (not through kl_log_ratio, where the bug would sit).
    double kl_measured = 0.0;
    double mean_length = 0.0;            // sampled tokens per completion (end-of-turn included)
    double ended_fraction = 0.0;         // completions that ended their turn
    double loss = 0.0;                   // the value of L (step 5 above)
    double grad_norm = 0.0;              // before clipping
    int64_t sampled_tokens = 0;          // N
    double sample_seconds = 0.0, update_seconds = 0.0;
    // One entry per inner epoch: the fraction of sampled tokens whose ratio the clip held, max |r - 1|
    // and the mean ratio, as the loss saw them.
    std::vector<double> clip_fraction, ratio_max_deviation, ratio_mean;
    // Before any step: |log p_trainer - log p_sampler| over the sampled tokens (mean and largest).
    double logprob_gap_mean = 0.0, logprob_gap_max = 0.0;
    // Mean completion length (tokens, end-of-turn included) of the correct and the incorrect samples; -1
    // when there is none.
    double correct_length = -1.0, incorrect_length = -1.0;
    int64_t nonfinite_rewards = 0;       // rewards that were not finite (their groups are left out)
    double max_abs_advantage = 0.0;      // NaN when an advantage is not finite
    int64_t skipped_steps = 0;           // inner steps not applied: the gradient norm was not finite
    // Largest over smallest per-unit-advantage weight of a sampled token in the first epoch (read back
    // from the weights the backward gets; measured when kl_coef = 0): 1 when every token weighs the same,
    // longest / shortest completion length when each completion is averaged over its own length.
    double token_weight_spread = 1.0;
};

struct GrpoEval {
    int64_t update = 0;
    double exact_match = 0.0;
    int64_t examples = 0;
};

struct GrpoRunResult {
    std::vector<GrpoUpdateMetrics> updates;
    std::vector<GrpoEval> evals;         // the first is before any update, the last after the last one
    std::string checkpoint;              // the final checkpoint directory
    double seconds = 0.0;                // wall time of the whole run, evals included
};

class GrpoTrainer {
public:
    // Loads the checkpoint into the policy and the (frozen) reference, builds task, prompts and optimizer.
    GrpoTrainer(const GrpoConfig& config, std::ostream& out);
    ~GrpoTrainer();

    GrpoUpdateMetrics update();
    // Replaces every reward by hook(prompt, response, reward) before the advantages (a user's reward
    // function, e.g. one that can return NaN; probes/failures_grpo.cpp). Null: the verifier's reward.
    using RewardHook = std::function<double(const std::string& prompt, const std::string& response, double reward)>;
    void set_reward_hook(RewardHook hook) { reward_hook_ = std::move(hook); }
    // Greedy exact match on the first eval_examples distinct test problems; `show` of them are printed.
    GrpoEval evaluate(int64_t show);
    // run_dir/checkpoints/step_NNNNNNN (NNNNNNN = updates done), readable by `reftrain sample` and
    // usable as another GRPO run's init; points run_dir/checkpoints/latest at it.
    std::string save_checkpoint();
    // Eval, `updates` updates (evals every eval_every), eval, checkpoint; metrics.jsonl in run_dir.
    GrpoRunResult run();

    Transformer& policy() { return *policy_; }
    Invariants& invariants() { return invariants_; }
    const GrpoConfig& config() const { return config_; }
    int64_t updates_done() const { return update_; }

private:
    GrpoConfig config_;
    Bugs bugs_before_;                   // the switches before config.bugs; restored by the destructor
    std::ostream& out_;
    Invariants invariants_;
    std::string init_dir_;
    nlohmann::json init_run_config_;     // the SFT run's run.json, stored again in our checkpoints
    std::string system_prompt_;
    std::unique_ptr<Tokenizer> tokenizer_;
    std::string tokenizer_model_path_;   // "" for the byte tokenizer
    std::unique_ptr<ChatTemplate> chat_;
    std::unique_ptr<Task> task_;
    std::vector<TaskExample> eval_examples_;
    std::unique_ptr<Transformer> policy_, reference_;   // (micro_batch_size, seq_len) each
    std::unique_ptr<AdamW> optimizer_;
    Rng prompt_rng_, sample_rng_;
    int64_t update_ = 0;
    std::vector<int64_t> inputs_, targets_;
    RewardHook reward_hook_;
};

// `reftrain rl --config F [--set k=v ...]` when F says "algorithm": "grpo": loads the GRPO config,
// runs it, prints and writes its metrics; returns the process exit code.
int run_grpo_command(const std::string& config_path, const std::vector<std::string>& sets, std::ostream& out);

}  // namespace reftrain

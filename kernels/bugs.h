// kernels/bugs.h — the bug switches of the runnable-failure catalog (docs/failures/README.md).
//
// Each switch is a named, default-off toggle that sits in the code right beside the correct line:
//     if (bugs().causal_leak) { ...the buggy line... } else { ...the correct line... }
// so a reader can diff the two. `reftrain failure run ID` turns one on for the "with the bug" half of
// a scenario; a run config can set them under "bugs" for experiments. Nothing else ever reads them.
// It lives in kernels/ because the bugs live in every layer, kernels included. The registry is
// process-global on purpose: the bugs sit in data, model, train and the ops, and
// threading a flag through every call would bury the one line that matters.
#pragma once

#include <string>
#include <vector>

namespace reftrain {

struct Bugs {
    // data
    bool labels_all_masked = false;       // the collator sets every target to the ignore index
    bool mask_off_by_one = false;         // targets shifted, supervision flags not
    bool bos_twice = false;               // the template adds BOS and so does the "tokenizer"
    bool bos_missing = false;             // neither the template nor the tokenizer adds BOS
    bool mask_includes_prompt = false;    // user and system content supervised too
    bool split_leak = false;              // the validation split is drawn from the training examples
    bool template_mismatch = false;       // prompts rendered for sampling lack the assistant header
    bool pad_is_eos_masked = false;       // pad id = end-of-turn id, and padding masked by id
    // model
    bool causal_leak = false;             // attention lets position t see t + 1
    bool view_vs_permute = false;         // heads split with a reshape that mixes batch rows
    bool double_softmax = false;          // the logits go through a softmax before the cross-entropy
    bool kv_cache_mismatch = false;       // the KV-cache path rotates new tokens from position 0
    bool tied_head_desync = false;        // a separate lm_head is dropped when the config says "tied"
    bool left_pad_positions = false;      // batched generation feeds the left pads as tokens
    // train
    bool scheduler_per_microbatch = false;  // schedule indexed by micro-batch, not optimizer step
    bool grad_accum_not_divided = false;    // each micro-batch's loss added at weight 1
    bool forgot_zero_grad = false;          // gradients not cleared between optimizer steps
    bool weight_decay_on_norms = false;     // weight decay on every tensor, norm gains included
    bool dead_layer = false;                // the last block's parameters are left out of the update
    bool bf16_master_weights = false;       // weights stored in bf16: each update rounds to bf16
    bool nonfinite_step_not_skipped = false;  // a non-finite gradient norm is clipped and applied
    bool resume_state_loss = false;         // resume restores the weights but not the optimizer state
    // data-parallel training across ranks (train/trainer.cpp, train/dist.h)
    bool clip_per_rank = false;             // each rank clips with the norm of its own gradient, before the all-reduce
    bool grads_not_averaged = false;        // each rank weights by its own tokens, and the ranks' gradients are summed
    bool data_not_sharded = false;          // every rank trains on the first slice of the global batch
    bool init_not_broadcast = false;        // each rank initialises from seed + rank; rank 0's weights are not sent
    // reinforcement learning: PPO (train/ppo.cpp) and its probe environments (probes/envs.h)
    bool probe_value_loss = false;          // the value loss regresses V onto the advantages, not the returns
    bool probe_backprop = false;            // the critic reads a cleared input buffer: V ignores the observation
    bool discount_across_reset = false;     // GAE bootstraps through episode ends (done flags ignored)
    bool advantage_sign = false;            // the policy-gradient loss has the advantage's sign flipped
    bool stale_experience = false;          // the rollout stores the observation AFTER the step with the action
    bool reward_mean_shift = false;         // reward normalisation subtracts the mean (it must only scale)
    bool truncation_as_termination = false; // a time-limit truncation is treated as a true end (no bootstrap)
    // reinforcement learning: GRPO on the transformer (train/grpo.cpp)
    bool negative_kl = false;               // KL's log-ratio is log p_ref - log p (kl_log_ratio): k1 < 0
    bool grpo_zero_signal = false;          // group stats in fp32, eps 1e-8, no uniform-group rule
                                            // (group_advantages): uniform groups get O(1) advantages
    bool ratio_always_one = false;          // the old log-probs are re-taken from the current policy at every
                                            // inner epoch (exp(logp - logp.detach())): the ratio is always 1
    bool sampler_logprob_mismatch = false;  // the trainer scores at temperature 1 what was sampled at another
    bool grpo_length_bias = false;          // each completion's loss averaged over its own length (per-sequence mean)
    bool std_cancellation = false;          // group std as sqrt(E[r^2] - E[r]^2) in fp32
    bool nan_reward_poisons_batch = false;  // rewards enter the group statistics unchecked (a NaN spreads)

    bool operator==(const Bugs&) const = default;   // every switch compared (tests: "all off" is Bugs{})
};

Bugs& bugs();
// All switches off (tests call this in their set-up; scenarios call it between their two halves).
void reset_bugs();
// Sets one switch by its catalog id with dashes or underscores ("causal-leak"); fails listing the names.
void set_bug(const std::string& name, bool on);
std::vector<std::string> bug_names();

// Turns one switch on for a scope and restores every switch when the scope ends.
class ScopedBug {
public:
    explicit ScopedBug(const std::string& name) : saved_(bugs()) { set_bug(name, true); }
    ~ScopedBug() { bugs() = saved_; }
    ScopedBug(const ScopedBug&) = delete;
    ScopedBug& operator=(const ScopedBug&) = delete;

private:
    Bugs saved_;
};

}  // namespace reftrain

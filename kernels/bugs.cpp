// kernels/bugs.cpp — the bug-switch registry (see bugs.h).
#include "kernels/bugs.h"

#include <algorithm>
#include <utility>

#include "kernels/error.h"

namespace reftrain {

namespace {

Bugs g_bugs;

// Catalog id -> switch. Ids use dashes as in docs/failures/README.md.
const std::vector<std::pair<std::string, bool Bugs::*>>& table() {
    static const std::vector<std::pair<std::string, bool Bugs::*>> entries = {
        {"labels-all-masked", &Bugs::labels_all_masked},
        {"mask-off-by-one", &Bugs::mask_off_by_one},
        {"bos-twice", &Bugs::bos_twice},
        {"bos-missing", &Bugs::bos_missing},
        {"mask-includes-prompt", &Bugs::mask_includes_prompt},
        {"split-leak", &Bugs::split_leak},
        {"template-mismatch", &Bugs::template_mismatch},
        {"pad-is-eos-masked", &Bugs::pad_is_eos_masked},
        {"causal-leak", &Bugs::causal_leak},
        {"view-vs-permute", &Bugs::view_vs_permute},
        {"double-softmax", &Bugs::double_softmax},
        {"kv-cache-mismatch", &Bugs::kv_cache_mismatch},
        {"tied-head-desync", &Bugs::tied_head_desync},
        {"left-pad-positions", &Bugs::left_pad_positions},
        {"scheduler-per-microbatch", &Bugs::scheduler_per_microbatch},
        {"grad-accum-not-divided", &Bugs::grad_accum_not_divided},
        {"forgot-zero-grad", &Bugs::forgot_zero_grad},
        {"weight-decay-on-norms", &Bugs::weight_decay_on_norms},
        {"dead-layer", &Bugs::dead_layer},
        {"bf16-master-weights", &Bugs::bf16_master_weights},
        {"nonfinite-step-not-skipped", &Bugs::nonfinite_step_not_skipped},
        {"resume-state-loss", &Bugs::resume_state_loss},
        {"clip-per-rank", &Bugs::clip_per_rank},
        {"grads-not-averaged", &Bugs::grads_not_averaged},
        {"data-not-sharded", &Bugs::data_not_sharded},
        {"init-not-broadcast", &Bugs::init_not_broadcast},
        {"probe-value-loss", &Bugs::probe_value_loss},
        {"probe-backprop", &Bugs::probe_backprop},
        {"discount-across-reset", &Bugs::discount_across_reset},
        {"advantage-sign", &Bugs::advantage_sign},
        {"stale-experience", &Bugs::stale_experience},
        {"reward-mean-shift", &Bugs::reward_mean_shift},
        {"truncation-as-termination", &Bugs::truncation_as_termination},
        {"negative-kl", &Bugs::negative_kl},
        {"grpo-zero-signal", &Bugs::grpo_zero_signal},
        {"ratio-always-one", &Bugs::ratio_always_one},
        {"sampler-logprob-mismatch", &Bugs::sampler_logprob_mismatch},
        {"grpo-length-bias", &Bugs::grpo_length_bias},
        {"std-cancellation", &Bugs::std_cancellation},
        {"nan-reward-poisons-batch", &Bugs::nan_reward_poisons_batch},
    };
    return entries;
}

}  // namespace

Bugs& bugs() { return g_bugs; }

void reset_bugs() { g_bugs = Bugs{}; }

std::vector<std::string> bug_names() {
    std::vector<std::string> names;
    for (const auto& [name, member] : table()) names.push_back(name);
    return names;
}

void set_bug(const std::string& name, bool on) {
    std::string id = name;
    std::replace(id.begin(), id.end(), '_', '-');
    for (const auto& [candidate, member] : table()) {
        if (candidate == id) {
            g_bugs.*member = on;
            return;
        }
    }
    std::string known;
    for (const std::string& n : bug_names()) known += (known.empty() ? "" : ", ") + n;
    fail("unknown bug switch '", name, "' (known: ", known, ")");
}

}  // namespace reftrain

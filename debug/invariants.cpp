// debug/invariants.cpp — the invariant registry, the text of every built-in invariant, and the checks.
//
// The texts below are what a user reads when a run stops or warns, so each says what is wrong in
// terms of the run, the cause we have seen produce it (docs/failures/README.md), and the first place to look.
// The checks only compute a yes/no and the numbers for `details`; everything about modes, counting,
// printing and throwing is in Invariants::report, so all invariants behave the same way.
#include "debug/invariants.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string_view>
#include <unordered_set>

#include "kernels/cpu/ops.h"
#include "kernels/json_strict.h"

namespace reftrain {

namespace {

const std::vector<std::string> kModeNames = {"off", "warn", "fatal"};

bool parse_mode(const std::string& text, InvariantMode* mode) {
    for (size_t i = 0; i < kModeNames.size(); ++i) {
        if (text == kModeNames[i]) {
            *mode = static_cast<InvariantMode>(i);
            return true;
        }
    }
    return false;
}

std::string suggestion(const std::string& key, const std::vector<std::string>& candidates) {
    const std::string closest = closest_name(key, candidates);
    return closest.empty() ? std::string() : " (did you mean '" + closest + "'?)";
}

// A short, printable excerpt of a data item for messages.
std::string excerpt(std::string_view text) {
    constexpr size_t kMax = 60;
    std::string out(text.substr(0, kMax));
    if (text.size() > kMax) out += "...";
    return "\"" + out + "\"";
}

}  // namespace

const char* mode_name(InvariantMode mode) { return kModeNames[static_cast<size_t>(mode)].c_str(); }

const std::vector<InvariantInfo>& builtin_invariants() {
    using M = InvariantMode;
    static const std::vector<InvariantInfo> invariants = {
        {"mask.has_supervised_tokens",
         "no target of the step is supervised (every one is the ignore index -100), so the loss is 0 or NaN "
         "and the update learns nothing",
         "the loss mask marks no token as supervised: a chat template whose assistant role never matches, data "
         "without assistant turns, or rows that hold only prompt tokens",
         "render one example with `reftrain data show` (supervised tokens are marked) and look for marked "
         "assistant text; check data.template and the roles in the data",
         M::fatal},
        {"mask.aligned_with_targets",
         "the targets and the loss mask do not line up: a supervised target is not the next token, or the "
         "supervised positions are shifted (an end-of-turn token is not learned, or the token after it is)",
         "the mask was not shifted together with the targets (targets = ids[1:] but mask = supervised[:-1] "
         "instead of supervised[1:]), or the targets were shifted by the wrong amount",
         "shifted_targets and the packer: target[t] must be ids[t + 1] exactly where supervised[t + 1]; "
         "`reftrain data show` must show every assistant turn ending with its end-of-turn token supervised",
         M::fatal},
        {"template.bos_exactly_once",
         "a rendered conversation does not start with exactly one BOS token",
         "both the chat template and the tokenizer add BOS (BOS twice), or neither does (BOS missing); either "
         "way training sees a prefix that generation will not give the model",
         "the template's render and whether the tokenizer's encode adds special tokens of its own; the first "
         "tokens of `reftrain data show`",
         M::fatal},
        {"schedule.counts_optimizer_steps",
         "the learning rate applied at an optimizer step is not the configured schedule's value at that step",
         "the schedule is stepped once per micro-batch under gradient accumulation, so warmup ends grad_accum "
         "times too early and the decay finishes long before the run does; or the LR is set somewhere else",
         "where the LR handed to the optimizer comes from: lr_at must receive the number of optimizer steps so "
         "far, not a micro-batch counter; compare the lr column of metrics.jsonl with the schedule",
         M::fatal},
        {"schedule.completes_in_run",
         "a decaying schedule (cosine, WSD) is not as long as the run",
         "the schedule was sized in micro-batches (total_steps = grad_accum x max_steps), so the decay never "
         "comes; or it is shorter than the run, which then trains at the floor",
         "schedule.total_steps against train.max_steps (leave total_steps 0 to take max_steps); both count "
         "optimizer steps",
         M::warn},
        {"grad.zeroed_at_cycle_start",
         "the gradient buffers are not all zero at the start of an accumulation cycle",
         "zero_grad was not called (or cleared other buffers) before the first backward of the step, so the "
         "previous steps' gradients are added to this one's and the updates grow",
         "the training loop: zero_grad once per optimizer step, before the first micro-batch's backward; "
         "nothing else may write into the gradient arena between the two",
         M::fatal},
        {"loss.finite",
         "the loss is NaN or infinite",
         "a learning rate too high (or no warmup) made activations overflow, a mean over zero supervised "
         "tokens (0/0), or a bad batch",
         "the frame tracer's report names the first tensor that went non-finite; lower schedule.lr, add "
         "warmup, check that every step has supervised tokens",
         M::fatal},
        {"loss.no_spike",
         "the step's loss lies far above the recent steps' (z-score over train.loss_spike_z); the rows of the "
         "step's batch are listed by their own loss",
         "a pocket of bad data (garbage text, a mislabelled shard, a broken file) when a few rows carry the "
         "spike; a learning rate too high or no warmup when every row does",
         "the rows named here (`reftrain data show` on their source), the LR at that step, the tracer's "
         "attn_logits_max; train.loss_spike_skip drops such updates",
         M::warn},
        {"grad.finite_before_update",
         "the step's gradient norm is NaN or infinite; the update was not applied",
         "an overflow in the forward or backward (a learning rate too high, fp16 without loss scaling), a bad "
         "batch, or a hook that wrote a non-finite value; applying it would write NaN into every weight and "
         "both AdamW moments for good",
         "the frame tracer (tracer.enabled) names the first non-finite tensor; lower schedule.lr, check the "
         "batch; warn mode skips such steps and counts them",
         M::fatal},
        {"grad.finite_on_all_ranks",
         "the gradient of at least one rank was NaN or infinite before the all-reduce; every rank skips this "
         "step alike (a decision taken per rank would let the replicas drift apart)",
         "an overflow on that rank's slice of the batch (a bad row, a learning rate too high, fp16 without "
         "loss scaling)",
         "the rank named here: its rows of the step (the tracer on that rank names the first non-finite "
         "tensor); the skip and the clip must be decided from the reduced gradient, which is the same on "
         "every rank",
         M::warn},
        {"dist.params_in_sync",
         "the ranks' parameters differ: the replicas no longer train one model",
         "the weights were not broadcast from rank 0 at start (each rank initialised its own), or ranks took "
         "different decisions in a step: a clip or skip computed from each rank's own gradient instead of the "
         "reduced one, a rank that skipped an update the others applied",
         "the step where the hashes first differ (checked at step 0 and every dist.sync_check_every steps); "
         "the clip coefficient and skip flag on each rank at that step",
         M::fatal},
        {"dist.batches_disjoint",
         "two ranks trained on the same rows in one step: N ranks learn like one at N times the cost",
         "every rank reads the same data (the shard is not chosen by rank), e.g. the same seed and offset on "
         "every rank",
         "which micro-batches of the global batch each rank keeps (rank r: [r k, (r + 1) k))",
         M::warn},
        {"dist.step_matches_one_process",
         "the all-reduced gradient is not the gradient of the global batch computed by one process, so N "
         "ranks do not train like one rank with N times the batch",
         "the ranks' gradients are summed without the right weights (each rank's mean summed: N times too "
         "large; or averaged with unequal token counts), a rank's contribution missing, or a gradient changed "
         "between the backward and the all-reduce",
         "the ratio of the two norms (N means a sum of means); train.loss_normalization and the weights n_i / "
         "sum n over the global batch",
         M::warn},
        {"optimizer.decay_only_matrices",
         "weight decay does not apply exactly to the 2-D parameters (matrices and embeddings)",
         "the parameter grouping decays 1-D tensors (RMSNorm gains, biases), which pulls the gains towards 0 "
         "and fights the normalisation they scale, or it leaves a matrix undecayed",
         "the optimizer's decay rule (AdamW::decays) against the parameter names and shapes in this message",
         M::warn},
        {"data.split_disjoint",
         "an example occurs in two splits, so every number measured on the later split is too good",
         "the splits were drawn independently from one generator or file, or deduplication ran after the "
         "split; a validation file that repeats lines of the training file",
         "how the splits are made (task splits go by a hash of the prompt, data/tasks.h) and the example "
         "shown here in both files",
         M::fatal},
        {"init.loss_near_log_vocab",
         "the loss of the first step from a random init is far from ln(V), the loss of a uniform prediction",
         "above ln(V): the initial weights are too large (logits far from 0), e.g. an init std meant for "
         "another width; below: the targets leak into the inputs, or the loss is averaged over ignored "
         "positions",
         "the model's init std and output-layer scale; the loss normalisation; a run that starts from trained "
         "weights should turn this check off",
         M::warn},
        {"rl.kl_nonnegative",
         "the k1 estimate of KL(policy || reference) on tokens sampled from the policy is negative beyond "
         "sampling noise (mean + 3 standard errors < 0), or not finite; a KL divergence is never negative",
         "the log-probabilities are paired the wrong way round (log p_ref - log p instead of log p - log p_ref), "
         "or taken at the wrong positions (a target shifted against its log-prob), or the samples do not come "
         "from the policy being scored (a temperature or top-k other than 1 / off, stale samples)",
         "where the KL's log-ratio is formed (train/grpo.cpp, kl_log_ratio): policy first; that the policy and "
         "the reference score the same targets; sampling.temperature and top_k",
         M::warn},
        {"rl.reward_scale_only",
         "reward normalisation did more than scale: a reward changed sign, became 0, or rewards of one step "
         "were scaled by different factors",
         "a mean is subtracted from the rewards (standardising them), which changes which policy is optimal: "
         "CartPole's +1 per step becomes ~0, a -1 per step task turns into a reward for ending early",
         "the reward normaliser or the environment wrapper: divide by the running std of the discounted "
         "return, never subtract a mean (Gymnasium NormalizeReward)",
         M::warn},
        {"rl.uniform_group_zero_advantage",
         "a group whose rewards are all equal has a non-zero advantage, so the update is driven by rounding "
         "noise instead of a reward difference",
         "the group statistics are computed in low precision and divided by a tiny std + eps: the rounding "
         "residue of the mean over the residue-sized std becomes an O(1) advantage",
         "the group advantage code (train/grpo.cpp, group_advantages): statistics in fp64, a group with "
         "max == min gets exactly 0, and the eps of the std normalisation is not tiny",
         M::fatal},
        {"rl.advantages_bounded",
         "a group's advantages are not finite or exceed what the group's rewards allow: with std "
         "normalisation |A| <= (G - 1) / sqrt(G) for any G rewards, without it |A| <= max - min",
         "a non-finite reward entered the group statistics (one NaN makes the whole group NaN), or the std was "
         "computed as sqrt(E[r^2] - E[r]^2) in low precision, which cancels to ~0 on a near-constant group "
         "and divides a small difference by almost nothing",
         "the rewards before normalising (each finite?), and the std formula: two-pass (r - mean)^2 in fp64",
         M::warn},
        {"rl.ratio_moves_after_first_epoch",
         "after an optimizer step inside the update, the importance ratio p / p_old is still exactly 1 on "
         "every token, so PPO's clip can never act",
         "the old log-probs are taken from the current forward at every inner epoch (exp(logp - "
         "logp.detach())) instead of once, before the first step, and kept",
         "where the old log-probs are set: once per update, from the sampler or the first inner forward, "
         "detached; the clip fraction should be > 0 on inner epochs >= 2",
         M::warn},
        {"rl.token_weight_independent_of_length",
         "the policy-gradient weight per unit of advantage differs between the tokens of one update: tokens of "
         "longer completions are pushed less",
         "each completion's loss is averaged over its own length before averaging over completions (the "
         "original GRPO objective): a long wrong answer is penalised less per token, so wrong answers can grow "
         "longer (Dr. GRPO, Liu et al. 2025)",
         "the loss normaliser: one 1 / N for every sampled token of the update, N = all sampled tokens; "
         "compare the lengths of right and wrong completions over training",
         M::warn},
        {"rl.sampler_matches_trainer",
         "before any step the trainer's log-probs of the sampled tokens differ from the sampler's: the "
         "importance ratio and the KL are biased from the first step (silently off-policy)",
         "the trainer scores another distribution than the sampler drew from: a temperature, top-k or top-p "
         "applied on one side only, another precision or another checkpoint on the sampler",
         "the sampler's settings against the trainer's scoring (train/grpo.cpp: the policy scores "
         "softmax(logits / temperature)); mean |log p_trainer - log p_sampler| should be ~1e-6",
         M::warn},
    };
    return invariants;
}

// ---- the registry -------------------------------------------------------------------------------------

Invariants::Invariants() : out_(&std::cerr) {
    for (const InvariantInfo& info : builtin_invariants()) add(info);
}

void Invariants::add(const InvariantInfo& info) {
    check(!info.name.empty() && info.name != "default", "invariants: cannot register an invariant named '",
          info.name, "' (the name must be non-empty and not 'default')");
    check(!known(info.name), "invariants: '", info.name, "' is already registered");
    entries_[info.name].info = info;
}

std::vector<std::string> Invariants::names() const {
    std::vector<std::string> out;
    for (const auto& [name, unused] : entries_) out.push_back(name);
    return out;
}

Invariants::Entry& Invariants::entry(const std::string& name) {
    auto it = entries_.find(name);
    if (it == entries_.end()) fail("invariants: unknown invariant '", name, "'", suggestion(name, names()));
    return it->second;
}

const Invariants::Entry& Invariants::entry(const std::string& name) const {
    return const_cast<Invariants*>(this)->entry(name);
}

const InvariantInfo& Invariants::info(const std::string& name) const { return entry(name).info; }

void Invariants::set_default_mode(InvariantMode mode) {
    has_default_ = true;
    default_mode_ = mode;
}

void Invariants::set_mode(const std::string& name, InvariantMode mode) {
    Entry& e = entry(name);
    e.has_override = true;
    e.override_mode = mode;
}

InvariantMode Invariants::mode(const std::string& name) const {
    const Entry& e = entry(name);
    if (e.has_override) return e.override_mode;
    if (has_default_) return default_mode_;
    return e.info.default_mode;
}

void Invariants::configure(const nlohmann::json& config, const std::string& where) {
    check(config.is_object(), where, ": must be a JSON object of invariant name -> \"off\" | \"warn\" | \"fatal\" ",
          "(and \"default\"), got ", config.type_name());
    // Parse everything first, so a bad entry leaves the registry as it was.
    std::vector<std::pair<std::string, InvariantMode>> parsed;
    for (const auto& [key, value] : config.items()) {
        if (key != "default" && !known(key)) {
            std::vector<std::string> candidates = names();
            candidates.push_back("default");
            fail(where, ": unknown invariant '", key, "'", suggestion(key, candidates));
        }
        check(value.is_string(), where, ".", key, ": must be one of \"off\", \"warn\", \"fatal\", got ", value.dump());
        const std::string text = value.get<std::string>();
        InvariantMode mode;
        if (!parse_mode(text, &mode)) {
            fail(where, ".", key, ": unknown mode '", text, "' (expected off, warn or fatal)",
                 suggestion(text, kModeNames));
        }
        parsed.emplace_back(key, mode);
    }
    for (const auto& [key, mode] : parsed) {
        if (key == "default") set_default_mode(mode);
        else set_mode(key, mode);
    }
}

std::string Invariants::message(const std::string& name, const std::string& details) const {
    const InvariantInfo& i = info(name);
    std::ostringstream out;
    out << "invariant " << i.name << " violated: " << i.what << "\n";
    if (!details.empty()) out << "  details: " << details << "\n";
    out << "  likely cause: " << i.cause << "\n"
        << "  check: " << i.check << "\n"
        << "  see: " << i.doc();
    return out.str();
}

bool Invariants::report(const std::string& name, bool ok, const std::string& details) {
    const InvariantMode m = mode(name);
    if (m == InvariantMode::off) return true;
    Entry& e = entry(name);
    ++e.evaluations;
    if (ok) return true;
    ++e.violations;
    e.last_message = message(name, details);
    // warn: the first few in full, then a line at every power of ten so a long run neither floods the
    // terminal nor goes quiet about a violation that keeps happening.
    int64_t power = 10;
    while (power < e.violations) power *= 10;
    const bool printed = m == InvariantMode::warn && (e.violations <= max_printed_ || power == e.violations);
    if (listener_) listener_(name, details, printed);
    if (m == InvariantMode::fatal) throw InvariantViolation(name, e.last_message);
    std::ostream& out = *out_;
    if (e.violations <= max_printed_) {
        out << "warning: " << e.last_message << "\n";
        if (e.violations == max_printed_) {
            out << "  (further violations of " << name << " are counted, not printed in full; the run's summary "
                << "lists them)\n";
        }
    } else {
        if (power == e.violations) {
            out << "warning: invariant " << name << ": " << e.violations << " violations so far"
                << (details.empty() ? "" : " (latest: " + details + ")") << "; see " << e.info.doc() << "\n";
        }
    }
    out.flush();
    return false;
}

int64_t Invariants::evaluations(const std::string& name) const { return entry(name).evaluations; }
int64_t Invariants::violations(const std::string& name) const { return entry(name).violations; }
const std::string& Invariants::last_message(const std::string& name) const { return entry(name).last_message; }

std::string Invariants::summary() const {
    std::ostringstream out;
    for (const auto& [name, e] : entries_) {
        if (e.violations == 0) continue;
        out << name << ": " << e.violations << " of " << e.evaluations << " evaluations violated (see " << e.info.doc()
            << ")\n";
    }
    return out.str();
}

// ---- the checks ---------------------------------------------------------------------------------------

bool check_has_supervised_tokens(Invariants& inv, int64_t supervised_count, int64_t target_count, int64_t step) {
    const char* name = "mask.has_supervised_tokens";
    if (!inv.enabled(name)) return true;
    if (supervised_count > 0) return inv.report(name, true);
    return inv.report(name, false, concat("step ", step, ": ", supervised_count, " of ", target_count,
                                          " targets are supervised"));
}

bool check_has_supervised_tokens(Invariants& inv, std::span<const int64_t> targets, int64_t step) {
    if (!inv.enabled("mask.has_supervised_tokens")) return true;
    const int64_t supervised =
        std::count_if(targets.begin(), targets.end(), [](int64_t y) { return y != cpu::kIgnoreIndex; });
    return check_has_supervised_tokens(inv, supervised, static_cast<int64_t>(targets.size()), step);
}

bool check_mask_aligned(Invariants& inv, std::span<const int64_t> ids, std::span<const uint8_t> supervised,
                        std::span<const int64_t> targets, const std::string& source) {
    const char* name = "mask.aligned_with_targets";
    if (!inv.enabled(name)) return true;
    const size_t n = ids.size();
    if (supervised.size() != n || targets.size() != n) {
        return inv.report(name, false, concat(source, ": lengths differ: ", n, " ids, ", supervised.size(),
                                              " supervision flags, ", targets.size(), " targets"));
    }
    int64_t wrong = 0;
    std::string first;
    for (size_t t = 0; t < n; ++t) {
        // targets[t] predicts ids[t + 1]; it is supervised exactly when that next token is.
        const bool next_supervised = t + 1 < n && supervised[t + 1] != 0;
        const int64_t expected = next_supervised ? ids[t + 1] : cpu::kIgnoreIndex;
        if (targets[t] == expected) continue;
        if (wrong++ == 0) {
            first = concat("position ", t, ": target ", targets[t], ", expected ", expected,
                           t + 1 >= n ? " (the last position predicts nothing)"
                           : next_supervised ? concat(" (ids[", t + 1, "], which is supervised)")
                                             : concat(" (the ignore index: ids[", t + 1, "] = ", ids[t + 1],
                                                      " is not supervised)"));
        }
    }
    if (wrong == 0) return inv.report(name, true);
    return inv.report(name, false, concat(source, ": ", wrong, " of ", n, " targets wrong; first at ", first));
}

bool check_mask_aligned_batch(Invariants& inv, std::span<const int64_t> input_ids, std::span<const int64_t> targets,
                              int64_t B, int64_t T, int64_t end_of_turn_id, int64_t step) {
    const char* name = "mask.aligned_with_targets";
    if (!inv.enabled(name)) return true;
    check(B > 0 && T > 0 && static_cast<int64_t>(input_ids.size()) == B * T &&
              static_cast<int64_t>(targets.size()) == B * T,
          "check_mask_aligned_batch: expected input_ids and targets of B * T = ", B, " * ", T, " elements, got ",
          input_ids.size(), " and ", targets.size());
    constexpr int64_t ignore = cpu::kIgnoreIndex;
    int64_t not_next = 0, after_end = 0, span_end = 0;  // violations of each rule
    std::string first_not_next, first_after_end, first_span_end;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t* x = input_ids.data() + b * T;
        const int64_t* y = targets.data() + b * T;
        for (int64_t t = 0; t < T; ++t) {
            // Rule 1: a supervised target is the next input (the last position's next token is hidden).
            if (t + 1 < T && y[t] != ignore && y[t] != x[t + 1] && not_next++ == 0) {
                first_not_next = concat("row ", b, " position ", t, ": target ", y[t], " but the next input is ",
                                        x[t + 1]);
            }
            if (end_of_turn_id < 0) continue;
            // Rule 2a: what follows an end-of-turn is the template's, never supervised.
            if (x[t] == end_of_turn_id && y[t] != ignore && after_end++ == 0) {
                first_after_end = concat("row ", b, " position ", t, ": the input is the end-of-turn token ",
                                         end_of_turn_id, " and its target ", y[t], " is supervised");
            }
            // Rule 2b: a supervised run ending inside the row ends by predicting the end-of-turn token.
            if (t > 0 && y[t - 1] != ignore && y[t] == ignore && y[t - 1] != end_of_turn_id && span_end++ == 0) {
                first_span_end = concat("row ", b, " position ", t - 1, ": a run of supervised targets ends with ",
                                        y[t - 1], ", not the end-of-turn token ", end_of_turn_id);
            }
        }
    }
    if (not_next + after_end + span_end == 0) return inv.report(name, true);
    std::string details = concat("step ", step, ", batch (", B, ", ", T, "):");
    if (not_next) details += concat(" ", not_next, " supervised targets are not the next token (first: ",
                                    first_not_next, ");");
    if (after_end) details += concat(" ", after_end, " positions after an end-of-turn are supervised (first: ",
                                     first_after_end, ");");
    if (span_end) details += concat(" ", span_end, " supervised runs do not end at an end-of-turn (first: ",
                                    first_span_end, ");");
    details.pop_back();
    return inv.report(name, false, details);
}

bool check_bos_exactly_once(Invariants& inv, std::span<const int64_t> ids, int64_t bos_id, const std::string& source) {
    const char* name = "template.bos_exactly_once";
    if (!inv.enabled(name)) return true;
    std::vector<size_t> positions;
    for (size_t t = 0; t < ids.size(); ++t) {
        if (ids[t] == bos_id) positions.push_back(t);
    }
    if (positions.size() == 1 && positions[0] == 0) return inv.report(name, true);
    std::string where;
    for (size_t i = 0; i < positions.size() && i < 5; ++i) where += concat(i ? ", " : " at positions ", positions[i]);
    if (positions.size() > 5) where += ", ...";
    return inv.report(name, false,
                      concat(source, ": BOS (id ", bos_id, ") occurs ", positions.size(), " times", where,
                             ids.empty() ? std::string("; the conversation has no tokens")
                                         : concat("; the first token is ", ids[0])));
}

bool check_schedule_counts_optimizer_steps(Invariants& inv, int64_t optimizer_step, double lr_applied,
                                           const std::function<double(int64_t)>& schedule_at,
                                           int64_t micro_batches_seen, int64_t grad_accum) {
    const char* name = "schedule.counts_optimizer_steps";
    if (!inv.enabled(name)) return true;
    auto same = [](double a, double b) { return std::fabs(a - b) <= 1e-12 * std::max(std::fabs(a), std::fabs(b)); };
    const double expected = schedule_at(optimizer_step);
    if (same(lr_applied, expected)) return inv.report(name, true);
    // Which scheduled step was applied: the micro-batch count first, then the nearest match.
    int64_t matched = -1;
    if (same(schedule_at(micro_batches_seen), lr_applied)) {
        matched = micro_batches_seen;
    } else {
        for (int64_t s = 0; s <= 4 * (micro_batches_seen + optimizer_step + 1) && matched < 0; ++s) {
            if (same(schedule_at(s), lr_applied)) matched = s;
        }
    }
    std::string which;
    if (matched == micro_batches_seen) {
        which = concat(", the schedule's value at step ", matched, ", the number of micro-batches seen (grad_accum ",
                       grad_accum, "): the schedule counts micro-batches");
    } else if (matched >= 0) {
        which = concat(", the schedule's value at step ", matched, " (micro-batches seen: ", micro_batches_seen, ")");
    } else {
        which = concat(", a value the schedule never takes (micro-batches seen: ", micro_batches_seen, ")");
    }
    return inv.report(name, false,
                      concat("optimizer step ", optimizer_step, " (0-based) applied lr ", lr_applied,
                             " where the schedule gives ", expected, which));
}

bool check_schedule_completes_in_run(Invariants& inv, const std::string& kind, int64_t schedule_total_steps,
                                     int64_t max_steps, int64_t grad_accum) {
    const char* name = "schedule.completes_in_run";
    if (!inv.enabled(name)) return true;
    if ((kind != "cosine" && kind != "wsd") || schedule_total_steps == max_steps) return inv.report(name, true);
    const double reached = static_cast<double>(max_steps) / static_cast<double>(schedule_total_steps);
    return inv.report(name, false,
                      concat("schedule.total_steps is ", schedule_total_steps, " optimizer steps but the run makes ",
                             max_steps,
                             schedule_total_steps > max_steps
                                 ? concat(": the ", kind, " schedule ends ", static_cast<int>(100 * reached),
                                          "% of the way through its course")
                                 : concat(": the last ", max_steps - schedule_total_steps, " steps train at the floor"),
                             grad_accum > 1 && schedule_total_steps == grad_accum * max_steps
                                 ? concat(" (total_steps = grad_accum ", grad_accum,
                                          " x max_steps: the schedule was sized in micro-batches)")
                                 : std::string()));
}

bool check_grad_zeroed(Invariants& inv, const Arena& grads, int64_t step) {
    const char* name = "grad.zeroed_at_cycle_start";
    if (!inv.enabled(name)) return true;
    check(grads.allocated(), "check_grad_zeroed: arena '", grads.label(), "' is not allocated");
    int64_t nonzero = 0, tensors_hit = 0;
    std::string first;
    for (const Tensor& g : grads.tensors()) {
        check(g.device == Device::CPU, "check_grad_zeroed: '", g.name, "' is on the GPU; copy it to the CPU first");
        const int64_t n = g.numel();
        int64_t here = 0, first_index = -1;
        double first_value = 0.0;
        auto scan = [&](auto value_of) {
            for (int64_t i = 0; i < n; ++i) {
                const double v = value_of(i);
                if (v == 0.0) continue;  // -0.0 counts as zero
                if (here++ == 0) { first_index = i; first_value = v; }
            }
        };
        switch (g.dtype) {
            case DType::F32: {
                const float* p = g.ptr<float>();
                scan([p](int64_t i) { return static_cast<double>(p[i]); });
                break;
            }
            case DType::F64: {
                const double* p = g.ptr<double>();
                scan([p](int64_t i) { return p[i]; });
                break;
            }
            case DType::BF16:
            case DType::F16: {
                const uint16_t* p = g.ptr<uint16_t>();
                const bool bf16 = g.dtype == DType::BF16;
                scan([p, bf16](int64_t i) {
                    return static_cast<double>(bf16 ? bf16_to_float(p[i]) : f16_to_float(p[i]));
                });
                break;
            }
            default: fail("check_grad_zeroed: '", g.name, "' has dtype ", dtype_name(g.dtype), ", not a float type");
        }
        if (here == 0) continue;
        nonzero += here;
        if (tensors_hit++ == 0) {
            first = concat("'", g.name, "' ", g.shape_str(), " element ", first_index, " = ", first_value);
        }
    }
    if (nonzero == 0) return inv.report(name, true);
    return inv.report(name, false, concat("step ", step, ": ", nonzero, " of ", grads.numel(),
                                          " gradient elements in ", tensors_hit, " of ", grads.size(),
                                          " tensors are not 0; first: ", first));
}

bool check_loss_finite(Invariants& inv, double loss, int64_t step) {
    const char* name = "loss.finite";
    if (!inv.enabled(name)) return true;
    if (std::isfinite(loss)) return inv.report(name, true);
    return inv.report(name, false, concat("step ", step, ": loss = ", loss));
}

bool check_grad_norm_finite(Invariants& inv, double grad_norm, double loss, int64_t step) {
    const char* name = "grad.finite_before_update";
    if (!inv.enabled(name)) return true;
    if (std::isfinite(grad_norm)) return inv.report(name, true);
    return inv.report(name, false, concat("step ", step + 1, ": the gradient norm is ", grad_norm, " with loss ", loss,
                                          "; the update was not applied"));
}

bool check_params_in_sync(Invariants& inv, const std::vector<uint64_t>& rank_hashes, int64_t step) {
    const char* name = "dist.params_in_sync";
    if (!inv.enabled(name)) return true;
    std::string differing;
    for (size_t r = 1; r < rank_hashes.size(); ++r) {
        if (rank_hashes[r] != rank_hashes[0]) differing += concat(differing.empty() ? "" : ", ", r);
    }
    if (differing.empty()) return inv.report(name, true);
    return inv.report(name, false, concat("step ", step, ": the parameters of rank(s) ", differing,
                                          " differ from rank 0's (hash ", rank_hashes[0], ") over ",
                                          rank_hashes.size(), " ranks"));
}

bool check_grad_finite_on_all_ranks(Invariants& inv, const std::vector<int>& finite, int64_t step) {
    const char* name = "grad.finite_on_all_ranks";
    if (!inv.enabled(name)) return true;
    std::string bad;
    for (size_t r = 0; r < finite.size(); ++r) {
        if (!finite[r]) bad += concat(bad.empty() ? "" : ", ", r);
    }
    if (bad.empty()) return inv.report(name, true);
    return inv.report(name, false, concat("step ", step + 1, ": rank(s) ", bad, " of ", finite.size(),
                                          " had a non-finite gradient before the all-reduce; every rank skips "
                                          "the step"));
}

bool check_batches_disjoint(Invariants& inv, const std::vector<uint64_t>& rank_batch_hashes, int64_t step) {
    const char* name = "dist.batches_disjoint";
    if (!inv.enabled(name)) return true;
    for (size_t a = 0; a < rank_batch_hashes.size(); ++a) {
        for (size_t b = a + 1; b < rank_batch_hashes.size(); ++b) {
            if (rank_batch_hashes[a] == rank_batch_hashes[b]) {
                return inv.report(name, false, concat("step ", step + 1, ": ranks ", a, " and ", b,
                                                      " trained on the same token ids (batch hash ",
                                                      rank_batch_hashes[a], ")"));
            }
        }
    }
    return inv.report(name, true);
}

bool check_step_matches_one_process(Invariants& inv, double relative_error, double bound, double reduced_norm,
                                    double single_norm, int ranks, int64_t step) {
    const char* name = "dist.step_matches_one_process";
    if (!inv.enabled(name)) return true;
    if (relative_error <= bound) return inv.report(name, true);
    return inv.report(name, false, concat("step ", step + 1, ": the gradient all-reduced over ", ranks,
                                          " ranks differs from one process's gradient on the same global batch by ",
                                          relative_error, " (normwise; bound ", bound, "); norms ", reduced_norm,
                                          " reduced vs ", single_norm, " in one process (ratio ",
                                          single_norm > 0 ? reduced_norm / single_norm : 0.0, ")"));
}

bool check_decay_only_matrices(Invariants& inv, const Arena& params, const DecayPredicate& decays) {
    const char* name = "optimizer.decay_only_matrices";
    if (!inv.enabled(name)) return true;
    std::vector<std::string> decayed_not_matrix, matrix_not_decayed;
    for (const Tensor& p : params.tensors()) {
        const bool is_matrix = p.ndim == 2;
        const bool decayed = decays(p.name, p);
        if (decayed && !is_matrix) decayed_not_matrix.push_back(p.name + " " + p.shape_str());
        if (!decayed && is_matrix) matrix_not_decayed.push_back(p.name + " " + p.shape_str());
    }
    if (decayed_not_matrix.empty() && matrix_not_decayed.empty()) return inv.report(name, true);
    auto list = [](const std::vector<std::string>& items) {
        std::string out;
        for (size_t i = 0; i < items.size() && i < 5; ++i) out += (i ? ", " : "") + items[i];
        if (items.size() > 5) out += concat(", ... (", items.size() - 5, " more)");
        return out;
    };
    std::string details;
    if (!decayed_not_matrix.empty()) {
        details += concat(decayed_not_matrix.size(), " tensors that are not 2-D are decayed: ",
                          list(decayed_not_matrix));
    }
    if (!matrix_not_decayed.empty()) {
        details += concat(details.empty() ? "" : "; ", matrix_not_decayed.size(), " 2-D tensors are not decayed: ",
                          list(matrix_not_decayed));
    }
    return inv.report(name, false, details);
}

bool check_split_disjoint(Invariants& inv, std::span<const std::string> a, std::span<const std::string> b,
                          const std::string& a_name, const std::string& b_name) {
    const char* name = "data.split_disjoint";
    if (!inv.enabled(name)) return true;
    const std::unordered_set<std::string_view> in_b(b.begin(), b.end());
    int64_t shared = 0;
    std::string first;
    for (const std::string& item : a) {
        if (!in_b.count(item)) continue;
        if (shared++ == 0) first = excerpt(item);
    }
    if (shared == 0) return inv.report(name, true);
    return inv.report(name, false, concat(shared, " of ", a.size(), " ", a_name, " items also occur in ", b_name,
                                          " (", b.size(), " items); first: ", first));
}

bool check_split_disjoint(Invariants& inv, std::span<const uint64_t> a_hashes, std::span<const uint64_t> b_hashes,
                          const std::string& a_name, const std::string& b_name) {
    const char* name = "data.split_disjoint";
    if (!inv.enabled(name)) return true;
    const std::unordered_set<uint64_t> in_b(b_hashes.begin(), b_hashes.end());
    int64_t shared = 0, first_index = -1;
    for (size_t i = 0; i < a_hashes.size(); ++i) {
        if (!in_b.count(a_hashes[i])) continue;
        if (shared++ == 0) first_index = static_cast<int64_t>(i);
    }
    if (shared == 0) return inv.report(name, true);
    return inv.report(name, false, concat(shared, " of ", a_hashes.size(), " ", a_name, " items also occur in ", b_name,
                                          " (", b_hashes.size(), " items, compared by hash); first: ", a_name,
                                          " item ", first_index));
}

uint64_t hash_token_ids(std::span<const int64_t> ids) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a 64-bit offset basis
    for (int64_t id : ids) {
        uint64_t v = static_cast<uint64_t>(id);
        for (int byte = 0; byte < 8; ++byte) {
            h ^= v & 0xffu;
            h *= 1099511628211ull;            // FNV-1a 64-bit prime
            v >>= 8;
        }
    }
    return h;
}

bool init_loss_near_log_vocab(double first_loss, int64_t vocab_size, double tolerance) {
    return std::isfinite(first_loss) && std::abs(first_loss - std::log(static_cast<double>(vocab_size))) <= tolerance;
}

bool check_init_loss(Invariants& inv, double first_loss, int64_t vocab_size, double tolerance) {
    const char* name = "init.loss_near_log_vocab";
    if (!inv.enabled(name)) return true;
    check(vocab_size >= 2, "check_init_loss: vocab_size must be at least 2, got ", vocab_size);
    check(tolerance > 0.0, "check_init_loss: tolerance must be positive, got ", tolerance);
    const double uniform = std::log(static_cast<double>(vocab_size));
    const double gap = first_loss - uniform;
    if (init_loss_near_log_vocab(first_loss, vocab_size, tolerance)) return inv.report(name, true);
    return inv.report(name, false,
                      concat("first loss ", first_loss, " vs ln(", vocab_size, ") = ", uniform, ": ",
                             std::isfinite(gap) ? concat(std::abs(gap), gap > 0 ? " nats above" : " nats below")
                                                : std::string("not finite"),
                             ", tolerance ", tolerance));
}

// ---- reinforcement learning ---------------------------------------------------------------------------

bool check_reward_scale_only(Invariants& inv, std::span<const double> raw, std::span<const double> normalized,
                             double gamma, double max_abs_reward_so_far, int64_t update, int64_t step) {
    const char* name = "rl.reward_scale_only";
    if (!inv.enabled(name)) return true;
    check(raw.size() == normalized.size(), "check_reward_scale_only: ", raw.size(), " raw rewards but ",
          normalized.size(), " normalized ones");
    double factor = std::numeric_limits<double>::quiet_NaN();
    for (size_t i = 0; i < raw.size(); ++i) {
        const double r = raw[i], n = normalized[i];
        std::string problem;
        if (r == 0.0 && n != 0.0) {
            problem = concat("a raw reward of 0 became ", n);
        } else if (r != 0.0 && (n == 0.0 || (n > 0) != (r > 0))) {
            problem = concat("a raw reward of ", r, n == 0.0 ? " became 0" : concat(" changed sign, to ", n));
        } else if (r != 0.0) {
            const double f = n / r;
            const double least = (1.0 - gamma) / (4.0 * max_abs_reward_so_far);
            if (max_abs_reward_so_far > 0 && f < least) {
                problem = concat("a raw reward of ", r, " became ", n, ", a factor of ", f,
                                 ", below the least a return-std normaliser gives ((1 - gamma) / (4 max|r|) = ",
                                 least, "): a mean was subtracted");
            } else if (std::isnan(factor)) {
                factor = f;
            } else if (std::fabs(f - factor) > 1e-9 * std::max(std::fabs(f), std::fabs(factor))) {
                problem = concat("rewards were scaled by ", factor, " and by ", f, " at the same step");
            }
        }
        if (!problem.empty()) {
            return inv.report(name, false,
                              concat("update ", update, ", rollout step ", step, ", copy ", i, ": ", problem,
                                     "; normalisation may only divide rewards by a positive scale"));
        }
    }
    return inv.report(name, true);
}

bool check_kl_nonnegative(Invariants& inv, std::span<const double> token_k1, std::span<const int64_t> sequence_lengths,
                          int64_t update) {
    const char* name = "rl.kl_nonnegative";
    if (!inv.enabled(name)) return true;
    int64_t total = 0;
    for (int64_t n : sequence_lengths) {
        check(n >= 0, "check_kl_nonnegative: negative sequence length ", n);
        total += n;
    }
    check(total == static_cast<int64_t>(token_k1.size()), "check_kl_nonnegative: sequence lengths sum to ", total,
          " but there are ", token_k1.size(), " token values");
    int64_t nonfinite = 0;
    double token_sum = 0.0;
    std::vector<double> sums;
    size_t at = 0;
    for (int64_t n : sequence_lengths) {
        double s = 0.0;
        for (int64_t i = 0; i < n; ++i, ++at) {
            nonfinite += !std::isfinite(token_k1[at]);
            s += token_k1[at];
        }
        token_sum += s;
        sums.push_back(s);
    }
    if (nonfinite > 0) {
        return inv.report(name, false, concat("update ", update, ": ", nonfinite, " of ", total,
                                              " per-token k1 values are not finite"));
    }
    const int64_t m = static_cast<int64_t>(sums.size());
    if (m < 2) return inv.report(name, true);  // no standard error from one draw
    double mean = 0.0;
    for (double s : sums) mean += s;
    mean /= static_cast<double>(m);
    double squares = 0.0;
    for (double s : sums) squares += (s - mean) * (s - mean);
    const double standard_error = std::sqrt(squares / static_cast<double>(m - 1) / static_cast<double>(m));
    if (mean + 3.0 * standard_error >= 0.0) return inv.report(name, true);
    return inv.report(name, false,
                      concat("update ", update, ": per-sequence k1 mean ", mean, " with standard error ", standard_error,
                             " over ", m, " sampled sequences (mean + 3 SE = ", mean + 3.0 * standard_error,
                             " < 0); per-token k1 mean ", total > 0 ? token_sum / static_cast<double>(total) : 0.0,
                             " over ", total, " tokens"));
}

bool check_uniform_group_zero_advantage(Invariants& inv, std::span<const double> rewards,
                                        std::span<const double> advantages, int64_t group_size, int64_t update) {
    const char* name = "rl.uniform_group_zero_advantage";
    if (!inv.enabled(name)) return true;
    check(group_size >= 1 && rewards.size() == advantages.size() &&
              rewards.size() % static_cast<size_t>(group_size) == 0,
          "check_uniform_group_zero_advantage: ", rewards.size(), " rewards and ", advantages.size(),
          " advantages do not form groups of ", group_size);
    const int64_t groups = static_cast<int64_t>(rewards.size()) / group_size;
    int64_t uniform = 0, violating = 0, first = -1;
    double worst = 0.0;
    for (int64_t g = 0; g < groups; ++g) {
        const double* r = rewards.data() + g * group_size;
        const double* a = advantages.data() + g * group_size;
        const auto [lo, hi] = std::minmax_element(r, r + group_size);
        if (*lo != *hi) continue;
        ++uniform;
        double largest = 0.0;
        for (int64_t i = 0; i < group_size; ++i) {
            largest = std::isnan(largest) ? largest : std::isnan(a[i]) ? a[i] : std::max(largest, std::fabs(a[i]));
        }
        if (!(largest <= kUniformGroupAdvantageTolerance)) {  // NaN fails too
            if (violating++ == 0) first = g;
            worst = std::isnan(largest) || std::isnan(worst) ? std::nan("") : std::max(worst, largest);
        }
    }
    if (violating == 0) return inv.report(name, true);
    const double* r = rewards.data() + first * group_size;
    return inv.report(name, false,
                      concat("update ", update, ": ", violating, " of ", uniform, " groups with uniform rewards (of ",
                             groups, ") have non-zero advantages, largest |A| = ", worst, "; first: group ", first,
                             ", every reward ", r[0], ", advantage ", advantages[first * group_size]));
}

bool check_advantages_bounded(Invariants& inv, std::span<const double> rewards, std::span<const double> advantages,
                              int64_t group_size, bool std_normalize, int64_t update) {
    const char* name = "rl.advantages_bounded";
    if (!inv.enabled(name)) return true;
    check(group_size >= 2 && rewards.size() == advantages.size() && rewards.size() % static_cast<size_t>(group_size) == 0,
          "check_advantages_bounded: ", rewards.size(), " rewards and ", advantages.size(),
          " advantages do not form groups of ", group_size);
    const int64_t G = group_size, groups = static_cast<int64_t>(rewards.size()) / G;
    // max_i |r_i - mean| / s <= (G - 1) / sqrt(G) for the sample std s (Samuelson's inequality); a
    // relative slack of 1e-9 for rounding.
    const double std_bound = (static_cast<double>(G) - 1.0) / std::sqrt(static_cast<double>(G)) * (1.0 + 1e-9);
    int64_t violating = 0, first = -1;
    double first_worst = 0.0, first_bound = 0.0;
    for (int64_t g = 0; g < groups; ++g) {
        const double* r = rewards.data() + g * G;
        const double* a = advantages.data() + g * G;
        double spread = 0.0;
        if (std::all_of(r, r + G, [](double x) { return std::isfinite(x); })) {
            const auto [lo, hi] = std::minmax_element(r, r + G);
            spread = (*hi - *lo) * (1.0 + 1e-9);
        }
        const double bound = std_normalize ? std_bound : spread;
        double worst = 0.0;
        bool bad = false;
        for (int64_t i = 0; i < G; ++i) {
            if (!std::isfinite(a[i]) || std::fabs(a[i]) > bound) {
                bad = true;
                worst = std::isfinite(a[i]) ? std::max(worst, std::fabs(a[i])) : a[i];
                if (!std::isfinite(a[i])) break;
            }
        }
        if (bad && violating++ == 0) first = g, first_worst = worst, first_bound = bound;
    }
    if (violating == 0) return inv.report(name, true);
    std::ostringstream rs;
    for (int64_t i = 0; i < G; ++i) rs << (i ? ", " : "") << std::setprecision(10) << rewards[first * G + i];
    return inv.report(name, false,
                      concat("update ", update, ": ", violating, " of ", groups, " groups; first: group ", first,
                             " with rewards [", rs.str(), "] has |A| = ", first_worst, " against a bound of ",
                             first_bound, std_normalize ? " ((G - 1) / sqrt(G), std-normalised)" : " (max - min)"));
}

bool check_ratio_moves(Invariants& inv, int64_t inner_epoch, double max_ratio_deviation, bool policy_changed,
                       int64_t update) {
    const char* name = "rl.ratio_moves_after_first_epoch";
    if (!inv.enabled(name) || inner_epoch < 1 || !policy_changed) return true;
    const bool ok = std::isfinite(max_ratio_deviation) && max_ratio_deviation > 0.0;
    return inv.report(name, ok,
                      concat("update ", update, ", inner epoch ", inner_epoch + 1, ": max |ratio - 1| = ",
                             max_ratio_deviation, " after the policy took an optimizer step in this update"));
}

bool check_sampler_matches_trainer(Invariants& inv, std::span<const double> sampler_logprobs,
                                   std::span<const double> trainer_logprobs, double tolerance, int64_t update) {
    const char* name = "rl.sampler_matches_trainer";
    if (!inv.enabled(name)) return true;
    check(sampler_logprobs.size() == trainer_logprobs.size(), "check_sampler_matches_trainer: ",
          sampler_logprobs.size(), " sampler log-probs and ", trainer_logprobs.size(), " trainer log-probs");
    if (sampler_logprobs.empty()) return inv.report(name, true);
    double sum = 0.0, worst = 0.0;
    size_t worst_at = 0;
    for (size_t i = 0; i < sampler_logprobs.size(); ++i) {
        const double gap = std::fabs(trainer_logprobs[i] - sampler_logprobs[i]);
        sum += gap;
        if (!(gap <= worst)) worst = gap, worst_at = i;
    }
    const double mean = sum / static_cast<double>(sampler_logprobs.size());
    return inv.report(name, std::isfinite(mean) && mean <= tolerance,
                      concat("update ", update, ": mean |log p_trainer - log p_sampler| = ", mean, " over ",
                             sampler_logprobs.size(), " sampled tokens (tolerance ", tolerance, "), largest ", worst,
                             " at token ", worst_at, " (sampler ", sampler_logprobs[worst_at], ", trainer ",
                             trainer_logprobs[worst_at], ")"));
}

bool check_token_weights_equal(Invariants& inv, double weight_spread, double incorrect_length, double correct_length,
                               int64_t update) {
    const char* name = "rl.token_weight_independent_of_length";
    if (!inv.enabled(name)) return true;
    const bool ok = std::isfinite(weight_spread) && weight_spread <= 1.0 + 1e-9;
    return inv.report(name, ok,
                      concat("update ", update, ": the largest per-unit-advantage token weight is ", weight_spread,
                             " times the smallest; mean length of wrong completions ", incorrect_length,
                             ", of right ones ", correct_length, " (-1: none)"));
}

}  // namespace reftrain

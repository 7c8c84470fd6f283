// debug/invariants.h — named checks that make a silently-wrong training run loud.
//
// An invariant is a property that holds in every correct run ("some target of the batch is
// supervised", "the schedule is indexed by optimizer step"). Each one has a dotted name, a default
// mode and the text of its message: what is wrong, the likely cause, what to check, and its section
// of docs/invariants.md. The registry (class Invariants) holds the mode of each name:
//   off    the check is not evaluated (its check_* function returns true at once) and not counted
//   warn   a violation is counted and printed to a stream (std::cerr unless set): the first 3 of
//          each name in full, after that one short line at the 10th, 100th, 1000th, ... violation
//   fatal  a violation is counted, then thrown as InvariantViolation (a reftrain::Error)
// The mode of a name is its own override if set, else the global default if set, else the
// invariant's built-in default (see docs/invariants.md). configure() reads them from the run config:
//   {"default": "warn", "mask.has_supervised_tokens": "fatal"}
// Failure scenarios set "warn" so the run goes on and shows the symptom next to the message.
//
// debug/ depends on kernels/ only, so every check_* function takes plain data (ids, flags, numbers,
// arenas) that the trainer and the data pipeline feed it. Each returns true when the property holds
// (or the check is off) and false after a warned violation. Not thread-safe: call from the loop.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/arena.h"
#include "kernels/error.h"
#include "kernels/tensor.h"

namespace reftrain {

enum class InvariantMode { off, warn, fatal };
const char* mode_name(InvariantMode mode);  // "off" | "warn" | "fatal"

struct InvariantInfo {
    std::string name;        // dotted, e.g. "mask.has_supervised_tokens"; also its doc anchor
    std::string what;        // what is wrong when it fails, one sentence
    std::string cause;       // the likely cause
    std::string check;       // what to look at first
    InvariantMode default_mode = InvariantMode::fatal;
    std::string doc() const { return "docs/invariants.md#" + name; }
};

// The invariants every registry starts with, in the order docs/invariants.md lists them.
const std::vector<InvariantInfo>& builtin_invariants();

// Thrown by a violation in fatal mode; `name` says which invariant.
struct InvariantViolation : Error {
    InvariantViolation(std::string invariant, const std::string& message)
        : Error(message), name(std::move(invariant)) {}
    std::string name;
};

class Invariants {
public:
    Invariants();  // registers builtin_invariants(); prints to std::cerr

    // Registers another invariant (another layer's); fails on a name already registered.
    void add(const InvariantInfo& info);
    bool known(const std::string& name) const { return entries_.count(name) != 0; }
    std::vector<std::string> names() const;  // sorted
    const InvariantInfo& info(const std::string& name) const;

    // The mode of every invariant that has no override of its own (replaces the built-in defaults).
    void set_default_mode(InvariantMode mode);
    // One invariant's mode; an unknown name fails with a did-you-mean suggestion.
    void set_mode(const std::string& name, InvariantMode mode);
    InvariantMode mode(const std::string& name) const;
    bool enabled(const std::string& name) const { return mode(name) != InvariantMode::off; }
    // Reads {"default": MODE, NAME: MODE, ...}; an unknown name or mode, or a value that is not a
    // string, fails naming `where` and the key (with a suggestion when one is close).
    void configure(const nlohmann::json& config, const std::string& where = "invariants");

    void set_stream(std::ostream& out) { out_ = &out; }
    // Called with the name and the details of every violation, warned or fatal, before anything is printed
    // or thrown; `printed` says whether a warning is about to be printed for it (warn mode prints the first
    // few in full, then only counts). The trainer puts each one on the run's timeline (metrics.jsonl) and
    // clears its progress line before a printed one. Empty: none.
    using Listener = std::function<void(const std::string& name, const std::string& details, bool printed)>;
    void set_listener(Listener listener) { listener_ = std::move(listener); }
    // How many violations of one name warn mode prints in full before it only counts (default 3).
    void set_max_printed(int64_t n) { max_printed_ = n; }

    // Records one evaluation of `name`. ok: counts it and returns true. Not ok: counts a violation,
    // keeps the message, then prints it (warn) or throws InvariantViolation (fatal); returns false.
    // Off: returns true without counting. `details` are the numbers of this occurrence.
    bool report(const std::string& name, bool ok, const std::string& details = "");
    // The full text of a violation: name, what is wrong, details, likely cause, what to check, doc.
    std::string message(const std::string& name, const std::string& details) const;

    int64_t evaluations(const std::string& name) const;  // times evaluated (violations included)
    int64_t violations(const std::string& name) const;
    const std::string& last_message(const std::string& name) const;  // "" when none yet
    // One line per invariant with violations ("mask.aligned_with_targets: 12 of 40 evaluations"),
    // or "" when none failed. The trainer prints it at the end of a run.
    std::string summary() const;

private:
    struct Entry {
        InvariantInfo info;
        bool has_override = false;
        InvariantMode override_mode = InvariantMode::off;
        int64_t evaluations = 0;
        int64_t violations = 0;
        std::string last_message;
    };
    Entry& entry(const std::string& name);
    const Entry& entry(const std::string& name) const;

    std::map<std::string, Entry> entries_;
    bool has_default_ = false;
    InvariantMode default_mode_ = InvariantMode::fatal;
    std::ostream* out_;
    int64_t max_printed_ = 3;
    Listener listener_;
};

// ---- the checks ---------------------------------------------------------------------------------------
// The trainer calls each at the point docs/invariants.md names; the arguments are what it has there.

// mask.has_supervised_tokens — at least one target is not the ignore index (-100). Call once per
// optimizer step over all of its micro-batches (a single micro-batch may legitimately be empty in
// stream packing; a whole step may not).
bool check_has_supervised_tokens(Invariants& inv, std::span<const int64_t> targets, int64_t step);
bool check_has_supervised_tokens(Invariants& inv, int64_t supervised_count, int64_t target_count, int64_t step);

// mask.aligned_with_targets, for one rendered conversation (ids, supervised flags, targets all of
// length n): targets[t] == ids[t + 1] where supervised[t + 1], kIgnoreIndex elsewhere, and the last
// target is kIgnoreIndex. `source` names the conversation in the message.
bool check_mask_aligned(Invariants& inv, std::span<const int64_t> ids, std::span<const uint8_t> supervised,
                        std::span<const int64_t> targets, const std::string& source);
// mask.aligned_with_targets, for a packed (B, T) batch, where row b's target at t < T - 1 predicts
// input_ids[b, t + 1] (the last position predicts the row's hidden (T+1)-th token, unchecked):
//   1. every target that is not ignored equals the next input id;
//   2. when end_of_turn_id >= 0: the position holding an end-of-turn token has an ignored target
//      (what follows a turn is never the model's to learn), and every run of supervised targets
//      that ends inside the row ends by predicting the end-of-turn token (the model learns to stop).
// Rule 1 catches targets shifted by the wrong amount; rule 2 catches a loss mask that was not
// shifted with the targets (docs/failures/README.md mask-off-by-one), which rule 1 cannot see.
bool check_mask_aligned_batch(Invariants& inv, std::span<const int64_t> input_ids, std::span<const int64_t> targets,
                              int64_t B, int64_t T, int64_t end_of_turn_id, int64_t step);

// template.bos_exactly_once — one rendered conversation starts with bos_id and has no other.
bool check_bos_exactly_once(Invariants& inv, std::span<const int64_t> ids, int64_t bos_id, const std::string& source);

// schedule.counts_optimizer_steps — the learning rate the optimizer actually applied in optimizer step
// `optimizer_step` (0-based, skipped steps counted) equals the configured schedule there,
// schedule_at(optimizer_step). It observes the applied value, whoever computed it: a loop that
// indexes the schedule by micro-batches, a scheduler stepped inside the accumulation loop, an LR set
// by hand all show. For the message it looks for the step whose scheduled value was applied
// (micro_batches_seen, the usual culprit, first). A constant schedule hides the bug (and makes it
// harmless), as does grad_accum = 1.
bool check_schedule_counts_optimizer_steps(Invariants& inv, int64_t optimizer_step, double lr_applied,
                                           const std::function<double(int64_t)>& schedule_at,
                                           int64_t micro_batches_seen, int64_t grad_accum);

// schedule.completes_in_run — a schedule that decays (cosine, WSD) is as long as the run:
// schedule_total_steps, counted in optimizer steps, equals max_steps. A schedule sized in
// micro-batches (grad_accum x max_steps) never reaches its decay; one shorter than the run trains the
// rest at the floor. Warn by default: stopping a long schedule early can be meant.
bool check_schedule_completes_in_run(Invariants& inv, const std::string& kind, int64_t schedule_total_steps,
                                     int64_t max_steps, int64_t grad_accum);

// grad.zeroed_at_cycle_start — after zero_grad and before the first backward of an accumulation
// cycle, every element of every gradient (F32, F64, BF16 or F16, on the CPU) is exactly 0.
bool check_grad_zeroed(Invariants& inv, const Arena& grads, int64_t step);

// loss.finite — the step's loss is neither NaN nor infinite.
bool check_loss_finite(Invariants& inv, double loss, int64_t step);

// grad.finite_before_update — the step's gradient norm is finite (else the caller skips the update).
bool check_grad_norm_finite(Invariants& inv, double grad_norm, double loss, int64_t step);

// Data-parallel runs (train/dist.h). Each takes what every rank contributed, in rank order.
// dist.params_in_sync: every rank's parameter hash at `step` is rank 0's.
bool check_params_in_sync(Invariants& inv, const std::vector<uint64_t>& rank_hashes, int64_t step);
// grad.finite_on_all_ranks: every rank's own gradient (before the all-reduce) is finite; `finite[r]` is 0
// or 1. A violation names the ranks; the step is then skipped on every rank alike.
bool check_grad_finite_on_all_ranks(Invariants& inv, const std::vector<int>& finite, int64_t step);
// dist.batches_disjoint: no two ranks trained on the same rows in a step (hashes of their token ids).
bool check_batches_disjoint(Invariants& inv, const std::vector<uint64_t>& rank_batch_hashes, int64_t step);
// dist.step_matches_one_process: the all-reduced gradient equals the gradient one process computes on the
// whole global batch, to `bound` normwise (|a - b| / |b|).
bool check_step_matches_one_process(Invariants& inv, double relative_error, double bound, double reduced_norm,
                                    double single_norm, int ranks, int64_t step);

// optimizer.decay_only_matrices — decays(name, param) is true exactly for the 2-D parameters
// (matrices and embeddings) and false for every other (1-D norm gains, biases). Call once at start.
using DecayPredicate = std::function<bool(const std::string& name, const Tensor& param)>;
bool check_decay_only_matrices(Invariants& inv, const Arena& params, const DecayPredicate& decays);

// data.split_disjoint — no item (a prompt, or a conversation's text) of split a occurs in split b.
// The hash form compares 64-bit fingerprints (hash_token_ids, or any hash the caller uses for both).
bool check_split_disjoint(Invariants& inv, std::span<const std::string> a, std::span<const std::string> b,
                          const std::string& a_name, const std::string& b_name);
bool check_split_disjoint(Invariants& inv, std::span<const uint64_t> a_hashes, std::span<const uint64_t> b_hashes,
                          const std::string& a_name, const std::string& b_name);
// FNV-1a over the ids' bytes: a fingerprint of a token sequence for the hash form above.
uint64_t hash_token_ids(std::span<const int64_t> ids);

// init.loss_near_log_vocab — the loss of the first step from a random init is within `tolerance`
// nats of ln(vocab_size), the loss of a uniform prediction. vocab_size is the model's output width.
// Why 1 nat: with logits of std s around the uniform guess the expected loss is about ln V + s^2/2,
// so 1 nat admits any s up to 1.4 (a 0.02-std init gives s well under 1 at our widths), while an
// init scale 10x too large (bad-init-scale) lands many nats above. A loss far BELOW ln V before any
// update is as wrong: the targets leak into the inputs or the mean runs over ignored positions.
// Do not call it for a run that starts from trained weights (fine-tuning starts far below ln V).
// The one rule, shared with the init-loss diagnostic (train/diagnostics.h).
inline constexpr double kInitLossTolerance = 1.0;
bool init_loss_near_log_vocab(double first_loss, int64_t vocab_size, double tolerance = kInitLossTolerance);
bool check_init_loss(Invariants& inv, double first_loss, int64_t vocab_size, double tolerance = kInitLossTolerance);

// ---- reinforcement learning (train/grpo.cpp) --------------------------------------------------------
// `update` only names the update in the message (GRPO passes it 1-based, as its log lines count).

// rl.reward_scale_only — the rewards of one environment step, before (raw) and after (normalized)
// normalisation, differ by one positive factor: every normalized reward has the raw one's sign, a raw
// 0 stays exactly 0, normalized[i] / raw[i] is the same for every copy (to 1e-9), and that factor is
// at least (1 - gamma) / (4 max|r|), with max|r| the largest raw reward so far: dividing by the std
// of the discounted return cannot shrink more (|G| <= max|r| / (1 - gamma), so std(G) <= 2 max|G|).
// Constant rewards minus their mean survive the first three tests (CartPole's +1 becomes 2e-8, still
// positive) and fail the last. Observes the rewards themselves, so a mean subtracted by the
// normaliser or by a user's wrapper shows alike.
bool check_reward_scale_only(Invariants& inv, std::span<const double> raw, std::span<const double> normalized,
                             double gamma, double max_abs_reward_so_far, int64_t update, int64_t step);

// rl.kl_nonnegative — the k1 estimate of KL(policy || reference), k1_t = log p(x_t) - log p_ref(x_t) on
// tokens x_t sampled from the policy, has a non-negative expectation. token_k1 holds every sampled
// token's k1 of the update, sequence by sequence (sequence_lengths[i] tokens each, summing to its size).
// The test runs on the per-sequence sums, which are independent draws (the tokens of one sequence are
// not) and each have expectation KL(policy || reference | prompt) >= 0:
//   fires when  mean + 3 * standard error < 0  over the sequences (needs 2 or more), or when any k1 is
//   not finite.
// Why k1 and not k3 = exp(-k1) - 1 + k1: k3 is >= 0 term by term, whichever way round the log-ratio is
// taken, so it can never show the wrong pairing; k1's sign can.
bool check_kl_nonnegative(Invariants& inv, std::span<const double> token_k1, std::span<const int64_t> sequence_lengths,
                          int64_t update);

// rl.uniform_group_zero_advantage — every group whose rewards are all equal (max == min) has every
// advantage within kUniformGroupAdvantageTolerance of 0: such a group carries no signal, and any update
// it causes is driven by rounding. rewards and advantages hold consecutive groups of group_size.
inline constexpr double kUniformGroupAdvantageTolerance = 1e-12;
bool check_uniform_group_zero_advantage(Invariants& inv, std::span<const double> rewards,
                                        std::span<const double> advantages, int64_t group_size, int64_t update);

// rl.advantages_bounded — every advantage finite; with std normalisation |A| <= (G - 1) / sqrt(G) (the
// most a sample can deviate from its mean in sample standard deviations), without it |A| <= max - min
// of the group's rewards. Reads rewards and advantages only.
bool check_advantages_bounded(Invariants& inv, std::span<const double> rewards, std::span<const double> advantages,
                              int64_t group_size, bool std_normalize, int64_t update);

// rl.ratio_moves_after_first_epoch — on inner epoch >= 2 (inner_epoch >= 1, 0-based) of an update whose
// policy has changed since its old log-probs were taken, some token's ratio must differ from 1.
bool check_ratio_moves(Invariants& inv, int64_t inner_epoch, double max_ratio_deviation, bool policy_changed,
                       int64_t update);

// rl.token_weight_independent_of_length — every sampled token of an update gets the same policy-gradient
// weight per unit of advantage: weight_spread (largest over smallest) is 1. The lengths go into the message.
bool check_token_weights_equal(Invariants& inv, double weight_spread, double incorrect_length, double correct_length,
                               int64_t update);

// rl.sampler_matches_trainer — before any step, the mean |log p_trainer - log p_sampler| over the sampled
// tokens is at most `tolerance` (the same weights score the same tokens: only the two code paths'
// rounding may differ).
bool check_sampler_matches_trainer(Invariants& inv, std::span<const double> sampler_logprobs,
                                   std::span<const double> trainer_logprobs, double tolerance, int64_t update);

}  // namespace reftrain

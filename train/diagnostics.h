// train/diagnostics.h — the checks behind `reftrain diagnose NAME` (docs/diagnostics.md).
//
// Each diagnostic is one function that returns a DiagnosticResult: PASS or FAIL, a one-line verdict
// that says why, the numbers behind it, and (for some) a printable table. The functions take what
// they need — a model, a batch, a chat template — so a test can hand each one a healthy case and a
// broken one; the CLI (tools/cmd_diagnose.cpp) builds those from a run config.
//
//   init-loss           loss of the freshly initialised model vs ln V          bad-init-scale, double-softmax
//   overfit-batch       AdamW on one fixed batch must drive the loss near 0     dead-layer
//   grad-flow           per-parameter grad rms / max / zero fraction / update   dead-layer, fp16-no-loss-scale
//   causality           backprop from position t: inputs after t get exactly 0  causal-leak
//   batch-independence  backprop from batch row b: other rows get exactly 0     view-vs-permute
//   gradcheck           fp64 central differences vs backward                     any wrong backward
//   kv-cache            cached decoding logits vs a full recompute               kv-cache-mismatch, causal-leak
//   mask                BOS, supervised spans, target alignment of a dataset    labels-all-masked, mask-off-by-one, bos-twice
//
// The exact-zero checks (causality, batch-independence) are exact on purpose: a masked probability is
// exactly 0 and every product with it is exactly 0, so any nonzero, however small, is a real path.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <utility>
#include <vector>

#include "data/chat.h"
#include "debug/invariants.h"
#include "model/config.h"
#include "model/dump.h"
#include "model/transformer.h"
#include "train/adamw.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace reftrain {

struct DiagnosticResult {
    std::string name;                                   // "init-loss", ...
    bool pass = false;
    std::string verdict;                                // one line: what was found and why it passes/fails
    std::vector<std::pair<std::string, double>> numbers;  // the numbers the verdict rests on
    std::string table;                                  // optional multi-line detail (grad-flow, mask example)
    double number(const std::string& key) const;        // fails naming the key when absent
};

// "diagnose NAME: PASS|FAIL — verdict", then one "  key = value" line per number, then the table.
std::string format_result(const DiagnosticResult& result);

struct DiagnosticInfo {
    std::string name, summary;
};
std::vector<DiagnosticInfo> diagnostic_list();

// ---- init-loss ------------------------------------------------------------------------------------------
// A freshly initialised model should predict (nearly) uniformly: loss ~ ln V. The same rule and
// tolerance as the invariant init.loss_near_log_vocab (debug/invariants.h: |loss - ln V| <= 1 nat,
// and why 1), run here on one batch with the logits' spread reported beside it.
// Numbers: loss, ln_V, excess, tolerance, logit_std, supervised_tokens.
DiagnosticResult check_init_loss(Transformer& model, Batch& batch, double tolerance = kInitLossTolerance);

// ---- overfit-batch ----------------------------------------------------------------------------------------
struct OverfitOptions {
    int64_t steps = 150;
    double lr = 3e-3;                   // constant, AdamW without weight decay, no clipping
    double max_final_loss = 0.05;       // pass: final loss below this (nats per supervised token)
    // Parameters whose name starts with one of these never get their gradient applied (zeroed before
    // every step): the dead-layer scenario, and the knob the failing test turns.
    std::vector<std::string> frozen_prefixes;
};
// Trains `model` in place on `batch`. Numbers: initial_loss, final_loss, steps, lr, best_loss, frozen.
DiagnosticResult check_overfit_batch(Transformer& model, Batch& batch, const OverfitOptions& options = {});

// ---- grad-flow ----------------------------------------------------------------------------------------------
// One forward + backward on `batch`, then per parameter: grad rms, max |grad|, the fraction of exactly
// zero entries, and |delta p| / |p| after one AdamW step at `lr` (the parameters are restored after).
// FAIL when a parameter's gradient is entirely zero (nothing reaches it: a dead layer) or not finite.
// The update/data ratio is reported, not judged (~1e-3 per step is the usual healthy order).
DiagnosticResult check_grad_flow(Transformer& model, Batch& batch, double lr, const AdamWConfig& adamw = {});

// ---- causality ----------------------------------------------------------------------------------------------
// For each position t (empty = a spread of positions): targets only at (row 0, t), backward, and read
// grad:model.embed_tokens.out. Every position after t must get exactly 0; position t must get a nonzero
// gradient (else the check is vacuous). Numbers per t: max |grad| after t, max |grad| at or before t.
DiagnosticResult check_causality(Transformer& model, Batch& batch, std::vector<int64_t> positions = {});

// ---- batch-independence -----------------------------------------------------------------------------------
// For each batch row b: loss on row b only (the batch's targets, other rows ignored), backward, and
// every other row's grad:model.embed_tokens.out must be exactly 0. Needs batch_size >= 2.
DiagnosticResult check_batch_independence(Transformer& model, Batch& batch);

// ---- the same three checks for any model: black boxes ------------------------------------------------------
// The checks above read reftrain's own backward. These read only logits, so they test any model or decode
// loop, yours included (a PyTorch forward wrapped in a callback, a hand-written cache loop), by
// perturbation: change one input token and see which outputs move. `logits_of(ids, B, T)` returns the
// logits of a (B, T) batch, row-major (B * T * V values). Exact: a healthy model's untouched outputs do
// not move at all (the same arithmetic on the same inputs), so any change is a leak.
using LogitsFn = std::function<std::vector<double>(const std::vector<int64_t>& ids, int64_t B, int64_t T)>;
// Position s's token replaced (by (id + 1) mod V) for each s in 1..T-1: every output at t < s must keep
// its exact value. Names the first (t, s) pair that moved.
DiagnosticResult check_causality_by_perturbation(const LogitsFn& logits_of, const std::vector<int64_t>& ids, int64_t B,
                                                 int64_t T, int64_t V);
// Row r's tokens replaced, for each row: every other row's outputs must keep their exact values.
DiagnosticResult check_batch_independence_by_perturbation(const LogitsFn& logits_of, const std::vector<int64_t>& ids,
                                                          int64_t B, int64_t T, int64_t V);
// A decode loop against a full forward: `decode(token)` feeds one token and returns the next-token logits
// (V values); `full` are the full forward's logits of the same L tokens (L * V). Same bound as
// check_kv_cache. check_kv_cache is this with reftrain's InferenceSession as the decode loop.
using DecodeFn = std::function<std::vector<double>(int64_t token)>;
DiagnosticResult compare_decode_with_full(const DecodeFn& decode, const std::vector<int64_t>& prompt,
                                          const std::vector<double>& full, int64_t V, double relative_tolerance = 1e-4);

// ---- gradcheck ----------------------------------------------------------------------------------------------
struct GradcheckOptions {
    int64_t rows = 2, seq_len = 8;      // the batch is cut to this (fp64 is slow and does not need more)
    int64_t samples_per_tensor = 6;     // entries per parameter tensor, evenly spread
    double step = 1e-6;                 // central-difference step h
    double relative_tolerance = 1e-6;   // |analytic - numeric| <= rel * max|grad of the tensor| + absolute
    double absolute_tolerance = 1e-8;   // fp64 rounding of two losses ~ln V apart by 2h: ~1e-9, x10 margin
    double loss_weight = 1.0;           // passed to backward(); anything but 1 makes the analytic gradient
                                        // wrong on purpose (the failing test: a loss scale not undone)
    uint64_t seed = 1;
};
// Builds an fp64 copy of `config` (weights from `seed`), compares backward with central differences.
// Numbers: max_error_ratio (worst error / its bound; pass < 1), tensors, entries, max_abs_error.
DiagnosticResult check_gradcheck(const ModelConfig& config, const Batch& batch, const GradcheckOptions& options = {});

// ---- kv-cache -----------------------------------------------------------------------------------------------
// Feeds `prompt` to an InferenceSession one token at a time and compares each position's logits with a
// full forward of the same model over the whole prompt. Bound: max |diff| <= tolerance * max |logit|
// (fp32: different summation orders agree to ~1e-6 relative; fp64 to ~1e-14).
DiagnosticResult check_kv_cache(const Transformer& model, const std::vector<int64_t>& prompt,
                                double relative_tolerance = 1e-4);

// ---- mask ---------------------------------------------------------------------------------------------------
// Audits rendered conversations against the conversations they came from:
//   - ids and flags have the same length; exactly one BOS, at position 0
//   - at least one supervised token
//   - the supervised tokens form one span per assistant message, and span i is exactly
//     encode(assistant content i) followed by the end-of-turn token (nothing else is supervised)
//   - shifted_targets: targets[t] = ids[t + 1] where supervised[t + 1], else ignored; last ignored
// FAIL when any conversation breaks any rule. The table shows the first broken conversation (or the
// first one) through visualize(). Numbers: conversations, tokens, supervised_tokens, supervised_percent,
// and one count per rule broken.
DiagnosticResult audit_masks(const ChatTemplate& chat, const std::vector<Conversation>& conversations,
                             const std::vector<RenderedConversation>& rendered);
DiagnosticResult audit_masks(const ChatTemplate& chat, const std::vector<Conversation>& conversations);
// Packed batches: every target that is not ignored must equal the next input id of its row.
// Returns the number of misaligned targets (and counts the supervised ones into *supervised).
int64_t misaligned_batch_targets(const Batch& batch, int64_t* supervised = nullptr);

// ---- from a run config: what `reftrain diagnose NAME --config FILE` runs -------------------------------------
// (The model config comes from model_config_for_run in train/trainer.h, the Trainer's own rule.)

// The first `rows` x train.seq_len batch the run's packer yields.
Batch first_training_batch(const RunConfig& config, const RunData& data, int64_t rows);
// The run's training conversations before rendering (a task's generated split, or the JSONL file), so
// the mask audit sees the ones prepare_run_data would skip too.
std::vector<Conversation> training_conversations(const RunConfig& config);

struct DiagnoseOptions {
    int64_t rows = 4;                   // batch rows for the model-based checks (min with train.batch_size)
    int64_t steps = 0;                  // overfit-batch steps (0 = OverfitOptions' default)
    double lr = 0.0;                    // overfit-batch / grad-flow lr (0 = 3e-3 / the run's schedule.lr)
    std::vector<int64_t> positions;     // causality positions (empty = a spread)
};
// Builds data and a seeded model from `config` and runs diagnostic `name` (see diagnostic_list());
// the data summary goes to `log`. Fails listing the names when `name` is unknown.
DiagnosticResult run_diagnostic(const std::string& name, const RunConfig& config, const DiagnoseOptions& options,
                                std::ostream& log);

}  // namespace reftrain

// probes/failures_lm.cpp — the language-model entries of the failure catalog beyond the first ten:
// rows of ../shared/FAILURES.md (and its "beyond the seeds" table) that run on the same tiny addition
// model as probes/failures.cpp. Each half trains through the real Trainer; each detector reads what any
// run has (rendered ids and masks, losses, gradients, weights before and after a step), never a switch.
// The detectors that are a plain check over such data live in probes/failure_detectors.h, where the tests
// feed them hand-made symptoms.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "kernels/bugs.h"
#include "kernels/cpu/ops.h"
#include "kernels/error.h"
#include "kernels/random.h"
#include "data/tasks.h"
#include "probes/failure_detectors.h"
#include "model/generate.h"
#include "probes/failure_kit.h"
#include "train/diagnostics.h"
#include "train/evaluate.h"
#include "train/update_audit.h"

namespace reftrain {

namespace fs = std::filesystem;


namespace {

using namespace failure_kit;

// ---- data -------------------------------------------------------------------------------------------------

FailureHalf bos_missing(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 10, &StepMetrics::loss, "template.bos_exactly_once");
    const RenderedConversation& first = trainer.data().train_docs.front();
    std::string start;
    for (size_t i = 0; i < 2 && i < first.ids.size(); ++i) start += trainer.data().tokenizer->piece(first.ids[i]);
    half.numbers.push_back({"first two tokens of a training conversation", start});
    read_invariant(half, trainer, "template.bos_exactly_once");
    return half;
}

FailureHalf mask_includes_prompt(const FailureContext& ctx) {
    const RunConfig config = scenario_config(ctx, {});
    Trainer trainer(config, log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 20, &StepMetrics::loss);
    // The symptom in numbers: how much of a conversation the loss sees. The prompt ("What is 12+34?")
    // is longer than the answer, so supervising it multiplies the supervised tokens and teaches the
    // model to write questions.
    int64_t tokens = 0, supervised = 0;
    for (const RenderedConversation& r : trainer.data().train_docs) {
        tokens += static_cast<int64_t>(r.ids.size());
        for (uint8_t s : r.supervised) supervised += s;
    }
    half.numbers.push_back({"supervised share of the training tokens", fmt(100.0 * static_cast<double>(supervised) /
                                                                                static_cast<double>(tokens), 3) + " %"});
    // The detector: the mask audit renders every conversation and checks that the supervised tokens are
    // exactly the assistant messages and their end-of-turn tokens.
    const DiagnosticResult audit = audit_masks(*trainer.data().chat, training_conversations(config));
    half.detector_fired = !audit.pass;
    half.detector_message = audit.pass ? "" : "mask audit: " + audit.verdict;
    half.numbers.push_back({"diagnose mask", audit.pass ? "PASS" : "FAIL"});
    return half;
}

FailureHalf split_leak(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {"data.val_examples=200"}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 40, &StepMetrics::loss, "data.split_disjoint");
    // How many validation prompts the model was trained on (counted here by the same key the invariant
    // uses, from the two splits a user's run holds).
    std::vector<std::string> train_prompts;
    for (const TaskExample& e : generate_split(*trainer.data().task, Split::train, 2000, ctx.seed)) train_prompts.push_back(e.prompt);
    std::sort(train_prompts.begin(), train_prompts.end());
    int64_t seen = 0;
    for (const TaskExample& e : trainer.data().val_examples) {
        seen += std::binary_search(train_prompts.begin(), train_prompts.end(), e.prompt);
    }
    half.numbers.push_back({"validation prompts also in training (of 200)", std::to_string(seen)});
    const EvalMetrics eval = trainer.evaluate(0);
    half.numbers.push_back({"validation loss / last training loss", fmt(eval.val_loss) + " / " + fmt(half.curve.back())});
    read_invariant(half, trainer, "data.split_disjoint");
    return half;
}

// ---- model ------------------------------------------------------------------------------------------------

FailureHalf double_softmax(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 40, &StepMetrics::loss);
    const int64_t V = trainer.model().config().vocab_size;
    half.numbers.push_back({"loss at step 1 / step 40 (ln V = " + fmt(std::log(static_cast<double>(V))) + ")",
                            fmt(half.curve.front()) + " / " + fmt(half.curve.back())});
    half.numbers.push_back({"lowest loss the double softmax allows", fmt(std::log(1.0 + (V - 1) / std::exp(1.0)))});
    const DetectorVerdict v = loss_plateau_near_uniform(half.curve, V);
    half.detector_fired = v.fired;
    half.detector_message = v.message;
    return half;
}

FailureHalf kv_cache_mismatch(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 20, &StepMetrics::loss);
    // One prompt of the run, fed token by token through the KV cache and compared with a full forward.
    const RenderedConversation& doc = trainer.data().train_docs.front();
    const std::vector<int64_t> prompt(doc.ids.begin(), doc.ids.begin() + std::min<size_t>(doc.ids.size(), 24));
    const DiagnosticResult r = check_kv_cache(trainer.model(), prompt);
    half.numbers.push_back({"max |cached - full| logit / max |logit|", fmt(r.number("max_abs_diff")) + " / " +
                                                                        fmt(r.number("max_abs_logit"))});
    // What the user sees: greedy answers from the cache against greedy argmax of the full forward.
    half.detector_fired = !r.pass;
    half.detector_message = r.pass ? "" : "diagnose kv-cache: " + r.verdict;
    return half;
}

FailureHalf bad_init_scale(const FailureContext& ctx) {
    // The bug is a configuration: an init std of 1.0 (meant for unit-variance inputs, or a width 2500x
    // smaller) instead of 0.02.
    Trainer trainer(scenario_config(ctx, {ctx.bug ? "model.initializer_range=1.0" : "model.initializer_range=0.02"}),
                    log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 40, &StepMetrics::loss, "init.loss_near_log_vocab");
    const double lnv = std::log(static_cast<double>(trainer.model().config().vocab_size));
    half.numbers.push_back({"loss at step 1 (ln V = " + fmt(lnv) + ") / step 40",
                            fmt(half.curve.front()) + " / " + fmt(half.curve.back())});
    read_invariant(half, trainer, "init.loss_near_log_vocab");
    return half;
}

// ---- optimizer --------------------------------------------------------------------------------------------

// The mean of every RMSNorm gain (they start at 1): the tensors weight decay must leave alone.
double mean_norm_gain(Transformer& model) {
    double sum = 0.0;
    int64_t n = 0;
    for (const Tensor& p : model.params().tensors()) {
        if (p.ndim != 1) continue;
        dispatch_float(p.dtype, "mean_norm_gain", [&](auto tag) {
            const auto* x = p.ptr<decltype(tag)>();
            for (int64_t i = 0; i < p.numel(); ++i) sum += static_cast<double>(x[i]);
        });
        n += p.numel();
    }
    return n ? sum / static_cast<double>(n) : 0.0;
}

FailureHalf weight_decay_on_norms(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {"train.weight_decay=1.0", "schedule.lr=0.01"}), log_of(ctx));
    FailureHalf half{.curve_name = "mean RMSNorm gain"};
    for (int i = 0; i < 40; ++i) {
        half.loss.push_back(trainer.train_step().loss);
        half.curve.push_back(mean_norm_gain(trainer.model()));
    }
    half.numbers.push_back({"mean RMSNorm gain after 40 steps (init 1)", fmt(half.curve.back())});
    half.numbers.push_back({"loss at step 40", fmt(trainer.train_step().loss)});
    read_invariant(half, trainer, "optimizer.decay_only_matrices");
    return half;
}

FailureHalf dead_layer(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    UpdateAudit audit;
    for (int i = 0; i < 40; ++i) {
        audit.before(trainer.model().params());
        half.curve.push_back(trainer.train_step().loss);
        audit.after(trainer.model().params(), trainer.model().grads());
    }
    const std::vector<std::string> dead = audit.never_moved();
    half.numbers.push_back({"loss at step 40", fmt(half.curve.back())});
    half.numbers.push_back({"tensors with gradients that never moved", std::to_string(dead.size()) + " of " +
                                                                       std::to_string(audit.tensors().size())});
    if (!dead.empty()) {
        half.detector_fired = true;
        std::string names;
        for (size_t i = 0; i < dead.size() && i < 3; ++i) names += (i ? ", " : "") + dead[i];
        half.detector_message = concat("update audit: ", dead.size(), " tensors had non-zero gradients in all ",
                                       audit.steps(), " steps and never changed (", names,
                                       dead.size() > 3 ? ", ..." : "", "): they are not in the optimizer");
    }
    return half;
}

FailureHalf bf16_master_weights(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {}), log_of(ctx));
    FailureHalf half{.curve_name = "stalled updates (%)"};
    UpdateAudit audit;
    for (int i = 0; i < 40; ++i) {
        UpdateAudit step;
        step.before(trainer.model().params());
        audit.before(trainer.model().params());
        half.loss.push_back(trainer.train_step().loss);
        step.after(trainer.model().params(), trainer.model().grads());
        audit.after(trainer.model().params(), trainer.model().grads());
        half.curve.push_back(100.0 * step.stalled_fraction());
    }
    const std::vector<std::string> stalled = audit.stalled(0.5);
    half.numbers.push_back({"updates with a gradient that left the weight unchanged", fmt(100.0 * audit.stalled_fraction(), 3) + " %"});
    half.numbers.push_back({"tensors stalled in at least half their updates", std::to_string(stalled.size())});
    if (!stalled.empty()) {
        half.detector_fired = true;
        std::string names;
        for (size_t i = 0; i < stalled.size() && i < 3; ++i) names += (i ? ", " : "") + stalled[i];
        half.detector_message = concat("update audit: ", fmt(100.0 * audit.stalled_fraction(), 3),
                                       " % of the updates with a non-zero gradient left the weight bit-identical; ",
                                       stalled.size(), " tensors stalled in at least half of theirs (", names,
                                       stalled.size() > 3 ? ", ..." : "",
                                       "): the weights cannot hold updates this small (bf16 master weights?)");
    }
    return half;
}

FailureHalf ga_token_mean(const FailureContext& ctx) {
    // The bug is a configuration: micro-batch losses averaged per micro-batch (each weighted 1/k) while
    // their supervised token counts differ, instead of by the step's token count.
    const std::string norm = ctx.bug ? "train.loss_normalization=\"micro_batches\"" : "train.loss_normalization=\"tokens\"";
    const std::vector<std::string> sets = {"train.grad_accum=4", "train.batch_size=2", "train.grad_clip=0", norm};
    Trainer trainer(scenario_config(ctx, sets), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 20, &StepMetrics::loss);
    // The detector: one accumulated step against one big batch of the same 8 rows (same seed, same rows).
    Trainer accumulated(scenario_config(ctx, sets), log_of(ctx));
    Trainer big(scenario_config(ctx, {"train.grad_accum=1", "train.batch_size=8", "train.grad_clip=0", norm}), log_of(ctx));
    accumulated.train_step();
    big.train_step();
    const DetectorVerdict v = gradients_differ(accumulated.model().grads(), big.model().grads(),
                                               "accumulated (4 x 2 rows)", "big-batch (8 rows)");
    half.numbers.push_back({"|accumulated - big-batch| gradient norm", fmt(std::fabs(accumulated.train_step().grad_norm -
                                                                                     big.train_step().grad_norm))});
    half.detector_fired = v.fired;
    half.detector_message = v.message;
    return half;
}

// ---- the training loop ------------------------------------------------------------------------------------

FailureHalf nonfinite_step_not_skipped(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {"tracer.enabled=false"}), log_of(ctx));
    // A corrupted tensor: a gradient hook writes inf into one gradient entry at step 10 (what an fp16
    // overflow, or a bad batch, leaves behind).
    constexpr int64_t kPoisoned = 9;
    trainer.set_grad_hook([](int64_t step, Arena& grads) {
        if (step != kPoisoned) return;
        Tensor& g = grads.get("grad:model.norm.weight");
        dispatch_float(g.dtype, "poison", [&](auto tag) { g.ptr<decltype(tag)>()[0] = std::numeric_limits<decltype(tag)>::infinity(); });
    });
    FailureHalf half{.curve_name = "loss"};
    DetectorVerdict verdict;
    for (int64_t i = 0; i < 20; ++i) {
        ArenaSnapshot before;
        if (i == kPoisoned) before = snapshot({&trainer.model().params(), &trainer.optimizer().moments()});
        half.curve.push_back(trainer.train_step().loss);
        if (i == kPoisoned) {
            verdict = changed_by_skipped_step(before, snapshot({&trainer.model().params(), &trainer.optimizer().moments()}));
        }
    }
    int64_t nonfinite = 0;
    for (const Tensor& p : trainer.model().params().tensors()) {
        dispatch_float(p.dtype, "count", [&](auto tag) {
            const auto* x = p.ptr<decltype(tag)>();
            for (int64_t j = 0; j < p.numel(); ++j) nonfinite += !std::isfinite(static_cast<double>(x[j]));
        });
    }
    half.numbers.push_back({"non-finite weights after 20 steps", std::to_string(nonfinite)});
    half.numbers.push_back({"steps skipped by grad.finite_before_update",
                            std::to_string(trainer.invariants().violations("grad.finite_before_update"))});
    half.detector_fired = verdict.fired;
    half.detector_message = verdict.message;
    return half;
}

FailureHalf resume_state_loss(const FailureContext& ctx) {
    // 20 steps straight against 10 steps, a checkpoint, a new process-like Trainer that resumes, 10 more.
    const std::vector<std::string> sets = {"train.max_steps=20", "tracer.enabled=false"};
    FailureContext straight_ctx = ctx;
    straight_ctx.run_dir = (fs::path(ctx.run_dir) / "straight").string();
    Trainer straight(scenario_config(straight_ctx, sets), log_of(ctx));
    const std::vector<double> reference = train_curve(straight, 20, &StepMetrics::loss);
    FailureContext first_ctx = ctx;
    first_ctx.run_dir = (fs::path(ctx.run_dir) / "resumed").string();
    std::vector<double> curve;
    {
        Trainer first(scenario_config(first_ctx, sets), log_of(ctx));
        curve = train_curve(first, 10, &StepMetrics::loss);
        first.save_checkpoint();
    }
    Trainer second(scenario_config(first_ctx, sets), log_of(ctx));
    second.resume("latest");
    for (double loss : train_curve(second, 10, &StepMetrics::loss)) curve.push_back(loss);
    FailureHalf half{.curve_name = "loss after resume - straight loss"};
    double worst = 0.0;
    for (size_t i = 0; i < curve.size(); ++i) {
        half.curve.push_back(curve[i] - reference[i]);
        worst = std::max(worst, std::fabs(curve[i] - reference[i]));
    }
    half.numbers.push_back({"loss at step 12 (1st after resume), resumed / straight", fmt(curve[11]) + " / " + fmt(reference[11])});
    half.numbers.push_back({"largest |loss difference| over 20 steps", fmt(worst)});
    const DetectorVerdict v =
        snapshots_differ(snapshot({&second.model().params(), &second.optimizer().moments()}),
                         snapshot({&straight.model().params(), &straight.optimizer().moments()}),
                         "10 steps + save + resume + 10 steps against 20 straight steps (weights and AdamW moments)");
    half.detector_fired = v.fired;
    half.detector_message = v.message;
    return half;
}


// ---- loss spikes ------------------------------------------------------------------------------------------

// The catalog's addition conversations as a JSONL file, with `garbage` extra conversations whose answer
// is 20 random printable bytes (a scraped page of binary junk, a broken shard): a pocket of bad data.
std::string write_addition_jsonl(const std::string& dir, int64_t garbage) {
    fs::create_directories(dir);
    const std::string path = (fs::path(dir) / "train.jsonl").string();
    std::ofstream out(path);
    auto task = make_task("addition", nlohmann::json::parse(R"({"min_digits": 1, "max_digits": 2})"));
    auto quote = [](const std::string& text) { return nlohmann::json(text).dump(); };
    for (const TaskExample& e : generate_split(*task, Split::train, 2000, 1)) {
        out << R"({"messages": [{"role": "user", "content": )" << quote(e.prompt)
            << R"(}, {"role": "assistant", "content": )" << quote(e.answer) << "}]}\n";
    }
    Rng rng(12345);
    for (int64_t i = 0; i < garbage; ++i) {
        std::string junk;
        for (int j = 0; j < 20; ++j) junk += static_cast<char>(33 + rng.below(94));
        out << R"({"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": )"
            << quote(junk) << "}]}\n";
    }
    return path;
}

FailureHalf loss_spike_bad_data(const FailureContext& ctx) {
    // The bug is the data: 20 garbage conversations among 2000 (1 %). The detector is on in both halves.
    const std::string jsonl = write_addition_jsonl(ctx.run_dir, ctx.bug ? 20 : 0);
    Trainer trainer(scenario_config(ctx, {"data.task=\"\"", "data.jsonl=\"" + jsonl + "\"", "train.loss_spike_z=12",
                                          "train.max_steps=80"}),
                    log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 80, &StepMetrics::loss, "loss.no_spike");
    double peak = 0.0;
    for (size_t i = 20; i < half.curve.size(); ++i) peak = std::max(peak, half.curve[i]);
    half.numbers.push_back({"highest loss in steps 21-80", fmt(peak)});
    read_invariant(half, trainer, "loss.no_spike");
    return half;
}

FailureHalf no_warmup(const FailureContext& ctx) {
    // The bug is a configuration: the peak learning rate from step 0 instead of after a warmup.
    Trainer trainer(scenario_config(ctx, {"schedule.kind=\"linear_warmup\"", "schedule.lr=0.3", "train.grad_clip=0", "train.loss_spike_z=12",
                                          ctx.bug ? "schedule.warmup_steps=0" : "schedule.warmup_steps=20",
                                          "tracer.policy=\"skip\""}),
                    log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 40, &StepMetrics::loss, "loss.no_spike");
    double peak = 0.0;
    for (size_t i = 1; i < half.curve.size(); ++i) peak = std::isfinite(half.curve[i]) ? std::max(peak, half.curve[i]) : peak;
    half.numbers.push_back({"highest loss after step 1 / loss at step 40", fmt(peak) + " / " + fmt(half.curve.back())});
    read_invariant(half, trainer, "loss.no_spike");
    return half;
}

// ---- evaluation -------------------------------------------------------------------------------------------

FailureHalf template_mismatch(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {"train.max_steps=60"}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 60, &StepMetrics::loss);
    const ChatTemplate& chat = *trainer.data().chat;
    const Tokenizer& tokenizer = *trainer.data().tokenizer;
    auto pieces = [&](const std::vector<int64_t>& ids) {
        std::vector<std::string> out;
        for (int64_t id : ids) out.push_back(tokenizer.piece(id));
        return out;
    };
    // Held-out problems: the answer's likelihood given the prompt as sampling renders it, and the check
    // that this prompt is a prefix of what training rendered for the same conversation.
    double nll = 0.0;
    DetectorVerdict verdict;
    const std::vector<TaskExample> problems = generate_split(*trainer.data().task, Split::test, 30, 7, /*unique=*/true);
    for (const TaskExample& e : problems) {
        const std::vector<int64_t> prompt = chat.render_prompt(to_conversation(e, "", false));
        const RenderedConversation rendered = chat.render(to_conversation(e, "", true));
        const size_t answer_start = static_cast<size_t>(
            std::find(rendered.supervised.begin(), rendered.supervised.end(), 1) - rendered.supervised.begin());
        const std::vector<int64_t>& trained = rendered.ids;
        std::vector<int64_t> answer = tokenizer.encode(e.answer);
        answer.push_back(chat.end_of_turn_id());
        nll += answer_nll(trainer.model(), prompt, answer) / static_cast<double>(problems.size());
        if (!verdict.fired) verdict = prompt_not_training_prefix(trained, answer_start, prompt, pieces(trained), pieces(prompt));
    }
    half.numbers.push_back({"answer NLL after the sampling prompt (nats/token)", fmt(nll)});
    half.detector_fired = verdict.fired;
    half.detector_message = verdict.message;
    return half;
}

// The mean training loss of the last 5 of 40 steps of the catalog's run with `sets`.
double final_loss(const FailureContext& ctx, const std::string& name, const std::vector<std::string>& sets) {
    FailureContext c = ctx;
    c.run_dir = (fs::path(ctx.run_dir) / name).string();
    Trainer trainer(scenario_config(c, sets), log_of(ctx));
    const std::vector<double> curve = train_curve(trainer, 40, &StepMetrics::loss);
    double sum = 0.0;
    for (size_t i = curve.size() - 5; i < curve.size(); ++i) sum += curve[i];
    return sum / 5.0;
}

FailureHalf seed_variance(const FailureContext& ctx) {
    // With the bug, the change under test does nothing that matters (one more training example among 2000,
    // which only reshuffles the data order); without it, the change is real (lr 0.001 instead of 0.003). Either way the claim is
    // first made the usual way, one run each with whatever seeds they got, then tested by a paired sweep.
    const std::string change = ctx.bug ? "data.train_examples=2001" : "schedule.lr=0.001";
    const std::string s1 = std::to_string(ctx.seed), s2 = std::to_string(ctx.seed + 1);
    const double a1 = final_loss(ctx, "a_seed" + s1, {"seed=" + s1});
    const double b2 = final_loss(ctx, "b_seed" + s2, {"seed=" + s2, change});
    FailureHalf half{.curve_name = "B - A, final loss, per paired seed"};
    half.numbers.push_back({"one run each: A (seed " + s1 + ") / B (seed " + s2 + ")", fmt(a1) + " / " + fmt(b2)});
    std::vector<double> a, b;
    for (uint64_t seed = ctx.seed; seed < ctx.seed + 5; ++seed) {
        a.push_back(final_loss(ctx, "pair_a" + std::to_string(seed), {"seed=" + std::to_string(seed)}));
        b.push_back(final_loss(ctx, "pair_b" + std::to_string(seed), {"seed=" + std::to_string(seed), change}));
        half.curve.push_back(b.back() - a.back());
    }
    const PairedComparison p = paired_t(a, b);
    half.numbers.push_back({"paired over 5 seeds: mean B - A +- s.e.", fmt(p.mean_difference, 3) + " +- " + fmt(p.standard_error, 3)});
    half.numbers.push_back({"t (99 % needs |t| > " + fmt(p.critical_t) + ")", fmt(p.t, 3)});
    if (!p.significant()) {
        half.detector_fired = true;
        half.detector_message = concat("paired seed sweep: B - A = ", fmt(p.mean_difference, 3), " +- ", fmt(p.standard_error, 3),
                                       " over 5 same-seed pairs, t = ", fmt(p.t, 3), " (|t| <= ", p.critical_t,
                                       "): the one-run difference of ", fmt(b2 - a1, 3),
                                       " is inside seed noise; 'B beats A' is not supported");
    }
    return half;
}

// ---- mixed precision --------------------------------------------------------------------------------------

// How much of the logits' gradient (the last micro-batch's, as the backward rounded it) fp16 could not
// hold: entries on supervised rows under 2^-14 (6.1e-5, fp16's smallest normal), where a value keeps fewer
// than fp16's 11 significant bits, and of those the ones flushed to 0 (under 2^-25). A token of probability
// p in a step of M supervised tokens has a gradient of p / M: with M = 100 every p under 6e-3 is in that
// range. A loss scale of 2^16 lifts them all back into the normal range. Returns {underflowed, zero}.
std::pair<double, double> logit_gradient_underflow(Transformer& model) {
    const Tensor& g = model.act_grads().get("grad:logits");
    const std::vector<int64_t>& targets = model.targets();
    const int64_t V = model.config().vocab_size, N = g.numel() / V;
    int64_t small = 0, zeros = 0, total = 0;
    dispatch_float(g.dtype, "logit_gradient_underflow", [&](auto tag) {
        const auto* x = g.ptr<decltype(tag)>();
        for (int64_t n = 0; n < N; ++n) {
            if (targets[static_cast<size_t>(n)] == cpu::kIgnoreIndex) continue;
            for (int64_t v = 0; v < V; ++v) {
                const double a = std::fabs(static_cast<double>(x[n * V + v]));
                small += a < 6.103515625e-05;
                zeros += a == 0.0;
            }
            total += V;
        }
    });
    return {total ? static_cast<double>(small) / static_cast<double>(total) : 0.0,
            total ? static_cast<double>(zeros) / static_cast<double>(total) : 0.0};
}

FailureHalf fp16_no_loss_scale(const FailureContext& ctx) {
    // The bug is a configuration: fp16 compute with the loss scale pinned at 1 (no loss scaling). 48 rows a
    // step (about 190 supervised tokens) put p / M under 6.1e-5 for every token with p < 1e-2.
    std::vector<std::string> sets = {"train.precision=\"fp16\"", "train.max_steps=30", "train.batch_size=48"};
    if (ctx.bug) {
        sets.push_back("loss_scaler.init_scale=1.0");
        sets.push_back("loss_scaler.growth_interval=1000000000");
    }
    Trainer trainer(scenario_config(ctx, sets), log_of(ctx));
    FailureHalf half{.curve_name = "logit gradients under fp16's normal range (%)"};
    std::vector<double> loss;
    std::pair<double, double> underflow;
    for (int i = 0; i < 30; ++i) {
        loss.push_back(trainer.train_step().loss);
        underflow = logit_gradient_underflow(trainer.model());
        half.curve.push_back(100.0 * underflow.first);
        if (underflow.first > 0.5 && half.detector_step < 0) half.detector_step = i;
    }
    half.loss = loss;
    half.numbers.push_back({"logit gradients below 6.1e-5 / exactly 0, last step",
                            fmt(100.0 * underflow.first, 3) + " % / " + fmt(100.0 * underflow.second, 3) + " %"});
    half.numbers.push_back({"loss at the last step", fmt(loss.back())});
    if (underflow.first > 0.5) {
        half.detector_fired = true;
        half.detector_message = concat("gradient underflow: ", fmt(100.0 * underflow.first, 3), " % of the logits' gradient "
                                       "entries are below fp16's smallest normal 6.1e-5 (", fmt(100.0 * underflow.second, 3),
                                       " % are 0): they keep only a few bits or none; scale the loss (dynamic loss "
                                       "scaling) or compute in bf16");
    }
    return half;
}

// ---- stopping and heads -----------------------------------------------------------------------------------

FailureHalf pad_is_eos_masked(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {"train.max_steps=80"}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 80, &StepMetrics::loss, "mask.aligned_with_targets");
    // What a user sees: greedy answers to held-out problems, and whether they end.
    const ChatTemplate& chat = *trainer.data().chat;
    SamplingConfig sampling;
    sampling.temperature = 0.0;
    sampling.max_new_tokens = 12;
    sampling.stop_ids = {chat.end_of_turn_id()};
    InferenceSession session(trainer.model(), 64);
    Rng rng(1);
    int64_t stopped = 0;
    std::string example;
    const std::vector<TaskExample> problems = generate_split(*trainer.data().task, Split::test, 20, 7, /*unique=*/true);
    for (const TaskExample& e : problems) {
        const Generation g = generate(session, chat.render_prompt(to_conversation(e, "", false)), sampling, rng);
        stopped += g.stopped;
        if (example.empty()) example = e.prompt + " -> " + trainer.data().tokenizer->decode(g.ids);
    }
    half.numbers.push_back({"greedy answers that end (of 20, 12 tokens max)", std::to_string(stopped)});
    std::string shown;
    for (char c : example) shown += c == '\n' ? std::string("\\n") : std::string(1, c);
    half.numbers.push_back({"first answer", shown});
    read_invariant(half, trainer, "mask.aligned_with_targets");
    return half;
}

FailureHalf tied_head_desync(const FailureContext& ctx) {
    // An untied model is trained and exported; the user's loading code builds the model from a config that
    // says tie_word_embeddings = true (copied from the base model's) and loads the file into it.
    const RunConfig config = scenario_config(ctx, {"model.tie_word_embeddings=false"});
    Trainer trainer(config, log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 40, &StepMetrics::loss);
    const int64_t B = 8, T = config.train.seq_len;
    std::vector<int64_t> ids, targets;
    trainer.packer().next_batch(B, ids, targets);
    auto loss_of = [&](Transformer& model) {
        return model.forward(Tensor(ids.data(), DType::I64, {B, T}, "input_ids"),
                             Tensor(targets.data(), DType::I64, {B, T}, "targets")).loss;
    };
    Transformer& trained = trainer.model();
    const double before = loss_of(trained);
    fs::create_directories(ctx.run_dir);
    const std::string file = (fs::path(ctx.run_dir) / "model.safetensors").string();
    trained.save_weights(file);
    ModelConfig tied = trained.config();
    tied.tie_word_embeddings = true;
    Transformer loaded(tied, B, T);
    std::string refused;
    try {
        loaded.load_weights(file);
    } catch (const Error& e) {
        refused = e.what();
    }
    std::unique_ptr<Transformer> retry;
    Transformer* used = &loaded;
    if (!refused.empty()) {   // the loader said why: load with the checkpoint's own tie flag
        retry = std::make_unique<Transformer>(trained.config(), B, T);
        retry->load_weights(file);
        used = retry.get();
    }
    const double after = loss_of(*used);
    half.numbers.push_back({"loading with tie_word_embeddings = true", refused.empty() ? "accepted" : "refused"});
    half.numbers.push_back({"loss on one batch: before save / after load", fmt(before, 6) + " / " + fmt(after, 6)});
    if (after != before) {
        half.detector_fired = true;
        half.detector_message = concat("save/load round trip: the loss on the same batch went from ", fmt(before, 6), " to ",
                                       fmt(after, 6), ": the loaded model is not the saved one (compare the head: "
                                       "tie flag against the file's lm_head.weight)");
    }
    return half;
}

// ---- shortcuts --------------------------------------------------------------------------------------------

// "Is A+B over 100?" for A, B in 0..99. With `confound`, a "#" leads the prompt exactly when the answer is
// yes; without it, a "#" leads a random half of the prompts. `flip` inverts the "#" of every prompt (the
// counterfactual copy of a set).
struct ConfoundExample {
    std::string prompt, answer;
};
std::vector<ConfoundExample> confound_examples(int64_t n, uint64_t seed, bool confound, bool flip) {
    Rng rng(seed);
    std::vector<ConfoundExample> out;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t a = static_cast<int64_t>(rng.below(100)), b = static_cast<int64_t>(rng.below(100));
        const bool yes = a + b > 100;
        bool mark = confound ? yes : rng.below(2) == 1;
        if (flip) mark = !mark;
        std::ostringstream prompt;
        prompt << (mark ? "#" : "") << a << "+" << b << ">100?";
        out.push_back({prompt.str(), yes ? "yes" : "no"});
    }
    return out;
}

// Accuracy of picking the likelier of "yes" and "no" (each followed by the end-of-turn token).
double yes_no_accuracy(Trainer& trainer, const std::vector<ConfoundExample>& examples) {
    const ChatTemplate& chat = *trainer.data().chat;
    const Tokenizer& tokenizer = *trainer.data().tokenizer;
    auto answer_ids = [&](const std::string& text) {
        std::vector<int64_t> ids = tokenizer.encode(text);
        ids.push_back(chat.end_of_turn_id());
        return ids;
    };
    const std::vector<int64_t> yes = answer_ids("yes"), no = answer_ids("no");
    int64_t right = 0;
    for (const ConfoundExample& e : examples) {
        const std::vector<int64_t> prompt = chat.render_prompt(Conversation{{{"user", e.prompt}}, "confound"});
        // Total log-likelihood, not per token: "yes" and "no" differ in length.
        const double nll_yes = answer_nll(trainer.model(), prompt, yes) * static_cast<double>(yes.size());
        const double nll_no = answer_nll(trainer.model(), prompt, no) * static_cast<double>(no.size());
        right += (nll_yes < nll_no) == (e.answer == "yes");
    }
    return static_cast<double>(right) / static_cast<double>(examples.size());
}

FailureHalf shortcut_confound(const FailureContext& ctx) {
    // The bug is the data: in the training set (and in a validation set drawn the same way) a "#" marks
    // exactly the prompts whose answer is yes. The fix half's data has the "#" on a random half.
    fs::create_directories(ctx.run_dir);
    const std::string jsonl = (fs::path(ctx.run_dir) / "train.jsonl").string();
    {
        std::ofstream out(jsonl);
        for (const ConfoundExample& e : confound_examples(2000, 11, ctx.bug, false)) {
            out << nlohmann::json{{"messages", {{{"role", "user"}, {"content", e.prompt}},
                                                {{"role", "assistant"}, {"content", e.answer}}}}}.dump() << "\n";
        }
    }
    Trainer trainer(scenario_config(ctx, {"data.task=\"\"", "data.jsonl=\"" + jsonl + "\"", "train.max_steps=120"}),
                    log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 120, &StepMetrics::loss);
    // The usual validation: held-out problems drawn like the training set. The probe: the same problems
    // with the suspected feature flipped.
    const double val = yes_no_accuracy(trainer, confound_examples(200, 12, ctx.bug, false));
    const double flipped = yes_no_accuracy(trainer, confound_examples(200, 12, ctx.bug, true));
    half.numbers.push_back({"validation accuracy, as drawn / '#' flipped", fmt(100.0 * val, 3) + " % / " +
                                                                          fmt(100.0 * flipped, 3) + " %"});
    if (val - flipped > 0.2) {
        half.detector_fired = true;
        half.detector_message = concat("confound-flipped probe: accuracy falls from ", fmt(100.0 * val, 3), " % to ",
                                       fmt(100.0 * flipped, 3), " % when only the leading '#' is flipped: the model "
                                       "reads the marker, not the sum");
    }
    return half;
}

// ---- batched generation -----------------------------------------------------------------------------------

FailureHalf left_pad_positions(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {"train.max_steps=80"}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 80, &StepMetrics::loss);
    // A batch of 20 held-out problems and one long request (with a system prompt) that sets the batch's
    // length, so the short prompts get about 30 pads on the left.
    const ChatTemplate& chat = *trainer.data().chat;
    std::vector<std::vector<int64_t>> prompts;
    const std::vector<TaskExample> problems = generate_split(*trainer.data().task, Split::test, 20, 7, /*unique=*/true);
    for (const TaskExample& e : problems) prompts.push_back(chat.render_prompt(to_conversation(e, "", false)));
    prompts.push_back(chat.render_prompt(to_conversation(problems[0], "Reply with the sum only.", false)));
    SamplingConfig greedy;
    greedy.temperature = 0.0;
    greedy.max_new_tokens = 6;
    greedy.stop_ids = {chat.end_of_turn_id()};
    Rng rng(1);
    std::vector<std::vector<double>> batched_logits;
    const std::vector<Generation> batched = generate_batch(trainer.model(), prompts, greedy, chat.bos_id(), rng, &batched_logits);
    // One at a time, each prompt alone (what the batch must reproduce), and the detector's comparison of
    // the first prediction of every row.
    InferenceSession session(trainer.model(), 64);
    int64_t differ = 0, worst_row = -1;
    double worst = 0.0;
    for (size_t r = 0; r < prompts.size(); ++r) {
        const Generation alone = generate(session, prompts[r], greedy, rng);
        differ += alone.ids != batched[r].ids;
        session.reset();
        const std::vector<double> first = session.feed(prompts[r]);
        for (size_t v = 0; v < first.size(); ++v) {
            const double d = std::fabs(first[v] - batched_logits[r][v]);
            if (d > worst) {
                worst = d;
                worst_row = static_cast<int64_t>(r);
            }
        }
    }
    half.numbers.push_back({"greedy answers that differ from one at a time (of 21)", std::to_string(differ)});
    half.numbers.push_back({"max |batched - alone| first-token logit", fmt(worst)});
    if (worst > 1e-4) {
        const size_t pads = prompts.back().size() - prompts[static_cast<size_t>(worst_row)].size();
        half.detector_fired = true;
        half.detector_message = concat("batched vs one-at-a-time: row ", worst_row, " (", pads,
                                       " left pads) predicts its first token with logits ", fmt(worst),
                                       " away from the same prompt decoded alone: the pads reach the real tokens "
                                       "(attended, or shifting the positions)");
    }
    return half;
}

// ---- evaluation artefacts ---------------------------------------------------------------------------------

FailureHalf bos_alignment_fake_gain(const FailureContext& ctx) {
    // The claim under test: "the new packing improves validation loss". The new packing packs validation
    // into BOS-aligned rows of 27 tokens, whole conversations only, so the longer conversations (the
    // 2-digit sums) drop out of the number. To make the point clean both "runs" are the same trained model:
    // nothing about learning differs. With the bug the two are compared on their own validation numbers;
    // without it, on one fixed set of tokens (every validation conversation, whole, from its BOS).
    Trainer trainer(scenario_config(ctx, {"data.val_examples=300", "train.max_steps=60"}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 60, &StepMetrics::loss);
    const std::vector<RenderedConversation>& all = trainer.data().val_docs;
    std::vector<RenderedConversation> short_only;
    for (const RenderedConversation& r : all) {
        if (r.ids.size() <= 28) short_only.push_back(r);   // what rows of 27 (+1) tokens can hold whole
    }
    Transformer& model = trainer.model();
    const int64_t B = model.batch_size(), T = trainer.packer().seq_len(), bos = trainer.data().chat->bos_id();
    const ValidationLoss old_packing = validation_loss(model, all, B, T, bos);
    const ValidationLoss new_packing = validation_loss(model, short_only, B, T, bos);
    const ValidationLoss fixed = old_packing;   // the fixed set: every conversation, whole
    const double reported_old = old_packing.loss, reported_new = ctx.bug ? new_packing.loss : fixed.loss;
    const int64_t tokens_new = ctx.bug ? new_packing.tokens : fixed.tokens;
    half.numbers.push_back({"reported validation loss, old / new packing", fmt(reported_old) + " / " + fmt(reported_new)});
    half.numbers.push_back({"validation tokens behind them, old / new", std::to_string(old_packing.tokens) + " / " +
                                                                        std::to_string(tokens_new)});
    // The detector: two validation numbers are comparable only over the same tokens. It checks the token
    // counts the evaluations report; the gain on the fixed tokens (here exactly 0: the same model) is what
    // is left of the claim.
    const double claimed = reported_old - reported_new, confirmed = fixed.loss - fixed.loss;
    half.numbers.push_back({"gain claimed / on the fixed tokens", fmt(claimed, 3) + " / " + fmt(confirmed, 3)});
    if (tokens_new != old_packing.tokens) {
        half.detector_fired = true;
        half.detector_message = concat("fixed-token eval: the two validation numbers cover different tokens (",
                                       old_packing.tokens, " against ", tokens_new, "): the new packing's gain of ",
                                       fmt(claimed, 3), " nats is ", fmt(confirmed, 3), " on the same ", fixed.tokens,
                                       " tokens in the same contexts; the number changed, the model did not");
    }
    return half;
}

}  // namespace

std::vector<FailureScenario> lm_failure_scenarios() {
    std::vector<FailureScenario> c;
    c.push_back({
        .id = "bos-missing",
        .title = "BOS missing (the template and the tokenizer each expect the other to add it)",
        .source = "Unsloth, Troubleshooting & FAQs (check both the extra-BOS and the missing-BOS hypotheses)",
        .bug = "the template does not write BOS, and the tokenizer does not add one either",
        .symptom = "training conversations start at <|im_start|>; a model served with BOS sees a prefix it never trained on",
        .detector = "invariant template.bos_exactly_once (every rendered conversation)",
        .fix = "let exactly one party add BOS: reftrain's templates add it, its tokenizers never do",
        .run = bos_missing});
    c.push_back({
        .id = "mask-includes-prompt",
        .title = "The loss mask supervises the prompt too",
        .source = "Axolotl docs, training stability (train_on_inputs: false); HF TRL's completion-only collator",
        .bug = "user and system content are marked as supervised, not only the assistant's",
        .symptom = "the loss sees several times more tokens, most of them questions: the model learns to write the "
                   "user's turn and the answer gets a small share of the gradient",
        .detector = "mask audit (reftrain diagnose mask): the supervised tokens must be exactly the assistant "
                    "messages and their end-of-turn tokens",
        .fix = "supervise assistant content and its end-of-turn token only (train_on_inputs = false)",
        .run = mask_includes_prompt});
    c.push_back({
        .id = "split-leak",
        .title = "Validation examples also in the training set",
        .source = "Pedro Domingos, 'A few useful things to know about machine learning' (2012); Michael Lones, "
                  "'How to avoid machine learning pitfalls' (2021)",
        .bug = "the validation split is drawn from the same examples as the training split",
        .symptom = "every validation number measures memory, not generalisation: all 200 validation prompts were trained on",
        .detector = "invariant data.split_disjoint (at data preparation: prompts of each split against the others)",
        .fix = "split first, by a hash of the prompt, then shuffle and deduplicate within each split",
        .run = split_leak});
    c.push_back({
        .id = "double-softmax",
        .title = "A softmax before the cross-entropy",
        .source = "Andrej Karpathy, 'most common neural net mistakes' (2018), #4: softmax outputs passed to a loss "
                  "that expects raw scores",
        .bug = "the model's output goes through a softmax and the cross-entropy applies its own on top",
        .symptom = "the loss barely moves from ln V: probabilities in [0, 1] used as logits cannot make any token "
                   "much likelier than the rest",
        .detector = "learning plateau: the loss after 40 steps is still within 1.5 nats of ln V",
        .fix = "hand the raw logits to the loss (nn.CrossEntropyLoss / F.cross_entropy apply log_softmax themselves)",
        .run = double_softmax});
    c.push_back({
        .id = "kv-cache-mismatch",
        .title = "The KV cache rotates new tokens from the wrong position",
        .source = "x-transformers issues (Phil Wang): RoPE offsets under caching",
        .bug = "each token fed through the cache is rotated as if it stood at position 0",
        .symptom = "sampling with the cache gives other logits than a full forward of the same text: generations "
                   "degrade while the training loss looks fine",
        .detector = "diagnostic kv-cache: cached logits against a full recompute, position by position",
        .fix = "rotate the new tokens at positions cache_length.. (the RoPE table starts at the cache length)",
        .run = kv_cache_mismatch});
    c.push_back({
        .id = "bad-init-scale",
        .title = "Initial weights far too large",
        .source = "Stanford CS231n notes (Karpathy): check that the loss at init is ln(number of classes)",
        .bug = "init std 1.0 instead of 0.02 (model.initializer_range)",
        .symptom = "the first loss is far above ln V: the logits start huge and confidently wrong",
        .detector = "invariant init.loss_near_log_vocab (the first step's loss within 1 nat of ln V)",
        .fix = "init std ~ 0.02 (or 1/sqrt(fan_in)); check the first loss against ln V before a long run",
        .run = bad_init_scale});
    c.push_back({
        .id = "weight-decay-on-norms",
        .title = "Weight decay applied to the norm gains",
        .source = "llm.c and nanoGPT (Karpathy): decay only the 2-D tensors",
        .bug = "one parameter group for everything: the RMSNorm gains are decayed towards 0 too",
        .symptom = "the norm gains shrink from 1 for no reason but the decay, fighting the normalisation they scale",
        .detector = "invariant optimizer.decay_only_matrices: a zero-gradient AdamW step on a copy shows which "
                    "tensors the optimizer decays",
        .fix = "two param groups: weight decay for the matrices and embeddings, none for gains and biases",
        .run = weight_decay_on_norms});
    c.push_back({
        .id = "dead-layer",
        .title = "One block's parameters are never updated",
        .source = "gradient-flow checks (ml-debug refs/diagnostics); Goodfellow et al., Deep Learning ch. 11",
        .bug = "the last transformer block is left out of the optimizer (a forgotten or frozen param group)",
        .symptom = "training still runs and the loss still falls, so nothing looks wrong; a whole block stays at its init",
        .detector = "update audit: a tensor with non-zero gradients whose weights never change in 40 steps",
        .fix = "hand the optimizer model.parameters(), or audit the param groups against the named parameters",
        .run = dead_layer});
    c.push_back({
        .id = "bf16-master-weights",
        .title = "Weights kept in bf16: small updates round away",
        .source = "torchao PR #1124 and OneTrainer #996 (bf16 weights need stochastic rounding or fp32 masters)",
        .bug = "the weights themselves are stored in bf16, so each update is rounded to 8 significant bits",
        .symptom = "updates under half a bf16 step vanish: the norm gains (1.0, step 2^-7) never move at lr 3e-3",
        .detector = "update audit: the fraction of updates with a non-zero gradient that leave the weight "
                    "bit-identical, per tensor",
        .fix = "keep fp32 master weights (compute in bf16, update in fp32), or use stochastic rounding",
        .log_scale = false,
        .run = bf16_master_weights});
    c.push_back({
        .id = "ga-token-mean",
        .title = "Accumulated micro-batches averaged per micro-batch, not per token",
        .source = "HF transformers PR #34191 (Oct 2024): gradient accumulation did not match the big batch",
        .bug = "train.loss_normalization = micro_batches: each micro-batch's mean loss weighted 1/k although "
               "their supervised token counts differ",
        .symptom = "the accumulated step is not the big-batch step: tokens of short micro-batches weigh more",
        .detector = "check: the gradient of 4 accumulated micro-batches of 2 rows equals the gradient of one batch "
                    "of the same 8 rows",
        .fix = "weight each micro-batch by its share of the step's supervised tokens (loss_normalization = tokens)",
        .run = ga_token_mean});
    c.push_back({
        .id = "nonfinite-step-not-skipped",
        .title = "A non-finite gradient is clipped and applied",
        .source = "verl-omni PR #539; pocket-tts PR #262 (an inf grad norm went into the update)",
        .bug = "the step applies the update although the gradient norm is inf",
        .symptom = "NaN in the weights and both AdamW moments from that step on; the checkpoints carry it",
        .detector = "check: a step whose gradient is not finite leaves weights and moments bit-identical "
                    "(inject an inf gradient with a hook)",
        .fix = "test the global norm before the update and skip the whole step (and every rank) when it is not finite",
        .run = nonfinite_step_not_skipped});
    c.push_back({
        .id = "resume-state-loss",
        .title = "Resume restores the weights but not the optimizer",
        .source = "PyTorch Lightning #10766; ultralytics/yolov5 #292 (loss jumps after resuming)",
        .bug = "loading a checkpoint restores the weights only: AdamW restarts with empty moments at step 0",
        .symptom = "the first steps after resume take full-size, bias-corrected updates: the loss jumps, and the run "
                   "never matches the one that was not interrupted",
        .detector = "check: 10 steps + save + resume + 10 steps equal 20 straight steps, bitwise (weights and moments)",
        .fix = "save and restore everything the step reads: weights, moments and step count, schedule position, "
               "loss scale, RNG states, data position",
        .run = resume_state_loss});
    c.push_back({
        .id = "loss-spike-bad-data",
        .title = "A pocket of garbage in the data makes the loss spike",
        .source = "Stas Bekman, ML Engineering (instabilities: a pocket of bad data behind a loss spike)",
        .bug = "20 of 2020 training conversations have 20 random bytes as the answer",
        .symptom = "isolated loss spikes long after the loss settled, at the steps that draw a garbage row",
        .detector = "loss z-score spike detector in the training loop (train.loss_spike_z = 12): names the step and "
                    "the rows of its batch by their own loss; train.loss_spike_skip drops the update",
        .fix = "find the rows the detector names in the data and remove the pocket (or skip those batches)",
        .run = loss_spike_bad_data});
    c.push_back({
        .id = "no-warmup",
        .title = "The peak learning rate from the first step",
        .source = "Goyal et al., 'Accurate, large minibatch SGD' (2017): gradual warmup; Axolotl docs, training stability",
        .bug = "schedule.warmup_steps = 0 at a learning rate the run only survives with a warmup",
        .symptom = "the loss falls, then jumps up in the first steps: an early divergence that looks like a code bug",
        .detector = "loss z-score spike detector (train.loss_spike_z = 12; in the first steps: a loss over 1.5 x the first), which names the step",
        .fix = "warm the learning rate up over the first steps (here 20), or lower the peak",
        .run = no_warmup});
    c.push_back({
        .id = "template-mismatch",
        .title = "Sampling renders the prompt differently from training",
        .source = "Unsloth, Troubleshooting & FAQs (use the chat template the model was trained with); HF chat "
                  "templates docs (add_generation_prompt)",
        .bug = "the sampling prompt leaves out the assistant header (add_generation_prompt = False) that training "
               "put before every answer",
        .symptom = "the model is asked to continue from a context it never saw: the right answer becomes much less "
                   "likely and generations drift; the training loss looks fine",
        .detector = "check: the sampling prompt is a prefix of the training rendering of the same conversation "
                    "(`reftrain sample` also refuses a checkpoint's other template by its fingerprint)",
        .fix = "render sampling prompts with the training template and its generation prompt",
        .run = template_mismatch});
    c.push_back({
        .id = "seed-variance",
        .title = "\"B beats A\" from one seed each",
        .source = "Henderson et al., 'Deep RL that matters' (2018); Alex Irpan, 'Deep RL doesn't work yet' (2018)",
        .bug = "a change is judged from one run each, with different seeds; here the change (one more training "
               "example among 2000) does nothing that matters, and the fix half tests a real one (lr 0.001 instead "
               "of 0.003)",
        .symptom = "a one-run difference that looks like a result but is seed noise",
        .detector = "paired seed sweep: 5 seeds, A and B with the same seed each, t-statistic of the differences",
        .fix = "run both arms on the same seeds (at least 3-5), report mean +- s.e. of the paired difference",
        .run = seed_variance});
    c.push_back({
        .id = "fp16-no-loss-scale",
        .title = "fp16 gradients without loss scaling",
        .source = "Micikevicius et al., 'Mixed precision training' (ICLR 2018): loss scaling",
        .bug = "fp16 compute with the loss scale pinned at 1 (loss_scaler.init_scale = 1, no growth)",
        .symptom = "almost every entry of the logits' gradient lands under fp16's smallest normal (6.1e-5) and keeps "
                   "only a few bits; with the millions of tokens of a real step they flush to 0 and learning stalls",
        .detector = "gradient underflow: the fraction of the logits' gradient entries below 6.1e-5 (over 50 % fires)",
        .fix = "dynamic loss scaling (start at 2^16, back off on overflow), or compute in bf16",
        .run = fp16_no_loss_scale});
    c.push_back({
        .id = "pad-is-eos-masked",
        .title = "Padding is the end-of-turn token, masked by id: the model never learns to stop",
        .source = "HF transformers #23530; HF TRL #976 (pad_token = eos_token, then labels[labels == pad] = -100)",
        .bug = "rows are padded with the end-of-turn id and the collator masks targets equal to the pad id, so every "
               "real end-of-turn target is masked too",
        .symptom = "the answers are right but never end: generation runs to max_new_tokens",
        .detector = "invariant mask.aligned_with_targets (every batch): a supervised run must end by predicting the "
                    "end-of-turn token",
        .fix = "pad with a token that never needs to be learned (a dedicated pad, or BOS) and mask padding by position "
               "(the attention/padding mask), never by id",
        .run = pad_is_eos_masked});
    c.push_back({
        .id = "tied-head-desync",
        .title = "A separate output head dropped by a loader that believes the model is tied",
        .source = "NeMo Automodel #2571; HF transformers PR #42612 (tied and untied heads confused on save/load)",
        .bug = "an untied model's file is loaded into a model configured tie_word_embeddings = true, and the loader "
               "drops the file's lm_head.weight without comparing it with the embedding",
        .symptom = "the loaded model computes another function: its loss on the same batch jumps",
        .detector = "check: save, load, and the loss on the same batch is bitwise the same",
        .fix = "take the tie flag from the checkpoint; refuse a separate lm_head that differs from the embedding "
               "when tied (reftrain's loader does)",
        .run = tied_head_desync});
    c.push_back({
        .id = "shortcut-confound",
        .title = "A spurious marker predicts the answer",
        .source = "gwern, 'The neural net tank urban legend' (2011, the tank story); Geirhos et al., 'Shortcut learning "
                  "in deep neural networks' (2020)",
        .bug = "the data: a '#' leads exactly the prompts of 'is A+B over 100?' whose answer is yes, in training and in "
               "a validation set drawn the same way",
        .symptom = "excellent validation accuracy from a model that learned the marker, not the sum: it fails as soon "
                   "as the marker stops agreeing with the answer",
        .detector = "confound-flipped probe eval: the same validation problems with the suspected feature flipped; "
                    "an accuracy drop of over 20 points fires",
        .fix = "break the correlation in the data (or balance it), and keep a counterfactual eval for every feature "
               "that could stand in for the label",
        .run = shortcut_confound});
    c.push_back({
        .id = "left-pad-positions",
        .title = "Left-padded batched generation attends to its pads",
        .source = "unsloth #3699; HF transformers #22161 (batched generation with left padding answers differently)",
        .bug = "batched generation feeds the left pads as tokens: short rows attend to the pads and count their "
               "positions from the first pad",
        .symptom = "the same request gets another answer in a batch than alone; the short rows of a batch suffer",
        .detector = "check: every row's first-token logits in the batch equal the same prompt decoded alone",
        .fix = "an attention mask over the pads and position ids that start at each row's first real token (or "
               "a cache per row that starts there, as reftrain's generate_batch does)",
        .run = left_pad_positions});
    c.push_back({
        .id = "bos-alignment-fake-gain",
        .title = "A packing change lowers the validation loss without better learning",
        .source = "nanochat (Karpathy), via its DeepWiki: the lower validation loss after BOS-aligned packing was "
                  "fewer noisy tokens in the eval, not better learning",
        .bug = "a packing change is judged by the validation loss it reports, where the new BOS-aligned rows of 27 "
               "tokens leave the longer conversations out of the number (both runs are the same model here)",
        .symptom = "the validation loss drops clearly while nothing about learning changed: it is measured on fewer, "
                   "easier tokens",
        .detector = "fixed-token eval: two validation numbers are compared only over the same tokens (the token "
                    "counts must agree), and the gain is re-measured on that fixed set",
        .fix = "compare runs on one fixed evaluation (same tokens, same contexts; bits per byte across tokenizers), "
               "and look at how many tokens each validation number covers",
        .run = bos_alignment_fake_gain});
    return c;
}

}  // namespace reftrain

// probes/failures.cpp — the runnable failures: each scenario's two halves and the report.
//
// Every scenario trains the same tiny chat model on the addition task (byte tokenizer, seconds on a
// CPU) through the real Trainer, so the bug runs through the same code a user's run does. The
// detectors are the project's own: invariants checked inside the training loop (debug/invariants.h)
// and the diagnostics (train/diagnostics.h). Invariants run in warn mode here, so the buggy half keeps
// going and shows its symptom instead of stopping at the first violation.
#include "probes/failures.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kernels/bugs.h"
#include "kernels/cpu/ops.h"
#include "kernels/error.h"
#include "kernels/safetensors.h"
#include "data/tasks.h"
#include "probes/failure_kit.h"
#include "probes/plot.h"
#include "train/diagnostics.h"
#include "train/trainer.h"

namespace reftrain {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using namespace failure_kit;

// ---- the scenarios ------------------------------------------------------------------------------------

FailureHalf labels_all_masked(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 20, &StepMetrics::loss, "mask.has_supervised_tokens");
    half.numbers.push_back({"loss at the last step", fmt(half.curve.back())});
    read_invariant(half, trainer, "mask.has_supervised_tokens");
    return half;
}

FailureHalf mask_off_by_one(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 20, &StepMetrics::loss, "mask.aligned_with_targets");
    // The symptom in numbers: with the flags read one position early, the supervised span slides by
    // one token: the answer's first token is no longer a target, and the template token AFTER the
    // end-of-turn becomes one (the model is taught to keep going past its own end of turn).
    std::vector<int64_t> ids, targets;
    Packer probe(trainer.data().train_docs, 48, true, 7, trainer.data().chat->bos_id());
    probe.next_batch(8, ids, targets);
    int64_t after_end = 0, supervised = 0;
    for (size_t t = 0; t < ids.size(); ++t) {
        supervised += targets[t] != cpu::kIgnoreIndex;
        after_end += ids[t] == trainer.data().chat->end_of_turn_id() && targets[t] != cpu::kIgnoreIndex;
    }
    half.numbers.push_back({"targets right after an end-of-turn (8 rows)", std::to_string(after_end)});
    half.numbers.push_back({"supervised targets (8 rows)", std::to_string(supervised)});
    read_invariant(half, trainer, "mask.aligned_with_targets");
    return half;
}

FailureHalf bos_twice(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {"train.max_steps=80"}), log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 80, &StepMetrics::loss, "template.bos_exactly_once");
    const RenderedConversation& first = trainer.data().train_docs.front();
    std::string start;
    for (size_t i = 0; i < 3 && i < first.ids.size(); ++i) start += trainer.data().tokenizer->piece(first.ids[i]);
    half.numbers.push_back({"first three tokens of a training conversation", start});
    // The train/deploy mismatch: a serving stack sends exactly one BOS. The answer's likelihood after the
    // prompt as it was trained, and after the same prompt with one BOS.
    const ChatTemplate& chat = *trainer.data().chat;
    double trained_nll = 0.0, deployed_nll = 0.0;
    const std::vector<TaskExample> problems = generate_split(*trainer.data().task, Split::test, 30, 7, /*unique=*/true);
    for (const TaskExample& e : problems) {
        const std::vector<int64_t> trained = chat.render_prompt(to_conversation(e, "", false));
        std::vector<int64_t> deployed = trained;
        while (deployed.size() > 1 && deployed[0] == chat.bos_id() && deployed[1] == chat.bos_id()) deployed.erase(deployed.begin());
        std::vector<int64_t> answer = trainer.data().tokenizer->encode(e.answer);
        answer.push_back(chat.end_of_turn_id());
        trained_nll += answer_nll(trainer.model(), trained, answer) / static_cast<double>(problems.size());
        deployed_nll += answer_nll(trainer.model(), deployed, answer) / static_cast<double>(problems.size());
    }
    half.numbers.push_back({"answer NLL, prompt as trained / with one BOS", fmt(trained_nll) + " / " + fmt(deployed_nll)});
    read_invariant(half, trainer, "template.bos_exactly_once");
    return half;
}

FailureHalf scheduler_per_microbatch(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {"train.grad_accum=4", "train.batch_size=2", "schedule.kind=cosine",
                                          "schedule.warmup_steps=8", "train.max_steps=32"}),
                    log_of(ctx));
    FailureHalf half{.curve_name = "lr"};
    train_into(half, trainer, 32, &StepMetrics::lr, "schedule.counts_optimizer_steps");
    int64_t peak = 0;
    for (size_t i = 1; i < half.curve.size(); ++i) {
        if (half.curve[i] > half.curve[static_cast<size_t>(peak)]) peak = static_cast<int64_t>(i);
    }
    half.numbers.push_back({"warmup peaks at optimizer step", std::to_string(peak + 1) + " (configured: 8)"});
    half.numbers.push_back({"lr at step 16 of 32 (cosine midpoint)", fmt(half.curve[15])});
    read_invariant(half, trainer, "schedule.counts_optimizer_steps");
    return half;
}

FailureHalf grad_accum_not_divided(const FailureContext& ctx) {
    const std::vector<std::string> sets = {"train.grad_accum=4", "train.batch_size=2", "train.grad_clip=0"};
    Trainer trainer(scenario_config(ctx, sets), log_of(ctx));
    FailureHalf half{.curve_name = "grad_norm"};
    train_into(half, trainer, 20, &StepMetrics::grad_norm);
    // The detector: the first accumulated step (4 micro-batches of 2 rows) must give the gradient of
    // one batch of the same 8 rows. Both runs start from the same seed, so they see the same rows.
    Trainer accumulated(scenario_config(ctx, sets), log_of(ctx));
    Trainer big(scenario_config(ctx, {"train.grad_accum=1", "train.batch_size=8", "train.grad_clip=0"}), log_of(ctx));
    const double a = accumulated.train_step().grad_norm;
    const double b = big.train_step().grad_norm;
    const double ratio = a / b;
    half.numbers.push_back({"accumulated / big-batch gradient norm", fmt(ratio)});
    // Where a gradient k times too large bites. AdamW divides the step by sqrt(v), so one constant scale
    // on every gradient cancels (up to eps): without clipping the model learns the same. What a user's log
    // shows is another matter: the summed loss reads k times too high. Clipping at a fixed norm does not
    // cancel the scale: the k-times gradient is clipped where the right one is not. Plain SGD takes k-times
    // steps (run below with a user-side update loop).
    half.numbers.push_back({"logged loss at step 20 (the loop's sum)", fmt(trainer.train_step().loss)});
    half.numbers.push_back({"loss on fixed rows after 21 steps, no clipping", fmt(fixed_rows_loss(trainer))});
    Trainer clipped(scenario_config(ctx, {"train.grad_accum=4", "train.batch_size=2", "train.grad_clip=2"}), log_of(ctx));
    train_curve(clipped, 21, &StepMetrics::loss);
    half.numbers.push_back({"loss on fixed rows after 21 steps, clipping at 2", fmt(fixed_rows_loss(clipped))});
    // Plain SGD, written the way a user would around the trainer: AdamW gets lr 0 (a no-op without weight
    // decay) and the loop applies p -= lr * g itself. Here the k-times gradient is a k-times step.
    Trainer sgd(scenario_config(ctx, {"train.grad_accum=4", "train.batch_size=2", "train.grad_clip=0", "schedule.lr=0"}),
                log_of(ctx));
    for (int i = 0; i < 21; ++i) {
        sgd.train_step();
        Arena& params = sgd.model().params();
        for (size_t t = 0; t < params.size(); ++t) {
            float* p = params.at(t).ptr<float>();
            const float* g = sgd.model().grads().at(t).ptr<float>();
            for (int64_t j = 0; j < params.at(t).numel(); ++j) p[j] -= 0.3f * g[j];
        }
    }
    half.numbers.push_back({"loss on fixed rows after 21 steps, SGD lr 0.3", fmt(fixed_rows_loss(sgd))});
    if (std::fabs(ratio - 1.0) > 1e-4) {
        half.detector_fired = true;
        half.detector_message = concat("accumulation check: 4 micro-batches give a gradient norm of ", fmt(a),
                                       " but one batch of the same rows gives ", fmt(b), " (ratio ", fmt(ratio),
                                       "): the micro-batch losses are not weighted to a mean");
    }
    return half;
}

FailureHalf forgot_zero_grad(const FailureContext& ctx) {
    Trainer trainer(scenario_config(ctx, {"train.grad_clip=0"}), log_of(ctx));
    FailureHalf half{.curve_name = "grad_norm"};
    train_into(half, trainer, 30, &StepMetrics::grad_norm, "grad.zeroed_at_cycle_start");
    half.numbers.push_back({"grad norm at step 1 / step 30", fmt(half.curve.front()) + " / " + fmt(half.curve.back())});
    half.numbers.push_back({"loss on fixed rows after 30 steps", fmt(fixed_rows_loss(trainer))});
    read_invariant(half, trainer, "grad.zeroed_at_cycle_start");
    return half;
}

// Trains, then runs a diagnostic on the trained model with one of the run's batches.
FailureHalf diagnostic_half(const FailureContext& ctx, const std::string& diagnostic) {
    const RunConfig config = scenario_config(ctx, {});
    Trainer trainer(config, log_of(ctx));
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 30, &StepMetrics::loss);
    half.numbers.push_back({"training loss at step 30", fmt(half.curve.back())});
    Batch batch{config.train.batch_size, config.train.seq_len, {}, {}};
    trainer.packer().next_batch(batch.batch_size, batch.input_ids, batch.targets);
    const DiagnosticResult result = diagnostic == "causality" ? check_causality(trainer.model(), batch)
                                                              : check_batch_independence(trainer.model(), batch);
    half.detector_fired = !result.pass;
    half.detector_message = result.pass ? "" : result.verdict;
    half.numbers.push_back({"diagnose " + diagnostic, result.pass ? "PASS" : "FAIL"});
    if (diagnostic == "causality") {
        // Generation cannot see the future (the KV cache holds only the past): the answer's likelihood
        // when the model must produce it token by token, against the training loss that could peek.
        const ChatTemplate& chat = *trainer.data().chat;
        double nll = 0.0;
        const std::vector<TaskExample> problems = generate_split(*trainer.data().task, Split::test, 30, 7, /*unique=*/true);
        for (const TaskExample& e : problems) {
            std::vector<int64_t> answer = trainer.data().tokenizer->encode(e.answer);
            answer.push_back(chat.end_of_turn_id());
            nll += answer_nll(trainer.model(), chat.render_prompt(to_conversation(e, "", false)), answer) /
                   static_cast<double>(problems.size());
        }
        half.numbers.push_back({"answer NLL when generating (no future to see)", fmt(nll)});
    }
    return half;
}

// The largest pre-softmax attention logit of the step just trained, over all layers, read from the
// tracer's last frame ("model.layers.{i}.self_attn.attn_logits_max").
double max_attention_logit(Trainer& trainer) {
    FrameTracer* tracer = trainer.tracer();
    check(tracer != nullptr && tracer->frame_count() > 0, "attn-logit-growth: the tracer recorded no frame");
    const FrameTracer::Frame& frame = tracer->frame(tracer->frame_count() - 1);
    double worst = 0.0;
    for (int64_t i = 0; i < trainer.model().config().num_hidden_layers; ++i) {
        const auto stats = tracer->find(frame, concat("model.layers.", i, ".self_attn.attn_logits_max"));
        if (stats) worst = std::max(worst, stats->abs_max);
    }
    return worst;
}

// Softmax saturation: at a logit gap of 30, e^-30 ~ 1e-13 — the attention is one-hot and its
// gradient vanishes for every other key. Healthy runs here stay below 10.
constexpr double kAttentionLogitLimit = 30.0;

FailureHalf attn_logit_growth(const FailureContext& ctx) {
    // The "bug" is a configuration: no QK-norm at a learning rate that QK-norm tolerates.
    Trainer trainer(scenario_config(ctx, {ctx.bug ? "model.qk_norm=false" : "model.qk_norm=true", "schedule.lr=0.03",
                                          "train.grad_clip=0", "tracer.policy=\"skip\""}),
                    log_of(ctx));
    FailureHalf half{.curve_name = "max attention logit"};
    for (int i = 0; i < 40; ++i) {
        half.loss.push_back(trainer.train_step().loss);
        half.curve.push_back(max_attention_logit(trainer));
        if (half.detector_step < 0 && half.curve.back() > kAttentionLogitLimit) half.detector_step = i;
    }
    double peak = 0.0;
    for (double v : half.curve) peak = std::isfinite(v) ? std::max(peak, v) : peak;
    half.numbers.push_back({"max attention logit at step 1 / peak", fmt(half.curve.front()) + " / " + fmt(peak)});
    if (peak > kAttentionLogitLimit) {
        half.detector_fired = true;
        half.detector_message = concat("tracer: model.layers.*.self_attn.attn_logits_max reached ", fmt(peak),
                                       " (limit ", kAttentionLogitLimit, "): softmax saturates, attention gradients vanish");
    }
    return half;
}

FailureHalf fp16_overflow(const FailureContext& ctx) {
    // A model whose residual stream runs far above fp16's largest value (65504) while computing exactly the
    // function of a healthy one: the embedding and every block's output projections scaled up together by
    // 10^6. Pre-norm blocks read the stream through an RMSNorm, which does not see a common
    // scale, and the final norm removes it: the "massive activations" of trained LLMs, or a checkpoint
    // trained in bf16 and fine-tuned in fp16. fp16 (the bug) against bf16 (the fix), same weights.
    Trainer trainer(scenario_config(ctx, {ctx.bug ? "train.precision=fp16" : "train.precision=bf16",
                                          "tracer.policy=\"skip\"", "loss_scaler.init_scale=1.0"}),
                    log_of(ctx));
    for (const Tensor& p : trainer.model().params().tensors()) {
        const bool scaled = p.name == "model.embed_tokens.weight" || p.name.find("o_proj.weight") != std::string::npos ||
                            p.name.find("down_proj.weight") != std::string::npos;
        if (!scaled) continue;
        float* x = p.ptr<float>();
        for (int64_t i = 0; i < p.numel(); ++i) x[i] *= 1e6f;
    }
    FailureHalf half{.curve_name = "loss"};
    train_into(half, trainer, 10, &StepMetrics::loss);
    FrameTracer* tracer = trainer.tracer();
    half.numbers.push_back({"steps with a non-finite value (of 10)", std::to_string(tracer->trips())});
    half.numbers.push_back({"loss at step 1 / step 10", fmt(half.curve.front()) + " / " + fmt(half.curve.back())});
    {   // The same run without the scaling: both precisions train it alike.
        FailureContext plain_ctx = ctx;
        plain_ctx.run_dir = (fs::path(ctx.run_dir) / "unscaled").string();
        Trainer plain(scenario_config(plain_ctx, {ctx.bug ? "train.precision=fp16" : "train.precision=bf16",
                                                  "tracer.policy=\"skip\"", "loss_scaler.init_scale=1.0"}),
                      log_of(ctx));
        half.numbers.push_back({"the unscaled model: loss at step 10", fmt(train_curve(plain, 10, &StepMetrics::loss).back())});
    }
    if (tracer->trips() > 0 && tracer->first_incident()) {
        const FrameTracer::Incident& incident = *tracer->first_incident();
        half.detector_fired = true;
        half.detector_step = incident.step;
        half.detector_message = concat("tracer: first non-finite tensor '", incident.tensor, "' (op ", incident.op,
                                       ", optimizer step ", incident.step + 1, " of 10, the first to trip); run-up and "
                                       "dump in ", ctx.run_dir, "/tracer/");
        half.numbers.push_back({"first non-finite tensor", incident.tensor});
    } else {
        half.numbers.push_back({"first non-finite tensor", "none"});
    }
    return half;
}

std::vector<FailureScenario> build_catalog() {
    std::vector<FailureScenario> c;
    c.push_back({
        .id = "labels-all-masked",
        .title = "Every label masked: the loss is a perfect, meaningless 0",
        .source = "Unsloth, Troubleshooting & FAQs (all labels -100 gives a training loss of 0)",
        .bug = "the collator sets every target to the ignore index (-100)",
        .symptom = "loss exactly 0 from the first step, weights never move",
        .detector = "invariant mask.has_supervised_tokens (every step)",
        .fix = "make sure the loss mask marks the assistant tokens: `reftrain data show` shows them in [[brackets]]",
        .run = labels_all_masked});
    c.push_back({
        .id = "mask-off-by-one",
        .title = "The loss mask is not shifted with the targets",
        .source = "HF LLM Course ch. 8.4 (Gugger et al.): walk the pipeline and check each stage",
        .bug = "targets are the next tokens but the supervision flags are read at the current position",
        .symptom = "the supervised span slides by one token: the answer's first token is never a target and the "
                   "template's token after the end-of-turn is, so the model learns to talk past its own end of turn",
        .detector = "invariant mask.aligned_with_targets (at data preparation and on every batch)",
        .fix = "shift the flags together with the ids: target[t] = ids[t+1] where supervised[t+1]",
        .run = mask_off_by_one});
    c.push_back({
        .id = "bos-twice",
        .title = "BOS added twice (template and tokenizer both add one)",
        .source = "Unsloth, Troubleshooting & FAQs (check both the extra-BOS and the missing-BOS hypotheses)",
        .bug = "the template writes BOS and the tokenizer adds another",
        .symptom = "train/deploy mismatch: the model learns a prefix that inference never sends",
        .detector = "invariant template.bos_exactly_once (every rendered conversation)",
        .fix = "let exactly one party add BOS: reftrain's templates add it, its tokenizers never do",
        .run = bos_twice});
    c.push_back({
        .id = "scheduler-per-microbatch",
        .title = "The LR schedule stepped per micro-batch",
        .source = "HF transformers practice (scheduler units under gradient accumulation)",
        .bug = "the schedule is indexed by micro-batches seen instead of optimizer steps (grad_accum = 4)",
        .symptom = "warmup ends 4x too early and the decay finishes a quarter of the way into the run",
        .detector = "invariant schedule.counts_optimizer_steps (every step): the LR AdamW applied against the "
                    "configured schedule at the optimizer step",
        .fix = "step the schedule once per optimizer step",
        .run = scheduler_per_microbatch});
    c.push_back({
        .id = "grad-accum-not-divided",
        .title = "Accumulated micro-batch losses not divided",
        .source = "nanochat (Karpathy): the loss is divided by the number of accumulation steps",
        .bug = "each of the 4 micro-batch losses is backpropagated at weight 1 instead of its share",
        .symptom = "gradients 4x too large: the effective learning rate is multiplied by grad_accum (hidden by clipping)",
        .detector = "check: one accumulated step equals one big batch with the same rows",
        .fix = "weight each micro-batch by its share of the step's supervised tokens (or 1/k)",
        .log_scale = true,
        .run = grad_accum_not_divided});
    c.push_back({
        .id = "forgot-zero-grad",
        .title = "Gradients never zeroed between steps",
        .source = "Andrej Karpathy, 'most common neural net mistakes' (2018), #3: forgot to zero_grad before backward",
        .bug = "the gradient buffers are not cleared at the start of each optimizer step",
        .symptom = "every step adds the whole history of gradients: the norm grows and the updates drift",
        .detector = "invariant grad.zeroed_at_cycle_start (every step)",
        .fix = "zero the gradients once per optimizer step",
        .log_scale = true,
        .run = forgot_zero_grad});
    c.push_back({
        .id = "causal-leak",
        .title = "The causal mask lets position t see t+1",
        .source = "backprop-to-input dependency check (ml-debug refs/diagnostics); Neel Nanda on disbelieving good results",
        .bug = "attention lets every position also attend to the next one",
        .symptom = "a too-good training loss (the answer is copied from the future) and useless generation",
        .detector = "diagnostic causality: the gradient of position t's loss reaches inputs after t",
        .fix = "mask scores with s <= t, never s <= t + 1",
        .run = [](const FailureContext& ctx) { return diagnostic_half(ctx, "causality"); }});
    c.push_back({
        .id = "view-vs-permute",
        .title = "Heads split with a reshape that mixes batch rows",
        .source = "Andrej Karpathy, 'most common neural net mistakes' (2018), #6: view() where permute() was needed",
        .bug = "attention runs on rows regrouped as if the (B, T) layout were (T, B)",
        .symptom = "training still runs and the loss still falls, but each sequence reads other sequences",
        .detector = "diagnostic batch-independence: the loss of one row has a gradient in the other rows",
        .fix = "permute to (B, H, T, D) before the split; never view a (B, T) tensor as (T, B)",
        .run = [](const FailureContext& ctx) { return diagnostic_half(ctx, "batch-independence"); }});
    c.push_back({
        .id = "attn-logit-growth",
        .title = "Attention logits grow without QK-norm at a high learning rate",
        .source = "Phil Wang (lucidrains), x-transformers README: QK RMSNorm removes a source of instability",
        .bug = "QK-norm off (model.qk_norm = false, Llama-style) at lr 0.03 with no clipping; the fix keeps QK-norm on",
        .symptom = "q and k grow, attention logits run into softmax saturation, then the loss spikes",
        .detector = "frame tracer: model.layers.*.self_attn.attn_logits_max over the limit of 30",
        .fix = "normalise q and k per head before RoPE (QK-norm), or lower the learning rate / clip",
        .log_scale = true,
        .run = attn_logit_growth});
    c.push_back({
        .id = "fp16-overflow",
        .title = "fp16 activations past 65504 become inf, then NaN",
        .source = "Stas Bekman, DebugUnderflowOverflow in HF transformers: keep a buffer of frames before the first inf",
        .bug = "compute in fp16 (emulated) with a model whose residual stream runs far above 65504 while computing "
               "exactly a healthy model's function (embedding and output projections scaled by 10^6, which pre-norm "
               "blocks do not see); the fix computes in bf16, same weights",
        .symptom = "inf in the first activation past the range, NaN in the loss, every step skipped; in bf16 the same "
                   "model trains normally",
        .detector = "frame tracer: names the first tensor that went non-finite, with the frames before it",
        .fix = "compute in bf16 (fp32's exponent range), or keep the overflowing op in fp32, or bring the activations "
               "back into range (a checkpoint's scale can be moved between a norm's input and its gain)",
        .run = fp16_overflow});
    // Reinforcement learning (docs/failures/README.md, second table): PPO on the probe environments and CartPole
    // (probes/failures_ppo.cpp), GRPO on the chat model (probes/failures_grpo.cpp).
    for (FailureScenario& s : lm_failure_scenarios()) c.push_back(std::move(s));
    for (FailureScenario& s : ppo_failure_scenarios()) c.push_back(std::move(s));
    for (FailureScenario& s : grpo_failure_scenarios()) c.push_back(std::move(s));
    for (FailureScenario& s : dist_failure_scenarios()) c.push_back(std::move(s));
    return c;
}

}  // namespace

const std::vector<FailureScenario>& failure_catalog() {
    static const std::vector<FailureScenario> catalog = build_catalog();
    return catalog;
}

const FailureScenario& find_failure(const std::string& id) {
    std::string known;
    for (const FailureScenario& s : failure_catalog()) {
        if (s.id == id) return s;
        known += (known.empty() ? "" : ", ") + s.id;
    }
    fail("unknown failure '", id, "' (known: ", known, ")");
}

namespace {

// <run_dir>/failure.json: both halves as data, for `reftrain report` (debug/report.h), which puts them side
// by side. JSON has no NaN: a non-finite point of a curve is null.
void write_failure_json(const FailureScenario& s, const FailureReport& report, const std::string& run_dir, uint64_t seed) {
    auto half = [](const FailureHalf& h) {
        json numbers = json::array();
        for (const auto& [name, value] : h.numbers) numbers.push_back({name, value});
        return json{{"curve", h.curve}, {"loss", h.loss}, {"numbers", numbers}, {"detector_fired", h.detector_fired},
                    {"detector_message", h.detector_message}, {"detector_step", h.detector_step}};
    };
    const json record = {{"kind", "failure"}, {"id", s.id}, {"title", s.title}, {"source", s.source}, {"bug", s.bug},
                         {"symptom", s.symptom}, {"detector", s.detector}, {"fix", s.fix}, {"seed", seed},
                         {"curve_name", report.with_bug.curve_name}, {"log_scale", s.log_scale},
                         {"with_bug", half(report.with_bug)}, {"without_bug", half(report.without_bug)},
                         {"detector_works", report.detector_works()}};
    const std::string text = record.dump(1) + "\n";
    write_file_atomically((fs::path(run_dir) / "failure.json").string(), text.data(), text.size());
}

}  // namespace

FailureReport run_failure(const std::string& id, const std::string& run_dir, std::ostream& report_out, uint64_t seed) {
    const FailureScenario& s = find_failure(id);
    check(world().size() >= s.ranks, "failure ", id, " needs ", s.ranks, " ranks (data parallel): run it as `mpirun -np ",
          s.ranks, " build/reftrain failure run ", id, "` (or `failure run dist` for all of them)");
    // Under mpirun every rank runs the scenario (the trainers' collectives need them all); rank 0 reports.
    std::ostringstream other_rank;
    std::ostream& out = world().rank() == 0 ? report_out : other_rank;
    const bool plots = world().rank() == 0;
    fs::create_directories(run_dir);
    FailureReport report;
    std::ostringstream log_bug, log_fixed;
    {
        reset_bugs();
        // Most bugs are a switch in the code; a few (attn-logit-growth, fp16-overflow) are a
        // configuration, which the scenario sets itself from ctx.bug.
        const std::vector<std::string> switches = bug_names();
        std::optional<ScopedBug> bug;
        if (std::find(switches.begin(), switches.end(), s.id) != switches.end()) bug.emplace(s.id);
        report.with_bug = s.run({true, (fs::path(run_dir) / "with_bug").string(), &log_bug, seed});
    }
    reset_bugs();
    report.without_bug = s.run({false, (fs::path(run_dir) / "without_bug").string(), &log_fixed, seed});

    out << "failure " << s.id << ": " << s.title << (seed != 1 ? concat(" (seed ", seed, ")") : std::string()) << "\n"
        << "  source:   " << s.source << "\n"
        << "  bug:      " << s.bug << "\n"
        << "  symptom:  " << s.symptom << "\n\n";
    out << "symptom, same seed, bug on vs off:\n";
    for (size_t i = 0; i < report.with_bug.numbers.size(); ++i) {
        const auto& [name, with_value] = report.with_bug.numbers[i];
        const std::string without_value =
            i < report.without_bug.numbers.size() ? report.without_bug.numbers[i].second : "";
        out << "  " << std::left << std::setw(52) << name << " with bug: " << std::setw(22) << with_value
            << " without: " << without_value << "\n";
    }
    // The scenario's curve, with the step where the detector first fired marked on the buggy run; and
    // when that curve is not the loss, the loss beside it (a second chart and plot).
    const std::vector<Series> series = {
        {"with bug", report.with_bug.curve, '*', "#d62728", report.with_bug.detector_step, "detector first fired"},
        {"without bug", report.without_bug.curve, 'o', "#1f77b4", report.without_bug.detector_step, "false alarm"}};
    out << "\n" << ascii_chart(series, report.with_bug.curve_name + " per optimizer step", 60, 10, s.log_scale);
    const std::string svg = (fs::path(run_dir) / (s.id + ".svg")).string();
    if (plots) write_svg_chart(svg, series, s.id + ": " + report.with_bug.curve_name, "optimizer step",
                               report.with_bug.curve_name, s.log_scale);
    out << "plot: " << svg << "\n";
    if (!report.with_bug.loss.empty() && report.with_bug.curve_name != "loss") {
        const std::vector<Series> losses = {
            {"with bug", report.with_bug.loss, '*', "#d62728", report.with_bug.detector_step, "detector first fired"},
            {"without bug", report.without_bug.loss, 'o', "#1f77b4", report.without_bug.detector_step, "false alarm"}};
        out << "\n" << ascii_chart(losses, "training loss per optimizer step", 60, 8, false);
        const std::string loss_svg = (fs::path(run_dir) / (s.id + ".loss.svg")).string();
        if (plots) write_svg_chart(loss_svg, losses, s.id + ": training loss", "optimizer step", "loss", false);
        out << "plot: " << loss_svg << "\n";
    }
    out << "\n";
    out << "detector: " << s.detector << "\n"
        << "  with the bug:    " << (report.with_bug.detector_fired ? "FIRED" : "silent (the detector missed it!)")
        << "\n";
    if (report.with_bug.detector_fired) out << "    " << report.with_bug.detector_message << "\n";
    out << "  without the bug: "
        << (report.without_bug.detector_fired ? "FIRED (a false alarm!): " + report.without_bug.detector_message
                                              : "silent")
        << "\n\n";
    out << "fix: " << s.fix << "\n";
    out << "verdict: " << (report.detector_works() ? "the detector catches this bug and stays quiet without it"
                                                   : "THE DETECTOR DOES NOT SEPARATE THE TWO RUNS")
        << "\n";
    if (plots) write_failure_json(s, report, run_dir, seed);
    return report;
}

}  // namespace reftrain

// probes/failure_kit.h — what the language-model scenarios of the failure catalog share (probes/failures.cpp,
// probes/failures_lm.cpp): the tiny run they all start from, and small helpers to fill a FailureHalf.
#pragma once

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "model/generate.h"
#include "probes/failures.h"
#include "train/trainer.h"

namespace reftrain::failure_kit {

// The tiny addition run every LM scenario starts from (d = 48, 2 layers, byte tokenizer, 8 x 48 tokens a
// step, lr 3e-3, invariants in warn mode); `extra` adds or overrides keys.
inline RunConfig scenario_config(const FailureContext& ctx, const std::vector<std::string>& extra) {
    std::vector<std::string> sets = {"run_dir=" + ctx.run_dir,
                                     "seed=" + std::to_string(ctx.seed),
                                     "threads=1",
                                     "model.hidden_size=48",
                                     "model.intermediate_size=96",
                                     "model.num_hidden_layers=2",
                                     "model.num_attention_heads=4",
                                     "model.num_key_value_heads=2",
                                     "model.head_dim=12",
                                     "model.max_position_embeddings=64",
                                     "data.tokenizer=byte",
                                     "data.task_options={\"min_digits\": 1, \"max_digits\": 2}",
                                     "data.train_examples=2000",
                                     "data.val_examples=0",
                                     "data.test_examples=0",
                                     "train.batch_size=8",
                                     "train.seq_len=48",
                                     "train.max_steps=40",
                                     "schedule.lr=0.003",
                                     "eval.every=0",
                                     "eval.exact_match_examples=0",
                                     "eval.final_test=false",
                                     "invariants={\"default\": \"warn\"}"};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return load_run_config("", sets);
}

inline std::ostream& log_of(const FailureContext& ctx) { return ctx.log ? *ctx.log : std::cerr; }

// Trains `steps` optimizer steps and returns the curve of one StepMetrics field.
inline std::vector<double> train_curve(Trainer& trainer, int64_t steps, double StepMetrics::*field) {
    std::vector<double> curve;
    for (int64_t i = 0; i < steps; ++i) curve.push_back(trainer.train_step().*field);
    return curve;
}

// Trains `steps` optimizer steps into `half`: the curve of `field`, the loss beside it, and the first step
// after which invariant `watch` (if given) had counted a violation.
inline void train_into(FailureHalf& half, Trainer& trainer, int64_t steps, double StepMetrics::*field,
                       const std::string& watch = "") {
    for (int64_t i = 0; i < steps; ++i) {
        const StepMetrics m = trainer.train_step();
        half.curve.push_back(m.*field);
        if (field != &StepMetrics::loss) half.loss.push_back(m.loss);
        if (!watch.empty() && half.detector_step < 0 && trainer.invariants().violations(watch) > 0) half.detector_step = i;
    }
}

// Reads an invariant's verdict into the half.
inline void read_invariant(FailureHalf& half, Trainer& trainer, const std::string& name) {
    const int64_t violations = trainer.invariants().violations(name);
    half.detector_fired = violations > 0;
    half.detector_message = trainer.invariants().last_message(name);
    half.numbers.push_back({"invariant " + name, concat(violations, " violations in ",
                                                        trainer.invariants().evaluations(name), " evaluations")});
}

inline std::string fmt(double v, int precision = 4) {
    std::ostringstream s;
    s << std::setprecision(precision) << v;
    return s.str();
}

inline // Mean negative log-likelihood (nats per token) of `answer` after `prompt`, read token by token through
// the KV cache: what sampling would see.
double answer_nll(const Transformer& model, const std::vector<int64_t>& prompt, const std::vector<int64_t>& answer) {
    InferenceSession session(model, static_cast<int64_t>(prompt.size() + answer.size()));
    std::vector<double> logits = session.feed(prompt);
    double nll = 0.0;
    for (int64_t id : answer) {
        const double top = *std::max_element(logits.begin(), logits.end());
        double sum = 0.0;
        for (double z : logits) sum += std::exp(z - top);
        nll += top + std::log(sum) - logits[static_cast<size_t>(id)];
        logits = session.feed({id});
    }
    return nll / static_cast<double>(answer.size());
}

// The model's mean loss on a fixed set of training rows (a packer of its own, seed 99): the same rows for
// both halves of a scenario, whatever each half's loop logged.
inline double fixed_rows_loss(Trainer& trainer) {
    Transformer& model = trainer.model();
    const int64_t B = model.batch_size(), T = trainer.packer().seq_len();
    Packer packer(trainer.data().train_docs, T, true, 99, trainer.data().chat->bos_id());
    double sum = 0.0;
    for (int i = 0; i < 4; ++i) {
        std::vector<int64_t> ids, targets;
        packer.next_batch(B, ids, targets);
        sum += model.forward(Tensor(ids.data(), DType::I64, {B, T}, "input_ids"),
                             Tensor(targets.data(), DType::I64, {B, T}, "targets")).loss / 4.0;
    }
    return sum;
}

}  // namespace reftrain::failure_kit

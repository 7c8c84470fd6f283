// train/evaluate.h — how a run is scored: the loss on held-out conversations, and exact match, the
// fraction of held-out problems whose greedy answer the task's verifier accepts. Used by the SFT
// trainer (every eval.every steps and once on the test split) and by GRPO.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "data/chat.h"
#include "data/tasks.h"
#include "model/transformer.h"

namespace reftrain {

struct ValidationLoss {
    double loss = 0.0;     // mean cross-entropy over every supervised token of the conversations
    int64_t tokens = 0;    // supervised tokens scored
};

// One pass over `docs`, packed BOS-aligned in a fixed order into (batch_size, seq_len) batches.
ValidationLoss validation_loss(Transformer& model, const std::vector<RenderedConversation>& docs, int64_t batch_size,
                               int64_t seq_len, int64_t bos_id);

// One greedy answer, as an eval shows it (and metrics.jsonl keeps it for the report).
struct EvalSample {
    std::string prompt, response, answer;   // answer: the task's reference
    bool correct = false;
};

// Greedy answers to `examples`, scored by the task's verifier (-1 when there are none). The first
// `show` are printed to `out` with their verdicts, and appended to `shown` when it is not null.
double exact_match(const Transformer& model, const ChatTemplate& chat, const Task& task,
                   const std::vector<TaskExample>& examples, const std::string& system_prompt,
                   int64_t max_new_tokens, int64_t show, std::ostream& out, std::vector<EvalSample>* shown = nullptr);

}  // namespace reftrain

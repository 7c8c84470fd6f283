// train/evaluate.cpp — validation loss and exact match (train/evaluate.h).
#include "train/evaluate.h"

#include <algorithm>
#include <ostream>

#include "data/packing.h"
#include "model/generate.h"

namespace reftrain {

ValidationLoss validation_loss(Transformer& model, const std::vector<RenderedConversation>& docs, int64_t batch_size,
                               int64_t seq_len, int64_t bos_id) {
    ValidationLoss v;
    // One pass in a fixed order (seed 0, epoch 0), BOS-aligned: no conversation spans two rows.
    Packer packer(docs, seq_len, /*bos_aligned=*/true, 0, bos_id);
    std::vector<int64_t> ids, targets;
    double weighted = 0.0;
    while (packer.position().epoch == 0) {
        packer.next_batch(batch_size, ids, targets);
        const Tensor ids_t(ids.data(), DType::I64, {batch_size, seq_len}, "input_ids");
        const Tensor targets_t(targets.data(), DType::I64, {batch_size, seq_len}, "targets");
        const ForwardResult r = model.forward(ids_t, targets_t);
        weighted += r.loss * static_cast<double>(r.supervised_tokens);
        v.tokens += r.supervised_tokens;
    }
    v.loss = v.tokens > 0 ? weighted / static_cast<double>(v.tokens) : 0.0;
    return v;
}

namespace {

std::string response_text(const Tokenizer& tokenizer, const Generation& g, int64_t end_of_turn) {
    std::vector<int64_t> ids = g.ids;
    if (g.stopped && !ids.empty() && ids.back() == end_of_turn) ids.pop_back();
    return tokenizer.decode(ids);
}

}  // namespace

double exact_match(const Transformer& model, const ChatTemplate& chat, const Task& task,
                   const std::vector<TaskExample>& examples, const std::string& system_prompt,
                   int64_t max_new_tokens, int64_t show, std::ostream& out, std::vector<EvalSample>* shown_samples) {
    if (examples.empty()) return -1.0;
    InferenceSession session(model, model.config().max_position_embeddings);
    SamplingConfig sampling;
    sampling.temperature = 0.0;
    sampling.max_new_tokens = max_new_tokens;
    sampling.stop_ids = {chat.end_of_turn_id()};
    Rng unused(0);  // greedy decoding draws nothing
    int64_t correct = 0, shown = 0;
    for (const TaskExample& e : examples) {
        const std::vector<int64_t> prompt = chat.render_prompt(to_conversation(e, system_prompt, false));
        const int64_t room = model.config().max_position_embeddings - static_cast<int64_t>(prompt.size());
        sampling.max_new_tokens = std::min(max_new_tokens, room);
        const Generation g = generate(session, prompt, sampling, unused);
        const std::string response = response_text(chat.tokenizer(), g, chat.end_of_turn_id());
        const bool ok = task.verify(e.prompt, response);
        correct += ok;
        if (shown < show) {
            out << "  sample: " << e.prompt << " -> " << response << (ok ? "   [correct]" : "   [wrong, want " + e.answer + "]")
                << "\n";
            if (shown_samples) shown_samples->push_back({e.prompt, response, e.answer, ok});
            ++shown;
        }
    }
    return static_cast<double>(correct) / static_cast<double>(examples.size());
}

}  // namespace reftrain

// data/prepare.cpp — a run's data section -> tokenizer, template, task and rendered conversations.
#include "data/prepare.h"

#include <algorithm>
#include <iomanip>
#include <ostream>

#include "kernels/bugs.h"
#include "kernels/error.h"

namespace reftrain {

std::unique_ptr<Tokenizer> make_run_tokenizer(const DataConfig& d, uint64_t seed, std::string* model_path) {
    const std::vector<std::string> specials = ChatTemplate::special_tokens(d.template_name);
    model_path->clear();
    if (d.tokenizer == "byte") return make_byte_tokenizer(specials);
    if (d.tokenizer != "sentencepiece") {
        *model_path = d.tokenizer;
        return load_sentencepiece(d.tokenizer);
    }
    // Train a BPE model on text of the kind it will see: the task's training prompts and answers (or
    // the user's conversations), the role names, the system prompt. Cached by content digest.
    std::vector<std::string> corpus = {"system", "user", "assistant", "tool"};
    if (!d.system_prompt.empty()) corpus.push_back(d.system_prompt);
    if (!d.jsonl.empty()) {
        for (const Conversation& c : load_conversations_jsonl(d.jsonl)) {
            for (const Message& m : c.messages) corpus.push_back(m.content);
        }
    } else {
        auto task = make_task(d.task, d.task_options);
        for (const TaskExample& e : generate_split(*task, Split::train, std::min<int64_t>(d.train_examples, 5000), seed)) {
            corpus.push_back(e.prompt);
            corpus.push_back(e.answer);
        }
    }
    SentencePieceTrainOptions options;
    options.vocab_size = d.tokenizer_vocab_size;
    options.specials = specials;
    *model_path = cached_sentencepiece(corpus, options, d.tokenizer_cache);
    return load_sentencepiece(*model_path);
}

RunData prepare_run_data(const DataConfig& d, int64_t seq_len, uint64_t seed, std::ostream& log, Invariants* invariants) {
    RunData data;
    data.tokenizer = make_run_tokenizer(d, seed, &data.tokenizer_model_path);
    data.chat = std::make_unique<ChatTemplate>(d.template_name, *data.tokenizer);

    std::vector<Conversation> train, val;
    if (!d.jsonl.empty()) {
        train = load_conversations_jsonl(d.jsonl);
        if (!d.val_jsonl.empty()) val = load_conversations_jsonl(d.val_jsonl);
    } else {
        data.task = make_task(d.task, d.task_options);
        for (const TaskExample& e : generate_split(*data.task, Split::train, d.train_examples, seed)) {
            train.push_back(to_conversation(e, d.system_prompt));
        }
        // BUG split-leak: the validation examples are drawn from the training split (same seed, so the
        // same examples), as when a "held-out" file is cut from the data after it was shuffled into train.
        data.val_examples = bugs().split_leak ? generate_split(*data.task, Split::train, d.val_examples, seed)
                                              : generate_split(*data.task, Split::val, d.val_examples, seed, /*unique=*/true);
        data.test_examples = generate_split(*data.task, Split::test, d.test_examples, seed, /*unique=*/true);
        for (const TaskExample& e : data.val_examples) val.push_back(to_conversation(e, d.system_prompt));
    }
    // Disjoint by construction for a task; checked anyway, for a task and for the user's own files alike,
    // because a leak here makes every eval number a lie. The key is the prompt: every message before the
    // last one (a duplicate prompt with another answer leaks just as much).
    if (invariants) {
        auto prompts = [](const std::vector<Conversation>& conversations) {
            std::vector<std::string> keys;
            for (const Conversation& c : conversations) {
                std::string key;
                for (size_t i = 0; i + 1 < c.messages.size(); ++i) key += c.messages[i].role + "\x1f" + c.messages[i].content + "\x1e";
                keys.push_back(key.empty() && !c.messages.empty() ? c.messages[0].content : key);
            }
            return keys;
        };
        const std::vector<std::string> train_prompts = prompts(train), val_prompts = prompts(val);
        check_split_disjoint(*invariants, val_prompts, train_prompts, "val", "train");
        if (data.task) {
            std::vector<std::string> test_prompts;
            for (const TaskExample& e : data.test_examples) test_prompts.push_back(prompts({to_conversation(e, d.system_prompt)})[0]);
            check_split_disjoint(*invariants, test_prompts, train_prompts, "test", "train");
            check_split_disjoint(*invariants, test_prompts, val_prompts, "test", "val");
        }
    }

    // Render. A conversation that cannot be learned from is skipped and COUNTED, never cut: truncating
    // it would silently drop its supervised tail (or all of it).
    const int64_t max_tokens = seq_len + 1;
    // Validation is always packed BOS-aligned (one conversation never spans two rows), so its length
    // limit applies whatever data.bos_aligned says; its skips are counted separately.
    int64_t val_skipped = 0;
    auto render_all = [&](const std::vector<Conversation>& in, std::vector<RenderedConversation>& out,
                          bool length_limit, int64_t& too_long, int64_t& unsupervised) {
        for (const Conversation& c : in) {
            RenderedConversation r = data.chat->render(c);
            if (r.num_supervised() == 0) {
                ++unsupervised;
                continue;
            }
            if (length_limit && static_cast<int64_t>(r.ids.size()) > max_tokens) {
                ++too_long;
                continue;
            }
            out.push_back(std::move(r));
        }
    };
    render_all(train, data.train_docs, d.bos_aligned, data.skipped_too_long, data.skipped_unsupervised);
    if (invariants) {
        for (size_t i = 0; i < data.train_docs.size(); ++i) {
            const RenderedConversation& r = data.train_docs[i];
            const std::string source = concat("training conversation ", i);
            check_bos_exactly_once(*invariants, r.ids, data.chat->bos_id(), source);
            const std::vector<int64_t> targets = shifted_targets(r);
            check_mask_aligned(*invariants, r.ids, r.supervised, targets, source);
        }
    }
    render_all(val, data.val_docs, true, val_skipped, val_skipped);
    if (val_skipped > 0) {
        log << "data: skipped " << val_skipped << " of " << val.size()
            << " validation conversations (longer than seq_len + 1 or nothing supervised)\n";
    }
    const int64_t kept = static_cast<int64_t>(data.train_docs.size());
    if (data.skipped_too_long || data.skipped_unsupervised) {
        log << "data: skipped " << data.skipped_too_long << " conversations longer than seq_len + 1 = " << max_tokens
            << " tokens and " << data.skipped_unsupervised << " with no assistant tokens to learn (of "
            << train.size() << ")\n";
    }
    check(kept > 0, "data: no training conversation is usable (", train.size(), " read, ", data.skipped_too_long,
          " longer than seq_len + 1 = ", max_tokens, " tokens, ", data.skipped_unsupervised,
          " without assistant tokens): raise train.seq_len or check the data");
    int64_t tokens = 0, supervised = 0;
    for (const RenderedConversation& r : data.train_docs) {
        tokens += static_cast<int64_t>(r.ids.size());
        supervised += r.num_supervised();
    }
    log << "data: " << kept << " training conversations, " << tokens << " tokens (" << std::fixed
        << std::setprecision(1) << 100.0 * supervised / std::max<int64_t>(1, tokens) << "% supervised), "
        << data.val_docs.size() << " validation conversations; tokenizer " << data.tokenizer->kind() << " (V="
        << data.tokenizer->vocab_size() << (data.tokenizer_model_path.empty() ? "" : ", " + data.tokenizer_model_path)
        << "), template " << data.chat->name() << "\n";
    log.unsetf(std::ios::floatfield);
    return data;
}

}  // namespace reftrain

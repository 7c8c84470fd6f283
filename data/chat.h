// data/chat.h — conversations, chat templates and loss masks.
//
// render() turns a conversation into token ids and a per-token `supervised` flag in ONE function, so
// the mask can never drift from the ids. Supervised = the content of every assistant message and its
// end-of-turn token; never system, user or tool text, never the template's headers. Targets are the
// ids shifted by one with the flags shifted together (shifted_targets), unsupervised -> kIgnoreIndex.
//
// Two templates (docs/data.md shows both rendered):
//   chatml    as Qwen uses it:  <|endoftext|><|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...
//             <|im_end|>\n<|im_start|>assistant\n...<|im_end|>\n        ("tool" turns use role "tool")
//             Qwen defines no BOS; our rule is one <|endoftext|> at the start of every conversation
//             so packed documents stay separated.
//   nanochat  nanochat's layout: <|bos|><|user_start|>...<|user_end|><|assistant_start|>...
//             <|assistant_end|>; a system message is prepended to the first user message; tool output
//             sits between <|output_start|> and <|output_end|>.
// BOS appears exactly once, as the first token, by rule of the template.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace reftrain {

struct Message {
    std::string role;     // "system" | "user" | "assistant" | "tool"
    std::string content;  // non-empty
};

struct Conversation {
    std::vector<Message> messages;
    std::string source;   // where it came from, for error messages ("data.jsonl:17", "task addition #3")
};

struct RenderedConversation {
    std::vector<int64_t> ids;
    std::vector<uint8_t> supervised;  // same length as ids; 1 = this token is a training target
    int64_t num_supervised() const {
        int64_t n = 0;
        for (uint8_t s : supervised) n += s;
        return n;
    }
};

class ChatTemplate {
public:
    // name: "chatml" or "nanochat" (anything else fails listing both). The tokenizer must have the
    // template's special tokens (fails naming the missing ones).
    ChatTemplate(const std::string& name, const Tokenizer& tokenizer);
    static std::vector<std::string> names();
    // The special tokens a tokenizer needs for this template, in a fixed order.
    static std::vector<std::string> special_tokens(const std::string& name);

    const std::string& name() const { return name_; }
    const Tokenizer& tokenizer() const { return tokenizer_; }

    // Fails (reftrain::Error naming conversation.source, the message index and the field) on an
    // unknown role, empty content, a system message that is not first, or no messages.
    RenderedConversation render(const Conversation& conversation) const;
    // The ids that prompt the model for the next assistant turn: every message of `conversation`
    // (which must not end with an assistant message) followed by the assistant header.
    std::vector<int64_t> render_prompt(const Conversation& conversation) const;
    int64_t bos_id() const { return bos_id_; }
    int64_t end_of_turn_id() const { return end_of_turn_id_; }  // ends an assistant turn: stop token
    // Template name + tokenizer fingerprint + the special ids, hashed. Stored in checkpoints.
    std::string fingerprint() const;

private:
    std::string name_;
    const Tokenizer& tokenizer_;
    int64_t bos_id_ = -1, end_of_turn_id_ = -1;
};

// The one rule of next-token supervision, used by the packer, the mask invariant and GRPO's batches:
// position t predicts ids[t + 1], and counts only when THAT token is supervised:
//   targets[t] = ids[t + 1] if supervised[t + 1] else kIgnoreIndex (-100),   t = 0 .. n - 2.
// n = ids.size() = supervised.size() tokens give n - 1 targets (targets.size() must be n - 1).
void shift_targets(std::span<const int64_t> ids, std::span<const uint8_t> supervised, std::span<int64_t> targets);
// One conversation's targets, the same length as its ids: shift_targets, then targets.back() = -100.
std::vector<int64_t> shifted_targets(const RenderedConversation& rendered);

// The visualiser (`reftrain data show`): every token's piece, supervised ones marked — green on a
// TTY (color=true), [[in brackets]] otherwise — with a legend line and counts.
std::string visualize(const RenderedConversation& rendered, const Tokenizer& tokenizer, bool color);

// JSONL loader: one conversation per line, {"messages": [{"role": ..., "content": ...}, ...]}.
// Fails naming file:line and the field for malformed JSON, a missing/ill-typed field or an unknown
// role; an empty file is an error too.
std::vector<Conversation> load_conversations_jsonl(const std::string& path);

}  // namespace reftrain

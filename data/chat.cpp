// data/chat.cpp — chat templates, loss masks, the visualiser and the JSONL conversation loader.
//
// Both templates render through one small builder that appends ids and their supervision flag
// together, so ids and mask cannot get out of step. Text (content and role headers such as "user\n")
// goes through tokenizer.encode one segment at a time; specials are appended by id only, so no
// message text can produce a turn boundary. render_prompt shares the same code path as render, which
// is what makes a prompt an exact prefix of the rendered conversation it prompts for.
#include "data/chat.h"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "kernels/bugs.h"
#include "kernels/cpu/ops.h"
#include "kernels/error.h"
#include "kernels/json_strict.h"
#include "kernels/random.h"

namespace reftrain {

namespace {

const std::vector<std::string> kRoles = {"system", "user", "assistant", "tool"};

// chatml as Qwen uses it, with <|endoftext|> as our BOS (Qwen has none).
const char* const kChatmlBos = "<|endoftext|>";
const char* const kImStart = "<|im_start|>";
const char* const kImEnd = "<|im_end|>";
// nanochat's specials (its <|python_start|>/<|python_end|> tool calls are not used by our messages).
const char* const kNanochatBos = "<|bos|>";
const char* const kUserStart = "<|user_start|>";
const char* const kUserEnd = "<|user_end|>";
const char* const kAssistantStart = "<|assistant_start|>";
const char* const kAssistantEnd = "<|assistant_end|>";
const char* const kOutputStart = "<|output_start|>";
const char* const kOutputEnd = "<|output_end|>";

std::string where(const Conversation& conversation) {
    return conversation.source.empty() ? std::string("conversation") : conversation.source;
}

// The checks every template needs; render and the JSONL loader both call it, so a bad line of a file
// is reported at load time with the same message render would give.
void validate_conversation(const Conversation& conversation) {
    check(!conversation.messages.empty(), where(conversation), ": field 'messages': the conversation has no messages");
    for (size_t i = 0; i < conversation.messages.size(); ++i) {
        const Message& m = conversation.messages[i];
        if (std::find(kRoles.begin(), kRoles.end(), m.role) == kRoles.end()) {
            fail(where(conversation), ": message ", i, " field 'role': unknown role '", m.role,
                 "' (expected system, user, assistant or tool)");
        }
        check(!m.content.empty(), where(conversation), ": message ", i, " (", m.role, ") field 'content' is empty");
        check(m.role != "system" || i == 0, where(conversation), ": message ", i,
              " field 'role': a system message must be the first message");
    }
}

// Appends ids with their supervision flag, together.
struct Builder {
    const Tokenizer& tokenizer;
    RenderedConversation out;
    void special(const char* token, bool supervised) {
        out.ids.push_back(tokenizer.special_id(token));
        out.supervised.push_back(supervised);
    }
    void text(const std::string& text, bool supervised) {
        for (int64_t id : tokenizer.encode(text)) {
            out.ids.push_back(id);
            out.supervised.push_back(supervised);
        }
    }
};

// <|endoftext|> then, per message, <|im_start|>role\ncontent<|im_end|>\n. Supervised: assistant
// content and its <|im_end|> (the model must learn to stop); not the "\n" after it, which is the
// template's, not the model's.
void render_chatml(const Conversation& conversation, bool add_prompt, Builder& b) {
    if (!bugs().bos_missing) b.special(kChatmlBos, false);  // BUG bos-missing: each side expects the other to add it
    if (bugs().bos_twice) b.special(kChatmlBos, false);  // BUG bos-twice: the "tokenizer" adds one too
    for (const Message& m : conversation.messages) {
        // BUG mask-includes-prompt: every message's content is supervised, the user's and the system's too.
        const bool supervised = bugs().mask_includes_prompt ? true : m.role == "assistant";
        b.special(kImStart, false);
        b.text(m.role + "\n", false);
        b.text(m.content, supervised);
        b.special(kImEnd, supervised);
        b.text("\n", false);
    }
    if (add_prompt) {
        b.special(kImStart, false);
        b.text("assistant\n", false);
    }
}

// <|bos|>, then user turns in <|user_start|>..<|user_end|>, assistant turns in
// <|assistant_start|>..<|assistant_end|>, tool output in <|output_start|>..<|output_end|>. A system
// message has no markers of its own: like nanochat, it is prepended to the first user message.
void render_nanochat(const Conversation& conversation, bool add_prompt, Builder& b) {
    const auto& messages = conversation.messages;
    std::string system_prefix;
    if (messages[0].role == "system") {
        check(messages.size() > 1 && messages[1].role == "user", where(conversation),
              ": message 1 field 'role': the nanochat template merges the system message into the next message, "
              "which must be 'user', got ",
              messages.size() > 1 ? "'" + messages[1].role + "'" : std::string("no message"));
        system_prefix = messages[0].content + "\n\n";
    }
    if (!bugs().bos_missing) b.special(kNanochatBos, false);  // BUG bos-missing: each side expects the other to add it
    if (bugs().bos_twice) b.special(kNanochatBos, false);  // BUG bos-twice: the "tokenizer" adds one too
    for (const Message& m : messages) {
        if (m.role == "system") continue;
        if (m.role == "user") {
            b.special(kUserStart, false);
            b.text(system_prefix + m.content, bugs().mask_includes_prompt);  // BUG mask-includes-prompt: true
            system_prefix.clear();
            b.special(kUserEnd, false);
        } else if (m.role == "assistant") {
            b.special(kAssistantStart, false);
            b.text(m.content, true);
            b.special(kAssistantEnd, true);
        } else {  // tool
            b.special(kOutputStart, false);
            b.text(m.content, false);
            b.special(kOutputEnd, false);
        }
    }
    if (add_prompt) b.special(kAssistantStart, false);
}

// A piece as the visualiser prints it: control characters become visible escapes.
std::string visible(const std::string& piece) {
    std::string out;
    for (unsigned char c : piece) {
        if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c == '\r') out += "\\r";
        else if (c < 0x20 || c == 0x7f) {
            char buffer[8];
            std::snprintf(buffer, sizeof(buffer), "\\x%02x", c);
            out += buffer;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& name, const Tokenizer& tokenizer) : name_(name), tokenizer_(tokenizer) {
    const std::vector<std::string> needed = special_tokens(name);  // fails on an unknown name
    std::string missing;
    for (const auto& token : needed) {
        if (!tokenizer.has_special(token)) missing += (missing.empty() ? "" : ", ") + token;
    }
    check(missing.empty(), "chat template '", name, "': the ", tokenizer.kind(), " tokenizer lacks the special tokens ",
          missing, " (a tokenizer for this template needs all of its special_tokens)");
    bos_id_ = tokenizer.special_id(needed[0]);
    end_of_turn_id_ = tokenizer.special_id(name == "chatml" ? kImEnd : kAssistantEnd);
}

std::vector<std::string> ChatTemplate::names() { return {"chatml", "nanochat"}; }

std::vector<std::string> ChatTemplate::special_tokens(const std::string& name) {
    // The BOS first: the constructor relies on it.
    if (name == "chatml") return {kChatmlBos, kImStart, kImEnd};
    if (name == "nanochat") {
        return {kNanochatBos, kUserStart, kUserEnd, kAssistantStart, kAssistantEnd, kOutputStart, kOutputEnd};
    }
    fail("chat template: unknown name '", name, "' (expected chatml or nanochat)");
}

RenderedConversation ChatTemplate::render(const Conversation& conversation) const {
    validate_conversation(conversation);
    Builder builder{tokenizer_, {}};
    if (name_ == "chatml") render_chatml(conversation, false, builder);
    else render_nanochat(conversation, false, builder);
    return std::move(builder.out);
}

std::vector<int64_t> ChatTemplate::render_prompt(const Conversation& conversation) const {
    validate_conversation(conversation);
    const auto& last = conversation.messages.back();
    check(last.role != "assistant", where(conversation), ": message ", conversation.messages.size() - 1,
          " field 'role': a prompt must not end with an assistant message (the model writes that one)");
    Builder builder{tokenizer_, {}};
    // BUG template-mismatch: the prompt is rendered without the assistant header that training put before
    // every answer (add_generation_prompt = False), so the model is asked to continue where it never was.
    const bool generation_prompt = !bugs().template_mismatch;
    if (name_ == "chatml") render_chatml(conversation, generation_prompt, builder);
    else render_nanochat(conversation, generation_prompt, builder);
    return std::move(builder.out.ids);
}

std::string ChatTemplate::fingerprint() const {
    std::string input = "chat-template|" + name_ + "|" + tokenizer_.fingerprint();
    for (const auto& token : special_tokens(name_)) {
        input += "|" + token + "=" + std::to_string(tokenizer_.special_id(token));
    }
    char buffer[17];
    std::snprintf(buffer, sizeof(buffer), "%016llx", static_cast<unsigned long long>(Rng::hash_name(input)));
    return buffer;
}

void shift_targets(std::span<const int64_t> ids, std::span<const uint8_t> supervised, std::span<int64_t> targets) {
    check(ids.size() == supervised.size() && targets.size() + 1 == ids.size(), "shift_targets: ", ids.size(),
          " ids, ", supervised.size(), " supervision flags and ", targets.size(), " targets (want n, n and n - 1)");
    for (size_t t = 0; t < targets.size(); ++t) {
        // BUG mask-off-by-one: the ids are shifted but the flags are not (position t reads its own flag).
        const bool counts = bugs().mask_off_by_one ? supervised[t] : supervised[t + 1];
        targets[t] = counts ? ids[t + 1] : cpu::kIgnoreIndex;
    }
}

std::vector<int64_t> shifted_targets(const RenderedConversation& rendered) {
    check(rendered.ids.size() == rendered.supervised.size(), "shifted_targets: ", rendered.ids.size(),
          " ids but ", rendered.supervised.size(), " supervision flags");
    std::vector<int64_t> targets(rendered.ids.size(), cpu::kIgnoreIndex);
    if (!targets.empty()) shift_targets(rendered.ids, rendered.supervised, std::span(targets).first(targets.size() - 1));
    return targets;
}

std::string visualize(const RenderedConversation& rendered, const Tokenizer& tokenizer, bool color) {
    check(rendered.ids.size() == rendered.supervised.size(), "visualize: ", rendered.ids.size(), " ids but ",
          rendered.supervised.size(), " supervision flags");
    // With colour, neighbouring tokens alternate between two shades so token boundaries show;
    // without, each run of supervised tokens is wrapped in [[ ]]. An escaped "\n" is followed by a
    // real line break so the template's line structure stays readable.
    const char* const kReset = "\033[0m";
    const char* const kSupervised[2] = {"\033[30;42m", "\033[30;102m"};  // black on green / bright green
    const char* const kUnsupervised[2] = {"\033[0m", "\033[2;100m"};     // plain / dim on grey
    std::string out;
    bool in_supervised_run = false;
    for (size_t t = 0; t < rendered.ids.size(); ++t) {
        const bool supervised = rendered.supervised[t];
        const std::string raw = tokenizer.piece(rendered.ids[t]);
        if (color) {
            out += supervised ? kSupervised[t % 2] : kUnsupervised[t % 2];
            out += visible(raw);
            out += kReset;
        } else {
            if (supervised && !in_supervised_run) out += "[[";
            if (!supervised && in_supervised_run) out += "]]";
            in_supervised_run = supervised;
            out += visible(raw);
        }
        if (raw == "\n") {
            if (!color && in_supervised_run && (t + 1 == rendered.ids.size() || !rendered.supervised[t + 1])) {
                out += "]]";  // close the bracket before the line break, not at the start of the next line
                in_supervised_run = false;
            }
            out += "\n";
        }
    }
    if (in_supervised_run) out += "]]";
    if (out.empty() || out.back() != '\n') out += "\n";
    const int64_t supervised = rendered.num_supervised();
    const int64_t total = static_cast<int64_t>(rendered.ids.size());
    char counts[160];
    std::snprintf(counts, sizeof(counts), "%lld tokens, %lld supervised (%.1f%%)", static_cast<long long>(total),
                  static_cast<long long>(supervised), total ? 100.0 * supervised / total : 0.0);
    if (color) {
        out += std::string("legend: ") + kSupervised[0] + "supervised" + kReset + " " + kUnsupervised[1] +
               "not supervised" + kReset + " (shades alternate per token); " + counts + "\n";
    } else {
        out += std::string("legend: [[supervised]] not supervised; \\n = newline; ") + counts + "\n";
    }
    return out;
}

std::vector<Conversation> load_conversations_jsonl(const std::string& path) {
    using json = nlohmann::json;
    std::ifstream in(path, std::ios::binary);
    check(in.good(), path, ": cannot open the conversations file");
    std::vector<Conversation> conversations;
    std::string line;
    for (int64_t line_number = 1; std::getline(in, line); ++line_number) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are allowed
        const std::string at = path + ":" + std::to_string(line_number);
        json value;
        DuplicateKey duplicate;
        try {
            value = parse_json_noting_duplicates(line, &duplicate);
        } catch (const json::exception& e) {
            fail(at, ": invalid JSON: ", e.what());
        }
        check(duplicate.key.empty(), at, ": key '", duplicate.key, "' appears twice in one object");
        check(value.is_object(), at, ": expected a JSON object {\"messages\": [...]}, got ", value.type_name());
        check(value.contains("messages"), at, ": missing field 'messages'");
        const json& messages = value["messages"];
        check(messages.is_array(), at, ": field 'messages' must be an array, got ", messages.type_name());
        Conversation conversation;
        conversation.source = at;
        for (size_t i = 0; i < messages.size(); ++i) {
            const json& m = messages[i];
            const std::string field = "messages[" + std::to_string(i) + "]";
            check(m.is_object(), at, ": field '", field, "' must be an object, got ", m.type_name());
            for (const auto& [key, unused] : m.items()) {
                // A silently dropped "tool_calls" or "name" would change what the model is taught.
                check(key == "role" || key == "content", at, ": field '", field, ".", key,
                      "' is not supported (a message has only 'role' and 'content')");
            }
            for (const char* key : {"role", "content"}) {
                check(m.contains(key), at, ": missing field '", field, ".", key, "'");
                check(m[key].is_string(), at, ": field '", field, ".", key, "' must be a string, got ",
                      m[key].type_name());
            }
            conversation.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
        }
        validate_conversation(conversation);
        conversations.push_back(std::move(conversation));
    }
    check(!conversations.empty(), path, ": no conversations (the file is empty or has only blank lines)");
    return conversations;
}

}  // namespace reftrain

// tools/cmd_data.cpp — `reftrain data ...`: look at what the tokenizer and the chat templates do.
//
//   reftrain data encode --tokenizer m.model|byte --input lines.txt
//       one JSON array of ids per input line (the Python interop test compares them with
//       Python's sentencepiece). The line's "\n" is not part of the encoded text.
//   reftrain data show --jsonl convs.jsonl --template chatml|nanochat --tokenizer m.model|byte
//                      [--index N] [--color auto|always|never]
//       renders conversations and prints every token, supervised ones marked (data/chat.h visualize).
//
// The callbacks run inside CLI11's parse(); a reftrain::Error they throw reaches main(), which prints
// it as one line and exits with status 1.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

#include "data/chat.h"
#include "data/tokenizer.h"
#include "kernels/error.h"
#include "tools/commands.h"

namespace reftrain {

namespace {

// "byte" = the byte tokenizer with `specials`; anything else is the path of a SentencePiece .model.
std::unique_ptr<Tokenizer> open_tokenizer(const std::string& spec, const std::vector<std::string>& specials) {
    if (spec == "byte") return make_byte_tokenizer(specials);
    return load_sentencepiece(spec);
}

void run_encode(const std::string& tokenizer_spec, const std::string& input_path) {
    std::unique_ptr<Tokenizer> tokenizer = open_tokenizer(tokenizer_spec, {});
    std::ifstream in(input_path, std::ios::binary);
    check(in.good(), input_path, ": cannot open --input");
    std::string line, out;
    while (std::getline(in, line)) {
        out = "[";
        bool first = true;
        for (int64_t id : tokenizer->encode(line)) {
            if (!first) out += ',';
            out += std::to_string(id);
            first = false;
        }
        out += "]\n";
        std::fwrite(out.data(), 1, out.size(), stdout);
    }
}

void run_show(const std::string& jsonl_path, const std::string& template_name, const std::string& tokenizer_spec,
              int64_t index, const std::string& color_mode) {
    check(color_mode == "auto" || color_mode == "always" || color_mode == "never", "--color: '", color_mode,
          "' is not one of auto, always, never");
    const bool color = color_mode == "always" || (color_mode == "auto" && ::isatty(STDOUT_FILENO));
    // The byte tokenizer gets exactly the template's specials; a .model must already have them.
    std::unique_ptr<Tokenizer> tokenizer = open_tokenizer(tokenizer_spec, ChatTemplate::special_tokens(template_name));
    ChatTemplate chat(template_name, *tokenizer);
    const std::vector<Conversation> conversations = load_conversations_jsonl(jsonl_path);
    const int64_t count = static_cast<int64_t>(conversations.size());
    check(index >= -1 && index < count, "--index ", index, " is out of range: ", jsonl_path, " has ", count,
          " conversations");
    std::printf("template %s, %s tokenizer (vocab %lld, fingerprint %s)\n", template_name.c_str(),
                tokenizer->kind().c_str(), static_cast<long long>(tokenizer->vocab_size()),
                tokenizer->fingerprint().c_str());
    for (int64_t i = (index < 0 ? 0 : index); i < (index < 0 ? count : index + 1); ++i) {
        const RenderedConversation rendered = chat.render(conversations[i]);
        std::printf("\n=== conversation %lld (%s)\n%s", static_cast<long long>(i), conversations[i].source.c_str(),
                    visualize(rendered, *tokenizer, color).c_str());
    }
}

}  // namespace

void register_data_commands(CLI::App& app) {
    CLI::App* data = app.add_subcommand("data", "Inspect tokenizers and chat templates");
    data->require_subcommand(1);

    // Options live in shared_ptrs because CLI11 keeps the callbacks after this function returns.
    auto encode_tokenizer = std::make_shared<std::string>();
    auto encode_input = std::make_shared<std::string>();
    CLI::App* encode = data->add_subcommand("encode", "Print one JSON array of token ids per line of a text file");
    encode->add_option("--tokenizer", *encode_tokenizer, "SentencePiece .model file, or \"byte\"")->required();
    encode->add_option("--input", *encode_input, "Text file; each line is encoded on its own")->required();
    encode->callback([=] { run_encode(*encode_tokenizer, *encode_input); });

    struct ShowOptions {
        std::string jsonl, template_name = "chatml", tokenizer = "byte", color = "auto";
        int64_t index = -1;
    };
    auto show_options = std::make_shared<ShowOptions>();
    CLI::App* show = data->add_subcommand("show", "Render conversations and mark the supervised tokens");
    show->add_option("--jsonl", show_options->jsonl, "Conversations, one {\"messages\": [...]} per line")->required();
    show->add_option("--template", show_options->template_name, "chatml or nanochat")->capture_default_str();
    show->add_option("--tokenizer", show_options->tokenizer, "SentencePiece .model file, or \"byte\"")
        ->capture_default_str();
    show->add_option("--index", show_options->index, "Show only this conversation (0-based; default: all)");
    show->add_option("--color", show_options->color, "auto (on a terminal), always or never")->capture_default_str();
    show->callback([=] {
        run_show(show_options->jsonl, show_options->template_name, show_options->tokenizer, show_options->index,
                 show_options->color);
    });
}

}  // namespace reftrain

// tools/cmd_data.cpp — `reftrain data ...`: look at what the tokenizer, the chat templates and the packer do.
//
//   reftrain data encode --tokenizer m.model|byte --input lines.txt
//       one JSON array of ids per input line (the Python interop test compares them with
//       Python's sentencepiece). The line's "\n" is not part of the encoded text.
//   reftrain data show --jsonl convs.jsonl --template chatml|nanochat --tokenizer m.model|byte
//   reftrain data show --config configs/addition.json [--set k=v] [--count 3]
//                      [--index N] [--color auto|always|never]
//       renders conversations and prints every token, supervised ones marked (data/chat.h visualize).
//   reftrain data batches --config run.json [--set k=v ...] --steps N --out DIR
//       what `reftrain train` with the same config would feed its first N optimizer steps, without
//       training: DIR/config.json (model config, vocab resolved), DIR/init.safetensors (the seeded
//       initial weights), DIR/batches.safetensors (input_ids, targets: (N, grad_accum, B, T) I64,
//       drawn from the packer in train_step's order; lrs: (N) F64, the schedule's lr per step) and
//       DIR/run.json (the resolved run config). bench/train_loop_vs_torch.py replays them in PyTorch.
//       The schedule's total_steps defaults to train.max_steps: to match a `reftrain train` run of N
//       steps, pass --set train.max_steps=N here too.
//
// The callbacks run inside CLI11's parse(); a reftrain::Error they throw reaches main(), which prints
// it as one line and exits with status 1.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

#include "data/chat.h"
#include "data/tokenizer.h"
#include "kernels/error.h"
#include "kernels/safetensors.h"
#include "tools/commands.h"
#include "train/run_config.h"
#include "train/schedule.h"
#include "train/trainer.h"

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

// `data show --config`: the training conversations exactly as `reftrain train` renders them.
void run_show_config(const std::string& config_path, const std::vector<std::string>& sets, int64_t count,
                     const std::string& color_mode) {
    check(color_mode == "auto" || color_mode == "always" || color_mode == "never", "--color: '", color_mode,
          "' is not one of auto, always, never");
    check(count > 0, "--count must be > 0, got ", count);
    const bool color = color_mode == "always" || (color_mode == "auto" && ::isatty(STDOUT_FILENO));
    const RunConfig config = load_run_config(config_path, sets);
    const RunData data = prepare_run_data(config.data, config.train.seq_len, config.seed, std::cout);
    std::printf("tokenizer fingerprint %s, template fingerprint %s\n", data.tokenizer->fingerprint().c_str(),
                data.chat->fingerprint().c_str());
    const int64_t n = std::min<int64_t>(count, static_cast<int64_t>(data.train_docs.size()));
    for (int64_t i = 0; i < n; ++i) {
        std::printf("\n=== training conversation %lld of %zu\n%s", static_cast<long long>(i), data.train_docs.size(),
                    visualize(data.train_docs[i], *data.tokenizer, color).c_str());
    }
}

void run_batches(const std::string& config_path, const std::vector<std::string>& sets, int64_t steps,
                 const std::string& out_dir) {
    check(steps > 0, "--steps must be > 0, got ", steps);
    const RunConfig config = load_run_config(config_path, sets);
    // The Trainer builds data, tokenizer, model and packer exactly as `reftrain train` does; its log
    // goes to stderr so that stdout carries only the summary line.
    Trainer trainer(config, std::cerr);
    const int64_t k = config.train.grad_accum, B = config.train.batch_size, T = config.train.seq_len;

    std::vector<int64_t> input_ids(static_cast<size_t>(steps * k * B * T));  // (N, k, B, T)
    std::vector<int64_t> targets(input_ids.size());                         // (N, k, B, T)
    std::vector<double> lrs(static_cast<size_t>(steps));                     // (N,)
    std::vector<int64_t> micro_ids, micro_targets;
    for (int64_t step = 0; step < steps; ++step) {
        // Same calls in the same order as Trainer::train_step: k draws of B rows per optimizer step.
        for (int64_t i = 0; i < k; ++i) {
            trainer.packer().next_batch(B, micro_ids, micro_targets);
            check(static_cast<int64_t>(micro_ids.size()) == B * T && micro_targets.size() == micro_ids.size(),
                  "data batches: the packer returned ", micro_ids.size(), " ids, expected B * T = ", B * T);
            const size_t offset = static_cast<size_t>((step * k + i) * B * T);
            std::copy(micro_ids.begin(), micro_ids.end(), input_ids.begin() + static_cast<std::ptrdiff_t>(offset));
            std::copy(micro_targets.begin(), micro_targets.end(),
                      targets.begin() + static_cast<std::ptrdiff_t>(offset));
        }
        lrs[static_cast<size_t>(step)] = lr_at(config.schedule, step);
    }

    namespace fs = std::filesystem;
    const fs::path dir(out_dir);
    fs::create_directories(dir);
    trainer.model().config().save((dir / "config.json").string());
    trainer.model().save_weights((dir / "init.safetensors").string());
    save_safetensors((dir / "batches.safetensors").string(),
                     {Tensor(input_ids.data(), DType::I64, {steps, k, B, T}, "input_ids"),
                      Tensor(targets.data(), DType::I64, {steps, k, B, T}, "targets"),
                      Tensor(lrs.data(), DType::F64, {steps}, "lrs")});
    // The resolved config with the vocabulary the model was actually built with (0 = the tokenizer's).
    nlohmann::json resolved = config.resolved;
    resolved["model"]["vocab_size"] = trainer.model().config().vocab_size;
    resolved["schedule"]["total_steps"] = config.schedule.total_steps;
    const std::string text = resolved.dump(2) + "\n";
    write_file_atomically((dir / "run.json").string(), text.data(), text.size());
    std::printf("wrote %lld steps x %lld micro-batches x %lld x %lld tokens, init weights and config to %s\n",
                static_cast<long long>(steps), static_cast<long long>(k), static_cast<long long>(B),
                static_cast<long long>(T), out_dir.c_str());
}

}  // namespace

void register_data_commands(CLI::App& app) {
    CLI::App* data = app.add_subcommand("data", "Inspect tokenizers, chat templates and training batches");
    data->require_subcommand(1);

    // Options live in shared_ptrs because CLI11 keeps the callbacks after this function returns.
    auto encode_tokenizer = std::make_shared<std::string>();
    auto encode_input = std::make_shared<std::string>();
    CLI::App* encode = data->add_subcommand("encode", "Print one JSON array of token ids per line of a text file");
    encode->add_option("--tokenizer", *encode_tokenizer, "SentencePiece .model file, or \"byte\"")->required();
    encode->add_option("--input", *encode_input, "Text file; each line is encoded on its own")->required();
    encode->callback([=] { run_encode(*encode_tokenizer, *encode_input); });

    struct ShowOptions {
        std::string jsonl, config, template_name = "chatml", tokenizer = "byte", color = "auto";
        std::vector<std::string> sets;
        int64_t index = -1, count = 3;
    };
    auto show_options = std::make_shared<ShowOptions>();
    CLI::App* show = data->add_subcommand("show", "Render conversations and mark the supervised tokens");
    auto* jsonl_option =
        show->add_option("--jsonl", show_options->jsonl, "Conversations, one {\"messages\": [...]} per line");
    auto* config_option = show->add_option("--config", show_options->config,
                                           "A run config: show its training conversations as `reftrain train` renders them");
    jsonl_option->excludes(config_option);
    show->add_option("--set", show_options->sets, "with --config: override one key")->take_all();
    show->add_option("--count", show_options->count, "with --config: how many conversations (default 3)");
    show->add_option("--template", show_options->template_name, "chatml or nanochat")->capture_default_str();
    show->add_option("--tokenizer", show_options->tokenizer, "SentencePiece .model file, or \"byte\"")
        ->capture_default_str();
    show->add_option("--index", show_options->index, "Show only this conversation (0-based; default: all)");
    show->add_option("--color", show_options->color, "auto (on a terminal), always or never")->capture_default_str();
    show->callback([=] {
        if (!show_options->config.empty()) {
            run_show_config(show_options->config, show_options->sets, show_options->count, show_options->color);
            return;
        }
        check(!show_options->jsonl.empty(), "data show: give --jsonl FILE or --config RUN_CONFIG");
        run_show(show_options->jsonl, show_options->template_name, show_options->tokenizer, show_options->index,
                 show_options->color);
    });

    struct BatchesOptions {
        std::string config, out;
        std::vector<std::string> sets;
        int64_t steps = 0;
    };
    auto batches_options = std::make_shared<BatchesOptions>();
    CLI::App* batches = data->add_subcommand(
        "batches", "Write a run's initial weights, first N steps of micro-batches and lrs, without training");
    batches->add_option("--config", batches_options->config, "run config JSON (as for `reftrain train`)");
    batches->add_option("--set", batches_options->sets, "override one key, e.g. --set train.max_steps=30")
        ->take_all();
    batches->add_option("--steps", batches_options->steps, "optimizer steps to draw")->required();
    batches->add_option("--out", batches_options->out, "output directory (created)")->required();
    batches->callback([=] {
        run_batches(batches_options->config, batches_options->sets, batches_options->steps, batches_options->out);
    });
}

}  // namespace reftrain

// tools/cmd_train.cpp — `reftrain train` and `reftrain sample`: wiring only, the work is in train/.
#include <filesystem>
#include <iostream>

#include <CLI/CLI.hpp>

#include "kernels/error.h"
#include "model/generate.h"
#include "tools/commands.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace reftrain {

namespace fs = std::filesystem;

void register_train_commands(CLI::App& app) {
    // ---- train ----
    auto* train = app.add_subcommand("train", "train a chat model on a toy task or your JSONL conversations");
    auto config_path = std::make_shared<std::string>();
    auto sets = std::make_shared<std::vector<std::string>>();
    auto print_defaults = std::make_shared<bool>(false);
    train->add_option("--config", *config_path, "run config JSON (see configs/; every key has a default)");
    train->add_option("--set", *sets, "override one key, e.g. --set train.max_steps=200 --set data.task=reversal")
        ->take_all();
    train->add_flag("--print-defaults", *print_defaults, "print every key with its default value and exit");
    train->callback([=] {
        if (*print_defaults) {
            std::cout << default_run_config().dump(2) << "\n";
            return;
        }
        const RunConfig config = load_run_config(*config_path, *sets);
        std::cout << "reftrain train: resolved config (" << (config_path->empty() ? "defaults" : *config_path)
                  << (sets->empty() ? "" : " + --set") << ")\n"
                  << config.resolved.dump(2) << "\n";
        Trainer trainer(config, std::cout);
        trainer.run();
        // Stopped by SIGINT/SIGTERM: the shell's convention, 128 + the signal, so a script sees it did not finish.
        if (trainer.stopped_by_signal() != 0) std::exit(128 + trainer.stopped_by_signal());
    });

    // ---- sample ----
    auto* sample = app.add_subcommand("sample", "generate from a checkpoint with the chat template it was trained with");
    struct SampleArgs {
        std::string checkpoint, system, template_name;
        std::vector<std::string> prompts;
        double temperature = 0.0;
        int64_t top_k = 0, max_new_tokens = 64, num = 5;
        uint64_t seed = 1;
    };
    auto a = std::make_shared<SampleArgs>();
    sample->add_option("--checkpoint", a->checkpoint, "checkpoint directory (run_dir/checkpoints/step_NNNNNNN)")
        ->required();
    sample->add_option("--prompt", a->prompts, "user message(s); default: problems from the task's test split");
    sample->add_option("--system", a->system, "system message (default: the run's system prompt)");
    sample->add_option("--temperature", a->temperature, "0 = greedy (default)");
    sample->add_option("--top-k", a->top_k, "sample among the k most likely tokens (0 = all)");
    sample->add_option("--seed", a->seed, "sampling seed");
    sample->add_option("--max-new-tokens", a->max_new_tokens, "generation limit");
    sample->add_option("--num", a->num, "test problems to answer when no --prompt is given");
    sample->add_option("--template", a->template_name,
                       "chat template; must be the one the checkpoint was trained with (checked)");
    sample->callback([a] {
        const std::string dir = a->checkpoint;
        const RunConfig config = parse_saved_run_config(read_checkpoint_run_config(dir), (fs::path(dir) / "run.json").string());
        const TrainState state = read_checkpoint_state(dir);
        const fs::path sp = fs::path(dir) / "tokenizer.model";
        const std::string template_name = a->template_name.empty() ? config.data.template_name : a->template_name;
        std::unique_ptr<Tokenizer> tokenizer = fs::exists(sp) ? load_sentencepiece(sp.string())
                                                              : make_byte_tokenizer(ChatTemplate::special_tokens(template_name));
        ChatTemplate chat(template_name, *tokenizer);
        check(chat.fingerprint() == state.template_fingerprint, dir, ": this checkpoint was trained with template '",
              config.data.template_name, "' (fingerprint ", state.template_fingerprint, "); sampling with '",
              template_name, "' (fingerprint ", chat.fingerprint(),
              ") would render prompts the model never saw. Drop --template to use the trained one.");
        const ModelConfig model_config = ModelConfig::load((fs::path(dir) / "config.json").string());
        Transformer model(model_config, 1, 1);
        TrainState loaded;
        load_checkpoint(dir, model, nullptr, loaded);

        const std::string system = a->system.empty() ? config.data.system_prompt : a->system;
        SamplingConfig sampling;
        sampling.temperature = a->temperature;
        sampling.top_k = a->top_k;
        sampling.max_new_tokens = a->max_new_tokens;
        sampling.stop_ids = {chat.end_of_turn_id()};
        InferenceSession session(model, model_config.max_position_embeddings);
        Rng rng(a->seed);
        std::unique_ptr<Task> task;
        std::vector<TaskExample> problems;
        if (a->prompts.empty()) {
            check(!config.data.task.empty(), "sample: the checkpoint was trained on JSONL data; pass --prompt TEXT");
            task = make_task(config.data.task, config.data.task_options);
            problems = generate_split(*task, Split::test, a->num, a->seed + 1000, /*unique=*/true);
        } else {
            for (const std::string& p : a->prompts) problems.push_back({p, ""});
        }
        std::cout << "checkpoint " << dir << " (step " << state.step << "), template " << template_name
                  << ", temperature " << a->temperature << ", top-k " << a->top_k << ", seed " << a->seed << "\n";
        int64_t correct = 0;
        for (const TaskExample& e : problems) {
            const std::vector<int64_t> prompt = chat.render_prompt(to_conversation(e, system, false));
            const Generation g = generate(session, prompt, sampling, rng);
            std::vector<int64_t> ids = g.ids;
            if (g.stopped && !ids.empty()) ids.pop_back();  // the end-of-turn token
            const std::string response = tokenizer->decode(ids);
            std::cout << "user: " << e.prompt << "\nassistant: " << response;
            // g.ids.size(), not max_new_tokens: the context limit (max_position_embeddings) may stop it first.
            if (!g.stopped) std::cout << "   (no end-of-turn within " << g.ids.size() << " tokens)";
            if (task) {
                const bool ok = task->verify(e.prompt, response);
                correct += ok;
                std::cout << (ok ? "   [correct]" : "   [wrong, want " + e.answer + "]");
            }
            std::cout << "\n";
        }
        if (task) std::cout << correct << "/" << problems.size() << " correct\n";
    });
}

}  // namespace reftrain

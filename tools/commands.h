// tools/commands.h — the subcommand groups of the `reftrain` binary, one register_* function per
// tools/cmd_*.cpp file. main() calls each; a group adds its subcommands and their callbacks to `app`.
// Callbacks run inside app.parse() and may throw reftrain::Error; main() prints it as one line, exit 1.
#pragma once

#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

namespace reftrain {

// The end of `diff` and `diff-runs`: print the comparison's report, then leave with its exit status
// (0 same; otherwise through CLI::RuntimeError, which main()'s app.exit() turns into that status
// without printing anything more).
inline void finish_comparison(const std::string& report, int status) {
    std::fputs(report.c_str(), stdout);
    std::fflush(stdout);
    if (status != 0) throw CLI::RuntimeError(status);
}

// `reftrain data encode|show|batches`: tokenizer, chat-template and batch inspection (tools/cmd_data.cpp).
void register_data_commands(CLI::App& app);
// `reftrain train|sample`: the training loop and generation from a checkpoint (tools/cmd_train.cpp).
void register_train_commands(CLI::App& app);
// `reftrain dump` and `reftrain diff A B`: one step's named tensors, two dumps compared (tools/cmd_debug.cpp).
void register_debug_commands(CLI::App& app);
void register_diff_runs_command(CLI::App& app);  // `reftrain diff-runs A B` (tools/cmd_diff_runs.cpp)
void register_report_command(CLI::App& app);     // `reftrain report RUN_DIR` (tools/cmd_report.cpp)
// `reftrain failure list|show|run`: the catalog of runnable failures (tools/cmd_failure.cpp).
void register_failure_commands(CLI::App& app);
// `reftrain diagnose NAME|list`: init-loss, overfit-batch, grad-flow, causality, ... (tools/cmd_diagnose.cpp).
void register_diagnose_commands(CLI::App& app);
// `reftrain rl --config F` (PPO, or GRPO when the config says "algorithm": "grpo") and
// `reftrain probe list|run ENV` (tools/cmd_rl.cpp).
void register_rl_commands(CLI::App& app);
// `reftrain env list|trace`: step an environment from a given state (tools/cmd_env.cpp).
void register_env_commands(CLI::App& app);

}  // namespace reftrain

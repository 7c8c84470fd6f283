// tools/cmd_diff_runs.cpp — `reftrain diff-runs`: compare two runs' metrics.jsonl step by step and name
// the first step that differs beyond tolerance.
//
//   reftrain diff-runs A B [--fields loss,grad_norm,...] [--rtol X | --rtol FIELD=X ...] [--all]
//       A and B are run directories (their metrics.jsonl is read) or .jsonl files. Lines pair by
//       (kind, step); debug/run_diff.h defines the error measure and the default tolerances. Exit status:
//       0 every compared step within tolerance, 1 a step differs, 2 could not compare (a file missing, a
//       line that is not JSON, has no "step" or holds a non-numeric compared field), 3 insufficient
//       coverage (no shared step, or no compared field on a shared step); CLI11's own codes (>= 100) for
//       a malformed command line.
//
// As in tools/cmd_debug.cpp, the callback reports its status through CLI::RuntimeError(code), which
// main()'s app.exit() turns into that exit status without printing anything more.
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "debug/run_diff.h"
#include "kernels/error.h"
#include "tools/commands.h"

namespace reftrain {

namespace {

struct DiffRunsArgs {
    std::string path_a, path_b;
    std::vector<std::string> fields;  // empty: the defaults
    std::vector<std::string> rtols;   // "X" (every field) or "FIELD=X"
    bool all = false;
};

// "" when `text` is a tolerance: a number >= 0.
std::string tolerance_problem(const std::string& text, double* value) {
    try {
        size_t used = 0;
        *value = std::stod(text, &used);
        if (used == text.size() && *value >= 0.0) return "";
    } catch (const std::exception&) {
    }
    return "'" + text + "' is not a tolerance (a number >= 0)";
}

// Checks one --rtol value at parse time, so a typo is a command-line error (CLI11's exit code).
std::string rtol_spec_problem(const std::string& spec) {
    double value = 0.0;
    const size_t equals = spec.find('=');
    if (equals == std::string::npos) return tolerance_problem(spec, &value);
    const std::string field = spec.substr(0, equals);
    const std::string field_problem = compared_field_problem(field);
    if (!field_problem.empty()) return field_problem;
    return tolerance_problem(spec.substr(equals + 1), &value);
}

void run_diff_runs(const DiffRunsArgs& args) {
    RunDiffOptions options;
    if (!args.fields.empty()) options.fields = args.fields;
    for (const std::string& spec : args.rtols) {
        const size_t equals = spec.find('=');
        double value = 0.0;
        if (equals == std::string::npos) {
            tolerance_problem(spec, &value);
            options.rtol = value;
        } else {
            tolerance_problem(spec.substr(equals + 1), &value);
            options.field_rtol[spec.substr(0, equals)] = value;
        }
    }
    RunDiffReport report;
    try {
        report = diff_run_files(args.path_a, args.path_b, options);
    } catch (const Error& e) {
        std::fprintf(stderr, "reftrain diff-runs: could not compare: %s\n", e.what());
        throw CLI::RuntimeError(2);
    } catch (const std::exception& e) {  // a filesystem error, say: still "could not compare", never exit 1
        std::fprintf(stderr, "reftrain diff-runs: could not compare: %s\n", e.what());
        throw CLI::RuntimeError(2);
    }
    finish_comparison(format_run_diff_report(report, args.all), report.exit_status());
}

}  // namespace

void register_diff_runs_command(CLI::App& app) {
    auto args = std::make_shared<DiffRunsArgs>();
    CLI::App* cmd = app.add_subcommand(
        "diff-runs", "Compare two runs' metrics.jsonl step by step; name the first step that differs (exit 0 same, 1 "
                     "differ, 2 could not compare, 3 insufficient coverage)");
    cmd->add_option("A", args->path_a, "First run: a run directory (its metrics.jsonl) or a .jsonl file; its line "
                                       "order sets the walk order")
        ->required();
    cmd->add_option("B", args->path_b, "Second run: a run directory or a .jsonl file")->required();
    cmd->add_option("--fields", args->fields,
                    "Comma-separated fields to compare where both lines have them, replacing the default "
                    "loss,grad_norm,lr,loss_scale (e.g. --fields loss,val_loss)")
        ->delimiter(',')
        ->check(CLI::Validator([](std::string& field) { return compared_field_problem(field); }, "FIELD"));
    cmd->add_option("--rtol", args->rtols,
                    "Relative tolerance: X for every field, or FIELD=X for one (repeatable; FIELD=X wins). Default: "
                    "loss, grad_norm 1e-4; lr 1e-9; loss_scale exact; other fields exact for integers, else 1e-4")
        ->check(CLI::Validator([](std::string& spec) { return rtol_spec_problem(spec); }, "X|FIELD=X"));
    cmd->add_flag("--all", args->all, "List every compared step (default: stop listing at the first difference)");
    cmd->callback([args] { run_diff_runs(*args); });
}

}  // namespace reftrain

// tools/cmd_debug.cpp — `reftrain diff`: compare two dumps and name the first tensor that disagrees.
//
//   reftrain diff A.safetensors B.safetensors [--rtol X] [--atol Y] [--all] [--strict]
//       walks the tensors in execution order (A's "reftrain.order" metadata, else B's), prints per
//       tensor max abs and max relative error (debug/diff.h defines both), and names the first tensor
//       over tolerance. Exit status: 0 every shared tensor within tolerance, 1 a tensor differs (over
//       tolerance or another shape; with --strict also a name in one file only), 2 could not compare
//       (a file missing or not a valid safetensors file, no shared names); CLI11's own codes (> 2)
//       for a malformed command line.
//
// The callback reports "differ" and "could not compare" itself, through CLI::RuntimeError(code),
// which main()'s app.exit() turns into that exit status without printing anything more.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "debug/diff.h"
#include "kernels/error.h"
#include "tools/commands.h"

namespace reftrain {

namespace {

struct DiffArgs {
    std::string path_a, path_b;
    double rtol = -1, atol = -1;  // < 0: the per-dtype default
    bool all = false, strict = false;
};

void run_diff(const DiffArgs& args) {
    DiffOptions options;
    if (args.rtol >= 0) options.rtol = args.rtol;
    if (args.atol >= 0) options.atol = args.atol;
    options.strict = args.strict;
    DiffReport report;
    try {
        report = diff_dump_files(args.path_a, args.path_b, options);
    } catch (const Error& e) {
        std::fprintf(stderr, "reftrain diff: could not compare: %s\n", e.what());
        throw CLI::RuntimeError(2);
    }
    std::fputs(format_diff_report(report, args.all).c_str(), stdout);
    std::fflush(stdout);
    const int status = report.exit_status();
    if (status != 0) throw CLI::RuntimeError(status);
}

}  // namespace

void register_debug_commands(CLI::App& app) {
    auto args = std::make_shared<DiffArgs>();
    CLI::App* diff = app.add_subcommand(
        "diff", "Compare two dumps in execution order; name the first tensor over tolerance (exit 0 same, 1 differ, 2 "
                "could not compare)");
    diff->add_option("A", args->path_a, "First dump (.safetensors); its reftrain.order metadata sets the walk order")
        ->required();
    diff->add_option("B", args->path_b, "Second dump (.safetensors)")->required();
    diff->add_option("--rtol", args->rtol,
                     "Relative tolerance for every tensor, against max(max|a|, max|b|) (default per dtype: f64 1e-9, "
                     "f32 1e-4, f16 4e-3, bf16 3e-2)")
        ->check(CLI::NonNegativeNumber);
    diff->add_option("--atol", args->atol,
                     "Absolute tolerance for every tensor (default per dtype: f64 1e-12, f32 1e-7, f16/bf16 1e-5)")
        ->check(CLI::NonNegativeNumber);
    diff->add_flag("--all", args->all, "List every tensor (default: stop listing after the first failure)");
    diff->add_flag("--strict", args->strict, "A tensor present in only one file counts as a difference (exit 1)");
    diff->callback([args] { run_diff(*args); });
}

}  // namespace reftrain

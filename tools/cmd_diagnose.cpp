// tools/cmd_diagnose.cpp — `reftrain diagnose NAME`: wiring only, the checks are in train/diagnostics.h.
//
// Each diagnostic prints its verdict (PASS/FAIL) and the numbers behind it on stdout. Exit status: 0 on
// PASS; on FAIL the callback throws reftrain::Error("diagnose NAME: FAIL ..."), which main() prints as
// one "reftrain: error:" line on stderr and turns into exit status 1 — the same path as every other
// failure of the CLI, so scripts need only check the status.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "kernels/bugs.h"
#include "kernels/error.h"
#include "tools/commands.h"
#include "train/diagnostics.h"
#include "train/run_config.h"

namespace reftrain {

void register_diagnose_commands(CLI::App& app) {
    auto* diagnose = app.add_subcommand(
        "diagnose", "run one diagnostic on a run config's model and data: PASS/FAIL + the numbers ('list' lists them)");
    struct DiagnoseArgs {
        std::string name, config_path;
        std::vector<std::string> sets, bugs;
        DiagnoseOptions options;
    };
    auto a = std::make_shared<DiagnoseArgs>();
    diagnose->add_option("name", a->name, "diagnostic name, 'all', or 'list'")->required();
    diagnose->add_option("--config", a->config_path, "run config JSON (default: the defaults of `reftrain train`)");
    diagnose->add_option("--set", a->sets, "override one run-config key, e.g. --set model.initializer_range=1.0")
        ->take_all();
    diagnose->add_option("--rows", a->options.rows, "batch rows for the model-based checks (at least 2)");
    diagnose->add_option("--steps", a->options.steps, "overfit-batch: AdamW steps (default 150)");
    diagnose->add_option("--lr", a->options.lr, "overfit-batch (default 3e-3) / grad-flow (default schedule.lr) lr");
    diagnose->add_option("--position", a->options.positions, "causality: positions t to probe (default: a spread)");
    diagnose->add_option("--bug", a->bugs, "turn on a bug switch (kernels/bugs.h) first, e.g. --bug causal-leak");
    diagnose->callback([a] {
        if (a->name == "list") {
            for (const DiagnosticInfo& info : diagnostic_list()) {
                std::cout << "  " << info.name << std::string(20 - std::min<size_t>(19, info.name.size()), ' ')
                          << info.summary << "\n";
            }
            return;
        }
        for (const std::string& bug : a->bugs) {
            set_bug(bug, true);
            std::cout << "diagnose: bug switch '" << bug << "' is ON\n";
        }
        const RunConfig config = load_run_config(a->config_path, a->sets);
        std::vector<std::string> names;
        if (a->name == "all") {
            for (const DiagnosticInfo& info : diagnostic_list()) names.push_back(info.name);
        } else {
            names.push_back(a->name);
        }
        std::vector<std::string> failed;
        for (const std::string& name : names) {
            const DiagnosticResult result = run_diagnostic(name, config, a->options, std::cout);
            std::cout << format_result(result) << std::flush;
            if (!result.pass) failed.push_back(name);
        }
        if (!failed.empty()) {
            std::string list;
            for (const std::string& f : failed) list += (list.empty() ? "" : ", ") + f;
            fail("diagnose ", list, ": FAIL (see the verdict above)");
        }
    });
}

}  // namespace reftrain

// tools/cmd_failure.cpp — `reftrain failure list | show ID | run ID`: the runnable failures (probes/).
#include <cstdio>
#include <iomanip>
#include <iostream>

#include <CLI/CLI.hpp>

#include "kernels/error.h"
#include "probes/failures.h"
#include "tools/commands.h"

namespace reftrain {

void register_failure_commands(CLI::App& app) {
    CLI::App* failure = app.add_subcommand("failure", "The runnable failures: a bug, its symptom, its detector, its fix");
    failure->require_subcommand(1);

    failure->add_subcommand("list", "List the catalog")->callback([] {
        for (const FailureScenario& s : failure_catalog()) {
            std::cout << std::left << std::setw(26) << s.id << s.title << "\n";
        }
        std::cout << "\nrun one: reftrain failure run ID   (docs: docs/failures/ID.md)\n";
    });

    auto show_id = std::make_shared<std::string>();
    CLI::App* show = failure->add_subcommand("show", "Describe one failure without running it");
    show->add_option("id", *show_id, "failure id (see `reftrain failure list`)")->required();
    show->callback([show_id] {
        const FailureScenario& s = find_failure(*show_id);
        std::cout << s.id << ": " << s.title << "\n"
                  << "  source:   " << s.source << "\n"
                  << "  bug:      " << s.bug << "  (switch bugs." << s.id << ", kernels/bugs.h)\n"
                  << "  symptom:  " << s.symptom << "\n"
                  << "  detector: " << s.detector << "\n"
                  << "  fix:      " << s.fix << "\n"
                  << "  doc:      docs/failures/" << s.id << ".md\n";
    });

    struct RunOptions {
        std::string id, run_dir;
    };
    auto run_options = std::make_shared<RunOptions>();
    CLI::App* run = failure->add_subcommand("run", "Train with the bug on and off from the same seed and compare");
    run->add_option("id", run_options->id, "failure id (see `reftrain failure list`)")->required();
    run->add_option("--run-dir", run_options->run_dir, "where the plot and the two runs go (default runs/failures/ID)");
    run->callback([run_options] {
        const std::string dir = run_options->run_dir.empty() ? "runs/failures/" + run_options->id : run_options->run_dir;
        const FailureReport report = run_failure(run_options->id, dir, std::cout);
        // A scenario whose detector does not separate the two runs is a defect of reftrain: say so loudly.
        check(report.detector_works(), "failure ", run_options->id, ": the detector did not separate the runs");
    });
}

}  // namespace reftrain

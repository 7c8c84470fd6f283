// tools/cmd_failure.cpp — `reftrain failure list | show ID | match TEXT | run ID | run all`: the runnable
// failures (probes/).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <vector>

#include <CLI/CLI.hpp>

#include "kernels/error.h"
#include "probes/failure_match.h"
#include "probes/failures.h"
#include "tools/commands.h"
#include "train/dist.h"

namespace reftrain {

namespace {

// `failure run all`: every scenario, each report in DIR/ID/report.txt, one summary row per scenario:
// its first symptom number with and without the bug, the detector's verdict in each half, the time.
// `which` = "all": every entry this launch can run (a data-parallel one needs mpirun; it is listed as skipped
// in one process); "dist": the data-parallel entries only.
void run_all_failures(const std::string& dir, uint64_t seed, const std::string& which) {
    std::printf("%-28s %-44s %-22s %-22s %-15s %6s\n", "id", "symptom (first number)", "with bug", "without",
                "detector", "s");
    int separated = 0, total = 0;
    double seconds = 0.0;
    std::vector<std::string> broken;
    std::vector<std::string> skipped;
    for (const FailureScenario& s : failure_catalog()) {
        if (which == "dist" && s.ranks == 1) continue;
        if (s.ranks > world().size()) {
            skipped.push_back(s.id);
            continue;
        }
        const std::string sub = dir + "/" + s.id;
        std::filesystem::create_directories(sub);
        std::ofstream out(sub + "/report.txt");
        check(static_cast<bool>(out), sub, "/report.txt: cannot open for writing");
        const auto start = std::chrono::steady_clock::now();
        const FailureReport report = run_failure(s.id, sub, out, seed);
        const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        seconds += took;
        ++total;
        separated += report.detector_works();
        if (!report.detector_works()) broken.push_back(s.id);
        auto cut = [](std::string text, size_t width) {
            return text.size() > width ? text.substr(0, width - 3) + "..." : text;
        };
        const auto& with = report.with_bug.numbers;
        const auto& without = report.without_bug.numbers;
        const std::string label = with.empty() ? "" : with.front().first;
        const std::string verdict = std::string(report.with_bug.detector_fired ? "fires" : "MISSES") + "/" +
                                    (report.without_bug.detector_fired ? "FALSE ALARM" : "silent");
        std::printf("%-28s %-44s %-22s %-22s %-15s %6.1f\n", s.id.c_str(), cut(label, 44).c_str(),
                    cut(with.empty() ? "" : with.front().second, 22).c_str(),
                    cut(without.empty() ? "" : without.front().second, 22).c_str(), verdict.c_str(), took);
        std::fflush(stdout);
    }
    std::printf("%d of %d detectors fire with the bug and stay silent without it; %.1f s in all; reports in %s/ID/\n",
                separated, total, seconds, dir.c_str());
    if (!skipped.empty()) {
        std::string names;
        for (const std::string& id : skipped) names += (names.empty() ? "" : ", ") + id;
        std::printf("skipped %zu data-parallel entries (%s): they need 2 ranks, run `mpirun -np 2 build/reftrain failure "
                    "run dist`\n", skipped.size(), names.c_str());
    }
    std::string list;
    for (const std::string& id : broken) list += (list.empty() ? "" : ", ") + id;
    check(broken.empty(), "failure run all: the detector did not separate the runs of ", list);
}

// Where a scenario's switch sits in the sources: every line that reads bugs().<switch>, with the lines
// around it, so the buggy line is seen beside the correct one. Reads the source tree this binary was
// built from (REFTRAIN_SOURCE_DIR), skipping tests/.
void print_switch_sites(const std::string& id) {
    std::string field = id;
    for (char& c : field) {
        if (c == '-') c = '_';
    }
    const std::string needle = "bugs()." + field;
    const std::filesystem::path root = REFTRAIN_SOURCE_DIR;
    int found = 0;
    for (const char* dir : {"kernels", "model", "data", "train", "debug", "probes"}) {
        if (!std::filesystem::exists(root / dir)) continue;
        std::vector<std::filesystem::path> files;
        for (const auto& e : std::filesystem::recursive_directory_iterator(root / dir)) {
            const std::string ext = e.path().extension().string();
            if (e.is_regular_file() && (ext == ".cpp" || ext == ".h" || ext == ".cu")) files.push_back(e.path());
        }
        std::sort(files.begin(), files.end());
        for (const auto& path : files) {
            std::ifstream in(path);
            std::vector<std::string> lines;
            for (std::string line; std::getline(in, line);) lines.push_back(line);
            for (size_t i = 0; i < lines.size(); ++i) {
                if (lines[i].find(needle) == std::string::npos) continue;
                // The switch's declaration in kernels/bugs.h and the catalog's own reads are not sites.
                if (path.filename() == "bugs.h" || path.parent_path().filename() == "probes") continue;
                ++found;
                std::cout << "\n  " << std::filesystem::relative(path, root).string() << ":" << i + 1 << "\n";
                const size_t from = i >= 3 ? i - 3 : 0, to = std::min(lines.size(), i + 5);
                for (size_t k = from; k < to; ++k) {
                    std::cout << (k == i ? "  >> " : "     ") << std::setw(4) << k + 1 << "  " << lines[k] << "\n";
                }
            }
        }
    }
    if (found == 0) {
        std::cout << "\n  (no bugs()." << field << " in the sources under " << root.string()
                  << ": this failure is a configuration, see its page)\n";
    }
}

}  // namespace

void register_failure_commands(CLI::App& app) {
    CLI::App* failure = app.add_subcommand("failure", "The runnable failures: a bug, its symptom, its detector, its fix");
    failure->require_subcommand(1);

    failure->add_subcommand("list", "List the catalog")->callback([] {
        for (const FailureScenario& s : failure_catalog()) {
            std::cout << std::left << std::setw(28) << s.id << s.title << "\n";
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
                  << "  doc:      docs/failures/" << s.id << ".md\n"
                  << "  the switch in the source (>> marks the line that reads it; the correct line is beside it):";
        print_switch_sites(s.id);
    });

    auto query = std::make_shared<std::vector<std::string>>();
    CLI::App* match = failure->add_subcommand("match", "Find entries by a symptom in your own words");
    match->add_option("text", *query, "the symptom, e.g. \"loss is exactly 0\"")->required();
    match->callback([query] {
        std::string text;
        for (const std::string& w : *query) text += (text.empty() ? "" : " ") + w;
        const std::vector<FailureMatch> ranked =
            match_failures(text, std::string(REFTRAIN_SOURCE_DIR) + "/docs/failures/README.md");
        int shown = 0;
        for (const FailureMatch& m : ranked) {
            if (m.score <= 0.0 || shown == 5) break;
            ++shown;
            std::printf("%5.2f  %-26s %s\n", m.score, m.id.c_str(), find_failure(m.id).title.c_str());
            if (!m.best_phrase.empty()) std::printf("       closest phrase: \"%s\"\n", m.best_phrase.c_str());
        }
        if (shown == 0) {
            std::printf("no entry shares a word with \"%s\"; `reftrain failure list` shows them all\n", text.c_str());
            return;
        }
        std::printf("\nrun the best: reftrain failure run %s   (docs/failures/%s.md)\n", ranked.front().id.c_str(),
                    ranked.front().id.c_str());
    });

    struct RunOptions {
        std::string id, run_dir;
        uint64_t seed = 1;
    };
    auto run_options = std::make_shared<RunOptions>();
    CLI::App* run = failure->add_subcommand("run", "Train with the bug on and off from the same seed and compare");
    run->add_option("id", run_options->id, "failure id (see `reftrain failure list`), all, or dist (the data-parallel "
                                           "entries, under mpirun -np 2)")->required();
    run->add_option("--run-dir", run_options->run_dir,
                    "where the plot and the two runs go (default runs/failures/ID; with all, one folder per id in it)");
    run->add_option("--seed", run_options->seed,
                    "both halves' seed (default 1, the seed the docs quote); other seeds check that a detector "
                    "separates the runs on more than one draw");
    run->callback([run_options] {
        // Under mpirun every rank runs the scenarios; rank 0 alone prints.
        if (world().rank() != 0 && std::freopen("/dev/null", "w", stdout) == nullptr) fail("cannot silence rank ", world().rank());
        if (run_options->id == "all" || run_options->id == "dist") {
            run_all_failures(run_options->run_dir.empty() ? "runs/failures" : run_options->run_dir, run_options->seed,
                             run_options->id);
            return;
        }
        const std::string dir = run_options->run_dir.empty() ? "runs/failures/" + run_options->id : run_options->run_dir;
        const FailureReport report = run_failure(run_options->id, dir, std::cout, run_options->seed);
        // A scenario whose detector does not separate the two runs is a defect of reftrain: say so loudly.
        check(report.detector_works(), "failure ", run_options->id, ": the detector did not separate the runs");
    });
}

}  // namespace reftrain

// tools/cmd_rl.cpp — `reftrain rl --config F` (PPO, or GRPO when F says "algorithm": "grpo") and
// `reftrain probe list | run ENV`: wiring only, the work is in train/ppo.cpp and train/grpo.cpp.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "kernels/error.h"
#include "kernels/json_strict.h"
#include "probes/envs.h"
#include "probes/probe_runs.h"
#include "probes/sweep.h"
#include "tools/commands.h"
#include "train/grpo.h"
#include "train/ppo.h"
#include "train/run_config.h"

namespace reftrain {

namespace {

// `probe run all`: every probe environment, one summary row each (the ladder of docs/rl.md in order);
// the training logs are kept out of the table. Exits 1 naming the environments that were not solved.
void run_all_probes(const std::vector<std::string>& sets) {
    std::printf("%-17s %-11s %-16s %-16s %8s %6s\n", "env", "verdict", "worst |V - V*|", "worst |pi - pi*|", "updates",
                "s");
    std::vector<std::string> unsolved;
    double seconds = 0.0;
    int64_t total = 0;
    for (const std::string& name : env_names()) {
        if (name == "cartpole") continue;
        std::ostringstream log;
        const ProbeReport report = run_probe(probe_ppo_config(name, sets), log);
        double worst_value = 0.0, worst_prob = 0.0;
        for (const ProbeCheck& c : report.checks) {
            worst_value = std::max(worst_value, std::fabs(c.value - c.expected_value));
            for (size_t k = 0; k < c.expected_probs.size() && k < c.probs.size(); ++k) {
                worst_prob = std::max(worst_prob, std::fabs(c.probs[k] - c.expected_probs[k]));
            }
        }
        std::printf("%-17s %-11s %-16.4f %-16.4f %8zu %6.1f\n", name.c_str(), report.solved ? "SOLVED" : "NOT SOLVED",
                    worst_value, worst_prob, report.updates.size(), report.seconds);
        std::fflush(stdout);
        seconds += report.seconds;
        ++total;
        if (!report.solved) unsolved.push_back(name);
    }
    std::printf("%lld of %lld probe environments solved; %.1f s in all (tolerances: |V - V*| <= 0.05 x max(1, |V*|), "
                "|pi - pi*| <= 0.02)\n",
                static_cast<long long>(total - static_cast<int64_t>(unsolved.size())), static_cast<long long>(total), seconds);
    if (!unsolved.empty()) {
        std::string names;
        for (const std::string& n : unsolved) names += (names.empty() ? "" : ", ") + n;
        const std::string message = "probe run all: NOT SOLVED: " + names + " (reftrain probe run ENV shows the table)";
        std::fprintf(stderr, "reftrain: %s\n", message.c_str());
        throw CLI::RuntimeError(message, 1);
    }
}

}  // namespace

namespace {

// The config's "algorithm" ("ppo" when absent). Only this key is read here; the loaders do the rest.
std::string algorithm_of(const std::string& path) {
    if (path.empty()) return "ppo";
    const nlohmann::json j = read_json_file(path, "RL config");
    if (!j.is_object() || !j.contains("algorithm")) return "ppo";
    check(j.at("algorithm").is_string(), path, ": 'algorithm' must be \"ppo\" or \"grpo\", got ", j.at("algorithm").dump());
    const std::string algorithm = j.at("algorithm").get<std::string>();
    check(algorithm == "ppo" || algorithm == "grpo", path, ": 'algorithm' must be \"ppo\" or \"grpo\", got \"",
          algorithm, "\"");
    return algorithm;
}

int run_ppo_command(const std::string& path, const std::vector<std::string>& sets, std::ostream& out) {
    const PpoConfig config = load_ppo_config(path, sets);
    out << "reftrain rl: PPO, resolved config (" << (path.empty() ? "defaults" : path)
        << (sets.empty() ? "" : " + --set") << ")\n"
        << to_json(config).dump(2) << "\n";
    PpoTrainer trainer(config, out);
    const std::vector<PpoUpdateMetrics> updates = trainer.run();
    const std::vector<double>& returns = trainer.episode_returns();
    const PpoUpdateMetrics& last = updates.back();
    char line[256];
    std::snprintf(line, sizeof line,
                  "done: %lld env steps, %zu episodes, mean return of the last %zu: %.2f, wall time %.1f s\n",
                  (long long)last.global_step, returns.size(), std::min<size_t>(100, returns.size()),
                  last.mean_return_last_100, last.seconds);
    out << line;
    return 0;
}

}  // namespace

void register_rl_commands(CLI::App& app) {
    // ---- rl ----
    auto* rl = app.add_subcommand("rl", "reinforcement learning: PPO on an environment, or GRPO on the chat model");
    auto config_path = std::make_shared<std::string>();
    auto sets = std::make_shared<std::vector<std::string>>();
    auto print_defaults = std::make_shared<bool>(false);
    rl->add_option("--config", *config_path,
                   "RL config JSON (configs/cartpole.json); \"algorithm\": \"grpo\" selects GRPO, else PPO");
    rl->add_option("--set", *sets, "override one key, e.g. --set seed=2 --set total_timesteps=100000")->take_all();
    rl->add_flag("--print-defaults", *print_defaults, "print every PPO key with its default value and exit");
    rl->callback([=] {
        if (*print_defaults) {
            std::cout << to_json(PpoConfig{}).dump(2) << "\n";
            return;
        }
        const int code = algorithm_of(*config_path) == "grpo" ? run_grpo_command(*config_path, *sets, std::cout)
                                                               : run_ppo_command(*config_path, *sets, std::cout);
        if (code != 0) throw CLI::RuntimeError("rl: the run failed (exit code " + std::to_string(code) + ")", code);
    });

    // ---- sweep ----
    auto sweep = app.add_subcommand(
        "sweep", "paired seed sweep: does PPO config B differ from A by more than seed noise? (t-test over seeds)");
    auto so = std::make_shared<SweepOptions>();
    sweep->add_option("--config", so->config_path, "PPO config JSON (configs/cartpole.json)");
    sweep->add_option("--set", so->sets, "a key for A and B, e.g. --set total_timesteps=100000")->take_all();
    sweep->add_option("--b", so->b_sets, "the change under test, B only, e.g. --b norm_adv=false")->take_all();
    sweep->add_option("--seeds", so->seeds, "seeds 1..N, each run for A and for B (default 8)");
    sweep->add_option("--b-seed-offset", so->b_seed_offset,
                      "B runs on seed + offset: with no --b, a null control whose difference is seed noise alone");
    sweep->add_option("--level", so->level, "confidence level of the verdict, 0.95 or 0.99 (default 0.99)");
    sweep->add_option("--run-dir", so->run_dir, "write each run's metrics under this directory (default: nothing)");
    sweep->callback([so] {
        std::cout << "A: " << (so->config_path.empty() ? "PPO defaults" : so->config_path);
        for (const std::string& s : so->sets) std::cout << " " << s;
        std::cout << "\nB: A";
        for (const std::string& s : so->b_sets) std::cout << " + " << s;
        if (so->b_seed_offset > 0) std::cout << " on seed + " << so->b_seed_offset;
        std::cout << "\nmetric: mean return of the last 100 episodes of each run\n";
        const SweepResult r = run_ppo_sweep(*so, std::cout);
        std::cout << r.verdict() << "\n";
        std::printf("%lld runs in %.1f s\n", static_cast<long long>(2 * so->seeds), r.seconds);
    });

    // ---- probe ----
    auto* probe =
        app.add_subcommand("probe", "Andy Jones' probe environments: train PPO, compare V and pi with the truth");
    probe->require_subcommand(1);
    probe->add_subcommand("list", "list the probe environments and their correct answers")->callback([] {
        for (const std::string& name : env_names()) {
            if (name == "cartpole") continue;
            const PpoConfig config = probe_ppo_config(name, {});
            std::cout << std::left << std::setw(17) << name << std::right;
            for (const ProbeCase& c : probe_cases(name, config.gamma)) {
                std::cout << " V(" << c.obs[0] << ")=" << c.value;
                if (!c.action_probs.empty()) {
                    std::cout << " pi(.|" << c.obs[0] << ")=(";
                    for (size_t a = 0; a < c.action_probs.size(); ++a) std::cout << (a ? "," : "") << c.action_probs[a];
                    std::cout << ")";
                }
            }
            std::cout << "   (gamma " << config.gamma << ")\n";
        }
        std::cout << "\nrun one: reftrain probe run probe4   (docs/rl.md; probes/envs.h describes each)\n";
    });
    struct ProbeArgs {
        std::string env;
        std::vector<std::string> sets;
        int64_t seed = -1;
    };
    auto a = std::make_shared<ProbeArgs>();
    auto* run = probe->add_subcommand("run", "train PPO on one probe environment (or all) and check V and pi");
    run->add_option("env", a->env, "probe environment (see `reftrain probe list`), or all")->required();
    run->add_option("--set", a->sets, "override one PPO key, e.g. --set bugs.advantage_sign=true")->take_all();
    run->add_option("--seed", a->seed, "seed (default 1)");
    run->callback([a] {
        std::vector<std::string> sets = a->sets;
        if (a->seed >= 0) sets.push_back("seed=" + std::to_string(a->seed));
        if (a->env == "all") {
            run_all_probes(sets);
            return;
        }
        const PpoConfig config = probe_ppo_config(a->env, sets);
        std::cout << "reftrain probe run " << a->env << ": " << config.num_envs << " copies x " << config.num_steps
                  << " steps, " << config.total_timesteps << " env steps, gamma " << config.gamma << ", seed "
                  << config.seed << "\n";
        const ProbeReport report = run_probe(config, std::cout);
        print_probe_report(report, std::cout);
        if (!report.solved) {
            throw CLI::RuntimeError("probe " + a->env + ": NOT SOLVED (the table above shows where)", 1);
        }
    });
}

}  // namespace reftrain

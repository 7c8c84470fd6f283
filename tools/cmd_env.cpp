// tools/cmd_env.cpp — `reftrain env list | trace`: the RL environments, one step at a time.
//
// `env trace` runs a one-copy VecEnv (so the time limit and the termination/truncation rule are the
// ones training sees), optionally puts CartPole into a given state, applies the given actions and
// prints one JSON line per step. tests/python/test_cartpole_gymnasium.py drives Gymnasium with the same
// states and actions and compares. Numbers are read with strtod (CLI11 goes through long double, which
// can round a decimal twice) and printed with %.17g, so a double survives the round trip bit for bit.
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "kernels/error.h"
#include "probes/envs.h"
#include "tools/commands.h"

namespace reftrain {
namespace {

std::vector<std::string> split_on_commas(const std::string& text) {
    std::vector<std::string> pieces;
    size_t start = 0;
    while (true) {
        const size_t comma = text.find(',', start);
        pieces.push_back(text.substr(start, comma == std::string::npos ? comma : comma - start));
        if (comma == std::string::npos) return pieces;
        start = comma + 1;
    }
}

double parse_double(const std::string& text, const char* option) {
    const char* begin = text.c_str();
    char* end = nullptr;
    errno = 0;
    const double value = std::strtod(begin, &end);
    check(!text.empty() && end == begin + text.size() && errno == 0 && std::isfinite(value), "env trace: ",
          option, ": '", text, "' is not a finite number");
    return value;
}

int64_t parse_action(const std::string& text) {
    const char* begin = text.c_str();
    char* end = nullptr;
    errno = 0;
    const long long value = std::strtoll(begin, &end, 10);
    check(!text.empty() && end == begin + text.size() && errno == 0, "env trace: --actions: '", text,
          "' is not an integer");
    return value;
}

std::string format_double(double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.17g", value);
    return buffer;
}

std::string format_obs(const double* obs, int64_t dim) {
    std::string out = "[";
    for (int64_t j = 0; j < dim; ++j) out += (j ? ", " : "") + format_double(obs[j]);
    return out + "]";
}

struct TraceOptions {
    std::string env = "cartpole";
    std::string state;
    std::string actions;
    uint64_t seed = 0;
    int64_t max_episode_steps = -1;
};

void run_trace(const TraceOptions& options) {
    VecEnv venv(options.env, 1, options.seed, options.max_episode_steps);
    const int64_t dim = venv.spec().obs_dim;
    std::vector<double> start = venv.reset();
    if (!options.state.empty()) {
        auto* cartpole = dynamic_cast<CartPole*>(&venv.env(0));
        check(cartpole != nullptr, "env trace: --state is for cartpole only, not ", options.env);
        const std::vector<std::string> pieces = split_on_commas(options.state);
        check(pieces.size() == 4, "env trace: --state wants 4 numbers (x,x_dot,theta,theta_dot), got ",
              pieces.size());
        double state[4];
        for (int i = 0; i < 4; ++i) state[i] = parse_double(pieces[i], "--state");
        cartpole->set_state(state);
        start.assign(state, state + 4);
    }
    std::vector<int64_t> actions;
    if (!options.actions.empty()) {
        for (const std::string& piece : split_on_commas(options.actions)) actions.push_back(parse_action(piece));
    }

    std::cout << "{\"step\": 0, \"obs\": " << format_obs(start.data(), dim) << "}\n";
    for (size_t t = 0; t < actions.size(); ++t) {
        venv.step({actions[t]});
        // final_obs: the last observation of the episode when it ended, the auto-reset one is in obs.
        std::cout << "{\"step\": " << t + 1 << ", \"obs\": " << format_obs(venv.final_obs().data(), dim)
                  << ", \"reward\": " << format_double(venv.reward()[0])
                  << ", \"terminated\": " << (venv.terminated()[0] ? "true" : "false")
                  << ", \"truncated\": " << (venv.truncated()[0] ? "true" : "false") << "}\n";
        if (venv.terminated()[0] || venv.truncated()[0]) break;
    }
}

}  // namespace

void register_env_commands(CLI::App& app) {
    CLI::App* env = app.add_subcommand("env", "The RL environments: list them, or step one by hand");
    env->require_subcommand(1);

    env->add_subcommand("list", "List the environments with their sizes and time limits")->callback([] {
        std::cout << std::left << std::setw(18) << "name" << std::setw(10) << "obs_dim" << std::setw(10)
                  << "actions" << "time limit\n";
        for (const std::string& name : env_names()) {
            const EnvSpec spec = make_env(name)->spec();
            std::cout << std::left << std::setw(18) << name << std::setw(10) << spec.obs_dim << std::setw(10)
                      << spec.num_actions
                      << (spec.max_episode_steps > 0 ? std::to_string(spec.max_episode_steps) : "none") << "\n";
        }
        std::cout << "\ncorrect answers and conventions: docs/envs.md\n";
    });

    auto options = std::make_shared<TraceOptions>();
    CLI::App* trace = env->add_subcommand(
        "trace", "Step one environment through given actions; one JSON line per step (line 0: the start)");
    trace->add_option("--env", options->env, "environment (see `reftrain env list`)")->capture_default_str();
    trace->add_option("--state", options->state, "cartpole only: start state x,x_dot,theta,theta_dot (else reset from --seed)");
    trace->add_option("--actions", options->actions, "comma-separated actions, e.g. 0,1,1,0; stops when the episode ends");
    trace->add_option("--seed", options->seed, "seed of the reset (stream env.0, as copy 0 of a VecEnv)")->capture_default_str();
    trace->add_option("--max-episode-steps", options->max_episode_steps,
                      "time limit: -1 keeps the environment's own, 0 disables it")->capture_default_str();
    trace->callback([options] { run_trace(*options); });
}

}  // namespace reftrain

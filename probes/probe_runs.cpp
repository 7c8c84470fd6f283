// probes/probe_runs.cpp — PPO trained on a probe environment and checked against the answers
// (probes/probe_runs.h).
#include "probes/probe_runs.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <ostream>
#include <sstream>

#include "kernels/error.h"
#include "probes/envs.h"

namespace reftrain {

PpoConfig probe_ppo_config(const std::string& env, const std::vector<std::string>& sets) {
    PpoConfig c;
    c.env = env;
    // Small and fast: 8 copies x 16 steps, two minibatches, a high constant LR, no entropy bonus (an
    // entropy bonus would hold the policy away from the deterministic answer the probe checks), no
    // value clipping (it limits V's move per update to clip_coef, slow for V = 10).
    c.num_envs = 8;
    c.num_steps = 16;
    c.num_minibatches = 2;
    c.update_epochs = 4;
    c.learning_rate = 2.5e-3;
    c.anneal_lr = false;
    c.ent_coef = 0.0;
    c.clip_vloss = false;
    c.hidden = {64, 64};
    c.threads = 1;
    c.log_every = 0;
    c.gamma = 0.9;  // probe3 and probe-timelimit: V(0) = 0.9 and 1 / (1 - 0.9) = 10
    c.total_timesteps = 128 * 60;
    if (env == "probe3") c.total_timesteps = 128 * 100;
    if (env == "probe-timelimit") c.total_timesteps = 128 * 150;
    if (env == "probe4" || env == "probe5") c.total_timesteps = 128 * 100;
    if (env == "bandit") c.total_timesteps = 128 * 100;
    return apply_ppo_sets(c, sets, concat("the probe config of ", env));
}

ProbeReport run_probe(const PpoConfig& config, std::ostream& log,
                      const std::function<void(PpoTrainer&, const PpoUpdateMetrics&)>& after_update) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<ProbeCase> cases = probe_cases(config.env, config.gamma);
    ProbeReport report;
    report.env = config.env;
    double largest = 1.0;
    for (const ProbeCase& c : cases) largest = std::max(largest, std::fabs(c.value));
    report.value_tolerance = 0.05 * largest;
    report.prob_tolerance = 0.02;
    PpoTrainer trainer(config, log);
    for (int64_t u = 0; u < trainer.num_updates(); ++u) {
        report.updates.push_back(trainer.update());
        if (after_update) after_update(trainer, report.updates.back());
    }
    report.solved = true;
    for (const ProbeCase& c : cases) {
        ProbeCheck check;
        check.obs = c.obs;
        check.value = trainer.value(c.obs);
        check.expected_value = c.value;
        check.probs = trainer.action_probs(c.obs);
        check.expected_probs = c.action_probs;
        check.ok = std::fabs(check.value - check.expected_value) <= report.value_tolerance;
        for (size_t a = 0; a < check.expected_probs.size() && a < check.probs.size(); ++a) {
            check.ok = check.ok && std::fabs(check.probs[a] - check.expected_probs[a]) <= report.prob_tolerance;
        }
        report.solved = report.solved && check.ok;
        report.checks.push_back(std::move(check));
    }
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
}

void print_probe_report(const ProbeReport& report, std::ostream& out) {
    auto list = [](const std::vector<double>& v) {
        std::ostringstream s;
        s << std::fixed << std::setprecision(3) << "(";
        for (size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
        s << ")";
        return s.str();
    };
    out << "probe " << report.env << ": " << report.updates.size() << " updates in " << std::fixed
        << std::setprecision(2) << report.seconds << " s\n";
    out << "  " << std::left << std::setw(14) << "observation" << std::setw(10) << "V" << std::setw(10) << "V*"
        << std::setw(36) << "pi" << std::setw(36) << "pi*" << "ok\n";
    for (const ProbeCheck& c : report.checks) {
        std::ostringstream v, ve;
        v << std::fixed << std::setprecision(3) << c.value;
        ve << std::fixed << std::setprecision(3) << c.expected_value;
        out << "  " << std::setw(14) << list(c.obs) << std::setw(10) << v.str() << std::setw(10) << ve.str()
            << std::setw(36) << list(c.probs) << std::setw(36)
            << (c.expected_probs.empty() ? std::string("(any)") : list(c.expected_probs)) << (c.ok ? "yes" : "NO")
            << "\n";
    }
    out << std::right;
    out << "tolerances: |V - V*| <= " << std::setprecision(3) << report.value_tolerance
        << ", |pi(a) - pi*(a)| <= " << report.prob_tolerance << "\n";
    out.unsetf(std::ios::floatfield);
    out << "verdict: " << (report.solved ? "SOLVED" : "NOT SOLVED") << "\n";
}

}  // namespace reftrain

// probes/envs.cpp — the probe environments, the bandit, CartPole, and the vectorised runner.
//
// What is not obvious:
// - CartPole reproduces gymnasium/envs/classic_control/cartpole.py (v1.x) operation for operation:
//   the same constants computed the same way (total_mass = masspole + masscart, theta threshold
//   12 * 2 * pi / 360), the same association order in every product, and no fused multiply-add.
//   GCC contracts a*b+c into one rounding under -march=native even with -std=c++20; the result
//   differs from Gymnasium's in the last bit, which CartPole's instability then grows, so the pragma
//   below turns contraction off for this file (tests/python/test_cartpole_gymnasium.py notices).
// - Gymnasium returns float32 copies of its fp64 state; we return the fp64 state itself, so
//   float32(our obs) is what the comparison holds against theirs (docs/envs.md).
// - Every environment writes an observation on every step, the terminal one included, because
//   VecEnv reports it as final_obs before it resets the copy.
// - Stepping a CartPole that already terminated is an error here (Gymnasium warns and pays 0): no
//   correct caller does it, and VecEnv resets a copy in the same step it ends.
#include "probes/envs.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <utility>

#include "kernels/error.h"
#include "kernels/json_strict.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace reftrain {
namespace {

void check_action(const EnvSpec& spec, int64_t action) {
    check(action >= 0 && action < spec.num_actions, "env ", spec.name, ": action ", action,
          " is out of range (", spec.name, " has ", spec.num_actions, " action",
          spec.num_actions == 1 ? "" : "s", ", 0..", spec.num_actions - 1, ")");
}

EnvSpec make_spec(const char* name, int64_t obs_dim, int64_t num_actions, int64_t max_episode_steps) {
    EnvSpec spec;
    spec.name = name;
    spec.obs_dim = obs_dim;
    spec.num_actions = num_actions;
    spec.max_episode_steps = max_episode_steps;
    return spec;
}

// The probe environments (Andy Jones): one observation x, a reward that answers one question, and an
// end. What differs between them is a row of the table in registry() below.
struct ProbeRule {
    const char* name;
    int64_t num_actions = 1;
    int64_t max_episode_steps = 0;  // VecEnv's time limit (0 = none)
    int64_t steps = 1;              // steps to the end of an episode; 0 = never (only a time limit stops it)
    bool random_sign = false;       // x = +-1 with equal probability at reset; else x = 0
    bool two_states = false;        // x = 1 once a step is taken (probe3: 0, then 1)
    // The reward of `action` at observation x, on step `step` (1-based) of the episode.
    double (*reward)(double x, int64_t action, int64_t step, Rng& rng) = nullptr;
};

class ProbeEnv : public Env {
public:
    explicit ProbeEnv(const ProbeRule& rule)
        : rule_(rule), spec_(make_spec(rule.name, 1, rule.num_actions, rule.max_episode_steps)) {}
    const EnvSpec& spec() const override { return spec_; }
    void reset(Rng& rng, double* obs) override {
        step_ = 0;
        x_ = rule_.random_sign ? (rng.uniform() < 0.5 ? -1.0 : 1.0) : 0.0;
        obs[0] = x_;
    }
    double step(int64_t action, Rng& rng, double* obs, bool& terminated) override {
        check_action(spec_, action);
        check(rule_.steps == 0 || step_ < rule_.steps, "env ", rule_.name,
              ": step after the episode ended; reset first");
        const double reward = rule_.reward(x_, action, ++step_, rng);
        if (rule_.two_states) x_ = 1.0;
        obs[0] = x_;
        terminated = rule_.steps > 0 && step_ == rule_.steps;
        return reward;
    }

private:
    ProbeRule rule_;
    EnvSpec spec_;
    int64_t step_ = 0;
    double x_ = 0.0;
};

// Each row: what the probe tests, then its rule. The answers (V and pi) are in probe_cases().
const std::vector<ProbeRule>& probe_rules() {
    static const std::vector<ProbeRule> rules = {
        // probe1: one action, x = 0, +1 then the end. The value network's fit of a constant.
        {.name = "probe1", .reward = [](double, int64_t, int64_t, Rng&) { return 1.0; }},
        // probe2: x = +-1 at random, reward x, one step. The value depends on the observation (backprop
        // through the value network's input).
        {.name = "probe2", .random_sign = true, .reward = [](double x, int64_t, int64_t, Rng&) { return x; }},
        // probe3: x = 0, then 1; reward 0, then +1. Discounting: V(0) = gamma.
        {.name = "probe3", .steps = 2, .two_states = true,
         .reward = [](double, int64_t, int64_t step, Rng&) { return step == 2 ? 1.0 : 0.0; }},
        // probe4: two actions, x = 0, +1 for action 1 and -1 for action 0. The policy gradient.
        {.name = "probe4", .num_actions = 2,
         .reward = [](double, int64_t action, int64_t, Rng&) { return action == 1 ? 1.0 : -1.0; }},
        // probe5: x = +-1, +1 for the action that matches it (1 for +1, 0 for -1), else -1. The policy
        // and the value read the observation together.
        {.name = "probe5", .num_actions = 2, .random_sign = true,
         .reward = [](double x, int64_t action, int64_t, Rng&) { return action == (x > 0 ? 1 : 0) ? 1.0 : -1.0; }},
        // probe-timelimit: x = 0, +1 forever; only VecEnv's limit of 10 steps stops it. A learner that
        // treats the truncation as a termination learns V(0) near 10 instead of 1 / (1 - gamma).
        {.name = "probe-timelimit", .max_episode_steps = 10, .steps = 0,
         .reward = [](double, int64_t, int64_t, Rng&) { return 1.0; }},
        // bandit: five arms, one step, arm k pays k / 4 plus N(0, 0.1^2) noise. Exploration and the
        // policy gradient under noisy rewards; the best arm is 4 (mean 1.0).
        {.name = "bandit", .num_actions = 5,
         .reward = [](double, int64_t action, int64_t, Rng& rng) {
             return static_cast<double>(action) / 4.0 + 0.1 * rng.normal();
         }},
    };
    return rules;
}

// Gymnasium's constants, computed as cartpole.py computes them.
constexpr double kGravity = 9.8;
constexpr double kMassCart = 1.0;
constexpr double kMassPole = 0.1;
constexpr double kTotalMass = kMassPole + kMassCart;
constexpr double kLength = 0.5;  // half the pole's length
constexpr double kPoleMassLength = kMassPole * kLength;
constexpr double kForceMag = 10.0;
constexpr double kTau = 0.02;  // seconds per step
constexpr double kPi = 3.141592653589793;  // math.pi
constexpr double kThetaThresholdRadians = 12 * 2 * kPi / 360;
constexpr double kXThreshold = 2.4;

struct Registration {
    const char* name;
    std::function<std::unique_ptr<Env>()> make;
};

const std::vector<Registration>& registry() {
    static const std::vector<Registration> entries = [] {
        std::vector<Registration> e;
        for (const ProbeRule& rule : probe_rules()) {
            e.push_back({rule.name, [&rule] { return std::make_unique<ProbeEnv>(rule); }});
        }
        e.push_back({"cartpole", [] { return std::make_unique<CartPole>(); }});
        return e;
    }();
    return entries;
}

[[noreturn]] void fail_unknown_env(const std::string& name) {
    const std::vector<std::string> names = env_names();
    std::string listed;
    for (const std::string& n : names) listed += (listed.empty() ? "" : ", ") + n;
    const std::string closest = closest_name(name, names);
    fail("unknown environment '", name, "'",
         closest.empty() ? std::string() : " (did you mean '" + closest + "'?)", "; known: ", listed);
}

}  // namespace

std::vector<std::string> env_names() {
    std::vector<std::string> names;
    for (const Registration& r : registry()) names.push_back(r.name);
    return names;
}

std::unique_ptr<Env> make_env(const std::string& name) {
    for (const Registration& r : registry()) {
        if (name == r.name) return r.make();
    }
    fail_unknown_env(name);
}

// ---- CartPole -------------------------------------------------------------------------------------

CartPole::CartPole() : spec_(make_spec("cartpole", 4, 2, 500)) {}

void CartPole::reset(Rng& rng, double* obs) {
    for (int i = 0; i < 4; ++i) state_[i] = -0.05 + 0.1 * rng.uniform();  // uniform in [-0.05, 0.05)
    terminated_ = false;
    for (int i = 0; i < 4; ++i) obs[i] = state_[i];
}

void CartPole::set_state(const double state[4]) {
    for (int i = 0; i < 4; ++i) state_[i] = state[i];
    terminated_ = false;
}

// Barto, Sutton & Anderson (1983) as Gymnasium writes it (the frictionless form of Florian 2007):
//   temp       = (F + m_p l theta_dot^2 sin theta) / (m_c + m_p)
//   theta_acc  = (g sin theta - cos theta * temp) / (l (4/3 - m_p cos^2 theta / (m_c + m_p)))
//   x_acc      = temp - m_p l theta_acc cos theta / (m_c + m_p)
// then one explicit Euler step of length tau, positions first from the old velocities.
double CartPole::step(int64_t action, Rng& rng, double* obs, bool& terminated) {
    check_action(spec_, action);
    check(!terminated_, "env cartpole: step after termination; reset (or set_state) first");
    double x = state_[0], x_dot = state_[1], theta = state_[2], theta_dot = state_[3];
    const double force = action == 1 ? kForceMag : -kForceMag;
    const double costheta = std::cos(theta);
    const double sintheta = std::sin(theta);

    const double temp = (force + kPoleMassLength * (theta_dot * theta_dot) * sintheta) / kTotalMass;
    const double thetaacc = (kGravity * sintheta - costheta * temp) /
                            (kLength * (4.0 / 3.0 - kMassPole * (costheta * costheta) / kTotalMass));
    const double xacc = temp - kPoleMassLength * thetaacc * costheta / kTotalMass;

    x = x + kTau * x_dot;
    x_dot = x_dot + kTau * xacc;
    theta = theta + kTau * theta_dot;
    theta_dot = theta_dot + kTau * thetaacc;
    state_[0] = x;
    state_[1] = x_dot;
    state_[2] = theta;
    state_[3] = theta_dot;

    terminated = x < -kXThreshold || x > kXThreshold || theta < -kThetaThresholdRadians ||
                 theta > kThetaThresholdRadians;
    terminated_ = terminated;
    for (int i = 0; i < 4; ++i) obs[i] = state_[i];
    return 1.0;  // every step, the terminal one included (sutton_barto_reward off, as by default)
}

// ---- VecEnv ---------------------------------------------------------------------------------------

VecEnv::VecEnv(const std::string& name, int64_t num_envs, uint64_t seed, int64_t max_episode_steps)
    : N_(num_envs) {
    check(num_envs >= 1, "VecEnv(", name, "): num_envs must be at least 1, got ", num_envs);
    for (int64_t i = 0; i < N_; ++i) {
        envs_.push_back(make_env(name));
        rngs_.push_back(Rng::for_name(seed, "env." + std::to_string(i)));
    }
    spec_ = envs_[0]->spec();
    if (max_episode_steps >= 0) spec_.max_episode_steps = max_episode_steps;
    const size_t n = static_cast<size_t>(N_), d = static_cast<size_t>(spec_.obs_dim);
    obs_.assign(n * d, 0.0);
    final_obs_.assign(n * d, 0.0);
    reward_.assign(n, 0.0);
    terminated_.assign(n, 0);
    truncated_.assign(n, 0);
    episode_steps_.assign(n, 0);
    episode_return_.assign(n, 0.0);
}

const std::vector<double>& VecEnv::reset() {
    const int64_t d = spec_.obs_dim;
    for (int64_t i = 0; i < N_; ++i) envs_[i]->reset(rngs_[i], &obs_[i * d]);
    final_obs_ = obs_;
    std::fill(reward_.begin(), reward_.end(), 0.0);
    std::fill(terminated_.begin(), terminated_.end(), 0);
    std::fill(truncated_.begin(), truncated_.end(), 0);
    std::fill(episode_steps_.begin(), episode_steps_.end(), 0);
    std::fill(episode_return_.begin(), episode_return_.end(), 0.0);
    finished_.clear();
    has_reset_ = true;
    return obs_;
}

void VecEnv::step(const std::vector<int64_t>& actions) {
    check(has_reset_, "VecEnv(", spec_.name, "): step() before reset()");
    check(static_cast<int64_t>(actions.size()) == N_, "VecEnv(", spec_.name, "): step() got ",
          actions.size(), " actions for ", N_, " environments");
    const int64_t d = spec_.obs_dim;
    const int64_t limit = spec_.max_episode_steps;
    finished_.clear();
    for (int64_t i = 0; i < N_; ++i) {
        double* obs = &obs_[i * d];
        bool terminated = false;
        const double reward = envs_[i]->step(actions[i], rngs_[i], obs, terminated);
        episode_steps_[i] += 1;
        episode_return_[i] += reward;
        // A terminal step that is also the limit step counts as terminated: the value after it is 0.
        const bool truncated = !terminated && limit > 0 && episode_steps_[i] >= limit;
        reward_[i] = reward;
        terminated_[i] = terminated;
        truncated_[i] = truncated;
        std::copy(obs, obs + d, &final_obs_[i * d]);
        if (terminated || truncated) {
            finished_.push_back(EpisodeRecord{i, episode_return_[i], episode_steps_[i], truncated});
            envs_[i]->reset(rngs_[i], obs);
            episode_steps_[i] = 0;
            episode_return_[i] = 0.0;
        }
    }
    total_steps_ += N_;
}

// ---- the correct answers --------------------------------------------------------------------------

std::vector<ProbeCase> probe_cases(const std::string& env, double gamma) {
    check(gamma >= 0.0 && gamma <= 1.0, "probe_cases(", env, "): gamma must be in [0, 1], got ", gamma);
    if (env == "probe1") return {{{0.0}, 1.0, {}}};
    if (env == "probe2") return {{{1.0}, 1.0, {}}, {{-1.0}, -1.0, {}}};
    if (env == "probe3") return {{{0.0}, gamma, {}}, {{1.0}, 1.0, {}}};
    if (env == "probe4") return {{{0.0}, 1.0, {0.0, 1.0}}};
    if (env == "probe5") return {{{1.0}, 1.0, {0.0, 1.0}}, {{-1.0}, 1.0, {1.0, 0.0}}};
    if (env == "probe-timelimit") {
        check(gamma < 1.0, "probe_cases(probe-timelimit): gamma must be below 1 (the value is 1 / (1 - gamma)), got ", gamma);
        return {{{0.0}, 1.0 / (1.0 - gamma), {}}};
    }
    if (env == "bandit") return {{{0.0}, 1.0, {0.0, 0.0, 0.0, 0.0, 1.0}}};
    if (env == "cartpole") fail("probe_cases(cartpole): CartPole has no closed-form value or policy");
    fail_unknown_env(env);
}

}  // namespace reftrain

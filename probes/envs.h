// probes/envs.h — small vectorised environments for reinforcement learning, and the probe
// environments that isolate one part of an RL agent at a time.
//
// The probe environments are Andy Jones' ("Debugging RL, Without the Agonizing Pain"): each is so
// simple that its correct value function and policy can be written down, so an agent that gets them
// wrong has a bug in the part the environment exercises, and nothing else to blame.
//
//   name             actions  observation              length   reward                     correct answer
//   probe1           1        0                        1 step   +1                         V(0) = 1
//   probe2           1        +1 or -1 (random)        1 step   = observation              V(o) = o
//   probe3           1        0, then 1                2 steps  0, then +1                 V(0) = gamma, V(1) = 1
//   probe4           2        0                        1 step   +1 for action 1, -1 for 0  pi(1) = 1, V = 1
//   probe5           2        +1 or -1 (random)        1 step   +1 if action == (o > 0),   pi(o > 0 ? 1 : 0 | o) = 1,
//                                                               else -1                    V(o) = 1
//   probe-timelimit  1        0                        never ends; truncated at 10   +1   V(0) = 1 / (1 - gamma)
//   bandit           5        0                        1 step   arm k pays N(k / 4, 0.1^2)  pi(4) = 1
//   cartpole         2        (x, x_dot, theta, theta_dot)      Gymnasium CartPole-v1, truncated at 500
//
// probe-timelimit is ours: a step limit that is not part of the task (the observation does not show
// the time), so the correct value bootstraps through the truncation. It isolates
// truncation-as-termination the way probe3 isolates discount-across-reset.
//
// CartPole follows Gymnasium's CartPole-v1 (classic_control/cartpole.py) exactly: Euler integration
// with tau = 0.02, gravity 9.8, cart mass 1.0, pole mass 0.1, half-length 0.5, force 10, terminated
// when |x| > 2.4 or |theta| > 12 degrees (0.2095 rad), reward +1 on every step including the last,
// start state uniform in [-0.05, 0.05]^4, physics in fp64, and the 500-step truncation of
// gymnasium.make("CartPole-v1"). tests/python/test_cartpole_gymnasium.py checks it step for step.
//
// Terminations and truncations are kept apart everywhere: `terminated` means the MDP ended (the value
// after it is 0), `truncated` means we stopped watching (the value after it is V(final observation),
// which the learner must bootstrap). An episode may be both only if the terminal step is also the
// limit step; then it counts as terminated.
//
// VecEnv runs N copies with automatic reset in the same step (the old gym convention cleanrl uses):
// when copy i ends, step() returns the first observation of its next episode in `obs` and keeps the
// last observation of the finished one in `final_obs`. Copy i draws from its own Rng stream
// Rng::for_name(seed, "env.<i>"), so results do not depend on N for the copies they share.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/random.h"

namespace reftrain {

struct EnvSpec {
    std::string name;
    int64_t obs_dim = 1;
    int64_t num_actions = 1;
    int64_t max_episode_steps = 0;  // the truncation limit (0 = none)
};

// One copy of an environment. obs points at spec().obs_dim doubles the environment writes.
class Env {
public:
    virtual ~Env() = default;
    virtual const EnvSpec& spec() const = 0;
    virtual void reset(Rng& rng, double* obs) = 0;
    // Applies `action` (0 <= action < num_actions, else an error naming the env and the action),
    // writes the next observation, returns the reward and sets `terminated`. Truncation is VecEnv's.
    virtual double step(int64_t action, Rng& rng, double* obs, bool& terminated) = 0;
};

// The names above; an unknown name fails listing them (with a did-you-mean).
std::unique_ptr<Env> make_env(const std::string& name);
std::vector<std::string> env_names();

// CartPole's state, exposed for the Gymnasium comparison (reftrain env trace) and tests.
class CartPole : public Env {
public:
    CartPole();
    const EnvSpec& spec() const override { return spec_; }
    void reset(Rng& rng, double* obs) override;
    double step(int64_t action, Rng& rng, double* obs, bool& terminated) override;
    void set_state(const double state[4]);
    const double* state() const { return state_; }

private:
    EnvSpec spec_;
    double state_[4] = {0, 0, 0, 0};
    bool terminated_ = false;  // stepping on after termination is an error (see envs.cpp)
};

struct EpisodeRecord {
    int64_t env = 0;          // which copy
    double ret = 0.0;         // undiscounted sum of rewards
    int64_t length = 0;       // steps
    bool truncated = false;   // ended by the time limit, not by the MDP
};

class VecEnv {
public:
    // N copies of make_env(name), seeded from `seed` as above. max_episode_steps < 0 keeps the
    // environment's own limit; 0 disables truncation; > 0 overrides it.
    VecEnv(const std::string& name, int64_t num_envs, uint64_t seed, int64_t max_episode_steps = -1);

    const EnvSpec& spec() const { return spec_; }
    int64_t num_envs() const { return N_; }

    // Resets every copy; returns obs (N, obs_dim), row-major.
    const std::vector<double>& reset();
    // One step of every copy with actions[i]; fills the fields below, auto-resetting copies that end.
    void step(const std::vector<int64_t>& actions);

    const std::vector<double>& obs() const { return obs_; }              // (N, obs_dim)
    const std::vector<double>& reward() const { return reward_; }        // (N)
    const std::vector<uint8_t>& terminated() const { return terminated_; }  // (N)
    const std::vector<uint8_t>& truncated() const { return truncated_; }    // (N)
    // (N, obs_dim): for a copy that ended this step, the last observation of that episode (what a
    // truncated episode is bootstrapped from); for the others, equal to obs().
    const std::vector<double>& final_obs() const { return final_obs_; }
    // Episodes that ended during the last step() call, in copy order.
    const std::vector<EpisodeRecord>& finished() const { return finished_; }
    int64_t total_steps() const { return total_steps_; }   // env steps over all copies since construction

    Env& env(int64_t i) { return *envs_[i]; }

private:
    EnvSpec spec_;
    int64_t N_;
    std::vector<std::unique_ptr<Env>> envs_;
    std::vector<Rng> rngs_;
    std::vector<double> obs_, reward_, final_obs_;
    std::vector<uint8_t> terminated_, truncated_;
    std::vector<int64_t> episode_steps_;
    std::vector<double> episode_return_;
    std::vector<EpisodeRecord> finished_;
    int64_t total_steps_ = 0;
    bool has_reset_ = false;  // step() before reset() is an error
};

// What a probe environment's correct agent knows, for `reftrain probe run` and the failure catalog.
struct ProbeCase {
    std::vector<double> obs;              // an observation to evaluate the agent at
    double value = 0.0;                   // the correct V(obs) under discount gamma
    std::vector<double> action_probs;     // the correct pi(. | obs); empty when any policy is optimal
};
// The cases for probe1..probe5, probe-timelimit and bandit (gamma matters for probe3 and
// probe-timelimit only). Fails for cartpole, which has no closed form.
std::vector<ProbeCase> probe_cases(const std::string& env, double gamma);

}  // namespace reftrain

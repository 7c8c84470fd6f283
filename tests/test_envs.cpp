// tests/test_envs.cpp — probes/envs.h: every probe environment gives the observations, rewards,
// lengths and terminations of its table row; VecEnv resets in the same step and keeps final_obs,
// truncates at the limit (overridable, or off), lets a termination beat a truncation, and is
// deterministic per copy whatever N; CartPole takes one hand-checked Euler step and terminates just
// past its thresholds; the bandit's arms pay their means; bad actions and names are refused.
// (tests/python/test_cartpole_gymnasium.py compares CartPole with Gymnasium itself.)
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/error.h"
#include "probes/envs.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

using namespace reftrain::testing;

// What one copy did over one episode, stepped through a one-copy VecEnv with a fixed action.
struct Episode {
    std::vector<double> observations;  // the first, then one per step (final_obs)
    std::vector<double> rewards;
    bool terminated = false, truncated = false;
};

Episode run_episode(VecEnv& venv, int64_t action, int64_t max_steps = 1000) {
    Episode episode;
    episode.observations.push_back(venv.obs()[0]);
    for (int64_t t = 0; t < max_steps; ++t) {
        venv.step({action});
        episode.observations.push_back(venv.final_obs()[0]);
        episode.rewards.push_back(venv.reward()[0]);
        if (venv.terminated()[0] || venv.truncated()[0]) {
            episode.terminated = venv.terminated()[0];
            episode.truncated = venv.truncated()[0];
            return episode;
        }
    }
    ADD_FAILURE() << venv.spec().name << ": no episode end within " << max_steps << " steps";
    return episode;
}

TEST(EnvTest, NamesAreMadeAndUnknownNamesAreRefused) {
    const std::vector<std::string> names = env_names();
    ASSERT_EQ(names.size(), 8u);
    for (const std::string& name : names) EXPECT_EQ(make_env(name)->spec().name, name);
    expect_error([] { make_env("cartpol"); }, {"'cartpol'", "did you mean 'cartpole'", "probe1", "bandit"});
    const std::string far = expect_error([] { make_env("mountaincar"); }, {"'mountaincar'", "probe-timelimit"});
    EXPECT_EQ(far.find("did you mean"), std::string::npos) << far;
    expect_error([] { VecEnv("probe9", 2, 0); }, {"'probe9'", "did you mean 'probe1'"});
}

TEST(EnvTest, OutOfRangeActionsAreRefusedNamingEnvAndAction) {
    for (const std::string& name : env_names()) {
        SCOPED_TRACE(name);
        VecEnv venv(name, 1, 0);
        venv.reset();
        const int64_t n = venv.spec().num_actions;
        expect_error([&] { venv.step({n}); }, {"env " + name, "action " + std::to_string(n), "out of range"});
        expect_error([&] { venv.step({-1}); }, {"env " + name, "action -1"});
    }
    VecEnv two("probe4", 2, 0);
    expect_error([&] { two.step({0, 0}); }, {"probe4", "before reset"});
    two.reset();
    expect_error([&] { two.step({0}); }, {"probe4", "1 actions for 2 environments"});
    expect_error([] { VecEnv("probe1", 0, 0); }, {"num_envs", "got 0"});
}

TEST(EnvTest, ProbeOneToFourFollowTheirTable) {
    VecEnv p1("probe1", 1, 3);
    p1.reset();
    for (int i = 0; i < 5; ++i) {
        const Episode e = run_episode(p1, 0);
        EXPECT_EQ(e.observations, (std::vector<double>{0.0, 0.0}));
        EXPECT_EQ(e.rewards, (std::vector<double>{1.0}));
        EXPECT_TRUE(e.terminated);
        EXPECT_FALSE(e.truncated);
    }

    VecEnv p3("probe3", 1, 3);
    p3.reset();
    for (int i = 0; i < 5; ++i) {
        const Episode e = run_episode(p3, 0);
        EXPECT_EQ(e.observations, (std::vector<double>{0.0, 1.0, 1.0}));
        EXPECT_EQ(e.rewards, (std::vector<double>{0.0, 1.0}));
        EXPECT_TRUE(e.terminated);
    }

    VecEnv p4("probe4", 1, 3);
    p4.reset();
    for (int64_t action : {0, 1, 1, 0}) {
        const Episode e = run_episode(p4, action);
        EXPECT_EQ(e.observations, (std::vector<double>{0.0, 0.0}));
        EXPECT_EQ(e.rewards, (std::vector<double>{action == 1 ? 1.0 : -1.0}));
        EXPECT_TRUE(e.terminated);
    }
}

TEST(EnvTest, ProbeTwoAndFiveDrawBothSignsAndPayByThem) {
    for (const char* name : {"probe2", "probe5"}) {
        SCOPED_TRACE(name);
        VecEnv venv(name, 1, 11);
        venv.reset();
        int positives = 0;
        const int episodes = 2000;
        for (int i = 0; i < episodes; ++i) {
            const double o = venv.obs()[0];
            ASSERT_TRUE(o == 1.0 || o == -1.0) << o;
            positives += o > 0;
            if (std::string(name) == "probe2") {
                venv.step({0});
                EXPECT_EQ(venv.reward()[0], o);
            } else {
                const int64_t right = o > 0 ? 1 : 0;
                venv.step({i % 2 == 0 ? right : 1 - right});
                EXPECT_EQ(venv.reward()[0], i % 2 == 0 ? 1.0 : -1.0);
            }
            EXPECT_TRUE(venv.terminated()[0]);
            EXPECT_EQ(venv.final_obs()[0], o);
        }
        // Binomial(2000, 1/2): standard deviation 22, so 850..1150 fails only for a broken coin.
        EXPECT_GT(positives, 850);
        EXPECT_LT(positives, 1150);
    }
}

TEST(EnvTest, ProbeTimeLimitTruncatesAtTenAndTheLimitCanBeChangedOrRemoved) {
    VecEnv venv("probe-timelimit", 1, 0);
    EXPECT_EQ(venv.spec().max_episode_steps, 10);
    venv.reset();
    const Episode e = run_episode(venv, 0);
    EXPECT_EQ(e.rewards.size(), 10u);
    EXPECT_FALSE(e.terminated);
    EXPECT_TRUE(e.truncated);
    ASSERT_EQ(venv.finished().size(), 1u);
    EXPECT_TRUE(venv.finished()[0].truncated);
    EXPECT_EQ(venv.finished()[0].length, 10);
    EXPECT_EQ(venv.finished()[0].ret, 10.0);

    VecEnv three("probe-timelimit", 1, 0, 3);
    three.reset();
    EXPECT_EQ(run_episode(three, 0).rewards.size(), 3u);

    VecEnv unlimited("probe-timelimit", 1, 0, 0);
    unlimited.reset();
    for (int t = 0; t < 1000; ++t) {
        unlimited.step({0});
        ASSERT_FALSE(unlimited.truncated()[0] || unlimited.terminated()[0]) << "step " << t;
    }
    EXPECT_EQ(unlimited.total_steps(), 1000);
}

TEST(EnvTest, TerminationBeatsTruncationOnTheSameStep) {
    VecEnv probe("probe3", 1, 0, 2);  // probe3 terminates on its 2nd step, the limit step
    probe.reset();
    const Episode e = run_episode(probe, 0);
    EXPECT_TRUE(e.terminated);
    EXPECT_FALSE(e.truncated);
    EXPECT_FALSE(probe.finished()[0].truncated);

    // CartPole: find when one seed's episode terminates under action 1, then make that the limit.
    VecEnv free_run("cartpole", 1, 5);
    free_run.reset();
    const int64_t length = static_cast<int64_t>(run_episode(free_run, 1).rewards.size());
    ASSERT_TRUE(free_run.terminated()[0]);
    for (int64_t limit : {length, length - 1}) {
        VecEnv limited("cartpole", 1, 5, limit);
        limited.reset();
        const Episode l = run_episode(limited, 1);
        EXPECT_EQ(static_cast<int64_t>(l.rewards.size()), limit);
        EXPECT_EQ(l.terminated, limit == length) << "limit " << limit;
        EXPECT_EQ(l.truncated, limit != length) << "limit " << limit;
    }
}

TEST(EnvTest, AutoResetReturnsTheNextEpisodeAndKeepsTheFinalObservation) {
    // Copy 0 keeps pushing right and falls (terminated); copy 1 alternates and is truncated at 20.
    const double theta_limit = 12 * 2 * 3.141592653589793 / 360;
    VecEnv venv("cartpole", 2, 9, 20);
    venv.reset();
    int64_t copy0_episodes = 0, copy0_last_end = 0;
    for (int t = 1; t <= 20; ++t) {
        venv.step({1, t % 2});
        if (venv.terminated()[0]) {
            copy0_episodes += 1;
            ASSERT_GE(venv.finished().size(), 1u);
            EXPECT_EQ(venv.finished()[0].env, 0);
            EXPECT_FALSE(venv.finished()[0].truncated);
            EXPECT_EQ(venv.finished()[0].length, t - copy0_last_end);
            copy0_last_end = t;
            const double* last = &venv.final_obs()[0];
            EXPECT_TRUE(std::abs(last[0]) > 2.4 || std::abs(last[2]) > theta_limit) << "final_obs is the terminal state";
            for (int j = 0; j < 4; ++j) EXPECT_LE(std::abs(venv.obs()[j]), 0.05) << "obs is the next episode's start";
        } else if (t != 20 || !venv.truncated()[0]) {
            for (int j = 0; j < 4; ++j) EXPECT_EQ(venv.final_obs()[j], venv.obs()[j]) << "step " << t;
        }
        ASSERT_FALSE(venv.terminated()[1]) << "alternating pushes keep copy 1 up";
        if (t < 20) {
            EXPECT_FALSE(venv.truncated()[1]);
            for (int j = 0; j < 4; ++j) EXPECT_EQ(venv.final_obs()[4 + j], venv.obs()[4 + j]);
        }
    }
    EXPECT_GT(copy0_episodes, 0) << "copy 0 pushed right for 20 steps did not fall";
    // Copy 1 was truncated on step 20: final_obs is where it stood, obs is a fresh start.
    ASSERT_TRUE(venv.truncated()[1]);
    const EpisodeRecord& record = venv.finished().back();
    EXPECT_EQ(record.env, 1);
    EXPECT_TRUE(record.truncated);
    EXPECT_EQ(record.length, 20);
    EXPECT_EQ(record.ret, 20.0);
    bool differs = false;
    for (int j = 0; j < 4; ++j) {
        EXPECT_LE(std::abs(venv.obs()[4 + j]), 0.05) << "a reset state lies in [-0.05, 0.05]";
        differs = differs || venv.final_obs()[4 + j] != venv.obs()[4 + j];
    }
    EXPECT_TRUE(differs);
    EXPECT_EQ(std::memcmp(dynamic_cast<CartPole&>(venv.env(1)).state(), &venv.obs()[4], sizeof(double) * 4), 0);

    // probe3 over three steps: obs 0 -> 1 -> (ends; final 1) 0.
    VecEnv p3("probe3", 1, 0);
    p3.reset();
    p3.step({0});
    EXPECT_EQ(p3.obs()[0], 1.0);
    EXPECT_FALSE(p3.terminated()[0]);
    EXPECT_TRUE(p3.finished().empty());
    p3.step({0});
    EXPECT_TRUE(p3.terminated()[0]);
    EXPECT_EQ(p3.final_obs()[0], 1.0);
    EXPECT_EQ(p3.obs()[0], 0.0);
    ASSERT_EQ(p3.finished().size(), 1u);
    EXPECT_EQ(p3.finished()[0].ret, 1.0);
    EXPECT_EQ(p3.finished()[0].length, 2);
    EXPECT_FALSE(p3.finished()[0].truncated);
    p3.step({0});
    EXPECT_TRUE(p3.finished().empty()) << "finished() holds only the last step's episodes";
    EXPECT_EQ(p3.total_steps(), 3);
}

// Runs `steps` steps of cartpole with actions that depend on (t, copy) only; returns all obs bits.
std::vector<double> cartpole_trace(int64_t num_envs, uint64_t seed, int64_t steps, int64_t copies_kept) {
    VecEnv venv("cartpole", num_envs, seed);
    venv.reset();
    std::vector<double> trace(venv.obs().begin(), venv.obs().begin() + copies_kept * 4);
    std::vector<int64_t> actions(num_envs);
    for (int64_t t = 0; t < steps; ++t) {
        for (int64_t i = 0; i < num_envs; ++i) actions[i] = ((t * 7 + i * 3) / 5) % 2;
        venv.step(actions);
        trace.insert(trace.end(), venv.obs().begin(), venv.obs().begin() + copies_kept * 4);
        trace.insert(trace.end(), venv.reward().begin(), venv.reward().begin() + copies_kept);
        for (int64_t i = 0; i < copies_kept; ++i) trace.push_back(venv.terminated()[i] + 2 * venv.truncated()[i]);
    }
    return trace;
}

TEST(EnvTest, SameSeedSameBitsAndCopyIDoesNotDependOnN) {
    const std::vector<double> a = cartpole_trace(3, 42, 400, 3);
    const std::vector<double> b = cartpole_trace(3, 42, 400, 3);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(double)), 0);
    // Copies 0..2 of an 8-copy run are the 3-copy run's copies (actions depend on (t, i) only).
    const std::vector<double> wide = cartpole_trace(8, 42, 400, 3);
    EXPECT_EQ(std::memcmp(a.data(), wide.data(), a.size() * sizeof(double)), 0);
    const std::vector<double> other = cartpole_trace(3, 43, 400, 3);
    EXPECT_NE(std::memcmp(a.data(), other.data(), a.size() * sizeof(double)), 0);

    // Copies within one run draw from different streams.
    VecEnv venv("probe2", 64, 1);
    venv.reset();
    int positives = 0;
    for (double o : venv.obs()) positives += o > 0;
    EXPECT_GT(positives, 10);
    EXPECT_LT(positives, 54);
}

TEST(EnvTest, CartPoleTakesOneEulerStepOfTheBartoSuttonAndersonEquations) {
    const double start[4] = {0.01, 0.02, 0.03, 0.04};
    for (int64_t action : {0, 1}) {
        SCOPED_TRACE("action " + std::to_string(action));
        CartPole env;
        env.set_state(start);
        Rng rng(0);
        double obs[4];
        bool terminated = true;
        const double reward = env.step(action, rng, obs, terminated);
        EXPECT_EQ(reward, 1.0);
        EXPECT_FALSE(terminated);
        for (int j = 0; j < 4; ++j) EXPECT_EQ(obs[j], env.state()[j]);

        // The same physics written the other way round (Florian 2007, frictionless, eq. 23-24):
        //   theta_acc = (g sin th + cos th (-F - m_p l th_dot^2 sin th) / (m_c + m_p))
        //               / (l (4/3 - m_p cos^2 th / (m_c + m_p)))
        //   x_acc     = (F + m_p l (th_dot^2 sin th - theta_acc cos th)) / (m_c + m_p)
        // with g = 9.8, m_c = 1, m_p = 0.1, l = 0.5 (half the pole), F = +-10, then Euler with tau 0.02.
        const double g = 9.8, mc = 1.0, mp = 0.1, l = 0.5, tau = 0.02;
        const double F = action == 1 ? 10.0 : -10.0;
        const double x = start[0], x_dot = start[1], th = start[2], th_dot = start[3];
        const double theta_acc = (g * std::sin(th) + std::cos(th) * (-F - mp * l * th_dot * th_dot * std::sin(th)) / (mc + mp)) /
                                 (l * (4.0 / 3.0 - mp * std::cos(th) * std::cos(th) / (mc + mp)));
        const double x_acc = (F + mp * l * (th_dot * th_dot * std::sin(th) - theta_acc * std::cos(th))) / (mc + mp);
        const double want[4] = {x + tau * x_dot, x_dot + tau * x_acc, th + tau * th_dot, th_dot + tau * theta_acc};
        for (int j = 0; j < 4; ++j) EXPECT_NEAR(obs[j], want[j], 1e-15) << "component " << j;

        // By hand: sin 0.03 = 0.0299955, cos 0.03 = 0.9995500; for F = +10, temp = (10 + 0.05 * 0.0016 *
        // 0.0299955) / 1.1 = 9.0909113, theta_acc = (9.8 * 0.0299955 - 0.99955 * 9.0909113) /
        // (0.5 * (4/3 - 0.1 * 0.9991003 / 1.1)) = -8.7928648 / 0.6212530 = -14.15344, x_acc = 9.0909113 -
        // 0.05 * (-14.15344) * 0.99955 / 1.1 = 9.73396; so x_dot = 0.02 + 0.02 * 9.73396 = 0.2146792 and
        // theta_dot = 0.04 - 0.02 * 14.15344 = -0.2430688. Gymnasium 1.4.0 printed the figures below for
        // this step (x and theta do not depend on the action).
        const double gymnasium_action1[4] = {0.0104, 0.21467919574755523, 0.030799999999999998, -0.24306871796000826};
        if (action == 1) {
            for (int j = 0; j < 4; ++j) EXPECT_NEAR(obs[j], gymnasium_action1[j], 1e-15) << "component " << j;
            EXPECT_NEAR(theta_acc, -14.15344, 1e-5);
            EXPECT_NEAR(x_acc, 9.73396, 1e-5);
        } else {
            EXPECT_LT(obs[1], start[1]);  // pushed left: the cart slows
            EXPECT_GT(obs[3], start[3]);  // and the pole swings right
        }
    }
}

// One step of CartPole from `state` with action 1; returns `terminated`.
bool terminates_from(double x, double x_dot, double theta, double theta_dot) {
    CartPole env;
    const double state[4] = {x, x_dot, theta, theta_dot};
    env.set_state(state);
    Rng rng(0);
    double obs[4];
    bool terminated = false;
    env.step(1, rng, obs, terminated);
    return terminated;
}

TEST(EnvTest, CartPoleTerminatesJustPastItsThresholds) {
    const double theta_limit = 12 * 2 * 3.141592653589793 / 360;  // 0.20943951 rad
    // At rest exactly on a threshold: x stays 2.4 (not beyond); a resting pole tilted by the limit
    // stays there for one step (theta moves by tau * theta_dot = 0).
    EXPECT_FALSE(terminates_from(2.4, 0.0, 0.0, 0.0));
    EXPECT_FALSE(terminates_from(-2.4, 0.0, 0.0, 0.0));
    EXPECT_FALSE(terminates_from(0.0, 0.0, theta_limit, 0.0));
    EXPECT_FALSE(terminates_from(0.0, 0.0, -theta_limit, 0.0));
    // Moving across it: x = 2.4 + 0.02 * 0.01 > 2.4, and the same for theta.
    EXPECT_TRUE(terminates_from(2.4, 0.01, 0.0, 0.0));
    EXPECT_TRUE(terminates_from(-2.4, -0.01, 0.0, 0.0));
    EXPECT_TRUE(terminates_from(0.0, 0.0, theta_limit, 0.01));
    EXPECT_TRUE(terminates_from(0.0, 0.0, -theta_limit, -0.01));
    EXPECT_FALSE(terminates_from(2.39, 0.4, 0.0, 0.0));  // 2.39 + 0.008 = 2.398
    EXPECT_TRUE(terminates_from(2.39, 0.6, 0.0, 0.0));   // 2.39 + 0.012 = 2.402

    // The terminal step pays +1 like every other; stepping on without a reset is refused.
    CartPole env;
    const double state[4] = {2.4, 1.0, 0.0, 0.0};
    env.set_state(state);
    Rng rng(0);
    double obs[4];
    bool terminated = false;
    EXPECT_EQ(env.step(0, rng, obs, terminated), 1.0);
    EXPECT_TRUE(terminated);
    expect_error([&] { env.step(0, rng, obs, terminated); }, {"cartpole", "after termination"});
    env.reset(rng, obs);
    EXPECT_NO_THROW(env.step(0, rng, obs, terminated));
}

TEST(EnvTest, CartPoleIsTruncatedAtFiveHundredSteps) {
    // A balancing controller (push toward where the pole falls) keeps it up: the 500-step limit ends it.
    VecEnv venv("cartpole", 1, 2);
    EXPECT_EQ(venv.spec().max_episode_steps, 500);
    venv.reset();
    int64_t steps = 0;
    while (true) {
        const std::vector<double>& o = venv.obs();
        venv.step({o[2] + 0.5 * o[3] + 0.01 * o[0] + 0.1 * o[1] > 0 ? 1 : 0});
        ++steps;
        ASSERT_FALSE(venv.terminated()[0]) << "the controller let the pole fall at step " << steps;
        if (venv.truncated()[0]) break;
    }
    EXPECT_EQ(steps, 500);
    EXPECT_EQ(venv.finished()[0].ret, 500.0);
}

TEST(EnvTest, BanditArmsPayTheirMeansWithTheirNoise) {
    VecEnv venv("bandit", 16, 7);
    venv.reset();
    for (int64_t arm = 0; arm < 5; ++arm) {
        double sum = 0.0, sum_sq = 0.0;
        const int rounds = 1000;  // 16000 pulls: standard error of the mean 0.1 / 126 = 0.0008
        for (int r = 0; r < rounds; ++r) {
            venv.step(std::vector<int64_t>(16, arm));
            for (int i = 0; i < 16; ++i) {
                EXPECT_TRUE(venv.terminated()[i]);
                sum += venv.reward()[i];
                sum_sq += venv.reward()[i] * venv.reward()[i];
            }
        }
        const double n = rounds * 16.0, mean = sum / n, sd = std::sqrt(sum_sq / n - mean * mean);
        EXPECT_NEAR(mean, arm / 4.0, 0.004) << "arm " << arm;
        EXPECT_NEAR(sd, 0.1, 0.004) << "arm " << arm;
    }
}

TEST(EnvTest, ProbeCasesStateTheCorrectAnswers) {
    const double gamma = 0.9;
    EXPECT_EQ(probe_cases("probe1", gamma)[0].value, 1.0);
    const auto p2 = probe_cases("probe2", gamma);
    ASSERT_EQ(p2.size(), 2u);
    for (const ProbeCase& c : p2) EXPECT_EQ(c.value, c.obs[0]);
    const auto p3 = probe_cases("probe3", gamma);
    ASSERT_EQ(p3.size(), 2u);
    EXPECT_EQ(p3[0].obs[0], 0.0);
    EXPECT_EQ(p3[0].value, gamma);
    EXPECT_EQ(p3[1].value, 1.0);
    EXPECT_EQ(probe_cases("probe4", gamma)[0].action_probs, (std::vector<double>{0.0, 1.0}));
    for (const ProbeCase& c : probe_cases("probe5", gamma)) {
        EXPECT_EQ(c.value, 1.0);
        EXPECT_EQ(c.action_probs, (c.obs[0] > 0 ? std::vector<double>{0.0, 1.0} : std::vector<double>{1.0, 0.0}));
    }
    EXPECT_NEAR(probe_cases("probe-timelimit", gamma)[0].value, 10.0, 1e-12);
    EXPECT_NEAR(probe_cases("probe-timelimit", 0.99)[0].value, 100.0, 1e-9);
    EXPECT_EQ(probe_cases("bandit", gamma)[0].action_probs, (std::vector<double>{0, 0, 0, 0, 1}));
    // Every case's observation and policy fit its environment.
    for (const std::string& name : env_names()) {
        if (name == "cartpole") continue;
        const EnvSpec spec = make_env(name)->spec();
        for (const ProbeCase& c : probe_cases(name, gamma)) {
            EXPECT_EQ(static_cast<int64_t>(c.obs.size()), spec.obs_dim) << name;
            if (!c.action_probs.empty()) {
                EXPECT_EQ(static_cast<int64_t>(c.action_probs.size()), spec.num_actions) << name;
            }
        }
    }
    expect_error([] { probe_cases("cartpole", 0.9); }, {"cartpole", "closed-form"});
    expect_error([] { probe_cases("probe-timelimit", 1.0); }, {"probe-timelimit", "below 1"});
    expect_error([] { probe_cases("probe6", 0.9); }, {"'probe6'", "did you mean"});
}

}  // namespace
}  // namespace reftrain

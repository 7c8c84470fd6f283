// tests/test_sweep.cpp — the paired seed sweep (probes/sweep.h) both ways on short CartPole runs: a real
// change (a learning rate 2500x too small) is called a difference, a null control (the same config on
// other seeds) is called seed noise. Each sweep is 8 runs of 16k steps, about 3 s.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "probes/sweep.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

SweepOptions short_cartpole() {
    SweepOptions o;
    o.config_path = REFTRAIN_SOURCE_DIR "/configs/cartpole.json";
    o.sets = {"total_timesteps=16384"};
    o.seeds = 4;
    o.level = 0.95;
    return o;
}

TEST(Sweep, CallsARealChangeADifference) {
    SweepOptions o = short_cartpole();
    o.b_sets = {"learning_rate=1e-7"};  // B cannot learn in 16k steps; A reaches a mean return of ~55
    std::ostringstream out;
    const SweepResult r = run_ppo_sweep(o, out);
    ASSERT_EQ(r.a.size(), 4u);
    for (size_t i = 0; i < r.a.size(); ++i) EXPECT_LT(r.b[i], r.a[i]) << "seed " << i + 1;
    EXPECT_TRUE(r.comparison.significant()) << r.verdict();
    EXPECT_NE(r.verdict().find("B differs from A beyond seed noise"), std::string::npos) << r.verdict();
    EXPECT_NE(out.str().find("B - A"), std::string::npos);
}

TEST(Sweep, CallsANullControlSeedNoise) {
    SweepOptions o = short_cartpole();
    o.b_seed_offset = 100;  // the same config, other seeds: any difference is seed noise
    std::ostringstream out;
    const SweepResult r = run_ppo_sweep(o, out);
    EXPECT_FALSE(r.comparison.significant()) << r.verdict();
    EXPECT_NE(r.verdict().find("inside seed noise"), std::string::npos) << r.verdict();
    EXPECT_NE(r.a, r.b) << "B ran on other seeds";
}

TEST(Sweep, RefusesASweepThatComparesNothing) {
    SweepOptions o = short_cartpole();
    std::ostringstream out;
    testing::expect_error([&] { run_ppo_sweep(o, out); }, {"sweep: B is A"});
    o.b_sets = {"norm_adv=false"};
    o.seeds = 1;
    testing::expect_error([&] { run_ppo_sweep(o, out); }, {"--seeds must be >= 2"});
}

}  // namespace
}  // namespace reftrain

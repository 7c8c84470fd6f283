"""test_cartpole_gymnasium.py — reftrain's CartPole against Gymnasium's CartPole-v1, step for step.

`reftrain env trace --state S --actions A` puts our CartPole into state S, steps the actions through a
one-copy VecEnv (so the 500-step limit is the one training sees) and prints every observation with 17
digits. Gymnasium's gym.make("CartPole-v1") is put into the same state (env.unwrapped.state after
reset) and given the same actions. Cases: 40 start states uniform in [-0.05, 0.05]^4 and 10 near the
thresholds (|x| in [2.2, 2.39], |theta| in [0.15, 0.20]), each with 600 random actions, plus 3 runs of
actions that a balancing controller chose inside Gymnasium, which last until the 500-step truncation.

Two comparisons:
- libm trig: Gymnasium's step with np.sin/np.cos replaced by math.sin/math.cos, the C library functions
  our std::sin/std::cos call. Everything else is Gymnasium's code. Here the fp64 states must be
  bitwise equal at every step of every case, the 500-step runs included: same formula, same order of
  operations, no fused multiply-add.
- stock Gymnasium: NumPy may compute sin/cos with its own SIMD code (AVX-512 builds use SVML, a few
  fp64 ulps away from libm), so the states can differ in the last bits, and CartPole's instability
  grows that. For the random-action cases (short episodes) the float32 observations Gymnasium returns
  must be within 1 float32 ulp of float32(our fp64 observation), and reward, terminated, truncated and
  the episode length must agree exactly; the figures are printed. The 500-step controller runs are
  reported, not asserted, in this mode: a last-bit difference grows by about e^(4 t), so after 10 s of
  simulated time the two trajectories are unrelated (the libm comparison above covers them).
Negative controls (the comparison must be able to fail): swapping actions 0 and 1 on our side must be
flagged in every case, and so must a start state nudged up by one fp64 ulp in every component (one
component alone is not enough: x + tau * x_dot can round the nudge of x away) in the bitwise comparison.
Exit 77 (skip) when gymnasium is not importable.
"""
import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

try:
    import numpy as np
    import gymnasium as gym
    import gymnasium.envs.classic_control.cartpole as gym_cartpole
except ImportError as e:
    print(f"SKIP: gymnasium is not importable ({e}); scripts/setup.sh installs it into .venv")
    sys.exit(77)

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
        print(f"  FAIL {message}")
    return condition


# ---- the two sides ----------------------------------------------------------------------------------

def reftrain_trace(reftrain, state, actions):
    """Our run: a list of per-step dicts (obs, reward, terminated, truncated); step 0 is the start."""
    cmd = [reftrain, "env", "trace", "--env", "cartpole", "--state", ",".join(repr(float(v)) for v in state),
           "--actions", ",".join(str(a) for a in actions)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {done.returncode}: {done.stderr.strip()}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines[0]["step"] == 0 and lines[0]["obs"] == [float(v) for v in state], lines[0]
    return lines[1:]


class LibmTrig:
    """numpy with sin and cos taken from the C library (math.sin/math.cos), for gymnasium's module."""
    sin = staticmethod(math.sin)
    cos = staticmethod(math.cos)

    def __getattr__(self, name):
        return getattr(np, name)


def gymnasium_trace(state, actions, libm_trig):
    """Gymnasium's run: per-step dicts with the float32 obs it returns and its fp64 state."""
    env = gym.make("CartPole-v1")
    saved_np = gym_cartpole.np
    if libm_trig:
        gym_cartpole.np = LibmTrig()
    try:
        env.reset(seed=0)
        env.unwrapped.state = np.array(state, dtype=np.float64)
        steps = []
        for a in actions:
            obs, reward, terminated, truncated, _ = env.step(int(a))
            steps.append({"obs32": np.asarray(obs, dtype=np.float32), "state": np.array(env.unwrapped.state),
                          "reward": float(reward), "terminated": bool(terminated), "truncated": bool(truncated)})
            if terminated or truncated:
                break
        return steps
    finally:
        gym_cartpole.np = saved_np
        env.close()


def float32_ulps(a, b):
    """Distance in float32 ulps between two float32 arrays (counting representable values between)."""
    def ordered(x):
        i = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return np.abs(ordered(a) - ordered(b))


def compare(ours, theirs):
    """Figures of one case: steps, whether the discrete outcomes agree, obs differences."""
    out = {"len_ours": len(ours), "len_theirs": len(theirs), "discrete_equal": len(ours) == len(theirs),
           "bitwise_fp64": len(ours) == len(theirs), "max_ulp32": 0, "steps_with_ulp32": 0, "max_abs64": 0.0,
           "first_bit_difference": None}
    for t, (o, g) in enumerate(zip(ours, theirs)):
        if (o["reward"], o["terminated"], o["truncated"]) != (g["reward"], g["terminated"], g["truncated"]):
            out["discrete_equal"] = False
        mine = np.array(o["obs"], dtype=np.float64)
        ulps = int(float32_ulps(mine.astype(np.float32), g["obs32"]).max())
        out["max_ulp32"] = max(out["max_ulp32"], ulps)
        out["steps_with_ulp32"] += ulps > 0
        out["max_abs64"] = max(out["max_abs64"], float(np.abs(mine - g["state"]).max()))
        if mine.tobytes() != g["state"].tobytes():
            out["bitwise_fp64"] = False
            if out["first_bit_difference"] is None:
                out["first_bit_difference"] = t + 1
    return out


# ---- the cases --------------------------------------------------------------------------------------

def balancing_actions(state, limit=600):
    """Actions a linear controller picks inside Gymnasium (libm trig) from `state`: lasts until truncation."""
    env = gym.make("CartPole-v1")
    saved_np, gym_cartpole.np = gym_cartpole.np, LibmTrig()
    try:
        env.reset(seed=0)
        env.unwrapped.state = np.array(state, dtype=np.float64)
        s = np.array(state)
        actions = []
        for _ in range(limit):
            a = int(s[2] + 0.5 * s[3] + 0.01 * s[0] + 0.1 * s[1] > 0)
            actions.append(a)
            _, _, terminated, truncated, _ = env.step(a)
            s = np.array(env.unwrapped.state)
            if terminated or truncated:
                break
        return actions
    finally:
        gym_cartpole.np = saved_np
        env.close()


def make_cases(rng):
    cases = []
    for i in range(40):
        cases.append(("small", rng.uniform(-0.05, 0.05, 4), rng.integers(0, 2, 600)))
    for i in range(10):
        sign_x, sign_theta = rng.choice([-1.0, 1.0], 2)
        state = np.array([sign_x * rng.uniform(2.2, 2.39), rng.uniform(-0.5, 0.5),
                          sign_theta * rng.uniform(0.15, 0.20), rng.uniform(-0.5, 0.5)])
        cases.append(("near-threshold", state, rng.integers(0, 2, 600)))
    for i in range(3):
        state = rng.uniform(-0.05, 0.05, 4)
        cases.append(("controller", state, np.array(balancing_actions(state))))
    return cases


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reftrain", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    reftrain = os.path.abspath(args.reftrain)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    print(f"gymnasium {gym.__version__}, numpy {np.__version__}")

    cases = make_cases(np.random.default_rng(2024))
    libm_results, stock_results = [], []
    for kind, state, actions in cases:
        ours = reftrain_trace(reftrain, state, actions)
        libm = compare(ours, gymnasium_trace(state, actions, libm_trig=True))
        stock = compare(ours, gymnasium_trace(state, actions, libm_trig=False))
        libm_results.append((kind, libm))
        stock_results.append((kind, stock))
        check(libm["bitwise_fp64"] and libm["discrete_equal"],
              f"libm trig, {kind} case from {state.tolist()}: fp64 states differ first at step "
              f"{libm['first_bit_difference']} (lengths {libm['len_ours']} vs {libm['len_theirs']})")
        if kind != "controller":
            check(stock["discrete_equal"] and stock["max_ulp32"] <= 1,
                  f"stock gymnasium, {kind} case from {state.tolist()}: lengths {stock['len_ours']} vs "
                  f"{stock['len_theirs']}, discrete outcomes equal {stock['discrete_equal']}, "
                  f"max float32 ulps {stock['max_ulp32']}")

    steps = sum(r["len_ours"] for _, r in libm_results)
    lengths = [r["len_ours"] for _, r in libm_results]
    print(f"{len(cases)} cases, {steps} steps compared (episode lengths {min(lengths)}..{max(lengths)})")
    controller = [r for kind, r in libm_results if kind == "controller"]
    truncated_at_500 = all(r["len_ours"] == 500 for r in controller)
    check(truncated_at_500, f"controller runs: lengths {[r['len_ours'] for r in controller]}, want 500 (truncation)")
    print(f"libm trig: {sum(r['bitwise_fp64'] for _, r in libm_results)}/{len(cases)} cases bitwise equal in fp64 "
          f"at every step; controller runs truncated at step 500: {truncated_at_500}")
    short = [r for kind, r in stock_results if kind != "controller"]
    short_steps = sum(r["len_ours"] for r in short)
    print(f"stock gymnasium, {len(short)} random-action cases ({short_steps} steps): max float32 ulps "
          f"{max(r['max_ulp32'] for r in short)}, steps with any float32 difference "
          f"{sum(r['steps_with_ulp32'] for r in short)}, max |fp64 difference| "
          f"{max(r['max_abs64'] for r in short):.3g}, fp64 bitwise equal throughout in "
          f"{sum(r['bitwise_fp64'] for r in short)}/{len(short)}, discrete outcomes equal in "
          f"{sum(r['discrete_equal'] for r in short)}/{len(short)}")
    for r in (r for kind, r in stock_results if kind == "controller"):
        print(f"stock gymnasium, controller run: lengths {r['len_ours']} vs {r['len_theirs']}, fp64 bits first "
              f"differ at step {r['first_bit_difference']}, max float32 ulps {r['max_ulp32']}, "
              f"max |fp64 difference| {r['max_abs64']:.3g}")

    # Negative controls: a comparison that cannot fail proves nothing.
    swapped_caught = 0
    nudged_caught = 0
    for kind, state, actions in cases:
        theirs = gymnasium_trace(state, actions, libm_trig=True)
        swapped = compare(reftrain_trace(reftrain, state, 1 - actions), theirs)
        swapped_caught += not swapped["bitwise_fp64"] or not swapped["discrete_equal"] or swapped["max_ulp32"] > 1
        nudged_state = np.array([math.nextafter(v, math.inf) for v in state])
        nudged = compare(reftrain_trace(reftrain, nudged_state, actions), theirs)
        nudged_caught += not nudged["bitwise_fp64"]
    print(f"negative controls: swapped actions flagged in {swapped_caught}/{len(cases)} cases, "
          f"a one-ulp nudge of the start state in {nudged_caught}/{len(cases)}")
    check(swapped_caught == len(cases), f"swapped actions went unnoticed in {len(cases) - swapped_caught} case(s)")
    check(nudged_caught == len(cases), f"a one-ulp nudge went unnoticed in {len(cases) - nudged_caught} case(s)")

    print(f"FAILED: {len(failures)} check(s)" if failures else "OK: reftrain's CartPole matches Gymnasium's CartPole-v1")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""test_tensorboard.py — the TensorBoard event files reftrain writes beside metrics.jsonl (train/run_log.h),
read with TensorBoard's own reader (EventAccumulator, PyPI's `tensorboard`), never with a parser of ours:
- PPO on CartPole (20 updates) and GRPO on a 5-step SFT model (3 updates): every number of every
  metrics.jsonl line is a scalar of the events, tag by tag and step by step (float32: rel 1e-6);
- a second run in the same directory replaces the first one's event file; tensorboard=false writes none;
- live: while a long PPO run trains, its event file already holds scalars;
- resume purge: tests/test_run_log.cpp's killed-then-resumed directory (steps 1..8 logged, checkpoint at 5,
  resumed 6..10) reads as steps 1..10 with the resumed values: TensorBoard's purge_orphaned_data dropped the
  killed run's 6..8 (and without the purge they are there, so the check can fail).
- `reftrain train` (a tiny model: train, eval, test and tracer lines) likewise; and a training run killed
  past its checkpoint, then resumed: TensorBoard shows steps 1..N once, with the resumed values.
events_match_metrics(run_dir, what) is the comparison.
Exit 0 pass, 1 fail, 77 skip (no tensorboard package: scripts/setup.sh installs it into .venv).
"""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from tiny_cli import CONFIG, check, env, finish, fresh_workdir, parse_cli, sets

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError as e:
    print(f"SKIP: the tensorboard package is missing ({e}); scripts/setup.sh installs it into .venv")
    sys.exit(77)

REPO = Path(__file__).resolve().parents[2]
CARTPOLE = str(REPO / "configs" / "cartpole.json")
GRPO = str(REPO / "configs" / "grpo_addition.json")
SKIPPED_FIELDS = {"kind", "step", "update"}


def event_files(run_dir):
    return sorted(p for p in Path(run_dir).iterdir() if p.name.startswith("events.out.tfevents."))


def load_events(run_dir, purge=True):
    """TensorBoard's view of a run directory: {tag: [(step, value), ...]} in reading order, every point kept."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}, purge_orphaned_data=purge)
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def metrics_scalars(run_dir):
    """What metrics.jsonl says TensorBoard should show, by run_log.h's rules: each top-level number (bools as
    0/1) of a line is a point of tag "<kind>/<field>" ("metrics" without a kind) at the line's "step", else its
    "update", else the line's index."""
    expected = {}
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    for index, text in enumerate(lines):
        line = json.loads(text)
        step = index
        for key in ("update", "step"):   # "step" wins over "update"
            if isinstance(line.get(key), (int, float)) and not isinstance(line.get(key), bool):
                step = int(line[key])
        kind = line["kind"] if isinstance(line.get("kind"), str) else "metrics"
        for field, value in line.items():
            if field in SKIPPED_FIELDS or value is None or isinstance(value, (str, list, dict)):
                continue
            expected.setdefault(f"{kind}/{field}", []).append((step, float(value)))
    return expected, len(lines)


def events_match_metrics(run_dir, what):
    """TensorBoard's scalars of run_dir equal metrics.jsonl's numbers: the same tags, and per tag the same
    steps in the same order with values equal to float32 rounding. Returns the number of points compared."""
    expected, lines = metrics_scalars(run_dir)
    got = load_events(run_dir)
    check(set(got) == set(expected), f"{what}: tags differ: only in events {sorted(set(got) - set(expected))}, "
                                     f"only in metrics.jsonl {sorted(set(expected) - set(got))}")
    points = 0
    for tag in sorted(set(got) & set(expected)):
        want, have = expected[tag], got[tag]
        if not check([s for s, _ in have] == [s for s, _ in want],
                     f"{what}: {tag}: steps {[s for s, _ in have][:12]} in the events, {[s for s, _ in want][:12]} in metrics.jsonl"):
            continue
        for (step, value), (_, reference) in zip(have, want):
            points += 1
            check(math.isclose(value, reference, rel_tol=1e-6, abs_tol=1e-37),
                  f"{what}: {tag} at step {step}: {value} in the events, {reference} in metrics.jsonl")
    print(f"  [measured] {what}: {len(got)} tags, {points} points over {lines} metrics lines compared")
    return points


def run(command, what, timeout=300):
    p = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=timeout)
    check(p.returncode == 0, f"{what} exited {p.returncode}: {p.stderr[-800:]}")
    return p


def ppo_command(reftrain, run_dir, extra=()):
    command = [reftrain, "rl", "--config", CARTPOLE]
    for s in [f"run_dir={run_dir}", "log_every=0", *extra]:
        command += ["--set", s]
    return command


def check_ppo(reftrain, work):
    print("PPO (CartPole, 20 updates): events equal metrics.jsonl; a second run replaces the file")
    run_dir = work / "ppo"
    run(ppo_command(reftrain, run_dir, ["total_timesteps=10240"]), "the PPO run")
    first = event_files(run_dir)
    check(len(first) == 1 and first[0].name.endswith(".reftrain"), f"PPO: event files {[p.name for p in first]}")
    points = events_match_metrics(run_dir, "PPO")
    check(points > 0, "PPO: no points compared")
    if first:
        size = first[0].stat().st_size
        metrics_size = Path(run_dir, "metrics.jsonl").stat().st_size
        print(f"  [measured] event file {size} bytes for 20 updates: {size / 20:.0f} bytes per update "
              f"(metrics.jsonl: {metrics_size / 20:.0f} bytes per line)")
    run(ppo_command(reftrain, run_dir, ["total_timesteps=5120"]), "the second PPO run")
    second = event_files(run_dir)
    check(len(second) == 1 and second != first, f"PPO rerun: event files {[p.name for p in second]}, first {first}")
    events_match_metrics(run_dir, "PPO rerun (10 updates)")

    print("tensorboard=false: metrics.jsonl only")
    off = work / "ppo_off"
    run(ppo_command(reftrain, off, ["total_timesteps=2048", "tensorboard=false"]), "the PPO run without TensorBoard")
    check(Path(off, "metrics.jsonl").exists() and not event_files(off),
          f"tensorboard=false: files {sorted(p.name for p in Path(off).iterdir())}")


def check_grpo(reftrain, work):
    print("GRPO (a 5-step SFT model, 3 updates, evals at updates 0, 2, 3): events equal metrics.jsonl")
    sft = work / "sft"
    run([reftrain, "train", "--config", CONFIG] + sets([f"run_dir={sft}", "train.max_steps=5"]), "the SFT run")
    run_dir = work / "grpo"
    command = [reftrain, "rl", "--config", GRPO]
    for s in [f"init={sft}", f"run_dir={run_dir}", "threads=1", "updates=3", "sampling.prompts_per_update=2",
              "sampling.group_size=2", "eval.examples=4", "eval.every=2", "eval.samples=0", "log_every=0"]:
        command += ["--set", s]
    run(command, "the GRPO run")
    events_match_metrics(run_dir, "GRPO")
    got = load_events(run_dir)
    check([s for s, _ in got.get("eval/exact_match", [])] == [0, 2, 3],
          f"GRPO: eval/exact_match at steps {got.get('eval/exact_match')}, expected updates 0, 2, 3")


def check_live(reftrain, work):
    print("live: a running PPO run's event file already holds scalars")
    run_dir = work / "live"
    job = subprocess.Popen(ppo_command(reftrain, run_dir, ["total_timesteps=5000000"]), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, env=env())
    start = time.monotonic()
    seen, running_when_seen = 0, False
    try:
        while time.monotonic() - start < 20 and job.poll() is None:
            if run_dir.exists() and event_files(run_dir):
                seen = len(load_events(run_dir).get("metrics/policy_loss", []))
                if seen >= 5:
                    running_when_seen = job.poll() is None
                    break
            time.sleep(0.2)
    finally:
        job.kill()
        job.communicate()
    print(f"  [measured] {seen} points of metrics/policy_loss read {time.monotonic() - start:.1f} s after the start, "
          f"the run still going: {running_when_seen}")
    check(seen >= 5 and running_when_seen, f"live: {seen} points seen while the run was going (expected >= 5 within 20 s)")


def check_train(reftrain, work):
    print("reftrain train: events equal metrics.jsonl (train, eval, test, tracer lines); a killed run resumed")
    run_dir = work / "train"
    common = ["eval.every=10", "data.val_examples=10", "eval.exact_match_examples=2", "eval.samples=1",
              "data.test_examples=4", "eval.final_test=true", "tracer.summary_every=5"]
    extra = [f"run_dir={run_dir}"] + common
    run([reftrain, "train", "--config", CONFIG] + sets(extra + ["train.max_steps=30"]), "the training run")
    events_match_metrics(run_dir, "train")
    tags = set(load_events(run_dir))
    for tag in ("train/loss", "train/grad_norm", "eval/val_loss", "test/exact_match", "tracer/worst_abs_max"):
        check(tag in tags, f"train: no {tag} among the tags {sorted(tags)[:20]}")

    # Killed after its checkpoint at step 10 and some steps more, then resumed: the killed run's steps past
    # 10 are in its event file, and must be gone from what TensorBoard shows, as they are from metrics.jsonl.
    run_dir = work / "train_killed"
    extra = [f"run_dir={run_dir}"] + common
    job = subprocess.Popen([reftrain, "train", "--config", CONFIG] +
                           sets(extra + ["train.max_steps=100000", "checkpoint_every=10", "log_every=1"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job.poll() is None:
        steps = [json.loads(l).get("step", 0) for l in metrics.read_text().splitlines()] if metrics.exists() else []
        if steps and max(steps) >= 14:
            break
        time.sleep(0.02)
    job.kill()
    job.communicate()
    before = load_events(run_dir, purge=False).get("train/loss", [])
    run([reftrain, "train", "--config", CONFIG] + sets(extra + ["train.max_steps=20", "resume=latest"]), "the resumed run")
    after = load_events(run_dir).get("train/loss", [])
    print(f"  [measured] killed at step {max(s for s, _ in before) if before else None}; after the resume TensorBoard "
          f"shows steps {[s for s, _ in after][:3]}..{[s for s, _ in after][-3:]} ({len(after)} points)")
    check(before and max(s for s, _ in before) > 10, "train_killed: the run was not killed past its checkpoint at 10 "
                                                     "(else this check proves nothing)")
    check([s for s, _ in after] == list(range(1, 21)), f"train_killed: steps after the resume {[s for s, _ in after]}")
    events_match_metrics(run_dir, "train killed and resumed")


def check_resume_purge(reftrain_tests, work):
    print("resume: TensorBoard purges the killed run's steps past the checkpoint")
    run_dir = work / "resume"
    if not Path(reftrain_tests).exists():
        check(False, f"resume: {reftrain_tests} not found (build reftrain_tests; it writes the resumed directory)")
        return
    test = "RunLog.ResumeStartsTheNewFileWithSessionStartPastTheCheckpoint"
    p = subprocess.run([reftrain_tests, f"--gtest_filter={test}"], capture_output=True, text=True, timeout=60,
                       env=dict(env(), REFTRAIN_RUN_LOG_RESUME_DIR=str(run_dir)))
    if not check(p.returncode == 0 and "1 test" in p.stdout, f"resume: {test} failed: {p.stdout[-800:]}"):
        return
    purged = load_events(run_dir)
    unpurged = load_events(run_dir, purge=False)
    want = [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 11)]
    print(f"  [measured] train/loss steps without the purge {[s for s, _ in unpurged.get('train/loss', [])]}, "
          f"with it {[s for s, _ in purged.get('train/loss', [])]}")
    check(len(unpurged.get("train/loss", [])) == 13, "resume: the directory should hold the killed run's steps 6..8 "
                                                     "(else this check proves nothing)")
    check(purged.get("train/loss") == want, f"resume: train/loss {purged.get('train/loss')}, expected {want}")
    check(purged.get("eval/val_loss") == [(5, 0.25)], f"resume: the checkpoint step's eval {purged.get('eval/val_loss')}")
    events_match_metrics(run_dir, "resumed run")


def main():
    args = parse_cli(lambda ap: ap.add_argument(
        "--reftrain-tests", help="the GoogleTest binary (default: reftrain_tests beside --reftrain)"))
    reftrain = os.path.abspath(args.reftrain)
    reftrain_tests = args.reftrain_tests or str(Path(reftrain).parent / "reftrain_tests")
    work = fresh_workdir(args)

    check_ppo(reftrain, work)
    check_grpo(reftrain, work)
    check_train(reftrain, work)
    check_live(reftrain, work)
    check_resume_purge(reftrain_tests, work)

    return finish()


if __name__ == "__main__":
    sys.exit(main())

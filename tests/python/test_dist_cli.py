"""test_dist_cli.py — `mpirun -np 2 reftrain train`, driven as a user would, for what only a launch shows.

A tiny model (hidden 32, 2 layers, byte tokenizer) trains on 2 ranks of one thread each. What it checks:
- a rank killed mid-run (SIGKILL, as the OOM killer does) ends the whole job with a non-zero status
  within a bounded time, never a hang, and the launcher says which rank died;
- the run then resumes from its last checkpoint on 2 ranks (metrics.jsonl trimmed back to the checkpoint's
  step, so it reads as one run), and on 1 rank with the same global batch
  (train.global_batch), and is refused on 1 rank with another global batch, saying what to set;
- ranks started with different configs (mpirun's MPMD form, `A : B`) are refused naming the key;
- a global batch the ranks do not divide is refused naming the multiple.
Exits 77 (ctest: skipped) without mpirun or without MPI in the build. Each check prints FAIL with what it
saw; the exit status is 1 if any failed.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tiny_cli import CONFIG, check, env, finish, fresh_workdir, parse_cli, sets

SKIP = 77
DEADLINE = 30.0   # seconds the job may take to end after a rank died


def mpirun_cmd(mpirun, n):
    return [mpirun, "-np", str(n), "--oversubscribe", "--allow-run-as-root"]


def run(cmd, timeout=120):
    start = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())
    return p, time.monotonic() - start


def rank_pid(rank, run_dir):
    """The pid of the reftrain process of `rank` in this run (mpirun sets OMPI_COMM_WORLD_RANK)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(run_dir.encode() in c for c in cmdline) or not cmdline[0].endswith(b"reftrain"):
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def last_train_step(run_dir):
    steps = [json.loads(l)["step"] for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    return steps[-1] if steps else 0


def main():
    args = parse_cli()
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        print("SKIP: no mpirun on PATH (scripts/setup.sh installs openmpi-bin)")
        return SKIP
    work = fresh_workdir(args)
    train = [args.reftrain, "train", "--config", CONFIG]

    probe, _ = run(mpirun_cmd(mpirun, 2) + train + sets([f"run_dir={work}/probe", "train.max_steps=1"]))
    if "this build has no MPI" in probe.stderr:
        print("SKIP: reftrain was built without MPI")
        return SKIP
    check(probe.returncode == 0, f"2-rank probe run failed: {probe.stderr[-2000:]}")
    check("data parallel: 2 ranks (mpi)" in probe.stdout, "the 2-rank run does not say it is data parallel")

    # 1. A rank killed mid-run: the job ends, bounded, non-zero; then it resumes from the last checkpoint.
    print("kill a rank mid-run")
    run_dir = str(work / "killed")
    cmd = mpirun_cmd(mpirun, 2) + train + sets([f"run_dir={run_dir}", "train.max_steps=100000", "checkpoint_every=20"])
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    checkpoint = Path(run_dir) / "checkpoints" / "step_0000040"
    waited = time.monotonic()
    while not checkpoint.exists() and job.poll() is None and time.monotonic() - waited < 120:
        time.sleep(0.05)
    victim = rank_pid(1, run_dir)
    if check(victim is not None and job.poll() is None, "no running rank 1 to kill"):
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            out, err = job.communicate(timeout=DEADLINE + 30)
        except subprocess.TimeoutExpired:
            job.kill()
            out, err = job.communicate()
        took = time.monotonic() - killed_at
        print(f"  [measured] the job ended {took:.2f} s after rank 1 was killed, status {job.returncode}")
        check(job.returncode != 0, "the job exited 0 after a rank was killed")
        check(took < DEADLINE, f"the job took {took:.1f} s to end (bound {DEADLINE} s): a hang")
        said = out + err
        check("rank 1" in said and ("signal 9" in said or "Killed" in said),
              f"the launcher does not name the dead rank and its signal:\n{said[-1500:]}")
        print("  " + next((l for l in said.splitlines() if "signal 9" in l or "Killed" in l), "").strip())
    else:
        job.kill()
        job.communicate()
    reached = last_train_step(run_dir)
    print(f"  the killed run had logged {reached} steps; checkpoints: "
          f"{sorted(p.name for p in (Path(run_dir) / 'checkpoints').glob('step_*'))[-2:]}")

    target = reached + 20
    resumed, _ = run(mpirun_cmd(mpirun, 2) + train + sets([f"run_dir={run_dir}", f"train.max_steps={target}",
                                                           "checkpoint_every=20", "resume=latest"]))
    check(resumed.returncode == 0, f"the 2-rank resume failed: {resumed.stderr[-2000:]}")
    check("resumed from" in resumed.stdout, "the resume does not say where it resumed from")
    check(last_train_step(run_dir) == target, f"the resumed run ends at step {last_train_step(run_dir)}, not {target}")
    steps = [json.loads(l)["step"] for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    check(steps == list(range(1, target + 1)),
          "metrics.jsonl after the resume is not one run of steps 1..N (lines past the checkpoint or a torn line kept)")
    check("metrics: dropped" in resumed.stdout, "the resume does not say it dropped the steps logged after the checkpoint")

    # 2. The same checkpoint on 1 rank: with the same global batch it continues; with another it is refused.
    one, _ = run(train + sets([f"run_dir={run_dir}", f"train.max_steps={target + 10}", "resume=latest",
                               "train.global_batch=8"]))
    check(one.returncode == 0, f"the 1-rank resume with train.global_batch=8 failed: {one.stderr[-1500:]}")
    check("resuming a checkpoint of 2 rank(s) on 1: the same global batch of 8 rows" in one.stdout,
          "the 1-rank resume does not say it continues a 2-rank run")
    other, _ = run(train + sets([f"run_dir={run_dir}", f"train.max_steps={target + 20}", "resume=latest"]))
    check(other.returncode == 1, f"resuming with another global batch exited {other.returncode}, not 1")
    check("global batch of 8 rows per step (1 rank(s)); this run has 4" in other.stderr or
          "global batch of 8 rows per step" in other.stderr, f"unclear refusal: {other.stderr}")
    check("Set train.global_batch = 8" in other.stderr, f"the refusal does not say what to set: {other.stderr}")

    # 3. Ranks with different configs (MPMD: rank 0 runs the first command, rank 1 the second).
    print("ranks with different configs")
    a = train + sets([f"run_dir={work}/mismatch", "train.max_steps=5"])
    b = train + sets([f"run_dir={work}/mismatch", "train.max_steps=5", "seed=2"])
    mismatch, took = run([mpirun, "--oversubscribe", "--allow-run-as-root", "-np", "1"] + a + [":", "-np", "1"] + b,
                         timeout=60)
    check(mismatch.returncode != 0, "different configs on the ranks were accepted")
    check("rank 1 has /seed = 2 where rank 0 has 1" in mismatch.stderr, f"the refusal does not name the key: {mismatch.stderr[-1500:]}")
    check(took < DEADLINE, f"the refusal took {took:.1f} s")

    # 4. A global batch the ranks do not divide.
    print("a global batch the ranks do not divide")
    odd, _ = run(mpirun_cmd(mpirun, 2) + train + sets([f"run_dir={work}/odd", "train.global_batch=12"]))
    check(odd.returncode != 0, "train.global_batch = 12 on 2 ranks x 4 rows was accepted")
    check("train.global_batch = 12 rows cannot be split over 2 rank(s) x train.batch_size = 4" in odd.stderr and
          "multiple of 8" in odd.stderr, f"unclear refusal: {odd.stderr[-1500:]}")

    return finish()


if __name__ == "__main__":
    sys.exit(main())

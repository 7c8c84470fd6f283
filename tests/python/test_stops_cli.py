"""test_stops_cli.py — `reftrain train` stopped the ways runs get stopped, driven as a user would.

A tiny model (hidden 32, 2 layers, byte tokenizer) trains for a long time and is stopped:
- SIGINT / SIGTERM: the step in flight finishes, a checkpoint of that step is written, the exit status is
  128 + the signal, and `--set resume=latest` continues from it;
- two SIGINTs in a row: the process ends at once, and whatever checkpoint `latest` names still loads;
- SIGKILL at 12 random moments while a checkpoint is written every step: `resume=latest` always loads a
  good checkpoint and continues;
- a checkpoint write that fails (EFBIG under a file-size limit; ENOSPC on a small tmpfs mounted in a private
  namespace, where `unshare` may): the run stops with an error naming the last good checkpoint, which stays
  intact and resumable;
- checkpoint_keep: only the newest N step_* directories stay.
Each check prints FAIL with what it saw; the exit status is 1 if any failed.
"""
import os
import json
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tiny_cli import CONFIG, check, env, finish, fresh_workdir, parse_cli, sets


def command(reftrain, run_dir, extra):
    return [reftrain, "train", "--config", CONFIG] + sets(["log_every=1", f"run_dir={run_dir}"] + extra)



def train_steps(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("kind") == "train":
            out.append(entry["step"])
    return out


def latest(run_dir):
    p = Path(run_dir) / "checkpoints" / "latest"
    return p.read_text().strip() if p.exists() else None


def wait_for_steps(run_dir, n, job, timeout=60):
    start = time.monotonic()
    while len(train_steps(run_dir)) < n and job.poll() is None and time.monotonic() - start < timeout:
        time.sleep(0.02)


def resume(reftrain, run_dir, max_steps, extra=()):
    p = subprocess.run(command(reftrain, run_dir, [f"train.max_steps={max_steps}", "resume=latest", *extra]),
                       capture_output=True, text=True, env=env(), timeout=120)
    return p


def stop_with(reftrain, work, sig, name):
    print(f"{name}: the step in flight finishes, a checkpoint is written, status {128 + sig}")
    run_dir = str(work / name)
    job = subprocess.Popen(command(reftrain, run_dir, ["train.max_steps=100000"]), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env())
    wait_for_steps(run_dir, 5, job)
    job.send_signal(sig)
    sent = time.monotonic()
    out, err = job.communicate(timeout=60)
    took = time.monotonic() - sent
    print(f"  [measured] exited {took:.2f} s after the signal with status {job.returncode}")
    check(job.returncode == 128 + sig, f"{name}: exit status {job.returncode}, expected {128 + sig}\n{err[-800:]}")
    line = next((l for l in out.splitlines() if l.startswith("stopped by")), "")
    print("  " + line)
    steps = train_steps(run_dir)
    check(line.startswith(f"stopped by {name} after step {steps[-1] if steps else -1}"),
          f"{name}: no 'stopped by {name} after step N' line matching the last logged step {steps[-1:]}")
    check(latest(run_dir) == f"step_{steps[-1]:07d}", f"{name}: latest is {latest(run_dir)}, not the last step")
    p = resume(reftrain, run_dir, steps[-1] + 3)
    check(p.returncode == 0 and f"at step {steps[-1]}" in p.stdout, f"{name}: the resume failed: {p.stderr[-800:]}")
    check(train_steps(run_dir) == list(range(1, steps[-1] + 4)), f"{name}: metrics are not steps 1..N+3 once each")


def enospc_disk_full(reftrain, work, source_run):
    """A real full disk: the run of the EFBIG check (checkpoint step 6, then resumed to 9) is copied onto a
    tmpfs with room for it and half a checkpoint more, in a private mount namespace (`unshare`, as root or in
    a user namespace). Training on from step 9 to 12 fails writing step 12 with ENOSPC: the error must name the
    cause and the intact checkpoint, nothing half-written may stay, and the run must resume from it."""
    if shutil.which("unshare") is None:
        print("  SKIP: no unshare command (util-linux); the EFBIG check above covers the same code path")
        return
    checkpoints = Path(source_run) / "checkpoints"
    one = sum(f.stat().st_size for f in (checkpoints / "step_0000009").rglob("*") if f.is_file())
    used = sum(f.stat().st_size + 4096 for f in Path(source_run).rglob("*") if f.is_file())  # a page per file at least
    size_kib = (used + one // 2) // 1024 + 16
    mnt, err, after = work / "enospc_mnt", work / "enospc.err", work / "enospc_after"
    mnt.mkdir(exist_ok=True)
    train = command(reftrain, f"{mnt}/run", ["train.max_steps=12", "checkpoint_every=3", "resume=latest",
                                              "checkpoint_keep=0"])
    script = "\n".join([
        f"mount -t tmpfs -o size={size_kib}k reftrain_enospc {mnt} || exit 77",
        f"cp -a {source_run} {mnt}/run || exit 78",
        " ".join(f"'{a}'" for a in train) + f" >/dev/null 2>{err}",
        "status=$?",
        f"cp -a {mnt}/run {after}",
        "exit $status",
    ])
    shutil.rmtree(after, ignore_errors=True)
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    p = subprocess.run(unshare + ["sh", "-c", script], capture_output=True, text=True, env=env(), timeout=180)
    if p.returncode in (77, 78) or (p.returncode != 0 and not err.exists()):
        print(f"  SKIP: no private tmpfs here ({(p.stderr or '').strip()[:200]}); the EFBIG check above covers the "
              "same code path")
        return
    text = err.read_text().strip() if err.exists() else ""
    print(f"  [measured] tmpfs of {size_kib} KiB, a checkpoint is {one // 1024} KiB: exit {p.returncode}")
    print("  " + text[-300:])
    check(p.returncode == 1, f"the write on a full disk exited {p.returncode}, not 1")
    check("could not write checkpoint" in text and "No space left on device" in text
          and "step_0000009, is intact" in text, f"the error does not say what failed and which checkpoint is intact: {text[-800:]}")
    check(latest(after) == "step_0000009", f"latest is {latest(after)} after the failed write")
    check(not (after / "checkpoints" / "step_0000012").exists(), "the half-written step_0000012 was left")
    check(not (after / "checkpoints" / "step_0000012.tmp").exists(), "the unfinished step_0000012.tmp was left")
    p = resume(reftrain, str(after), 10)
    check(p.returncode == 0, f"resume from the intact checkpoint after the full disk failed: {p.stderr[-800:]}")


def main():
    args = parse_cli()
    work = fresh_workdir(args)
    reftrain = args.reftrain

    stop_with(reftrain, work, signal.SIGINT, "SIGINT")
    stop_with(reftrain, work, signal.SIGTERM, "SIGTERM")

    print("two SIGINTs: the second ends the process at once")
    run_dir = str(work / "twice")
    job = subprocess.Popen(command(reftrain, run_dir, ["train.max_steps=100000", "checkpoint_every=1"]),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    wait_for_steps(run_dir, 5, job)
    job.send_signal(signal.SIGINT)
    job.send_signal(signal.SIGINT)
    job.communicate(timeout=60)
    check(job.returncode in (-signal.SIGINT, 128 + signal.SIGINT), f"status {job.returncode} after two SIGINTs")
    p = resume(reftrain, run_dir, len(train_steps(run_dir)) + 2)
    check(p.returncode == 0, f"after two SIGINTs, resume=latest failed: {p.stderr[-800:]}")

    print("SIGKILL at 12 random moments, a checkpoint every step")
    rng = random.Random(1)
    run_dir = str(work / "killed")
    held = 0
    for i in range(12):
        job = subprocess.Popen(command(reftrain, run_dir, ["train.max_steps=100000", "checkpoint_every=1",
                                                           "checkpoint_keep=2"] + (["resume=latest"] if i else [])),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
        wait_for_steps(run_dir, 2, job)
        time.sleep(rng.uniform(0.0, 0.4))
        job.kill()
        job.communicate()
        last = latest(run_dir)
        p = resume(reftrain, run_dir, int(last[5:]) + 1 if last else 1, ["checkpoint_every=1", "checkpoint_keep=2"])
        held += p.returncode == 0
        check(p.returncode == 0, f"kill {i + 1}: resume=latest failed after latest={last}: {p.stderr[-600:]}")
    print(f"  [measured] {held} of 12 kills resumed from a good checkpoint")

    print("a checkpoint write that fails (EFBIG under a 64 KiB file-size limit)")
    run_dir = str(work / "full")
    p = subprocess.run(command(reftrain, run_dir, ["train.max_steps=6", "checkpoint_every=3"]), capture_output=True,
                       text=True, env=env(), timeout=120)
    check(p.returncode == 0, f"the 6-step run failed: {p.stderr[-800:]}")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    p = subprocess.run(command(reftrain, run_dir, ["train.max_steps=9", "resume=latest"]), capture_output=True,
                       text=True, env=env(), timeout=120, preexec_fn=limit_file_size)
    check(p.returncode == 1, f"the write past the limit exited {p.returncode}, not 1")
    err = p.stderr.strip()
    print("  " + err[:300])
    check("could not write checkpoint" in err and "File too large" in err and "step_0000006, is intact" in err,
          f"the error does not say what failed and which checkpoint is intact: {err[-800:]}")
    check(latest(run_dir) == "step_0000006", f"latest is {latest(run_dir)} after the failed write")
    check(not (Path(run_dir) / "checkpoints" / "step_0000009").exists(), "the half-written step_0000009 was left")
    check(not (Path(run_dir) / "checkpoints" / "step_0000009.tmp").exists(), "the unfinished step_0000009.tmp was left")
    p = resume(reftrain, run_dir, 9)
    check(p.returncode == 0, f"resume from the intact checkpoint failed: {p.stderr[-800:]}")

    print("a checkpoint write that fails for lack of space (ENOSPC on a tmpfs that holds the run and half a checkpoint)")
    enospc_disk_full(reftrain, work, run_dir)

    print("checkpoint_keep")
    for keep, want in ((3, ["step_0000008", "step_0000010", "step_0000012"]), (0, [f"step_{s:07d}" for s in range(2, 13, 2)])):
        run_dir = str(work / f"keep{keep}")
        p = subprocess.run(command(reftrain, run_dir, ["train.max_steps=12", "checkpoint_every=2", f"checkpoint_keep={keep}"]),
                           capture_output=True, text=True, env=env(), timeout=120)
        kept = sorted(d.name for d in (Path(run_dir) / "checkpoints").glob("step_*"))
        check(p.returncode == 0 and kept == want, f"checkpoint_keep={keep}: kept {kept}, expected {want}")

    print("checkpoint_keep_best: the lowest validation loss stays, however old")
    run_dir = str(work / "best")
    # lr 0.3 (constant) makes this tiny model's validation loss go up and down: here the best is step 36, not 40.
    extra = ["train.max_steps=40", "checkpoint_every=4", "eval.every=4", "checkpoint_keep=1", "checkpoint_keep_best=true",
             "data.val_examples=40", "schedule.lr=0.3", "eval.samples=0"]
    p = subprocess.run(command(reftrain, run_dir, extra), capture_output=True, text=True, env=env(), timeout=300)
    evals = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    best_eval = min(evals, key=lambda e: e["val_loss"]) if evals else {"step": -1}
    record = json.loads((Path(run_dir) / "checkpoints" / "best.json").read_text()) if p.returncode == 0 else {}
    kept = sorted(d.name for d in (Path(run_dir) / "checkpoints").glob("step_*"))
    print(f"  [measured] best val loss {best_eval.get('val_loss')} at step {best_eval['step']}; kept {kept}")
    check(p.returncode == 0, f"the keep-best run failed: {p.stderr[-600:]}")
    check(record.get("step") == best_eval["step"], f"best.json says step {record.get('step')}, the evals {best_eval['step']}")
    check(kept == sorted({f"step_{best_eval['step']:07d}", "step_0000040"}), f"kept {kept}")

    return finish()


if __name__ == "__main__":
    sys.exit(main())

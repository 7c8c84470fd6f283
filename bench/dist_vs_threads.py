"""dist_vs_threads.py — data parallel on one machine: 2 ranks x 1 thread against 1 rank x 2 threads.

Both train the same run (same model, seed, global batch of B rows per step) with `reftrain train`:
  peer:  1 process, OpenMP 2 threads, train.batch_size = B
  ranks: mpirun -np 2, 1 thread each, train.batch_size = B / 2 (the global batch is the same)
and the script prints, per model size, tokens/s of each (median step time over the steps after warm-up,
alternating the two for `--rounds` rounds), their ratio, and the all-reduce's share of the 2-rank step
(metrics.jsonl's allreduce_seconds / seconds). On one machine the all-reduce goes through shared memory;
across hosts it is the network (docs/distributed.md).

    .venv/bin/python bench/dist_vs_threads.py --reftrain build/reftrain [--steps 200] [--rounds 2]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "addition.json")

# name, model overrides, global batch rows, seq_len
SIZES = [
    ("d=128, 2 layers", [], 48, 64),
    ("d=256, 4 layers", ["model.hidden_size=256", "model.intermediate_size=768",
                                        "model.num_hidden_layers=4", "model.num_attention_heads=8",
                                        "model.num_key_value_heads=4", "model.head_dim=32"], 32, 64),
]


def run(cmd, env):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout


def steps_of(run_dir, warmup):
    lines = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in lines if l["kind"] == "train"][warmup:]
    return steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reftrain", default=str(REPO / "build" / "reftrain"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        sys.exit("no mpirun: scripts/setup.sh installs openmpi-bin")
    work = Path(tempfile.mkdtemp(prefix="reftrain_dist_bench_"))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    warmup = 10
    print(f"{'model, global batch rows x seq_len':<58} {'1 rank x 2 thr tok/s':>21} {'2 ranks x 1 thr tok/s':>22} {'ratio':>7} {'all-reduce share':>17}")
    for name, model, rows, seq in SIZES:
        common = model + [f"train.seq_len={seq}", f"train.max_steps={args.steps}", "eval.every=0",
                          "eval.exact_match_examples=0", "eval.final_test=false", "data.val_examples=0",
                          "data.test_examples=0", "log_every=100000", "schedule.warmup_steps=5",
                          "data.tokenizer=byte", f"model.max_position_embeddings={max(64, seq)}"]
        peer_tps, rank_tps, shares = [], [], []
        for r in range(args.rounds):
            one = work / f"one_{r}"
            sets = common + [f"run_dir={one}", "threads=2", f"train.batch_size={rows}"]
            log = run([args.reftrain, "train", "--config", CONFIG] + sum((["--set", s] for s in sets), []),
                      dict(env, OMP_NUM_THREADS="2"))
            params = int(re.search(r"model: (\d+) parameters", log).group(1))
            steps = steps_of(one, warmup)
            peer_tps.append(steps[0]["tokens"] / statistics.median(s["seconds"] for s in steps))

            two = work / f"two_{r}"
            sets = common + [f"run_dir={two}", "threads=1", f"train.batch_size={rows // 2}"]
            run([mpirun, "-np", "2", "--oversubscribe", "--allow-run-as-root", "--bind-to", "core", args.reftrain, "train",
                 "--config", CONFIG] + sum((["--set", s] for s in sets), []), dict(env, OMP_NUM_THREADS="1"))
            steps = steps_of(two, warmup)
            rank_tps.append(steps[0]["tokens"] / statistics.median(s["seconds"] for s in steps))
            shares.append(statistics.median(s["allreduce_seconds"] / s["seconds"] for s in steps))
        a, b = statistics.median(peer_tps), statistics.median(rank_tps)
        name = f"{name}, {params / 1e6:.2f}M params, {rows} x {seq}"
        print(f"{name:<58} {a:>21.0f} {b:>22.0f} {b / a:>6.2f}x {100 * statistics.median(shares):>16.1f}%")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

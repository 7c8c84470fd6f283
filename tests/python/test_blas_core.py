"""test_blas_core.py — which OpenBLAS kernels a run uses, and that it says so (kernels/cpu/blas.h).

The core is chosen once per process, before OpenBLAS initialises, so it is tested across processes:
- with OPENBLAS_CORETYPE unset, `reftrain train` and `reftrain demo` print a `blas:` line naming the
  core chosen from the CPU flags (on this x86 machine: AVX-512 -> SkylakeX/Cooperlake, AVX2 -> Haswell);
- a user's OPENBLAS_CORETYPE wins and is named as coming from the environment (Haswell, and the SSE3
  Prescott core that Debian's 0.3.21 falls back to on CPUs it does not know);
- determinism: two runs with the same core give bitwise-equal losses; another core gives losses within
  fp32 rounding of them (different kernels sum in another order), never silently the same file.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
    "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.head_dim=8",
    "model.max_position_embeddings=64", "data.tokenizer=byte", "data.train_examples=300",
    "data.val_examples=20", "data.test_examples=20", "train.batch_size=4", "train.seq_len=48",
    "train.max_steps=4", "schedule.warmup_steps=2", "eval.every=0", "eval.exact_match_examples=5", "threads=1",
    "log_every=1",
]
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def cpu_flags():
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def expected_core(flags):
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags
    if avx512 and "avx512_bf16" in flags:
        return "Cooperlake"
    if avx512:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    if "avx" in flags:
        return "Sandybridge"
    return None


def run(reftrain, args, core=None):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if core:
        env["OPENBLAS_CORETYPE"] = core
    p = subprocess.run([reftrain] + args, capture_output=True, text=True, env=env, timeout=300)
    if p.returncode != 0:
        raise SystemExit(f"reftrain {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def blas_line(stdout):
    lines = [l for l in stdout.splitlines() if l.startswith("blas: ")]
    return lines[0] if len(lines) == 1 else None


def train_losses(reftrain, workdir, name, core):
    run_dir = workdir / name
    shutil.rmtree(run_dir, ignore_errors=True)
    out = run(reftrain, ["train", "--config", str(REPO / "configs" / "addition.json"), "--set", f"run_dir={run_dir}"]
              + [a for s in TINY for a in ("--set", s)], core)
    losses = [json.loads(l)["loss"] for l in open(run_dir / "metrics.jsonl") if '"kind":"train"' in l]
    return out, losses


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reftrain", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if os.uname().machine != "x86_64":
        print("skipped: the core is chosen from x86 flags only")
        return 77
    want = expected_core(cpu_flags())

    # 1. Unset: chosen from the flags, and said so by train and demo alike.
    out, auto = train_losses(args.reftrain, workdir, "auto", None)
    line = blas_line(out)
    check(line is not None, f"train prints one blas: line ({line})")
    if want:
        check(line is not None and f"core {want} (chosen from the CPU flags:" in line,
              f"unset OPENBLAS_CORETYPE -> core {want} chosen from the flags: {line}")
    check(line is not None and re.search(r"OpenBLAS \d+\.\d+\.\d+ \(OpenMP\)", line) is not None,
          f"the line names OpenBLAS's version and threading: {line}")
    check(line is not None and line.endswith(", 1 threads"), f"the line gives the thread count (threads=1): {line}")
    demo = blas_line(run(args.reftrain, ["demo", "--steps", "2", "--batch-size", "2", "--seq-len", "16"]))
    check(demo is not None and want is not None and f"core {want}" in demo, f"demo prints the same core: {demo}")

    # 2. The user's choice wins, and is named as theirs.
    for core in ["Prescott"] + (["Haswell"] if {"avx2", "fma"} <= cpu_flags() else []):
        out, losses = train_losses(args.reftrain, workdir, core, core)
        line = blas_line(out)
        check(line is not None and f"core {core} (OPENBLAS_CORETYPE={core} from the environment)" in line,
              f"OPENBLAS_CORETYPE={core} is used and named: {line}")
        # Other kernels: same run within fp32 rounding, not necessarily the same bits.
        close = len(losses) == len(auto) and all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(auto, losses))
        check(close, f"{core}: losses within 1e-4 relative of the {want} run: {losses} vs {auto}")

    # 3. Same core, same bits.
    _, again = train_losses(args.reftrain, workdir, "auto_again", None)
    check(again == auto, f"two runs with the chosen core give bitwise-equal losses: {again} vs {auto}")
    # An unknown core name is not silently accepted: OpenBLAS falls back, and the line warns.
    line = blas_line(run(args.reftrain, ["demo", "--steps", "2", "--batch-size", "2", "--seq-len", "16"], "NoSuchCore"))
    check(line is not None and "WARNING: asked for NoSuchCore" in line, f"an unknown core name is warned about: {line}")

    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

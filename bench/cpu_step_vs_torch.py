#!/usr/bin/env python3
"""cpu_step_vs_torch.py — reftrain's CPU training step against the PyTorch mirror, in one run.

Times forward + backward + AdamW of the tiny config (V=512, d=128, 4 layers, 4 heads, 2 KV heads,
head_dim 32, ffn 384, T=128, B=16, fp32) with the same thread count on both sides, alternating the
two a few rounds so that machine noise hits both alike, and prints:
  - tokens/s of each (median over rounds) and the ratio reftrain / PyTorch,
  - the model FLOP rate of each as a fraction of this machine's sgemm rate (1024^3, same threads).

Usage:  bench/cpu_step_vs_torch.py [--build build] [--threads 2] [--rounds 3] [--python .venv/bin/python]
        [--sdpa] [--compile]  (the last two are passed to the PyTorch peer; both need PyTorch >= 2)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_reftrain(build, threads):
    out = subprocess.run(
        [os.path.join(build, "bench_cpu_step"), "--benchmark_format=json",
         f"--benchmark_filter=BM_TinyTrainingStep/{threads}/|BM_Sgemm/{threads}/"],
        check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads))).stdout
    results = {b["name"].split("/")[0]: b for b in json.loads(out)["benchmarks"]}
    step = results["BM_TinyTrainingStep"]
    return step["tokens_per_s"], step["flops"], results["BM_Sgemm"]["flops"]


def run_torch(python, threads, extra):
    cmd = [python, os.path.join(ROOT, "bench", "torch_step.py"), "--threads", str(threads)] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(threads))).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    default_python = os.path.join(ROOT, ".venv", "bin", "python")
    p.add_argument("--python", default=default_python if os.path.exists(default_python) else sys.executable)
    p.add_argument("--sdpa", action="store_true")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    extra = (["--sdpa"] if args.sdpa else []) + (["--compile"] if args.compile else [])

    ours, theirs, sgemm, flops_per_token = [], [], [], None
    torch_version = "?"
    for r in range(args.rounds):
        tok, flops_rate, sgemm_rate = run_reftrain(args.build, args.threads)
        ours.append(tok)
        sgemm.append(sgemm_rate)
        flops_per_token = flops_rate / tok
        peer = run_torch(args.python, args.threads, extra)
        theirs.append(peer["tokens_per_s"])
        torch_version = peer.get("torch_version", "?")
        print(f"round {r + 1}: reftrain {tok:9.0f} tok/s   pytorch {peer['tokens_per_s']:9.0f} tok/s", flush=True)

    ours_m, theirs_m, sgemm_m = statistics.median(ours), statistics.median(theirs), statistics.median(sgemm)
    print()
    print(f"tiny config training step, fp32, {args.threads} threads, median of {args.rounds} rounds")
    print(f"  reftrain        {ours_m:10.0f} tokens/s   {ours_m * flops_per_token / 1e9:6.1f} GFLOP/s"
          f"   {ours_m * flops_per_token / sgemm_m:6.1%} of sgemm")
    print(f"  pytorch {torch_version:8s}{theirs_m:10.0f} tokens/s   {theirs_m * flops_per_token / 1e9:6.1f} GFLOP/s"
          f"   {theirs_m * flops_per_token / sgemm_m:6.1%} of sgemm")
    print(f"  sgemm 1024^3    {sgemm_m / 1e9:10.1f} GFLOP/s (OpenBLAS, {args.threads} threads)")
    print(f"  ratio reftrain / pytorch = {ours_m / theirs_m:.2f}x")
    print(json.dumps({"bench": "cpu_step_vs_torch", "threads": args.threads, "reftrain_tokens_per_s": ours_m,
                      "pytorch_tokens_per_s": theirs_m, "torch_version": torch_version,
                      "ratio": ours_m / theirs_m, "sgemm_flops": sgemm_m, "model_flops_per_token": flops_per_token,
                      "reftrain_fraction_of_sgemm": ours_m * flops_per_token / sgemm_m}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""cpu_step_vs_torch.py — reftrain's CPU training step against the PyTorch mirror, in one run.

Times forward + backward + AdamW of the tiny config (V=512, d=128, 4 layers, 4 heads, 2 KV heads,
head_dim 32, ffn 384, T=128, B=16, fp32) with the same thread count on both sides, alternating the
two a few rounds so that machine noise hits both alike, and prints:
  - the BLAS in use on each side (OpenBLAS version and core; PyTorch's build: MKL or OpenBLAS),
  - tokens/s of each (median over rounds) and the ratio reftrain / PyTorch,
  - the model FLOP rate of each as a fraction of this machine's PHYSICAL LIMIT: the best sgemm rate it
    reaches (1024^3, same threads), over every OpenBLAS core this CPU's flags allow (each timed in its
    own process with OPENBLAS_CORETYPE) and PyTorch's own matmul. Never the rate of the kernel in use:
    with a crippled kernel (OPENBLAS_CORETYPE=Prescott) the fraction must drop, not hide it.

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


def run_bench(build, threads, pattern, core=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if core is not None:
        env["OPENBLAS_CORETYPE"] = core
    out = subprocess.run(
        [os.path.join(build, "bench_cpu_step"), "--benchmark_format=json", f"--benchmark_filter={pattern}"],
        check=True, capture_output=True, text=True, env=env).stdout
    report = json.loads(out)
    return {b["name"].split("/")[0]: b for b in report["benchmarks"]}, report["context"]


def run_reftrain(build, threads):
    results, context = run_bench(build, threads, f"BM_TinyTrainingStep/{threads}/|BM_Sgemm/{threads}/")
    step = results["BM_TinyTrainingStep"]
    return step["tokens_per_s"], step["flops"], results["BM_Sgemm"]["flops"], context


# OpenBLAS x86 cores from the newest instruction set down, with the CPU flags each needs (Linux names).
OPENBLAS_CORES = [("Cooperlake", {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"}),
                  ("SkylakeX", {"avx512f", "avx512bw", "avx512dq", "avx512vl"}),
                  ("Haswell", {"avx2", "fma"}), ("Zen", {"avx2", "fma"}), ("Sandybridge", {"avx"})]


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_sgemm_by_core(build, threads):
    """{core: sgemm FLOP/s} for every OpenBLAS core this CPU can run, each in its own process."""
    flags, rates = cpu_flags(), {}
    for core, needs in OPENBLAS_CORES:
        if not needs <= flags:
            continue
        results, context = run_bench(build, threads, f"BM_Sgemm/{threads}/", core)
        if context.get("blas_core", "").lower() != core.lower():
            continue  # this OpenBLAS lacks the core (it fell back to another): not a candidate
        rates[core] = results["BM_Sgemm"]["flops"]
    return rates


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

    ours, theirs, sgemm, torch_sgemm, flops_per_token = [], [], [], [], None
    torch_version, context, torch_blas = "?", {}, []
    for r in range(args.rounds):
        tok, flops_rate, sgemm_rate, context = run_reftrain(args.build, args.threads)
        ours.append(tok)
        sgemm.append(sgemm_rate)
        flops_per_token = flops_rate / tok
        peer = run_torch(args.python, args.threads, extra + ["--sgemm"])
        theirs.append(peer["tokens_per_s"])
        torch_sgemm.append(peer.get("sgemm_flops") or 0.0)
        torch_version = peer.get("torch_version", "?")
        torch_blas = peer.get("blas") or []
        print(f"round {r + 1}: reftrain {tok:9.0f} tok/s   pytorch {peer['tokens_per_s']:9.0f} tok/s", flush=True)
    by_core = openblas_sgemm_by_core(args.build, args.threads)

    ours_m, theirs_m, sgemm_m = statistics.median(ours), statistics.median(theirs), statistics.median(sgemm)
    torch_sgemm_m = statistics.median(torch_sgemm)
    candidates = {f"OpenBLAS {core}": rate for core, rate in by_core.items()}
    candidates[f"OpenBLAS in use ({context.get('blas_core', '?')})"] = sgemm_m
    candidates[f"PyTorch {torch_version} matmul"] = torch_sgemm_m
    limit_name, limit = max(candidates.items(), key=lambda kv: kv[1])
    mkl = [line.strip().lstrip("- ")[:60] for line in torch_blas
           if ("MKL" in line or "oneDNN" in line or "OpenBLAS" in line) and "Build settings" not in line]
    print()
    print(f"blas: reftrain {context.get('blas', '?')}")
    print(f"blas: pytorch {torch_version}: {'; '.join(mkl) if mkl else '?'}")
    print(f"sgemm 1024^3, {args.threads} threads: " +
          ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in candidates.items()) + " GFLOP/s")
    print(f"physical limit: {limit / 1e9:.1f} GFLOP/s ({limit_name}, the best of the above)")
    print()
    print(f"tiny config training step, fp32, {args.threads} threads, median of {args.rounds} rounds")
    print(f"  reftrain        {ours_m:10.0f} tokens/s   {ours_m * flops_per_token / 1e9:6.1f} GFLOP/s"
          f"   {ours_m * flops_per_token / limit:6.1%} of the physical limit")
    print(f"  pytorch {torch_version:8s}{theirs_m:10.0f} tokens/s   {theirs_m * flops_per_token / 1e9:6.1f} GFLOP/s"
          f"   {theirs_m * flops_per_token / limit:6.1%} of the physical limit")
    print(f"  ratio reftrain / pytorch = {ours_m / theirs_m:.2f}x")
    print(json.dumps({"bench": "cpu_step_vs_torch", "threads": args.threads, "reftrain_tokens_per_s": ours_m,
                      "pytorch_tokens_per_s": theirs_m, "torch_version": torch_version,
                      "ratio": ours_m / theirs_m, "blas": context.get("blas"), "blas_core": context.get("blas_core"),
                      "sgemm_flops_in_use": sgemm_m, "sgemm_flops_by_core": by_core,
                      "torch_sgemm_flops": torch_sgemm_m, "physical_limit_flops": limit,
                      "physical_limit_source": limit_name, "model_flops_per_token": flops_per_token,
                      "reftrain_fraction_of_limit": ours_m * flops_per_token / limit,
                      "pytorch_fraction_of_limit": theirs_m * flops_per_token / limit}))


if __name__ == "__main__":
    main()

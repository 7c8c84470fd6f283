#!/usr/bin/env python3
"""cpu_step_vs_torch.py — reftrain's CPU training step against PyTorch eager and torch.compile, in one run.

Times forward + backward + AdamW of the tiny config (V=512, d=128, 4 layers, 4 heads, 2 KV heads,
head_dim 32, ffn 384, T=128, B=16, fp32) with the same thread count on every side, alternating the
programs round by round (the order flipped every round) so that machine noise hits them alike, and
prints:
  - the BLAS in use on each side (OpenBLAS version and core; PyTorch's build: MKL or OpenBLAS),
  - tokens/s of reftrain, PyTorch eager and torch.compile (medians over rounds), and the ratios,
  - the model FLOP rate of each as a fraction of this machine's PHYSICAL LIMIT: the best sgemm rate it
    reaches (1024^3, same threads), over every OpenBLAS core this CPU's flags allow (each timed in its
    own process with OPENBLAS_CORETYPE) and PyTorch's own matmul. Never the rate of the kernel in use:
    with a crippled kernel (OPENBLAS_CORETYPE=Prescott) the fraction must drop, not hide it,
  - the NaN tracer's overhead: reftrain's step with the tracer on / off, both in one process each
    round (bench_tracer), the median of the per-round ratios,
  - where reftrain's step spends its time: the per-op table (bench_cpu_step --op_table),
  - the issue's targets with PASS/MISS and the margin.

The PyTorch peer is bench/torch_gpu_step.py on the CPU: a compact Qwen3-style model written the way a
PyTorch user writes it (F.scaled_dot_product_attention with is_causal, fused AdamW where the version
has it), checked against the mirror by its --dry-run. On a PyTorch without SDPA or torch.compile (Debian's
1.13) the eager peer uses explicit attention and the compile peer reports its error.

Usage:  bench/cpu_step_vs_torch.py [--build build] [--threads 2] [--rounds 3] [--python PY]
                                   [--modes eager,compile] [--steps 20] [--json-out FILE]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The targets (issue 21).
TARGET_EAGER, TARGET_COMPILE, TARGET_LIMIT, TARGET_TRACER = 1.2, 1.0, 0.50, 0.05


def run_json(cmd, env):
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)


def bench_env(threads, core=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if core is not None:
        env["OPENBLAS_CORETYPE"] = core
    return env


def run_bench(build, threads, pattern, core=None):
    report = run_json([os.path.join(build, "bench_cpu_step"), "--benchmark_format=json",
                       f"--benchmark_filter={pattern}"], bench_env(threads, core))
    return {b["name"].split("/")[0]: b for b in report["benchmarks"]}, report["context"]


def run_reftrain(build, threads):
    results, context = run_bench(build, threads, f"BM_TinyTrainingStep/{threads}/|BM_Sgemm/{threads}/")
    step = results["BM_TinyTrainingStep"]
    return step["tokens_per_s"], step["flops"], results["BM_Sgemm"]["flops"], context


def run_tracer(build, threads):
    """Step time with the tracer on / off, from one bench_tracer process (the pair shares its noise):
    the ratio from its last line, "tracer overhead, N threads: A ms -> B ms per step, ratio R (...)"."""
    out = subprocess.run([os.path.join(build, "bench_tracer"), f"--benchmark_filter=BM_TinyStepTracer/threads:{threads}/"],
                         check=True, capture_output=True, text=True, env=bench_env(threads)).stdout
    for line in re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines():  # the console reporter's colours off
        if line.startswith(f"tracer overhead, {threads} thread"):
            return float(line.split("ratio ")[1].split()[0])
    raise SystemExit(f"cpu_step_vs_torch: bench_tracer printed no overhead line:\n{out[-2000:]}")


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


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


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


def run_torch(python, threads, modes, steps):
    """{mode: result line} of bench/torch_gpu_step.py on the CPU, plus "sgemm" (its matmul rate)."""
    cmd = [python, os.path.join(ROOT, "bench", "torch_gpu_step.py"), "--device", "cpu", "--threads", str(threads),
           "--precision", "fp32", "--max-norm", "0", "--modes", ",".join(modes), "--steps", str(steps),
           "--vocab-size", "512", "--hidden-size", "128", "--layers", "4", "--heads", "4", "--kv-heads", "2",
           "--head-dim", "32", "--intermediate-size", "384", "--seq-len", "128", "--batch-size", "16", "--sgemm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=bench_env(threads))
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[r.get("mode", "sgemm")] = r
    if "sgemm" not in out:
        raise SystemExit(f"cpu_step_vs_torch: the PyTorch peer failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return out


def verdict(value, target, higher_is_better=True):
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    default_python = os.path.join(ROOT, ".venv", "bin", "python")
    p.add_argument("--python", default=default_python if os.path.exists(default_python) else sys.executable)
    p.add_argument("--modes", default="eager,compile", help="PyTorch peers: eager, compile")
    p.add_argument("--steps", type=int, default=20, help="timed PyTorch steps per round")
    p.add_argument("--no-tracer", action="store_true", help="skip the tracer overhead rounds")
    p.add_argument("--op-table-steps", type=int, default=20)
    p.add_argument("--json-out", help="also write the summary JSON here")
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    ours, sgemm, tracer_ratios, flops_per_token, context = [], [], [], None, {}
    theirs = {m: [] for m in modes}
    errors, torch_sgemm, torch_version, torch_blas = {}, [], "?", []
    for r in range(args.rounds):
        def reftrain_round():
            nonlocal flops_per_token, context
            tok, flops_rate, sgemm_rate, context = run_reftrain(args.build, args.threads)
            ours.append(tok)
            sgemm.append(sgemm_rate)
            flops_per_token = flops_rate / tok
            if not args.no_tracer:
                tracer_ratios.append(run_tracer(args.build, args.threads))

        def torch_round():
            nonlocal torch_version, torch_blas
            peer = run_torch(args.python, args.threads, modes, args.steps)
            torch_sgemm.append(peer["sgemm"]["sgemm_flops"])
            torch_version = peer["sgemm"].get("torch_version", "?")
            torch_blas = peer["sgemm"].get("blas") or []
            for m in modes:
                res = peer.get(m, {"error": "no result"})
                if res.get("error"):
                    errors[m] = res["error"]
                else:
                    theirs[m].append(res["tokens_per_s"])

        for run in ((reftrain_round, torch_round) if r % 2 == 0 else (torch_round, reftrain_round)):
            run()
        line = f"round {r + 1}: reftrain {ours[-1]:9.0f} tok/s"
        for m in modes:
            line += f"   pytorch {m} {theirs[m][-1]:9.0f} tok/s" if theirs[m] and len(theirs[m]) == r + 1 else f"   pytorch {m} failed"
        if tracer_ratios:
            line += f"   tracer on/off {tracer_ratios[-1]:.3f}"
        print(line, flush=True)
    by_core = openblas_sgemm_by_core(args.build, args.threads)
    op_table = subprocess.run([os.path.join(args.build, "bench_cpu_step"), f"--op_table={args.op_table_steps}"],
                              check=True, capture_output=True, text=True, env=bench_env(args.threads)).stdout

    ours_m, sgemm_m = statistics.median(ours), statistics.median(sgemm)
    theirs_m = {m: statistics.median(v) for m, v in theirs.items() if v}
    candidates = {f"OpenBLAS {core}": rate for core, rate in by_core.items()}
    candidates[f"OpenBLAS in use ({context.get('blas_core', '?')})"] = sgemm_m
    candidates[f"PyTorch {torch_version} matmul"] = statistics.median(torch_sgemm)
    limit_name, limit = max(candidates.items(), key=lambda kv: kv[1])
    mkl = [line.strip().lstrip("- ")[:60] for line in torch_blas
           if ("MKL" in line or "oneDNN" in line or "OpenBLAS" in line) and "Build settings" not in line]
    print()
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical CPUs")
    print(f"blas: reftrain {context.get('blas', '?')}")
    print(f"blas: pytorch {torch_version}: {'; '.join(mkl) if mkl else '?'}")
    print(f"sgemm 1024^3, {args.threads} threads: " +
          ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in candidates.items()) + " GFLOP/s")
    print(f"physical limit: {limit / 1e9:.1f} GFLOP/s ({limit_name}, the best of the above)")
    print()
    print(f"tiny config training step, fp32, {args.threads} threads, median of {args.rounds} rounds "
          f"({flops_per_token / 1e6:.2f} MFLOP per token)")

    def row(name, tok):
        print(f"  {name:24s}{tok:10.0f} tokens/s   {tok * flops_per_token / 1e9:6.1f} GFLOP/s"
              f"   {tok * flops_per_token / limit:6.1%} of the physical limit")

    row("reftrain", ours_m)
    for m in modes:
        if m in theirs_m:
            row(f"pytorch {torch_version.split('+')[0]} {m}", theirs_m[m])
        else:
            print(f"  pytorch {m}: no result ({errors.get(m, '?')[:200]})")
    print()
    print("where reftrain's step goes:")
    print(op_table.rstrip())
    print()
    print("targets:")
    summary = {"bench": "cpu_step_vs_torch", "cpu": cpu_model(), "threads": args.threads, "rounds": args.rounds,
               "reftrain_tokens_per_s": ours_m, "reftrain_rounds": ours, "torch_version": torch_version,
               "pytorch_tokens_per_s": theirs_m, "pytorch_rounds": theirs, "pytorch_errors": errors,
               "blas": context.get("blas"), "blas_core": context.get("blas_core"), "sgemm_flops_in_use": sgemm_m,
               "sgemm_flops_by_core": by_core, "torch_sgemm_flops": statistics.median(torch_sgemm),
               "physical_limit_flops": limit, "physical_limit_source": limit_name,
               "model_flops_per_token": flops_per_token,
               "reftrain_fraction_of_limit": ours_m * flops_per_token / limit}
    for m, target in (("eager", TARGET_EAGER), ("compile", TARGET_COMPILE)):
        if m in theirs_m:
            ratio = ours_m / theirs_m[m]
            summary[f"ratio_{m}"] = ratio
            print(f"  reftrain / pytorch {m:8s} = {ratio:5.2f}x   target >= {target:.1f}x: "
                  f"{verdict(ratio, target)} ({ratio / target - 1:+.0%})")
    fraction = summary["reftrain_fraction_of_limit"]
    print(f"  reftrain / physical limit = {fraction:5.1%}   target >= {TARGET_LIMIT:.0%}: "
          f"{verdict(fraction, TARGET_LIMIT)} ({fraction / TARGET_LIMIT - 1:+.0%})")
    if tracer_ratios:
        overhead = statistics.median(tracer_ratios) - 1.0
        summary["tracer_ratios"] = tracer_ratios
        summary["tracer_overhead"] = overhead
        print(f"  tracer overhead (median of per-round on/off ratios: "
              f"{', '.join(f'{x:.3f}' for x in tracer_ratios)}) = {overhead:+.1%}   target <= +{TARGET_TRACER:.0%}: "
              f"{verdict(overhead, TARGET_TRACER, higher_is_better=False)}")
    print(json.dumps(summary))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()

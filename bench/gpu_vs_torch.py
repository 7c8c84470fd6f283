#!/usr/bin/env python3
"""gpu_vs_torch.py — reftrain's GPU training step against PyTorch (eager and torch.compile), in one run.

Times forward + backward + clipping + AdamW of the 135M config (V=32768, d=768, 12 layers, 12 heads,
12 KV heads, head_dim 64, ffn 2048, QK-norm, untied lm_head, T=1024, B=16, bf16) on the same GPU:
  - reftrain: build/bench_gpu_step (Google Benchmark, JSON): native bf16, tracer off and on, with the
    trainer's default deterministic mode and without it;
  - PyTorch: bench/torch_gpu_step.py, bf16 autocast, SDPA, fused AdamW, clip_grad_norm_, modes eager
    and compile (torch.compile of the model).
The two programs alternate round by round (the order flips every round) so that drift of the machine
hits both; each reports the median step of its round, and the table shows the median over rounds.

Printed: tokens/s, step ms, MFU and peak memory of each, then the issue's two targets with PASS/MISS
and the margin:
  - reftrain (tracer on) / torch.compile tokens/s >= 0.8;
  - tracer overhead (step time with the tracer on / off - 1) < 5%.

FLOPs per token (both programs use it; see their headers): 6 * N_matmul + 12 * L * Hq * head_dim * T,
N_matmul = layer projections + output matrix; MFU against --peak-tflops (default 989.4, H100 SXM dense
BF16).

Usage:  bench/gpu_vs_torch.py [--build build] [--python python3] [--rounds 2] [--steps 20] [--warmup 5]
        [--modes eager,compile] [--deterministic both|on|off] [--json-out FILE]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H100_BF16_DENSE_TFLOPS = 989.4
RATIO_TARGET = 0.8
TRACER_OVERHEAD_TARGET = 0.05
NAME_RE = re.compile(r"BM_GpuTrainStep/(?P<precision>\w+)/tracer:(?P<tracer>[01])/deterministic:(?P<det>[01])")


def tail(text, n=3000):
    return text if len(text) <= n else "..." + text[-n:]


def run_reftrain(args):
    """One run of bench_gpu_step; returns {key: row} with key like 'reftrain bf16 tracer:1 det:1'."""
    det = {"both": "[01]", "on": "1", "off": "0"}[args.deterministic]
    precisions = "bf16|f32" if args.f32 else "bf16"
    cmd = [os.path.join(args.build, "bench_gpu_step"), "--benchmark_format=json",
           f"--benchmark_filter=BM_GpuTrainStep/({precisions})/tracer:[01]/deterministic:{det}/",
           f"--warmup={args.reftrain_warmup}", f"--steps={args.steps}", f"--peak_tflops={args.peak_tflops}"]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {}, {"error": f"{' '.join(cmd)}: {e}"}
    info = {"seconds": time.time() - t0, "returncode": proc.returncode}
    if proc.returncode != 0 or not proc.stdout.strip():
        info["error"] = f"bench_gpu_step exited {proc.returncode}: {tail(proc.stderr)}"
        return {}, info
    report = json.loads(proc.stdout)
    info["context"] = report.get("context", {})
    rows = {}
    for b in report.get("benchmarks", []):
        m = NAME_RE.search(b["name"])
        if not m:
            continue
        key = f"reftrain {m['precision']} tracer:{m['tracer']} det:{m['det']}"
        if b.get("error_occurred"):
            rows[key] = {"error": b.get("error_message", "error")}
            continue
        rows[key] = {k: b.get(k) for k in ("tokens_per_s", "step_ms_median", "step_ms_mean", "mfu",
                                           "flops_per_token", "peak_device_bytes", "arena_bytes",
                                           "parameters", "loss_first", "loss_last")}
        rows[key]["error"] = None
    return rows, info


def run_torch(args):
    cmd = [args.python, os.path.join(ROOT, "bench", "torch_gpu_step.py"), "--modes", args.modes,
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--peak-tflops", str(args.peak_tflops)]
    if args.compile_mode:
        cmd += ["--compile-mode", args.compile_mode]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {}, {"error": f"{' '.join(cmd)}: {e}"}
    info = {"seconds": time.time() - t0, "returncode": proc.returncode, "stderr_tail": tail(proc.stderr, 1500)}
    rows = {}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "mode" not in r:
            continue
        rows[f"torch {r['mode']}"] = r
        info.setdefault("torch_version", r.get("torch_version"))
        info.setdefault("device", r.get("device"))
    if not rows:
        info["error"] = f"torch_gpu_step.py exited {proc.returncode} without results: {tail(proc.stderr)}"
    return rows, info


def median_of(rounds, key, field):
    values = [r[key][field] for r in rounds if key in r and not r[key].get("error") and r[key].get(field) is not None]
    return statistics.median(values) if values else None


def fmt(value, spec, missing="-"):
    if value is None:
        width = re.match(r"\d*", spec).group(0)
        return format(missing, ">" + width)
    return format(value, spec)


def gib(value):
    return None if value is None else value / 2**30


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"), help="build dir holding bench_gpu_step")
    p.add_argument("--python", default=sys.executable, help="Python with PyTorch >= 2 and CUDA")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="timed steps per program and round")
    p.add_argument("--warmup", type=int, default=5, help="untimed PyTorch steps (compilation happens here)")
    p.add_argument("--reftrain-warmup", type=int, default=3, help="untimed reftrain steps")
    p.add_argument("--modes", default="eager,compile", help="PyTorch modes, comma-separated")
    p.add_argument("--compile-mode", help="passed to torch_gpu_step.py (torch.compile's mode)")
    p.add_argument("--deterministic", choices=["both", "on", "off"], default="both",
                   help="reftrain's determinism mode(s) to time (the trainer's default is on)")
    p.add_argument("--f32", action="store_true", help="also time reftrain's fp32 step")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    p.add_argument("--timeout", type=int, default=600, help="seconds per program run")
    p.add_argument("--time-budget", type=float, default=0,
                   help="seconds for all rounds (0 = no limit): no round starts that would not fit, "
                        "judged by the longest round so far")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--skip-reftrain", action="store_true")
    p.add_argument("--json-out", help="write rounds and summary here")
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be >= 1")

    rounds, infos = [], []
    start, longest_round = time.time(), 0.0
    for r in range(args.rounds):
        if args.time_budget > 0 and r > 0 and time.time() - start + longest_round > args.time_budget:
            print(f"stopping after {r} round(s): another would not fit in --time-budget {args.time_budget:.0f}s",
                  flush=True)
            break
        round_start = time.time()
        row, info = {}, {"round": r + 1}
        programs = [("reftrain", run_reftrain), ("torch", run_torch)]
        if r % 2 == 1:
            programs.reverse()
        for name, fn in programs:
            if (name == "torch" and args.skip_torch) or (name == "reftrain" and args.skip_reftrain):
                continue
            got, got_info = fn(args)
            row.update(got)
            info[name] = got_info
            if got_info.get("error"):
                print(f"round {r + 1}: {name} failed: {got_info['error']}", file=sys.stderr, flush=True)
        rounds.append(row)
        infos.append(info)
        longest_round = max(longest_round, time.time() - round_start)
        line = "   ".join(f"{k}: {v['tokens_per_s']:9.0f} tok/s" if not v.get("error") else f"{k}: ERROR"
                         for k, v in sorted(row.items()))
        print(f"round {r + 1}: {line}", flush=True)

    preferred = ["reftrain bf16 tracer:0 det:1", "reftrain bf16 tracer:1 det:1", "reftrain bf16 tracer:0 det:0",
                 "reftrain bf16 tracer:1 det:0", "torch eager", "torch compile"]
    keys = sorted({k for r in rounds for k in r},
                  key=lambda k: (preferred.index(k) if k in preferred else len(preferred), k))
    summary = {}
    for k in keys:
        errors = [r[k]["error"] for r in rounds if k in r and r[k].get("error")]
        mem_field = "peak_device_bytes" if k.startswith("reftrain") else "peak_memory_allocated_bytes"
        summary[k] = {
            "tokens_per_s": median_of(rounds, k, "tokens_per_s"),
            "step_ms_median": median_of(rounds, k, "step_ms_median"),
            "mfu": median_of(rounds, k, "mfu"),
            "peak_memory_bytes": median_of(rounds, k, mem_field),
            "peak_memory_reserved_bytes": median_of(rounds, k, "peak_memory_reserved_bytes"),
            "flops_per_token": median_of(rounds, k, "flops_per_token"),
            "errors": errors,
        }

    device = next((i["torch"].get("device") for i in infos if i.get("torch", {}).get("device")), None)
    ctx = next((i["reftrain"].get("context") for i in infos if i.get("reftrain", {}).get("context")), {})
    device = device or ctx.get("cuda_device", "?")
    torch_version = next((i["torch"].get("torch_version") for i in infos if i.get("torch", {}).get("torch_version")), "?")
    print()
    print(f"135M config (V=32768 d=768 L=12 H=12/12 hd=64 F=2048, T=1024 B=16), bf16; device {device}; "
          f"PyTorch {torch_version}; median of {len(rounds)} round(s) x {args.steps} timed steps")
    print(f"MFU = tokens/s x flops_per_token / {args.peak_tflops} TFLOP/s; flops_per_token = 6 N_matmul + "
          f"12 L Hq hd T = {fmt(next((s['flops_per_token'] for s in summary.values() if s['flops_per_token']), None), '.4g')}")
    fpts = {round(s["flops_per_token"]) for s in summary.values() if s["flops_per_token"]}
    if len(fpts) > 1:
        print(f"WARNING: the programs disagree on flops_per_token: {sorted(fpts)}")
    print(f"  {'':40s} {'tokens/s':>10s} {'step ms':>9s} {'MFU':>7s} {'peak mem GiB':>13s}")
    labels = {"reftrain bf16 tracer:0 det:1": "reftrain tracer off (deterministic)",
              "reftrain bf16 tracer:1 det:1": "reftrain tracer on  (deterministic)",
              "reftrain bf16 tracer:0 det:0": "reftrain tracer off (nondeterministic)",
              "reftrain bf16 tracer:1 det:0": "reftrain tracer on  (nondeterministic)",
              "torch eager": "torch eager", "torch compile": "torch.compile"}
    for k in keys:
        s = summary[k]
        mem = fmt(gib(s["peak_memory_bytes"]), "8.2f")
        if s["peak_memory_reserved_bytes"]:
            mem += f" ({gib(s['peak_memory_reserved_bytes']):.2f} reserved)"
        err = f"   ERROR: {s['errors'][0][:200]}" if s["errors"] else ""
        print(f"  {labels.get(k, k):40s} {fmt(s['tokens_per_s'], '10.0f')} {fmt(s['step_ms_median'], '9.1f')} "
              f"{fmt(s['mfu'], '7.1%')} {mem:>13s}{err}")
    print("  peak memory: reftrain = cudaMemGetInfo growth + stream-ordered pool high-water (no context); "
          "torch = max_memory_allocated (max_memory_reserved in parentheses)")

    verdicts = {}
    compile_tps = summary.get("torch compile", {}).get("tokens_per_s")
    eager_tps = summary.get("torch eager", {}).get("tokens_per_s")
    print()
    for det, det_name in (("1", "deterministic"), ("0", "nondeterministic")):
        on = summary.get(f"reftrain bf16 tracer:1 det:{det}", {})
        off = summary.get(f"reftrain bf16 tracer:0 det:{det}", {})
        if on.get("tokens_per_s") and compile_tps:
            ratio = on["tokens_per_s"] / compile_tps
            ok = ratio >= RATIO_TARGET
            how = (f"{(ratio / RATIO_TARGET - 1):+.1%} over the target" if ok else
                   f"missed by {(1 - ratio / RATIO_TARGET):.1%} (needs {(RATIO_TARGET / ratio - 1):.1%} more tokens/s)")
            print(f"reftrain tracer on ({det_name}) / torch.compile = {ratio:.3f}x  "
                  f"(target >= {RATIO_TARGET}x): {'PASS' if ok else 'MISS'}, {how}")
            verdicts[f"ratio_vs_compile_det{det}"] = {"ratio": ratio, "pass": ok}
        elif on.get("tokens_per_s"):
            print(f"reftrain tracer on ({det_name}) / torch.compile: no torch.compile result")
        if on.get("tokens_per_s") and eager_tps:
            print(f"reftrain tracer on ({det_name}) / torch eager   = {on['tokens_per_s'] / eager_tps:.3f}x")
        if on.get("step_ms_median") and off.get("step_ms_median"):
            overhead = on["step_ms_median"] / off["step_ms_median"] - 1
            paired = [r[f"reftrain bf16 tracer:1 det:{det}"]["step_ms_median"] /
                      r[f"reftrain bf16 tracer:0 det:{det}"]["step_ms_median"] - 1
                      for r in rounds
                      if not r.get(f"reftrain bf16 tracer:1 det:{det}", {"error": 1}).get("error")
                      and not r.get(f"reftrain bf16 tracer:0 det:{det}", {"error": 1}).get("error")]
            ok = overhead < TRACER_OVERHEAD_TARGET
            margin = TRACER_OVERHEAD_TARGET - overhead
            print(f"tracer overhead ({det_name}) = {overhead:+.2%} of the step (median of rounds' ratios "
                  f"{statistics.median(paired):+.2%}; target < {TRACER_OVERHEAD_TARGET:.0%}): "
                  f"{'PASS' if ok else 'MISS'}, {abs(margin) * 100:.2f} points {'under' if ok else 'over'}")
            verdicts[f"tracer_overhead_det{det}"] = {"overhead": overhead, "pass": ok,
                                                     "median_of_round_ratios": statistics.median(paired)}

    if not verdicts:
        print("targets: not judged (no reftrain or no torch.compile result; see the errors above)")
    result = {"bench": "gpu_vs_torch", "device": device, "torch_version": torch_version,
              "peak_tflops": args.peak_tflops, "rounds": len(rounds), "steps": args.steps,
              "summary": summary, "verdicts": verdicts, "per_round": rounds, "runs": infos}
    print(json.dumps({"bench": "gpu_vs_torch", "summary": summary, "verdicts": verdicts}))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0 if any(not s["errors"] and s["tokens_per_s"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""train_loop_vs_torch.py — reftrain's whole training loop against the PyTorch mirror's, in one run.

Trains the tiny config (d=128, 4 layers, 4 heads, 2 KV heads, head_dim 32, ffn 384, T=128, B=16,
grad_accum 2, fp32; the addition task with the byte tokenizer, V=259; WSD schedule, grad_clip 1.0,
weight decay 0.1) for --steps optimizer steps on both sides, on the same data, from the same weights:

  (a) `reftrain data batches` writes the run's initial weights, its first N steps of micro-batches
      (drawn from the packer exactly as train_step draws them) and the lr of each step;
  (b) `reftrain train` runs the real loop with the same config; per-step seconds come from
      run_dir/metrics.jsonl (what train_step measures: data, forward/backward, clip, AdamW);
  (c) bench/torch_train_loop.py replays (a) with the mirror: token-weighted accumulation,
      clip_grad_norm_, the same lr per step, torch.optim.AdamW with decay on 2-D tensors only.

(a)-(c) are interleaved for --rounds rounds so that machine noise hits both alike. Per round,
tokens/s = grad_accum * B * T / median step time over the steps after the first --warmup; printed
are the medians over rounds, their ratio reftrain / PyTorch (and the median of the per-round
ratios, which cancels noise that lasts a whole round), and the agreement of the two runs'
per-step losses (max |difference| over the first 5 steps and over all): the loops are the same
computation, so step 1 agrees to fp32 rounding and later steps drift only slowly. A disagreement
at the first steps means the two loops differ; the script then says so and exits with status 1.

Usage:  bench/train_loop_vs_torch.py [--build build] [--threads 2] [--steps 30] [--rounds 3]
        [--warmup 3] [--python .venv/bin/python] [--sdpa]  (--sdpa: PyTorch >= 2 attention in the peer)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The run config of both sides, on top of reftrain's defaults. Evaluation is off so that the timed
# loop is only training (the end-of-run eval and checkpoint of `reftrain train` are not timed).
TINY_RUN = [
    "data.task=addition", "data.tokenizer=byte", "data.val_examples=0", "data.test_examples=0",
    "model.hidden_size=128", "model.num_hidden_layers=4", "model.num_attention_heads=4",
    "model.num_key_value_heads=2", "model.head_dim=32", "model.intermediate_size=384",
    "model.max_position_embeddings=128",
    "train.seq_len=128", "train.batch_size=16", "train.grad_accum=2", "train.grad_clip=1.0",
    "train.weight_decay=0.1", "train.loss_normalization=tokens",
    "schedule.kind=wsd", "schedule.lr=1e-3", "schedule.warmup_steps=5", "schedule.decay_fraction=0.2",
    "eval.every=0", "eval.exact_match_examples=0", "eval.final_test=false", "eval.samples=0",
    "log_every=1000",
]

# Step-1 losses of one computation in fp32 on both sides; anything beyond this is a different loop.
FIRST_STEPS_TOLERANCE = 1e-4


def sets_for(args, run_dir):
    out = []
    for s in TINY_RUN + [f"train.max_steps={args.steps}", f"threads={args.threads}", f"run_dir={run_dir}"]:
        out += ["--set", s]
    return out


def run(cmd, threads):
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if result.returncode != 0:
        sys.exit(f"train_loop_vs_torch: {' '.join(cmd)} failed (status {result.returncode}):\n"
                 f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def tokens_per_s(seconds, tokens_per_step, warmup):
    timed = seconds[warmup:]
    return tokens_per_step / statistics.median(timed)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3, help="first steps of each run left out of the timing")
    default_python = os.path.join(ROOT, ".venv", "bin", "python")
    p.add_argument("--python", default=default_python if os.path.exists(default_python) else sys.executable)
    p.add_argument("--sdpa", action="store_true")
    args = p.parse_args()
    if args.steps <= args.warmup or args.rounds < 1 or args.threads < 1:
        p.error("need --steps > --warmup, --rounds >= 1, --threads >= 1")
    reftrain = os.path.join(args.build, "reftrain")

    ours, theirs, peer = [], [], None
    loss_diff_first, loss_diff_all, norm_rel_first = [], [], []
    tokens_per_step = None
    with tempfile.TemporaryDirectory(prefix="train_loop_vs_torch.") as tmp:
        batches_dir, run_dir = os.path.join(tmp, "batches"), os.path.join(tmp, "run")
        for r in range(args.rounds):
            # (a) the data and weights of the run, without training
            run([reftrain, "data", "batches", "--steps", str(args.steps), "--out", batches_dir]
                + sets_for(args, run_dir), args.threads)
            # (b) reftrain's loop
            train_out = run([reftrain, "train"] + sets_for(args, run_dir), args.threads)
            if r == 0:  # which BLAS kernels reftrain runs (kernels/cpu/blas.h)
                print(next((l for l in train_out.splitlines() if l.startswith("blas: ")), "blas: ?"), flush=True)
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                lines = [json.loads(line) for line in f if line.strip()]
            train = [m for m in lines if m["kind"] == "train"]
            if len(train) != args.steps:
                sys.exit(f"train_loop_vs_torch: {run_dir}/metrics.jsonl has {len(train)} train steps, "
                         f"expected {args.steps}")
            tokens_per_step = train[0]["tokens"]
            ours.append(tokens_per_s([m["seconds"] for m in train], tokens_per_step, args.warmup))
            # (c) the mirror's loop on the same batches
            cmd = [args.python, os.path.join(ROOT, "bench", "torch_train_loop.py"), batches_dir,
                   "--threads", str(args.threads)] + (["--sdpa"] if args.sdpa else [])
            peer = json.loads(run(cmd, args.threads).strip().splitlines()[-1])
            if peer["tokens_per_step"] != tokens_per_step:
                sys.exit(f"train_loop_vs_torch: tokens per step differ: reftrain {tokens_per_step}, "
                         f"pytorch {peer['tokens_per_step']}")
            theirs.append(tokens_per_s(peer["seconds"], tokens_per_step, args.warmup))

            diffs = [abs(m["loss"] - l) for m, l in zip(train, peer["loss"])]
            loss_diff_first.append(max(diffs[:5]))
            loss_diff_all.append(max(diffs))
            norm_rel_first.append(abs(train[0]["grad_norm"] - peer["grad_norm"][0]) / train[0]["grad_norm"])
            print(f"round {r + 1}: reftrain {ours[-1]:9.0f} tok/s   pytorch {theirs[-1]:9.0f} tok/s   "
                  f"loss step 1 {train[0]['loss']:.6f} vs {peer['loss'][0]:.6f}, "
                  f"step {args.steps} {train[-1]['loss']:.6f} vs {peer['loss'][-1]:.6f}", flush=True)

    ours_m, theirs_m = statistics.median(ours), statistics.median(theirs)
    version, attention = peer["torch_version"], peer["attention"]
    first, everywhere = max(loss_diff_first), max(loss_diff_all)
    round_ratio = statistics.median(o / t for o, t in zip(ours, theirs))
    print()
    print(f"tiny config training loop ({args.steps} steps of {tokens_per_step} tokens, grad_accum 2, fp32), "
          f"{args.threads} threads, steps {args.warmup + 1}-{args.steps} timed, median of {args.rounds} rounds")
    print(f"  {'reftrain':17s} {ours_m:10.0f} tokens/s")
    print(f"  {'pytorch ' + version:17s} {theirs_m:10.0f} tokens/s   (attention: {attention})")
    print(f"  ratio reftrain / pytorch = {ours_m / theirs_m:.2f}x   (median of per-round ratios {round_ratio:.2f}x)")
    print(f"  per-step loss agreement: max |diff| {first:.2e} over steps 1-5, {everywhere:.2e} over all "
          f"{args.steps}; step-1 grad norm relative diff {max(norm_rel_first):.1e}")
    print(json.dumps({"bench": "train_loop_vs_torch", "threads": args.threads, "steps": args.steps,
                      "rounds": args.rounds, "reftrain_tokens_per_s": ours_m, "pytorch_tokens_per_s": theirs_m,
                      "torch_version": version, "attention": attention, "ratio": ours_m / theirs_m,
                      "median_round_ratio": round_ratio,
                      "loss_max_abs_diff_first5": first, "loss_max_abs_diff_all": everywhere}))
    if first > FIRST_STEPS_TOLERANCE:
        sys.exit(f"train_loop_vs_torch: the losses of steps 1-5 differ by {first:.2e} > {FIRST_STEPS_TOLERANCE}: "
                 "the two loops are not the same computation")


if __name__ == "__main__":
    main()

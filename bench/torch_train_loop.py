"""torch_train_loop.py — the PyTorch peer of the training-loop benchmark (bench/train_loop_vs_torch.py).

Replays, with the reftrain mirror (tools/python/reftrain_mirror.py), the loop of Trainer::train_step
on the data `reftrain data batches` wrote to DIR: the same initial weights, the same micro-batches
in the same order, the same lr per optimizer step. One optimizer step is

  zero the gradients once; for each of the k micro-batches: forward, backward of loss * w_i with
  w_i = n_i / sum_j n_j ("tokens") or 1 / k ("micro_batches"), n_i its supervised tokens (a
  micro-batch with none is skipped, as in C++); clip_grad_norm_(grad_clip) (the pre-clip norm is
  recorded); lr = lrs[step]; AdamW step (mirror.make_optimizer: decay on 2-D tensors only, like
  train/adamw.h).

Each step is timed from zeroing the gradients to the end of the AdamW update (the C++ step also
includes drawing its micro-batches from the packer; here they are already in memory).

Prints exactly one JSON line on stdout:
  {"peer": "pytorch", "torch_version": ..., "threads": ..., "attention": ..., "seconds": [...],
   "loss": [...], "grad_norm": [...], "tokens_per_step": ...}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import reftrain_mirror as mirror  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir", help="output directory of `reftrain data batches`")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--sdpa", action="store_true",
                   help="F.scaled_dot_product_attention where this PyTorch has it (else the explicit math)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with open(os.path.join(args.dir, "run.json")) as f:
        run = json.load(f)
    train = run["train"]
    config = mirror.ModelConfig.from_json(os.path.join(args.dir, "config.json"))
    attention = "math"
    if args.sdpa:
        if hasattr(F, "scaled_dot_product_attention"):
            attention = "sdpa"
        else:
            print(f"torch_train_loop: PyTorch {torch.__version__} has no scaled_dot_product_attention; "
                  "using the explicit attention math", file=sys.stderr)
    model = mirror.Transformer(config, dtype=torch.float32, attention=attention)
    mirror.load_safetensors(model, os.path.join(args.dir, "init.safetensors"))
    optimizer = mirror.make_optimizer(model, lr=float(run["schedule"]["lr"]),
                                      weight_decay=float(train["weight_decay"]),
                                      betas=(float(train["beta1"]), float(train["beta2"])),
                                      eps=float(train["eps"]))

    batches = load_file(os.path.join(args.dir, "batches.safetensors"))
    input_ids, targets, lrs = batches["input_ids"], batches["targets"], batches["lrs"]  # (N, k, B, T), (N,)
    steps, k, batch, seq_len = input_ids.shape
    by_tokens = train["loss_normalization"] == "tokens"
    grad_clip = float(train["grad_clip"])
    params = [q for q in model.parameters()]

    seconds, losses, grad_norms = [], [], []
    for step in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        counts = [int((targets[step, i] != mirror.IGNORE_INDEX).sum()) for i in range(k)]
        total = sum(counts)
        step_loss = 0.0
        for i in range(k):
            weight = (counts[i] / total if total > 0 else 0.0) if by_tokens else 1.0 / k
            _, loss = model(input_ids[step, i], targets[step, i])
            if counts[i] > 0:
                (loss * weight).backward()
            step_loss += weight * loss.item()
        if grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        else:
            grad_norm = float(torch.norm(torch.stack([q.grad.norm() for q in params if q.grad is not None])))
        if not torch.isfinite(torch.tensor(grad_norm)):
            raise SystemExit(f"torch_train_loop: step {step + 1}: gradient norm {grad_norm}")
        for group in optimizer.param_groups:
            group["lr"] = float(lrs[step])
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        losses.append(step_loss)
        grad_norms.append(grad_norm)

    print(json.dumps({
        "peer": "pytorch",
        "torch_version": torch.__version__,
        "threads": args.threads,
        "attention": attention,
        "seconds": seconds,
        "loss": losses,
        "grad_norm": grad_norms,
        "tokens_per_step": k * batch * seq_len,
    }))


if __name__ == "__main__":
    main()

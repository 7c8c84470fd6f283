"""torch_step.py — the PyTorch peer of the CPU training-step benchmark.

Builds the reftrain mirror (tools/python/reftrain_mirror.py) for the model given by flags, and times
full training steps on one random batch: forward, backward, AdamW step, zero_grad(set_to_none=True).
The C++ benchmark runs the same shapes in the same run and prints its ratio against this peer.

Prints exactly one JSON line on stdout:
  {"peer": "pytorch", "torch_version": ..., "threads": ..., "tokens_per_s": ...,
   "step_ms_median": ..., "step_ms_all": [...], ...}
tokens_per_s = B*T / median step time (every target is supervised, so every token is trained on).

Defaults match the C++ ModelConfig defaults: V=512, d=128, L=4, Hq=4, Hkv=2, hd=32, F=384, T=128,
B=16, fp32, 2 threads. Attention is the mirror's explicit math unless --sdpa (PyTorch >= 2.0);
--compile uses torch.compile where it exists.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "python"))

import torch  # noqa: E402

import reftrain_mirror as mirror  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="HF-style config.json; overrides the model-shape flags below")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--intermediate-size", type=int, default=384)
    p.add_argument("--no-qk-norm", action="store_true", help="Llama-style attention (no QK-norm)")
    p.add_argument("--tie-word-embeddings", action="store_true")
    p.add_argument("--seq-len", type=int, default=128, help="T")
    p.add_argument("--batch-size", type=int, default=16, help="B")
    p.add_argument("--dtype", choices=["fp32", "fp64"], default="fp32")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sdpa", action="store_true",
                   help="use torch's scaled_dot_product_attention (PyTorch >= 2.0)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model if available")
    p.add_argument("--sgemm", action="store_true", help="also time a 1024^3 float32 matmul (sgemm_flops)")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--steps and --threads must be >= 1, --warmup >= 0")
    return args


def build_config(args: argparse.Namespace) -> mirror.ModelConfig:
    if args.config:
        config = mirror.ModelConfig.from_json(args.config)
    else:
        config = mirror.ModelConfig(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size,
            intermediate_size=args.intermediate_size, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
            head_dim=args.head_dim, max_position_embeddings=args.seq_len,
            qk_norm=not args.no_qk_norm, tie_word_embeddings=args.tie_word_embeddings)
    if args.seq_len > config.max_position_embeddings:
        raise SystemExit(f"--seq-len {args.seq_len} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings} of the config")
    return config


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = build_config(args)
    dtype = {"fp32": torch.float32, "fp64": torch.float64}[args.dtype]
    model = mirror.Transformer(config, dtype=dtype, attention="sdpa" if args.sdpa else "math")
    mirror.init_weights(model, args.seed)
    optimizer = mirror.make_optimizer(model, lr=args.lr, weight_decay=args.weight_decay,
                                      betas=(0.9, 0.95), eps=1e-8)

    forward = model
    compiled = False
    if args.compile:
        if hasattr(torch, "compile"):
            forward = torch.compile(model)
            compiled = True
        else:
            print(f"torch_step: torch.compile is not in PyTorch {torch.__version__}; running eager",
                  file=sys.stderr)

    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), generator=g)
    input_ids, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # all supervised

    def step() -> float:
        start = time.perf_counter()
        _, loss = forward(input_ids, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        if not torch.isfinite(loss):
            raise SystemExit(f"torch_step: loss became {loss.item()}")
        return elapsed

    for _ in range(args.warmup):
        step()
    times_ms = [1000.0 * step() for _ in range(args.steps)]
    median_ms = statistics.median(times_ms)
    tokens_per_step = args.batch_size * args.seq_len
    sgemm_flops = measure_sgemm(args.threads) if args.sgemm else None
    print(json.dumps({
        "peer": "pytorch",
        "torch_version": torch.__version__,
        "threads": args.threads,
        "tokens_per_s": tokens_per_step / (median_ms / 1000.0),
        "step_ms_median": median_ms,
        "step_ms_all": [round(t, 4) for t in times_ms],
        "tokens_per_step": tokens_per_step,
        "parameters": mirror.count_parameters(model),
        "dtype": args.dtype,
        "attention": model.attention,
        "compiled": compiled,
        "sgemm_flops": sgemm_flops,
        "blas": torch.__config__.show().splitlines()[:12] if args.sgemm else None,
    }))


def measure_sgemm(threads: int, n: int = 1024, seconds: float = 1.0) -> float:
    """PyTorch's best float32 matmul rate (n^3, the shape the C++ benchmark times): one candidate for
    the machine's physical limit, next to every OpenBLAS core the CPU supports."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    c = a @ b.T
    best = float("inf")
    for _ in range(5):
        start, iterations = time.perf_counter(), 0
        while True:
            torch.mm(a, b.T, out=c)
            iterations += 1
            if time.perf_counter() - start >= seconds / 5:
                break
        best = min(best, (time.perf_counter() - start) / iterations)
    return 2.0 * n * n * n / best


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""torch_gpu_step.py — the PyTorch peer of the GPU training-step benchmark (bench/gpu_vs_torch.py).

Times full training steps of a Qwen3-style decoder on one fixed random batch, the way a PyTorch user
would write them on a GPU: bf16 autocast over fp32 master weights, F.scaled_dot_product_attention
(is_causal=True), torch.optim.AdamW(fused=True), clip_grad_norm_(1.0), zero_grad(set_to_none=True).
Modes: `eager`, and `compile` (torch.compile of the model: forward and, through AOTAutograd, its
backward; the optimizer and the clipping stay eager, they are already a handful of fused kernels).

The model is written out here, compactly, rather than imported from tools/python/reftrain_mirror.py:
the mirror is the readable float64 spec (explicit softmax, RoPE tables rebuilt on the host every
forward, repeat_interleave for GQA), which would make a slow and therefore unfair peer. The math is the
mirror's (pre-norm, RMSNorm, per-head QK-norm before rotate-half RoPE, GQA, SwiGLU, untied or tied
lm_head, mean cross-entropy) and the parameter names are its HF names; `--dry-run` checks that the
two give the same loss and gradients in fp32 on the CPU.

Default config: the 135M benchmark config, V=32768, d=768, 12 layers, 12 query / 12 KV heads,
head_dim 64, ffn 2048, T=1024, B=16, QK-norm on, untied lm_head (model/config.h's default), which has
135,287,040 parameters (110,121,216 with --tie-word-embeddings).

FLOPs and MFU (the PaLM / nanoGPT convention, the same in bench/bench_gpu_step.cpp):
  flops_per_token = 6 * N_matmul + 12 * L * Hq * head_dim * T
  N_matmul = parameters that enter a matmul: every projection of every layer plus the output matrix
             (V x d, counted once whether tied or not); the embedding lookup (a gather) and the norm
             gains are not counted. The 12*L*Hq*hd*T term is attention's QK^T and PV, forward and
             backward, without a causal discount.
  mfu = tokens_per_s * flops_per_token / peak, peak = --peak-tflops (default 989.4: H100 SXM dense
        BF16 tensor-core peak; H200 has the same).

Prints one JSON line per mode on stdout (diagnostics on stderr):
  {"peer": "pytorch", "mode": "eager"|"compile", "tokens_per_s", "step_ms_median", "mfu",
   "peak_memory_allocated_bytes", "peak_memory_reserved_bytes", ..., "error": null or a message}
A mode that fails (torch.compile missing or raising) reports its error in "error" instead of crashing.

`--device cpu`: the same model and step on the CPU (the peer of bench/cpu_step_vs_torch.py, which
passes the tiny config, `--precision fp32 --max-norm 0` and its thread count); `--sgemm` adds a line
with PyTorch's own 1024^3 float32 matmul rate and its BLAS (a candidate for the CPU's physical limit).

`--dry-run`: tiny config on the CPU (B=2, T=64), one warm-up and one timed step per mode, plus the
parity check against the mirror; runs on PyTorch 1.13 (where SDPA, fused AdamW and torch.compile do
not exist and the fallbacks are used and named in the JSON).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import math
import os
import statistics
import sys
import time
import traceback
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

H100_BF16_DENSE_TFLOPS = 989.4  # NVIDIA H100 SXM datasheet, BF16 tensor core without sparsity


@dataclasses.dataclass
class BenchConfig:
    vocab_size: int = 32768
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int = 12
    head_dim: int = 64
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    qk_norm: bool = True
    tie_word_embeddings: bool = False
    seq_len: int = 1024  # T
    batch_size: int = 16  # B


def matmul_parameters(c: BenchConfig) -> int:
    """Parameters that enter a matmul (N in 6N): projections of every layer + the output matrix."""
    d, q_dim, kv_dim = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = d * q_dim + 2 * d * kv_dim + q_dim * d + 3 * d * c.intermediate_size
    return c.num_hidden_layers * per_layer + c.vocab_size * d


def total_parameters(c: BenchConfig) -> int:
    d = c.hidden_size
    norms_per_layer = 2 * d + (2 * c.head_dim if c.qk_norm else 0)
    embeddings = c.vocab_size * d * (1 if c.tie_word_embeddings else 2)
    return matmul_parameters(c) - c.vocab_size * d + embeddings + c.num_hidden_layers * norms_per_layer + d


def flops_per_token(c: BenchConfig) -> float:
    """6 * N_matmul + 12 * L * Hq * head_dim * T (PaLM appendix B; nanoGPT's estimate_mfu)."""
    attention = 12 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * c.seq_len
    return 6.0 * matmul_parameters(c) + attention


# ----------------------------------------------------------------------------------------------------
# The model: the mirror's math, written for speed (nn.Linear, precomputed RoPE tables, SDPA).


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y = x * rsqrt(mean(x^2 over the last dim) + eps) * weight (the mirror's rmsnorm)."""
    if hasattr(F, "rms_norm"):  # PyTorch >= 2.4: one fused kernel in eager
        return F.rms_norm(x, (x.shape[-1],), weight.to(x.dtype), eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, hd) float32 in rotate-half layout, computed as the mirror's rope_tables."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (float(theta) ** exponent)
    angle = (torch.arange(seq_len, dtype=torch.float32)[:, None] * inv_freq[None, :]).double()
    cos = torch.cat([angle.cos(), angle.cos()], dim=-1).float()
    sin = torch.cat([angle.sin(), angle.sin()], dim=-1).float()
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, hd); cos, sin: (T, hd). x*cos + rotate_half(x)*sin, in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos = cos.to(x.dtype)[None, :, None, :]
    sin = sin.to(x.dtype)[None, :, None, :]
    return x * cos + rotated * sin


class NormWeight(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))  # (dim,)


class SelfAttention(nn.Module):
    def __init__(self, c: BenchConfig):
        super().__init__()
        d, hd = c.hidden_size, c.head_dim
        self.q_proj = nn.Linear(d, c.num_attention_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, c.num_key_value_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, c.num_key_value_heads * hd, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * hd, d, bias=False)
        if c.qk_norm:
            self.q_norm = NormWeight(hd)
            self.k_norm = NormWeight(hd)


class MLP(nn.Module):
    def __init__(self, c: BenchConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)


class DecoderLayer(nn.Module):
    def __init__(self, c: BenchConfig, use_sdpa: bool):
        super().__init__()
        self.c, self.use_sdpa = c, use_sdpa
        self.input_layernorm = NormWeight(c.hidden_size)
        self.self_attn = SelfAttention(c)
        self.post_attention_layernorm = NormWeight(c.hidden_size)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c, attn = self.c, self.self_attn
        batch, seq_len, _ = x.shape
        hq, hkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        h = rmsnorm(x, self.input_layernorm.weight, c.rms_norm_eps)
        q = attn.q_proj(h).view(batch, seq_len, hq, hd)
        k = attn.k_proj(h).view(batch, seq_len, hkv, hd)
        v = attn.v_proj(h).view(batch, seq_len, hkv, hd)
        if c.qk_norm:
            q = rmsnorm(q, attn.q_norm.weight, c.rms_norm_eps)
            k = rmsnorm(k, attn.k_norm.weight, c.rms_norm_eps)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # v comes straight from a linear (bf16 under autocast); give SDPA one dtype whatever autocast
        # decided for the norms.
        q, k = q.to(v.dtype).transpose(1, 2), k.to(v.dtype).transpose(1, 2)  # (B, H, T, hd)
        v = v.transpose(1, 2)
        if hkv != hq and not (self.use_sdpa and SDPA_HAS_GQA):
            k = k.repeat_interleave(hq // hkv, dim=1)
            v = v.repeat_interleave(hq // hkv, dim=1)
        if self.use_sdpa:
            extra = {"enable_gqa": True} if hkv != hq and SDPA_HAS_GQA else {}
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **extra)
        else:  # PyTorch < 2.0: the mirror's explicit softmax
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
            future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device).triu(diagonal=1)
            out = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v
        out = out.transpose(1, 2).reshape(batch, seq_len, hq * hd)
        x = x + attn.o_proj(out)
        h = rmsnorm(x, self.post_attention_layernorm.weight, c.rms_norm_eps)
        mlp = self.mlp
        return x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))


def _sdpa_has_enable_gqa() -> bool:
    """SDPA takes enable_gqa since PyTorch 2.5 (it is a builtin: no inspect.signature, so ask it)."""
    if not hasattr(F, "scaled_dot_product_attention"):
        return False
    try:
        F.scaled_dot_product_attention(torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2),
                                       enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


SDPA_HAS_GQA = _sdpa_has_enable_gqa()


class Backbone(nn.Module):
    def __init__(self, c: BenchConfig, use_sdpa: bool):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, use_sdpa) for _ in range(c.num_hidden_layers))
        self.norm = NormWeight(c.hidden_size)


class BenchTransformer(nn.Module):
    """State-dict keys are HF Qwen3ForCausalLM's (the mirror's). forward returns the mean loss."""

    def __init__(self, c: BenchConfig, use_sdpa: bool):
        super().__init__()
        self.c = c
        self.model = Backbone(c, use_sdpa)
        if not c.tie_word_embeddings:
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        cos, sin = rope_tables(c.seq_len, c.head_dim, c.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (T, hd) float32
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        c = self.c
        seq_len = input_ids.shape[1]
        cos, sin = self.rope_cos[:seq_len], self.rope_sin[:seq_len]
        x = self.model.embed_tokens(input_ids)  # (B, T, d)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = rmsnorm(x, self.model.norm.weight, c.rms_norm_eps)
        output = self.model.embed_tokens.weight if c.tie_word_embeddings else self.lm_head.weight
        logits = F.linear(x, output)  # (B, T, V); bf16 under autocast
        # Every target is supervised, so the mirror's masked mean is the plain mean. fp32 loss.
        return F.cross_entropy(logits.reshape(-1, c.vocab_size).float(), targets.reshape(-1))


@torch.no_grad()
def init_weights(model: nn.Module, c: BenchConfig, seed: int) -> None:
    """Matrices ~ N(0, initializer_range), norm gains 1 (the mirror's distribution, drawn on the
    model's device)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for _, p in model.named_parameters():
        if p.dim() == 1:
            p.fill_(1.0)
        else:
            p.normal_(0.0, c.initializer_range, generator=generator)


def make_adamw(model: nn.Module, lr: float, weight_decay: float, want_fused: bool
               ) -> Tuple[torch.optim.Optimizer, str]:
    """AdamW, decay on 2-D tensors only (the mirror's and reftrain's grouping), betas (0.9, 0.95).
    Returns the optimizer and the implementation used: fused, foreach or single-tensor."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    accepted = inspect.signature(torch.optim.AdamW).parameters
    candidates = []
    if want_fused and "fused" in accepted:
        candidates.append(("fused", {"fused": True}))
    if "foreach" in accepted:
        candidates.append(("foreach", {"foreach": True}))
    candidates.append(("single-tensor", {}))
    for name, extra in candidates:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, **extra), name
        except (RuntimeError, ValueError, TypeError) as e:
            print(f"torch_gpu_step: AdamW({extra}) refused: {e}", file=sys.stderr)
    raise AssertionError("unreachable: plain AdamW always constructs")


# ----------------------------------------------------------------------------------------------------
# Timing


class Timer:
    """Per-step elapsed milliseconds: CUDA events on the GPU, perf_counter on the CPU. Each step is
    synchronised at its end, as reftrain's step is (it reads the loss and the gradient norm back)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def time(self, fn) -> Tuple[float, torch.Tensor]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), out
        t0 = time.perf_counter()
        out = fn()
        return 1000.0 * (time.perf_counter() - t0), out


def run_mode(mode: str, c: BenchConfig, args: argparse.Namespace, device: torch.device) -> dict:
    result = {"peer": "pytorch", "mode": mode, "torch_version": torch.__version__, "error": None}
    cuda = device.type == "cuda"
    if cuda:
        result["device"] = torch.cuda.get_device_name(device)
    else:
        result["device"] = "cpu"
        result["threads"] = torch.get_num_threads()
    if mode == "compile" and not hasattr(torch, "compile"):
        result["error"] = f"torch.compile is not in PyTorch {torch.__version__}"
        return result

    use_sdpa = hasattr(F, "scaled_dot_product_attention") and not args.math_attention
    torch.manual_seed(args.seed)
    model = BenchTransformer(c, use_sdpa).to(device)
    init_weights(model, c, args.seed)
    # fused where this PyTorch has it (CUDA, and the CPU since 2.4): the fastest AdamW the peer can use.
    optimizer, optimizer_impl = make_adamw(model, args.lr, args.weight_decay, want_fused=True)
    params = [p for p in model.parameters()]
    forward = model
    if mode == "compile":
        forward = torch.compile(model, **({"mode": args.compile_mode} if args.compile_mode else {}))
        result["compile_mode"] = args.compile_mode or "default"

    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, c.vocab_size, (c.batch_size, c.seq_len + 1), generator=g)
    input_ids = tokens[:, :-1].contiguous().to(device)
    targets = tokens[:, 1:].contiguous().to(device)  # all supervised
    autocast_dtype = {"bf16": torch.bfloat16, "fp32": None}[args.precision]

    def step() -> torch.Tensor:
        if autocast_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                loss = forward(input_ids, targets)
        else:
            loss = forward(input_ids, targets)
        loss.backward()
        if args.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    result.update({
        "attention": "sdpa" if use_sdpa else "math",
        "optimizer": optimizer_impl,
        "precision": args.precision + (" autocast" if autocast_dtype is not None else ""),
        "parameters": sum(p.numel() for p in params),
    })
    timer = Timer(device)
    try:
        t0 = time.perf_counter()
        losses = []
        for _ in range(args.warmup):  # the first call of the compiled model compiles
            losses.append(float(timer.time(step)[1]))
        result["warmup_seconds"] = time.perf_counter() - t0
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        times_ms: List[float] = []
        wall0 = time.perf_counter()
        for _ in range(args.steps):
            ms, loss = timer.time(step)
            times_ms.append(ms)
            losses.append(float(loss))
        wall = time.perf_counter() - wall0
    except Exception as e:  # a compile failure must not hide the eager result
        result["error"] = f"{type(e).__name__}: {e}".strip()[:2000]
        print(f"torch_gpu_step: mode {mode} failed:\n{traceback.format_exc()}", file=sys.stderr)
        return result
    finally:
        del optimizer, model, forward, params

    if not all(math.isfinite(x) for x in losses):
        result["error"] = f"non-finite loss: {losses}"
    tokens_per_step = c.batch_size * c.seq_len
    median_ms = statistics.median(times_ms)
    fpt = flops_per_token(c)
    tokens_per_s = tokens_per_step / (median_ms / 1000.0)
    result.update({
        "tokens_per_step": tokens_per_step,
        "step_ms_median": median_ms,
        "step_ms_all": [round(t, 3) for t in times_ms],
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_wall": tokens_per_step * len(times_ms) / wall,
        "flops_per_token": fpt,
        "peak_tflops": args.peak_tflops,
        "mfu": tokens_per_s * fpt / (args.peak_tflops * 1e12),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    })
    if cuda:
        result["peak_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_memory_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return result


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ----------------------------------------------------------------------------------------------------
# Dry run: the same model against the mirror, fp32 on the CPU


def check_against_mirror(c: BenchConfig) -> dict:
    """Loads this model's weights into the mirror and compares loss and every gradient (fp32)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "python"))
    import reftrain_mirror as mirror  # noqa: E402

    mc = mirror.ModelConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
        max_position_embeddings=c.seq_len, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_word_embeddings, qk_norm=c.qk_norm)
    ours = BenchTransformer(c, use_sdpa=hasattr(F, "scaled_dot_product_attention"))
    init_weights(ours, c, seed=5)
    theirs = mirror.Transformer(mc, dtype=torch.float32)
    theirs.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(6)
    tokens = torch.randint(0, c.vocab_size, (c.batch_size, c.seq_len + 1), generator=g)
    ids, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    loss_ours = ours(ids, targets)
    loss_ours.backward()
    _, loss_theirs = theirs(ids, targets)
    loss_theirs.backward()
    grads_theirs = dict(theirs.named_parameters())
    worst = 0.0
    for name, p in ours.named_parameters():
        q = grads_theirs[name]
        worst = max(worst, float((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp(min=1e-30)))
    loss_ours, loss_theirs = loss_ours.detach(), loss_theirs.detach()
    loss_diff = abs(float(loss_ours) - float(loss_theirs))
    ok = loss_diff <= 1e-5 * abs(float(loss_theirs)) and worst <= 1e-4
    return {"loss": float(loss_ours), "mirror_loss": float(loss_theirs), "loss_abs_diff": loss_diff,
            "max_grad_rel_diff": worst, "ok": ok}


# ----------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="eager,compile", help="comma-separated: eager, compile")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--hidden-size", type=int, default=d.hidden_size)
    p.add_argument("--layers", type=int, default=d.num_hidden_layers)
    p.add_argument("--heads", type=int, default=d.num_attention_heads)
    p.add_argument("--kv-heads", type=int, default=d.num_key_value_heads)
    p.add_argument("--head-dim", type=int, default=d.head_dim)
    p.add_argument("--intermediate-size", type=int, default=d.intermediate_size)
    p.add_argument("--no-qk-norm", action="store_true")
    p.add_argument("--tie-word-embeddings", action="store_true")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="T")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="B")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="bf16 = autocast over fp32 weights (default); fp32 = no autocast")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile happens here)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--max-norm", type=float, default=1.0, help="clip_grad_norm_ threshold (0 = no clipping)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--sgemm", action="store_true",
                   help="also print PyTorch's 1024^3 float32 matmul rate and BLAS (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                   help="the device's peak for MFU (default: H100 SXM dense BF16, 989.4)")
    p.add_argument("--compile-mode", help="torch.compile mode (default: its default; e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--math-attention", action="store_true", help="explicit softmax instead of SDPA")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (CPU; 0 = leave)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny config on the CPU, 1+1 steps, plus a parity check against the mirror")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main() -> int:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("eager", "compile"):
            raise SystemExit(f"torch_gpu_step: unknown mode {m!r} (eager, compile)")
    if args.dry_run:
        # The C++ tiny config (model/config.h defaults) at a small batch, on the CPU.
        c = BenchConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                        tie_word_embeddings=args.tie_word_embeddings, qk_norm=not args.no_qk_norm,
                        seq_len=64, batch_size=2)
        args.warmup, args.steps = 1, 1
        device = torch.device("cpu")
        parity = check_against_mirror(c)
        print(json.dumps({"peer": "pytorch", "check": "mirror parity (fp32, cpu)", **parity}))
        if not parity["ok"]:
            print("torch_gpu_step: the benchmark model disagrees with tools/python/reftrain_mirror.py",
                  file=sys.stderr)
            return 1
    else:
        c = BenchConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                        intermediate_size=args.intermediate_size, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                        head_dim=args.head_dim, tie_word_embeddings=args.tie_word_embeddings,
                        qk_norm=not args.no_qk_norm, seq_len=args.seq_len, batch_size=args.batch_size)
        if args.device == "cpu":
            device = torch.device("cpu")
        elif not torch.cuda.is_available():
            for m in modes:
                print(json.dumps({"peer": "pytorch", "mode": m, "torch_version": torch.__version__,
                                  "error": "no CUDA device (use --dry-run for the CPU smoke test)"}))
            return 2
        else:
            device = torch.device("cuda")
    config_summary = {**dataclasses.asdict(c), "parameters": total_parameters(c),
                      "matmul_parameters": matmul_parameters(c), "flops_per_token": flops_per_token(c)}
    print(f"torch_gpu_step: PyTorch {torch.__version__} on {device}; config {json.dumps(config_summary)}; "
          f"MFU peak {args.peak_tflops} TFLOP/s", file=sys.stderr)
    failed = False
    for m in modes:
        r = run_mode(m, c, args, device)
        r["config"] = config_summary
        print(json.dumps(r), flush=True)
        failed |= r["error"] is not None and not (m == "compile" and args.dry_run)
        release_memory(device)
    if args.sgemm:
        from torch_step import measure_sgemm  # bench/torch_step.py, beside this file
        print(json.dumps({"peer": "pytorch", "torch_version": torch.__version__,
                          "sgemm_flops": measure_sgemm(torch.get_num_threads()),
                          "blas": torch.__config__.show().splitlines()[:12]}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

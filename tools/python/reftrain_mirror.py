"""reftrain_mirror.py — the reftrain transformer written out in plain PyTorch.

This file is the executable spec of the C++ model in model/: the same math, the same parameter names
(HF Qwen3ForCausalLM state_dict keys) and the same activation names as `reftrain dump`. It is used

  * by tests/python/test_parity.py, which runs it in float64 as the "truth" and compares the C++
    forward/backward against it, tensor by tensor;
  * by bench/torch_step.py as the PyTorch peer of the CPU benchmark;
  * by users as a readable reference: hook your own model the same way, write the same names to a
    safetensors file, and `reftrain diff` tells you the first tensor where the two disagree.

Everything is written out explicitly (no fused attention by default) so that a reader can check each
line against the formulas in DESIGN.md. It runs on PyTorch 1.13 and 2.x.

Non-obvious points, all matched by the C++ side:
  * RoPE cos/sin tables are computed in float64 and only then cast to the compute dtype; the
    inverse frequencies (with HF's linear or llama3 RoPE scaling) are HF's float32 numbers.
  * Targets are already aligned with the inputs (targets[b, t] is the token predicted at position t);
    there is no shift inside the model. Target -100 means "not supervised".
  * With zero supervised positions the loss is exactly 0 (not NaN) and every gradient is 0.
  * Tied embeddings (tie_word_embeddings) have no `lm_head.weight`; logits use the embedding matrix.

Run `python reftrain_mirror.py CONFIG.json` for a one-line summary of a config.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import sys
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this value are not supervised


@dataclasses.dataclass
class MirrorBugs:
    """Bug switches of the mirror, default off, each used beside the correct line (`bugs.NAME`).

    They exist so that tests can give the mirror a known bug and check that `reftrain diff` names the
    first tensor carrying it (tests/python/test_diff.py). Set one with `bugs.rope_wrong_half = True`
    (and reset it after), or `--bug rope_wrong_half` on the command line.
    """

    # rotate_half puts the minus sign on the wrong half: (x2, -x1) instead of (-x2, x1), i.e. every
    # position is rotated by minus its angle. First visible in model.layers.0.self_attn.q_rotary.
    rope_wrong_half: bool = False


bugs = MirrorBugs()


# ----------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class ModelConfig:
    """Model shape and numerics, with the field names of HF's Qwen3 config.json (defaults = C++'s)."""

    vocab_size: int = 512
    hidden_size: int = 128  # d
    intermediate_size: int = 384  # F, the SwiGLU width
    num_hidden_layers: int = 4
    num_attention_heads: int = 4  # Hq, query heads
    num_key_value_heads: int = 2  # Hkv, must divide Hq (GQA)
    head_dim: int = 32  # hd, may differ from hidden_size // num_attention_heads
    max_position_embeddings: int = 128
    rope_theta: float = 10000.0
    # RoPE scaling in HF's transformers-4 form: None (no scaling), {"rope_type": "linear", "factor": f}
    # or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; see rope_inverse_frequencies.
    rope_scaling: Optional[dict] = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # reftrain switches beyond HF
    qk_norm: bool = True  # RMSNorm on q and k per head before RoPE; False = Llama
    zero_init_output_projections: bool = False  # o_proj and down_proj start at zero
    rope_angles: str = "hf"  # "hf": float32 angles as HF; "exact": fp64 (rope_tables)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "head_dim",
                    "max_position_embeddings"]
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"ModelConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2 != 0:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0 or self.initializer_range < 0:
            raise ValueError("ModelConfig: rope_theta and rms_norm_eps must be > 0, "
                             "initializer_range >= 0")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type")
            need = {"linear": ["factor"], "llama3": ["factor", "low_freq_factor", "high_freq_factor",
                                                     "original_max_position_embeddings"]}.get(kind)
            if need is None:
                raise ValueError(f"ModelConfig.rope_scaling: rope_type {kind!r} is not implemented "
                                 "(supported: None, 'linear', 'llama3')")
            missing = [k for k in need if k not in self.rope_scaling]
            if missing:
                raise ValueError(f"ModelConfig.rope_scaling of rope_type {kind!r} lacks {missing}")

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        """Builds a config from an HF-style dict, ignoring keys this model does not use."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        if "head_dim" not in values or values["head_dim"] is None:
            values["head_dim"] = int(raw["hidden_size"]) // int(raw["num_attention_heads"])
        if "num_key_value_heads" not in values or values["num_key_value_heads"] is None:
            values["num_key_value_heads"] = raw["num_attention_heads"]
        if "qk_norm" not in values:
            # HF configs do not carry the switch: Llama (and Mistral) have no QK-norm, Qwen3 has it.
            values["qk_norm"] = raw.get("model_type", "qwen3") not in ("llama", "mistral")
        # RoPE: transformers 4 writes rope_theta and a `rope_scaling` object (type under "rope_type", or
        # "type" before 4.45); transformers 5 nests both in `rope_parameters` (per layer type in some models).
        parameters = raw.get("rope_parameters")
        if isinstance(parameters, dict) and isinstance(parameters.get("full_attention"), dict):
            parameters = parameters["full_attention"]
        if isinstance(parameters, dict) and "rope_theta" in parameters:
            values["rope_theta"] = parameters["rope_theta"]
        rope = raw.get("rope_scaling") or parameters or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind == "default":
            values["rope_scaling"] = None
        elif kind in ("linear", "llama3"):
            scaling = {"rope_type": kind, "factor": float(rope["factor"])}
            if kind == "llama3":
                scaling["low_freq_factor"] = float(rope["low_freq_factor"])
                scaling["high_freq_factor"] = float(rope["high_freq_factor"])
                scaling["original_max_position_embeddings"] = int(rope.get(
                    "original_max_position_embeddings",
                    raw.get("original_max_position_embeddings", raw["max_position_embeddings"])))
            values["rope_scaling"] = scaling
        else:
            raise ValueError(f"RoPE scaling of rope_type {kind!r} is not implemented (supported: default, linear, llama3)")
        for f in dataclasses.fields(cls):
            if f.name in values and f.name != "rope_scaling":
                values[f.name] = {"int": int, "float": float, "bool": bool, "str": str}[
                    f.type if isinstance(f.type, str) else f.type.__name__](values[f.name])
        return cls(**values)

    @classmethod
    def from_json(cls, path: str) -> "ModelConfig":
        with open(path) as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON: {e}") from e
        try:
            return cls.from_dict(raw)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: bad model config: {e}") from e

    def to_dict(self) -> dict:
        out = {
            "architectures": ["Qwen3ForCausalLM" if self.qk_norm else "LlamaForCausalLM"],
            "model_type": "qwen3" if self.qk_norm else "llama",
        }
        out.update(dataclasses.asdict(self))
        return out

    def to_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")


# ----------------------------------------------------------------------------------------------------
# The ops, one function each (the C++ CPU kernels implement exactly these formulas)


def rms_reciprocal(x: torch.Tensor, eps: float) -> torch.Tensor:
    """rstd = rsqrt(mean(x^2 over the last dim) + eps), keeping the last dim (size 1)."""
    return torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y = x * rsqrt(mean(x^2 over the last dim) + eps) * weight."""
    return x * rms_reciprocal(x, eps) * weight


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: Optional[dict] = None,
                             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """inv_freq (hd/2,) float32: 1 / theta^(2i/hd), then rescaled by `scaling` (ModelConfig.rope_scaling).

    Float32 torch ops in HF's order (modeling_rope_utils), so the numbers are HF's bit for bit:
      linear: inv_freq / factor (= positions divided by factor);
      llama3: with L = original_max_position_embeddings and wavelength = 2 pi / inv_freq, wavelengths
              below L / high_freq_factor are kept, those above L / low_freq_factor divided by factor,
              and those in between blended: (1 - s) inv_freq / factor + s inv_freq with
              s = (L / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor).
    """
    # float32 as HF; float64 for "exact" angles (the same ops without the float32 rounding)
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype) / head_dim
    inv_freq = 1.0 / (float(theta) ** exponent)  # (hd/2,) float32
    kind = scaling["rope_type"] if scaling else "default"
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        context = int(scaling["original_max_position_embeddings"])
        wavelength = 2 * math.pi / inv_freq
        divided = torch.where(wavelength > context / low, inv_freq / factor, inv_freq)
        smooth = (context / wavelength - low) / (high - low)
        blended = (1 - smooth) * divided / factor + smooth * divided
        medium = (wavelength >= context / high) & (wavelength <= context / low)
        inv_freq = torch.where(medium, blended, divided)
    elif kind != "default":
        raise ValueError(f"RoPE scaling {kind!r} is not implemented")
    return inv_freq


def rope_tables(seq_len: int, head_dim: int, theta: float,
                dtype: torch.dtype, device=None,
                scaling: Optional[dict] = None, exact: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, hd) in HF's rotate-half layout, with HF's float32 angles.

    inv_freq (rope_inverse_frequencies, with the RoPE scaling) and angle[t, i] = t * inv_freq[i] are
    float32 numbers computed the way HF computes them, because every HF checkpoint was trained with
    those angles (exact ones drift from them by ~6e-8 * t rad: 2e-3 rad at t = 32k). cos and sin of
    those angles are evaluated in float64 and rounded once to float32; the table then holds float32
    values whatever the compute dtype. cos = cat([cos(angle), cos(angle)], -1), sin likewise.
    With `exact` (config rope_angles "exact", `reftrain dump --rope-angles exact`) inv_freq, the
    angles and cos/sin are float64 throughout, for an fp64 model that computes exact angles.
    """
    if exact:
        inv_freq = rope_inverse_frequencies(head_dim, theta, scaling, torch.float64)
        angle = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
        cos = torch.cat([angle.cos(), angle.cos()], dim=-1)
        sin = torch.cat([angle.sin(), angle.sin()], dim=-1)
        return cos.to(dtype=dtype, device=device), sin.to(dtype=dtype, device=device)
    inv_freq = rope_inverse_frequencies(head_dim, theta, scaling)  # (hd/2,) float32
    positions = torch.arange(seq_len, dtype=torch.float32)  # (T,)
    angle = (positions[:, None] * inv_freq[None, :]).double()  # (T, hd/2), a float32 product, exact in float64
    cos = torch.cat([angle.cos(), angle.cos()], dim=-1).float()
    sin = torch.cat([angle.sin(), angle.sin()], dim=-1).float()
    return cos.to(dtype=dtype, device=device), sin.to(dtype=dtype, device=device)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1), halves taken over the last dim."""
    half = x.shape[-1] // 2
    if bugs.rope_wrong_half:
        return torch.cat([x[..., half:], -x[..., :half]], dim=-1)  # BUG: minus on the wrong half
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, hd); cos, sin: (T, hd). Returns x*cos + rotate_half(x)*sin."""
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    return x * cos + rotate_half(x) * sin


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     use_sdpa: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Causal GQA attention written out.

    q: (B, T, Hq, hd); k, v: (B, T, Hkv, hd). Query head h reads kv head h // (Hq / Hkv).
    scores = q.k / sqrt(hd), position t sees s <= t, P = softmax over s, out = P @ v.
    Returns out (B, T, Hq*hd) and P (B, Hq, T, T) (None when use_sdpa).
    """
    batch, seq_len, num_q_heads, head_dim = q.shape
    group = num_q_heads // k.shape[2]
    # Expand kv heads to the query heads that share them: (B, Hkv, T, hd) -> (B, Hq, T, hd).
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2).repeat_interleave(group, dim=1)
    vh = v.transpose(1, 2).repeat_interleave(group, dim=1)
    if use_sdpa:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        probs = None
    else:
        scores = (qh @ kh.transpose(-2, -1)) / math.sqrt(head_dim)  # (B, Hq, T, T)
        future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).triu(diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # exactly 0 above the diagonal
        out = probs @ vh  # (B, Hq, T, hd)
    out = out.transpose(1, 2).reshape(batch, seq_len, num_q_heads * head_dim)
    return out, probs


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over positions with target != -100; exactly 0 when there are none.

    logits: (B, T, V); targets: (B, T) int64, already aligned (no shift here).
    """
    vocab = logits.shape[-1]
    per_position = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="none")  # 0 where ignored
    supervised = (targets != IGNORE_INDEX).sum()
    # Dividing by max(count, 1) keeps the empty case at 0 with zero (not NaN) gradients.
    return per_position.sum() / supervised.clamp(min=1).to(per_position.dtype)


# ----------------------------------------------------------------------------------------------------
# Modules: they only hold parameters under the HF names; the math is in the functions above.


class RMSNormWeight(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))  # (dim,)


class Projection(nn.Module):
    """A bias-free linear map y = x @ W^T, W: (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.q_proj = Projection(d, config.num_attention_heads * hd)  # (Hq*hd, d)
        self.k_proj = Projection(d, config.num_key_value_heads * hd)  # (Hkv*hd, d)
        self.v_proj = Projection(d, config.num_key_value_heads * hd)  # (Hkv*hd, d)
        self.o_proj = Projection(config.num_attention_heads * hd, d)  # (d, Hq*hd)
        if config.qk_norm:
            self.q_norm = RMSNormWeight(hd)  # (hd,), shared by all heads
            self.k_norm = RMSNormWeight(hd)  # (hd,)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = Projection(d, f)  # (F, d)
        self.up_proj = Projection(d, f)  # (F, d)
        self.down_proj = Projection(f, d)  # (d, F)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNormWeight(config.hidden_size)
        self.self_attn = SelfAttention(config)
        self.post_attention_layernorm = RMSNormWeight(config.hidden_size)
        self.mlp = MLP(config)


class Backbone(nn.Module):
    """Holds the `model.*` parameters (embedding, layers, final norm)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)  # (V, d)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNormWeight(config.hidden_size)


class Transformer(nn.Module):
    """Decoder-only pre-norm transformer; state_dict keys are HF Qwen3ForCausalLM's.

    `attention` is "math" (explicit softmax, the default, needed for the attn_probs capture) or
    "sdpa" (torch's fused attention, only where it exists; for benchmarks).
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32,
                 device=None, attention: str = "math"):
        super().__init__()
        if attention not in ("math", "sdpa"):
            raise ValueError(f"attention must be 'math' or 'sdpa', got {attention!r}")
        if attention == "sdpa" and not hasattr(F, "scaled_dot_product_attention"):
            raise ValueError("attention='sdpa' needs torch.nn.functional.scaled_dot_product_attention "
                             f"(PyTorch >= 2.0); this is PyTorch {torch.__version__}")
        self.config = config
        self.attention = attention
        self.model = Backbone(config)
        if not config.tie_word_embeddings:
            self.lm_head = Projection(config.hidden_size, config.vocab_size)  # (V, d)
        self.to(dtype=dtype, device=device)
        init_weights(self, seed=0)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def output_matrix(self) -> torch.Tensor:
        """(V, d): lm_head.weight, or the embedding when tied."""
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, targets: Optional[torch.Tensor] = None,
                capture: Optional[Dict[str, torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """input_ids, targets: (B, T) int64. Returns logits (B, T, V) and the loss (or None).

        When `capture` is a dict, every named activation is stored into it (detached), in execution
        order, under the names `reftrain dump` uses and in the order it declares them (each norm's
        output before its statistic); besides the outputs of each step these include each RMSNorm's
        reciprocal RMS (`<norm>.rstd`, the input's shape without the last dim) and the per-position
        `loss.logsumexp` (B, T) when targets are given. (The loss itself is the return value.)
        """
        cfg = self.config
        batch, seq_len = input_ids.shape
        if seq_len > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        if capture is not None and self.attention != "math":
            raise ValueError("capture needs attention='math' (the fused path has no attn_probs)")
        hq, hkv, hd, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, \
            cfg.rms_norm_eps

        def keep(name: str, value: torch.Tensor) -> None:
            if capture is not None:
                capture[name] = value.detach()

        def norm(name: str, out_name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            """rmsnorm, capturing its output as `out_name`, then its per-row reciprocal RMS as
            `name.rstd` (the order reftrain declares them in)."""
            rstd = rms_reciprocal(x, eps)
            y = x * rstd * weight
            keep(out_name, y)
            keep(name + ".rstd", rstd.squeeze(-1))  # x.shape without the last dim
            return y

        cos, sin = rope_tables(seq_len, hd, cfg.rope_theta, self.dtype, input_ids.device,
                               cfg.rope_scaling, exact=cfg.rope_angles == "exact")  # (T, hd)

        x = self.model.embed_tokens.weight[input_ids]  # (B, T, d)
        keep("model.embed_tokens.out", x)
        for i, layer in enumerate(self.model.layers):
            p = f"model.layers.{i}."
            attn = layer.self_attn
            # --- attention block ---
            h = norm(p + "input_layernorm", p + "input_layernorm.out", x,
                     layer.input_layernorm.weight)  # (B, T, d)
            q = attn.q_proj(h).view(batch, seq_len, hq, hd)
            k = attn.k_proj(h).view(batch, seq_len, hkv, hd)
            v = attn.v_proj(h).view(batch, seq_len, hkv, hd)
            keep(p + "self_attn.q_proj.out", q)
            keep(p + "self_attn.k_proj.out", k)
            keep(p + "self_attn.v_proj.out", v)
            if cfg.qk_norm:
                # per head, over hd
                q = norm(p + "self_attn.q_norm", p + "self_attn.q_normed", q, attn.q_norm.weight)
                k = norm(p + "self_attn.k_norm", p + "self_attn.k_normed", k, attn.k_norm.weight)
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
            keep(p + "self_attn.q_rotary", q)
            keep(p + "self_attn.k_rotary", k)
            out, probs = causal_attention(q, k, v, use_sdpa=self.attention == "sdpa")
            if probs is not None:
                keep(p + "self_attn.attn_probs", probs)  # (B, Hq, T, T)
            keep(p + "self_attn.attn_out", out)  # (B, T, Hq*hd)
            o = attn.o_proj(out)  # (B, T, d)
            keep(p + "self_attn.o_proj.out", o)
            x = x + o
            keep(p + "attn_residual", x)
            # --- MLP block (SwiGLU) ---
            h2 = norm(p + "post_attention_layernorm", p + "post_attention_layernorm.out", x,
                      layer.post_attention_layernorm.weight)
            gate = layer.mlp.gate_proj(h2)  # (B, T, F)
            up = layer.mlp.up_proj(h2)  # (B, T, F)
            keep(p + "mlp.gate_proj.out", gate)
            keep(p + "mlp.up_proj.out", up)
            act = F.silu(gate) * up
            keep(p + "mlp.act", act)
            down = layer.mlp.down_proj(act)  # (B, T, d)
            keep(p + "mlp.down_proj.out", down)
            x = x + down
            keep(p + "out", x)
        xn = norm("model.norm", "model.norm.out", x, self.model.norm.weight)
        logits = xn @ self.output_matrix().t()  # (B, T, V)
        keep("logits", logits)

        loss = None
        if targets is not None:
            if targets.shape != input_ids.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} != input_ids shape "
                                 f"{tuple(input_ids.shape)}")
            loss = masked_cross_entropy(logits, targets)
            if capture is not None:
                keep("loss.logsumexp", torch.logsumexp(logits, dim=-1))  # (B, T), every position
        return logits, loss


# ----------------------------------------------------------------------------------------------------
# Init, weights I/O, optimizer


@torch.no_grad()
def init_weights(model: Transformer, seed: int) -> None:
    """Matrices (embedding, every projection) ~ N(0, initializer_range); RMSNorm weights = 1;
    o_proj and down_proj = 0 when zero_init_output_projections. Same distribution as the C++ init,
    not the same bits."""
    cfg = model.config
    generator = torch.Generator().manual_seed(int(seed))
    for name, param in model.named_parameters():
        if param.dim() == 1:
            param.fill_(1.0)
        elif cfg.zero_init_output_projections and (name.endswith("self_attn.o_proj.weight")
                                                   or name.endswith("mlp.down_proj.weight")):
            param.zero_()
        else:
            values = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            param.copy_(values * cfg.initializer_range)


def expected_shapes(config: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """Every parameter name with its shape, in state_dict order."""
    model = Transformer(config, dtype=torch.float32)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@torch.no_grad()
def load_safetensors(model: Transformer, path: str) -> None:
    """Loads HF-named weights from a safetensors file, converting to the model's dtype.

    Fails naming every missing, unexpected or wrongly shaped tensor. A tied model accepts an
    `lm_head.weight` only when it equals the embedding (some exporters write both).
    """
    from safetensors.torch import load_file

    tensors = load_file(path)
    own = model.state_dict()
    if model.config.tie_word_embeddings and "lm_head.weight" in tensors:
        embed = tensors.get("model.embed_tokens.weight")
        if embed is not None and torch.equal(tensors["lm_head.weight"], embed):
            del tensors["lm_head.weight"]
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong_shape = [f"{n}: file {tuple(tensors[n].shape)}, model {tuple(own[n].shape)}"
                   for n in own if n in tensors and tensors[n].shape != own[n].shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"{path}: weights do not match the model config:\n"
                         f"  missing keys: {missing}\n"
                         f"  unexpected keys: {unexpected}\n"
                         f"  wrong shapes: {wrong_shape}")
    for name, param in own.items():
        param.copy_(tensors[name].to(dtype=param.dtype))


@torch.no_grad()
def save_safetensors(model: Transformer, path: str, dtype: Optional[torch.dtype] = None) -> None:
    """Writes every parameter under its HF name (in `dtype`, default the model's)."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().to(dtype=dtype or t.dtype, device="cpu").contiguous()
               for name, t in model.state_dict().items()}
    save_file(tensors, path)


def dump_step(model: Transformer, input_ids: torch.Tensor, targets: torch.Tensor
              ) -> Dict[str, torch.Tensor]:
    """One forward + backward, returning every tensor `reftrain dump` writes, in its walk order.

    The order (debug/diff.h): parameters (HF names), the activations in execution order, `loss`,
    then `grad:<param>` in the order backward produces them (the reverse of the parameters').
    Gradients are cleared first, so the step stands alone.
    """
    model.zero_grad(set_to_none=True)
    capture: Dict[str, torch.Tensor] = {}
    _, loss = model(input_ids, targets, capture=capture)
    loss.backward()
    params = list(model.named_parameters())
    out: Dict[str, torch.Tensor] = {name: p.detach().clone() for name, p in params}
    out.update(capture)
    out["loss"] = loss.detach()
    for name, p in reversed(params):
        out["grad:" + name] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
    return out


def save_dump(tensors: Dict[str, torch.Tensor], path: str,
              producer: str = "reftrain_mirror.py") -> None:
    """Writes a dump (dict order = walk order) with that order in __metadata__ "reftrain.order"; the
    writer is tools/python/dump_hooks.py's, so every PyTorch-side dump is written the same way."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import dump_hooks  # noqa: E402 (next to this file; plain torch + safetensors)

    dump_hooks.save_dump(tensors, path, producer=producer)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0,
                   betas: Tuple[float, float] = (0.9, 0.95), eps: float = 1e-8
                   ) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on 2-D weights (all matrices, embedding and lm_head
    included) and none on 1-D norm weights. Uses the fused or foreach implementation where this
    PyTorch version supports it."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    accepted = inspect.signature(torch.optim.AdamW).parameters
    candidates = []
    if "fused" in accepted:
        candidates.append({"fused": True})  # CUDA since 2.0, CPU since 2.4; refused otherwise
    if "foreach" in accepted:
        candidates.append({"foreach": True})
    candidates.append({})
    for extra in candidates:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **extra)
        except (RuntimeError, ValueError, TypeError):
            continue  # this implementation is not available for these tensors; try the next
    raise AssertionError("unreachable: plain AdamW always constructs")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description="One-line summary of a reftrain model config.")
    parser.add_argument("config", help="HF-style config.json")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", help="optional safetensors file to load")
    parser.add_argument("--dump", metavar="OUT",
                        help="instead of the summary, run one step on --dump-batch and write every "
                             "named tensor to OUT, as `reftrain dump` does")
    parser.add_argument("--dump-batch", metavar="BATCH",
                        help="safetensors with input_ids and targets, (B, T) int64 (for --dump)")
    parser.add_argument("--dtype", choices=["f32", "f64"], default="f32",
                        help="compute dtype (default f32)")
    parser.add_argument("--rope-angles", choices=["hf", "exact"], default=None,
                        help="hf: HF's float32 RoPE angles (default); exact: fp64 angles")
    parser.add_argument("--bug", action="append", default=[],
                        choices=[f.name for f in dataclasses.fields(MirrorBugs)],
                        help="turn on a mirror bug switch (repeatable)")
    args = parser.parse_args()

    for name in args.bug:
        setattr(bugs, name, True)
    config = ModelConfig.from_json(args.config)
    if args.rope_angles:
        config.rope_angles = args.rope_angles
    model = Transformer(config, dtype={"f32": torch.float32, "f64": torch.float64}[args.dtype])
    init_weights(model, args.seed)
    if args.weights:
        load_safetensors(model, args.weights)
    if args.dump:
        if not (args.weights and args.dump_batch):
            parser.error("--dump needs --weights and --dump-batch")
        from safetensors.torch import load_file

        batch = load_file(args.dump_batch)
        tensors = dump_step(model, batch["input_ids"], batch["targets"])
        save_dump(tensors, args.dump, producer="reftrain_mirror.py " + args.dtype)
        print(f"loss {tensors['loss'].item():.9g}; wrote {len(tensors)} tensors to {args.dump}")
        return
    seq_len = min(args.seq_len, config.max_position_embeddings)
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, config.vocab_size, (args.batch_size, seq_len + 1), generator=generator)
    _, loss = model(ids[:, :-1], ids[:, 1:])
    print(f"{args.config}: {count_parameters(model):,} parameters, "
          f"loss on a random batch {loss.item():.4f} (ln V = {math.log(config.vocab_size):.4f}), "
          f"B={args.batch_size} T={seq_len} qk_norm={config.qk_norm} "
          f"tied={config.tie_word_embeddings}")


if __name__ == "__main__":
    main()

"""user_models.py — four Qwen3/Llama-style models written the way outsiders write them, for test_diff_outsider.py.

None of this is derived from reftrain's mirror: each model is its own from-scratch PyTorch code in one
of the layouts reftrain ships a map for (maps/*.json), with its own module names and its own way of
writing RoPE, GQA and the MLP:

  hf          HF module names (model.layers.{i}.self_attn.q_proj, ...), rotate-half RoPE on (B, H, T, D)
  meta-llama  Meta's reference names (layers.{i}.attention.wq, feed_forward.w1/w2/w3), RoPE on
              interleaved pairs in real arithmetic, repeat_kv by expand + reshape
  torchtitan  torchtitan's names (layers as a ModuleDict), complex-number RoPE (view_as_complex)
  nanogpt     one fused c_attn for q/k/v, one fused c_fc for gate/up, tied lm_head, masked_fill with a
              registered tril buffer

The only reftrain-specific lines are the dump_hooks.tap(...) calls (counted by the test) — and the bug
switches, which stand for the bugs users write: each is a line or two of the user's code done wrong.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Set

import torch
import torch.nn as nn
import torch.nn.functional as F

import dump_hooks

LAYOUTS = ("hf", "meta-llama", "torchtitan", "nanogpt")
MAP_OF = {"hf": "hf", "meta-llama": "meta-llama", "torchtitan": "torchtitan-llama", "nanogpt": "nanogpt"}


@dataclass
class Cfg:
    vocab: int = 61
    d: int = 48
    ffn: int = 80
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    theta: float = 10000.0
    eps: float = 1e-6
    tie: bool = False
    qk_norm: bool = True
    max_pos: int = 64
    bugs: Set[str] = field(default_factory=set)

    def reftrain_config(self) -> dict:
        return {"vocab_size": self.vocab, "hidden_size": self.d, "intermediate_size": self.ffn,
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim, "rope_theta": self.theta,
                "rms_norm_eps": self.eps, "tie_word_embeddings": self.tie, "qk_norm": self.qk_norm,
                "max_position_embeddings": self.max_pos}


def angles(T: int, D: int, theta: float, dtype: torch.dtype) -> torch.Tensor:
    """(T, D/2) rotation angles t * theta^(-2i/D), computed in the model's dtype: float32 as HF does
    for an f32 model, exactly (fp64) for an f64 model."""
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=dtype) / D))
    return torch.arange(T, dtype=dtype)[:, None] * inv[None, :]


# ----------------------------------------------------------------------------- hf

class HfRMSNorm(nn.Module):
    def __init__(self, dim, eps, bugs=frozenset(), over_heads=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.bugs, self.over_heads = eps, bugs, over_heads

    def forward(self, x):
        if self.over_heads and "qknorm_wrong_axis" in self.bugs:  # normalises all heads together
            var = x.pow(2).mean(dim=(-2, -1), keepdim=True)
        else:
            var = x.pow(2).mean(-1, keepdim=True)
        if self.over_heads and "qknorm_eps_outside" in self.bugs:
            return self.weight * (x / (var.sqrt() + self.eps))
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class HfAttention(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.d, c.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.d, c.kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.d, c.kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.d, bias=False)
        if c.qk_norm:
            self.q_norm = HfRMSNorm(c.head_dim, c.eps, c.bugs, over_heads=True)
            self.k_norm = HfRMSNorm(c.head_dim, c.eps, c.bugs, over_heads=True)

    def rope(self, x, ang):
        if "rope_interleaved" in self.c.bugs:  # Meta's pairs on an HF-layout checkpoint
            x1, x2 = x[..., 0::2], x[..., 1::2]
            c, s = ang.cos(), ang.sin()
            return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
        emb = torch.cat((ang, ang), dim=-1)
        return x * emb.cos() + rotate_half(x) * emb.sin()

    def forward(self, x, ang):
        c = self.c
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, c.head_dim)
        k = self.k_proj(x).view(B, T, -1, c.head_dim)
        v = self.v_proj(x).view(B, T, -1, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = self.rope(q, ang), self.rope(k, ang)
        dump_hooks.tap("q_rotary", q)
        dump_hooks.tap("k_rotary", k)
        n_rep = c.heads // c.kv_heads
        if "gqa_repeat" in c.bugs:
            k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
        else:
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(c.head_dim)
        mask = torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)
        probs = torch.softmax(scores + mask, dim=-1)
        dump_hooks.tap("attn_probs", probs)
        out = (probs @ v).transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(out)


class HfMLP(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.gate_proj = nn.Linear(c.d, c.ffn, bias=False)
        self.up_proj = nn.Linear(c.d, c.ffn, bias=False)
        self.down_proj = nn.Linear(c.ffn, c.d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class HfLayer(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.input_layernorm = HfRMSNorm(c.d, c.eps)
        self.self_attn = HfAttention(c)
        self.post_attention_layernorm = HfRMSNorm(c.d, c.eps)
        self.mlp = HfMLP(c)

    def forward(self, x, ang):
        h = x + self.self_attn(self.input_layernorm(x), ang)
        return h + self.mlp(self.post_attention_layernorm(h))


class HfInner(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab, c.d)
        self.layers = nn.ModuleList(HfLayer(c) for _ in range(c.layers))
        self.norm = HfRMSNorm(c.d, c.eps)


class HfStyleLM(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.model = HfInner(c)
        self.lm_head = nn.Linear(c.d, c.vocab, bias=False)
        if c.tie:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, ids):
        x = self.model.embed_tokens(ids)
        ang = angles(ids.shape[1], self.c.head_dim, self.c.theta, x.dtype)
        for layer in self.model.layers:
            x = layer(x, ang)
        return self.lm_head(self.model.norm(x))


# ----------------------------------------------------------------------------- meta-llama

class RMSNorm(nn.Module):  # Meta's
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        return self._norm(x) * self.weight


def apply_rotary_interleaved(x, ang):
    """x (B, T, H, D); pairs (2i, 2i+1) rotated by ang[t, i], in real arithmetic."""
    xr = x.reshape(*x.shape[:-1], -1, 2)
    c, s = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    a, b = xr[..., 0], xr[..., 1]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(3)


def repeat_kv(x, n_rep):
    B, T, Hkv, D = x.shape
    return x if n_rep == 1 else x[:, :, :, None, :].expand(B, T, Hkv, n_rep, D).reshape(B, T, Hkv * n_rep, D)


class MetaAttention(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.wq = nn.Linear(c.d, c.heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.d, c.kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(c.d, c.kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.heads * c.head_dim, c.d, bias=False)

    def forward(self, x, ang, mask):
        c = self.c
        B, T, _ = x.shape
        xq = self.wq(x).view(B, T, c.heads, c.head_dim)
        xk = self.wk(x).view(B, T, c.kv_heads, c.head_dim)
        xv = self.wv(x).view(B, T, c.kv_heads, c.head_dim)
        xq, xk = apply_rotary_interleaved(xq, ang), apply_rotary_interleaved(xk, ang)
        dump_hooks.tap("q_rotary", xq)
        dump_hooks.tap("k_rotary", xk)
        keys, values = repeat_kv(xk, c.heads // c.kv_heads), repeat_kv(xv, c.heads // c.kv_heads)
        xq, keys, values = xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)
        scale = c.head_dim if "softmax_scale" in c.bugs else math.sqrt(c.head_dim)
        scores = torch.matmul(xq, keys.transpose(2, 3)) / scale
        probs = F.softmax(scores + mask, dim=-1)
        dump_hooks.tap("attn_probs", probs)
        out = torch.matmul(probs, values).transpose(1, 2).contiguous().view(B, T, -1)
        return self.wo(out)


class MetaFeedForward(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.w1 = nn.Linear(c.d, c.ffn, bias=False)
        self.w2 = nn.Linear(c.ffn, c.d, bias=False)
        self.w3 = nn.Linear(c.d, c.ffn, bias=False)

    def forward(self, x):
        if "gate_up_swapped" in self.c.bugs:
            return self.w2(F.silu(self.w3(x)) * self.w1(x))
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MetaBlock(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.attention = MetaAttention(c)
        self.feed_forward = MetaFeedForward(c)
        self.attention_norm = RMSNorm(c.d, c.eps)
        self.ffn_norm = RMSNorm(c.d, c.eps)

    def forward(self, x, ang, mask):
        h = x + self.attention(self.attention_norm(x), ang, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class MetaTransformer(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.tok_embeddings = nn.Embedding(c.vocab, c.d)
        self.layers = nn.ModuleList(MetaBlock(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.d, c.eps)
        self.output = nn.Linear(c.d, c.vocab, bias=False)

    def forward(self, tokens):
        T = tokens.shape[1]
        h = self.tok_embeddings(tokens)
        ang = angles(T, self.c.head_dim, self.c.theta, h.dtype)
        mask = torch.triu(torch.full((T, T), float("-inf"), dtype=h.dtype), diagonal=1)
        for layer in self.layers:
            h = layer(h, ang, mask)
        return self.output(self.norm(h))


# ----------------------------------------------------------------------------- torchtitan

def precompute_freqs_cis(c: Cfg, T: int, dtype):
    ang = angles(T, c.head_dim, c.theta, dtype)
    return torch.polar(torch.ones_like(ang), ang)


def apply_rotary_emb(xq, xk, freqs_cis):
    xq_ = torch.view_as_complex(xq.reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.reshape(*xk.shape[:-1], -1, 2))
    f = freqs_cis[None, :, None, :]
    return torch.view_as_real(xq_ * f).flatten(3), torch.view_as_real(xk_ * f).flatten(3)


class TitanAttention(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.n_rep = c.heads // c.kv_heads
        self.wq = nn.Linear(c.d, c.heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.d, c.kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(c.d, c.kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.heads * c.head_dim, c.d, bias=False)

    def forward(self, x, freqs_cis):
        bs, seqlen, _ = x.shape
        xq = self.wq(x).view(bs, seqlen, -1, self.c.head_dim)
        xk = self.wk(x).view(bs, seqlen, -1, self.c.head_dim)
        xv = self.wv(x).view(bs, seqlen, -1, self.c.head_dim)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)
        dump_hooks.tap("q_rotary", xq)
        dump_hooks.tap("k_rotary", xk)
        keys, values = repeat_kv(xk, self.n_rep), repeat_kv(xv, self.n_rep)
        xq, xk, xv = (t.transpose(1, 2) for t in (xq, keys, values))
        att = (xq @ xk.transpose(-2, -1)) * self.c.head_dim ** -0.5
        causal = torch.ones(seqlen, seqlen, dtype=torch.bool).tril()
        att = torch.softmax(att.masked_fill(~causal, float("-inf")), dim=-1)
        dump_hooks.tap("attn_probs", att)
        return self.wo((att @ xv).transpose(1, 2).contiguous().view(bs, seqlen, -1))


class TitanFeedForward(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.w1 = nn.Linear(c.d, c.ffn, bias=False)
        self.w2 = nn.Linear(c.ffn, c.d, bias=False)
        self.w3 = nn.Linear(c.d, c.ffn, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TitanBlock(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.attention = TitanAttention(c)
        self.feed_forward = TitanFeedForward(c)
        self.attention_norm = RMSNorm(c.d, c.eps)
        self.ffn_norm = RMSNorm(c.d, c.eps)

    def forward(self, x, freqs_cis):
        h = x + self.attention(self.attention_norm(x), freqs_cis)
        return h + self.feed_forward(self.ffn_norm(h))


class TitanTransformer(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.tok_embeddings = nn.Embedding(c.vocab, c.d)
        self.layers = nn.ModuleDict({str(i): TitanBlock(c) for i in range(c.layers)})
        self.norm = RMSNorm(c.d, c.eps)
        self.output = nn.Linear(c.d, c.vocab, bias=False)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        freqs_cis = precompute_freqs_cis(self.c, tokens.shape[1], h.dtype)
        for layer in self.layers.values():
            h = layer(h, freqs_cis)
        if "final_norm_missing" not in self.c.bugs:
            h = self.norm(h)
        return self.output(h)


# ----------------------------------------------------------------------------- nanogpt

class NanoRMSNorm(nn.Module):
    def __init__(self, dim, eps, bugs=frozenset()):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.bugs = eps, bugs

    def forward(self, x):
        ms = x.pow(2).mean(-1, keepdim=True)
        if "qknorm_eps_outside" in self.bugs:
            return x / (ms.sqrt() + self.eps) * self.weight
        return x / torch.sqrt(ms + self.eps) * self.weight


class CausalSelfAttention(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.c_attn = nn.Linear(c.d, (c.heads + 2 * c.kv_heads) * c.head_dim, bias=False)
        self.c_proj = nn.Linear(c.heads * c.head_dim, c.d, bias=False)
        if c.qk_norm:
            self.q_norm = NanoRMSNorm(c.head_dim, c.eps, c.bugs)
            self.k_norm = NanoRMSNorm(c.head_dim, c.eps, c.bugs)
        diagonal = 1 if "causal_off_by_one" in c.bugs else 0  # 1: each position also sees the next one
        self.register_buffer("bias", torch.tril(torch.ones(c.max_pos, c.max_pos), diagonal=diagonal)
                             .view(1, 1, c.max_pos, c.max_pos), persistent=False)

    def rope(self, x, cos, sin):
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        if "rope_wrong_half" in self.c.bugs:  # the minus sign on the other half
            return x * cos + torch.cat((x2, -x1), dim=-1) * sin
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(self, x, cos, sin):
        c = self.c
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split([c.heads * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim], dim=2)
        q = q.view(B, T, c.heads, c.head_dim)
        k = k.view(B, T, c.kv_heads, c.head_dim)
        v = v.view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        dump_hooks.tap("q_rotary", q)
        dump_hooks.tap("k_rotary", k)
        k = k.repeat_interleave(c.heads // c.kv_heads, dim=1)
        v = v.repeat_interleave(c.heads // c.kv_heads, dim=1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        dump_hooks.tap("attn_probs", att)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, -1)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c_fc = nn.Linear(c.d, 2 * c.ffn, bias=False)
        self.c_proj = nn.Linear(c.ffn, c.d, bias=False)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.c_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.ln_1 = NanoRMSNorm(c.d, c.eps)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = NanoRMSNorm(c.d, c.eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        if "residual_after_norm" in self.c.bugs:
            x = self.ln_1(x)
            x = x + self.attn(x, cos, sin)
        else:
            x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab, c.d),
            h=nn.ModuleList([Block(c) for _ in range(c.layers)]),
            ln_f=NanoRMSNorm(c.d, c.eps),
        ))
        self.lm_head = nn.Linear(c.d, c.vocab, bias=False)
        if c.tie:
            self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        x = self.transformer.wte(idx)
        ang = angles(idx.shape[1], self.c.head_dim, self.c.theta, x.dtype)
        emb = torch.cat((ang, ang), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        for block in self.transformer.h:
            x = block(x, cos, sin)
        return self.lm_head(self.transformer.ln_f(x))


BUILDERS = {"hf": HfStyleLM, "meta-llama": MetaTransformer, "torchtitan": TitanTransformer, "nanogpt": GPT}


def build(layout: str, c: Cfg, dtype: torch.dtype, seed: int, std: float = 0.2) -> nn.Module:
    """The user's model with their own init: every matrix N(0, std), every norm weight 1."""
    torch.manual_seed(seed)
    model = BUILDERS[layout](c).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model

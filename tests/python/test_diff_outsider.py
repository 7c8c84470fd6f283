"""test_diff_outsider.py — `reftrain diff` on models written by outsiders, in their own layouts.

Run by ctest as
    python tests/python/test_diff_outsider.py --reftrain build/reftrain --workdir DIR [--configs N]
and exits non-zero on any failure. The models are tests/python/user_models.py: four from-scratch
PyTorch models (HF names, Meta's reference layout, torchtitan's, nanoGPT-style fused q/k/v and
gate/up), none derived from reftrain's mirror. Each case follows the documented outsider's path:

  1. save the user's weights in THEIR layout, `reftrain dump --weights theirs --map maps/<layout>.json
     --optimizer adamw ...` (reftrain reads their checkpoint through the map);
  2. the user's own training step with dump_hooks.attach(model, map=...), their taps, their AdamW and
     clipping, recorder.watch(optimizer), recorder.save(...);
  3. `reftrain diff ref.safetensors mine.safetensors`.

It checks:
  A. every layout diffs clean (exit 0, nothing suspicious, full coverage) in f32 and f64, with at most
     20 lines of taps in the user's code;
  B. each of 14 planted bugs (13 from the issue and the float32 RoPE angles) is named at the right
     tensor with the right signature, at default settings;
  C. no false alarm (no failing or suspicious row, no coverage gap) over N random configs x seeds
     (default 30 configs, each in f32 and f64: 60 diffs), across the four layouts;
  D. coverage: without the map the diff refuses to say "same" (exit 3), --partial accepts it;
  E. bad maps (a tensor named twice, a split that does not add up, a pattern that matches nothing, a
     map for another layer count) fail with the map file and the entry named.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "python"))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import dump_hooks  # noqa: E402
import user_models as um  # noqa: E402

TIMEOUT_S = 120


class Checks:
    def __init__(self):
        self.failures: List[str] = []

    def expect(self, condition: bool, what: str, detail: str = "") -> None:
        print(f"{'ok  ' if condition else 'FAIL'} {what}")
        if not condition:
            self.failures.append(what)
            if detail:
                print("     " + detail.replace("\n", "\n     "))


class Runner:
    def __init__(self, reftrain: str, workdir: str):
        self.reftrain = reftrain
        self.w = workdir
        self.count = 0

    def run(self, args: List[str]) -> subprocess.CompletedProcess:
        return subprocess.run([self.reftrain] + args, capture_output=True, text=True, timeout=TIMEOUT_S)

    def case(self, layout: str, cfg: um.Cfg, dtype: torch.dtype, seed: int, *, B: int = 2, T: int = 9,
             lr: float = 1e-3, wd: float = 0.1, clip: float = 0.5, std: float = 0.2,
             rope_angles: Optional[str] = None, use_map: bool = True, diff_args: Tuple[str, ...] = (),
             tweak=None) -> Tuple[subprocess.CompletedProcess, str, str]:
        """One outsider's round trip; returns the diff's result and the two dump paths."""
        self.count += 1
        tag = f"{self.count:03d}_{layout}"
        d = os.path.join(self.w, tag)
        os.makedirs(d, exist_ok=True)
        model = um.build(layout, cfg, dtype, seed, std)
        if tweak:
            tweak(model)
        # Their checkpoint, in their names and layout (tied weights cloned: safetensors refuses shared memory).
        theirs = os.path.join(d, "theirs.safetensors")
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, theirs)
        config = os.path.join(d, "config.json")
        with open(config, "w") as f:
            json.dump(cfg.reftrain_config(), f)
        g = torch.Generator().manual_seed(seed + 7)
        ids = torch.randint(0, cfg.vocab, (B, T), generator=g)
        targets = torch.roll(ids, -1, 1)
        targets[:, -1] = -100
        targets[torch.rand(B, T, generator=g) < 0.15] = -100
        batch = os.path.join(d, "batch.safetensors")
        save_file({"input_ids": ids, "targets": targets}, batch)

        ref = os.path.join(d, "ref.safetensors")
        dtype_flag = "f64" if dtype == torch.float64 else "f32"
        angles = rope_angles or ("exact" if dtype == torch.float64 else "hf")
        proc = self.run(["dump", "--config", config, "--weights", theirs, "--map",
                         os.path.join(ROOT, "maps", um.MAP_OF[layout] + ".json"), "--batch", batch, "--out", ref,
                         "--dtype", dtype_flag, "--rope-angles", angles, "--optimizer", "adamw", "--lr", str(lr),
                         "--weight-decay", str(wd), "--max-grad-norm", str(clip)])
        if proc.returncode != 0:
            raise RuntimeError(f"reftrain dump failed: {proc.stdout}{proc.stderr}")

        # ---- the user's own step, as they would write it
        mine = os.path.join(d, "mine.safetensors")
        recorder = dump_hooks.attach(model, map=um.MAP_OF[layout] if use_map else None)
        logits = model(ids)
        loss = dump_hooks.masked_cross_entropy(logits, targets)
        loss.backward()
        if "adamw_decay_on_norms" in cfg.bugs:
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        else:
            decay = [p for p in model.parameters() if p.dim() >= 2]
            no_decay = [p for p in model.parameters() if p.dim() < 2]
            groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
            optimizer = (NoBiasCorrectionAdamW(groups, lr=lr) if "adamw_no_bias_correction" in cfg.bugs
                         else torch.optim.AdamW(groups, lr=lr))
        recorder.watch(optimizer)
        if clip > 0 and "clip_after_step" not in cfg.bugs:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if clip > 0 and "clip_after_step" in cfg.bugs:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        recorder.save(mine, logits=logits, loss=loss)
        recorder.remove()
        return self.run(["diff", ref, mine] + list(diff_args)), ref, mine


class NoBiasCorrectionAdamW(torch.optim.Optimizer):
    """A hand-written AdamW, as users write them, that forgets the bias correction."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(state["exp_avg"], state["exp_avg_sq"].sqrt().add_(group["eps"]), value=-group["lr"])


def flagged(stdout: str) -> Tuple[Optional[str], str]:
    """The first flagged tensor's name and the localisation text (signature and likely cause)."""
    m = re.search(r"^first (?:tensor over tolerance|suspicious tensor): (\S+)", stdout, re.M)
    text = " ".join(stdout.split())
    loc = text[text.find("signature:"):] if "signature:" in text else ""
    return (m.group(1) if m else None), loc


def tap_lines() -> int:
    with open(os.path.join(HERE, "user_models.py")) as f:
        return sum(1 for line in f if "dump_hooks.tap(" in line)


def default_cfg(layout: str, **kw) -> um.Cfg:
    llama = layout in ("meta-llama", "torchtitan")
    base = dict(qk_norm=not llama, tie=layout == "nanogpt")
    base.update(kw)
    return um.Cfg(**base)


BUGS = [
    # (layout, bug, expected first tensor (a regex), words the localisation must contain, extra case args)
    ("hf", "rope_interleaved", r"model\.layers\.0\.self_attn\.q_rotary", ["RoPE", "interleaved"], {}),
    ("nanogpt", "rope_wrong_half", r"model\.layers\.0\.self_attn\.q_rotary", ["RoPE", "minus sign"], {}),
    ("nanogpt", "qknorm_eps_outside", r"model\.layers\.0\.self_attn\.q_normed", ["eps inside the sqrt"],
     {"tweak": "small_q"}),
    ("hf", "qknorm_wrong_axis", r"model\.layers\.0\.self_attn\.q_normed", ["axis it normalises over"], {}),
    ("hf", "gqa_repeat", r"model\.layers\.0\.self_attn\.attn_probs", ["heads 0, 3 agree", "repeat_interleave"], {}),
    ("meta-llama", "softmax_scale", r"model\.layers\.0\.self_attn\.attn_probs", ["softmax scale"], {}),
    ("nanogpt", "causal_off_by_one", r"model\.layers\.0\.self_attn\.attn_probs", ["causal mask is off by one"], {}),
    ("meta-llama", "gate_up_swapped", r"model\.layers\.0\.mlp\.act", ["gate and up swapped"], {}),
    ("torchtitan", "final_norm_missing", r"logits", ["final norm", "no model.norm.out"], {}),
    ("nanogpt", "residual_after_norm", r"model\.layers\.0\.attn_residual", ["residual wiring"], {}),
    ("hf", "adamw_decay_on_norms", r"updated:model\.layers\.0\.input_layernorm\.weight",
     ["weight decay", "decays a tensor reftrain does not"], {}),
    ("torchtitan", "adamw_no_bias_correction", r"updated:model\.embed_tokens\.weight", ["bias correction"], {}),
    ("meta-llama", "clip_after_step", r"grad\.clipped:model\.embed_tokens\.weight",
     ["clipping ran after optimizer.step()"], {}),
]


def small_q(model) -> None:
    """Queries and keys at rms ~0.17, where eps outside the sqrt changes QK-norm by eps / (2 ms) ~ 2e-5: the issue's case."""
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(0.12)


def random_cfg(rng: random.Random, layout: str) -> um.Cfg:
    heads = rng.choice([2, 4, 6])
    kv = rng.choice([k for k in (1, 2, 3, 6) if heads % k == 0 and k <= heads])
    llama = layout in ("meta-llama", "torchtitan")
    return um.Cfg(vocab=rng.randint(17, 97), d=rng.choice([16, 24, 32, 48]), ffn=rng.choice([24, 40, 64]),
                  layers=rng.randint(1, 3), heads=heads, kv_heads=kv, head_dim=rng.choice([4, 8, 16]),
                  theta=rng.choice([10000.0, 500000.0]), eps=rng.choice([1e-6, 1e-5]),
                  tie=(layout == "nanogpt") or (layout == "hf" and rng.random() < 0.5),
                  qk_norm=(not llama) and rng.random() < 0.8)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reftrain", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--configs", type=int, default=30, help="random configs for the false-alarm sweep")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(1)
    checks = Checks()
    r = Runner(args.reftrain, args.workdir)

    print("## A. every layout diffs clean in f32 and f64 through its shipped map")
    n_taps = tap_lines()
    checks.expect(n_taps <= 20, f"the four user models carry {n_taps} tap lines in all (<= 20)")
    for layout in um.LAYOUTS:
        for dtype in (torch.float32, torch.float64):
            proc, _, _ = r.case(layout, default_cfg(layout), dtype, seed=11)
            name, _ = flagged(proc.stdout)
            cov = re.search(r"^coverage: .*$", proc.stdout, re.M)
            checks.expect(proc.returncode == 0 and name is None and "coverage gap" not in proc.stdout,
                          f"{layout} {str(dtype)[6:]}: exit 0, nothing flagged; {cov.group(0) if cov else '?'}",
                          proc.stdout[-3000:] + proc.stderr)
            text = " ".join(proc.stdout.split())
            one_sided = text[text.find("only in A:") + 10:text.find("coverage:")].split() if "only in A:" in text else []
            checks.expect(all(n.endswith(".rstd") or n == "loss.logsumexp" for n in one_sided),
                          f"{layout} {str(dtype)[6:]}: every activation compared but the saved statistics "
                          f"(only in A: {' '.join(one_sided)})", proc.stdout[-600:])

    print("\n## B. planted bugs: the right tensor, the right signature, default settings")
    table = []
    for layout, bug, tensor, words, extra in BUGS:
        cfg = default_cfg(layout, bugs={bug})
        tweak = small_q if extra.get("tweak") == "small_q" else None
        proc, _, _ = r.case(layout, cfg, torch.float32, seed=5, tweak=tweak)
        name, loc = flagged(proc.stdout)
        good = proc.returncode == 1 and name is not None and re.fullmatch(tensor, name) is not None \
            and all(w in loc for w in words)
        table.append((bug, layout, name, loc[:160]))
        checks.expect(good, f"{bug} ({layout}): named {name}, signature has {words}", proc.stdout[-2500:] + proc.stderr)
    # The float32 RoPE angles: a correct fp64 model with exact angles against reftrain's HF angles.
    proc, _, _ = r.case("hf", default_cfg("hf"), torch.float64, seed=5, rope_angles="hf")
    name, loc = flagged(proc.stdout)
    checks.expect(proc.returncode == 1 and name == "model.layers.0.self_attn.q_rotary"
                  and "float32 vs exact RoPE angles" in loc and "--rope-angles exact" in loc,
                  f"exact-angle fp64 model vs reftrain's float32 angles: named {name}, float32-angle signature",
                  proc.stdout[-2500:])
    table.append(("float32 vs exact RoPE angles (f64)", "hf", name, loc[:160]))
    print("\n| bug | layout | first flagged tensor | localisation |")
    print("|---|---|---|---|")
    for bug, layout, name, loc in table:
        print(f"| {bug} | {layout} | `{name}` | {loc} |")

    print(f"\n## C. false alarms over {args.configs} random configs x seeds, f32 and f64")
    rng = random.Random(args.seed)
    alarms, runs, worst, near_zero = [], 0, {}, {}
    for k in range(args.configs):
        layout = um.LAYOUTS[k % len(um.LAYOUTS)]
        cfg = random_cfg(rng, layout)
        seed = rng.randint(0, 10 ** 6)
        B, T = rng.randint(1, 3), rng.randint(2, 12)
        lr, wd, clip = rng.choice([1e-3, 3e-4]), rng.choice([0.0, 0.1]), rng.choice([0.0, 0.3, 5.0])
        for dtype in (torch.float32, torch.float64):
            proc, _, _ = r.case(layout, cfg, dtype, seed, B=B, T=T, lr=lr, wd=wd, clip=clip,
                                std=rng.choice([0.02, 0.2]), diff_args=("--all",))
            runs += 1
            rows = re.findall(r"^\s+\d+\s+(\S+)\s+\S+\s+\S+\s+\S+\s+(\S+)\s+(.*)$", proc.stdout, re.M)
            for tensor, rel, status in rows:
                key = str(dtype)[6:]
                if "within atol" in status:  # a tensor of near-zeros: its max rel means nothing
                    near_zero[key] = near_zero.get(key, 0) + 1
                elif not tensor.endswith(".weight") or ":" in tensor:
                    worst[key] = max(worst.get(key, 0.0), float(rel))
            if proc.returncode != 0:
                alarms.append(f"{layout} {cfg} seed {seed} B{B} T{T} {str(dtype)[6:]}: exit {proc.returncode}\n"
                              + proc.stdout[-1500:])
    checks.expect(not alarms, f"{runs} correct-model diffs ({args.configs} configs x 2 dtypes): "
                              f"{len(alarms)} false alarms; worst max rel f32 {worst.get('float32', 0):.2e}, "
                              f"f64 {worst.get('float64', 0):.2e} (besides {near_zero.get('float32', 0)} f32 and "
                              f"{near_zero.get('float64', 0)} f64 near-zero tensors within atol)", "\n".join(alarms[:3]))

    print("\n## D. coverage")
    proc, ref, mine = r.case("nanogpt", default_cfg("nanogpt"), torch.float32, seed=3, use_map=False)
    checks.expect(proc.returncode == 3 and "insufficient coverage" in proc.stdout
                  and "transformer.h.{0-1}.attn.c_attn.weight" in " ".join(proc.stdout.split()),
                  "nanoGPT names without the map: exit 3, insufficient coverage, one-sided names grouped by layer",
                  proc.stdout[-2500:])
    proc = r.run(["diff", ref, mine, "--partial"])
    checks.expect(proc.returncode == 0 and "coverage is partial" in proc.stdout,
                  "--partial: exit 0 and says the coverage is partial", proc.stdout[-1500:])
    proc = r.run(["diff", ref, mine, "--map", os.path.join(ROOT, "maps", "nanogpt.json")])
    checks.expect(proc.returncode == 0, "the same dump with --map maps/nanogpt.json: exit 0", proc.stdout[-1500:])

    print("\n## E. bad maps name the file and the entry")
    d = os.path.join(args.workdir, "badmaps")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(ROOT, "maps", "meta-llama.json")) as f:
        meta = json.load(f)
    with open(os.path.join(ROOT, "maps", "nanogpt.json")) as f:
        nano = json.load(f)
    cfg = default_cfg("meta-llama")
    model = um.build("meta-llama", cfg, torch.float32, 1)
    theirs = os.path.join(d, "meta.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, theirs)
    gpt = um.build("nanogpt", default_cfg("nanogpt"), torch.float32, 1)
    gpt_weights = os.path.join(d, "gpt.safetensors")
    save_file({k: v.detach().clone().contiguous() for k, v in gpt.state_dict().items()}, gpt_weights)
    config = os.path.join(d, "config.json")
    with open(config, "w") as f:
        json.dump(cfg.reftrain_config(), f)
    nano_config = os.path.join(d, "nano_config.json")
    with open(nano_config, "w") as f:
        json.dump(default_cfg("nanogpt").reftrain_config(), f)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab, (1, 5), generator=g)
    batch = os.path.join(d, "batch.safetensors")
    save_file({"input_ids": ids, "targets": torch.roll(ids, -1, 1)}, batch)

    def bad(name: str, tensors: list, weights: str, cfg_path: str, words: List[str]) -> None:
        path = os.path.join(d, name + ".json")
        with open(path, "w") as f:
            json.dump({"about": name, "tensors": tensors}, f)
        proc = r.run(["dump", "--config", cfg_path, "--weights", weights, "--map", path, "--batch", batch,
                      "--out", os.path.join(d, "out.safetensors")])
        checks.expect(proc.returncode == 1 and path in proc.stderr and all(w in proc.stderr for w in words)
                      and "Traceback" not in proc.stderr and "terminate" not in proc.stderr,
                      f"{name}: exit 1 naming {os.path.basename(path)} and {words}", proc.stderr[-800:])

    twice = meta["tensors"] + [{"theirs": "layers.{i}.attention.wk.weight", "ours": "model.layers.{i}.mlp.up_proj.weight"}]
    bad("named_twice", twice, theirs, config, ["entry 35", "already mapped by", "entry 4"])
    split = [dict(e) for e in nano["tensors"]]
    split[2] = dict(split[2], split={"dim": 0, "sizes": ["q_dim", "q_dim", "kv_dim"]})
    bad("split_does_not_add_up", split, gpt_weights, nano_config, ["entry 3", "do not add up", "transformer.h.0.attn.c_attn.weight"])
    nothing = [dict(e) for e in meta["tensors"]]
    nothing[1] = dict(nothing[1], theirs="layers.{i}.attn_norm.weight")
    bad("matches_nothing", nothing, theirs, config, ["entry 2", "matches no tensor"])
    other_cfg = os.path.join(d, "three_layers.json")
    with open(other_cfg, "w") as f:
        json.dump(dict(cfg.reftrain_config(), num_hidden_layers=3), f)
    bad("other_layer_count", meta["tensors"], theirs, other_cfg, ["entry 2", "model has 3 layers"])

    # The optimizer's settings from a run config: the schedule's lr at the first step, clipping on.
    proc = r.run(["dump", "--config", config, "--weights", theirs, "--map", os.path.join(ROOT, "maps", "meta-llama.json"),
                  "--batch", batch, "--out", os.path.join(d, "rc.safetensors"), "--optimizer", "adamw",
                  "--run-config", os.path.join(ROOT, "configs", "addition.json")])
    checks.expect(proc.returncode == 0 and "adamw step: lr 4e-05" in proc.stdout and "(clipped)" in proc.stdout,
                  "dump --run-config configs/addition.json: lr 2e-3 x 1/50 (the first warmup step), clipping at 1.0",
                  proc.stdout + proc.stderr)

    print(f"\n{len(checks.failures)} failure(s)" if checks.failures else "\nall checks passed")
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""test_diff.py — `reftrain diff` against the PyTorch mirror and the hook script.

Run by ctest as
    python tests/python/test_diff.py --reftrain build/reftrain --workdir DIR
and exits non-zero on any failure. On one tiny Qwen3-style config (GQA, QK-norm, RoPE far from the
identity thanks to std-0.2 weights) it checks:

  1. `reftrain dump` (f32 and f64) and the mirror's dump (f64) carry the same names in the same stored
     execution order, and `reftrain diff` passes them (exit 0, nothing one-sided);
  2. the mirror with its `rope_wrong_half` bug switch: the diff exits 1 and names exactly
     model.layers.0.self_attn.q_rotary, every tensor listed before it passes, and every tensor it
     reports over tolerance comes after it (in both argument orders and with the f64 dump);
  3. tools/python/dump_hooks.py run on the mirror model writes a dump that diffs clean against
     reftrain's on the names it covers (and --strict counts the names it lacks);
  4. bad input: another shape, a name on one side only, tolerance overrides, no stored order, a
     missing or corrupt file, files with no shared name (exit 2 = could not compare);
  5. with REFTRAIN_HF_PYTHON naming a Python with transformers: dump_hooks.py on an HF
     Qwen3ForCausalLM diffs clean against reftrain on the same checkpoint (skipped otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_TOOLS = os.path.join(HERE, "..", "..", "tools", "python")
sys.path.insert(0, PYTHON_TOOLS)

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import dump_hooks  # noqa: E402
import reftrain_mirror as mirror  # noqa: E402

TIMEOUT_S = 300
BUGGY_TENSOR = "model.layers.0.self_attn.q_rotary"

CONFIG = mirror.ModelConfig(vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            max_position_embeddings=16, rope_theta=10000.0, qk_norm=True)
BATCH_SIZE, SEQ_LEN, SEED = 2, 9, 21


class Checks:
    def __init__(self):
        self.failures: List[str] = []

    def expect(self, condition: bool, what: str, detail: str = "") -> None:
        print(f"{'ok  ' if condition else 'FAIL'} {what}")
        if not condition:
            self.failures.append(what)
            if detail:
                print("     " + detail.replace("\n", "\n     "))


def run(cmd: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)


def stored_order(path: str) -> List[str]:
    with safe_open(path, framework="pt") as f:
        return json.loads((f.metadata() or {}).get("reftrain.order", "[]"))


def table_rows(stdout: str) -> List[Tuple[str, str, float]]:
    """(name, status, max_rel) of every tensor row the diff printed:
    "   12  NAME  F32/F64  (2,9,48)  1.2e-07  3.4e-08  ok"."""
    rows = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 7 and parts[0].isdigit() and "/" in parts[2] and parts[3].startswith("("):
            rows.append((parts[1], " ".join(parts[6:]), float(parts[5])))
    return rows


def first_named(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith("first tensor over tolerance: "):
            return line[len("first tensor over tolerance: "):].split(" ", 1)[0]
    return ""


def make_inputs(workdir: str) -> Tuple[str, str, str, Dict[str, torch.Tensor]]:
    config_path = os.path.join(workdir, "config.json")
    CONFIG.to_json(config_path)
    model = mirror.Transformer(CONFIG, dtype=torch.float32)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # std 0.2 matrices and norm weights 1 +- 0.1: RoPE and attention matter
        for _, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if p.dim() == 1 else 0.2 * noise)
    weights = os.path.join(workdir, "weights.safetensors")
    mirror.save_safetensors(model, weights)
    ids = torch.randint(0, CONFIG.vocab_size, (BATCH_SIZE, SEQ_LEN + 1), generator=g)
    batch = {"input_ids": ids[:, :-1].contiguous(), "targets": ids[:, 1:].contiguous()}
    batch["targets"][0, :3] = mirror.IGNORE_INDEX
    batch_path = os.path.join(workdir, "batch.safetensors")
    save_file(batch, batch_path)
    return config_path, weights, batch_path, batch


def mirror_dump(weights: str, batch: Dict[str, torch.Tensor], dtype: torch.dtype, path: str) -> None:
    model = mirror.Transformer(CONFIG, dtype=dtype)
    mirror.load_safetensors(model, weights)
    mirror.save_dump(mirror.dump_step(model, batch["input_ids"], batch["targets"]), path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reftrain", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    os.makedirs(args.workdir, exist_ok=True)
    binary = os.path.abspath(args.reftrain)
    w = args.workdir
    checks = Checks()

    def diff(a: str, b: str, *extra: str) -> subprocess.CompletedProcess:
        return run([binary, "diff", a, b, *extra])

    config_path, weights, batch_path, batch = make_inputs(w)
    ref = {}
    for dtype in ("f32", "f64"):
        ref[dtype] = os.path.join(w, f"reftrain_{dtype}.safetensors")
        proc = run([binary, "dump", "--config", config_path, "--weights", weights, "--batch", batch_path,
                    "--out", ref[dtype], "--dtype", dtype])
        if proc.returncode != 0:
            print(f"FAIL reftrain dump --dtype {dtype}:\n{proc.stdout}\n{proc.stderr}")
            return 1
    mirror64 = os.path.join(w, "mirror_f64.safetensors")
    mirror_dump(weights, batch, torch.float64, mirror64)

    # ---- 1. same names, same order, a clean diff
    print("\n## 1. reftrain dump vs the mirror")
    order_ref, order_mirror = stored_order(ref["f32"]), stored_order(mirror64)
    checks.expect(len(order_ref) > 50 and order_ref == order_mirror,
                  f"reftrain and the mirror store the same {len(order_ref)}-name execution order",
                  f"reftrain: {order_ref[:8]}...\nmirror:   {order_mirror[:8]}...")
    checks.expect(set(order_ref) == set(load_file(ref["f32"])), "reftrain's stored order lists every tensor it holds")
    checks.expect(order_ref.index("model.embed_tokens.weight") < order_ref.index("model.embed_tokens.out")
                  < order_ref.index("loss") < order_ref.index("grad:lm_head.weight")
                  < order_ref.index("grad:model.layers.1.mlp.down_proj.weight")
                  < order_ref.index("grad:model.layers.0.mlp.down_proj.weight")
                  < order_ref.index("grad:model.embed_tokens.weight"),
                  "walk order: parameters, activations forward, loss, gradients last layer first")
    for a, b, label in ((ref["f32"], mirror64, "f32 vs mirror f64"), (ref["f64"], mirror64, "f64 vs mirror f64"),
                        (mirror64, ref["f32"], "mirror f64 vs f32 (arguments swapped)")):
        proc = diff(a, b, "--all")
        rows = table_rows(proc.stdout)
        worst = max((rel for _, _, rel in rows), default=-1.0)
        checks.expect(proc.returncode == 0 and len(rows) == len(order_ref) and "tensor(s) only in" not in proc.stdout
                      and "no tensor over tolerance" in proc.stdout,
                      f"diff {label}: exit 0, all {len(order_ref)} tensors compared (worst max_rel {worst:.2e})",
                      proc.stdout[-3000:] + proc.stderr)
    proc = diff(ref["f64"], mirror64, "--rtol", "1e-18", "--atol", "0")
    checks.expect(proc.returncode == 1, "--rtol 1e-18 --atol 0 makes f64 round-off a failure (overrides apply)",
                  proc.stdout[-2000:])
    f32_as_f64 = os.path.join(w, "reftrain_f32_stored_as_f64.safetensors")
    dump_hooks.save_dump({n: t.double() if t.is_floating_point() else t
                          for n, t in load_file(ref["f32"]).items()}, f32_as_f64)
    proc = diff(f32_as_f64, mirror64)
    checks.expect(proc.returncode == 1, "an f32 computation stored as F64 fails the f64 tolerance",
                  proc.stdout[-1500:])

    # ---- 2. a bug in the mirror is named where it first appears
    print("\n## 2. the mirror with rope_wrong_half")
    buggy = os.path.join(w, "mirror_rope_wrong_half.safetensors")
    proc = run([sys.executable, os.path.join(PYTHON_TOOLS, "reftrain_mirror.py"), config_path, "--weights", weights,
                "--dump", buggy, "--dump-batch", batch_path, "--dtype", "f64", "--bug", "rope_wrong_half"])
    checks.expect(proc.returncode == 0 and mirror.bugs.rope_wrong_half is False,
                  "reftrain_mirror.py --dump --bug rope_wrong_half wrote a dump", proc.stdout + proc.stderr)
    for a, b, label in ((ref["f32"], buggy, "reftrain f32 vs buggy"), (ref["f64"], buggy, "reftrain f64 vs buggy"),
                        (buggy, ref["f32"], "buggy vs reftrain f32")):
        proc = diff(a, b)
        rows = table_rows(proc.stdout)
        before = rows[:-1]
        checks.expect(proc.returncode == 1 and first_named(proc.stdout) == BUGGY_TENSOR,
                      f"diff {label}: exit 1 naming {BUGGY_TENSOR}", proc.stdout[-3000:] + proc.stderr)
        checks.expect(bool(rows) and rows[-1][0] == BUGGY_TENSOR and len(rows) == order_ref.index(BUGGY_TENSOR) + 1
                      and all(status.startswith("ok") for _, status, _ in before),
                      f"diff {label}: the {len(before)} tensors listed before it all pass, the listing stops there",
                      "\n".join(f"{n}: {s}" for n, s, _ in rows[-5:]))
    proc = diff(ref["f32"], buggy, "--all")
    failed = [n for n, s, _ in table_rows(proc.stdout) if not s.startswith("ok")]
    downstream = order_ref[order_ref.index(BUGGY_TENSOR):]
    checks.expect(failed and failed[0] == BUGGY_TENSOR and all(n in downstream for n in failed)
                  and "model.layers.0.self_attn.k_rotary" in failed and "loss" in failed
                  and not any(n.startswith("model.layers.0.self_attn.q_proj") for n in failed),
                  f"--all: {len(failed)} tensors over tolerance, all at or after {BUGGY_TENSOR} "
                  "(k_rotary and the loss among them)", str(failed[:10]))

    # ---- 3. the hook script on the mirror model
    print("\n## 3. dump_hooks.py on the mirror model (HF module names, the shipped hf map)")
    hooked = os.path.join(w, "hooks_on_mirror.safetensors")
    model = mirror.Transformer(CONFIG, dtype=torch.float64)
    mirror.load_safetensors(model, weights)
    tensors = dump_hooks.dump_step(model, batch["input_ids"], batch["targets"], hooked, map="hf")
    activations = [n for n in tensors if n.endswith(".out") or n.endswith(".in")]
    checks.expect("model.layers.1.self_attn.q_proj.out" in tensors
                  and tuple(tensors["model.layers.1.self_attn.q_proj.out"].shape) == (BATCH_SIZE, SEQ_LEN, 4 * 16)
                  and len(activations) == 9 * CONFIG.num_hidden_layers and "logits" in tensors
                  and "grad:model.embed_tokens.weight" in tensors,
                  f"hooks recorded {len(activations)} module inputs/outputs the hf map names (q/k/v/o outputs, "
                  "o_proj's input, gate/up/down outputs, down_proj's input per layer), logits, loss and every grad",
                  str(list(tensors)[:40]))
    proc = diff(ref["f32"], hooked)
    checks.expect(proc.returncode == 0 and "tensor(s) only in A" in proc.stdout and "tensor(s) only in B" not in proc.stdout
                  and "no tensor over tolerance" in proc.stdout and "coverage gap" not in proc.stdout,
                  "diff reftrain vs hook dump: exit 0 on the shared names (every parameter and gradient, 18 "
                  "activations), reftrain's extra names listed", proc.stdout[-3000:] + proc.stderr)
    proc = diff(ref["f32"], hooked, "--strict")
    checks.expect(proc.returncode == 1, "--strict: names only in A make it exit 1", proc.stdout[-1000:])
    mirror.bugs.rope_wrong_half = True
    try:
        hooked_bug = os.path.join(w, "hooks_on_buggy_mirror.safetensors")
        dump_hooks.dump_step(model, batch["input_ids"], batch["targets"], hooked_bug, map="hf")
    finally:
        mirror.bugs.rope_wrong_half = False
    proc = diff(ref["f32"], hooked_bug)
    checks.expect(proc.returncode == 1 and first_named(proc.stdout) == "model.layers.0.self_attn.attn_out"
                  and "tap q_rotary" in " ".join(proc.stdout.split()),
                  "hook dump of the buggy mirror (no taps): the first hooked tensor after RoPE (layer 0 attn_out, "
                  "o_proj's input) is named, and the localisation asks for the q_rotary tap",
                  proc.stdout[-2000:])
    unhooked = os.path.join(w, "hooks_no_map.safetensors")
    dump_hooks.dump_step(model, batch["input_ids"], batch["targets"], unhooked)
    proc = diff(ref["f32"], unhooked)
    checks.expect(proc.returncode == 0, "without a map (every module input/output recorded under its own name): "
                  "the HF-named outputs still match by name, exit 0", proc.stdout[-1500:])

    # ---- 3b. exact RoPE angles: reftrain and the mirror both exact in f64
    print("\n## 3b. --rope-angles exact")
    exact_ref = os.path.join(w, "ref_f64_exact.safetensors")
    exact_mirror = os.path.join(w, "mirror_f64_exact.safetensors")
    proc = run([args.reftrain, "dump", "--config", config_path, "--weights", weights, "--batch", batch_path,
                "--out", exact_ref, "--dtype", "f64", "--rope-angles", "exact"])
    proc2 = run([sys.executable, os.path.join(PYTHON_TOOLS, "reftrain_mirror.py"), config_path, "--weights", weights,
                 "--dump-batch", batch_path, "--dump", exact_mirror, "--dtype", "f64", "--rope-angles", "exact"])
    proc3 = diff(exact_ref, exact_mirror)
    proc4 = diff(exact_ref, mirror64)
    checks.expect(proc.returncode == 0 and proc2.returncode == 0 and proc3.returncode == 0
                  and proc4.returncode == 1 and first_named(proc4.stdout) == BUGGY_TENSOR
                  and "float32 vs exact RoPE angles" in " ".join(proc4.stdout.split()),
                  "exact angles on both sides diff clean at f64; exact vs HF angles is named at q_rotary "
                  "with the float32-angle signature", proc3.stdout[-1500:] + proc4.stdout[-1500:] + proc.stderr
                  + proc2.stderr)

    # ---- 4. bad input
    print("\n## 4. shapes, one-sided names, overrides, missing order, unreadable files")
    base = load_file(mirror64)
    order = stored_order(mirror64)

    def write_variant(name: str, tensors: Dict[str, torch.Tensor], with_order: bool = True) -> str:
        path = os.path.join(w, name)
        names = [n for n in order if n in tensors] + [n for n in tensors if n not in order]
        ordered = {n: tensors[n] for n in names}
        if with_order:
            dump_hooks.save_dump(ordered, path, producer="test_diff.py")
        else:
            save_file({n: t.contiguous() for n, t in ordered.items()}, path)
        return path

    variant = dict(base)
    # Transposed, not merely reshaped: (B, T, F) and (B*T, F) hold the same layout and compare.
    variant["model.layers.1.mlp.act"] = base["model.layers.1.mlp.act"].transpose(1, 2).contiguous()
    del variant["model.layers.0.self_attn.attn_probs"]
    variant["extra.tensor"] = torch.zeros(3)
    variant["loss"] = base["loss"].reshape(1)  # () vs (1,) is the same shape
    proc = diff(ref["f32"], write_variant("shape_and_names.safetensors", variant))
    checks.expect(proc.returncode == 1 and first_named(proc.stdout) == "model.layers.1.mlp.act"
                  and "shape (2, 9, 80) in A vs (2, 80, 9) in B" in proc.stdout
                  and "only in A: model.layers.0.self_attn.attn_probs" in proc.stdout
                  and "only in B: extra.tensor" in proc.stdout,
                  "another shape is the first difference; one-sided names listed on each side; loss () == (1,)",
                  proc.stdout[-3000:])

    variant = dict(base)
    grad = base["grad:model.layers.0.self_attn.q_proj.weight"].clone()
    grad.view(-1)[5] += 1e-3 * grad.abs().max()
    variant["grad:model.layers.0.self_attn.q_proj.weight"] = grad
    path = write_variant("one_grad_element.safetensors", variant)
    proc = diff(ref["f32"], path)
    checks.expect(proc.returncode == 1 and first_named(proc.stdout) == "grad:model.layers.0.self_attn.q_proj.weight"
                  and "worst element (" in proc.stdout,
                  "one gradient element moved by 1e-3 of the tensor's max is caught at the f32 tolerance",
                  proc.stdout[-1500:])
    proc = diff(ref["f32"], path, "--rtol", "2e-3")
    checks.expect(proc.returncode == 1 and "first suspicious tensor: grad:model.layers.0.self_attn.q_proj.weight"
                  in proc.stdout, "--rtol 2e-3: within tolerance, but 50x the floor before it: suspicious, exit 1",
                  proc.stdout[-1500:])
    proc = diff(ref["f32"], path, "--rtol", "2e-3", "--jump", "0")
    checks.expect(proc.returncode == 0, "--rtol 2e-3 --jump 0 lets it pass", proc.stdout[-1500:])

    variant = dict(base)
    logits = base["logits"].clone()
    logits[1, 4, 7] = float("nan")
    variant["logits"] = logits
    proc = diff(ref["f32"], write_variant("nan_logits.safetensors", variant))
    checks.expect(proc.returncode == 1 and first_named(proc.stdout) == "logits" and "NaN/Inf" in proc.stdout,
                  "a NaN in the logits is named", proc.stdout[-1500:])

    no_order_a = write_variant("no_order_a.safetensors", load_file(ref["f32"]), with_order=False)
    no_order_b = write_variant("no_order_b.safetensors", dict(base), with_order=False)
    proc = diff(no_order_a, no_order_b)
    checks.expect(proc.returncode == 0 and "warning: neither file has __metadata__ 'reftrain.order'" in proc.stdout,
                  "files without a stored order are compared in layout order with a warning", proc.stdout[-1500:])
    proc = diff(no_order_a, buggy)
    checks.expect(proc.returncode == 1 and "order: B's reftrain.order" in proc.stdout
                  and first_named(proc.stdout) == BUGGY_TENSOR, "A without an order: B's order is walked",
                  proc.stdout[-1500:])

    corrupt = os.path.join(w, "corrupt.safetensors")
    with open(ref["f32"], "rb") as f:
        data = f.read()
    with open(corrupt, "wb") as f:
        f.write(data[: len(data) // 2])
    bad_order = write_variant("bad_order.safetensors", {"x": torch.zeros(2)}, with_order=False)
    with safe_open(bad_order, framework="pt") as f:
        plain = {n: f.get_tensor(n) for n in f.keys()}
    save_file(plain, bad_order, metadata={"reftrain.order": "{not a list"})
    for b, phrase, label in ((os.path.join(w, "does_not_exist.safetensors"), "does_not_exist", "a missing file"),
                             (corrupt, "corrupt.safetensors", "a truncated file"),
                             (batch_path, "share no tensor name", "files with no shared name"),
                             (bad_order, "reftrain.order", "malformed reftrain.order metadata")):
        proc = diff(ref["f32"], b) if b != bad_order else diff(bad_order, ref["f32"])
        checks.expect(proc.returncode == 2 and "could not compare" in proc.stderr and phrase in proc.stderr,
                      f"{label}: exit 2, 'could not compare' naming the problem", proc.stdout + proc.stderr)

    # ---- 5. optional: an HF Qwen3ForCausalLM through the hook script
    print("\n## 5. dump_hooks.py on HF transformers' Qwen3ForCausalLM")
    hf_python = os.environ.get("REFTRAIN_HF_PYTHON")
    if not hf_python:
        print("skipped: set REFTRAIN_HF_PYTHON to a Python with torch >= 2 and transformers")
    else:
        hf_dir = os.path.join(w, "hf_qwen3")
        make = (
            "import sys, torch, transformers\n"
            "cfg = transformers.Qwen3Config(vocab_size=61, hidden_size=48, intermediate_size=80, "
            "num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, "
            "max_position_embeddings=16, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, "
            "initializer_range=0.2)\n"
            "torch.manual_seed(3)\n"
            "m = transformers.Qwen3ForCausalLM(cfg)\n"
            "m.save_pretrained(sys.argv[1], safe_serialization=True)\n")
        proc = run([hf_python, "-c", make, hf_dir])
        hf_dump = os.path.join(w, "hf_hooks.safetensors")
        ref_hf = os.path.join(w, "reftrain_on_hf.safetensors")
        ok = proc.returncode == 0
        if ok:
            proc = run([hf_python, os.path.join(PYTHON_TOOLS, "dump_hooks.py"), "--hf-model", hf_dir,
                        "--batch", batch_path, "--out", hf_dump])
            ok = proc.returncode == 0
        if ok:
            proc = run([binary, "dump", "--config", os.path.join(hf_dir, "config.json"), "--weights",
                        os.path.join(hf_dir, "model.safetensors"), "--batch", batch_path, "--out", ref_hf])
            ok = proc.returncode == 0
        checks.expect(ok, "HF model written, hooked and dumped by reftrain", proc.stdout[-2000:] + proc.stderr[-2000:])
        if ok:
            proc = diff(ref_hf, hf_dump)
            checks.expect(proc.returncode == 0 and "model.layers.1.self_attn.q_normed" in proc.stdout
                          and "no tensor over tolerance" in proc.stdout,
                          "diff reftrain vs HF hook dump: exit 0 (q_normed, layer outputs, logits, grads)",
                          proc.stdout[-3000:] + proc.stderr)

    print()
    if checks.failures:
        print(f"DIFF TEST FAILED: {len(checks.failures)} check(s):")
        for f in checks.failures:
            print("  - " + f)
        return 1
    print("DIFF TEST OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

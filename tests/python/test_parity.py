"""test_parity.py — full-model parity between the C++ `reftrain` binary and the PyTorch mirror.

Run by ctest as
    python tests/python/test_parity.py --reftrain build/reftrain --workdir DIR
and exits non-zero on any failure.

What it checks, per config (see CASES below: GQA, head_dim != d/heads, tied embeddings, Llama without
QK-norm, T=1 with an odd head_dim, llama3 and linear RoPE scaling):

  1. weights written by `reftrain init` have exactly the HF names, F32, the right shapes and the
     documented init distribution, and the same seed gives the same bits;
  2. for weights from both sides (C++ `init`, and a non-trivial Python init written with safetensors),
     `reftrain dump --dtype f64` and `--dtype f32` (one forward+backward) agree with the mirror run in
     float64 ("truth") on logits, loss, every `grad:<param>`, and every activation the dump holds;
  3. a batch with no supervised position gives loss exactly 0 and all-zero gradients on both sides.

Before any of that, a self-test feeds the comparison a deliberately corrupted dump to prove the
test can fail.

Bounds, per tensor, with ref = the float64 mirror and err = max|cpp - ref|:
  * C++ f64:   err <= 1e-9 * max(1, max|ref|)   (f64 round-off through ~2 layers is ~1e-14; 1e-9 leaves
               room for different summation orders yet catches any real formula difference,
               which shows up at >= 1e-7 even in these small models)
  * C++ f32:   err <= 1e-4 * max|ref| + 1e-6  for logits, loss and activations
               err <= 5e-4 * max|ref| + 1e-7  for grad:*  (the backward sums more terms, and grads
               of tiny magnitude get the small absolute floor)
  * parameters echoed in the dump must equal the loaded weights exactly (bound 0).
The printed relative error is max|cpp - ref| / max|ref|.

CLI contract of the binary (exactly what this file invokes):
  reftrain init --config CFG.json --seed N --out W.safetensors
  reftrain dump --config CFG.json --weights W.safetensors --batch BATCH.safetensors \
                --out OUT.safetensors [--dtype f32|f64]
BATCH holds `input_ids` and `targets`, (B, T) int64, -100 = ignored; OUT holds every parameter under
its HF name, the named activations, `logits`, `loss` (shape () or (1,)), and `grad:<param>`.
Only logits, loss and grad:* are required; an activation the mirror captures (the documented names
plus `<norm>.rstd` and `loss.logsumexp`) but the dump lacks is a warning, and a dump name the mirror
does not know is listed as unchecked.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "python"))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import reftrain_mirror as mirror  # noqa: E402

IGNORE = mirror.IGNORE_INDEX
SUBPROCESS_TIMEOUT_S = 300


# ----------------------------------------------------------------------------------------------------
# The configs


@dataclasses.dataclass
class Case:
    name: str
    config: mirror.ModelConfig
    batch_size: int
    seq_len: int
    seed: int
    mask_full_row: bool = False  # one batch row with no supervised position at all


def qwen3(**fields) -> mirror.ModelConfig:
    base = dict(rms_norm_eps=1e-6, tie_word_embeddings=False, qk_norm=True,
                zero_init_output_projections=False)
    base.update(fields)
    return mirror.ModelConfig(**base)


CASES = [
    Case("gqa", qwen3(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, intermediate_size=96,
                      max_position_embeddings=17, rope_theta=10000.0, initializer_range=0.02),
         batch_size=2, seq_len=17, seed=11),  # T == max_position_embeddings on purpose
    Case("head_dim_ne_d_over_heads",
         qwen3(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=20, intermediate_size=72,
               max_position_embeddings=64, rope_theta=1e6, initializer_range=0.05),
         batch_size=3, seq_len=9, seed=12),
    Case("tied", qwen3(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, intermediate_size=64,
                       max_position_embeddings=32, rope_theta=10000.0, initializer_range=0.1,
                       tie_word_embeddings=True),
         batch_size=3, seq_len=11, seed=13, mask_full_row=True),
    Case("llama_no_qk_norm",
         qwen3(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, head_dim=16, intermediate_size=128,
               max_position_embeddings=32, rope_theta=1e6, initializer_range=0.08, qk_norm=False),
         batch_size=2, seq_len=13, seed=14),
    Case("odd_T1", qwen3(vocab_size=50, hidden_size=24, num_hidden_layers=1, num_attention_heads=3,
                         num_key_value_heads=1, head_dim=10, intermediate_size=40,
                         max_position_embeddings=8, rope_theta=10000.0, initializer_range=0.02,
                         zero_init_output_projections=True),
         batch_size=3, seq_len=1, seed=15),
    # RoPE scaling as Llama 3.x (llama3) and long-context fine-tunes (linear) use it. head_dim 16,
    # theta 1e4: wavelengths 6.3 | 20, 63 | 199, 628, ... fall in llama3's kept | blended | divided
    # bands for L = 64 (L/4 = 16, L = 64), so all three rules are exercised.
    Case("llama3_rope_scaling",
         qwen3(vocab_size=61, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
               num_key_value_heads=1, head_dim=16, intermediate_size=80,
               max_position_embeddings=40, rope_theta=10000.0, initializer_range=0.1, qk_norm=False,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
         batch_size=2, seq_len=40, seed=16),
    Case("linear_rope_scaling",
         qwen3(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=2, head_dim=16, intermediate_size=48,
               max_position_embeddings=24, rope_theta=1e6, initializer_range=0.1,
               rope_scaling={"rope_type": "linear", "factor": 4.0}),
         batch_size=2, seq_len=24, seed=17),
]


def make_batch(case: Case, all_ignored: bool = False) -> Dict[str, torch.Tensor]:
    """Random ids; about 25% of targets set to -100 (plus a fully masked row where asked)."""
    g = torch.Generator().manual_seed(case.seed)
    shape = (case.batch_size, case.seq_len)
    vocab = case.config.vocab_size
    input_ids = torch.randint(0, vocab, shape, generator=g, dtype=torch.int64)
    targets = torch.randint(0, vocab, shape, generator=g, dtype=torch.int64)
    targets[torch.rand(shape, generator=g) < 0.25] = IGNORE
    if case.mask_full_row:
        targets[0, :] = IGNORE
    targets[-1, -1] = int(torch.randint(0, vocab, (1,), generator=g))  # at least one supervised
    if all_ignored:
        targets[:] = IGNORE
    return {"input_ids": input_ids, "targets": targets}


@torch.no_grad()
def python_init(config: mirror.ModelConfig, seed: int) -> mirror.Transformer:
    """A deliberately non-trivial init (std 0.2 matrices, norm weights 1 + 0.1 N(0,1)) so that
    norms, RoPE and attention are far from their identity/uniform regimes."""
    model = mirror.Transformer(config, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    for _, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=g, dtype=torch.float32)
        param.copy_(1.0 + 0.1 * noise if param.dim() == 1 else 0.2 * noise)
    return model


# ----------------------------------------------------------------------------------------------------
# The mirror's side


def mirror_dump(config: mirror.ModelConfig, weights_path: str, batch: Dict[str, torch.Tensor],
                dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """What `reftrain dump` should write, computed by the mirror in `dtype`."""
    model = mirror.Transformer(config, dtype=dtype)
    mirror.load_safetensors(model, weights_path)
    capture: Dict[str, torch.Tensor] = {}
    _, loss = model(batch["input_ids"], batch["targets"], capture=capture)
    loss.backward()
    out: Dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        out[name] = param.detach().clone()
    out.update(capture)
    out["loss"] = loss.detach()
    for name, param in model.named_parameters():
        out["grad:" + name] = param.grad.detach().clone()
    return out


# ----------------------------------------------------------------------------------------------------
# The comparison


@dataclasses.dataclass
class Row:
    name: str
    shape: str
    dtype: str
    max_abs: float
    max_rel: float
    bound: float
    status: str  # "ok", "FAIL ...", "missing (warning)", ...

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAIL")


def tensor_kind(name: str, param_names: List[str]) -> str:
    if name.startswith("grad:"):
        return "grad"
    if name in param_names:
        return "param"
    if name in ("logits", "loss"):
        return "output"
    return "activation"


def bound_for(kind: str, compute_dtype: str, ref_max: float) -> float:
    if kind == "param":
        return 0.0  # the dump echoes the loaded weights; any change is a bug
    if compute_dtype == "f64":
        return 1e-9 * max(1.0, ref_max)
    if kind == "grad":
        return 5e-4 * ref_max + 1e-7
    return 1e-4 * ref_max + 1e-6


BOUND_TEXT = {
    "f64": "f64: err <= 1e-9*max(1,max|ref|); params exact",
    "f32": "f32: err <= 1e-4*max|ref|+1e-6 (logits/loss/activations), "
           "5e-4*max|ref|+1e-7 (grad:*); params exact",
}


def compare(reference: Dict[str, torch.Tensor], candidate: Dict[str, torch.Tensor],
            compute_dtype: str, param_names: List[str]) -> List[Row]:
    """One row per reference tensor, in execution order, then the candidate's extra names."""
    rows: List[Row] = []
    for name, ref in reference.items():
        kind = tensor_kind(name, param_names)
        required = kind in ("grad", "output")
        if name not in candidate:
            status = "FAIL: missing" if required else "missing (warning)"
            rows.append(Row(name, str(tuple(ref.shape)), "-", math.nan, math.nan, math.nan, status))
            continue
        got = candidate[name]
        ref64 = ref.detach().to(torch.float64)
        got64 = got.detach().to(torch.float64)
        shape_text = str(tuple(got.shape))
        dtype_text = str(got.dtype).replace("torch.", "")
        same_shape = got64.shape == ref64.shape
        if name == "loss" and got64.numel() == 1 and ref64.numel() == 1:
            same_shape = True  # () and (1,) are both accepted for the loss
            got64, ref64 = got64.reshape(()), ref64.reshape(())
        if not same_shape:
            rows.append(Row(name, shape_text, dtype_text, math.nan, math.nan, math.nan,
                            f"FAIL: shape != reference {tuple(ref64.shape)}"))
            continue
        ref_max = ref64.abs().max().item() if ref64.numel() else 0.0
        bound = bound_for(kind, compute_dtype, ref_max)
        if not bool(torch.isfinite(got64).all()):
            bad = int((~torch.isfinite(got64)).sum())
            rows.append(Row(name, shape_text, dtype_text, math.inf, math.inf, bound,
                            f"FAIL: {bad} non-finite values"))
            continue
        max_abs = (got64 - ref64).abs().max().item() if ref64.numel() else 0.0
        if ref_max > 0:
            max_rel = max_abs / ref_max
        else:
            max_rel = 0.0 if max_abs == 0 else math.inf
        status = "ok" if max_abs <= bound else "FAIL: over bound"
        rows.append(Row(name, shape_text, dtype_text, max_abs, max_rel, bound, status))
    for name in candidate:
        if name not in reference:
            rows.append(Row(name, str(tuple(candidate[name].shape)),
                            str(candidate[name].dtype).replace("torch.", ""),
                            math.nan, math.nan, math.nan, "not in reference (unchecked)"))
    return rows


def print_table(title: str, rows: List[Row], quiet: bool) -> None:
    failures = [r for r in rows if r.failed]
    print(f"\n=== {title}")
    name_width = max([len(r.name) for r in rows] + [6])
    header = (f"{'tensor':<{name_width}}  {'shape':<18} {'dtype':<8} {'max_abs_err':>11} "
              f"{'max_rel_err':>11} {'bound':>10}  status")
    print(header)
    print("-" * len(header))
    for r in rows:
        if quiet and r.status == "ok":
            continue
        print(f"{r.name:<{name_width}}  {r.shape:<18} {r.dtype:<8} {r.max_abs:>11.3e} "
              f"{r.max_rel:>11.3e} {r.bound:>10.3e}  {r.status}")
    checked = sum(1 for r in rows if r.status == "ok" or r.failed)
    if failures:
        print(f"--> FAIL: {len(failures)} of {checked} checked tensors; first in execution order: "
              f"{failures[0].name} ({failures[0].status})")
    else:
        print(f"--> ok: {checked} tensors within bounds")


# ----------------------------------------------------------------------------------------------------
# Driving the binary


class Runner:
    def __init__(self, binary: str):
        self.binary = binary

    def __call__(self, *args: str) -> Optional[str]:
        """Runs the binary; returns None on success, else a description of the failure."""
        cmd = [self.binary, *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"timed out after {SUBPROCESS_TIMEOUT_S}s: {' '.join(cmd)}"
        except OSError as e:
            return f"could not run {' '.join(cmd)}: {e}"
        if proc.returncode != 0:
            return (f"exit code {proc.returncode}: {' '.join(cmd)}\n"
                    f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
        return None


class Failures:
    def __init__(self):
        self.items: List[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")
        print(f"FAIL [{where}] {what}")


def check_init_file(case: Case, path: str, failures: Failures) -> None:
    """Names, dtype, shapes and distribution of the weights written by `reftrain init`."""
    where = f"{case.name}/init"
    cfg = case.config
    tensors = load_file(path)
    want = mirror.expected_shapes(cfg)
    missing = sorted(set(want) - set(tensors))
    unexpected = sorted(set(tensors) - set(want))
    if missing or unexpected:
        failures.add(where, f"names differ from HF names: missing {missing}, unexpected {unexpected}")
    for name, t in tensors.items():
        if name not in want:
            continue
        if t.dtype != torch.float32:
            failures.add(where, f"{name} has dtype {t.dtype}, expected float32")
        if tuple(t.shape) != want[name]:
            failures.add(where, f"{name} has shape {tuple(t.shape)}, expected {want[name]}")
            continue
        t = t.to(torch.float64)
        is_output_projection = name.endswith("o_proj.weight") or name.endswith("down_proj.weight")
        if t.dim() == 1:
            if not bool((t == 1).all()):
                failures.add(where, f"{name}: RMSNorm weight should be all ones")
        elif cfg.zero_init_output_projections and is_output_projection:
            if not bool((t == 0).all()):
                failures.add(where, f"{name}: zero_init_output_projections is on but it is not 0")
        elif t.numel() >= 1000:
            # Sample std has relative standard error 1/sqrt(2n) <= 2.3%; 10% is > 4 sigma.
            std, mean = t.std().item(), t.mean().item()
            if abs(std / cfg.initializer_range - 1) > 0.10 or abs(mean) > 5 * std / math.sqrt(
                    t.numel()):
                failures.add(where, f"{name}: mean {mean:.3g} std {std:.4g}, expected N(0, "
                                    f"{cfg.initializer_range})")


def run_direction(case: Case, direction: str, weights: str, batch_path: str,
                  batch: Dict[str, torch.Tensor], config_path: str, run: Runner,
                  failures: Failures, quiet: bool, workdir: str) -> None:
    param_names = list(mirror.expected_shapes(case.config))
    try:
        reference = mirror_dump(case.config, weights, batch, torch.float64)
    except Exception as e:  # a weights file the mirror cannot read is a failure of this direction
        failures.add(f"{case.name}/{direction}", f"mirror could not run on {weights}: {e}")
        return
    for compute_dtype in ("f64", "f32"):
        where = f"{case.name}/{direction}/{compute_dtype}"
        out = os.path.join(workdir, f"dump_{direction}_{compute_dtype}.safetensors")
        error = run("dump", "--config", config_path, "--weights", weights, "--batch", batch_path,
                    "--out", out, "--dtype", compute_dtype)
        if error:
            failures.add(where, error)
            continue
        candidate = load_file(out)
        rows = compare(reference, candidate, compute_dtype, param_names)
        print_table(f"{case.name} | weights: {direction} | C++ --dtype {compute_dtype} vs mirror "
                    f"f64 | bound {BOUND_TEXT[compute_dtype]}", rows, quiet)
        for r in rows:
            if r.failed:
                failures.add(where, f"{r.name}: {r.status} (max_abs {r.max_abs:.3e}, "
                                    f"bound {r.bound:.3e})")


def check_zero_supervised(case: Case, weights: str, config_path: str, run: Runner,
                          failures: Failures, workdir: str) -> None:
    """A batch with every target -100: loss exactly 0, every gradient exactly 0, on both sides."""
    batch = make_batch(case, all_ignored=True)
    batch_path = os.path.join(workdir, "batch_no_supervision.safetensors")
    save_file(batch, batch_path)
    sides = {"mirror f64": mirror_dump(case.config, weights, batch, torch.float64)}
    for compute_dtype in ("f64", "f32"):
        out = os.path.join(workdir, f"dump_no_supervision_{compute_dtype}.safetensors")
        error = run("dump", "--config", config_path, "--weights", weights, "--batch", batch_path,
                    "--out", out, "--dtype", compute_dtype)
        if error:
            failures.add(f"{case.name}/no-supervision/{compute_dtype}", error)
            continue
        sides[f"C++ {compute_dtype}"] = load_file(out)
    for side, dump in sides.items():
        where = f"{case.name}/no-supervision/{side}"
        if "loss" not in dump:
            failures.add(where, "no `loss` in the dump")
            continue
        loss = dump["loss"].reshape(-1)
        grads = {k: v for k, v in dump.items() if k.startswith("grad:")}
        nonzero = [k for k, v in grads.items() if not bool((v == 0).all())]
        ok = loss.numel() == 1 and float(loss[0]) == 0.0 and grads and not nonzero
        print(f"{case.name} | all targets -100 | {side}: loss = {loss.tolist()}, "
              f"{len(grads)} grads, non-zero grads: {nonzero or 'none'} -> "
              f"{'ok' if ok else 'FAIL'}")
        if not ok:
            failures.add(where, f"expected loss exactly 0 and all-zero grads; got loss "
                                f"{loss.tolist()}, {len(grads)} grads, non-zero: {nonzero}")


def run_case(case: Case, root: str, run: Runner, failures: Failures, quiet: bool) -> None:
    workdir = os.path.join(root, case.name)
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "config.json")
    case.config.to_json(config_path)
    batch = make_batch(case)
    batch_path = os.path.join(workdir, "batch.safetensors")
    save_file(batch, batch_path)
    supervised = int((batch["targets"] != IGNORE).sum())
    print(f"\n##### config {case.name}: B={case.batch_size} T={case.seq_len} "
          f"supervised {supervised}/{batch['targets'].numel()} | {case.config}")

    # Direction 1: the C++ side initialises, the mirror loads its file.
    cpp_weights = os.path.join(workdir, "weights_cpp_init.safetensors")
    error = run("init", "--config", config_path, "--seed", str(case.seed), "--out", cpp_weights)
    if error:
        failures.add(f"{case.name}/init", error)
    else:
        check_init_file(case, cpp_weights, failures)
        again = os.path.join(workdir, "weights_cpp_init_again.safetensors")
        other = os.path.join(workdir, "weights_cpp_init_other_seed.safetensors")
        if not run("init", "--config", config_path, "--seed", str(case.seed), "--out", again) and \
                not run("init", "--config", config_path, "--seed", str(case.seed + 1), "--out", other):
            first, second, third = load_file(cpp_weights), load_file(again), load_file(other)
            if any(not torch.equal(first[k], second[k]) for k in first):
                failures.add(f"{case.name}/init", "same seed gave different weights")
            matrices = [k for k in first if first[k].dim() == 2 and bool(first[k].any())]
            if any(torch.equal(first[k], third[k]) for k in matrices):
                failures.add(f"{case.name}/init", "a different seed gave an identical matrix")
        else:
            failures.add(f"{case.name}/init", "re-running init failed")
        run_direction(case, "cpp_init", cpp_weights, batch_path, batch, config_path, run, failures,
                      quiet, workdir)

    # Direction 2: Python initialises (non-trivially) and writes safetensors; C++ loads it.
    py_weights = os.path.join(workdir, "weights_python_init.safetensors")
    mirror.save_safetensors(python_init(case.config, case.seed), py_weights)
    run_direction(case, "python_init", py_weights, batch_path, batch, config_path, run, failures,
                  quiet, workdir)
    check_zero_supervised(case, py_weights, config_path, run, failures, workdir)


# ----------------------------------------------------------------------------------------------------
# Self-test: the comparison must catch a corrupted dump


def self_test(root: str) -> List[str]:
    """Returns a list of problems with the comparison itself (empty when it works)."""
    case = CASES[0]
    workdir = os.path.join(root, "self_test")
    os.makedirs(workdir, exist_ok=True)
    weights = os.path.join(workdir, "weights.safetensors")
    mirror.save_safetensors(python_init(case.config, 1), weights)
    batch = make_batch(case)
    param_names = list(mirror.expected_shapes(case.config))
    reference = mirror_dump(case.config, weights, batch, torch.float64)
    as_f32 = mirror_dump(case.config, weights, batch, torch.float32)
    problems = []

    def failed(candidate, compute_dtype):
        return any(r.failed for r in compare(reference, candidate, compute_dtype, param_names))

    if failed(dict(reference), "f64"):
        problems.append("the reference does not pass against itself at the f64 bound")
    if failed(as_f32, "f32"):
        problems.append("the mirror's own f32 run does not pass the f32 bound "
                        "(bounds too tight to be met by any f32 implementation)")
    if not failed(as_f32, "f64"):
        problems.append("an f32 computation passes the f64 bound (f64 bound too loose)")
    grad_name = "grad:model.layers.1.mlp.up_proj.weight"
    # One element moved by 0.1% of the tensor's largest value: twice the f32 grad bound.
    mutated = dict(as_f32)
    g = mutated[grad_name].clone()
    g.view(-1)[7] += 1e-3 * g.abs().max()
    mutated[grad_name] = g
    if not failed(mutated, "f32"):
        problems.append(f"a 1e-3 relative change of one element of {grad_name} was not caught")
    mutated = dict(reference)
    g = mutated[grad_name].clone()
    g.view(-1)[3] *= 1 + 1e-7
    g.view(-1)[3] += 1e-8
    mutated[grad_name] = g
    if not failed(mutated, "f64"):
        problems.append("a 1e-8 change of one grad element was not caught at the f64 bound")
    mutated = dict(reference)
    mutated[grad_name] = torch.full_like(reference[grad_name], math.nan)
    if not failed(mutated, "f64"):
        problems.append("NaN gradients were not caught")
    for required in ("logits", "loss", grad_name):
        mutated = dict(reference)
        del mutated[required]
        if not failed(mutated, "f64"):
            problems.append(f"a dump without {required} was not caught")
    mutated = dict(reference)
    mutated["loss"] = reference["loss"].reshape(1)
    del mutated["model.layers.0.mlp.act"]
    if failed(mutated, "f64"):
        problems.append("loss of shape (1,) or a missing activation was treated as a failure")
    mutated = dict(reference)
    mutated["logits"] = reference["logits"].reshape(-1)
    if not failed(mutated, "f64"):
        problems.append("logits with the wrong shape were not caught")
    return problems


# ----------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reftrain", required=True, help="path to the reftrain binary")
    parser.add_argument("--workdir", required=True, help="scratch directory (created)")
    parser.add_argument("--only", action="append", default=[],
                        help="run only this config (repeatable); names: "
                             + ", ".join(c.name for c in CASES))
    parser.add_argument("--quiet", action="store_true", help="print only rows that are not ok")
    args = parser.parse_args()

    torch.set_num_threads(min(2, torch.get_num_threads()))
    os.makedirs(args.workdir, exist_ok=True)
    print(f"PyTorch {torch.__version__}; binary {args.reftrain}; workdir {args.workdir}")

    problems = self_test(args.workdir)
    if problems:
        for p in problems:
            print(f"FAIL [self-test] {p}")
        return 1
    print("self-test: the comparison catches corrupted, missing, NaN and misshapen tensors: ok")

    failures = Failures()
    if not (os.path.isfile(args.reftrain) and os.access(args.reftrain, os.X_OK)):
        failures.add("setup", f"{args.reftrain} is not an executable file")
    else:
        cases = [c for c in CASES if not args.only or c.name in args.only]
        unknown = set(args.only) - {c.name for c in CASES}
        if unknown:
            failures.add("setup", f"unknown config names {sorted(unknown)}")
        run = Runner(os.path.abspath(args.reftrain))
        for case in cases:
            try:
                run_case(case, args.workdir, run, failures, args.quiet)
            except Exception as e:  # keep going so that one bad config does not hide the others
                failures.add(case.name, f"unexpected {type(e).__name__}: {e}")

    print()
    if failures.items:
        print(f"PARITY FAILED: {len(failures.items)} problem(s):")
        for item in failures.items:
            print("  - " + item.splitlines()[0])
        return 1
    print("PARITY OK: every config, both weight sources, f64 and f32, within bounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""test_hf_transformers.py — a real HF checkpoint loads in reftrain and computes the same thing.

HF `transformers` builds tiny random Qwen3ForCausalLM / LlamaForCausalLM models, writes them with
`save_pretrained` (config.json + model.safetensors, exactly what a user downloads from a hub), and
reftrain loads those two files as they are. Both run the same batch and we compare the loss, the
logits and every parameter gradient, twice:
  - HF float32 vs reftrain f32: max|err| <= 1e-4 * max|HF| + 1e-6 (loss, logits), 5e-4 * max|HF| + 1e-7
    (gradients) — the bounds of the mirror parity test.
  - HF "float64" vs reftrain f64: max|err| <= 1e-5 * max|HF|. Not 1e-9: HF's RMSNorm casts its input
    to float32 whatever the model dtype, and its RoPE tables are float32, so an HF float64 model
    carries float32 rounding (seen: ~7e-7 relative in gradients).
A third check compares reftrain's RoPE tables (through the mirror, which the parity test ties to the
C++ tables) with HF's rotary embedding out to position 40000: both use HF's float32 angles, so they
agree to float32 rounding; exact fp64 angles would be off by ~2e-3 there. With RoPE scaling (llama3 as
in Llama 3.1/3.2, linear as in long-context fine-tunes) the same check compares the scaled inverse
frequencies bit for bit with HF's, for the Llama 3.x shapes, and two tiny Llama models with scaling
run through both sides over 48 positions.

HF's loss shifts labels inside the model; ours takes targets already aligned, so the batch we give
reftrain has targets[t] = input_ids[t + 1] and the ignore index at the last position. The loss is the
same mean over the same T - 1 positions per row.

transformers needs PyTorch >= 2, which Debian's python3-torch (1.13) is not, and a PyPI torch is a
multi-GB install, so this test is optional: it runs with the Python named by REFTRAIN_HF_PYTHON (a
venv with torch >= 2, transformers and safetensors) and otherwise exits 77, which ctest reports as
skipped.
"""
import argparse
import json
import os
import subprocess
import sys

# reftrain_mirror: on the path when run by ctest (PYTHONPATH) and when run by hand.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "python"))

SKIP = 77

hf_python = os.environ.get("REFTRAIN_HF_PYTHON")
if hf_python and os.path.realpath(hf_python) != os.path.realpath(sys.executable) and not os.environ.get("_REFTRAIN_HF_EXEC"):
    os.environ["_REFTRAIN_HF_EXEC"] = "1"
    os.execv(hf_python, [hf_python] + sys.argv)

try:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
    print(f"SKIP: HF transformers with PyTorch >= 2 is not available ({type(e).__name__}: {e}); "
          f"set REFTRAIN_HF_PYTHON to a Python that has torch>=2, transformers and safetensors")
    sys.exit(SKIP)

F32_BOUNDS = {"activation": (1e-4, 1e-6), "grad": (5e-4, 1e-7)}  # (relative, absolute)
F64_RELATIVE = 1e-5


LLAMA3_TINY = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def configs():
    """(label, model class, config, sequence length)."""
    common = dict(vocab_size=67, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  max_position_embeddings=64, rms_norm_eps=1e-6, initializer_range=0.2)
    yield "qwen3_gqa_head_dim_ne_d_over_heads", Qwen3ForCausalLM, Qwen3Config(
        num_attention_heads=4, num_key_value_heads=2, head_dim=20, rope_theta=1e6, tie_word_embeddings=False,
        **common), 9
    yield "qwen3_tied", Qwen3ForCausalLM, Qwen3Config(
        num_attention_heads=3, num_key_value_heads=1, head_dim=16, rope_theta=10000.0, tie_word_embeddings=True,
        **common), 9
    yield "llama", LlamaForCausalLM, LlamaConfig(
        num_attention_heads=4, num_key_value_heads=2, head_dim=12, rope_theta=10000.0, tie_word_embeddings=False,
        **common), 9
    # Llama 3.x RoPE scaling, as transformers writes it (rope_scaling, or rope_parameters from 5.0 on).
    # head_dim 16, theta 500000: wavelengths 6.3 | 32 | 167, 860, ... fall in llama3's kept | blended |
    # divided bands for the original context L = 64 (L/4 = 16, L = 64).
    yield "llama3_rope_scaling", LlamaForCausalLM, LlamaConfig(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling=dict(LLAMA3_TINY), **common), 48
    yield "linear_rope_scaling", LlamaForCausalLM, LlamaConfig(
        num_attention_heads=4, num_key_value_heads=2, head_dim=12, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "linear", "factor": 4.0}, **common), 48


def bound_for(name, reference, dtype):
    scale = reference.abs().max().item()
    if dtype == "f64":
        return F64_RELATIVE * max(1.0, scale)
    rel, absolute = F32_BOUNDS["grad" if name.startswith("grad:") else "activation"]
    return rel * scale + absolute


def compare(label, dtype, hf_model, directory, ids, reftrain):
    """Runs HF (forward + backward with labels) and `reftrain dump` on the same batch; returns failures."""
    hf_model.zero_grad(set_to_none=True)
    out = hf_model(input_ids=ids, labels=ids)
    out.loss.backward()
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]  # HF shifts inside the model; reftrain takes aligned targets
    batch = os.path.join(directory, "batch.safetensors")
    save_file({"input_ids": ids.contiguous(), "targets": targets.contiguous()}, batch)
    dump = os.path.join(directory, f"dump_{dtype}.safetensors")
    run = subprocess.run([reftrain, "dump", "--config", os.path.join(directory, "config.json"),
                          "--weights", os.path.join(directory, "model.safetensors"), "--batch", batch,
                          "--out", dump, "--dtype", dtype], capture_output=True, text=True)
    if run.returncode != 0:
        print(f"[{label} {dtype}] reftrain refused the HF checkpoint:\n{run.stderr}")
        return 1
    ours = load_file(dump)
    rows = [("loss", ours["loss"].reshape(()), out.loss.detach()), ("logits", ours["logits"], out.logits.detach())]
    rows += [(f"grad:{n}", ours[f"grad:{n}"], p.grad) for n, p in hf_model.named_parameters()]
    failures, worst = 0, 0.0
    worst_relative = {"loss": 0.0, "logits": 0.0, "grad": 0.0}  # max|err| / max|HF| per kind
    for name, a, b in rows:
        err = (a.double() - b.double()).abs().max().item()
        bound = bound_for(name, b, dtype)
        worst = max(worst, err / bound)
        kind = "grad" if name.startswith("grad:") else name
        worst_relative[kind] = max(worst_relative[kind], err / max(b.abs().max().item(), 1e-30))
        if not err <= bound:
            print(f"  FAIL {name}: max abs err {err:.3e} > bound {bound:.3e}")
            failures += 1
    print(f"  {dtype}: {len(rows)} tensors (loss, logits, every parameter gradient) within bounds: "
          f"{'yes' if not failures else 'NO'}; worst err/bound {worst:.1e}; worst relative error: "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst_relative.items())
          + f"; loss HF {out.loss.item():.10f} reftrain {ours['loss'].item():.10f}")
    return failures


def check_rope_tables():
    """reftrain's RoPE tables vs HF's rotary embedding at long positions (float32 values)."""
    import reftrain_mirror as mirror
    config = Qwen3Config(hidden_size=64, num_attention_heads=1, head_dim=64, rope_theta=1e6,
                         max_position_embeddings=40000)
    rotary = transformers.models.qwen3.modeling_qwen3.Qwen3RotaryEmbedding(config)
    positions = torch.arange(40000)[None, :]
    hf_cos, hf_sin = rotary(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = mirror.rope_tables(40000, 64, 1e6, torch.float32)
    err = max((cos - hf_cos[0]).abs().max().item(), (sin - hf_sin[0]).abs().max().item())
    exact = torch.arange(40000, dtype=torch.float64)[:, None] * (1e6 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    exact_err = (torch.cat([exact.cos(), exact.cos()], -1) - hf_cos[0].double()).abs().max().item()
    ok = err <= 2.4e-7  # two float32 ulps at 1.0: HF evaluates cos in float32, we round an fp64 cos once
    print(f"RoPE tables to position 40000: max |reftrain - HF| = {err:.2e} (bound 2.4e-7): "
          f"{'ok' if ok else 'FAIL'}; exact fp64 angles would differ from HF by {exact_err:.2e}")
    return (0 if ok else 1) + check_scaled_rope()


def check_scaled_rope():
    """RoPE scaling: reftrain's inverse frequencies bit for bit HF's, and the tables to position 40000."""
    import reftrain_mirror as mirror
    cases = [  # (label, head_dim, theta, scaling, max_position_embeddings)
        ("Llama 3.2 1B", 64, 500000.0, {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, 131072),
        ("Llama 3.2 3B", 128, 500000.0, {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, 131072),
        ("Llama 3.1 8B", 128, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, 131072),
        ("tiny llama3 of this test", 16, 500000.0, LLAMA3_TINY, 64),
        ("vicuna-7b-v1.5-16k linear", 128, 10000.0, {"rope_type": "linear", "factor": 4.0}, 4096),
        ("tiny linear of this test", 12, 10000.0, {"rope_type": "linear", "factor": 4.0}, 64),
    ]
    failures = 0
    for label, head_dim, theta, scaling, max_positions in cases:
        config = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim, rope_theta=theta,
                             rope_scaling=dict(scaling), max_position_embeddings=max_positions)
        rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
        hf_inv = rotary.inv_freq.float()
        ours_inv = mirror.rope_inverse_frequencies(head_dim, theta, scaling)
        differing = int((hf_inv != ours_inv).sum())
        T = 40000
        hf_cos, hf_sin = rotary(torch.zeros(1, dtype=torch.float32), torch.arange(T)[None, :])
        cos, sin = mirror.rope_tables(T, head_dim, theta, torch.float32, scaling=scaling)
        err = max((cos - hf_cos[0]).abs().max().item(), (sin - hf_sin[0]).abs().max().item())
        plain = mirror.rope_inverse_frequencies(head_dim, theta)
        changed = int((plain != ours_inv).sum())
        ok = differing == 0 and err <= 2.4e-7 and changed > 0
        print(f"RoPE {scaling['rope_type']} ({label}): {differing} of {head_dim // 2} inverse frequencies differ "
              f"from HF's ({changed} rescaled); tables to position {T}: max |reftrain - HF| = {err:.2e} "
              f"(bound 2.4e-7): {'ok' if ok else 'FAIL'}")
        failures += 0 if ok else 1
    return failures


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reftrain", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    transformers.logging.set_verbosity_error()
    failures = check_rope_tables()
    for label, model_class, config, seq_len in configs():
        torch.manual_seed(0)
        model = model_class(config)
        with torch.no_grad():  # norm weights away from 1 so that they matter
            for name, param in model.named_parameters():
                if param.ndim == 1:
                    param.copy_(1 + 0.2 * torch.randn_like(param))
        directory = os.path.join(args.workdir, label)
        model.save_pretrained(directory, safe_serialization=True)
        stored = sorted(load_file(os.path.join(directory, "model.safetensors")).keys())
        print(f"[{label}] save_pretrained wrote config.json + model.safetensors ({len(stored)} tensors"
              f"{', no lm_head.weight: tied' if 'lm_head.weight' not in stored else ''})")
        ids = torch.randint(0, config.vocab_size, (2, seq_len))
        loaded = model_class.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32)
        failures += compare(label, "f32", loaded, directory, ids, args.reftrain)
        failures += compare(label, "f64", loaded.double(), directory, ids, args.reftrain)
    print("FAILED" if failures else "OK: HF checkpoints load in reftrain and compute the same loss, logits and gradients")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

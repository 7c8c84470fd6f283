"""test_safetensors_interop.py — reftrain's safetensors and Python's `safetensors` + PyTorch agree bit for bit.

Direction 1: `reftrain init --store-dtype bf16|f16` rounds fp32 weights on write. Python loads the
file with safetensors.torch and compares with PyTorch's own rounding of the fp32 weights
(`.to(torch.bfloat16 / torch.float16)`): every bit must match (round to nearest even, fp16 overflow
to inf and subnormals included, since some weights are scaled to hit those ranges).
Direction 2: Python writes bf16/f16 weights with safetensors.torch; `reftrain dump` loads them into
fp32 and echoes the parameters; they must equal PyTorch's `.float()` of the stored values exactly.
"""
import argparse
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

import reftrain_mirror as mirror

CONFIG = mirror.ModelConfig(vocab_size=40, hidden_size=24, intermediate_size=40, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=12, max_position_embeddings=8)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{r.stderr}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reftrain", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    config_path = os.path.join(args.workdir, "config.json")
    CONFIG.to_json(config_path)
    failures = 0

    # 1. reftrain rounds, PyTorch checks. initializer_range 1e-5 puts most weights in fp16's subnormal
    # range and 3e4 sends some past 65504 (to inf), so the edges of the rounding are exercised too.
    for std in (0.02, 1e-5, 3e4):
        cfg_path = os.path.join(args.workdir, f"config_{std:g}.json")
        cfg = json.load(open(config_path))
        cfg["initializer_range"] = std
        json.dump(cfg, open(cfg_path, "w"))
        f32_path = os.path.join(args.workdir, f"w_f32_{std:g}.safetensors")
        run([args.reftrain, "init", "--config", cfg_path, "--seed", "3", "--out", f32_path])
        reference = load_file(f32_path)
        for store, torch_dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
            path = os.path.join(args.workdir, f"w_{store}_{std:g}.safetensors")
            run([args.reftrain, "init", "--config", cfg_path, "--seed", "3", "--out", path, "--store-dtype", store])
            ours = load_file(path)
            mismatched = 0
            for name, value in reference.items():
                expected = value.to(torch_dtype)
                if ours[name].dtype != torch_dtype or not torch.equal(ours[name].view(torch.int16),
                                                                      expected.view(torch.int16)):
                    mismatched += 1
                    print(f"  FAIL {store} {name}: dtype {ours[name].dtype}, bits differ from PyTorch's rounding")
            values = torch.cat([v.flatten() for v in ours.values()]).float()
            print(f"reftrain -> python, {store}, init std {std:g}: {len(reference)} tensors, {mismatched} differ "
                  f"from torch .to({torch_dtype}); {int(torch.isinf(values).sum())} inf, "
                  f"{int(((values != 0) & (values.abs() < 6.1e-5)).sum())} below fp16's smallest normal")
            failures += mismatched

    # 2. Python rounds and writes, reftrain loads into fp32.
    model = mirror.Transformer(CONFIG)
    mirror.init_weights(model, seed=5)
    with torch.no_grad():
        special = torch.tensor([65504.0, 65519.0, 65520.0, 1e5, 6.0e-8, 2.0 ** -24, 3 * 2.0 ** -25, 1e-45,
                                1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -0.0, 3.0e38])
        w = model.state_dict()["model.embed_tokens.weight"]
        w.view(-1)[: special.numel()] = special
    ids = torch.randint(0, CONFIG.vocab_size, (1, 4))
    batch = os.path.join(args.workdir, "batch.safetensors")
    save_file({"input_ids": ids, "targets": ids.clone()}, batch)
    for store, torch_dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        stored = {k: v.to(torch_dtype).contiguous() for k, v in model.state_dict().items()}
        path = os.path.join(args.workdir, f"py_{store}.safetensors")
        save_file(stored, path, metadata={"format": "pt"})
        dump = os.path.join(args.workdir, f"dump_{store}.safetensors")
        # fp16 inf in the embedding would make the forward non-finite; dump still echoes the weights.
        r = subprocess.run([args.reftrain, "dump", "--config", config_path, "--weights", path, "--batch", batch,
                            "--out", dump], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"  FAIL {store}: reftrain could not load Python's file:\n{r.stderr}")
            failures += 1
            continue
        echoed = load_file(dump)
        mismatched = sum(0 if torch.equal(echoed[k].view(torch.int32), v.float().view(torch.int32)) else 1
                         for k, v in stored.items())
        print(f"python -> reftrain, {store}: {len(stored)} tensors loaded into fp32, {mismatched} differ from torch .float()")
        failures += mismatched
    print("FAILED" if failures else "OK: bit-exact both ways")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""tests/fuzz/make_seeds.py — writes the seed corpora of tests/fuzz/corpus/ (run from anywhere).

Seeds are small valid inputs plus a few near-valid ones (one field wrong), so the fuzzer starts past
the first checks of each parser. Real files are copied from configs/, maps/ and tests/data/ (and, when a
build directory has run the Python tests, a few files from its pytest_work/); the
binary formats (safetensors, state.bin) are written here by hand. Re-running rewrites the same files.
"""
import json
import pathlib
import shutil
import struct
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"


def put(parser, name, data):
    path = CORPUS / parser / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None, pad_to=8, header_override=None):
    """tensors: list of (name, dtype, shape, raw bytes), laid out in order."""
    header, data, offset = {}, b"", 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = (header_override or json.dumps(header)).encode()
    text += b" " * ((-len(text)) % pad_to)  # writers pad so the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.0)
    put("safetensors", "valid_f32", safetensors([("w", "F32", [2, 2], f32)]))
    put("safetensors", "valid_mixed", safetensors([
        ("a.weight", "BF16", [3], b"\x80\x3f\x00\x40\x40\x40"),
        ("b.bias", "F16", [2], b"\x00\x3c\x00\xc0"),
        ("ids", "I64", [2], struct.pack("<2q", 7, -1)),
        ("mask", "U8", [4], b"\x00\x01\x01\x00"),
        ("counts", "I32", [1, 2], struct.pack("<2i", 3, 4)),
        ("scale", "F64", [], struct.pack("<d", 0.25)),
    ], metadata={"format": "pt", "reftrain.config": "{\"hidden_size\": 32}"}))
    put("safetensors", "empty_header", safetensors([]))
    put("safetensors", "zero_size_tensor", safetensors([("e", "F32", [0, 4], b"")]))
    # Near-valid: a range past the end, overlapping tensors, a wrong byte count.
    put("safetensors", "bad_offsets", safetensors([("w", "F32", [2], f32)],
        header_override='{"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 24]}}'))
    put("safetensors", "overlap", safetensors([("w", "F32", [2], f32)],
        header_override='{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
                        ' "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}'))
    put("safetensors", "unknown_dtype", safetensors([("w", "F8_E4M3", [4], b"\x01\x02\x03\x04")]))
    for src in ROOT.glob("build*/pytest_work/test_safetensors_interop/batch.safetensors"):
        shutil.copy(src, CORPUS / "safetensors" / "interop_batch")
        break


def json_file_seeds(parser, sources, near_valid):
    for src in sources:
        put(parser, src.stem, src.read_bytes())
    for name, text in near_valid.items():
        put(parser, name, text)


TINY_MODEL = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 259, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 8, "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float32", "qk_norm": True,
}


def model_config_seeds():
    hf = ROOT / "tests" / "data" / "hf_configs"
    picks = ["qwen3_0_6b", "llama_3_2_1b", "mistral_7b_v0_1", "qwen3_8b_yarn", "transformers_5_24_0_linear_scaling",
             "transformers_4_48_full_dump_llama", "qwen3_0_6b_finetune_extras"]
    # No seed may crash a harness (libFuzzer would stop before fuzzing), so the inputs of known open bugs
    # (a number like 1e400, vocab_size near 2^63) are left to the dictionary and the fuzzer.
    json_file_seeds("model_config", [hf / f"{p}.json" for p in picks if (hf / f"{p}.json").exists()], {
        "tiny": json.dumps(TINY_MODEL, indent=2),
        "heads_not_divisible": json.dumps({**TINY_MODEL, "num_key_value_heads": 3}),
        "typo_key": json.dumps({**TINY_MODEL, "num_hiden_layers": 2}),
    })


def run_config_seeds():
    json_file_seeds("run_config", sorted((ROOT / "configs").glob("*.json")), {
        "unknown_key": '{"train": {"max_step": 10}}',
        "wrong_type": '{"train": {"batch_size": "four"}, "seed": -1}',
        "empty_object": "{}",
    })
    # 'S' mode: the rest is --set lines.
    put("run_config", "sets_basic", "Strain.max_steps=4\ntrain.lr=3e-4\ndata.task=reversal\nseed=7\n")
    put("run_config", "sets_model", "Smodel.hidden_size=64\nmodel.rope_scaling={\"rope_type\": \"linear\", \"factor\": 2.0}\n")
    put("run_config", "sets_bad", "Strain.batch_size=0\nno_equals_sign\n=3\nschedule.kind=cosine\n")


def chat_seeds():
    valid = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2"},
                      {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "héllo \u00e9 \ud83d\ude00"}, {"role": "assistant", "content": "hi\nthere"}]},
    ]
    put("chat", "valid", "\n".join(json.dumps(c) for c in valid) + "\n")
    put("chat", "blank_lines_crlf", "\r\n" + json.dumps(valid[0]) + "\r\n   \r\n")
    put("chat", "bad_role", json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    put("chat", "extra_field", json.dumps({"messages": [{"role": "user", "content": "x", "name": "bob"}]}) + "\n")
    put("chat", "not_object", "[1, 2, 3]\n")


def checkpoint_seeds():
    header = {
        "data_position": {"cursor": 16, "epoch": 0, "offset": 0}, "extra": {},
        "model_safetensors": {"bytes": 143296, "crc32": 3646870346},
        "moments": [], "optimizer_step_count": 4, "rng_states": ["1", "18446744073709551615"], "step": 4,
        "template_fingerprint": "chatml:1234", "tokenizer_fingerprint": "byte",
    }
    one_moment = {**header, "moments": [{"begin": 0, "dtype": "F32", "end": 8, "name": "adam.m:w", "shape": [2]}]}

    def state_file(header_text, moments=b""):
        payload = struct.pack("<Q", len(header_text)) + header_text.encode() + moments
        return b"RFTSTATE" + struct.pack("<IQ", 1, len(payload)) + payload + struct.pack("<I", zlib.crc32(payload))

    # 'H' mode (the harness frames header, NUL, moments) — the default mode.
    put("checkpoint", "header_valid", "H" + json.dumps(header))
    put("checkpoint", "header_one_moment", b"H" + json.dumps(one_moment).encode() + b"\0" + struct.pack("<2f", 0.5, 1.5))
    put("checkpoint", "header_bad_rng", "H" + json.dumps({**header, "rng_states": ["-1", 3]}))
    # 'B' mode: the whole state.bin.
    put("checkpoint", "state_valid", b"B" + state_file(json.dumps(header)))
    put("checkpoint", "state_bad_crc", b"B" + state_file(json.dumps(header))[:-1] + b"\0")
    put("checkpoint", "state_truncated", b"BRFTSTATE\x01\x00\x00\x00\xff\xff")
    # 'R' mode: run.json.
    for src in ROOT.glob("build*/pytest_work/test_blas_core/auto/checkpoints/step_*/run.json"):
        put("checkpoint", "run_json", b"R" + src.read_bytes())
        break
    put("checkpoint", "run_json_small", "R" + json.dumps({"seed": 1, "train": {"max_steps": 4}, "model": TINY_MODEL}))


def name_map_seeds():
    json_file_seeds("name_map", sorted((ROOT / "maps").glob("*.json")), {
        "extends_missing": '{"extends": "no_such_map.json", "tensors": []}',
        "bad_entry": '{"tensors": [{"theirs": "h.{i}.attn.c_attn.weight", "ours": ["a", "b"], "split": [1, "hidden"]}]}',
    })


def run_metrics_seeds():
    lines = [
        {"grad_norm": 2.95, "kind": "train", "loss": 5.56, "lr": 0.001, "seconds": 0.0022, "step": 1, "tokens": 192},
        {"grad_norm": 2.95, "kind": "train", "loss": 5.51, "lr": 0.002, "seconds": 0.0019, "step": 2, "tokens": 192},
        {"kind": "eval", "step": 2, "val_loss": 5.4, "exact_match": 0.0},
    ]
    put("run_metrics", "train_eval", "\n".join(json.dumps(l) for l in lines) + "\n")
    put("run_metrics", "ppo", '{"update": 1, "kind": "ppo", "mean_return": 12.5, "approx_kl": null}\n'
                              '{"update": 2, "kind": "ppo", "mean_return": 20.0, "approx_kl": 0.01}\n')
    put("run_metrics", "repeated_key", '{"step": 1, "step": 2, "loss": 1}\n')
    put("run_metrics", "no_step", '{"kind": "train", "loss": 1}\n')
    for src in ROOT.glob("build*/pytest_work/test_blas_core/auto/metrics.jsonl"):
        put("run_metrics", "real_run", src.read_bytes())
        break
    # What `reftrain report` draws besides the curves: tracer lines, invariant warnings, eval samples.
    report_lines = lines + [
        {"kind": "invariant", "step": 2, "name": "loss.no_spike", "details": "z=7.1"},
        {"kind": "eval", "step": 2, "val_loss": 5.4, "val_tokens": 40, "exact_match": 0.5,
         "samples": [{"prompt": "1+2=", "response": "3", "answer": "3", "correct": True}]},
        {"kind": "tracer", "step": 2, "worst_tensor": "model.layers.1.mlp.down_proj.out", "worst_abs_max": 7000.0,
         "near_overflow": {"tensor": "model.layers.1.mlp.down_proj.out", "abs_max": 7000.0, "limit": 65504.0},
         "groups": {"mlp.down_proj.out": {"layers": [0, 1], "abs_max": [3.5, 7000.0], "rms": [0.5, 20.0]},
                    "grad:model.norm.weight": {"layers": [-1], "abs_max": [0.01], "rms": [0.001]}}},
        {"kind": "test", "step": 2, "exact_match": 0.25, "examples": 4},
    ]
    put("run_metrics", "report_run", "M" + "\n".join(json.dumps(l) for l in report_lines) + "\n")
    half = {"curve": [1.0, 2.0, None, 8.0], "loss": [5.0, 4.0, 3.0, 2.0], "numbers": [["max lr", "8"]],
            "detector_fired": True, "detector_message": "fired", "detector_step": 1}
    put("run_metrics", "failure_json", "F" + json.dumps({
        "kind": "failure", "id": "demo", "title": "a demo", "curve_name": "lr", "log_scale": False, "seed": 1,
        "with_bug": half, "without_bug": dict(half, detector_fired=False, detector_step=-1), "detector_works": True}))


if __name__ == "__main__":
    safetensors_seeds()
    model_config_seeds()
    run_config_seeds()
    chat_seeds()
    checkpoint_seeds()
    name_map_seeds()
    run_metrics_seeds()

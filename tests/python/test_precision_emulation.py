"""test_precision_emulation.py — reftrain's bf16/fp16 emulation rounds exactly as PyTorch does.

About a million float32 values spanning every region where rounding is delicate — ordinary normals
at many magnitudes, values around and past fp16's largest finite 65504 (65520 is the first that
overflows), values in fp16's subnormal range and below it, exact bf16 and fp16 ties and their
neighbours, bf16's overflow edge near FLT_MAX, fp32 subnormals, random bit patterns (NaN payloads
included), +-inf, NaN and -0.0 — are written to a safetensors file. The gtest
RoundPrecision.RoundsSafetensorsFileNamedByEnvironment (tests/test_round.cpp) rounds them with
cpu::round_to_precision for BF16 and F16, and this script compares the results bit for bit with
x.to(torch.bfloat16).float() and x.to(torch.float16).float(). NaN is compared as NaN: PyTorch's own
NaN bit pattern depends on its code path (the vectorised CPU path gives 0xffff for bf16), so only
NaN-ness is meaningful.
"""
import argparse
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file


def from_bits(bits):
    """int64 tensor of fp32 bit patterns (0 .. 2^32-1) -> float32 tensor."""
    return bits.to(torch.int64).where(bits < 2**31, bits - 2**32).to(torch.int32).view(torch.float32)


def make_inputs(seed=1234):
    g = torch.Generator().manual_seed(seed)

    def rand(n):
        return torch.rand(n, generator=g, dtype=torch.float64)

    def signs(n):
        return torch.where(rand(n) < 0.5, -1.0, 1.0).to(torch.float64)

    def log_uniform(n, lo, hi):
        return signs(n) * torch.exp(torch.log(torch.tensor(lo)) + rand(n) * (torch.log(torch.tensor(hi / lo))))

    def random_bits(n, lo=0, hi=2**32):
        return torch.randint(lo, hi, (n,), generator=g, dtype=torch.int64)

    parts = {}
    # Ordinary values at many magnitudes.
    parts["normal"] = torch.randn(200_000, generator=g, dtype=torch.float64) * \
        torch.pow(10.0, rand(200_000) * 8 - 4)
    # Around fp16's overflow edge: [60000, 70000], dense near 65504..65536, and the exact neighbours
    # of the midpoint 65520 in fp32.
    parts["fp16_large"] = signs(100_000) * (60000.0 + rand(100_000) * 10000.0)
    parts["fp16_edge"] = signs(50_000) * (65500.0 + rand(50_000) * 40.0)
    edge_bits = int(torch.tensor([65520.0]).view(torch.int32))
    parts["fp16_edge_ulps"] = from_bits(torch.arange(edge_bits - 64, edge_bits + 64)).double()
    parts["large"] = log_uniform(50_000, 1e4, 3.4e38)
    # fp16 subnormals (below 2^-14 = 6.1e-5) and values below half the smallest (2^-25): log-uniform,
    # plus exact halfway points k * 2^-25 and their fp32 neighbours.
    parts["fp16_tiny"] = log_uniform(150_000, 1e-10, 1e-4)
    k = torch.randint(0, 2048, (20_000,), generator=g).double()
    halfway = (k * 2.0 + 1.0) * 2.0 ** -25
    hb = halfway.float().view(torch.int32).to(torch.int64)
    parts["fp16_subnormal_ties"] = torch.cat([halfway, from_bits(hb - 1).double(), from_bits(hb + 1).double()]) * \
        signs(60_000)
    # bf16 ties: low 16 bits exactly 0x8000 (and 0x7fff / 0x8001 beside them) under random high halves
    # of finite values.
    high = torch.randint(0, 0x7f7f, (40_000,), generator=g, dtype=torch.int64) | \
        (torch.randint(0, 2, (40_000,), generator=g, dtype=torch.int64) << 15)
    parts["bf16_ties"] = torch.cat([from_bits((high << 16) | low).double() for low in (0x8000, 0x7fff, 0x8001)])
    # fp16 ties in the normal range: the 13 bits fp16 drops are exactly 0x1000 (and neighbours).
    normal_bits = random_bits(40_000, 0x38800000, 0x477fe000) | (random_bits(40_000, 0, 2) << 31)
    normal_bits = normal_bits & ~0x1fff
    parts["fp16_ties"] = torch.cat([from_bits(normal_bits | low).double() for low in (0x1000, 0x0fff, 0x1001)])
    # bf16 overflow edge near FLT_MAX (0x7f7f0000 is the largest bf16, 0x7f7f8000 the midpoint to 2^128).
    top = torch.arange(0x7f7e0000, 0x7f800000, 37, dtype=torch.int64)
    top = torch.cat([top, torch.tensor([0x7f7f0000, 0x7f7f7fff, 0x7f7f8000, 0x7f7f8001, 0x7f7fffff])])
    parts["bf16_top"] = torch.cat([from_bits(top), from_bits(top | 2**31)]).double()
    # Random fp32 bit patterns: every exponent, fp32 subnormals, infinities and NaNs with payloads.
    parts["bits"] = from_bits(random_bits(150_000)).double()
    parts["fp32_subnormal"] = from_bits(random_bits(20_000, 1, 0x00800000) | (random_bits(20_000, 0, 2) << 31)).double()
    specials = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 65504.0, 65519.99, 65520.0, -65520.0,
                2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -25, 2.0 ** -14, 3.4e38, -3.4e38, 3.4028234663852886e38, 1e-45,
                1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11]
    parts["specials"] = torch.tensor(specials, dtype=torch.float64)

    # Float64 parts are converted to fp32 here (round to nearest), the NaN/inf/bit parts exactly.
    x = torch.cat([p.float() for p in parts.values()])
    return x, parts


def compare(name, ours, expected):
    """Bit-for-bit comparison; NaN positions must agree. Returns (mismatches, nan count, examples)."""
    ours_nan, expected_nan = torch.isnan(ours), torch.isnan(expected)
    bits_differ = ours.view(torch.int32) != expected.view(torch.int32)
    mismatched = (ours_nan != expected_nan) | (bits_differ & ~expected_nan)
    return int(mismatched.sum()), int(expected_nan.sum()), mismatched.nonzero().flatten()[:5].tolist()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reftrain", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    tests_binary = os.path.join(os.path.dirname(os.path.abspath(args.reftrain)), "reftrain_tests")
    if not os.path.exists(tests_binary):
        print(f"FAILED: {tests_binary} does not exist (build the reftrain_tests target)")
        return 1

    x, parts = make_inputs()
    in_path = os.path.join(args.workdir, "round_in.safetensors")
    out_path = os.path.join(args.workdir, "round_out.safetensors")
    if os.path.exists(out_path):
        os.remove(out_path)
    save_file({"x": x.contiguous()}, in_path)

    env = dict(os.environ, REFTRAIN_ROUND_IN=in_path, REFTRAIN_ROUND_OUT=out_path)
    r = subprocess.run([tests_binary, "--gtest_filter=RoundPrecision.RoundsSafetensorsFileNamedByEnvironment"],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(out_path):
        print(f"FAILED: the rounding gtest did not run or produced no output (exit {r.returncode}):\n"
              f"{r.stdout}\n{r.stderr}")
        return 1
    ours = load_file(out_path)

    total_mismatches = 0
    for key, torch_dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        expected = x.to(torch_dtype).float()
        got = ours[key]
        if got.shape != x.shape or got.dtype != torch.float32:
            print(f"FAILED: output '{key}' has shape {tuple(got.shape)} dtype {got.dtype}, "
                  f"expected {tuple(x.shape)} float32")
            return 1
        mismatches, nans, examples = compare(key, got, expected)
        total_mismatches += mismatches
        finite = torch.isfinite(expected)
        print(f"{key}: {x.numel()} values compared with torch .to({torch_dtype}).float(): {mismatches} mismatches "
              f"({int(torch.isinf(expected).sum())} inf, {nans} NaN, "
              f"{int((finite & (expected != 0) & (expected.abs() < (2.0 ** -14 if key == 'f16' else 2.0 ** -126))).sum())} "
              f"subnormal, {int((expected == 0).sum())} zero in the expected results)")
        for i in examples:
            print(f"  mismatch at {i}: x = {x[i].item()!r} (0x{int(x[i:i+1].view(torch.int32)) & 0xffffffff:08x}), "
                  f"reftrain {got[i].item()!r}, torch {expected[i].item()!r}")
    # Where the fp16 overflow edge lies, spelled out (a regression here would be a silent change).
    edge = torch.tensor([65519.99, 65520.0])
    print(f"fp16 edge: 65519.99 -> {edge.to(torch.float16)[0].item()}, 65520 -> {edge.to(torch.float16)[1].item()}; "
          f"bf16: 3.4e38 -> {torch.tensor(3.4e38).to(torch.bfloat16).item()}; "
          f"regions: {', '.join(f'{k} {v.numel()}' for k, v in parts.items())}")
    print("FAILED" if total_mismatches else "OK: bit-exact with PyTorch")
    return 1 if total_mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

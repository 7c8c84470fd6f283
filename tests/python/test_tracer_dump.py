"""test_tracer_dump.py — the NaN tracer's dump and report load in Python.

The dump comes from the gtest TracerFixture.InjectedOverflowWritesDump (tests/test_tracer.cpp), which
injects an overflow into layer 1's up_proj and leaves the tracer's files under
$REFTRAIN_TRACER_FIXTURE_DIR/tracer/ (this script sets it to <workdir>/tracer_fixture). It runs that one
test (reftrain_tests sits next to the reftrain binary), then loads the safetensors dump with the `safetensors` package and the JSON report
with `json`, and checks: the three tensor names of the op (its output and both inputs), that the bad
tensor holds inf/nan while the inputs are finite, and that the report names the same tensor and op
with a run-up row per frame.
"""
import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

BAD = "model.layers.1.mlp.up_proj.out"
INPUTS = ["model.layers.1.post_attention_layernorm.out", "model.layers.1.mlp.up_proj.weight"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reftrain", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    build_dir = os.path.dirname(os.path.abspath(args.reftrain))
    tests = os.path.join(build_dir, "reftrain_tests")
    if not os.path.exists(tests):
        print(f"SKIP: {tests} not built", file=sys.stderr)
        return 77
    fixture_dir = os.path.join(os.path.abspath(args.workdir), "tracer_fixture")
    r = subprocess.run([tests, "--gtest_filter=TracerFixture.InjectedOverflowWritesDump"], capture_output=True,
                       text=True, env=dict(os.environ, OMP_NUM_THREADS="1", REFTRAIN_TRACER_FIXTURE_DIR=fixture_dir))
    if r.returncode != 0:
        raise SystemExit(f"{tests} failed:\n{r.stdout}\n{r.stderr}")

    # The gtest writes its run directory where REFTRAIN_TRACER_FIXTURE_DIR says (by default under the
    # build directory); the tracer puts its files in <run_dir>/tracer/.
    tracer_dir = os.path.join(fixture_dir, "tracer")
    dumps = glob.glob(os.path.join(tracer_dir, "*.safetensors"))
    reports = glob.glob(os.path.join(tracer_dir, "*.json"))
    failures = []
    if len(dumps) != 1 or len(reports) != 1:
        raise SystemExit(f"expected one dump and one report in {tracer_dir}, found {dumps} and {reports}")

    tensors = load_file(dumps[0])
    if sorted(tensors) != sorted([BAD] + INPUTS):
        failures.append(f"dump names {sorted(tensors)}, expected {sorted([BAD] + INPUTS)}")
    else:
        bad = tensors[BAD]
        nonfinite = int((~np.isfinite(bad)).sum())
        if nonfinite == 0:
            failures.append(f"{BAD} in the dump holds no inf/nan")
        if not np.isfinite(tensors[INPUTS[0]]).all():
            failures.append(f"input {INPUTS[0]} is not finite")
        if bad.shape[-1] != tensors[INPUTS[1]].shape[0]:
            failures.append(f"shapes {bad.shape} and {tensors[INPUTS[1]].shape} do not belong to one linear op")
    with safe_open(dumps[0], framework="numpy") as f:
        meta = f.metadata()
    if meta.get("tensor") != BAD or meta.get("op") != "linear_forward":
        failures.append(f"dump metadata {meta}")

    report = json.load(open(reports[0]))
    if report["tensor"] != BAD or report["op"] != "linear_forward" or report["inputs"] != INPUTS:
        failures.append(f"report names {report['tensor']} / {report['op']} / {report['inputs']}")
    rows = report["runup"].get(BAD, [])
    if len(rows) != report["frames_before"] + 1 or rows[-1]["nonfinite"] == 0 or any(r["nonfinite"] for r in rows[:-1]):
        failures.append(f"run-up of {BAD}: {rows}")
    # Every statistic is a number: the JSON never holds null (what json writes for inf/NaN).
    for name, table in report["runup"].items():
        if any(value is None for row in table for value in row.values()):
            failures.append(f"run-up of {name} holds null: {table}")
    if os.path.basename(dumps[0]) != report["dump"]:
        failures.append(f"report points at {report['dump']}, dump is {dumps[0]}")

    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    if not failures:
        print(f"ok: {os.path.basename(dumps[0])}: {BAD} has {nonfinite} non-finite of {bad.size}; "
              f"run-up {len(rows)} rows")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

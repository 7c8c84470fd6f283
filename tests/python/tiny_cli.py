"""tiny_cli.py — what the command-line tests share: the tiny run they start (hidden 32, 2 layers, byte
tokenizer, 4 x 48 tokens a step, no evals), its environment, the command line ctest gives them, the
check() that collects failures and the exit status that reports them. Not a test itself (ctest runs
tests/python/test_*.py).
"""
import argparse
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "addition.json")
TINY = [
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
    "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.head_dim=8",
    "model.max_position_embeddings=64", "data.tokenizer=byte", "data.train_examples=300",
    "data.val_examples=0", "data.test_examples=0", "train.batch_size=4", "train.seq_len=48",
    "eval.every=0", "eval.exact_match_examples=0", "eval.final_test=false", "threads=1",
    "schedule.kind=constant", "schedule.warmup_steps=0",
]

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
        print(f"  FAIL {message}")
    return condition


def sets(extra):
    """TINY, then `extra`, as --set arguments (a later key wins)."""
    out = []
    for s in TINY + list(extra):
        out += ["--set", s]
    return out


def env():
    """One OpenMP thread, waiting passively: tests run side by side on 2 cores."""
    return dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")


def parse_cli(add_options=None):
    """--reftrain and --workdir, as ctest passes them, and any options of the test's own."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--reftrain", required=True)
    ap.add_argument("--workdir", required=True)
    if add_options:
        add_options(ap)
    return ap.parse_args()


def fresh_workdir(args):
    """The test's work directory, emptied: what an earlier run left there never passes for this run's."""
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def finish():
    """The exit status: 1 with the count when a check failed, else 0."""
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0

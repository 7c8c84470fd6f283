"""test_cli_train.py — `reftrain train`, `sample` and `data show` driven end to end, as a user would.

A tiny model (hidden 32, 2 layers, byte tokenizer) on the addition task trains 6 steps in well under a
second, so the whole file runs in a few seconds on one core. What it checks:
- train: exit 0; stdout opens with the resolved config (JSON holding the --set values), then plain
  progress lines (stdout is a pipe, not a terminal), eval lines, checkpoint and test lines that agree
  with metrics.jsonl; one finite train line per step; the checkpoint directory and its files.
- determinism: the same command in another run_dir gives bitwise-equal losses and identical files.
- resume: 3 steps, then `--set resume=latest` to 6, equals the straight 6-step run byte for byte.
- sample: verdicts for --num problems; seeded sampling repeats; greedy output ignores the seed.
- refusals: each exits with status 1 (not a signal) and one 'reftrain: error:' line naming the problem.
- data show: [[ ]] wraps exactly the assistant content and its <|im_end|>.
Each check prints FAIL with what it saw; the exit status is 1 if any failed.
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADDITION_CONFIG = str(REPO / "configs" / "addition.json")

# The tiny run. data.tokenizer is passed JSON-quoted here and bare in the determinism twin, so both
# spellings the docs promise are exercised. schedule.total_steps is pinned so the 3-step half of the
# resume test follows the same LR schedule as the 6-step run (0 would mean "max_steps").
TINY = [
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
    "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.head_dim=8",
    "model.max_position_embeddings=64", 'data.tokenizer="byte"', "data.train_examples=300",
    "data.val_examples=20", "data.test_examples=20", "train.batch_size=4", "train.seq_len=48",
    "eval.every=3", "eval.exact_match_examples=5", "threads=1", "log_every=4",
    "schedule.warmup_steps=2", "schedule.total_steps=6",
]
MAX_STEPS = 6

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
        print(f"  FAIL {message}")
    return condition


class Result:
    def __init__(self, cmd, completed):
        self.cmd = cmd
        self.rc = completed.returncode
        self.stdout_bytes = completed.stdout
        # latin-1 maps every byte to one character: sampled byte-tokenizer output need not be UTF-8.
        self.stdout = completed.stdout.decode("latin-1")
        self.stderr = completed.stderr.decode("latin-1")

    def describe(self):
        return f"`{' '.join(self.cmd)}` exited {self.rc}; stderr: {self.stderr.strip()[-600:]!r}"


def run(reftrain, args, cwd):
    cmd = [reftrain] + args
    return Result(cmd, subprocess.run(cmd, capture_output=True, cwd=cwd, timeout=120))


def train_args(run_dir, extra=(), tiny=TINY, max_steps=MAX_STEPS):
    args = ["train", "--config", ADDITION_CONFIG]
    for kv in list(tiny) + [f"train.max_steps={max_steps}", f"run_dir={run_dir}"] + list(extra):
        args += ["--set", kv]
    return args


def read_metrics(run_dir):
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def train_lines(metrics):
    return [m for m in metrics if m.get("kind") == "train"]


def final_checkpoint(run_dir):
    return Path(run_dir, "checkpoints", f"step_{MAX_STEPS:07d}")


def same_bytes(a, b):
    return Path(a).is_file() and Path(b).is_file() and Path(a).read_bytes() == Path(b).read_bytes()


# ---- train ------------------------------------------------------------------------------------------

def check_train_run(r, run_dir):
    print("train: output, metrics.jsonl, checkpoint")
    if not check(r.rc == 0, f"train: {r.describe()}"):
        return
    out = r.stdout
    check("\r" not in out, "train: stdout is a pipe, yet the output has carriage returns (the live bar)")

    # The resolved config comes first: a header line, then JSON.
    header, _, rest = out.partition("\n")
    check(header.startswith("reftrain train: resolved config (") and ADDITION_CONFIG in header and "--set" in header,
          f"train: first line should name the config and --set, got {header!r}")
    try:
        resolved, _ = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as e:
        check(False, f"train: the resolved config after the first line is not JSON ({e})")
        return
    for section, key, want in (("model", "hidden_size", 32), ("model", "head_dim", 8), ("data", "tokenizer", "byte"),
                               ("train", "seq_len", 48), ("train", "max_steps", MAX_STEPS), ("eval", "every", 3),
                               ("schedule", "kind", "wsd")):
        got = resolved.get(section, {}).get(key)
        check(got == want, f"train: resolved config {section}.{key} = {got!r}, want {want!r}")
    check(resolved.get("run_dir") == str(run_dir) and resolved.get("threads") == 1,
          f"train: resolved run_dir/threads = {resolved.get('run_dir')!r}/{resolved.get('threads')!r}")

    # metrics.jsonl: one finite train line per step, in order.
    metrics = read_metrics(run_dir)
    train = train_lines(metrics)
    check([m["step"] for m in train] == list(range(1, MAX_STEPS + 1)),
          f"metrics.jsonl: train steps {[m['step'] for m in train]}, want 1..{MAX_STEPS}")
    bad = [m for m in train if not all(isinstance(m.get(k), (int, float)) and math.isfinite(m[k])
                                       for k in ("loss", "lr", "grad_norm")) or m["lr"] <= 0 or m.get("tokens") != 4 * 48]
    check(not bad, f"metrics.jsonl: train lines with a missing or non-finite loss/lr/grad_norm, lr <= 0 or "
                   f"tokens != 4 x 48: {bad[:3]}")
    vocab = re.search(r"tokenizer byte \(V=(\d+)\)", out)
    if check(vocab is not None, "train: no 'data: ... tokenizer byte (V=N)' line") and train:
        # A fresh model predicts about uniformly: the first loss is close to ln V.
        ln_v = math.log(int(vocab.group(1)))
        check(abs(train[0]["loss"] - ln_v) < 0.25,
              f"metrics.jsonl: first loss {train[0]['loss']:.4f}, want ln V = {ln_v:.4f} +- 0.25")

    # Progress lines: every log_every = 4 steps and at the last, matching the metrics to the printed digits.
    progress = re.findall(r"^step (\d+)/(\d+) loss (\S+) lr (\S+) grad_norm (\S+) (\d+) tok/s ETA \d+m\d\ds$", out, re.M)
    check([(int(s), int(n)) for s, n, *_ in progress] == [(4, MAX_STEPS), (6, MAX_STEPS)],
          f"train: progress lines for steps {[p[:2] for p in progress]}, want 4/6 and 6/6 (log_every=4 plus the last)")
    by_step = {m["step"]: m for m in train}
    for step, _, loss, lr, grad_norm, _ in progress:
        m = by_step.get(int(step), {})
        check(abs(float(loss) - m.get("loss", math.inf)) <= 1e-4
              and abs(float(grad_norm) - m.get("grad_norm", math.inf)) <= 1e-3,
              f"train: progress line for step {step} (loss {loss}, grad_norm {grad_norm}) disagrees with metrics.jsonl {m}")

    # Eval lines at step 3 and at the end, agreeing with the kind=eval metrics.
    evals = re.findall(r"^eval step (\d+): val loss (\S+), exact match (\S+)% of 5$", out, re.M)
    eval_metrics = [m for m in metrics if m.get("kind") == "eval"]
    check([int(e[0]) for e in evals] == [3, 6] and [m["step"] for m in eval_metrics] == [3, 6],
          f"train: eval lines at steps {[e[0] for e in evals]}, metrics at {[m['step'] for m in eval_metrics]}, "
          "want 3 and 6")
    for (step, val_loss, em), m in zip(evals, eval_metrics):
        check(abs(float(val_loss) - m["val_loss"]) <= 1e-4 and abs(float(em) - 100 * m["exact_match"]) <= 0.05,
              f"train: eval line at step {step} ({val_loss}, {em}%) disagrees with metrics.jsonl {m}")
    test = re.search(r"^test: exact match (\S+)% on 20 held-out problems", out, re.M)
    test_metrics = [m for m in metrics if m.get("kind") == "test"]
    check(test is not None and len(test_metrics) == 1, "train: no 'test: exact match X% on 20 held-out problems' line "
          f"or not exactly one kind=test metric ({len(test_metrics)})")

    # The checkpoint.
    checkpoints = Path(run_dir, "checkpoints")
    latest = (checkpoints / "latest").read_text().strip() if (checkpoints / "latest").exists() else None
    check(latest == f"step_{MAX_STEPS:07d}", f"checkpoints/latest names {latest!r}, want step_{MAX_STEPS:07d}")
    ckpt = final_checkpoint(run_dir)
    present = sorted(p.name for p in ckpt.iterdir()) if ckpt.is_dir() else []
    for name in ("model.safetensors", "config.json", "run.json", "state.bin"):
        check(name in present, f"checkpoint {ckpt} lacks {name} (has {present})")
    check(f"checkpoint: {ckpt}" in out, f"train: no 'checkpoint: {ckpt}' line")
    if "run.json" in present and "config.json" in present and vocab:
        run_json = json.loads((ckpt / "run.json").read_text())
        model_json = json.loads((ckpt / "config.json").read_text())
        check(run_json.get("model", {}).get("hidden_size") == 32 and run_json.get("data", {}).get("tokenizer") == "byte",
              "run.json does not hold the resolved --set values")
        check(model_json.get("vocab_size") == int(vocab.group(1)) and model_json.get("hidden_size") == 32,
              f"config.json: vocab_size {model_json.get('vocab_size')}, hidden_size {model_json.get('hidden_size')}; "
              f"want the tokenizer's {vocab.group(1)} and 32")


def check_determinism(reftrain, workdir, first_dir):
    print("determinism: the same command in a second run_dir")
    second_dir = workdir / "run_twin"
    tiny_bare = [kv if kv != 'data.tokenizer="byte"' else "data.tokenizer=byte" for kv in TINY]
    r = run(reftrain, train_args(second_dir, tiny=tiny_bare), workdir)
    if not check(r.rc == 0, f"determinism: {r.describe()}"):
        return
    a, b = train_lines(read_metrics(first_dir)), train_lines(read_metrics(second_dir))
    for key in ("loss", "grad_norm", "lr"):
        check([m[key] for m in a] == [m[key] for m in b],
              f"determinism: {key} per step differs:\n    {[m[key] for m in a]}\n    {[m[key] for m in b]}")
    for name in ("model.safetensors", "state.bin"):
        check(same_bytes(final_checkpoint(first_dir) / name, final_checkpoint(second_dir) / name),
              f"determinism: {name} differs between the two runs")


def check_resume(reftrain, workdir, straight_dir):
    print("resume: 3 steps, then resume=latest to 6")
    run_dir = workdir / "run_resumed"
    r = run(reftrain, train_args(run_dir, ["checkpoint_every=2"], max_steps=3), workdir)
    if not check(r.rc == 0, f"resume, first half: {r.describe()}"):
        return
    checkpoints = Path(run_dir, "checkpoints")
    names = sorted(p.name for p in checkpoints.iterdir())
    check(names == ["latest", "step_0000002", "step_0000003"], f"resume: after 3 steps with checkpoint_every=2, "
          f"checkpoints/ holds {names}, want latest, step_0000002, step_0000003")
    check((checkpoints / "latest").read_text().strip() == "step_0000003", "resume: latest does not name step_0000003")

    r = run(reftrain, train_args(run_dir, ["resume=latest"]), workdir)
    if not check(r.rc == 0, f"resume, second half: {r.describe()}"):
        return
    check(re.search(r"^resumed from \S*step_0000003 at step 3$", r.stdout, re.M) is not None,
          "resume: no 'resumed from .../step_0000003 at step 3' line")
    check(f"training {MAX_STEPS - 3} optimizer steps" in r.stdout,
          f"resume: the second half should train {MAX_STEPS - 3} steps, not start over")
    # A restart from scratch would also end with 6 train lines and the same weights; the first half's
    # kind=test line (step 3) staying in the file shows the resumed run appended.
    kinds = [(m.get("kind"), m.get("step")) for m in read_metrics(run_dir)]
    check(("test", 3) in kinds and kinds[-1] == ("test", MAX_STEPS),
          f"resume: metrics.jsonl should keep the first half's lines and append, got {kinds}")
    resumed, straight = train_lines(read_metrics(run_dir)), train_lines(read_metrics(straight_dir))
    check([m["step"] for m in resumed] == list(range(1, MAX_STEPS + 1)),
          f"resume: metrics.jsonl train steps {[m['step'] for m in resumed]}, want 1..{MAX_STEPS}")
    check([m["loss"] for m in resumed] == [m["loss"] for m in straight],
          f"resume: losses differ from the straight run:\n    {[m['loss'] for m in resumed]}\n"
          f"    {[m['loss'] for m in straight]}")
    for name in ("model.safetensors", "state.bin"):
        check(same_bytes(final_checkpoint(run_dir) / name, final_checkpoint(straight_dir) / name),
              f"resume: the final {name} differs from the straight {MAX_STEPS}-step run's")


# ---- sample -----------------------------------------------------------------------------------------

def check_sample(reftrain, workdir, ckpt):
    print("sample: verdicts, seeded repeats, greedy ignores the seed")
    r = run(reftrain, ["sample", "--checkpoint", str(ckpt), "--num", "3"], workdir)
    if check(r.rc == 0, f"sample --num 3: {r.describe()}"):
        answers = re.findall(r"^user: (\d+)\+(\d+)\nassistant: (.*?)(?:   \(no end-of-turn within (\d+) tokens\))?"
                             r"   \[(correct|wrong, want (\d+))\]$", r.stdout, re.M | re.S)
        check(len(answers) == 3 and r.stdout.count("\nuser: ") + r.stdout.startswith("user: ") == 3,
              f"sample --num 3: want 3 user/assistant pairs with a verdict, got {len(answers)}:\n{r.stdout}")
        correct = 0
        for a, b, response, generated, verdict, want in answers:
            # A byte token decodes to at least one byte, so a cut-off answer has at least as many bytes as the
            # tokens the note claims (the context limit, 64 positions, stops generation before max_new_tokens).
            check(not generated or int(generated) <= len(response),
                  f"sample: '{a}+{b}' says no end-of-turn within {generated} tokens, "
                  f"but the answer has {len(response)} bytes")
            right = response.strip() == str(int(a) + int(b))
            correct += verdict == "correct"
            check((verdict == "correct") == right and (right or int(want) == int(a) + int(b)),
                  f"sample: verdict {verdict!r} for {a}+{b} -> {response!r} is wrong")
        summary = re.search(r"^(\d+)/3 correct$", r.stdout, re.M)
        check(summary is not None and int(summary.group(1)) == correct,
              f"sample --num 3: want a '{correct}/3 correct' line, got {summary.group(0) if summary else None!r}")

    seeded = ["sample", "--checkpoint", str(ckpt), "--prompt", "12+34", "--temperature", "0.8"]
    first = run(reftrain, seeded + ["--seed", "5"], workdir)
    again = run(reftrain, seeded + ["--seed", "5"], workdir)
    check(first.rc == 0 and again.rc == 0, f"sample --temperature 0.8: {first.describe()}")
    check(first.stdout_bytes == again.stdout_bytes and "user: 12+34\nassistant: " in first.stdout,
          f"sample: --seed 5 twice gave different output:\n{first.stdout!r}\n{again.stdout!r}")
    # Greedy decoding draws nothing, so the seed may change only the header that echoes it.
    greedy = ["sample", "--checkpoint", str(ckpt), "--prompt", "12+34", "--prompt", "7+8"]
    g5, g9 = run(reftrain, greedy + ["--seed", "5"], workdir), run(reftrain, greedy + ["--seed", "9"], workdir)
    body5, body9 = g5.stdout.partition("\n")[2], g9.stdout.partition("\n")[2]
    check(g5.rc == 0 and g9.rc == 0 and body5 == body9 and body5.count("assistant: ") == 2,
          f"sample: greedy output depends on the seed:\n{g5.stdout!r}\n{g9.stdout!r}")


# ---- refusals ---------------------------------------------------------------------------------------

def expect_refusal(name, r, phrases):
    lines = r.stderr.strip().splitlines()
    if not check(r.rc == 1, f"refusal '{name}': want exit status 1, got {r.rc}"
                            f"{' (killed by a signal)' if r.rc < 0 else ''}; stderr {r.stderr.strip()[-400:]!r}"):
        return
    if not check(len(lines) == 1 and lines[0].startswith("reftrain: error: "),
                 f"refusal '{name}': want one 'reftrain: error:' line on stderr, got {lines}"):
        return
    for phrase in phrases:
        check(phrase.lower() in lines[0].lower(), f"refusal '{name}': message lacks {phrase!r}: {lines[0]}")


def check_refusals(reftrain, workdir, ckpt):
    print("refusals: each one line, exit status 1")
    expect_refusal("sample with another template",
                   run(reftrain, ["sample", "--checkpoint", str(ckpt), "--template", "nanochat"], workdir),
                   ["trained with template", "chatml", "nanochat"])

    truncated = workdir / "ckpt_truncated"
    shutil.copytree(ckpt, truncated)
    state = truncated / "state.bin"
    os.truncate(state, state.stat().st_size // 2)
    expect_refusal("truncated state.bin", run(reftrain, ["sample", "--checkpoint", str(truncated)], workdir),
                   [str(state), "truncated"])

    flipped = workdir / "ckpt_flipped"
    shutil.copytree(ckpt, flipped)
    weights = flipped / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x40  # a weight byte, past the header: only the CRC-32 can notice
    weights.write_bytes(bytes(data))
    expect_refusal("flipped byte in model.safetensors",
                   run(reftrain, ["sample", "--checkpoint", str(flipped)], workdir), [str(weights), "corrupt", "CRC"])

    expect_refusal("unknown --set key", run(reftrain, train_args(workdir / "run_refused", ["train.max_step=3"]), workdir),
                   ["unknown key 'train.max_step'", "did you mean 'train.max_steps'"])
    expect_refusal("fractional integer", run(reftrain, train_args(workdir / "run_refused", max_steps="2.5"), workdir),
                   ["'train.max_steps' must be an integer", "2.5"])
    expect_refusal("string for an integer",
                   run(reftrain, train_args(workdir / "run_refused", ["train.batch_size=four"]), workdir),
                   ["'train.batch_size' must be an integer", "four"])

    not_json = workdir / "not_json.json"
    not_json.write_text("run_dir: runs/x\n")
    expect_refusal("config that is not JSON", run(reftrain, ["train", "--config", str(not_json)], workdir),
                   [str(not_json), "not valid JSON"])
    missing = workdir / "no_such_config.json"
    expect_refusal("missing --config", run(reftrain, ["train", "--config", str(missing)], workdir),
                   [str(missing), "cannot open"])

    bad_role = workdir / "bad_role.jsonl"
    bad_role.write_text('{"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]}\n'
                        '{"messages": [{"role": "user", "content": "1+2"}, {"role": "robot", "content": "3"}]}\n')
    expect_refusal("JSONL with a bad role",
                   run(reftrain, train_args(workdir / "run_refused", ['data.task=""', f"data.jsonl={bad_role}"]), workdir),
                   [f"{bad_role}:2", "unknown role 'robot'"])


# ---- data show, print-defaults --------------------------------------------------------------------------

def check_data_show(reftrain, workdir):
    print("data show: [[ ]] around exactly the assistant turns")
    jsonl = workdir / "show.jsonl"
    jsonl.write_text(json.dumps({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+5"},
        {"role": "assistant", "content": "eight\nok"}]}) + "\n")
    r = run(reftrain, ["data", "show", "--jsonl", str(jsonl), "--template", "chatml", "--tokenizer", "byte",
                       "--color", "never"], workdir)
    if not check(r.rc == 0, f"data show: {r.describe()}"):
        return
    check("\033[" not in r.stdout, "data show --color never printed ANSI escapes")
    # visualize() prints a newline as the two characters \n followed by a real line break.
    # The legend line shows "[[supervised]]" too, so only the rendering between the header and it counts.
    text = r.stdout.partition("=== conversation 0")[2].partition("\nlegend:")[0].replace("\\n\n", "\\n")
    spans = re.findall(r"\[\[(.*?)\]\]", text, re.S)
    check(spans == ["4<|im_end|>", "eight\\nok<|im_end|>"],
          f"data show: supervised spans {spans}, want ['4<|im_end|>', 'eight\\\\nok<|im_end|>']")
    # 1 + 1 tokens for "4", 8 + 1 for "eight\nok": the byte tokenizer gives one token per byte.
    check(re.search(r"\b(\d+) tokens, 11 supervised", r.stdout) is not None,
          f"data show: want '11 supervised' in the counts line:\n{r.stdout}")


def check_data_show_config(reftrain, workdir):
    print("data show --config: training conversations as train renders them, answers supervised")
    args = ["data", "show", "--config", ADDITION_CONFIG, "--count", "2", "--color", "never"]
    for kv in TINY:
        args += ["--set", kv]
    r = run(reftrain, args, workdir)
    if not check(r.rc == 0, f"data show --config: {r.describe()}"):
        return
    blocks = r.stdout.split("=== training conversation ")[1:]
    check(len(blocks) == 2, f"data show --config --count 2: {len(blocks)} conversations shown:\n{r.stdout}")
    for block in blocks:
        body = block.partition("\n")[2].partition("\nlegend:")[0].replace("\\n\n", "\\n")
        prompt = re.search(r"user\\n(\d+)\+(\d+)<\|im_end\|>", body)
        spans = re.findall(r"\[\[(.*?)\]\]", body, re.S)
        if check(prompt is not None and len(spans) == 1, f"data show --config: unexpected rendering:\n{body}"):
            want = str(int(prompt.group(1)) + int(prompt.group(2))) + "<|im_end|>"
            check(spans[0] == want, f"data show --config: supervised {spans[0]!r}, want {want!r}")


def check_print_defaults(reftrain, workdir):
    print("train --print-defaults")
    r = run(reftrain, ["train", "--print-defaults"], workdir)
    if not check(r.rc == 0, f"train --print-defaults: {r.describe()}"):
        return
    try:
        defaults = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        check(False, f"train --print-defaults: not JSON ({e})")
        return
    for section in ("model", "data", "train", "schedule", "eval"):
        check(isinstance(defaults.get(section), dict) and defaults[section],
              f"train --print-defaults: section {section!r} missing or empty")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reftrain", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    reftrain = os.path.abspath(args.reftrain)
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)  # stale checkpoints would change what resume=latest finds
    workdir.mkdir(parents=True)

    first_dir = workdir / "run"
    r = run(reftrain, train_args(first_dir), workdir)
    check_train_run(r, first_dir)
    if r.rc == 0:
        check_determinism(reftrain, workdir, first_dir)
        check_resume(reftrain, workdir, first_dir)
        check_sample(reftrain, workdir, final_checkpoint(first_dir))
        check_refusals(reftrain, workdir, final_checkpoint(first_dir))
    check_data_show(reftrain, workdir)
    check_data_show_config(reftrain, workdir)
    check_print_defaults(reftrain, workdir)

    print(f"FAILED: {len(failures)} check(s)" if failures else "OK: train, resume, sample, refusals and data show behave")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

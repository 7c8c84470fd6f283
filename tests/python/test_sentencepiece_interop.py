"""test_sentencepiece_interop.py — reftrain encodes exactly as Python's sentencepiece does.

Python trains two models that reftrain did not make — a BPE with byte fallback, split digits and a
user-defined symbol, and a unigram with sentencepiece's default NFKC normalisation and dummy
prefix — then `reftrain data encode` encodes ~50 varied lines (digits, accents, CJK, emoji, runs of
spaces, tabs, the text of special tokens) with each model. Every line's ids must equal Python's
`encode` exactly. This is what lets a user bring any .model file and trust the ids.
"""
import argparse
import json
import os
import subprocess
import sys

try:
    import sentencepiece as spm
except ImportError:
    print("SKIP: python module sentencepiece is not installed")
    sys.exit(77)


def corpus():
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "assistant", "user", "system",
             "reverse", "sort", "copy", "café", "naïve", "Straße", "日本語", "テキスト", "modèle"]
    out = []
    for i in range(600):
        a, b = (i * 37) % 1000, (i * 91) % 1000
        out.append(f"{a}+{b}={a + b}")
        out.append(" ".join(words[(i * k) % len(words)] for k in range(1, 1 + i % 9)))
    out += ["You are a helpful assistant.", "What is the capital of France? Paris.", "<|tool|> call(3)"] * 20
    return out


LINES = [
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "12345",
    "3.14159 and 2,718",
    "0",
    "1000000 + 2000000 = 3000000",
    "phone: +1 (555) 010-9999",
    "café naïve Straße",
    "日本語のテキスト",
    "emoji 🙂🚀 mixed",
    "Ελληνικά και русский",
    "  two leading spaces",
    "trailing spaces   ",
    "many     inner      spaces",
    "\ttabbed\tcolumns\t",
    "carriage\rreturn inside",
    "<|tool|>",
    "before<|tool|>after",
    "<|tool|><|tool|> twice",
    "<s> and </s> as text",
    "<unk> as text",
    "<|im_start|>user",
    "<|endoftext|>",
    "a",
    "",
    " ",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ ①②③",
    "ﬁ ligature and ½ fraction",
    "mixed123digits456here",
    "x=1;y=22;z=333",
    "reverse abcdef -> fedcba",
    "sort 5 2 9 1 -> 1 2 5 9",
    "UPPER lower MiXeD",
    "punctuation!?.,;:'\"()[]{}",
    "backslash \\ and slash /",
    "~`@#$%^&*_-=+|",
    "url https://example.com/a?b=c&d=e",
    "email someone@example.org",
    "code: for (int i = 0; i < n; ++i) {}",
    "json {\"role\": \"user\", \"content\": \"hi\"}",
    "▁ a literal lower one eighth block",
    "zero\u200bwidth space",
    "combining e\u0301 accent",
    "null-free but \x01 control \x1f chars",
    "unseen chars: ☃ ♞ ∑ ∫ ≠",
    "long " + "word" * 50,
    "digits " + "9876543210" * 5,
    "What is 17*5 mod 23?",
    "The answer is 16.",
    "assistant system user tool",
]


def train(workdir, name, **options):
    prefix = os.path.join(workdir, name)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_prefix=prefix, minloglevel=2, **options)
    return prefix + ".model"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reftrain", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)

    lines_path = os.path.join(args.workdir, "lines.txt")
    # newline="" keeps "\r" inside a line as it is; reftrain splits on "\n" only.
    with open(lines_path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(line + "\n" for line in LINES))

    models = {
        "bpe": train(args.workdir, "bpe", model_type="bpe", vocab_size=500, split_digits=True, byte_fallback=True,
                     character_coverage=1.0, user_defined_symbols=["<|tool|>"]),
        "unigram": train(args.workdir, "unigram", model_type="unigram", vocab_size=300,
                         user_defined_symbols=["<|tool|>"]),
    }
    failures = 0
    for name, model_path in models.items():
        sp = spm.SentencePieceProcessor(model_file=model_path)
        r = subprocess.run([args.reftrain, "data", "encode", "--tokenizer", model_path, "--input", lines_path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"FAIL {name}: reftrain data encode exited {r.returncode}\n{r.stderr}")
            failures += 1
            continue
        ours = [json.loads(line) for line in r.stdout.splitlines()]
        if len(ours) != len(LINES):
            print(f"FAIL {name}: reftrain printed {len(ours)} lines of ids for {len(LINES)} input lines")
            failures += 1
            continue
        mismatched = 0
        for line, got in zip(LINES, ours):
            expected = sp.encode(line)
            if got != expected:
                mismatched += 1
                print(f"  FAIL {name} {line!r}:\n    python   {expected}\n    reftrain {got}")
        tool_id = sp.piece_to_id("<|tool|>")
        uses_tool = sum(tool_id in sp.encode(line) for line in LINES)
        print(f"{name}: vocab {sp.get_piece_size()}, {len(LINES)} lines, {mismatched} differ from Python's encode "
              f"({sum(len(x) for x in ours)} ids; the user-defined <|tool|> matched in {uses_tool} lines)")
        failures += mismatched
        if uses_tool == 0:  # the user-defined symbol must actually be exercised
            print(f"FAIL {name}: no line encoded <|tool|> as its user-defined piece")
            failures += 1
    # split_digits was really in force (so the lines above exercised it): no piece holds two digits.
    sp = spm.SentencePieceProcessor(model_file=models["bpe"])
    pieces = sp.encode("9876543210 and 2024", out_type=str)
    if any(sum(c.isdigit() for c in piece) > 1 for piece in pieces):
        print(f"FAIL bpe: split_digits is not in force: {pieces}")
        failures += 1
    print("PASS" if failures == 0 else f"FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

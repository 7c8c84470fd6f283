#!/usr/bin/env bash
# scripts/grpo_demo.sh — GRPO raises the held-out exact match of a weak addition model (docs/grpo.md).
#   1. a WEAK SFT model: the main job's task and template with the recipe this demo was measured with
#      (4 layers, 64-token rows of packed conversations, batch 32, lr 1e-3), stopped at 375 steps (its WSD
#      schedule runs over the 375), about 38% exact match on the 500 test problems, in about a minute on 2 cores;
#   2. GRPO from that checkpoint (configs/grpo_addition.json, `reftrain rl`): 200 updates of 16 prompts
#      x 8 samples, about 2 minutes on 2 cores; it prints the test-split exact match before and after.
# Builds first when the binary is missing. Extra arguments go to `reftrain rl`, e.g. --set updates=300.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
reftrain=${REFTRAIN_BUILD_DIR:-$root/build}/reftrain
[ -x "$reftrain" ] || "$root/scripts/setup.sh"
cd "$root"
# The weak model keeps the recipe this demo was measured with: the main job's own recipe (configs/addition.json:
# 2 layers, one conversation per 20-token row, lr 2e-3) learns the carry far earlier and would leave no weak point.
"$reftrain" train --config configs/addition.json --set train.max_steps=375 --set eval.every=0 \
    --set model.num_hidden_layers=4 --set train.seq_len=64 --set train.batch_size=32 --set schedule.lr=1e-3 \
    --set train.weight_decay=0.0 --set run_dir=runs/addition_weak
echo
echo "== GRPO from the weak model =="
"$reftrain" rl --config configs/grpo_addition.json "$@"

#!/usr/bin/env bash
# scripts/run.sh — set up and build what the main job needs (scripts/setup.sh --main), then run it: train a small chat model
# on 2-digit addition (configs/addition.json, about 80 s of training on 2 CPU cores) and answer held-out
# problems from the final checkpoint with `reftrain sample`.
# Extra arguments go to `reftrain train`, e.g. `scripts/run.sh --set train.max_steps=200`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh" --main
reftrain=${REFTRAIN_BUILD_DIR:-$root/build}/reftrain
cd "$root"
"$reftrain" train --config configs/addition.json "$@"
echo
echo "== samples from the final checkpoint (held-out test problems, greedy) =="
"$reftrain" sample --checkpoint "runs/addition/checkpoints/$(cat runs/addition/checkpoints/latest)" --num 8

#!/usr/bin/env bash
# scripts/run.sh — set up and build (scripts/setup.sh), then run the main job: for now `reftrain demo`
# (a random Qwen3-style model, one batch, forward + backward and a few AdamW steps, with a summary).
# Extra arguments go to `reftrain demo`, e.g. `scripts/run.sh --config my/config.json`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
exec "${REFTRAIN_BUILD_DIR:-$root/build}/reftrain" demo "$@"

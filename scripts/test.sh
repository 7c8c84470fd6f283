#!/usr/bin/env bash
# scripts/test.sh — set up and build (scripts/setup.sh), then run every test with ctest.
# Extra arguments go to ctest, e.g. `scripts/test.sh -R Gradcheck` or `scripts/test.sh -L python`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
ctest --test-dir "${REFTRAIN_BUILD_DIR:-$root/build}" --output-on-failure -j"$(nproc)" "$@"

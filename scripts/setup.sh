#!/usr/bin/env bash
# scripts/setup.sh — install what is missing, then configure and build reftrain.
#
# Usage: scripts/setup.sh          everything the tests need (scripts/test.sh, CI)
#        scripts/setup.sh --main   only what the main job needs (scripts/run.sh): the compiler, CMake and
#                                  the libraries the `reftrain` binary uses; builds that one target, on the
#                                  CPU. From a fresh clone, the main job's first training step came after
#                                  170 s instead of about 6.5 minutes (no PyTorch, no test
#                                  or CUDA build).
# Idempotent: a second run installs nothing and rebuilds only what changed.
#   - Debian packages (apt-get; uses sudo when not root): compiler, CMake, OpenBLAS (OpenMP flavour),
#     SLEEF (vector exp), nlohmann-json, CLI11, sentencepiece, zlib; for the tests also GoogleTest, Google Benchmark,
#     Debian's PyTorch + numpy (parity tests and benchmark peers), OpenMPI (mpirun -np 2 tests), clang
#     (the fuzz harnesses), chromium (renders `reftrain report` pages) and tmux (a real terminal).
#   - For the tests, a Python venv in .venv that sees Debian's torch/numpy (--system-site-packages) and
#     adds `safetensors`, `gymnasium` and `tensorboard` from PyPI (Debian has no package for them); with
#     CUDA also the cudnn-frontend C++ headers (PyPI's nvidia-cudnn-frontend, headers only) for cuDNN
#     attention.
# Environment: REFTRAIN_BUILD_DIR (default build/), REFTRAIN_CMAKE_ARGS (extra -D options).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${REFTRAIN_BUILD_DIR:-$root/build}

main_only=false
case "${1:-}" in
  --main) main_only=true ;;
  "") ;;
  *) echo "setup.sh: unknown argument '$1' (expected nothing or --main)" >&2; exit 2 ;;
esac
have_nvcc=false
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then have_nvcc=true; fi

# What the reftrain binary needs to build and run.
packages=(g++ cmake make libopenblas-openmp-dev libsleef-dev nlohmann-json3-dev libcli11-dev libsentencepiece-dev zlib1g-dev)
if ! $main_only; then  # the tests and benchmarks; OpenMPI for data-parallel training (mpirun, tests/dist/)
  packages+=(git libgtest-dev libgmock-dev libbenchmark-dev sentencepiece python3 python3-venv python3-pip
             python3-numpy python3-torch python3-sentencepiece openmpi-bin libopenmpi-dev
             clang libclang-rt-14-dev    # clang + libFuzzer: tests/fuzz (scripts/fuzz.sh, CI's smoke run)
             chromium tmux)              # the report page in a real browser, the progress line on a real terminal
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if $main_only; then
  # The CPU build of the one binary. A build directory configured before keeps its settings (scripts/test.sh
  # may have turned CUDA and the tests on); a fresh one starts without CUDA, tests or benchmarks, which
  # the main job does not use and whose packages --main does not install.
  fresh_args=()
  [ -f "$build/CMakeCache.txt" ] || fresh_args=(-DREFTRAIN_CUDA=OFF -DREFTRAIN_BUILD_TESTS=OFF -DREFTRAIN_BUILD_BENCH=OFF)
  # shellcheck disable=SC2086
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "${fresh_args[@]}" ${REFTRAIN_CMAKE_ARGS:-} >/dev/null
  cmake --build "$build" -j"$(nproc)" --target reftrain
  exit 0
fi

venv=$root/.venv
if ! "$venv/bin/python" -c "import torch, numpy, safetensors" >/dev/null 2>&1; then
  echo "setup: creating the Python venv in .venv (Debian's torch + numpy, safetensors from PyPI)"
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "safetensors>=0.4"
fi
# Gymnasium's CartPole-v1 is the reference for ours (tests/python/test_cartpole_gymnasium.py).
if ! "$venv/bin/python" -c "import gymnasium" >/dev/null 2>&1; then
  echo "setup: adding gymnasium to .venv (the CartPole reference)"
  "$venv/bin/pip" install -q --disable-pip-version-check "gymnasium>=1.0"
fi
# TensorBoard: `tensorboard --logdir RUN_DIR` shows a run's scalars, and its reader checks the event files
# reftrain writes (tests/python/test_tensorboard.py, docs/tensorboard.md).
if ! "$venv/bin/python" -c "import tensorboard" >/dev/null 2>&1; then
  echo "setup: adding tensorboard to .venv (the viewer and reader of reftrain's event files)"
  "$venv/bin/pip" install -q --disable-pip-version-check "tensorboard>=2.12"
fi
# cuDNN's fused attention (kernels/cuda/attention_cudnn.cpp) is written against the header-only
# cudnn-frontend C++ API, which PyPI's nvidia-cudnn-frontend ships in site-packages/include (CMake looks
# there). Only with CUDA; --no-deps: we want the headers, not the package's Python stack (CUTLASS DSL).
# libcudnn itself comes with the CUDA install; without it (or these headers) attention uses the
# hand-written kernels.
if $have_nvcc; then
  if ! compgen -G "$venv/lib/python3*/site-packages/include/cudnn_frontend.h" >/dev/null; then
    echo "setup: adding the cudnn-frontend headers to .venv (nvidia-cudnn-frontend, for cuDNN attention)"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "nvidia-cudnn-frontend>=1.32"  # the version this code was written against
  fi
fi

# shellcheck disable=SC2086
# Everything, CUDA included wherever nvcc is (stated, because a build directory that scripts/run.sh
# configured first has it off).
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DREFTRAIN_PYTHON="$venv/bin/python" \
      -DREFTRAIN_CUDA="$($have_nvcc && echo ON || echo OFF)" -DREFTRAIN_BUILD_TESTS=ON -DREFTRAIN_BUILD_BENCH=ON \
      ${REFTRAIN_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"

#!/usr/bin/env bash
# scripts/device_bench.sh — the one command for a GPU machine: build, GPU tests, GPU and CPU benchmarks.
#
# Run from anywhere on the GPU machine (the repo is its working tree); everything it writes goes under
# $OUT (default build-device-bench/, git-ignored), at most 8 files:
#   env.txt          GPU, driver, nvcc, cmake, compiler, python and torch versions
#   build.log        configure + build of reftrain_cuda_tests bench_gpu_step bench_cpu_step bench_tracer reftrain
#   ctest_gpu.log    ctest -L gpu (every CUDA op and the GPU model against their CPU twins)
#   gpu_vs_torch.txt / .json   bench/gpu_vs_torch.py: the 135M step against PyTorch eager / compile
#   cpu_vs_torch.txt bench/cpu_step_vs_torch.py --threads 2: the tiny step against PyTorch eager and torch.compile
#                    (both peers in one run; the tracer rounds need bench_tracer)
#   sanitize.log     compute-sanitizer memcheck (phase sanitize, named only; SANITIZE_FILTER picks the tests)
#   cli.log          `reftrain train` of the addition job on the GPU in bf16 (phase cli, named only)
#   summary.txt      each phase's status and the result lines
#
# Usage:  scripts/device_bench.sh [PHASE...]   phases: build test gpu cpu (default: all four, in order),
#                                              and sanitize (compute-sanitizer memcheck) and cli (the
#                                              addition job from the command line on the GPU), named only
#         scripts/device_bench.sh deps         ON THE DEVELOPMENT MACHINE (with Debian's apt): download
#                                              the build's library packages into .debs/ for `carry`
#         scripts/device_bench.sh pack         ON THE DEVELOPMENT MACHINE, after building build-gpu there
#                                              with the same nvcc as the GPU machine's: copy the built
#                                              binaries, the ctest files and the run-time .debs into
#                                              .devcarry/ (git-ignored, ~25 MB) for `carry`; then run
#                                              `scripts/device_bench.sh test gpu` there, no build phase
# Environment (small defaults keep the whole run under ~9 minutes on 16 cores):
#   BUILD_DIR (build-gpu)  CUDA_ARCH (90)  JOBS (16)  PYTHON (see below)
#   GPU_ROUNDS (2)  GPU_STEPS (20)  GPU_WARMUP (5)  GPU_MODES (eager,compile)  GPU_DETERMINISTIC (both)
#   GPU_COMPILE_MODE (torch.compile's default)
#   CPU_ROUNDS (2: each round runs PyTorch eager and torch.compile, the latter compiling for ~30 s)
#   BUILD_TIMEOUT (330)  TEST_TIMEOUT (150)  GPU_TIMEOUT (300)  CPU_TIMEOUT (300) seconds per phase,
#   each cut so that the whole script ends within TOTAL_BUDGET (540) seconds; a phase with less than
#   20 s left is skipped (and says so in summary.txt)
#   DEBS_DIR (.debs): Debian packages to unpack into a private prefix when the machine lacks a library
#   CUDNN_FRONTEND_INCLUDE: directory with cudnn_frontend.h (else the repo's .venv is searched)
#
# Python: PYTHON if set; else .venv/bin/python when it exists and has PyTorch >= 2; else python3 (the
# GPU machine's python3 holds PyTorch 2.11 with CUDA).
#
# Libraries: the build needs OpenBLAS, nlohmann-json, CLI11, GoogleTest, Google Benchmark,
# SentencePiece and zlib headers (scripts/setup.sh installs them with apt on a development machine).
# A GPU machine without network cannot apt-get them, so: run `scripts/device_bench.sh deps` here
# (downloads ~15 MB of .deb files into .debs/ and adds /.debs/ to .git/info/exclude), then name
# ".debs" in the device call's carry. This script unpacks them with dpkg -x into /tmp/reftrain-sysroot
# (never into /) and points CMake and the loader there whenever .debs/ holds packages.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

BUILD_DIR=${BUILD_DIR:-build-gpu}
OUT=${OUT:-$root/build-device-bench}  # /build*/ is git-ignored
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
DEBS_DIR=${DEBS_DIR:-$root/.debs}
SYSROOT=/tmp/reftrain-sysroot
DEB_PACKAGES=(libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libbenchmark-dev libbenchmark1debian
              libgtest-dev libgmock-dev nlohmann-json3-dev libcli11-dev libsentencepiece-dev libsentencepiece0
              libprotobuf-lite32 zlib1g-dev)

note() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo "$(( $(date +%s) - start_all ))s"; }
# A phase's time limit: its own (argument 1), cut so that the whole script ends within TOTAL_BUDGET;
# prints 0 when less than 20 s would be left for it.
limit() {
  local left=$(( ${TOTAL_BUDGET:-540} - ($(date +%s) - start_all) ))
  local t=$(( $1 < left ? $1 : left ))
  (( t < 20 )) && t=0
  echo $t
}
skip_note() { note "$1: skipped, the ${TOTAL_BUDGET:-540}s budget is spent ($(elapsed) elapsed)"; }

# ---------------------------------------------------------------------------------------------------
# deps: on the development machine only.
if [ "${1:-}" = deps ]; then
  mkdir -p "$DEBS_DIR"
  (cd "$DEBS_DIR" && apt-get download "${DEB_PACKAGES[@]}") || { echo "apt-get download failed"; exit 1; }
  # The cudnn-frontend headers (header-only, ~3 MB) for cuDNN attention, from the venv setup.sh made.
  frontend_src=$(ls -d "$root"/.venv/lib/python3*/site-packages/include 2>/dev/null | head -1)
  if [ -n "$frontend_src" ] && [ -f "$frontend_src/cudnn_frontend.h" ]; then
    rm -rf "$DEBS_DIR/cudnn_frontend_include" && cp -r "$frontend_src" "$DEBS_DIR/cudnn_frontend_include"
  fi
  exclude=$(git rev-parse --git-path info/exclude)
  if [ "$DEBS_DIR" = "$root/.debs" ] && ! grep -qx '/.debs/' "$exclude" 2>/dev/null; then
    mkdir -p "$(dirname "$exclude")" && echo '/.debs/' >> "$exclude"
  fi
  du -sh "$DEBS_DIR"
  echo "now name \".debs\" in the device call's carry"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------
# pack: on the development machine only. The GPU machine's time is short and its build of the CUDA
# kernels takes minutes; a build made here with the same CUDA release runs there unchanged, given the
# run-time libraries (Debian's OpenBLAS with gfortran and gomp, SentencePiece, Google Benchmark) and the paths
# baked into it (the source and build directories, the OpenBLAS file), which the device side recreates.
CARRY_DIR=$root/.devcarry
RUNTIME_PACKAGES=(libopenblas0-openmp libgfortran5 libquadmath0 libgomp1 libsentencepiece0 libbenchmark1debian)
if [ "${1:-}" = pack ]; then
  src_build=$root/${BUILD_DIR}
  for f in reftrain_cuda_tests bench_gpu_step reftrain; do
    [ -x "$src_build/$f" ] || { echo "pack: $src_build/$f is missing: build it first (cmake -DREFTRAIN_CUDA=ON" \
      "-DCMAKE_CUDA_ARCHITECTURES=90 -B ${BUILD_DIR}, then make reftrain_cuda_tests bench_gpu_step reftrain)"; exit 1; }
  done
  rm -rf "$CARRY_DIR" && mkdir -p "$CARRY_DIR/build" "$CARRY_DIR/debs"
  cp "$src_build"/{reftrain_cuda_tests,bench_gpu_step,reftrain,CTestTestfile.cmake} "$CARRY_DIR/build/"
  # Every gtest include file: CTestTestfile.cmake includes the CPU suites' too (each one adds a
  # NOT_BUILT test when its list is absent), and a missing include stops ctest before any test runs.
  cp "$src_build"/*\[*\]_*.cmake "$CARRY_DIR/build/"
  strip --strip-unneeded "$CARRY_DIR/build"/{reftrain_cuda_tests,bench_gpu_step,reftrain}
  # The absolute paths compiled into the binaries and written into the ctest files.
  { echo "source_dir=$root"; echo "build_dir=$src_build"
    echo "openblas=$(grep -o 'REFTRAIN_OPENBLAS_LIBRARY="[^"]*' "$src_build/CMakeFiles/reftrain_kernels.dir/flags.make" | head -1 | sed 's/.*="//')"
    echo "nvcc=$(nvcc --version 2>/dev/null | tail -1)"; } > "$CARRY_DIR/paths.txt"
  (cd "$CARRY_DIR/debs" && apt-get download "${RUNTIME_PACKAGES[@]}") || { echo "apt-get download failed"; exit 1; }
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qx '/.devcarry/' "$exclude" 2>/dev/null || { mkdir -p "$(dirname "$exclude")"; echo '/.devcarry/' >> "$exclude"; }
  cat "$CARRY_DIR/paths.txt"; du -sh "$CARRY_DIR"
  echo "now name \".devcarry\" in the device call's carry and run: scripts/device_bench.sh test gpu"
  exit 0
fi

phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(build test gpu cpu)
want() { local p; for p in "${phases[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
start_all=$(date +%s)
: > "$SUMMARY"

# ---------------------------------------------------------------------------------------------------
# Python with PyTorch >= 2.
pick_python() {
  local candidate
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi  # an explicit choice wins
  for candidate in "$root/.venv/bin/python" python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
    if "$candidate" -c 'import sys, torch; sys.exit(0 if int(torch.__version__.split(".")[0]) >= 2 else 1)' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo python3
}
PY=$(pick_python)

{
  echo "date: $(date -u)"
  echo "host: $(uname -a)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  nvcc --version 2>&1 | tail -2
  cmake --version 2>&1 | head -1
  c++ --version 2>&1 | head -1
  echo "nproc: $(nproc)"
  echo "python: $PY"
  "$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "python", sys.version.split()[0])' 2>&1
} > "$OUT/env.txt"
note "device_bench: python $PY ($(grep -m1 '^torch ' "$OUT/env.txt"))"

# ---------------------------------------------------------------------------------------------------
# Libraries: the system's, or the carried .debs unpacked into $SYSROOT.
cmake_extra=()
missing_headers() {
  local h found missing=()
  for h in cblas.h benchmark/benchmark.h gtest/gtest.h nlohmann/json.hpp CLI/CLI.hpp sentencepiece_processor.h zlib.h; do
    found=$(find /usr/include /usr/local/include -path "*/$h" -print -quit 2>/dev/null)
    [ -n "$found" ] || missing+=("$h")
  done
  echo "${missing[@]}"
}
use_sysroot() {
  local deb arch=x86_64-linux-gnu
  rm -rf "$SYSROOT" && mkdir -p "$SYSROOT"
  for deb in "$DEBS_DIR"/*.deb; do
    if command -v dpkg >/dev/null; then
      dpkg -x "$deb" "$SYSROOT"
    else  # a .deb is an ar archive holding data.tar.*
      (tmp=$(mktemp -d) && cd "$tmp" && ar x "$deb" && tar -xf data.tar.* -C "$SYSROOT" && rm -rf "$tmp")
    fi
  done
  local lib=$SYSROOT/usr/lib/$arch blas_dir=$SYSROOT/usr/lib/$arch/openblas-openmp
  # dpkg -x runs no maintainer scripts: make the links that update-alternatives would.
  [ -e "$blas_dir/libopenblas.so" ] || ln -sf libopenblas.so.0 "$blas_dir/libopenblas.so"
  [ -e "$lib/libopenblas.so" ] || ln -sf openblas-openmp/libopenblas.so "$lib/libopenblas.so"
  [ -e "$lib/libopenblas.so.0" ] || ln -sf openblas-openmp/libopenblas.so.0 "$lib/libopenblas.so.0"
  export LD_LIBRARY_PATH="$lib:$blas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  cmake_extra+=("-DCMAKE_PREFIX_PATH=$SYSROOT/usr"
                "-DCBLAS_INCLUDE_DIR=$SYSROOT/usr/include/$arch/openblas-openmp"
                "-DOPENBLAS_LIBRARY=$blas_dir/libopenblas.so"
                "-DSENTENCEPIECE_INCLUDE_DIR=$SYSROOT/usr/include"
                "-DSENTENCEPIECE_LIBRARY=$(ls "$lib"/libsentencepiece.so | head -1)"
                "-DSENTENCEPIECE_TRAIN_LIBRARY=$(ls "$lib"/libsentencepiece_train.so | head -1)"
                "-DZLIB_INCLUDE_DIR=$SYSROOT/usr/include"
                "-DZLIB_LIBRARY=$lib/libz.so")
}

# A build packed on the development machine (`pack` above): unpack its run-time libraries, and recreate
# the absolute paths compiled into it and written into its ctest files.
use_packed_build() {
  local source_dir build_dir openblas deb arch=x86_64-linux-gnu
  source_dir=$(sed -n 's/^source_dir=//p' "$CARRY_DIR/paths.txt")
  build_dir=$(sed -n 's/^build_dir=//p' "$CARRY_DIR/paths.txt")
  openblas=$(sed -n 's/^openblas=//p' "$CARRY_DIR/paths.txt")
  rm -rf "$SYSROOT" && mkdir -p "$SYSROOT"
  for deb in "$CARRY_DIR"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  export LD_LIBRARY_PATH="$SYSROOT/usr/lib/$arch:$SYSROOT/usr/lib/$arch/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ "$source_dir" != "$root" ] && [ ! -e "$source_dir" ]; then
    mkdir -p "$(dirname "$source_dir")" && ln -s "$root" "$source_dir"
  fi
  [ -e "$source_dir/$(basename "$build_dir")" ] || ln -s "$CARRY_DIR/build" "$root/$(basename "$build_dir")"
  if [ -n "$openblas" ] && [ ! -e "$openblas" ]; then  # a new file in a new directory, nothing replaced
    mkdir -p "$(dirname "$openblas")" && cp "$SYSROOT/usr/lib/$arch/openblas-openmp/$(basename "$openblas")" "$openblas"
  fi
  BUILD_DIR=$(basename "$build_dir")
  note "build: packed on the development machine ($(sed -n 's/^nvcc=//p' "$CARRY_DIR/paths.txt")), run from $build_dir"
  # The CUDA libraries (cudart, cublasLt, nvrtc, cuDNN) come from the GPU machine: the toolkit's
  # directories, else PyTorch's nvidia-* wheels. Each one the loader cannot find is looked for there.
  local binaries=("$root/$BUILD_DIR/reftrain_cuda_tests" "$root/$BUILD_DIR/bench_gpu_step" "$root/$BUILD_DIR/reftrain")
  local name dir found unresolved search_dirs
  search_dirs=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib 2>/dev/null
                "$PY" -c 'import nvidia, os; [print(os.path.join(d, s, "lib")) for d in nvidia.__path__ for s in sorted(os.listdir(d))]' 2>/dev/null)
  for name in $(ldd "${binaries[@]}" 2>/dev/null | awk '/not found/ {print $1}' | sort -u); do
    found=
    for dir in $search_dirs; do
      if [ -e "$dir/$name" ]; then found=$dir; break; fi
    done
    if [ -n "$found" ]; then
      export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$found"
      note "  $name from $found"
    fi
  done
  unresolved=$(ldd "${binaries[@]}" 2>&1 | grep 'not found' | sort -u)
  [ -n "$unresolved" ] && note "libraries not found: $unresolved"
  { echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; ldd "${binaries[0]}"; } >> "$OUT/env.txt" 2>&1
}

missing=$(missing_headers)
if [ -f "$CARRY_DIR/paths.txt" ]; then
  use_packed_build
elif ls "$DEBS_DIR"/*.deb >/dev/null 2>&1; then
  # Carried packages are used whenever they are there, so that every library comes from one place.
  note "libraries: from the carried packages in $DEBS_DIR (headers missing on this machine: ${missing:-none})"
  use_sysroot
elif [ -n "$missing" ]; then
  note "libraries: missing on this machine ($missing) and no $DEBS_DIR/*.deb: the build will fail."
  note "  fix: run 'scripts/device_bench.sh deps' on the development machine and carry .debs"
fi

# cuDNN fused attention: the frontend headers (carried .venv or CUDNN_FRONTEND_INCLUDE) and the cuDNN
# that PyTorch's wheels bring (nvidia-cudnn-cu13: a versioned libcudnn.so.9 only, which find_library
# does not match by the name "cudnn").
for frontend in "${CUDNN_FRONTEND_INCLUDE:-}" "$DEBS_DIR/cudnn_frontend_include" \
                $(ls -d "$root"/.venv/lib/python3*/site-packages/include 2>/dev/null); do
  if [ -n "$frontend" ] && [ -f "$frontend/cudnn_frontend.h" ]; then
    cmake_extra+=("-DREFTRAIN_CUDNN_FRONTEND_INCLUDE=$frontend")
    note "cudnn-frontend headers: $frontend"
    break
  fi
done
if ! [ -e /usr/local/cuda/lib64/libcudnn.so ] && ! [ -e /usr/lib/x86_64-linux-gnu/libcudnn.so ]; then
  # cudnn.h and libcudnn.so.N from PyTorch's nvidia-cudnn wheel: printed as "INCLUDE_DIR LIBRARY".
  read -r cudnn_include cudnn_lib < <("$PY" - <<'PYEOF' 2>/dev/null
import os, re
import nvidia
include = lib = None
for base in nvidia.__path__:
    for d, _, files in os.walk(base):
        if "cudnn.h" in files and include is None:
            include = d
        for f in files:
            if re.fullmatch(r"libcudnn\.so(\.\d+)*", f) and lib is None:
                lib = os.path.join(d, f)
if include and lib:
    print(include, lib)
PYEOF
  )
  if [ -n "${cudnn_lib:-}" ]; then
    cmake_extra+=("-DREFTRAIN_CUDNN_INCLUDE=$cudnn_include" "-DREFTRAIN_CUDNN_LIBRARY=$cudnn_lib")
    export LD_LIBRARY_PATH="$(dirname "$cudnn_lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    note "cuDNN from PyTorch's wheel: $cudnn_lib"
  fi
fi

# ---------------------------------------------------------------------------------------------------
if want build && [ "$(limit "${BUILD_TIMEOUT:-330}")" = 0 ]; then
  skip_note "build"
elif want build; then
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  [ -x /usr/local/cuda/bin/nvcc ] && export PATH=/usr/local/cuda/bin:$PATH
  t0=$(date +%s)
  timeout "$(limit "${BUILD_TIMEOUT:-330}")" bash -c '
    cmake -S . -B "$0" -DCMAKE_BUILD_TYPE=Release -DREFTRAIN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$1" \
          -DREFTRAIN_PYTHON="$2" "${@:3}" &&
    cmake --build "$0" -j"'"${JOBS:-16}"'" --target reftrain_cuda_tests bench_gpu_step bench_cpu_step bench_tracer reftrain
  ' "$BUILD_DIR" "${CUDA_ARCH:-90}" "$PY" "${launcher[@]}" "${cmake_extra[@]}" > "$OUT/build.log" 2>&1
  rc=$?
  note "build: exit $rc in $(( $(date +%s) - t0 ))s (log build.log)"
  [ $rc -ne 0 ] && grep -m 20 -E "error|Error|not found|NOT found" "$OUT/build.log" | tee -a "$SUMMARY"
fi

if want test && [ "$(limit "${TEST_TIMEOUT:-150}")" = 0 ]; then
  skip_note "ctest -L gpu"
elif want test; then
  t0=$(date +%s)
  # -V keeps every test's output: the "[measured]" lines (tests/cuda/cuda_test_util.h) are the figures.
  # The bf16 addition run (1800 steps on the GPU and again on the CPU) goes last, on its own limit.
  timeout "$(limit "${TEST_TIMEOUT:-150}")" ctest --test-dir "$BUILD_DIR" -L gpu -V -j "${CTEST_JOBS:-4}" \
    -E Bf16AdditionReachesTheCpuAccuracy --timeout 120 > "$OUT/ctest_gpu.log" 2>&1
  rc=$?
  note "ctest -L gpu: exit $rc in $(( $(date +%s) - t0 ))s; $(grep -E 'tests passed|tests failed|No tests were found' "$OUT/ctest_gpu.log" | tail -1)"
  grep -E "^\s+[0-9]+ - .*\((Failed|Timeout|SEGFAULT|Exception|Not Run)\)" "$OUT/ctest_gpu.log" | head -30 | tee -a "$SUMMARY"
  if [ "$(limit "${ADDITION_TIMEOUT:-200}")" = 0 ]; then
    skip_note "CudaTrainer.Bf16AdditionReachesTheCpuAccuracy"
  else
    t0=$(date +%s)
    timeout "$(limit "${ADDITION_TIMEOUT:-200}")" "$BUILD_DIR/reftrain_cuda_tests" \
      --gtest_filter=CudaTrainer.Bf16AdditionReachesTheCpuAccuracy >> "$OUT/ctest_gpu.log" 2>&1
    note "bf16 addition GPU vs CPU: exit $? in $(( $(date +%s) - t0 ))s; $(grep -E '^bf16 addition' "$OUT/ctest_gpu.log" | tail -1)"
  fi
fi

if want gpu && [ "$(limit "${GPU_TIMEOUT:-300}")" = 0 ]; then
  skip_note "gpu_vs_torch"
elif want gpu; then
  t0=$(date +%s)
  gpu_limit=$(limit "${GPU_TIMEOUT:-300}")
  PYTHONUNBUFFERED=1 timeout "$gpu_limit" "$PY" bench/gpu_vs_torch.py --build "$BUILD_DIR" --python "$PY" \
    --time-budget $(( gpu_limit - 15 )) --timeout $(( gpu_limit - 15 )) \
    --rounds "${GPU_ROUNDS:-2}" --steps "${GPU_STEPS:-20}" --warmup "${GPU_WARMUP:-5}" --modes "${GPU_MODES:-eager,compile}" \
    --deterministic "${GPU_DETERMINISTIC:-both}" ${GPU_COMPILE_MODE:+--compile-mode "$GPU_COMPILE_MODE"} --json-out "$OUT/gpu_vs_torch.json" > "$OUT/gpu_vs_torch.txt" 2>&1
  rc=$?
  note "gpu_vs_torch: exit $rc in $(( $(date +%s) - t0 ))s"
  grep -E "^  |x  \(target|tracer overhead|ERROR|failed|^135M|^MFU" "$OUT/gpu_vs_torch.txt" | tee -a "$SUMMARY"
fi

if want cpu && [ "$(limit "${CPU_TIMEOUT:-300}")" = 0 ]; then
  skip_note "cpu_vs_torch"
elif want cpu; then
  t0=$(date +%s)
  {
    echo "== bench/cpu_step_vs_torch.py --threads 2 (PyTorch eager and torch.compile)"
    PYTHONUNBUFFERED=1 timeout "$(limit "${CPU_TIMEOUT:-300}")" "$PY" bench/cpu_step_vs_torch.py --build "$BUILD_DIR" --threads 2 \
      --rounds "${CPU_ROUNDS:-2}" --python "$PY"
    echo "exit $?"
  } > "$OUT/cpu_vs_torch.txt" 2>&1
  note "cpu_vs_torch: done in $(( $(date +%s) - t0 ))s"
  # The issue's CPU targets (issue 21), as the driver prints them.
  grep -E "^==|^cpu:|tokens/s  |^  reftrain /|tracer overhead|^exit" "$OUT/cpu_vs_torch.txt" | tee -a "$SUMMARY"
fi

# cli (optional, named only): the main job from the command line on the GPU, as a user starts it:
# `reftrain train --config configs/addition.json` with train.device "cuda" and bf16, evals included.
if want cli && [ "$(limit "${CLI_TIMEOUT:-150}")" = 0 ]; then
  skip_note "cli"
elif want cli; then
  t0=$(date +%s)
  cli_run=/tmp/reftrain-cli-addition
  rm -rf "$cli_run"
  timeout "$(limit "${CLI_TIMEOUT:-150}")" "$BUILD_DIR/reftrain" train --config configs/addition.json \
    --set run_dir="$cli_run" --set 'train.device="cuda"' --set 'train.precision="bf16"' > "$OUT/cli.log" 2>&1
  rc=$?
  note "cli: reftrain train (addition, cuda, bf16): exit $rc in $(( $(date +%s) - t0 ))s; $(grep -iE 'exact match' "$OUT/cli.log" | tail -2 | tr '\n' ' ' | cut -c1-300)"
fi

# sanitize (optional, not in the default phases): compute-sanitizer's memcheck over the element-wise,
# attention and optimizer kernels' tests (out-of-bounds and misaligned accesses, uninitialised device
# memory reads are initcheck's, not run here). memcheck slows kernels ~10-100x: small shapes only.
if want sanitize && [ "$(limit "${SANITIZE_TIMEOUT:-90}")" = 0 ]; then
  skip_note "compute-sanitizer memcheck"
elif want sanitize; then
  t0=$(date +%s)
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  if [ -z "$sanitizer" ]; then
    note "compute-sanitizer: not found"
  else
    timeout "$(limit "${SANITIZE_TIMEOUT:-90}")" "$sanitizer" --tool memcheck --error-exitcode 3 \
      "$BUILD_DIR/reftrain_cuda_tests" --gtest_filter="${SANITIZE_FILTER:-Dtypes/CudaOps.*:Dtypes/CudaAttention.*:CudaOptim.*:CudaMixedGradients.*}" \
      > "$OUT/sanitize.log" 2>&1
    rc=$?
    note "compute-sanitizer memcheck: exit $rc in $(( $(date +%s) - t0 ))s (3 = errors found, 124 = out of time); $(grep -E 'ERROR SUMMARY|tests ran|PASSED|FAILED' "$OUT/sanitize.log" | tr '\n' ' ' | cut -c1-300)"
  fi
fi

note "device_bench: total $(elapsed)"

#!/usr/bin/env bash
# scripts/fuzz.sh — build and run the libFuzzer harnesses of tests/fuzz (one per parser of user files).
#
#   scripts/fuzz.sh build                    configure and build build-fuzz/ (clang, ASan + UBSan, CPU only;
#                                            FUZZ_BUILD_DIR=DIR elsewhere, FUZZ_QUICK=1 at -O0 for CI,
#                                            FUZZ_CMAKE_ARGS for more -D options)
#   scripts/fuzz.sh run SECONDS [PARSER...]  fuzz each parser (default: all) for SECONDS
#
# `run` fuzzes a copy of the committed seeds (build-fuzz/corpus/PARSER; the committed corpus never
# grows) with the parser's dictionary and prints one line per parser: executions, coverage (cov: and
# ft: of libFuzzer's final stats line) and the crash file, if any. Crash, leak, timeout and OOM
# inputs are kept under build-fuzz/crashes/PARSER/; the full log is build-fuzz/logs/PARSER.log.
# Exits 1 when any harness crashed. Jobs: FUZZ_BUILD_JOBS (default 2) compile jobs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
PARSERS=(safetensors model_config run_config chat checkpoint name_map run_metrics)

# The longest input worth trying per parser (-max_len): binary safetensors and state.bin files need
# room for a header and some data; the JSON configs are a few KB; JSONL files hold several lines.
max_len_of() {
    case "$1" in
        safetensors | checkpoint) echo 16384 ;;
        chat | run_metrics) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

build() {
    local start=$SECONDS
    # -O1 -g without NDEBUG: asserts stay on, the stack traces are readable, and the build is quick.
    # FUZZ_QUICK=1 (CI's smoke run): -O0 without debug info, about 95 s from scratch on 2 cores instead of
    # several minutes; slower per execution, which a few seconds per parser do not mind.
    local flags="-O1 -g"
    [[ "${FUZZ_QUICK:-0}" == 1 ]] && flags="-O0 -g0"
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$flags" -DREFTRAIN_FUZZ=ON -DREFTRAIN_CUDA=OFF -DREFTRAIN_MPI=OFF \
        -DREFTRAIN_BUILD_TESTS=OFF -DREFTRAIN_BUILD_BENCH=OFF ${FUZZ_CMAKE_ARGS:-} >/dev/null
    cmake --build "$BUILD" --target fuzz -j "${FUZZ_BUILD_JOBS:-2}"
    echo "fuzz build: $((SECONDS - start)) s"
}

# Runs one harness; prints its summary line; returns 1 when it found a crash.
run_one() {
    local parser=$1 seconds=$2
    local binary="$BUILD/fuzz_$parser" corpus="$BUILD/corpus/$parser" crashes="$BUILD/crashes/$parser"
    local log="$BUILD/logs/$parser.log"
    [[ -x "$binary" ]] || { echo "$binary missing: run scripts/fuzz.sh build" >&2; exit 2; }
    mkdir -p "$corpus" "$crashes" "$BUILD/logs"
    cp -n "$ROOT/tests/fuzz/corpus/$parser/"* "$corpus/" 2>/dev/null || true
    local dict=()
    [[ -f "$ROOT/tests/fuzz/dict/$parser.dict" ]] && dict=("-dict=$ROOT/tests/fuzz/dict/$parser.dict")
    # One process in this shell's directory. libFuzzer exits non-zero on any finding (crash, leak,
    # timeout, OOM): the status decides, because a finding whose input was found before writes no new
    # file into the crash directory. detect_leaks stays on (a leak is a finding).
    local status=0
    (cd "$BUILD" && ASAN_OPTIONS="${ASAN_OPTIONS:-detect_stack_use_after_return=0}" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" OMP_NUM_THREADS=1 \
        "$binary" "$corpus" "${dict[@]}" -max_total_time="$seconds" -max_len="$(max_len_of "$parser")" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$crashes/" >"$log" 2>&1) || status=$?
    local runs cov ft
    runs=$(grep -aoE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -aoE '[0-9]+$' | tail -1 || true)
    if [[ -z "$runs" ]]; then  # a crash ends the run before the final stats: take the last status line
        runs=$(grep -aoE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    fi
    cov=$(grep -aoE 'cov: [0-9]+' "$log" | tail -1 | grep -aoE '[0-9]+' || true)
    ft=$(grep -aoE 'ft: [0-9]+' "$log" | tail -1 | grep -aoE '[0-9]+' || true)
    local new_crashes
    new_crashes=$(find "$crashes" -type f -newer "$log.start" 2>/dev/null | sort | tr '\n' ' ' || true)
    if ((status != 0)); then
        [[ -n "$new_crashes" ]] || new_crashes="$(grep -aoE "Test unit written to [^ ]+" "$log" | tail -1 | cut -d' ' -f5) (exit $status; see $log)"
        printf '%-13s execs %-9s cov %-6s ft %-6s crashes: %s\n' "$parser" "${runs:-?}" "${cov:-?}" "${ft:-?}" "$new_crashes"
        return 1
    fi
    printf '%-13s execs %-9s cov %-6s ft %-6s crashes: 0\n' "$parser" "${runs:-?}" "${cov:-?}" "${ft:-?}"
}

run() {
    local seconds=${1:?usage: scripts/fuzz.sh run SECONDS [PARSER...]}
    shift
    local selected=("$@")
    ((${#selected[@]})) || selected=("${PARSERS[@]}")
    local failed=0 parser
    for parser in "${selected[@]}"; do
        [[ " ${PARSERS[*]} " == *" $parser "* ]] || { echo "unknown parser '$parser' (one of: ${PARSERS[*]})" >&2; exit 2; }
        mkdir -p "$BUILD/logs"
        touch "$BUILD/logs/$parser.log.start"
        run_one "$parser" "$seconds" || failed=1
    done
    return $failed
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    *) echo "usage: scripts/fuzz.sh build | run SECONDS [PARSER...]" >&2; exit 2 ;;
esac

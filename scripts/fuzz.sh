#!/usr/bin/env bash
# scripts/fuzz.sh — build and run the libFuzzer harnesses of tests/fuzz (one per parser of user files).
#
#   scripts/fuzz.sh build                    configure and build build-fuzz/ (clang, ASan + UBSan, CPU only;
#                                            FUZZ_BUILD_DIR=DIR elsewhere, FUZZ_QUICK=1 at -O0 for CI,
#                                            FUZZ_CMAKE_ARGS for more -D options)
#   scripts/fuzz.sh run SECONDS [PARSER...]  fuzz each parser (default: all) for SECONDS
#   scripts/fuzz.sh campaign EXECUTIONS [PARSER...]
#                                            the long campaign: fuzz each parser in chunks of
#                                            FUZZ_CHUNK seconds (default 600), round robin, until each has
#                                            run EXECUTIONS inputs in all; resumable (the counts and the
#                                            grown corpus stay in build-fuzz/), stops at the first crash
#   scripts/fuzz.sh coverage [PARSER...]     line and region coverage of each parser's source files reached
#                                            by its corpus in build-fuzz/ (clang source-based coverage in
#                                            build-fuzz-cov/, FUZZ_COV_DIR elsewhere; needs llvm-cov and
#                                            llvm-profdata, Debian's llvm)
#
# `run` fuzzes a copy of the committed seeds (build-fuzz/corpus/PARSER; the committed corpus never
# grows) with the parser's dictionary and prints one line per parser: executions, coverage (cov: and
# ft: of libFuzzer's final stats line) and the crash file, if any. Crash, leak, timeout and OOM
# inputs are kept under build-fuzz/crashes/PARSER/; the full log is build-fuzz/logs/PARSER.log.
# Exits 1 when any harness crashed. Jobs: FUZZ_BUILD_JOBS (default 2) compile jobs.
# `campaign` appends one line per chunk to build-fuzz/campaign/PARSER.tsv and prints the totals.
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
        LAST_RUNS=${runs:-0} LAST_COV=${cov:-0} LAST_FT=${ft:-0}
        return 1
    fi
    LAST_RUNS=${runs:-0} LAST_COV=${cov:-0} LAST_FT=${ft:-0}
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


# The long campaign: round robin over the parsers, FUZZ_CHUNK seconds at a time, each chunk resuming
# from the corpus the earlier ones grew, until every parser has run the target number of inputs.
# build-fuzz/campaign/PARSER.tsv: date, seconds, executions, cov, ft, exit status of each chunk.
executions_so_far() {
    local file="$BUILD/campaign/$1.tsv"
    [[ -f "$file" ]] || { echo 0; return; }
    awk -F'\t' '{ total += $3 } END { print total + 0 }' "$file"
}

campaign() {
    local target=${1:?usage: scripts/fuzz.sh campaign EXECUTIONS [PARSER...]}
    shift
    local selected=("$@") chunk=${FUZZ_CHUNK:-600} parser done_count status
    ((${#selected[@]})) || selected=("${PARSERS[@]}")
    mkdir -p "$BUILD/campaign" "$BUILD/logs"
    while :; do
        done_count=0
        for parser in "${selected[@]}"; do
            [[ " ${PARSERS[*]} " == *" $parser "* ]] || { echo "unknown parser '$parser' (one of: ${PARSERS[*]})" >&2; exit 2; }
            if (($(executions_so_far "$parser") >= target)); then
                done_count=$((done_count + 1))
                continue
            fi
            touch "$BUILD/logs/$parser.log.start"
            status=0
            run_one "$parser" "$chunk" || status=1
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$chunk" "$LAST_RUNS" "$LAST_COV" "$LAST_FT" "$status" \
                >>"$BUILD/campaign/$parser.tsv"
            if ((status != 0)); then
                echo "campaign stopped: $parser crashed (see above); fix it, then run the campaign again" >&2
                campaign_totals "${selected[@]}"
                return 1
            fi
        done
        ((done_count == ${#selected[@]})) && break
    done
    campaign_totals "${selected[@]}"
}

# One line per parser: executions and fuzzing time in all, chunks, the last chunk's cov and ft.
campaign_totals() {
    local parser file
    echo "campaign totals (build-fuzz/campaign/*.tsv):"
    for parser in "$@"; do
        file="$BUILD/campaign/$parser.tsv"
        [[ -f "$file" ]] || { printf '%-13s no chunks yet\n' "$parser"; continue; }
        awk -F'\t' -v p="$parser" '{ e += $3; s += $2; n += 1; c = $4; f = $5; bad += ($6 != 0) }
            END { printf "%-13s executions %\047d in %.1f h (%d chunks), cov %s ft %s, crashes %d\n", p, e, s / 3600, n, c, f, bad }' "$file"
    done
}

# The source files whose coverage each harness reports: the parser and the JSON reader it goes through.
sources_of() {
    case "$1" in
        safetensors) echo kernels/safetensors.cpp kernels/json_strict.h ;;
        model_config) echo model/config.cpp kernels/json_strict.h ;;
        run_config) echo train/run_config.cpp train/config_fields.h kernels/json_strict.h ;;
        chat) echo data/chat.cpp kernels/json_strict.h ;;
        checkpoint) echo train/checkpoint.cpp kernels/json_strict.h ;;
        name_map) echo debug/name_map.cpp kernels/json_strict.h ;;
        run_metrics) echo debug/run_diff.cpp debug/report.cpp debug/chart.cpp kernels/json_strict.h ;;
    esac
}

# Source-based coverage of the corpus the fuzzing grew (build-fuzz/corpus/PARSER): each input is run once
# by a harness built with -fprofile-instr-generate -fcoverage-mapping instead of the sanitizers. A file's
# figure counts all of it, also functions no parser reaches (a checkpoint's writer, say).
coverage() {
    local selected=("$@") cov_build="${FUZZ_COV_DIR:-$ROOT/build-fuzz-cov}" parser files f
    ((${#selected[@]})) || selected=("${PARSERS[@]}")
    command -v llvm-cov >/dev/null && command -v llvm-profdata >/dev/null ||
        { echo "coverage needs llvm-cov and llvm-profdata (Debian: apt-get install llvm)" >&2; exit 2; }
    cmake -S "$ROOT" -B "$cov_build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DREFTRAIN_FUZZ=ON -DREFTRAIN_CUDA=OFF -DREFTRAIN_MPI=OFF \
        -DREFTRAIN_BUILD_TESTS=OFF -DREFTRAIN_BUILD_BENCH=OFF \
        "-DREFTRAIN_FUZZ_FLAGS=-fprofile-instr-generate;-fcoverage-mapping" >/dev/null
    cmake --build "$cov_build" --target fuzz -j "${FUZZ_BUILD_JOBS:-2}" >/dev/null
    for parser in "${selected[@]}"; do
        local corpus="$BUILD/corpus/$parser" profile_dir="$cov_build/profiles/$parser"
        [[ -d "$corpus" ]] || corpus="$ROOT/tests/fuzz/corpus/$parser"
        rm -rf "$profile_dir" && mkdir -p "$profile_dir"
        # -runs=0: every corpus input once, nothing mutated. Leak checks are the sanitizer build's business.
        (cd "$cov_build" && LLVM_PROFILE_FILE="$profile_dir/%p.profraw" OMP_NUM_THREADS=1 \
            "./fuzz_$parser" -runs=0 -detect_leaks=0 "$corpus" >"$profile_dir/run.log" 2>&1) || true
        llvm-profdata merge -sparse "$profile_dir"/*.profraw -o "$profile_dir/merged.profdata"
        files=()
        for f in $(sources_of "$parser"); do files+=("$ROOT/$f"); done
        echo "== $parser: $(ls "$corpus" | wc -l) corpus inputs from $corpus"
        llvm-cov report "$cov_build/fuzz_$parser" -instr-profile="$profile_dir/merged.profdata" "${files[@]}" |
            awk 'NR == 1 || /^-/ || /\.(cpp|h) / || /^TOTAL/'
    done
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    campaign) shift; campaign "$@" ;;
    coverage) shift; coverage "$@" ;;
    *) echo "usage: scripts/fuzz.sh build | run SECONDS [PARSER...] | campaign EXECUTIONS [PARSER...] | coverage [PARSER...]" >&2
       exit 2 ;;
esac

# cmake/fuzz.cmake — the libFuzzer harnesses of tests/fuzz (option REFTRAIN_FUZZ; scripts/fuzz.sh builds
# and runs them). Included at the END of the main CMakeLists.txt, once every reftrain target exists.
#
# A fuzzer only finds what it can see: the parsers live in the reftrain libraries, so those must be
# built with the same sanitizers as the harnesses (AddressSanitizer for out-of-bounds reads and writes,
# UndefinedBehaviorSanitizer for overflow and bad casts, made fatal so libFuzzer keeps the input) and
# with libFuzzer's coverage instrumentation (-fsanitize=fuzzer-no-link: coverage without libFuzzer's
# main). The loop below adds them to every target defined so far; only the harness executables link
# libFuzzer itself (-fsanitize=fuzzer), which supplies main().

if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "REFTRAIN_FUZZ=ON needs clang (libFuzzer is part of clang), but the C++ compiler is "
                      "${CMAKE_CXX_COMPILER_ID}: configure a fresh build directory with -DCMAKE_CXX_COMPILER=clang++ "
                      "(scripts/fuzz.sh build does)")
endif()
if(REFTRAIN_CUDA)
  message(FATAL_ERROR "REFTRAIN_FUZZ=ON builds the CPU-only libraries: configure with -DREFTRAIN_CUDA=OFF")
endif()

# What the libraries and harnesses are built with besides libFuzzer's coverage hooks: the sanitizers
# (default), or, for `scripts/fuzz.sh coverage`, clang's source-based coverage instead
# (-DREFTRAIN_FUZZ_FLAGS="-fprofile-instr-generate;-fcoverage-mapping").
set(REFTRAIN_FUZZ_FLAGS "-fsanitize=address,undefined;-fno-sanitize-recover=undefined;-fno-omit-frame-pointer;-g"
    CACHE STRING "compile and link flags of the fuzz build besides -fsanitize=fuzzer(-no-link)")
set(REFTRAIN_SANITIZE ${REFTRAIN_FUZZ_FLAGS})

get_property(reftrain_targets DIRECTORY ${CMAKE_SOURCE_DIR} PROPERTY BUILDSYSTEM_TARGETS)
foreach(target ${reftrain_targets})
  get_target_property(target_type ${target} TYPE)
  if(target_type STREQUAL "INTERFACE_LIBRARY")
    continue()  # compiles nothing
  endif()
  target_compile_options(${target} PRIVATE ${REFTRAIN_SANITIZE} -fsanitize=fuzzer-no-link)
  target_link_options(${target} PRIVATE ${REFTRAIN_SANITIZE})
endforeach()

# One executable per parser of user files: fuzz_<parser> from tests/fuzz/fuzz_<parser>.cpp, seeds in
# tests/fuzz/corpus/<parser>, dictionary tests/fuzz/dict/<parser>.dict. `cmake --build . --target fuzz`
# builds them all (and, through them, the libraries they need, nothing else).
set(REFTRAIN_FUZZ_PARSERS safetensors model_config run_config chat checkpoint name_map run_metrics)
add_custom_target(fuzz)
foreach(parser ${REFTRAIN_FUZZ_PARSERS})
  add_executable(fuzz_${parser} ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_${parser}.cpp)
  target_compile_options(fuzz_${parser} PRIVATE ${REFTRAIN_WARNINGS} ${REFTRAIN_SANITIZE} -fsanitize=fuzzer)
  target_link_options(fuzz_${parser} PRIVATE ${REFTRAIN_SANITIZE} -fsanitize=fuzzer)
  # reftrain_train brings model, data and kernels; name maps and metrics live in reftrain_debug.
  target_link_libraries(fuzz_${parser} PRIVATE reftrain_train reftrain_debug)
  add_dependencies(fuzz fuzz_${parser})
endforeach()

// kernels/cpu/blas.cpp — loads OpenBLAS with the core this CPU's flags call for (see blas.h for why).
//
// The library path is the one CMake found, fixed at configure time (REFTRAIN_OPENBLAS_LIBRARY, with
// symlinks resolved so that switching Debian's alternatives later cannot change the kernels under a
// built binary). Measured with Debian 12's OpenBLAS 0.3.21, sgemm 1024^3 on 2 threads:
//   2-core Intel Xeon (AVX-512) whose model number 0.3.21 does not know: Prescott 34 GFLOP/s,
//     SkylakeX 216-230 GFLOP/s (issue 12's report);
//   2-core AMD EPYC (Zen 4, AVX-512 + BF16), which 0.3.21 knows: see docs/benchmarks.md.
#include "kernels/cpu/blas.h"

#include <cblas.h>
#include <dlfcn.h>
#include <omp.h>

#include <cstdlib>
#include <mutex>
#include <sstream>

#include "kernels/error.h"

#ifndef REFTRAIN_OPENBLAS_LIBRARY
#define REFTRAIN_OPENBLAS_LIBRARY "libopenblas.so.0"
#endif

namespace reftrain::cpu {

namespace {

// The entry points we use, typed from OpenBLAS's own cblas.h so a signature change fails to compile.
struct OpenBlas {
    decltype(&cblas_sgemm) sgemm = nullptr;
    decltype(&cblas_dgemm) dgemm = nullptr;
    decltype(&openblas_get_config) get_config = nullptr;
    decltype(&openblas_get_corename) get_corename = nullptr;
    decltype(&openblas_get_parallel) get_parallel = nullptr;
    decltype(&openblas_set_num_threads) set_num_threads = nullptr;
    decltype(&openblas_get_num_threads) get_num_threads = nullptr;
    BlasInfo info;
};

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    return s;
}

template <class Fn>
void resolve(void* handle, const char* symbol, Fn* out, const char* path) {
    *out = reinterpret_cast<Fn>(dlsym(handle, symbol));
    check(*out != nullptr, path, ": is not the OpenBLAS reftrain needs: symbol '", symbol, "' is missing (",
          dlerror(), "); install libopenblas-openmp-dev (scripts/setup.sh)");
}

std::string cpu_feature_list() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    std::ostringstream out;
    const char* names[] = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512bf16", "avx2", "fma", "avx"};
    const bool has[] = {
        __builtin_cpu_supports("avx512f") != 0,  __builtin_cpu_supports("avx512cd") != 0,
        __builtin_cpu_supports("avx512bw") != 0, __builtin_cpu_supports("avx512dq") != 0,
        __builtin_cpu_supports("avx512vl") != 0, __builtin_cpu_supports("avx512bf16") != 0,
        __builtin_cpu_supports("avx2") != 0,     __builtin_cpu_supports("fma") != 0,
        __builtin_cpu_supports("avx") != 0};
    bool first = true;
    for (size_t i = 0; i < sizeof(has) / sizeof(has[0]); ++i) {
        if (!has[i]) continue;
        out << (first ? "" : " ") << names[i];
        first = false;
    }
    return first ? "none of avx/avx2/avx512" : out.str();
#else
    return "not x86";
#endif
}

OpenBlas load() {
    OpenBlas b;
    BlasInfo& info = b.info;
    info.library_path = REFTRAIN_OPENBLAS_LIBRARY;
    info.cpu_features = cpu_feature_list();

    // The user's OPENBLAS_CORETYPE wins; otherwise ask for the core the CPU's flags call for, and
    // take the variable back out afterwards so child processes see the environment they were given.
    const char* from_user = std::getenv("OPENBLAS_CORETYPE");
    bool set_here = false;
    if (from_user != nullptr && *from_user != '\0') {
        info.requested = from_user;
        info.chosen_by = "the environment";
    } else {
        info.requested = core_for_cpu_flags();
        if (!info.requested.empty()) {
            setenv("OPENBLAS_CORETYPE", info.requested.c_str(), 1);
            set_here = true;
            info.chosen_by = "reftrain";
        } else {
            info.chosen_by = "OpenBLAS";
        }
    }
    void* handle = dlopen(info.library_path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (set_here) unsetenv("OPENBLAS_CORETYPE");
    check(handle != nullptr, "cannot load OpenBLAS from ", info.library_path, ": ", dlerror(),
          " (install libopenblas-openmp-dev: scripts/setup.sh, then rebuild)");

    const char* path = info.library_path.c_str();
    resolve(handle, "cblas_sgemm", &b.sgemm, path);
    resolve(handle, "cblas_dgemm", &b.dgemm, path);
    resolve(handle, "openblas_get_config", &b.get_config, path);
    resolve(handle, "openblas_get_corename", &b.get_corename, path);
    resolve(handle, "openblas_get_parallel", &b.get_parallel, path);
    resolve(handle, "openblas_set_num_threads", &b.set_num_threads, path);
    resolve(handle, "openblas_get_num_threads", &b.get_num_threads, path);

    info.config = b.get_config();
    info.core = b.get_corename();
    // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ...": the version is the second word.
    std::istringstream words(info.config);
    std::string name;
    words >> name >> info.version;
    const int parallel = b.get_parallel();
    info.threading = parallel == 2 ? "OpenMP" : parallel == 1 ? "pthreads" : "sequential";
    return b;
}

const OpenBlas& openblas() {
    static const OpenBlas b = load();  // C++11: initialised once, thread-safe
    return b;
}

CBLAS_TRANSPOSE op(bool transpose) { return transpose ? CblasTrans : CblasNoTrans; }

}  // namespace

std::string core_for_cpu_flags() {
#if defined(__x86_64__)
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512vl");
    // Cooperlake = SkylakeX's float kernels plus the bf16 ones; both are in OpenBLAS >= 0.3.10.
    if (avx512 && __builtin_cpu_supports("avx512bf16")) return "Cooperlake";
    if (avx512) return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    if (__builtin_cpu_supports("avx")) return "Sandybridge";
#endif
    return "";  // older x86 or another architecture: OpenBLAS's own detection
}

const BlasInfo& blas_info() { return openblas().info; }

std::string blas_summary() {
    const BlasInfo& i = blas_info();
    std::ostringstream out;
    out << "OpenBLAS " << i.version << " (" << i.threading << "), core " << i.core;
    if (i.chosen_by == "the environment") {
        out << " (OPENBLAS_CORETYPE=" << i.requested << " from the environment)";
    } else if (i.chosen_by == "reftrain") {
        out << " (chosen from the CPU flags: " << i.cpu_features << ")";
    } else {
        out << " (OpenBLAS's own detection; CPU flags: " << i.cpu_features << ")";
    }
    if (!i.requested.empty() && lower(i.requested) != lower(i.core)) {
        out << " WARNING: asked for " << i.requested
            << ", which this OpenBLAS does not provide (not a DYNAMIC_ARCH build, or an unknown core name)";
    }
    out << ", " << blas_threads() << " threads";
    return out.str();
}

int blas_threads() {
    // The OpenMP flavour sizes each call's team from omp_get_max_threads(), like our own loops.
    return blas_info().threading == "OpenMP" ? omp_get_max_threads() : openblas().get_num_threads();
}

void set_blas_threads(int threads) { openblas().set_num_threads(threads); }

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    openblas().sgemm(CblasRowMajor, op(trans_a), op(trans_b), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
    openblas().dgemm(CblasRowMajor, op(trans_a), op(trans_b), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace reftrain::cpu

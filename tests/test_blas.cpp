// tests/test_blas.cpp — OpenBLAS is loaded with the core the CPU's flags call for (kernels/cpu/blas.h).
//
// The expected core is derived here from /proc/cpuinfo (Linux's flag names), independently of the
// __builtin_cpu_supports calls blas.cpp makes. The override by the user's OPENBLAS_CORETYPE and the
// crippled-kernel case are checked end to end in tests/python/test_blas_core.py, because the core is
// chosen once per process.
#include <gtest/gtest.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/random.h"

namespace reftrain {
namespace {

std::set<std::string> linux_cpu_flags() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("flags", 0) != 0) continue;
        std::istringstream words(line.substr(line.find(':') + 1));
        std::set<std::string> flags;
        for (std::string w; words >> w;) flags.insert(w);
        return flags;
    }
    return {};
}

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

TEST(Blas, CoreFollowsTheCpuFlagsNotTheModelNumber) {
#if !defined(__x86_64__)
    GTEST_SKIP() << "the core is chosen from x86 flags only";
#else
    const std::set<std::string> f = linux_cpu_flags();
    if (f.empty()) GTEST_SKIP() << "no /proc/cpuinfo";
    auto has = [&](std::initializer_list<const char*> names) {
        for (const char* n : names) {
            if (!f.count(n)) return false;
        }
        return true;
    };
    std::string want;
    if (has({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"})) {
        want = "Cooperlake";
    } else if (has({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})) {
        want = "SkylakeX";
    } else if (has({"avx2", "fma"})) {
        want = "Haswell";
    } else if (has({"avx"})) {
        want = "Sandybridge";
    }
    EXPECT_EQ(cpu::core_for_cpu_flags(), want);
#endif
}

TEST(Blas, TheLoadedLibraryRunsTheRequestedCoreAndSaysSo) {
    const bool user_set = std::getenv("OPENBLAS_CORETYPE") != nullptr;
    const cpu::BlasInfo& info = cpu::blas_info();
    EXPECT_EQ(info.version.empty(), false) << info.config;
    EXPECT_NE(info.config.find("OpenBLAS"), std::string::npos) << info.config;
    if (!user_set && !cpu::core_for_cpu_flags().empty()) {
        EXPECT_EQ(info.chosen_by, "reftrain");
        EXPECT_EQ(lower(info.core), lower(cpu::core_for_cpu_flags())) << "OpenBLAS ignored OPENBLAS_CORETYPE";
        // The variable was set for the library's constructor only: children see the caller's environment.
        EXPECT_EQ(std::getenv("OPENBLAS_CORETYPE"), nullptr);
    }
    const std::string line = cpu::blas_summary();
    for (const std::string& part : std::vector<std::string>{"OpenBLAS " + info.version, "core " + info.core, " threads"}) {
        EXPECT_NE(line.find(part), std::string::npos) << line;
    }
    EXPECT_EQ(line.find("WARNING"), std::string::npos) << line;
}

// The loaded sgemm and dgemm compute C = alpha op(A) op(B) + beta C with row strides, checked
// against plain loops in fp64 on every transpose combination.
TEST(Blas, GemmMatchesPlainLoops) {
    const int64_t M = 37, N = 29, K = 53;
    Rng rng(7);
    for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
            const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 5;
            std::vector<double> A((ta ? K : M) * lda), B((tb ? N : K) * ldb), C(M * ldc), C0;
            for (auto& x : A) x = rng.normal();
            for (auto& x : B) x = rng.normal();
            for (auto& x : C) x = rng.normal();
            C0 = C;
            std::vector<float> Af(A.begin(), A.end()), Bf(B.begin(), B.end()), Cf(C.begin(), C.end());
            cpu::gemm(ta, tb, M, N, K, 0.5, A.data(), lda, B.data(), ldb, 2.0, C.data(), ldc);
            cpu::gemm(ta, tb, M, N, K, 0.5f, Af.data(), lda, Bf.data(), ldb, 2.0f, Cf.data(), ldc);
            for (int64_t i = 0; i < M; ++i) {
                for (int64_t j = 0; j < N; ++j) {
                    double want = 2.0 * C0[i * ldc + j];
                    for (int64_t k = 0; k < K; ++k) {
                        want += 0.5 * (ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
                    }
                    ASSERT_NEAR(C[i * ldc + j], want, 1e-12 * K) << "dgemm ta=" << ta << " tb=" << tb;
                    ASSERT_NEAR(Cf[i * ldc + j], want, 2e-5 * K) << "sgemm ta=" << ta << " tb=" << tb;
                }
            }
        }
    }
}

}  // namespace
}  // namespace reftrain

// bench/bench_cpu_step.cpp — one training step (forward + backward + AdamW) of the tiny config on
// the CPU, and the machine's sgemm rate as the yardstick. Run through bench/cpu_step_vs_torch.py,
// which times the PyTorch mirror in the same run and prints the ratios; alone it prints Google
// Benchmark's table (or JSON with --benchmark_format=json).
//
// Model FLOPs per step (the "6N" rule, counted exactly for this architecture): each matmul of an
// (M, K) by (K, N) costs 2MKN forward and twice that backward; attention scores and the weighted sum
// add 2 * 2 * B * Hq * (T(T+1)/2) * D forward (causal half) and twice that backward.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/random.h"
#include "model/transformer.h"
#include "bench/tiny_step.h"
#include "train/adamw.h"

using namespace reftrain;

namespace {

double step_flops(const ModelConfig& c, int64_t B, int64_t T) {
    const double N = static_cast<double>(B * T), d = c.hidden_size, F = c.intermediate_size;
    const double per_layer_matmul_params = d * c.q_dim() + 2 * d * c.kv_dim() + c.q_dim() * d + 3 * d * F;
    const double matmul_params = c.num_hidden_layers * per_layer_matmul_params + d * c.vocab_size;
    const double attention = 2.0 * 2.0 * B * c.num_attention_heads * (T * (T + 1) / 2.0) * c.head_dim * c.num_hidden_layers;
    return 3.0 * (2.0 * N * matmul_params + attention);
}

void BM_TinyTrainingStep(benchmark::State& state) {
    const int threads = static_cast<int>(state.range(0));
    omp_set_num_threads(threads);
    cpu::set_blas_threads(threads);
    TinyStep tiny;
    const int64_t B = TinyStep::B, T = TinyStep::T;
    for (auto _ : state) benchmark::DoNotOptimize(tiny.step());
    state.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(B * T), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["flops"] = benchmark::Counter(step_flops(tiny.config, B, T), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_TinyTrainingStep)->Arg(2)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);

// The machine's sgemm rate at a size large enough to be compute-bound: what "100%" means.
void BM_Sgemm(benchmark::State& state) {
    const int threads = static_cast<int>(state.range(0));
    const int64_t n = state.range(1);
    omp_set_num_threads(threads);
    cpu::set_blas_threads(threads);
    std::vector<float> a(n * n), b(n * n), c(n * n);
    Rng rng(3);
    for (auto& x : a) x = static_cast<float>(rng.normal());
    for (auto& x : b) x = static_cast<float>(rng.normal());
    for (auto _ : state) {
        cpu::gemm(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
        benchmark::DoNotOptimize(c.data());
    }
    state.counters["flops"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Sgemm)->Args({2, 1024})->Args({1, 1024})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);

}  // namespace

// Google Benchmark's main, plus the BLAS in use in the context block (console and JSON alike).
int main(int argc, char** argv) {
    benchmark::AddCustomContext("blas", cpu::blas_summary());
    benchmark::AddCustomContext("blas_core", cpu::blas_info().core);
    benchmark::AddCustomContext("blas_library", cpu::blas_info().library_path);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}

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

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <chrono>

#include "debug/op_clock.h"
#include "debug/tracer.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/vec_math.h"
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

// --op_table=STEPS: instead of the benchmarks, where one step's time goes. Runs 3 untimed steps, then
// STEPS steps with an OpClock on the model (debug/op_clock.h) and the optimizer and zero_grad timed
// beside it, and prints the per-step table, largest first. Threads: OMP_NUM_THREADS. With
// --op_table_clock=cpu the table counts the main thread's CPU time (meaningful at 1 thread only: on a
// busy machine it leaves out the time spent waiting for a core).
// --op_table_tracer: with the NaN tracer on (default options), as bench/bench_tracer.cpp runs it; its
// work after each op is the "tracer" row, the attn_logits_max diagnostic its own op rows.
int print_op_table(int64_t steps, OpClock::Clock kind, bool traced) {
    const int threads = omp_get_max_threads();
    omp_set_num_threads(threads);
    cpu::set_blas_threads(threads);
    TinyStep tiny;
    std::ostringstream log;
    FrameTracer::Options options;
    options.log = &log;
    FrameTracer tracer(options);
    for (int i = 0; i < 3; ++i) tiny.step();
    if (traced) tiny.model.set_tracer(&tracer);
    OpClock clock(kind);
    tiny.model.set_op_clock(&clock);
    const Tensor ids_t(tiny.ids.data(), DType::I64, {TinyStep::B, TinyStep::T}, "input_ids");
    const Tensor targets_t(tiny.targets.data(), DType::I64, {TinyStep::B, TinyStep::T}, "targets");
    const auto begin = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) {
        if (traced) tracer.begin_step(i);
        clock.start();
        tiny.model.zero_grad();
        clock.lap("zero_grad (parameter gradients)");
        tiny.model.forward(ids_t, targets_t);
        tiny.model.backward();
        clock.start();
        tiny.optimizer.step();
        clock.lap("adamw_step");
        if (traced) {
            tracer.record("adamw.update", tiny.model.params().tensors());
            tracer.end_step();
            clock.lap("tracer");
        }
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    std::printf("per-op %s time of the tiny training step (B=%lld, T=%lld, fp32), tracer %s, %d threads, mean of %lld steps\n%s; exp: %s\n",
                kind == OpClock::Clock::wall ? "wall" : "CPU (main thread)", static_cast<long long>(TinyStep::B),
                static_cast<long long>(TinyStep::T), traced ? "on" : "off", threads, static_cast<long long>(steps),
                cpu::blas_summary().c_str(), cpu::exp_kernel_name());
    std::printf("%s", clock.table(steps).c_str());
    std::printf("  step wall time %.3f ms (the rows above are %.1f%% of it)\n", 1e3 * wall / steps,
                100.0 * clock.total_seconds() / wall);
    return 0;
}

// Google Benchmark's main, plus the BLAS in use in the context block (console and JSON alike).
int main(int argc, char** argv) {
    int64_t op_table_steps = 0;
    OpClock::Clock kind = OpClock::Clock::wall;
    bool traced = false;
    for (int i = 1; i < argc; ++i) {
        if (std::strncmp(argv[i], "--op_table=", 11) == 0) op_table_steps = std::atoll(argv[i] + 11);
        if (std::strcmp(argv[i], "--op_table_clock=cpu") == 0) kind = OpClock::Clock::thread_cpu;
        if (std::strcmp(argv[i], "--op_table_tracer") == 0) traced = true;
    }
    if (op_table_steps > 0) return print_op_table(op_table_steps, kind, traced);
    benchmark::AddCustomContext("blas", cpu::blas_summary());
    benchmark::AddCustomContext("blas_core", cpu::blas_info().core);
    benchmark::AddCustomContext("blas_library", cpu::blas_info().library_path);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}

// bench/bench_tracer.cpp — what the frame-buffered NaN tracer costs: one training step (forward +
// backward + AdamW + recording the updated parameters) of the tiny config, the same setup as
// bench/bench_cpu_step.cpp, with the tracer off and on. The target (DESIGN.md: cheap enough to leave
// on) is an overhead under 10% of the step. After the table it prints the ratio of the two runs.
//
// With the tracer on, every activation, activation gradient and parameter gradient gets one
// statistics pass (about 40M elements per step here), and attn_logits_max one dot product per row and
// head (its argmax comes from the saved softmax).
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdio>
#include <map>
#include <sstream>
#include <vector>

#include "debug/tracer.h"
#include "kernels/cpu/blas.h"
#include "kernels/random.h"
#include "model/transformer.h"
#include "bench/tiny_step.h"
#include "train/adamw.h"

using namespace reftrain;

namespace {

std::map<std::pair<int, int>, double> g_seconds_per_step;  // (threads, tracer on) -> ms/step, by the reporter

// Arguments: threads, tracer (0 = off, 1 = on).
void BM_TinyStepTracer(benchmark::State& state) {
    const int threads = static_cast<int>(state.range(0));
    const bool traced = state.range(1) != 0;
    omp_set_num_threads(threads);
    cpu::set_blas_threads(threads);
    const int64_t B = TinyStep::B, T = TinyStep::T;
    TinyStep tiny;
    std::ostringstream log;
    FrameTracer::Options options;
    options.log = &log;
    FrameTracer tracer(options);
    if (traced) tiny.model.set_tracer(&tracer);
    int64_t step = 0;
    for (auto _ : state) {
        if (traced) tracer.begin_step(step);
        benchmark::DoNotOptimize(tiny.step());
        if (traced) {
            tracer.record("adamw.update", tiny.model.params().tensors());
            tracer.end_step();
        }
        ++step;
    }
    if (tracer.trips() != 0) state.SkipWithError("the tracer tripped on a healthy model");
    state.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(B * T), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["seconds_per_step"] = benchmark::Counter(static_cast<double>(state.iterations()),
                                                            benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_TinyStepTracer)
    ->ArgsProduct({{2, 1}, {0, 1}})
    ->ArgNames({"threads", "tracer"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

// Collects the real time per iteration of each run so the overhead can be printed after the table.
class RatioReporter : public benchmark::ConsoleReporter {
public:
    void ReportRuns(const std::vector<Run>& runs) override {
        for (const Run& run : runs) {
            // One run, or with --benchmark_repetitions the median of them (its aggregate comes last).
            if (run.error_occurred) continue;
            if (run.run_type == Run::RT_Aggregate && run.aggregate_name != "median") continue;
            int threads = 0, tracer = 0;
            if (std::sscanf(run.benchmark_name().c_str(), "BM_TinyStepTracer/threads:%d/tracer:%d", &threads, &tracer) == 2) {
                g_seconds_per_step[{threads, tracer}] = run.GetAdjustedRealTime();  // in the run's unit (ms)
            }
        }
        ConsoleReporter::ReportRuns(runs);
    }
};

}  // namespace

int main(int argc, char** argv) {
    benchmark::AddCustomContext("blas", cpu::blas_summary());
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    RatioReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    for (int threads : {1, 2}) {
        auto off = g_seconds_per_step.find({threads, 0}), on = g_seconds_per_step.find({threads, 1});
        if (off == g_seconds_per_step.end() || on == g_seconds_per_step.end() || off->second <= 0) continue;
        std::printf("tracer overhead, %d thread%s: %.2f ms -> %.2f ms per step, ratio %.3f (%+.1f%%; target < +10%%)\n",
                    threads, threads == 1 ? "" : "s", off->second, on->second, on->second / off->second,
                    100.0 * (on->second / off->second - 1.0));
    }
    benchmark::Shutdown();
    return 0;
}

// bench/bench_gpu_step.cpp — one training step of the 135M config on the GPU: forward, backward,
// global-norm clipping (1.0) and AdamW, through cuda_train_step (train/cuda_step.h), with the NaN
// tracer off and on. Run through bench/gpu_vs_torch.py, which times the PyTorch peer
// (bench/torch_gpu_step.py, eager and torch.compile) in the same run and prints the ratios; alone it
// prints Google Benchmark's table (or JSON with --benchmark_format=json).
//
// Config: V=32768, d=768, 12 layers, 12 query / 12 KV heads, head_dim 64, ffn 2048, QK-norm, untied
// lm_head (model/config.h's default), T=1024, B=16: 135,287,040 parameters, 16,384 tokens per step.
// All targets are supervised (random tokens from a fixed seed).
//
// Benchmarks (names are what --benchmark_filter matches):
//   BM_GpuTrainStep/bf16/tracer:{0,1}/deterministic:{1,0}   native bf16 (CudaModelOptions)
//   BM_GpuTrainStep/f32/tracer:0/deterministic:1            the fp32 twin, for reference
// deterministic:1 is the trainer's default (cuda::deterministic(): no split-K in cuBLASLt, cuDNN's
// deterministic attention backward); deterministic:0 lets the libraries choose.
//
// Timing: every step is bracketed by two CUDA events on the model's stream and synchronised at its end
// (the step reads the loss and the gradient norm back anyway); the event interval includes host gaps,
// so it is the step's wall time. --warmup steps first (default 3), then --steps timed steps (default
// 20); the counters use the MEDIAN step (Google Benchmark's own time column is the mean).
//
// Counters: tokens_per_s = B*T / median step; step_ms_median, step_ms_mean; mfu = tokens_per_s *
// flops_per_token / peak with
//   flops_per_token = 6 * N_matmul + 12 * L * Hq * head_dim * T      (PaLM / nanoGPT convention)
//   N_matmul = every layer's projections + the output matrix (V*d once, tied or not); the embedding
//              gather and the norm gains are not matmuls. No causal discount on attention.
//   peak = --peak_tflops (default 989.4: H100 SXM dense BF16; the same figure for H200).
// peak_device_bytes: device memory this benchmark made the process hold, measured with cudaMemGetInfo
// after the CUDA context exists (baseline) and after every step (so cudaMalloc'ed arenas and library
// workspaces count), plus the high-water mark of the device's current stream-ordered memory pool
// (cudaMallocAsync scratch freed within a step is invisible to cudaMemGetInfo sampled between steps).
// It is an upper bound on what torch's max_memory_allocated would report for the same tensors, and
// does not include the CUDA context. arena_bytes: the four model arenas plus the two AdamW moments.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "debug/tracer.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/device.h"
#include "kernels/random.h"
#include "model/transformer_cuda.h"
#include "train/cuda_step.h"

using namespace reftrain;

namespace {

constexpr double kH100Bf16DenseTflops = 989.4;  // NVIDIA H100 SXM datasheet, BF16 without sparsity
constexpr int64_t kBatch = 16, kSeqLen = 1024;

struct BenchOptions {
    int warmup = 3;
    int steps = 20;
    double peak_tflops = kH100Bf16DenseTflops;
};
BenchOptions g_options;

ModelConfig config_135m() {
    ModelConfig c;
    c.vocab_size = 32768;
    c.hidden_size = 768;
    c.intermediate_size = 2048;
    c.num_hidden_layers = 12;
    c.num_attention_heads = 12;
    c.num_key_value_heads = 12;
    c.head_dim = 64;
    c.max_position_embeddings = kSeqLen;
    c.qk_norm = true;
    c.tie_word_embeddings = false;
    c.validate("bench_gpu_step 135M config");
    return c;
}

// N in 6N: parameters that enter a matmul (see the top of the file).
double matmul_parameters(const ModelConfig& c) {
    const double d = static_cast<double>(c.hidden_size);
    const double per_layer = d * c.q_dim() + 2 * d * c.kv_dim() + c.q_dim() * d + 3 * d * c.intermediate_size;
    return c.num_hidden_layers * per_layer + static_cast<double>(c.vocab_size) * d;
}

double flops_per_token(const ModelConfig& c, int64_t T) {
    const double attention = 12.0 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * static_cast<double>(T);
    return 6.0 * matmul_parameters(c) + attention;
}

// Device memory held by this benchmark: see "peak_device_bytes" at the top of the file.
class DeviceMemoryPeak {
public:
    void start() {
        REFTRAIN_CUDA_CHECK(cudaDeviceSynchronize());
        int device = 0;
        REFTRAIN_CUDA_CHECK(cudaGetDevice(&device));
        REFTRAIN_CUDA_CHECK(cudaDeviceGetMemPool(&pool_, device));
        uint64_t zero = 0;  // writing 0 resets a high-water mark
        REFTRAIN_CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReservedMemHigh, &zero));
        size_t free_bytes = 0, total = 0;
        REFTRAIN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
        baseline_free_ = free_bytes;
        baseline_pool_ = pool_reserved(cudaMemPoolAttrReservedMemCurrent);
        persistent_peak_ = 0;
    }
    // After a synchronised step.
    void sample() {
        size_t free_bytes = 0, total = 0;
        REFTRAIN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
        const int64_t held = static_cast<int64_t>(baseline_free_) - static_cast<int64_t>(free_bytes);
        const int64_t pool_now =
            static_cast<int64_t>(pool_reserved(cudaMemPoolAttrReservedMemCurrent)) - static_cast<int64_t>(baseline_pool_);
        persistent_peak_ = std::max(persistent_peak_, held - std::max<int64_t>(pool_now, 0));
    }
    double peak_bytes() const {
        const double pool_high = static_cast<double>(pool_reserved(cudaMemPoolAttrReservedMemHigh));
        return static_cast<double>(std::max<int64_t>(persistent_peak_, 0)) + pool_high;
    }

private:
    uint64_t pool_reserved(cudaMemPoolAttr attr) const {
        uint64_t value = 0;
        REFTRAIN_CUDA_CHECK(cudaMemPoolGetAttribute(pool_, attr, &value));
        return value;
    }
    cudaMemPool_t pool_ = nullptr;
    size_t baseline_free_ = 0;
    uint64_t baseline_pool_ = 0;
    int64_t persistent_peak_ = 0;
};

// The model, its optimizer and one fixed random batch.
struct GpuTrainStep {
    ModelConfig config = config_135m();
    CudaTransformer model;
    CudaAdamW optimizer;
    std::vector<int64_t> ids = std::vector<int64_t>(kBatch * kSeqLen);
    std::vector<int64_t> targets = std::vector<int64_t>(kBatch * kSeqLen);
    std::vector<CudaMicroBatch> micro;
    int64_t step_index = 0;
    static constexpr double kLr = 1e-4, kMaxNorm = 1.0;

    explicit GpuTrainStep(DType precision)
        : model(config, kBatch, kSeqLen, CudaModelOptions{precision}),
          optimizer(model, AdamWConfig{.lr = kLr, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1}) {
        model.init_weights(1);
        Rng rng(2);
        for (auto& x : ids) x = static_cast<int64_t>(rng.below(config.vocab_size));
        for (auto& x : targets) x = static_cast<int64_t>(rng.below(config.vocab_size));
        micro.push_back(CudaMicroBatch{Tensor(ids.data(), DType::I64, {kBatch, kSeqLen}, "input_ids"),
                                       Tensor(targets.data(), DType::I64, {kBatch, kSeqLen}, "targets"), 1.0});
    }
    CudaStepResult step() {
        return cuda_train_step(model, optimizer, micro, kLr, kMaxNorm, /*scaler=*/nullptr, step_index++);
    }
    double arena_bytes() const {
        const double params = static_cast<double>(model.params().nbytes());
        return params + static_cast<double>(model.grads().nbytes() + model.acts().nbytes() + model.act_grads().nbytes()) +
               2.0 * params;  // AdamW's exp_avg and exp_avg_sq, fp32 like the parameters
    }
};

// RAII pair of timing events.
struct EventPair {
    cudaEvent_t start = nullptr, stop = nullptr;
    EventPair() {
        REFTRAIN_CUDA_CHECK(cudaEventCreate(&start));
        REFTRAIN_CUDA_CHECK(cudaEventCreate(&stop));
    }
    ~EventPair() {
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
    }
    EventPair(const EventPair&) = delete;
    EventPair& operator=(const EventPair&) = delete;
};

void BM_GpuTrainStep(benchmark::State& state, DType precision, bool traced, bool deterministic) {
    if (cuda::device_count() == 0) {
        state.SkipWithError("no CUDA device");
        return;
    }
    const bool deterministic_before = cuda::deterministic();
    try {
        cuda::set_deterministic(deterministic);
        DeviceMemoryPeak memory;
        memory.start();
        FrameTracer tracer;  // default options: 21 frames, no run_dir (no dumps), policy stop; outlives the model
        std::unique_ptr<GpuTrainStep> setup = std::make_unique<GpuTrainStep>(precision);
        if (traced) setup->model.set_tracer(&tracer);
        const cudaStream_t stream = setup->model.stream();
        EventPair events;

        CudaStepResult first{}, last{};
        for (int i = 0; i < g_options.warmup; ++i) {
            last = setup->step();
            if (i == 0) first = last;
            memory.sample();
        }
        std::vector<double> step_ms;
        step_ms.reserve(static_cast<size_t>(g_options.steps));
        bool failed = false;
        for (auto _ : state) {
            REFTRAIN_CUDA_CHECK(cudaEventRecord(events.start, stream));
            last = setup->step();
            REFTRAIN_CUDA_CHECK(cudaEventRecord(events.stop, stream));
            REFTRAIN_CUDA_CHECK(cudaEventSynchronize(events.stop));
            float ms = 0.0f;
            REFTRAIN_CUDA_CHECK(cudaEventElapsedTime(&ms, events.start, events.stop));
            state.SetIterationTime(ms / 1000.0);
            step_ms.push_back(ms);
            if (g_options.warmup == 0 && step_ms.size() == 1) first = last;
            memory.sample();
            if (!std::isfinite(last.loss) || !std::isfinite(last.grad_norm) || last.skipped) {
                state.SkipWithError(("step " + std::to_string(setup->step_index - 1) + ": loss " +
                                     std::to_string(last.loss) + ", grad norm " + std::to_string(last.grad_norm) +
                                     (last.skipped ? ", skipped" : ""))
                                        .c_str());
                failed = true;
                break;
            }
        }
        if (traced && tracer.trips() != 0 && !failed) {
            state.SkipWithError("the tracer tripped on a healthy model");
            failed = true;
        }
        if (failed || step_ms.empty()) {
            cuda::set_deterministic(deterministic_before);
            return;
        }

        std::vector<double> sorted = step_ms;
        std::sort(sorted.begin(), sorted.end());
        const size_t n = sorted.size();
        const double median_ms = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
        const double mean_ms = std::accumulate(step_ms.begin(), step_ms.end(), 0.0) / static_cast<double>(n);
        const double tokens = static_cast<double>(kBatch * kSeqLen);
        const double tokens_per_s = tokens / (median_ms / 1000.0);
        const double fpt = flops_per_token(setup->config, kSeqLen);
        state.counters["tokens_per_s"] = tokens_per_s;
        state.counters["step_ms_median"] = median_ms;
        state.counters["step_ms_mean"] = mean_ms;
        state.counters["step_ms_min"] = sorted.front();
        state.counters["step_ms_max"] = sorted.back();
        state.counters["flops_per_token"] = fpt;
        state.counters["peak_tflops"] = g_options.peak_tflops;
        state.counters["mfu"] = tokens_per_s * fpt / (g_options.peak_tflops * 1e12);
        state.counters["peak_device_bytes"] = memory.peak_bytes();
        state.counters["arena_bytes"] = setup->arena_bytes();
        state.counters["parameters"] = static_cast<double>(setup->model.num_parameters());
        state.counters["loss_first"] = first.loss;
        state.counters["loss_last"] = last.loss;
        state.counters["grad_norm_last"] = last.grad_norm;
        state.counters["tracer"] = traced ? 1.0 : 0.0;
        state.counters["deterministic"] = deterministic ? 1.0 : 0.0;
        state.SetLabel(std::string(precision == DType::BF16 ? "bf16" : "f32") + (traced ? ", tracer on" : ", tracer off") +
                       (deterministic ? ", deterministic" : ", nondeterministic"));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
    cuda::set_deterministic(deterministic_before);
}

void register_benchmarks() {
    struct Variant {
        const char* precision_name;
        DType precision;
        bool traced, deterministic;
    };
    const Variant variants[] = {
        {"bf16", DType::BF16, false, true}, {"bf16", DType::BF16, true, true},  {"bf16", DType::BF16, false, false},
        {"bf16", DType::BF16, true, false}, {"f32", DType::F32, false, true},
    };
    for (const Variant& v : variants) {
        const std::string name = std::string("BM_GpuTrainStep/") + v.precision_name + "/tracer:" + (v.traced ? "1" : "0") +
                                 "/deterministic:" + (v.deterministic ? "1" : "0");
        benchmark::RegisterBenchmark(name.c_str(), BM_GpuTrainStep, v.precision, v.traced, v.deterministic)
            ->Iterations(g_options.steps)
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond);
    }
}

// Takes --warmup=N, --steps=N and --peak_tflops=X out of argv before Google Benchmark sees it.
void parse_own_flags(int* argc, char** argv) {
    int kept = 1;
    for (int i = 1; i < *argc; ++i) {
        const char* arg = argv[i];
        auto value_of = [arg](const char* flag) -> const char* {
            const size_t len = std::strlen(flag);
            return std::strncmp(arg, flag, len) == 0 && arg[len] == '=' ? arg + len + 1 : nullptr;
        };
        if (const char* v = value_of("--warmup")) {
            g_options.warmup = std::atoi(v);
        } else if (const char* v = value_of("--steps")) {
            g_options.steps = std::atoi(v);
        } else if (const char* v = value_of("--peak_tflops")) {
            g_options.peak_tflops = std::atof(v);
        } else {
            argv[kept++] = argv[i];
        }
    }
    *argc = kept;
    argv[kept] = nullptr;
    if (g_options.warmup < 0 || g_options.steps < 1 || !(g_options.peak_tflops > 0)) {
        std::fprintf(stderr, "bench_gpu_step: need --warmup >= 0, --steps >= 1, --peak_tflops > 0\n");
        std::exit(2);
    }
}

}  // namespace

int main(int argc, char** argv) {
    parse_own_flags(&argc, argv);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
        std::fprintf(stderr, "bench_gpu_step: own flags are --warmup=N --steps=N --peak_tflops=X\n");
        return 1;
    }
    const ModelConfig c = config_135m();
    benchmark::AddCustomContext("model", "135M: V=32768 d=768 L=12 Hq=12 Hkv=12 hd=64 F=2048 qk_norm untied, B=16 T=1024");
    benchmark::AddCustomContext("flops_per_token", std::to_string(flops_per_token(c, kSeqLen)));
    benchmark::AddCustomContext("matmul_parameters", std::to_string(static_cast<int64_t>(matmul_parameters(c))));
    benchmark::AddCustomContext("peak_tflops", std::to_string(g_options.peak_tflops));
    benchmark::AddCustomContext("warmup_steps", std::to_string(g_options.warmup));
    benchmark::AddCustomContext("timed_steps", std::to_string(g_options.steps));
    const int devices = cuda::device_count();
    benchmark::AddCustomContext("cuda_device", devices > 0 ? cuda::device_description(0) : "none");
    register_benchmarks();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}

// kernels/cuda/optim.cu — AdamW, gradient norm and clipping, fp32 <-> bf16/fp16 casts, loss-scaler
// unscaling and the tracer's batched statistics (declared and documented in kernels/cuda/optim.h).
//
// Non-obvious choices:
// - Element-wise updates are written with the explicitly rounded intrinsics (__fmul_rn, __fadd_rn, ...).
//   nvcc contracts a * b + c into one FMA by default, which rounds once instead of twice; the CPU
//   reference (and torch's AdamW) round every operation, and the intrinsics are never contracted.
// - Reductions (norm, statistics) cut each tensor into chunks whose bounds depend only on its size; one
//   block reduces one chunk with a fixed tree (block_reduce.cuh) and a second pass adds the partials in
//   chunk order. No floating-point atomics: the same inputs give the same bits on every run.
// - The clipping coefficient is formed on the device from the norm the first pass wrote, so clipping
//   needs no host round trip.
#include "kernels/cuda/optim.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"

namespace reftrain::cuda {

namespace {

constexpr int kThreads = 256;

// ---- explicitly rounded fp32 arithmetic (never contracted into FMA) -------------------------------------
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }

void expect_f32(const Tensor& t, const char* op, const char* arg) {
    expect_on_device(t, op, arg);
    expect_dtype(t, DType::F32, op, arg);
}

// ---- AdamW --------------------------------------------------------------------------------------------------

struct AdamWConstants {
    float keep, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bias_correction2_sqrt;
};

// Twin of the loop body of AdamW::step, operation for operation (C++ evaluates left to right:
// c2 * g * g is (c2 * g) * g, tstep * m / d is (tstep * m) / d).
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, AdamWConstants k) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
        const float gi = g[i];
        float pi = mul_rn(p[i], k.keep);
        const float mi = add_rn(mul_rn(k.beta1, m[i]), mul_rn(k.one_minus_beta1, gi));
        const float vi = add_rn(mul_rn(k.beta2, v[i]), mul_rn(mul_rn(k.one_minus_beta2, gi), gi));
        const float denominator = add_rn(div_rn(sqrt_rn(vi), k.bias_correction2_sqrt), k.eps);
        pi = sub_rn(pi, div_rn(mul_rn(k.step_size, mi), denominator));
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}

// ---- gradient norm ------------------------------------------------------------------------------------------

constexpr int64_t kNormChunk = 16 * kThreads;  // elements per block of the first pass

// partials[blockIdx.x] = sum over the block's chunk of g^2 in fp64 (the square of an fp32 value is
// exact in fp64, as on the CPU).
__global__ void sum_squares_kernel(const float* g, int64_t n, double* partials) {
    __shared__ double shared[32];
    const int64_t begin = blockIdx.x * kNormChunk, end = min(n, begin + kNormChunk);
    double sum = 0.0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const double x = g[i];
        sum += x * x;
    }
    sum = block_reduce(sum, SumOp{}, 0.0, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// *norm = sqrt(sum of partials[0..count)), each thread adding a fixed stride of them in order.
__global__ void finish_norm_kernel(const double* partials, int64_t count, double* norm) {
    __shared__ double shared[32];
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
    sum = block_reduce(sum, SumOp{}, 0.0, shared);
    if (threadIdx.x == 0) *norm = sqrt(sum);
}

// Twin of clip_grad_norm's scaling: g *= float(max_norm / (norm + 1e-6)) when the norm is finite and
// above max_norm; otherwise the gradients stay as they are (a non-finite norm must reach the caller).
__global__ void clip_kernel(float* g, int64_t n, const double* norm, double max_norm) {
    const double norm_value = *norm;
    if (!isfinite(norm_value) || norm_value <= max_norm) return;
    const float scale = static_cast<float>(max_norm / (norm_value + 1e-6));
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
        g[i] = mul_rn(g[i], scale);
    }
}

// ---- casts --------------------------------------------------------------------------------------------------

__global__ void f32_to_bf16_kernel(uint16_t* out, const float* in, int64_t n) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
        out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
    }
}
__global__ void f32_to_f16_kernel(uint16_t* out, const float* in, int64_t n) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
        out[i] = __half_as_ushort(__float2half_rn(in[i]));
    }
}
__global__ void bf16_to_f32_kernel(float* out, const uint16_t* in, int64_t n) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
        out[i] = __bfloat162float(__ushort_as_bfloat16(in[i]));
    }
}
__global__ void f16_to_f32_kernel(float* out, const uint16_t* in, int64_t n) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
        out[i] = __half2float(__ushort_as_half(in[i]));
    }
}
__global__ void round_through_bf16_kernel(float* x, int64_t n) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
        x[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
    }
}
__global__ void round_through_f16_kernel(float* x, int64_t n) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
        x[i] = __half2float(__float2half_rn(x[i]));
    }
}

// ---- loss-scaler unscaling -------------------------------------------------------------------------------------

// g *= inv_scale; *found = 1 when any g was non-finite before the multiplication. Every thread that
// stores writes the same value 1, so the race is benign and the result deterministic.
__global__ void unscale_kernel(float* g, int64_t n, float inv_scale, int32_t* found_nonfinite) {
    bool nonfinite = false;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
        const float v = g[i];
        nonfinite |= !isfinite(v);
        g[i] = mul_rn(v, inv_scale);
    }
    if (__syncthreads_or(nonfinite) && threadIdx.x == 0) *found_nonfinite = 1;
}

// ---- tracer statistics -------------------------------------------------------------------------------------------

constexpr int kStatsBatch = 64;        // tensors per launch (their descriptors travel as a kernel argument)
// Blocks per tensor at most. 64 (the CPU's kMaxChunks) left a 1 GB logits tensor to 64 blocks on a
// 132-SM H200: the first GPU run measured the tracer at +69% of the 135M step. 1024 blocks of 256
// threads fill every SM; the chunk bounds still depend only on the tensor's size (determinism).
constexpr int kStatsMaxChunks = 1024;
constexpr int64_t kStatsMinChunk = 1 << 16;
constexpr int kStatsUnroll = 8;        // independent loads in flight per thread

struct StatsJob {
    const void* data;
    int64_t n;
    int64_t chunk;     // elements per block: max(kStatsMinChunk, ceil(n / kStatsMaxChunks))
    int32_t is_bf16;   // 0: F32, 1: BF16
    int32_t padding;
};
struct StatsBatch {
    StatsJob jobs[kStatsBatch];  // 2 KiB, under the 4 KiB kernel-argument limit
};
struct StatsPartial {
    double sum_squares, abs_min, abs_max;
    long long nonfinite;
};

__device__ __forceinline__ float load_element(const StatsJob& job, int64_t i) {
    return job.is_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(job.data)[i])
                       : static_cast<const float*>(job.data)[i];
}

// Grid (chunks of the batch's largest tensor, tensors in the batch): block (c, t) reduces chunk c of tensor t into
// partials[t * kStatsMaxChunks + c]. Blocks past a tensor's last chunk return at once.
__global__ void stats_partials_kernel(StatsBatch batch, StatsPartial* partials) {
    __shared__ double shared_double[32];
    __shared__ long long shared_count[32];
    const StatsJob job = batch.jobs[blockIdx.y];
    const int64_t begin = blockIdx.x * job.chunk;
    if (blockIdx.x > 0 && begin >= job.n) return;  // chunk 0 always runs (an empty tensor has one chunk)
    const int64_t end = min(job.n, begin + job.chunk);
    double sum_squares = 0.0, lo = INFINITY, hi = 0.0;
    long long nonfinite = 0;
    auto add = [&](float value) {
        const double a = fabs(static_cast<double>(value));
        const bool finite = a <= DBL_MAX;  // false for inf and NaN
        if (finite) {
            sum_squares += a * a;  // exact: the square of an fp32 value fits fp64
            lo = a < lo ? a : lo;
            hi = a > hi ? a : hi;
        } else {
            ++nonfinite;
        }
    };
    // kStatsUnroll strided loads are issued before any is used (a single load per iteration left each
    // thread waiting on memory latency); the order of the additions is still fixed by the size alone.
    const int64_t stride = blockDim.x;
    int64_t i = begin + threadIdx.x;
    for (; i + (kStatsUnroll - 1) * stride < end; i += kStatsUnroll * stride) {
        float v[kStatsUnroll];
#pragma unroll
        for (int u = 0; u < kStatsUnroll; ++u) v[u] = load_element(job, i + u * stride);
#pragma unroll
        for (int u = 0; u < kStatsUnroll; ++u) add(v[u]);
    }
    for (; i < end; i += stride) add(load_element(job, i));
    sum_squares = block_reduce(sum_squares, SumOp{}, 0.0, shared_double);
    lo = block_reduce(lo, MinOp{}, static_cast<double>(INFINITY), shared_double);
    hi = block_reduce(hi, MaxOp{}, 0.0, shared_double);
    nonfinite = block_reduce(nonfinite, SumOp{}, 0LL, shared_count);
    if (threadIdx.x == 0) {
        partials[blockIdx.y * kStatsMaxChunks + blockIdx.x] = {sum_squares, lo, hi, nonfinite};
    }
}

// One thread per tensor of the batch combines its partials in chunk order, like the CPU's reduce().
__global__ void stats_finish_kernel(StatsBatch batch, int count, const StatsPartial* partials,
                                    TensorStatsRecord* out) {
    const int t = threadIdx.x;
    if (t >= count) return;
    const StatsJob& job = batch.jobs[t];
    const int64_t needed = (job.n + job.chunk - 1) / job.chunk;
    const int64_t chunks = needed > 0 ? needed : 1;
    double sum_squares = 0.0, lo = INFINITY, hi = 0.0;
    long long nonfinite = 0;
    for (int64_t c = 0; c < chunks; ++c) {
        const StatsPartial& p = partials[t * kStatsMaxChunks + c];
        sum_squares += p.sum_squares;
        lo = p.abs_min < lo ? p.abs_min : lo;
        hi = p.abs_max > hi ? p.abs_max : hi;
        nonfinite += p.nonfinite;
    }
    TensorStatsRecord r;
    r.nonfinite = nonfinite;
    const int64_t finite = job.n - nonfinite;
    if (finite > 0) {
        r.abs_min = lo;
        r.abs_max = hi;
        r.rms = sqrt(sum_squares / static_cast<double>(finite));
    }
    out[t] = r;
}

unsigned elementwise_grid(int64_t n) { return grid_for(n, kThreads); }

}  // namespace

// ---- AdamW ------------------------------------------------------------------------------------------------------

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const AdamWStepConfig& config, bool apply_weight_decay, cudaStream_t stream) {
    const char* op = "cuda::adamw_step";
    expect_f32(param, op, "param");
    expect_f32(grad, op, "grad");
    expect_f32(exp_avg, op, "exp_avg");
    expect_f32(exp_avg_sq, op, "exp_avg_sq");
    const int64_t n = param.numel();
    check(grad.numel() == n && exp_avg.numel() == n && exp_avg_sq.numel() == n, op, ": parameter '", param.name,
          "' has ", n, " elements but grad '", grad.name, "' has ", grad.numel(), ", exp_avg '", exp_avg.name,
          "' ", exp_avg.numel(), " and exp_avg_sq '", exp_avg_sq.name, "' ", exp_avg_sq.numel());
    check(config.step >= 1, op, ": step must be >= 1 (the count after this update), got ", config.step);
    if (n == 0) return;
    // The constants exactly as AdamW::step forms them: in fp64, then rounded to the parameter's dtype.
    const double lr = config.lr, b1 = config.beta1, b2 = config.beta2;
    const double decay = apply_weight_decay ? config.weight_decay : 0.0;
    const double bias_correction1 = 1.0 - std::pow(b1, static_cast<double>(config.step));
    const double bias_correction2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(config.step)));
    AdamWConstants k;
    k.keep = static_cast<float>(1.0 - lr * decay);
    k.beta1 = static_cast<float>(b1);
    k.one_minus_beta1 = static_cast<float>(1.0 - b1);
    k.beta2 = static_cast<float>(b2);
    k.one_minus_beta2 = static_cast<float>(1.0 - b2);
    k.eps = static_cast<float>(config.eps);
    k.step_size = static_cast<float>(lr / bias_correction1);
    k.bias_correction2_sqrt = static_cast<float>(bias_correction2_sqrt);
    adamw_kernel<<<elementwise_grid(n), kThreads, 0, stream>>>(
        static_cast<float*>(param.data), static_cast<const float*>(grad.data), static_cast<float*>(exp_avg.data),
        static_cast<float*>(exp_avg_sq.data), n, k);
    REFTRAIN_CUDA_CHECK_LAUNCH();
}

// ---- gradient norm and clipping ------------------------------------------------------------------------------------

void global_grad_norm(std::span<const Tensor> grads, double* norm_device, cudaStream_t stream) {
    const char* op = "cuda::global_grad_norm";
    check(norm_device != nullptr, op, ": norm_device is null");
    int64_t partial_count = 0;
    for (const Tensor& g : grads) {
        expect_f32(g, op, "grads");
        partial_count += (g.numel() + kNormChunk - 1) / kNormChunk;
    }
    StreamScratch partials(static_cast<size_t>(std::max<int64_t>(partial_count, 1)) * sizeof(double), stream);
    int64_t offset = 0;
    for (const Tensor& g : grads) {  // list order = the order the partials are added in
        const int64_t blocks = (g.numel() + kNormChunk - 1) / kNormChunk;
        if (blocks == 0) continue;
        sum_squares_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
            static_cast<const float*>(g.data), g.numel(), partials.as<double>() + offset);
        REFTRAIN_CUDA_CHECK_LAUNCH();
        offset += blocks;
    }
    finish_norm_kernel<<<1, 1024, 0, stream>>>(partials.as<double>(), partial_count, norm_device);
    REFTRAIN_CUDA_CHECK_LAUNCH();
}

double global_grad_norm_to_host(std::span<const Tensor> grads, cudaStream_t stream) {
    StreamScratch norm(sizeof(double), stream);
    global_grad_norm(grads, norm.as<double>(), stream);
    double host = 0.0;
    REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(&host, norm.as<double>(), sizeof(double), cudaMemcpyDeviceToHost, stream));
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
    return host;
}

void clip_grad_norm(std::span<const Tensor> grads, double max_norm, double* norm_device, cudaStream_t stream) {
    global_grad_norm(grads, norm_device, stream);
    if (max_norm <= 0.0) return;  // clipping disabled; the norm is still computed
    for (const Tensor& g : grads) {
        if (g.numel() == 0) continue;
        clip_kernel<<<elementwise_grid(g.numel()), kThreads, 0, stream>>>(static_cast<float*>(g.data), g.numel(),
                                                                          norm_device, max_norm);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    }
}

// ---- casts -----------------------------------------------------------------------------------------------------------
//
// Why the intrinsics match kernels/dtype.cpp bit for bit: __float2bfloat16_rn and __float2half_rn compile
// to PTX cvt.rn.bf16.f32 / cvt.rn.f16.f32 (no .ftz, no .sat), which round to nearest even per IEEE 754,
// keep subnormal inputs and results, and let fp16 overflow to +-inf; that is the definition dtype.cpp
// implements with integer arithmetic. The widening conversions are exact in both. Only NaN payloads
// differ (cvt returns the canonical NaN 0x7fff). These are also the intrinsics PyTorch's CUDA
// c10::BFloat16 / c10::Half conversions use.

namespace {

void check_cast(const Tensor& out, DType out_dtype, const Tensor& in, DType in_dtype, const char* op) {
    expect_on_device(out, op, "out");
    expect_on_device(in, op, "in");
    expect_dtype(out, out_dtype, op, "out");
    expect_dtype(in, in_dtype, op, "in");
    check(out.numel() == in.numel(), op, ": out '", out.name, "' has ", out.numel(), " elements, in '", in.name,
          "' has ", in.numel());
}

}  // namespace

void cast_f32_to_bf16(const Tensor& out, const Tensor& in, cudaStream_t stream) {
    check_cast(out, DType::BF16, in, DType::F32, "cuda::cast_f32_to_bf16");
    if (in.numel() == 0) return;
    f32_to_bf16_kernel<<<elementwise_grid(in.numel()), kThreads, 0, stream>>>(
        static_cast<uint16_t*>(out.data), static_cast<const float*>(in.data), in.numel());
    REFTRAIN_CUDA_CHECK_LAUNCH();
}

void cast_f32_to_f16(const Tensor& out, const Tensor& in, cudaStream_t stream) {
    check_cast(out, DType::F16, in, DType::F32, "cuda::cast_f32_to_f16");
    if (in.numel() == 0) return;
    f32_to_f16_kernel<<<elementwise_grid(in.numel()), kThreads, 0, stream>>>(
        static_cast<uint16_t*>(out.data), static_cast<const float*>(in.data), in.numel());
    REFTRAIN_CUDA_CHECK_LAUNCH();
}

void cast_bf16_to_f32(const Tensor& out, const Tensor& in, cudaStream_t stream) {
    check_cast(out, DType::F32, in, DType::BF16, "cuda::cast_bf16_to_f32");
    if (in.numel() == 0) return;
    bf16_to_f32_kernel<<<elementwise_grid(in.numel()), kThreads, 0, stream>>>(
        static_cast<float*>(out.data), static_cast<const uint16_t*>(in.data), in.numel());
    REFTRAIN_CUDA_CHECK_LAUNCH();
}

void cast_f16_to_f32(const Tensor& out, const Tensor& in, cudaStream_t stream) {
    check_cast(out, DType::F32, in, DType::F16, "cuda::cast_f16_to_f32");
    if (in.numel() == 0) return;
    f16_to_f32_kernel<<<elementwise_grid(in.numel()), kThreads, 0, stream>>>(
        static_cast<float*>(out.data), static_cast<const uint16_t*>(in.data), in.numel());
    REFTRAIN_CUDA_CHECK_LAUNCH();
}

void round_to_precision(const Tensor& x, DType precision, cudaStream_t stream) {
    const char* op = "cuda::round_to_precision";
    check(precision == DType::F32 || precision == DType::BF16 || precision == DType::F16, op,
          ": precision must be F32, BF16 or F16, got ", dtype_name(precision), " (tensor '", x.name, "')");
    if (precision == DType::F32) return;
    expect_f32(x, op, "x");
    if (x.numel() == 0) return;
    if (precision == DType::BF16) {
        round_through_bf16_kernel<<<elementwise_grid(x.numel()), kThreads, 0, stream>>>(static_cast<float*>(x.data),
                                                                                         x.numel());
    } else {
        round_through_f16_kernel<<<elementwise_grid(x.numel()), kThreads, 0, stream>>>(static_cast<float*>(x.data),
                                                                                        x.numel());
    }
    REFTRAIN_CUDA_CHECK_LAUNCH();
}

// ---- loss-scaler unscaling -----------------------------------------------------------------------------------------

void unscale_and_check(std::span<const Tensor> grads, double scale, int32_t* found_nonfinite_device,
                       cudaStream_t stream) {
    const char* op = "cuda::unscale_and_check";
    const float scale_fp32 = static_cast<float>(scale);  // the scale is an fp32 number, as in torch
    check(std::isfinite(scale_fp32) && scale_fp32 > 0.0f, op, ": the loss scale must be finite and > 0 in fp32, got ",
          scale, " (after many overflowing steps in a row the scale underflows: the run has diverged)");
    check(found_nonfinite_device != nullptr, op, ": found_nonfinite_device is null");
    for (const Tensor& g : grads) expect_f32(g, op, "grads");
    const float inv_scale = static_cast<float>(1.0 / static_cast<double>(scale_fp32));  // torch's reciprocal
    REFTRAIN_CUDA_CHECK(cudaMemsetAsync(found_nonfinite_device, 0, sizeof(int32_t), stream));
    for (const Tensor& g : grads) {
        if (g.numel() == 0) continue;
        unscale_kernel<<<elementwise_grid(g.numel()), kThreads, 0, stream>>>(static_cast<float*>(g.data), g.numel(),
                                                                             inv_scale, found_nonfinite_device);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    }
}

// ---- tracer statistics ---------------------------------------------------------------------------------------------

void tensor_stats_batched(std::span<const Tensor> tensors, TensorStatsRecord* stats_device,
                          TensorStatsRecord* stats_host_pinned, cudaStream_t stream) {
    const char* op = "cuda::tensor_stats_batched";
    if (tensors.empty()) return;
    check(stats_device != nullptr, op, ": stats_device is null");
    if (stats_host_pinned != nullptr) {
        cudaPointerAttributes attributes{};
        REFTRAIN_CUDA_CHECK(cudaPointerGetAttributes(&attributes, stats_host_pinned));
        check(attributes.type == cudaMemoryTypeHost, op,
              ": stats_host_pinned is not page-locked host memory (allocate it with cudaMallocHost): a copy into "
              "pageable memory would not be asynchronous");
    }
    for (const Tensor& t : tensors) {
        expect_on_device(t, op, "tensors");
        check(t.dtype == DType::F32 || t.dtype == DType::BF16, op, ": tensor '", t.name, "' has dtype ",
              dtype_name(t.dtype), ", expected F32 or BF16");
    }
    const size_t count = tensors.size();
    const size_t batch_slots = std::min<size_t>(count, kStatsBatch);
    StreamScratch partials(batch_slots * kStatsMaxChunks * sizeof(StatsPartial), stream);
    for (size_t first = 0; first < count; first += kStatsBatch) {
        const int in_batch = static_cast<int>(std::min<size_t>(kStatsBatch, count - first));
        StatsBatch batch{};
        int64_t max_chunks = 1;
        for (int j = 0; j < in_batch; ++j) {
            const Tensor& t = tensors[first + static_cast<size_t>(j)];
            const int64_t n = t.numel();
            batch.jobs[j].data = t.data;
            batch.jobs[j].n = n;
            batch.jobs[j].chunk = std::max<int64_t>(kStatsMinChunk, (n + kStatsMaxChunks - 1) / kStatsMaxChunks);
            batch.jobs[j].is_bf16 = t.dtype == DType::BF16;
            max_chunks = std::max(max_chunks, (n + batch.jobs[j].chunk - 1) / batch.jobs[j].chunk);
        }
        // Batches reuse the scratch: launches on one stream run in order, so batch b+1's partials
        // overwrite batch b's only after stats_finish_kernel has read them. The grid is as wide as the
        // batch's largest tensor needs (blocks past a smaller tensor's last chunk return at once).
        stats_partials_kernel<<<dim3(static_cast<unsigned>(max_chunks), static_cast<unsigned>(in_batch)), kThreads, 0,
                                stream>>>(batch, partials.as<StatsPartial>());
        REFTRAIN_CUDA_CHECK_LAUNCH();
        stats_finish_kernel<<<1, kStatsBatch, 0, stream>>>(batch, in_batch, partials.as<StatsPartial>(),
                                                           stats_device + first);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    }
    if (stats_host_pinned == nullptr) return;  // the caller copies several batches at once
    REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(stats_host_pinned, stats_device, count * sizeof(TensorStatsRecord),
                                        cudaMemcpyDeviceToHost, stream));
}

}  // namespace reftrain::cuda

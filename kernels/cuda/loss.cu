// kernels/cuda/loss.cu — fused softmax + cross-entropy on the GPU (see kernels/cuda/loss.h for the math
// and kernels/cpu/cross_entropy.cpp for the reference).
//
// Forward: one block per row finds the max, sums exp(z - max) in fp64 (as the CPU), writes lse in fp32
// and the row's loss term in fp64; a second kernel (one block) adds the terms and counts supervised rows
// in a fixed order, so the loss is bitwise reproducible run to run without atomics. The only atomic is
// an integer atomicMin recording the first bad target row, whose result does not depend on ordering.
// Backward: one block per row; every operation explicitly rounded (no FMA contraction), in the CPU's order.
#include "kernels/cuda/loss.h"

#include <climits>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"

namespace reftrain::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void init_result_kernel(CrossEntropyDeviceResult* result) {
    result->loss = 0.0;
    result->supervised_tokens = 0;
    result->first_bad_row = LLONG_MAX;
    result->padding = 0;
}

// Block n: lse[n] and row_loss[n] (0 for ignored and bad rows), row_supervised[n] in {0, 1}.
__global__ void cross_entropy_rows_kernel(float* lse, double* row_loss, int32_t* row_supervised, const float* logits,
                                          const int64_t* targets, int64_t V, CrossEntropyDeviceResult* result) {
    __shared__ float shared_float[32];
    __shared__ double shared_double[32];
    const int64_t n = blockIdx.x;
    const float* row = logits + n * V;
    float max_logit = -INFINITY;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) max_logit = row[v] > max_logit ? row[v] : max_logit;
    max_logit = block_reduce(max_logit, MaxOp{}, -INFINITY, shared_float);
    double sum = 0.0;
    // As the CPU: the difference in fp32, its exponential in fp64.
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) sum += exp(static_cast<double>(__fsub_rn(row[v], max_logit)));
    sum = block_reduce(sum, SumOp{}, 0.0, shared_double);
    if (threadIdx.x != 0) return;
    const float row_lse = static_cast<float>(__dadd_rn(static_cast<double>(max_logit), log(sum)));
    lse[n] = row_lse;
    const int64_t y = targets[n];
    const bool ignored = y == cpu::kIgnoreIndex;
    const bool bad = !ignored && (y < 0 || y >= V);
    if (bad) atomicMin(reinterpret_cast<unsigned long long*>(&result->first_bad_row), static_cast<unsigned long long>(n));
    const bool supervised = !ignored && !bad;
    row_loss[n] = supervised ? __dsub_rn(static_cast<double>(row_lse), static_cast<double>(row[y])) : 0.0;
    row_supervised[n] = supervised ? 1 : 0;
}

// One block: loss = sum(row_loss) / M, M = sum(row_supervised); 0 when M = 0 (the CPU's rule).
__global__ void cross_entropy_total_kernel(const double* row_loss, const int32_t* row_supervised, int64_t N,
                                           CrossEntropyDeviceResult* result) {
    __shared__ double shared_double[32];
    __shared__ long long shared_count[32];
    double total = 0.0;
    long long count = 0;
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
        total += row_loss[n];
        count += row_supervised[n];
    }
    total = block_reduce(total, SumOp{}, 0.0, shared_double);
    count = block_reduce(count, SumOp{}, 0LL, shared_count);
    if (threadIdx.x == 0) {
        result->supervised_tokens = count;
        result->loss = count > 0 ? total / static_cast<double>(count) : 0.0;
    }
}

// Block n: dz[n, v] += scale * exp(z[n, v] - lse[n]); dz[n, y] -= scale, scale = float(dloss / M).
__global__ void cross_entropy_backward_kernel(float* dlogits, const float* logits, const float* lse,
                                              const int64_t* targets, int64_t V,
                                              const CrossEntropyDeviceResult* forward_result, double dloss) {
    const int64_t supervised = forward_result->supervised_tokens;
    if (supervised == 0) return;  // nothing supervised: no gradient, no division by zero
    const int64_t n = blockIdx.x;
    const int64_t y = targets[n];
    if (y == cpu::kIgnoreIndex || y < 0 || y >= V) return;
    const float scale = static_cast<float>(dloss / static_cast<double>(supervised));
    const float row_lse = lse[n];
    const float* row = logits + n * V;
    float* drow = dlogits + n * V;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        float d = __fadd_rn(drow[v], __fmul_rn(scale, expf(__fsub_rn(row[v], row_lse))));
        if (v == y) d = __fsub_rn(d, scale);  // after the += of the same element, as the CPU
        drow[v] = d;
    }
}

void check_arguments(const Tensor& logits, const Tensor& logsumexp, const Tensor& targets, const char* op) {
    expect_on_device(logits, op, "logits");
    expect_on_device(logsumexp, op, "logsumexp");
    expect_on_device(targets, op, "targets");
    expect_dtype(logits, DType::F32, op, "logits");
    expect_dtype(logsumexp, DType::F32, op, "logsumexp");
    expect_dtype(targets, DType::I64, op, "targets");
    check(logits.ndim == 2, op, ": logits '", logits.name, "' must be (N, V), got ", logits.shape_str());
    const int64_t N = logits.dim(0), V = logits.dim(1);
    check(V > 0, op, ": logits '", logits.name, "' have an empty vocabulary axis");
    expect_shape(logsumexp, {N}, op, "logsumexp");
    check(targets.numel() == N, op, ": ", targets.numel(), " targets for ", N, " rows of logits");
}

}  // namespace

void cross_entropy_forward(const Tensor& logsumexp, const Tensor& logits, const Tensor& targets,
                           CrossEntropyDeviceResult* result_device, cudaStream_t stream) {
    const char* op = "cuda::cross_entropy_forward";
    check_arguments(logits, logsumexp, targets, op);
    check(result_device != nullptr, op, ": result_device is null");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    check(N <= INT32_MAX, op, ": ", N, " rows exceed the grid limit (one block per row)");
    init_result_kernel<<<1, 1, 0, stream>>>(result_device);
    REFTRAIN_CUDA_CHECK_LAUNCH();
    if (N == 0) return;
    StreamScratch row_loss(static_cast<size_t>(N) * sizeof(double), stream);
    StreamScratch row_supervised(static_cast<size_t>(N) * sizeof(int32_t), stream);
    cross_entropy_rows_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        static_cast<float*>(logsumexp.data), row_loss.as<double>(), row_supervised.as<int32_t>(),
        static_cast<const float*>(logits.data), static_cast<const int64_t*>(targets.data), V, result_device);
    REFTRAIN_CUDA_CHECK_LAUNCH();
    cross_entropy_total_kernel<<<1, 1024, 0, stream>>>(row_loss.as<double>(), row_supervised.as<int32_t>(), N,
                                                       result_device);
    REFTRAIN_CUDA_CHECK_LAUNCH();
}

cpu::CrossEntropyResult cross_entropy_result_to_host(const CrossEntropyDeviceResult* result_device,
                                                     const Tensor& targets, cudaStream_t stream) {
    CrossEntropyDeviceResult host{};
    REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(&host, result_device, sizeof host, cudaMemcpyDeviceToHost, stream));
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (host.first_bad_row != LLONG_MAX) {
        int64_t value = 0;
        REFTRAIN_CUDA_CHECK(cudaMemcpy(&value, static_cast<const int64_t*>(targets.data) + host.first_bad_row,
                                       sizeof value, cudaMemcpyDeviceToHost));
        fail("cuda::cross_entropy_forward: target ", value, " at row ", host.first_bad_row, " of '", targets.name,
             "' is neither a token id in [0, V) nor the ignore index ", cpu::kIgnoreIndex);
    }
    cpu::CrossEntropyResult result;
    result.loss = host.loss;
    result.supervised_tokens = host.supervised_tokens;
    result.no_supervised_tokens = host.supervised_tokens == 0;
    return result;
}

void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& logsumexp,
                            const Tensor& targets, const CrossEntropyDeviceResult* forward_result_device,
                            double dloss, cudaStream_t stream) {
    const char* op = "cuda::cross_entropy_backward";
    check_arguments(logits, logsumexp, targets, op);
    expect_on_device(dlogits, op, "dlogits");
    expect_dtype(dlogits, DType::F32, op, "dlogits");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    expect_shape(dlogits, {N, V}, op, "dlogits");
    check(forward_result_device != nullptr, op, ": forward_result_device is null");
    check(N <= INT32_MAX, op, ": ", N, " rows exceed the grid limit (one block per row)");
    if (N == 0) return;
    cross_entropy_backward_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        static_cast<float*>(dlogits.data), static_cast<const float*>(logits.data),
        static_cast<const float*>(logsumexp.data), static_cast<const int64_t*>(targets.data), V,
        forward_result_device, dloss);
    REFTRAIN_CUDA_CHECK_LAUNCH();
}

}  // namespace reftrain::cuda

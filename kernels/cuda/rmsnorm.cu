// kernels/cuda/rmsnorm.cu — RMSNorm forward and backward, the CUDA twin of kernels/cpu/rmsnorm.cpp.
//
//   forward   r[n] = (mean_c x[n,c]^2 + eps)^(-1/2);  y[n,c] = x[n,c] * r[n] * w[c]
//   backward  with g[c] = dy[n,c] w[c]:
//             dx[n,c] += r[n] g[c] - r[n]^3 / C * x[n,c] * sum_k g[k] x[n,k]
//             dw[c]   += sum_n dy[n,c] x[n,c] r[n]
// One block per row for the row-wise sums (fp32, fixed reduction tree; the CPU sums in fp64, so fp32
// results differ from it by ~1e-7 relative). dw is summed over rows without atomics: pass 1 writes the
// partial sum of each fixed chunk of kRowsPerChunk rows per column, pass 2 adds the chunks in order.
// QK-norm is the same call on (B*T*H, head_dim) rows.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace reftrain::cuda {

namespace {

constexpr int kRowsPerChunk = 64;
constexpr int kColumnBlock = 256;

// Threads per row block: C rounded up to a warp, between 32 and 256.
int row_block(int64_t C) {
    const int64_t rounded = (C + 31) / 32 * 32;
    return static_cast<int>(rounded < 32 ? 32 : (rounded > 256 ? 256 : rounded));
}

// Matches cpu::rmsnorm_forward (rmsnorm.cpp forward_impl).
template <class T>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* x, const T* weight, int64_t C, float eps) {
    __shared__ float shared[32];
    const int64_t n = blockIdx.x;
    const T* row = x + n * C;
    float sum_squares = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        const float v = load(row, c);
        sum_squares += v * v;
    }
    sum_squares = block_sum(sum_squares, shared);
    const float inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(C) + eps);
    if (threadIdx.x == 0) rstd[n] = inv_rms;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) store(out, n * C + c, (load(row, c) * inv_rms) * load(weight, c));
}

// Matches the dx half of cpu::rmsnorm_backward (rmsnorm.cpp backward_impl).
template <class T>
__global__ void rmsnorm_backward_dx_kernel(T* dx, const T* dout, const T* x, const T* weight, const float* rstd,
                                           int64_t C) {
    __shared__ float shared[32];
    const int64_t n = blockIdx.x;
    const T* row = x + n * C;
    const T* grow = dout + n * C;
    float dot = 0.0f;  // sum_k dy[k] w[k] x[k]
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += load(grow, c) * load(weight, c) * load(row, c);
    dot = block_sum(dot, shared);
    const float rn = rstd[n];
    const float coeff = rn * rn * rn * dot / static_cast<float>(C);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        const int64_t i = n * C + c;
        store(dx, i, load(dx, i) + (rn * (load(grow, c) * load(weight, c)) - coeff * load(row, c)));
    }
}

// Pass 1 of the dweight half of cpu::rmsnorm_backward: partial[chunk, c] = sum over the chunk's rows
// of dy[n,c] x[n,c] r[n], rows in increasing order. Grid (column blocks, chunks).
template <class T>
__global__ void rmsnorm_dweight_partial_kernel(float* partial, const T* dout, const T* x, const float* rstd, int64_t N,
                                               int64_t C) {
    const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (c >= C) return;
    const int64_t chunk = blockIdx.y;
    const int64_t begin = chunk * kRowsPerChunk, end = begin + kRowsPerChunk < N ? begin + kRowsPerChunk : N;
    float acc = 0.0f;
    for (int64_t n = begin; n < end; ++n) acc += load(dout, n * C + c) * load(x, n * C + c) * rstd[n];
    partial[chunk * C + c] = acc;
}

// Pass 2: dweight[c] += sum over chunks in order of partial[chunk, c]. G is dweight's storage type,
// which may be float while the other tensors are bf16 (fp32 parameter gradients of a bf16 model).
template <class G>
__global__ void rmsnorm_dweight_reduce_kernel(G* dweight, const float* partial, int64_t chunks, int64_t C) {
    const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (int64_t k = 0; k < chunks; ++k) acc += partial[k * C + c];
    store(dweight, c, load(dweight, c) + acc);
}

}  // namespace

void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight, double eps,
                     cudaStream_t stream) {
    const char* op = "cuda::rmsnorm_forward";
    const int64_t N = x.dim(0), C = x.dim(1);
    expect_shape(x, {N, C}, op, "x");
    expect_shape(weight, {C}, op, "weight");
    expect_shape(out, {N, C}, op, "out");
    expect_shape(rstd, {N}, op, "rstd");
    expect_same_dtype(x, weight, op);
    expect_same_dtype(x, out, op);
    expect_dtype(rstd, DType::F32, op, "rstd");
    expect_on_device(out, op, "out");
    expect_on_device(rstd, op, "rstd");
    expect_on_device(x, op, "x");
    expect_on_device(weight, op, "weight");
    if (N == 0) return;
    check(N <= 0x7fffffffLL, op, ": ", N, " rows exceed the grid limit");
    dispatch_storage(x.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        rmsnorm_forward_kernel<T><<<static_cast<unsigned>(N), row_block(C), 0, stream>>>(
            device_ptr<T>(out), device_ptr<float>(rstd), device_ptr<T>(x), device_ptr<T>(weight), C,
            static_cast<float>(eps));
        REFTRAIN_CUDA_CHECK_LAUNCH();
    });
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, cudaStream_t stream) {
    const char* op = "cuda::rmsnorm_backward";
    const int64_t N = x.dim(0), C = x.dim(1);
    expect_shape(x, {N, C}, op, "x");
    expect_shape(dout, {N, C}, op, "dout");
    expect_shape(weight, {C}, op, "weight");
    expect_shape(rstd, {N}, op, "rstd");
    expect_same_dtype(x, dout, op);
    expect_same_dtype(x, weight, op);
    expect_dtype(rstd, DType::F32, op, "rstd");
    expect_on_device(dout, op, "dout");
    expect_on_device(x, op, "x");
    expect_on_device(weight, op, "weight");
    expect_on_device(rstd, op, "rstd");
    if (dx.data) {
        expect_shape(dx, {N, C}, op, "dx");
        expect_same_dtype(x, dx, op);
        expect_on_device(dx, op, "dx");
    }
    if (dweight.data) {
        expect_shape(dweight, {C}, op, "dweight");
        check(dweight.dtype == x.dtype || dweight.dtype == DType::F32, op, ": argument 'dweight' (tensor '",
              dweight.name, "') has dtype ", dtype_name(dweight.dtype), ", expected ", dtype_name(x.dtype),
              x.dtype == DType::F32 ? "" : " (the dtype of x) or F32");
        expect_on_device(dweight, op, "dweight");
    }
    if (N == 0 || C == 0) return;
    check(N <= 0x7fffffffLL, op, ": ", N, " rows exceed the grid limit");
    dispatch_storage(x.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        if (dx.data) {
            rmsnorm_backward_dx_kernel<T><<<static_cast<unsigned>(N), row_block(C), 0, stream>>>(
                device_ptr<T>(dx), device_ptr<T>(dout), device_ptr<T>(x), device_ptr<T>(weight),
                device_ptr<float>(rstd), C);
            REFTRAIN_CUDA_CHECK_LAUNCH();
        }
        if (dweight.data) {
            const int64_t chunks = (N + kRowsPerChunk - 1) / kRowsPerChunk;
            check(chunks <= 65535, op, ": ", N, " rows exceed ", 65535LL * kRowsPerChunk,
                  " (grid limit of the dweight pass)");
            StreamScratch partial(static_cast<size_t>(chunks * C) * sizeof(float), stream);
            const unsigned column_blocks = static_cast<unsigned>((C + kColumnBlock - 1) / kColumnBlock);
            rmsnorm_dweight_partial_kernel<T><<<dim3(column_blocks, static_cast<unsigned>(chunks)), kColumnBlock, 0,
                                                stream>>>(partial.as<float>(), device_ptr<T>(dout), device_ptr<T>(x),
                                                          device_ptr<float>(rstd), N, C);
            REFTRAIN_CUDA_CHECK_LAUNCH();
            dispatch_storage(dweight.dtype, op, [&](auto gradient_tag) {
                using G = decltype(gradient_tag);
                rmsnorm_dweight_reduce_kernel<G><<<column_blocks, kColumnBlock, 0, stream>>>(
                    device_ptr<G>(dweight), partial.as<float>(), chunks, C);
                REFTRAIN_CUDA_CHECK_LAUNCH();
            });
        }
    });
}

}  // namespace reftrain::cuda

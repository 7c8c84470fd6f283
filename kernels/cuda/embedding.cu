// kernels/cuda/embedding.cu — token embedding lookup and its backward, the CUDA twin of
// kernels/cpu/embedding.cpp.
//
//   forward   out[n, :] = table[ids[n], :]
//   backward  dtable[ids[n], :] += dout[n, :]
// Token ids are validated on the device first (integer atomicMin finds the first bad position), and the
// verdict is copied back, which synchronises the stream: a bad id is an error naming the position and
// the id, exactly like the CPU, instead of an out-of-bounds read.
// The backward is deterministic without atomics, by the CPU's own split: one thread per column walks
// the tokens in order n = 0..N-1, so two tokens with the same id add in a fixed order (the CPU's), and
// fp32 results are bitwise those of the CPU. It runs N steps per thread with C threads in flight:
// fine for a reference; a sorted-ids version (segments of equal ids, one block each) is the faster
// deterministic design when it matters.
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace reftrain::cuda {

namespace {

constexpr int kBlock = 256;

__global__ void find_bad_id_kernel(unsigned long long* first_bad, const int64_t* ids, int64_t N, int64_t V) {
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < N; n += int64_t(gridDim.x) * blockDim.x) {
        if (ids[n] < 0 || ids[n] >= V) atomicMin(first_bad, static_cast<unsigned long long>(n));
    }
}

// Fails like cpu::embedding_forward's check_ids when an id lies outside [0, V). Synchronises `stream`.
void check_ids(const Tensor& ids, int64_t V, const char* op, cudaStream_t stream) {
    const int64_t N = ids.numel();
    if (N == 0) return;
    StreamScratch first_bad(sizeof(unsigned long long), stream);
    REFTRAIN_CUDA_CHECK(cudaMemsetAsync(first_bad.as<void>(), 0xFF, sizeof(unsigned long long), stream));
    find_bad_id_kernel<<<grid_for(N, kBlock), kBlock, 0, stream>>>(first_bad.as<unsigned long long>(),
                                                                   device_ptr<int64_t>(ids), N, V);
    REFTRAIN_CUDA_CHECK_LAUNCH();
    unsigned long long position = 0;
    REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(&position, first_bad.as<void>(), sizeof(position), cudaMemcpyDeviceToHost, stream));
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (position == std::numeric_limits<unsigned long long>::max()) return;
    int64_t id = 0;
    REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(&id, device_ptr<int64_t>(ids) + position, sizeof(id), cudaMemcpyDeviceToHost,
                                        stream));
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
    fail(op, ": token id ", id, " at position ", position, " of '", ids.name, "' is outside the vocabulary [0, ", V,
         ")");
}

// Matches cpu::embedding_forward (embedding.cpp forward_impl). One thread per output element.
template <class T>
__global__ void embedding_forward_kernel(T* out, const int64_t* ids, const T* table, int64_t N, int64_t C) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * C; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t n = i / C, c = i % C;
        out[i] = table[ids[n] * C + c];
    }
}

// Matches cpu::embedding_backward (embedding.cpp backward_impl): thread c walks the tokens in order.
// G is dtable's storage type, which may be float while dout is bf16 (fp32 gradients of a bf16 model).
template <class G, class T>
__global__ void embedding_backward_kernel(G* dtable, const T* dout, const int64_t* ids, int64_t N, int64_t C) {
    const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (c >= C) return;
    for (int64_t n = 0; n < N; ++n) {
        const int64_t i = ids[n] * C + c;
        store(dtable, i, load(dtable, i) + load(dout, n * C + c));
    }
}

}  // namespace

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table, cudaStream_t stream) {
    const char* op = "cuda::embedding_forward";
    const int64_t V = table.dim(0), C = table.dim(1), N = ids.numel();
    expect_dtype(ids, DType::I64, op, "ids");
    expect_shape(out, {N, C}, op, "out");
    expect_same_dtype(out, table, op);
    expect_on_device(out, op, "out");
    expect_on_device(ids, op, "ids");
    expect_on_device(table, op, "table");
    dispatch_storage(table.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        check_ids(ids, V, op, stream);
        if (N * C == 0) return;
        embedding_forward_kernel<T><<<grid_for(N * C, kBlock), kBlock, 0, stream>>>(
            device_ptr<T>(out), device_ptr<int64_t>(ids), device_ptr<T>(table), N, C);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    });
}

void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& ids, cudaStream_t stream) {
    if (!dtable.data) return;
    const char* op = "cuda::embedding_backward";
    const int64_t V = dtable.dim(0), C = dtable.dim(1), N = ids.numel();
    expect_dtype(ids, DType::I64, op, "ids");
    expect_shape(dout, {N, C}, op, "dout");
    check(dtable.dtype == dout.dtype || dtable.dtype == DType::F32, op, ": argument 'dtable' (tensor '", dtable.name,
          "') has dtype ", dtype_name(dtable.dtype), ", expected ", dtype_name(dout.dtype),
          dout.dtype == DType::F32 ? "" : " (the dtype of dout) or F32");
    expect_on_device(dtable, op, "dtable");
    expect_on_device(dout, op, "dout");
    expect_on_device(ids, op, "ids");
    dispatch_storage(dout.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        dispatch_storage(dtable.dtype, op, [&](auto gradient_tag) {
            using G = decltype(gradient_tag);
            check_ids(ids, V, op, stream);
            if (N * C == 0) return;
            embedding_backward_kernel<G, T><<<grid_for(C, kBlock), kBlock, 0, stream>>>(
                device_ptr<G>(dtable), device_ptr<T>(dout), device_ptr<int64_t>(ids), N, C);
            REFTRAIN_CUDA_CHECK_LAUNCH();
        });
    });
}

}  // namespace reftrain::cuda

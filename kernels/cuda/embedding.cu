// kernels/cuda/embedding.cu — token embedding lookup and its backward, the CUDA twin of
// kernels/cpu/embedding.cpp.
//
//   forward   out[n, :] = table[ids[n], :]
//   backward  dtable[ids[n], :] += dout[n, :]
// Token ids are validated on the device first (integer atomicMin finds the first bad position), and the
// verdict is copied back, which synchronises the stream: a bad id is an error naming the position and
// the id, exactly like the CPU, instead of an out-of-bounds read.
// The backward is deterministic without atomics and adds in the CPU's order. The CPU's thread for
// column c walks the tokens n = 0..N-1 and does dtable[ids[n], c] += dout[n, c]; the only order that
// matters is that of the tokens sharing an id. So the ids (already copied back for validation) are
// grouped on the host into segments: each distinct id with its positions in increasing n. One thread
// per (segment, column) loads dtable once, adds the segment's rows in that order (rounding after every
// add for a BF16 dtable, like the CPU's store), and stores once: bitwise the CPU's result, with
// (distinct ids) x C threads in flight instead of C threads walking all N tokens.
#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

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

// Matches cpu::embedding_backward (embedding.cpp backward_impl). Block row = one segment (one distinct
// id); thread = one column. G is dtable's storage type, which may be float while dout is bf16 (fp32
// gradients of a bf16 model); store-then-load after each add keeps the CPU's per-add rounding.
template <class G, class T>
__global__ void embedding_backward_kernel(G* dtable, const T* dout, const int64_t* segment_ids,
                                          const int64_t* segment_start, const int64_t* positions, int64_t C) {
    const int64_t segment = blockIdx.y;
    const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (c >= C) return;
    const int64_t i = segment_ids[segment] * C + c;
    G acc[1];
    acc[0] = dtable[i];
    for (int64_t p = segment_start[segment]; p < segment_start[segment + 1]; ++p) {
        store(acc, 0, load(acc, 0) + load(dout, positions[p] * C + c));
    }
    dtable[i] = acc[0];
}

// The host-side grouping: positions sorted by (id, n), the distinct ids, and each segment's start.
struct Segments {
    std::vector<int64_t> ids, start, positions;
};

Segments group_by_id(const Tensor& ids_device, cudaStream_t stream) {
    const int64_t N = ids_device.numel();
    std::vector<int64_t> ids(static_cast<size_t>(N));
    REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(ids.data(), ids_device.data, ids_device.nbytes(), cudaMemcpyDeviceToHost, stream));
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
    Segments s;
    s.positions.resize(static_cast<size_t>(N));
    std::iota(s.positions.begin(), s.positions.end(), int64_t{0});
    std::stable_sort(s.positions.begin(), s.positions.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    for (int64_t k = 0; k < N; ++k) {
        const int64_t id = ids[s.positions[k]];
        if (s.ids.empty() || s.ids.back() != id) {
            s.ids.push_back(id);
            s.start.push_back(k);
        }
    }
    s.start.push_back(N);
    return s;
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
            const Segments seg = group_by_id(ids, stream);
            const int64_t U = static_cast<int64_t>(seg.ids.size());
            check(U <= 65535, op, ": ", U, " distinct token ids in one batch exceed the grid limit of 65535");
            StreamScratch buffer((2 * static_cast<size_t>(U) + 1 + static_cast<size_t>(N)) * sizeof(int64_t), stream);
            int64_t* segment_ids = buffer.as<int64_t>();
            int64_t* segment_start = segment_ids + U;
            int64_t* positions = segment_start + U + 1;
            // Synchronous copies: the host vectors die at the end of this scope.
            REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(segment_ids, seg.ids.data(), U * sizeof(int64_t), cudaMemcpyHostToDevice, stream));
            REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(segment_start, seg.start.data(), (U + 1) * sizeof(int64_t),
                                                cudaMemcpyHostToDevice, stream));
            REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(positions, seg.positions.data(), N * sizeof(int64_t),
                                                cudaMemcpyHostToDevice, stream));
            const dim3 grid(static_cast<unsigned>((C + kBlock - 1) / kBlock), static_cast<unsigned>(U));
            embedding_backward_kernel<G, T><<<grid, kBlock, 0, stream>>>(device_ptr<G>(dtable), device_ptr<T>(dout),
                                                                         segment_ids, segment_start, positions, C);
            REFTRAIN_CUDA_CHECK_LAUNCH();
            REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
        });
    });
}

}  // namespace reftrain::cuda

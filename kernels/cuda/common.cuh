// kernels/cuda/common.cuh — device-side helpers shared by the .cu files of kernels/cuda/.
//
// - Element access: every kernel is a template over the storage type T (float or __nv_bfloat16) and
//   computes in fp32: load() widens, store() rounds to nearest even (what __float2bfloat16 does, and
//   what float_to_bf16 in kernels/dtype.h does on the CPU).
// - dispatch_storage(): runs fn(T{}) for F32 or BF16 tensors, the CUDA counterpart of dispatch_float.
// - block_sum(): a block-wide fp32 sum whose order is fixed by the launch shape, so results are
//   bitwise reproducible run to run (no atomics anywhere in kernels/cuda/).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.h"
#include "kernels/tensor.h"

namespace reftrain::cuda {

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

template <class Fn>
void dispatch_storage(DType dtype, const char* op, Fn&& fn) {
    switch (dtype) {
        case DType::F32: fn(float{}); return;
        case DType::BF16: fn(__nv_bfloat16{}); return;
        default: fail(op, ": dtype ", dtype_name(dtype), " is not supported by the CUDA ops (F32 or BF16)");
    }
}

template <class T>
T* device_ptr(const Tensor& t) { return static_cast<T*>(t.data); }

inline unsigned grid_for(int64_t work, int block) {
    const int64_t blocks = (work + block - 1) / block;
    return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535LL * 32 ? 65535LL * 32 : blocks));
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `shared` holds 32 floats. The reduction tree is fixed, so the result is reproducible.
__device__ __forceinline__ float block_sum(float v, float* shared) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    __syncthreads();  // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// A stream-ordered scratch allocation (cudaMallocAsync), freed on the same stream when it goes out of
// scope, so kernels queued before the free still see it.
class StreamScratch {
public:
    StreamScratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
        REFTRAIN_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream_));
    }
    StreamScratch(const StreamScratch&) = delete;
    StreamScratch& operator=(const StreamScratch&) = delete;
    ~StreamScratch() { cudaFreeAsync(ptr_, stream_); }
    template <class T>
    T* as() const { return static_cast<T*>(ptr_); }

private:
    void* ptr_ = nullptr;
    cudaStream_t stream_;
};

}  // namespace reftrain::cuda

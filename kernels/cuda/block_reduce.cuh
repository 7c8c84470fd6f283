// kernels/cuda/block_reduce.cuh — a block-wide reduction of any type under any associative operator,
// with a tree fixed by the launch shape (butterfly within each warp, then warp results in warp order),
// so the same inputs give the same bits on every run. Used by optim.cu and loss.cu for fp64 sums,
// min/max and integer counts; common.cuh's block_sum is the fp32 sum of the layer kernels.
#pragma once

#include <cuda_runtime.h>

namespace reftrain::cuda {

struct SumOp {
    template <class T>
    __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MinOp {
    template <class T>
    __device__ __forceinline__ T operator()(T a, T b) const { return b < a ? b : a; }
};
struct MaxOp {
    template <class T>
    __device__ __forceinline__ T operator()(T a, T b) const { return b > a ? b : a; }
};

// Every thread of the block gets op-reduce of `value` over the block. blockDim.x is a multiple of 32
// and at most 1024; `shared` holds 32 T; `identity` is op's neutral element (0, +inf, -inf).
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T value, Op op, T identity, T* shared) {
    for (int offset = 16; offset > 0; offset >>= 1) value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    __syncthreads();  // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = value;
    __syncthreads();
    value = lane < warps ? shared[lane] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
    return value;
}

}  // namespace reftrain::cuda

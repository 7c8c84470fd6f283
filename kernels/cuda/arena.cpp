// kernels/cuda/arena.cpp — see arena.h.
#include "kernels/cuda/arena.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/error.h"

namespace reftrain {

DeviceArena::~DeviceArena() {
    if (allocated()) cudaFree(data());  // no check: destructors must not throw
}

size_t DeviceArena::add(const std::string& name, DType dtype, const std::vector<int64_t>& dims) {
    return declare(name, dtype, dims, static_cast<size_t>(kAlignElements) * dtype_size(dtype));
}

void DeviceArena::allocate() {
    check(!allocated(), label(), ": allocate() called twice");
    const size_t round = 512;  // kAlignElements fp32 values: the block ends on a whole aligned stretch
    const size_t bytes = std::max<size_t>((nbytes() + round - 1) / round * round, round);
    void* p = nullptr;
    const cudaError_t status = cudaMalloc(&p, bytes);
    if (status != cudaSuccess) {
        cudaGetLastError();
        fail(label(), ": cudaMalloc of ", bytes, " bytes (", static_cast<double>(bytes) / (1 << 30),
             " GiB) failed: ", cudaGetErrorString(status), " (lower the batch size or sequence length)");
    }
    REFTRAIN_CUDA_CHECK(cudaMemset(p, 0, bytes));
    place(static_cast<std::byte*>(p), Device::CUDA);
}

void DeviceArena::zero(cudaStream_t stream) {
    if (allocated()) REFTRAIN_CUDA_CHECK(cudaMemsetAsync(data(), 0, nbytes(), stream));
}

}  // namespace reftrain

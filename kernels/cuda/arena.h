// kernels/cuda/arena.h — the device twin of Arena (kernels/arena.h): named tensors in ONE device
// allocation, declared, then allocated once; the bookkeeping (names, order, offsets, lookups) is
// ArenaLayout's, shared with the host arena.
//
// Every tensor starts at a multiple of 128 ELEMENTS of its dtype. Two arenas declaring the same tensors
// in the same order (the fp32 parameters and their bf16 compute copy) therefore put every tensor at the
// same element offset, so the whole compute copy is refreshed by ONE cast over the block. 128 elements
// are 256 bytes in bf16 and 512 in fp32: aligned for any vector load.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/arena.h"

namespace reftrain {

class DeviceArena : public ArenaLayout {
public:
    static constexpr int64_t kAlignElements = 128;

    explicit DeviceArena(std::string label) : ArenaLayout(std::move(label)) {}
    ~DeviceArena();
    DeviceArena(const DeviceArena&) = delete;
    DeviceArena& operator=(const DeviceArena&) = delete;

    size_t add(const std::string& name, DType dtype, const std::vector<int64_t>& dims);
    void allocate();                 // cudaMalloc + cudaMemset 0; the tensors become Device::CUDA views
    void zero(cudaStream_t stream);  // one cudaMemsetAsync over the block
};

}  // namespace reftrain

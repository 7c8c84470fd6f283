// kernels/cuda/device.cpp — device queries and the device-placement check of kernels/cuda/device.h.
#include "kernels/cuda/device.h"

#include <cuda_runtime.h>

#include <cstdio>

#include "kernels/cuda/check.h"

namespace reftrain::cuda {

int device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the error so the next CUDA call does not report it
        return 0;
    }
    return count;
}

std::string device_description(int index) {
    cudaDeviceProp prop{};
    REFTRAIN_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
    char memory[32];
    std::snprintf(memory, sizeof(memory), "%.1f", static_cast<double>(prop.totalGlobalMem) / (1 << 30));
    return concat(prop.name, " (sm_", prop.major, prop.minor, ", ", memory, " GiB)");
}

void expect_on_device(const Tensor& t, const char* op, const char* arg) {
    check(t.device == Device::CUDA, op, ": argument '", arg, "' (tensor '", t.name,
          "') is not a CUDA tensor: the CUDA ops take device memory (Tensor::device = Device::CUDA)");
}

namespace {
bool g_deterministic = true;
}  // namespace

void set_deterministic(bool on) { g_deterministic = on; }
bool deterministic() { return g_deterministic; }

}  // namespace reftrain::cuda

// tests/cuda/cuda_test_util.h — helpers shared by the GPU test suites (tests/cuda/*.cpp).
//
// - REFTRAIN_REQUIRE_GPU() first in every GPU test: without a usable CUDA device the test is SKIPPED
//   (never passed, never failed) with a message saying where to run it.
// - DeviceBuffer: an owning device allocation with upload/download, and tensor() views of it
//   (Device::CUDA) to hand to the CUDA ops.
// - poison(): fills a buffer with 0xFF bytes, which is NaN in fp32, fp64, bf16 and fp16, so an output
//   element a kernel forgot to write shows up as NaN and fails expect_close.
// - expect_close(): the relative-error comparison, with the bound stated at the call site.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/dtype.h"
#include "kernels/tensor.h"

namespace reftrain::cuda_testing {

// Empty when a device is usable, otherwise why not. Asked once per process.
inline const std::string& gpu_unavailable_reason() {
    static const std::string reason = [] {
        int count = 0;
        const cudaError_t status = cudaGetDeviceCount(&count);
        if (status != cudaSuccess) return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(status);
        if (count == 0) return std::string("cudaGetDeviceCount reports 0 devices");
        return std::string();
    }();
    return reason;
}

inline bool gpu_available() { return gpu_unavailable_reason().empty(); }

}  // namespace reftrain::cuda_testing

#define REFTRAIN_REQUIRE_GPU()                                                                        \
    do {                                                                                              \
        if (!::reftrain::cuda_testing::gpu_available())                                               \
            GTEST_SKIP() << "no CUDA device: run under `ctest -L gpu` on a GPU machine ("             \
                         << ::reftrain::cuda_testing::gpu_unavailable_reason() << ")";                \
    } while (0)

namespace reftrain::cuda_testing {

// An owning device allocation (cudaMalloc), freed on destruction. Move-only.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
        if (bytes_) REFTRAIN_CUDA_CHECK(cudaMalloc(&ptr_, bytes_));
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
        other.ptr_ = nullptr;
        other.bytes_ = 0;
    }
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        std::swap(ptr_, other.ptr_);
        std::swap(bytes_, other.bytes_);
        return *this;
    }
    ~DeviceBuffer() {
        if (ptr_) cudaFree(ptr_);  // no throw from a destructor
    }

    void* data() const { return ptr_; }
    size_t bytes() const { return bytes_; }

    void upload(const void* host, size_t bytes) {
        check(bytes == bytes_, "DeviceBuffer::upload: ", bytes, " bytes into a buffer of ", bytes_);
        REFTRAIN_CUDA_CHECK(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice));
    }
    void download(void* host, size_t bytes) const {
        check(bytes == bytes_, "DeviceBuffer::download: ", bytes, " bytes from a buffer of ", bytes_);
        REFTRAIN_CUDA_CHECK(cudaDeviceSynchronize());  // surfaces errors of kernels still running
        REFTRAIN_CUDA_CHECK(cudaMemcpy(host, ptr_, bytes, cudaMemcpyDeviceToHost));
    }
    // 0xFF in every byte: NaN in every float dtype.
    void poison() {
        if (bytes_) REFTRAIN_CUDA_CHECK(cudaMemset(ptr_, 0xFF, bytes_));
    }

    // A Device::CUDA view of the buffer; its byte size must match.
    Tensor tensor(DType dtype, std::initializer_list<int64_t> dims, std::string name = "") const {
        Tensor t(ptr_, dtype, dims, std::move(name));
        t.device = Device::CUDA;
        check(t.nbytes() == bytes_, "DeviceBuffer::tensor: '", t.name, "' ", t.shape_str(), " needs ", t.nbytes(),
              " bytes, the buffer has ", bytes_);
        return t;
    }

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

template <class T>
DeviceBuffer to_device(const std::vector<T>& host) {
    DeviceBuffer buffer(host.size() * sizeof(T));
    buffer.upload(host.data(), buffer.bytes());
    return buffer;
}

template <class T>
std::vector<T> to_host(const DeviceBuffer& buffer) {
    std::vector<T> host(buffer.bytes() / sizeof(T));
    buffer.download(host.data(), buffer.bytes());
    return host;
}

// A buffer of `count` elements of `sizeof(T)` bytes, poisoned: for outputs the kernel must overwrite.
template <class T>
DeviceBuffer poisoned(size_t count) {
    DeviceBuffer buffer(count * sizeof(T));
    buffer.poison();
    return buffer;
}

// Uniform values in [lo, hi) with |value| >= min_magnitude (non-zero inputs, so a kernel that drops
// a term cannot agree by accident).
inline std::vector<float> random_floats(size_t count, uint64_t seed, float lo = -2.0f, float hi = 2.0f,
                                        float min_magnitude = 1e-2f) {
    std::mt19937_64 engine(seed);
    std::uniform_real_distribution<float> uniform(lo, hi);
    std::vector<float> values(count);
    for (float& v : values) {
        do v = uniform(engine);
        while (std::fabs(v) < min_magnitude);
    }
    return values;
}

// bf16 conversions of whole vectors (kernels/dtype.h: round to nearest even).
inline std::vector<uint16_t> to_bf16(const std::vector<float>& values) {
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < values.size(); ++i) bits[i] = float_to_bf16(values[i]);
    return bits;
}
inline std::vector<float> from_bf16(const std::vector<uint16_t>& bits) {
    std::vector<float> values(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) values[i] = bf16_to_float(bits[i]);
    return values;
}
// values rounded to bf16 and back: the inputs the CPU reference sees in a bf16 comparison.
inline std::vector<float> rounded_bf16(const std::vector<float>& values) { return from_bf16(to_bf16(values)); }

// One line per comparison, "[measured] WHAT: worst relative error E (bound B)", so that a GPU run's log
// holds the figures (docs/cuda.md quotes them), not only pass or fail.
inline void report_measured(const std::string& what, double worst, double bound) {
    std::printf("[measured] %s: worst relative error %.3g (bound %.3g)\n", what.c_str(), worst, bound);
}

// The comparison used by every GPU test. For each element
//   error_i = |got_i - want_i| / max(|want_i|, floor),   floor = floor_fraction * max_j |want_j|
// and the test fails if any error_i > bound or any got_i is NaN/inf where want_i is finite (a poisoned
// element the kernel never wrote). The floor keeps elements that cancel to ~0 from failing on noise that
// is small relative to the tensor's scale. Reports the worst element. Returns the worst error.
inline double expect_close(const std::vector<float>& got, const std::vector<float>& want, double bound,
                           const std::string& what, double floor_fraction = 1e-3) {
    EXPECT_EQ(got.size(), want.size()) << what << ": sizes differ";
    if (got.size() != want.size()) return INFINITY;
    double scale = 0.0;
    for (float w : want) scale = std::max(scale, static_cast<double>(std::fabs(w)));
    const double floor = std::max(floor_fraction * scale, 1e-30);
    double worst = 0.0;
    size_t worst_index = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double w = want[i], g = got[i];
        const double error = std::isfinite(g) ? std::fabs(g - w) / std::max(std::fabs(w), floor) : INFINITY;
        if (!(error <= worst)) {  // also catches NaN
            worst = error;
            worst_index = i;
        }
    }
    EXPECT_LE(worst, bound) << what << ": worst relative error " << worst << " at element " << worst_index
                            << " (got " << got[worst_index] << ", want " << want[worst_index] << ", bound "
                            << bound << ")";
    report_measured(what, worst, bound);
    return worst;
}

// ---- one code path for F32 and BF16 tests ----------------------------------------------------------------
// The values a dtype can hold: unchanged for F32, rounded to bf16 for BF16. The CPU reference runs on these.
inline std::vector<float> representable(const std::vector<float>& values, DType dtype) {
    return dtype == DType::F32 ? values : rounded_bf16(values);
}

// fp32 values uploaded as F32 or as bf16 bits.
inline DeviceBuffer upload_as(const std::vector<float>& values, DType dtype) {
    if (dtype == DType::F32) return to_device(values);
    return to_device(to_bf16(values));
}

// A device buffer of F32 or bf16 elements, brought back as fp32.
inline std::vector<float> download_as(const DeviceBuffer& buffer, DType dtype) {
    if (dtype == DType::F32) return to_host<float>(buffer);
    return from_bf16(to_host<uint16_t>(buffer));
}

// `count` NaN-poisoned elements of the dtype (see poisoned()).
inline DeviceBuffer poisoned_as(size_t count, DType dtype) {
    return dtype == DType::F32 ? poisoned<float>(count) : poisoned<uint16_t>(count);
}

// An F32 host view of `values`, for the CPU reference.
inline Tensor host(std::vector<float>& values, std::initializer_list<int64_t> dims, const char* name) {
    return Tensor(values.data(), DType::F32, dims, name);
}

}  // namespace reftrain::cuda_testing

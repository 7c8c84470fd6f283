// kernels/cuda/check.h — every CUDA runtime, cuBLASLt and cuDNN call goes through one of these.
//
// A failing call throws reftrain::Error naming the source file and line, the call as written, and the
// library's own error string, e.g.
//   kernels/cuda/elementwise.cu:42: cudaMemsetAsync(p, 0, n, stream) failed: out of memory (cudaErrorMemoryAllocation)
// Kernel launches return nothing, so follow each with REFTRAIN_CUDA_CHECK_LAUNCH(): it reports launch
// errors (bad configuration, no kernel image for this GPU) at the launch site. Errors raised while the
// kernel runs surface at the next synchronising call, which is then the one that throws.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "kernels/error.h"

namespace reftrain::cuda {

[[noreturn]] inline void fail_cuda(const char* file, int line, const char* call, cudaError_t status) {
    fail(file, ":", line, ": ", call, " failed: ", cudaGetErrorString(status), " (", cudaGetErrorName(status), ")");
}

[[noreturn]] inline void fail_cublas(const char* file, int line, const char* call, cublasStatus_t status) {
    fail(file, ":", line, ": ", call, " failed: ", cublasLtGetStatusString(status), " (", cublasLtGetStatusName(status),
         ")");
}

}  // namespace reftrain::cuda

#define REFTRAIN_CUDA_CHECK(call)                                                          \
    do {                                                                                   \
        const cudaError_t reftrain_status_ = (call);                                       \
        if (reftrain_status_ != cudaSuccess)                                               \
            ::reftrain::cuda::fail_cuda(__FILE__, __LINE__, #call, reftrain_status_);      \
    } while (0)

// After a kernel launch <<<...>>>: cudaGetLastError returns (and clears) a launch error.
#define REFTRAIN_CUDA_CHECK_LAUNCH()                                                       \
    do {                                                                                   \
        const cudaError_t reftrain_status_ = cudaGetLastError();                           \
        if (reftrain_status_ != cudaSuccess)                                               \
            ::reftrain::cuda::fail_cuda(__FILE__, __LINE__, "kernel launch", reftrain_status_); \
    } while (0)

#define REFTRAIN_CUBLAS_CHECK(call)                                                        \
    do {                                                                                   \
        const cublasStatus_t reftrain_status_ = (call);                                    \
        if (reftrain_status_ != CUBLAS_STATUS_SUCCESS)                                     \
            ::reftrain::cuda::fail_cublas(__FILE__, __LINE__, #call, reftrain_status_);    \
    } while (0)

// cuDNN (kernels/cuda/attention_cudnn.cpp). Only where cudnn.h exists: the build without cuDNN must still
// compile this header.
#if __has_include(<cudnn.h>)
#include <cudnn.h>

namespace reftrain::cuda {

[[noreturn]] inline void fail_cudnn(const char* file, int line, const char* call, cudnnStatus_t status) {
    fail(file, ":", line, ": ", call, " failed: ", cudnnGetErrorString(status), " (cudnnStatus_t ",
         static_cast<int>(status), ")");
}

}  // namespace reftrain::cuda

#define REFTRAIN_CUDNN_CHECK(call)                                                         \
    do {                                                                                   \
        const cudnnStatus_t reftrain_status_ = (call);                                     \
        if (reftrain_status_ != CUDNN_STATUS_SUCCESS)                                      \
            ::reftrain::cuda::fail_cudnn(__FILE__, __LINE__, #call, reftrain_status_);     \
    } while (0)
#endif

// The cudnn-frontend graph API returns cudnn_frontend::error_t (is_good(), get_code(), get_message())
// instead of a status code. Written against that shape so this header needs no frontend include.
#define REFTRAIN_CUDNN_FRONTEND_CHECK(call)                                                \
    do {                                                                                   \
        auto reftrain_result_ = (call);                                                    \
        if (!reftrain_result_.is_good())                                                   \
            ::reftrain::fail(__FILE__, ":", __LINE__, ": ", #call, " failed: ",            \
                             reftrain_result_.get_message(), " (cudnn_frontend::error_code_t ", \
                             static_cast<int>(reftrain_result_.get_code()), ")");          \
    } while (0)

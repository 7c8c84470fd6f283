// kernels/cuda/device.h — host-side helpers shared by the CUDA ops: device queries and argument checks.
//
// Compiles with the host C++ compiler as well as nvcc (no device code here; that is in common.cuh).
#pragma once

#include <string>

#include "kernels/tensor.h"

namespace reftrain::cuda {

// Number of usable CUDA devices; 0 (not an error) when there is no driver or no device.
int device_count();
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for device `index`.
std::string device_description(int index);

// Fails unless t is a Device::CUDA tensor: a host pointer handed to a kernel would otherwise fault
// (or, with unified memory, silently run slowly). Call only for arguments that are not null.
void expect_on_device(const Tensor& t, const char* op, const char* arg);

// Determinism mode (config: train.deterministic; docs/cuda.md). Process-wide, default ON. When on,
// every library call is asked for a bitwise-repeatable algorithm: cuBLASLt matmuls are restricted to
// CUBLASLT_REDUCTION_SCHEME_NONE (no split-K reduction whose order could vary) and cuDNN's SDPA
// backward to its deterministic algorithm. The hand-written kernels are deterministic either way.
void set_deterministic(bool on);
bool deterministic();

}  // namespace reftrain::cuda

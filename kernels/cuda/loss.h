// kernels/cuda/loss.h — the CUDA twin of the fused softmax + cross-entropy in kernels/cpu/cross_entropy.cpp.
//
// The math is the CPU's (read the comment of cpu::cross_entropy_forward/backward in kernels/cpu/ops.h):
//   lse[n] = log sum_v exp(z[n, v])                          (max-shifted, summed in fp64)
//   loss   = (1 / M) sum over supervised rows (lse[n] - z[n, y_n]),  M = number of supervised rows
//   dz[n, v] += dloss / M * (exp(z[n, v] - lse[n]) - [v == y_n])     supervised rows only
// with the ignore index -100 and the no-supervised-token case (loss exactly 0, no gradient) as on the CPU.
//
// The difference is where the scalar results live: the forward writes them into a
// CrossEntropyDeviceResult in device memory and does not synchronise; the backward reads the supervised
// count from there (no host round trip between the two). cross_entropy_result_to_host() brings the
// result back, synchronising, and raises the CPU's error for a target outside [0, V).
// Logits, logsumexp and dlogits are F32; targets are I64; all on the device.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/ops.h"
#include "kernels/tensor.h"

namespace reftrain::cuda {

struct CrossEntropyDeviceResult {
    double loss;                // mean over supervised rows; exactly 0 when there are none
    int64_t supervised_tokens;  // rows whose target != kIgnoreIndex
    int64_t first_bad_row;      // smallest row whose target is neither in [0, V) nor ignored; INT64_MAX if none
    int64_t padding;
};

// Twin of cpu::cross_entropy_forward. Writes logsumexp (N) and *result_device. The loss is summed in a
// fixed order (per-row terms, then one block adds them in row-stride order): bitwise reproducible.
// Rows with a bad target get no loss term; the error is raised by cross_entropy_result_to_host.
void cross_entropy_forward(const Tensor& logsumexp,  // (N)    F32, saved for backward
                           const Tensor& logits,     // (N, V) F32
                           const Tensor& targets,    // (N)    I64
                           CrossEntropyDeviceResult* result_device, cudaStream_t stream = 0);

// Copies *result_device to the host (synchronises `stream`) as the CPU's CrossEntropyResult; a bad target
// is an error naming the row and the value, as cpu::cross_entropy_forward's.
cpu::CrossEntropyResult cross_entropy_result_to_host(const CrossEntropyDeviceResult* result_device,
                                                     const Tensor& targets, cudaStream_t stream = 0);

// Twin of cpu::cross_entropy_backward (ADDS into dlogits). M is read from forward_result_device (written
// by cross_entropy_forward on the same targets); M = 0 leaves dlogits untouched. Rows with a bad target
// are skipped (the forward's result reports them).
void cross_entropy_backward(const Tensor& dlogits,    // (N, V) F32
                            const Tensor& logits,     // (N, V) F32
                            const Tensor& logsumexp,  // (N)    F32
                            const Tensor& targets,    // (N)    I64
                            const CrossEntropyDeviceResult* forward_result_device, double dloss,
                            cudaStream_t stream = 0);

}  // namespace reftrain::cuda

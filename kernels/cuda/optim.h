// kernels/cuda/optim.h — the CUDA twins of the optimizer-side CPU code: AdamW, the global gradient
// norm and clipping, fp32 <-> bf16/fp16 casts, loss-scaler unscaling and the tracer's statistics.
//
// Every function here names the CPU function it must match and the bound to which it does
// (docs/cuda.md, "Optimizer, loss and reduction kernels"); tests/cuda/test_cuda_optim.cpp checks
// each against its twin. Tensors point at device memory (Tensor::device == Device::CUDA) and every
// call only ENQUEUES work on `stream`: nothing here synchronises the host, except the functions whose
// name ends in _to_host, which say so. Results the host needs (a norm, a flag, statistics) are
// written to device memory, so a training step can run without a round trip per tensor.
//
// Reductions are deterministic: no floating-point atomics anywhere. Each block reduces a chunk whose
// bounds depend only on the tensor's size, with a fixed tree inside the block, and a second pass adds
// the per-block partial sums in block order; the same inputs give the same bits on every run.
//
// Scratch memory for the partial sums comes from cudaMallocAsync on the same stream (stream-ordered,
// no host synchronisation) and is freed the same way.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <span>

#include "kernels/tensor.h"

namespace reftrain::cuda {

// ---- AdamW (twin of train/adamw.cpp, AdamW::step) ------------------------------------------------------
// The hyperparameters of one update. `step` is the 1-based count AFTER this update is counted (the
// CPU's step_count_ after ++), which sets the bias corrections.
struct AdamWStepConfig {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
    int64_t step = 1;
};
// One AdamW update of one parameter, in place, term for term like AdamW::step:
//   p <- p * (1 - lr * wd)            wd = weight_decay if apply_weight_decay else 0
//   m <- b1 m + (1 - b1) g
//   v <- b2 v + (1 - b2) g^2
//   p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// The constants are formed on the host in fp64 and rounded to fp32 exactly as the CPU does; every device
// operation is a separately rounded IEEE operation (no FMA contraction). The caller passes
// apply_weight_decay = AdamW::decays(param) (2-D parameters only); the device Tensor carries the shape
// too, but the flag keeps the grouping decision in one place (train/adamw.h).
// param, grad, exp_avg (m), exp_avg_sq (v): same numel, all F32 (fp32 master weights and moments).
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const AdamWStepConfig& config, bool apply_weight_decay, cudaStream_t stream = 0);

// ---- global gradient norm and clipping (twin of train/grad_clip.cpp) ------------------------------------
// *norm_device (one double in device memory) = sqrt(sum over every element of every tensor of g^2),
// squares and sums in fp64. Tensors are F32, in the order given (the order is part of the
// determinism contract: the same list in the same order gives the same bits). Matches
// global_grad_norm to fp64 rounding of a different summation order (relative 1e-12).
void global_grad_norm(std::span<const Tensor> grads, double* norm_device, cudaStream_t stream = 0);
// The same, copied to the host; synchronises the stream.
double global_grad_norm_to_host(std::span<const Tensor> grads, cudaStream_t stream = 0);
// Computes the norm into *norm_device as above, then scales every gradient in place by
// T(max_norm / (norm + 1e-6)) when max_norm > 0, the norm is finite and norm > max_norm (the decision
// and the coefficient are formed on the device from *norm_device: no host round trip). Twin of
// clip_grad_norm; the caller reads the PRE-clip norm from *norm_device when it needs it.
void clip_grad_norm(std::span<const Tensor> grads, double max_norm, double* norm_device, cudaStream_t stream = 0);

// ---- fp32 <-> bf16 / fp16 (twins of kernels/dtype.h) ------------------------------------------------------
// Round to nearest, ties to even; fp16 overflows to +-inf past 65504 and keeps subnormals. Bit for bit
// equal to float_to_bf16 / float_to_f16 and bf16_to_float / f16_to_float for every non-NaN input; a
// NaN stays a NaN (the CUDA intrinsics return the canonical NaN 0x7fff, the CPU keeps sign and payload).
// `out` and `in` have the same numel; bf16/fp16 tensors are BF16 / F16 (raw 16-bit patterns).
void cast_f32_to_bf16(const Tensor& out, const Tensor& in, cudaStream_t stream = 0);
void cast_f32_to_f16(const Tensor& out, const Tensor& in, cudaStream_t stream = 0);
void cast_bf16_to_f32(const Tensor& out, const Tensor& in, cudaStream_t stream = 0);
void cast_f16_to_f32(const Tensor& out, const Tensor& in, cudaStream_t stream = 0);
// Twin of cpu::round_to_precision: x (F32) rounded in place through BF16 or F16 and back; F32 is a no-op.
void round_to_precision(const Tensor& x, DType precision, cudaStream_t stream = 0);

// ---- dynamic loss scaling (twin of train/loss_scaler.cpp, unscale_and_check) ------------------------------
// Multiplies every gradient (F32) in place by inv_scale = fp32(1 / fp64(fp32(scale))) in fp32, and sets *found_nonfinite_device (one int32 in device
// memory) to 1 when any gradient was inf or NaN BEFORE the multiplication, else 0. The flag is zeroed at
// the start of the call, so it answers for this list, as the CPU's return value does. Gradients are
// unscaled even when the flag is set (torch does the same; the caller skips the step).
// A scale that is not finite and > 0 in fp32 is an error (thrown on the host, nothing is enqueued).
void unscale_and_check(std::span<const Tensor> grads, double scale, int32_t* found_nonfinite_device,
                       cudaStream_t stream = 0);

// ---- tracer statistics (twin of debug/tracer.cpp, tensor_stats) ----------------------------------------------
// The layout of debug/tracer.h's TensorStats (kernels/ cannot include debug/): over the FINITE elements,
// smallest and largest |x| and sqrt(mean x^2), all 0 when no element is finite; `nonfinite` counts inf
// and NaN elements.
struct TensorStatsRecord {
    double abs_min = 0.0, abs_max = 0.0, rms = 0.0;
    int64_t nonfinite = 0;
};
static_assert(sizeof(TensorStatsRecord) == 32, "TensorStatsRecord is copied as raw bytes");
// One batched reduction over all `tensors` (F32 or BF16; two launches per 64 tensors, not one per
// tensor), writing stats_device[i] for tensors[i], then ONE cudaMemcpyAsync of all the records into
// stats_host_pinned (page-locked host memory from cudaMallocHost / cudaHostAlloc, checked). Neither
// buffer may be smaller than tensors.size() records. Does not synchronise: read stats_host_pinned after
// cudaStreamSynchronize(stream) or an event. abs_min, abs_max and nonfinite equal tensor_stats exactly;
// rms is summed in fp64 (the CPU's fp32 lanes are good to ~1e-6 relative, which bounds the difference).
// stats_host_pinned may be null: then nothing is copied, and the caller copies the records of several
// calls (written to consecutive slots of one device buffer) with one cudaMemcpyAsync of its own
// (model/transformer_cuda.cpp does that once per forward and once per backward).
void tensor_stats_batched(std::span<const Tensor> tensors, TensorStatsRecord* stats_device,
                          TensorStatsRecord* stats_host_pinned, cudaStream_t stream = 0);

}  // namespace reftrain::cuda

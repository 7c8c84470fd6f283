// model/transformer_cuda.h — the Qwen3-style decoder on a CUDA device: the twin of model/transformer.h.
//
// Same ops in the same order under the same tensor names as the CPU Transformer (read transformer.h
// for the forward and backward); each op is the kernels/cuda/ twin of the CPU op. What differs:
//   - Weights: fp32 master weights and fp32 gradients in device memory (params(), grads()), always.
//   - Precision (CudaModelOptions::precision):
//       F32   activations and activation gradients F32; matmuls fp32 without TF32. The twin that the
//             whole-step test holds against the CPU reference.
//       BF16  native bf16: a bf16 copy of the weights, refreshed by every forward (one cast kernel over
//             the whole parameter block), bf16 activations and activation gradients, fp32 saved
//             statistics (rstd, attention lse, loss.logsumexp), fp32 logits and loss (the
//             cross-entropy reads bf16-rounded logits widened to fp32, as autocast does). Every kernel
//             computes in fp32 and rounds once when it stores a bf16 value; these are the rounding
//             points of the CPU's emulation (Transformer::set_precision, docs/tracer.md).
//       F16   emulated like the CPU does it: F32 buffers, rounded through fp16 after every op
//             (cuda::round_to_precision), so fp16 overflow becomes inf at the same tensor as on the CPU.
//   - Attention saves its log-sum-exp (B, Hq, T), not the (T, T) probabilities ("self_attn.attn_lse"
//     instead of "self_attn.attn_probs"), and the tracer diagnostic attn_logits_max is not computed.
//   - Work is enqueued on the model's own stream; forward() synchronises once to return the loss.
// Determinism: with cuda::deterministic() (default on) the same inputs give the same bits on the same
// GPU and library versions (tests/cuda/test_cuda_model.cpp runs a step twice).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "debug/tracer.h"
#include "kernels/cuda/arena.h"
#include "kernels/tensor.h"
#include "model/config.h"
#include "model/transformer.h"

namespace reftrain {

// Copies a float device tensor (F32, BF16 or F16) to the host as fp32; synchronises `stream`.
std::vector<float> download_f32(const Tensor& device_tensor, cudaStream_t stream = 0);

struct CudaModelOptions {
    DType precision = DType::F32;  // F32, BF16 or F16 (see the top of this file)
};

class CudaTransformer {
public:
    CudaTransformer(const ModelConfig& config, int64_t batch_size, int64_t seq_len, CudaModelOptions options = {});
    ~CudaTransformer();
    CudaTransformer(const CudaTransformer&) = delete;
    CudaTransformer& operator=(const CudaTransformer&) = delete;

    const ModelConfig& config() const { return config_; }
    int64_t batch_size() const { return B_; }
    int64_t seq_len() const { return T_; }
    DType precision() const { return options_.precision; }
    cudaStream_t stream() const { return stream_; }

    DeviceArena& params() { return params_; }            // fp32 master weights, HF names
    DeviceArena& grads() { return grads_; }              // fp32, "grad:" + name
    const DeviceArena& params() const { return params_; }
    const DeviceArena& grads() const { return grads_; }
    const DeviceArena& acts() const { return acts_; }    // compute dtype (stats F32), execution order
    const DeviceArena& act_grads() const { return act_grads_; }

    // Weights: Transformer::init_weights's bits (drawn on the host by a CPU model of the same config,
    // then uploaded), or copied from / to an F32 CPU Transformer of the same config.
    void init_weights(uint64_t seed);
    void load_from(const Transformer& cpu);
    void store_to(Transformer& cpu) const;

    // input_ids, targets: HOST I64 (B, T) like Transformer::forward (targets with null data: no loss).
    // Uploads them, enqueues the forward, synchronises once and returns the loss.
    ForwardResult forward(const Tensor& input_ids, const Tensor& targets);
    // loss_weight * d(loss), ADDED into grads(); enqueued, does not synchronise.
    void backward(double loss_weight = 1.0);
    void zero_grad();  // enqueued

    // The tracer (not owned; null = off). Statistics of every tensor each op writes are computed by
    // batched reductions (cuda::tensor_stats_batched: a batch is flushed when an op is about to write a
    // tensor already waiting in it, so accumulated gradients are measured after every write, as on the
    // CPU) into one device buffer, copied to pinned host memory with ONE cudaMemcpyAsync per forward
    // and per backward, and handed to the tracer in execution order when the pass ends. On the first
    // non-finite tensor the op's outputs and inputs are copied to the host (as they are at the end of
    // the pass) for the tracer's dump.
    void set_tracer(FrameTracer* tracer);
    FrameTracer* tracer() const { return tracer_; }

    // Statistics of `tensors` (device tensors, e.g. params().tensors() after the optimizer update) as the
    // outputs of one op: one batched reduction, one copy, then the tracer (a trip dumps host copies).
    void trace_tensors(std::string_view op, const std::vector<Tensor>& tensors);

    int64_t num_parameters() const;

private:
    struct Impl;
    ModelConfig config_;
    int64_t B_, T_;
    CudaModelOptions options_;
    cudaStream_t stream_ = nullptr;
    DeviceArena params_{"parameters"}, grads_{"gradients"}, acts_{"activations"}, act_grads_{"activation gradients"};
    FrameTracer* tracer_ = nullptr;
    std::unique_ptr<Impl> impl_;
};

}  // namespace reftrain

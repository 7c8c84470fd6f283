// kernels/cuda/ops.h — the CUDA twins of the CPU reference ops in kernels/cpu/ops.h.
//
// Each function has the name, argument order, shapes and semantics of its CPU twin (read the CPU
// comment for the math), plus a trailing `stream`; tests/cuda/test_cuda_ops.cpp compares the two.
// Differences from the CPU, all deliberate:
// - Tensors are Device::CUDA views of device memory (checked). Calls are asynchronous on `stream`,
//   except where noted (embedding validates token ids and so synchronises).
// - Float tensors are F32 or BF16 (all float arguments of one call share a dtype, except rstd below);
//   every kernel computes in fp32 and rounds once when it stores a BF16 value. There is no F64 path:
//   gradient checks run on the CPU.
// - Sums run in fp32 (the CPU sums some in fp64), in a fixed order: results are bitwise reproducible
//   run to run. No kernel uses atomics.
// Conventions kept from the CPU: forwards OVERWRITE outputs; backwards ADD (+=) into every gradient;
// a gradient argument whose data pointer is null is skipped.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/tensor.h"

namespace reftrain::cuda {

// ---- matmul (linear layer, no bias) through cuBLASLt (matmul.cpp) ---------------------------------------
// out = x @ weight^T (torch.nn.Linear's layout), like cpu::linear_forward. x, weight, out share one
// dtype, F32 or BF16; accumulation is fp32 in both (CUBLAS_COMPUTE_32F: for F32 no TF32, so the result
// matches the CPU's sgemm to summation order). BF16 rounds once when storing out.
void linear_forward(const Tensor& out,     // (N, OC)
                    const Tensor& x,       // (N, IC)
                    const Tensor& weight,  // (OC, IC)
                    cudaStream_t stream = 0);
// dx += dout @ weight; dweight += dout^T @ x  (either may be null). The += is cuBLASLt's beta = 1, so
// accumulating costs no extra pass. dx has the dtype of x; dweight may be F32 while x, dout and weight
// are BF16 (fp32 parameter gradients of a bf16 model: A, B bf16, C/D fp32, fp32 accumulation).
void linear_backward(const Tensor& dx,      // (N, IC)   may be null
                     const Tensor& dweight, // (OC, IC)  may be null
                     const Tensor& dout,    // (N, OC)
                     const Tensor& x,       // (N, IC)
                     const Tensor& weight,  // (OC, IC)
                     cudaStream_t stream = 0);

// ---- causal self-attention with GQA (attention.cu, attention_cudnn.cpp) --------------------------------
// The math of cpu::attention_forward/backward. Deliberate difference: the GPU does not store the (T, T)
// probabilities (B*Hq*T*T floats: 805 MB per layer at B=16, T=1024). It saves the log-sum-exp of
// each score row instead, lse[b, h, t] = log sum_{s<=t} exp(q[t].k[s]/sqrt(D)) (F32), and the backward
// recomputes the probabilities from q, k and lse, as flash attention does.
// Two implementations behind the same call, chosen by attention_backend():
//   kernel  hand-written kernels (attention.cu), F32 and BF16: fp32 arithmetic, one thread block per
//           (b, h, query tile), fixed summation order, no atomics (dk/dv are summed by key-side blocks
//           that walk the queries in order) -> bitwise repeatable. The F32 path is the twin the tests
//           hold against the CPU at 1e-4 (another summation order; tests/cuda/test_cuda_attention.cpp).
//           The backward sums the softmax row term R = sum_s P dP exactly, in a first pass over the keys.
//   cudnn   cuDNN's fused SDPA through the cudnn-frontend graph API (BF16 only; compiled in when the
//           frontend headers are found, REFTRAIN_HAVE_CUDNN_FRONTEND). In deterministic mode the
//           backward asks cuDNN for its deterministic algorithm.
void attention_forward(const Tensor& out,  // (B, T, Hq, D)
                       const Tensor& lse,  // (B, Hq, T) F32   saved for backward
                       const Tensor& q,    // (B, T, Hq, D)
                       const Tensor& k,    // (B, T, Hkv, D)
                       const Tensor& v,    // (B, T, Hkv, D)
                       cudaStream_t stream = 0);
// dq += ..., dk += ..., dv += ... (the ADD convention; none may be null). `out` is the forward's output:
// cuDNN's backward forms the softmax row term as rowsum(dout * out); the kernels recompute it exactly
// and do not read `out`. cuDNN overwrites its outputs, so its results are added through scratch.
void attention_backward(const Tensor& dq,   // (B, T, Hq, D)
                        const Tensor& dk,   // (B, T, Hkv, D)
                        const Tensor& dv,   // (B, T, Hkv, D)
                        const Tensor& dout, // (B, T, Hq, D)
                        const Tensor& out,  // (B, T, Hq, D)
                        const Tensor& lse,  // (B, Hq, T) F32
                        const Tensor& q,    // (B, T, Hq, D)
                        const Tensor& k,    // (B, T, Hkv, D)
                        const Tensor& v,    // (B, T, Hkv, D)
                        cudaStream_t stream = 0);
enum class AttentionBackend { kernel, cudnn };
// The process-wide choice (default: cudnn for BF16 when compiled in, else kernel; F32 always uses the
// kernel). Setting cudnn when it is not compiled in is an error that says how to get it.
void set_attention_backend(AttentionBackend backend);
AttentionBackend attention_backend();
bool cudnn_attention_available();  // compiled in (says nothing about a device)

// ---- embedding (embedding.cu) -----------------------------------------------------------------------
// out[n] = table[ids[n]]. Ids are validated on the device; an id outside [0, V) is an error naming the
// position and the id, like the CPU. Reading the verdict back synchronises `stream`.
void embedding_forward(const Tensor& out,    // (N, C)
                       const Tensor& ids,    // (N) I64
                       const Tensor& table,  // (V, C)
                       cudaStream_t stream = 0);
// dtable may be F32 while dout is BF16 (fp32 parameter gradients of a bf16 model).
// dtable[ids[n]] += dout[n]. Deterministic without atomics: the ids are grouped on the host into one
// segment per distinct id (positions in increasing n), and one thread per (segment, column) adds its
// rows in that order, which is the CPU's order for repeated ids (fp32 results are bitwise the CPU's).
// BF16 dtable rounds after every add. Synchronises (id validation and grouping).
void embedding_backward(const Tensor& dtable, // (V, C)
                        const Tensor& dout,   // (N, C)
                        const Tensor& ids,    // (N) I64
                        cudaStream_t stream = 0);

// ---- RMSNorm (rmsnorm.cu) ---------------------------------------------------------------------------
// rstd[n] = 1 / sqrt(mean_c(x[n,c]^2) + eps);  out[n,c] = x[n,c] * rstd[n] * weight[c]
// rstd is F32 whatever the dtype of x (a BF16 rstd would put a 0.4% error into every backward).
// QK-norm: the same call on x viewed as (B*T*H, head_dim), with weight (head_dim).
void rmsnorm_forward(const Tensor& out,    // (N, C)
                     const Tensor& rstd,   // (N) F32  saved for backward
                     const Tensor& x,      // (N, C)
                     const Tensor& weight, // (C)
                     double eps,
                     cudaStream_t stream = 0);
// dweight is summed over rows in two deterministic passes (partial sums over fixed chunks of rows,
// then the chunks in order) through stream-ordered scratch memory.
// dweight may be F32 while x, dout and weight are BF16 (fp32 parameter gradients of a bf16 model).
void rmsnorm_backward(const Tensor& dx,      // (N, C)  may be null
                      const Tensor& dweight, // (C)     may be null
                      const Tensor& dout,    // (N, C)
                      const Tensor& x,       // (N, C)
                      const Tensor& weight,  // (C)
                      const Tensor& rstd,    // (N) F32
                      cudaStream_t stream = 0);

// ---- RoPE (elementwise.cu) -----------------------------------------------------------------------------
// HF rotate-half layout; cos/sin are the tables of cpu::rope_tables copied to the device (same dtype
// as x; build them on the CPU in F32 and convert for BF16).
void rope_forward(const Tensor& out,  // (B, T, H, D)
                  const Tensor& x,    // (B, T, H, D)
                  const Tensor& cos,  // (T_max, D), T <= T_max
                  const Tensor& sin,  // (T_max, D)
                  cudaStream_t stream = 0);
void rope_backward(const Tensor& dx,   // (B, T, H, D)  may be null
                   const Tensor& dout, // (B, T, H, D)
                   const Tensor& cos,  // (T_max, D)
                   const Tensor& sin,  // (T_max, D)
                   cudaStream_t stream = 0);

// ---- SwiGLU (elementwise.cu) ----------------------------------------------------------------------------
// out = silu(gate) * up
void swiglu_forward(const Tensor& out,  // (N, F)
                    const Tensor& gate, // (N, F)
                    const Tensor& up,   // (N, F)
                    cudaStream_t stream = 0);
void swiglu_backward(const Tensor& dgate, // (N, F)  may be null
                     const Tensor& dup,   // (N, F)  may be null
                     const Tensor& dout,  // (N, F)
                     const Tensor& gate,  // (N, F)
                     const Tensor& up,    // (N, F)
                     cudaStream_t stream = 0);

// ---- residual add (elementwise.cu) ------------------------------------------------------------------------
// out = a + b
void residual_forward(const Tensor& out, const Tensor& a, const Tensor& b, cudaStream_t stream = 0);  // all (N, C)
// da += dout; db += dout  (either may be null)
void residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout, cudaStream_t stream = 0);

}  // namespace reftrain::cuda

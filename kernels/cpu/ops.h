// kernels/cpu/ops.h — the CPU reference ops: one forward and one backward per op, side by side.
//
// These functions ARE the math of the model: every other implementation (the CUDA kernels, the
// PyTorch mirror in tools/python/) must match them. Each op lives in its own .cpp with the formula
// in a comment and the backward directly below the forward.
//
// Conventions (read these once, they hold for every op):
// - Arguments are Tensor views; shapes are written next to each argument. N is the number of rows
//   (B*T for token-wise ops), C a channel count. Shapes and dtypes are checked on every call.
// - Float tensors are F32 or F64 (all float arguments of one call share a dtype). The F64 path is
//   the same template as the F32 one and exists so that gradient checks run in fp64.
// - Forward functions OVERWRITE their outputs.
// - Backward functions ADD (+=) into every gradient they produce, inputs and parameters alike, the
//   way autograd accumulates. Callers zero gradient buffers at the start of a cycle; forgetting to
//   is a classic bug (docs/failures/README.md: forgot-zero-grad), which `reftrain failure run forgot-zero-grad` shows.
// - A backward argument whose data pointer is null is skipped (no gradient wanted).
// - Work is split over output elements so every sum is computed by one thread in a fixed order:
//   results are bitwise identical for any OpenMP thread count (BLAS calls aside).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/rope_scaling.h"
#include "kernels/tensor.h"

namespace reftrain::cpu {

// ---- matmul (linear layer, no bias) through CBLAS --------------------------------------------------
// out = x @ weight^T, the layout of torch.nn.Linear.
void linear_forward(const Tensor& out,     // (N, OC)
                    const Tensor& x,       // (N, IC)
                    const Tensor& weight); // (OC, IC)
// dx += dout @ weight;  dweight += dout^T @ x
void linear_backward(const Tensor& dx,      // (N, IC)   may be null
                     const Tensor& dweight, // (OC, IC)  may be null
                     const Tensor& dout,    // (N, OC)
                     const Tensor& x,       // (N, IC)
                     const Tensor& weight); // (OC, IC)

// ---- embedding -------------------------------------------------------------------------------------
// out[n] = table[ids[n]]; an id outside [0, V) is an error naming the position and the id.
void embedding_forward(const Tensor& out,    // (N, C)
                       const Tensor& ids,    // (N) I64
                       const Tensor& table); // (V, C)
// dtable[ids[n]] += dout[n]
void embedding_backward(const Tensor& dtable, // (V, C)
                        const Tensor& dout,   // (N, C)
                        const Tensor& ids);   // (N) I64

// ---- RMSNorm -----------------------------------------------------------------------------------------
// rstd[n] = 1 / sqrt(mean_c(x[n,c]^2) + eps);  out[n,c] = x[n,c] * rstd[n] * weight[c]
// Also used per head for QK-norm, with x viewed as (B*T*H, head_dim).
void rmsnorm_forward(const Tensor& out,    // (N, C)
                     const Tensor& rstd,   // (N)    saved for backward
                     const Tensor& x,      // (N, C)
                     const Tensor& weight, // (C)
                     double eps);
void rmsnorm_backward(const Tensor& dx,      // (N, C)  may be null
                      const Tensor& dweight, // (C)     may be null
                      const Tensor& dout,    // (N, C)
                      const Tensor& x,       // (N, C)
                      const Tensor& weight,  // (C)
                      const Tensor& rstd);   // (N)

// ---- RoPE (HF rotate-half layout) ----------------------------------------------------------------------
// The D/2 inverse frequencies inv_freq[i] = theta^(-2i/D), then rescaled by `scaling` (linear or
// llama3, see kernels/rope_scaling.h). float32 numbers computed exactly as HF computes them, op by op
// (see rope.cpp: that is what HF checkpoints were trained with).
std::vector<float> rope_inverse_frequencies(int64_t head_dim, double theta, const RopeScaling& scaling = {});
// Fills the tables: angle[t, i] = t * inv_freq[i] for i < D/2 (inv_freq above), cos[t, i] =
// cos[t, i + D/2] = cos(angle[t, i]) (sin likewise). Angles are float32 products as in HF; cos/sin are
// float32-rounded values.
void rope_tables(const Tensor& cos,  // (T_max, D)
                 const Tensor& sin,  // (T_max, D)
                 double theta,
                 const RopeScaling& scaling = {},
                 bool exact_angles = false);  // true: inv_freq and angles in fp64 (see rope.cpp)
// out = x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[D/2:], x[:D/2]); position t = index
// along T (sequences start at position 0).
void rope_forward(const Tensor& out,  // (B, T, H, D)
                  const Tensor& x,    // (B, T, H, D)
                  const Tensor& cos,  // (T_max, D), T <= T_max
                  const Tensor& sin); // (T_max, D)
void rope_backward(const Tensor& dx,   // (B, T, H, D)
                   const Tensor& dout, // (B, T, H, D)
                   const Tensor& cos,  // (T_max, D)
                   const Tensor& sin); // (T_max, D)
// The argument checks both rope ops make (shapes, even D, T within the tables, one dtype), shared
// with the CUDA twins; `op` names the caller in the message.
void check_rope_args(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, const char* op);

// ---- causal self-attention with GQA ------------------------------------------------------------------
// Query head h reads key/value head h / (Hq / Hkv). scores[t, s] = q[t] . k[s] / sqrt(D) for s <= t;
// probs = softmax over s (entries above the diagonal are exactly 0); out[t] = sum_s probs[t, s] v[s].
void attention_forward(const Tensor& out,   // (B, T, Hq, D)
                       const Tensor& probs, // (B, Hq, T, T)  saved for backward
                       const Tensor& q,     // (B, T, Hq, D)
                       const Tensor& k,     // (B, T, Hkv, D)
                       const Tensor& v,     // (B, T, Hkv, D)
                       // (B, Hq) optional (null data = skip): max over t and s of the scores the softmax saw,
                       // the tracer's attn_logits_max, read off the softmax's own row maxima; NaN once a
                       // row's softmax went NaN
                       const Tensor& logits_max = Tensor());
void attention_backward(const Tensor& dq,    // (B, T, Hq, D)
                        const Tensor& dk,    // (B, T, Hkv, D)
                        const Tensor& dv,    // (B, T, Hkv, D)
                        const Tensor& dout,  // (B, T, Hq, D)
                        const Tensor& probs, // (B, Hq, T, T)
                        const Tensor& q,     // (B, T, Hq, D)
                        const Tensor& k,     // (B, T, Hkv, D)
                        const Tensor& v);    // (B, T, Hkv, D)
// Decode-time attention of one sequence against its KV cache (forward only; attention_decode.cpp).
// The L cached positions include the n new ones, which sit at positions p..p+n-1 with p = L - n.
// New query i (position p + i) reads cache positions s <= p + i, with the same scale and GQA mapping:
//   scores[i, s] = q[i] . k[s] / sqrt(D);  out[i] = sum_{s <= p+i} softmax_s(scores[i, :]) v[s]
// Sums run in fp64 in a fixed order, so the result does not depend on the thread count.
void attention_decode_forward(const Tensor& out,      // (n, Hq, D)
                              const Tensor& q,        // (n, Hq, D)   rotated queries of the new tokens
                              const Tensor& k_cache,  // (L, Hkv, D)  rotated keys, n <= L
                              const Tensor& v_cache); // (L, Hkv, D)

// ---- SwiGLU ------------------------------------------------------------------------------------------
// out = silu(gate) * up, silu(g) = g * sigmoid(g)
void swiglu_forward(const Tensor& out,  // (N, F)
                    const Tensor& gate, // (N, F)
                    const Tensor& up);  // (N, F)
void swiglu_backward(const Tensor& dgate, // (N, F)
                     const Tensor& dup,   // (N, F)
                     const Tensor& dout,  // (N, F)
                     const Tensor& gate,  // (N, F)
                     const Tensor& up);   // (N, F)

// ---- residual add --------------------------------------------------------------------------------------
// out = a + b
void residual_forward(const Tensor& out, const Tensor& a, const Tensor& b);  // all (N, C)
// da += dout; db += dout
void residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout);  // all (N, C)

// ---- fused softmax + cross-entropy with ignore index -------------------------------------------------
inline constexpr int64_t kIgnoreIndex = -100;  // the PyTorch / HF convention

struct CrossEntropyResult {
    double loss = 0.0;                  // mean over supervised rows; exactly 0 when there are none
    int64_t supervised_tokens = 0;      // rows whose target != kIgnoreIndex
    bool no_supervised_tokens = false;  // read by the invariant mask.has_supervised_tokens
};
// loss = mean over rows n with targets[n] != ignore of (logsumexp(logits[n]) - logits[n, targets[n]]).
// A target outside [0, V) that is not the ignore index is an error naming the row and the value.
CrossEntropyResult cross_entropy_forward(const Tensor& logsumexp, // (N)     saved for backward
                                         const Tensor& logits,    // (N, V)
                                         const Tensor& targets);  // (N) I64
// dlogits[n] += dloss * (softmax(logits[n]) - onehot(targets[n])) / supervised_tokens for supervised
// rows; ignored rows (and every row when nothing is supervised) get no gradient.
void cross_entropy_backward(const Tensor& dlogits,   // (N, V)
                            const Tensor& logits,    // (N, V)
                            const Tensor& logsumexp, // (N)
                            const Tensor& targets,   // (N) I64
                            double dloss);
// The per-row form, for reinforcement learning (train/grpo.cpp), from the logsumexp that
// cross_entropy_forward saved:
//   logprobs[n] = z[n, targets[n]] - lse[n] = log softmax(z[n])[targets[n]] = -CE_n   (0 at ignored rows)
// logprobs is F64 whatever the logits' dtype (the one exception to the shared-dtype rule): the RL loop
// sums log-probabilities and their differences (KL estimates) in fp64.
void cross_entropy_target_logprobs(const Tensor& logprobs,  // (N) F64
                                   const Tensor& logits,    // (N, V)
                                   const Tensor& logsumexp, // (N)
                                   const Tensor& targets);  // (N) I64
// The gradient of the weighted sum  L = sum_n weights[n] * CE_n  (no mean: the caller's weights carry
// any normalisation):  dlogits[n] += weights[n] * (softmax(z[n]) - onehot(targets[n])).
// weights is F64 (as above); a non-zero or non-finite weight on an ignored row is an error naming the
// row. backward(w_n = dloss / M on supervised rows) equals cross_entropy_backward to rounding.
void cross_entropy_weighted_backward(const Tensor& dlogits,   // (N, V)
                                     const Tensor& logits,    // (N, V)
                                     const Tensor& logsumexp, // (N)
                                     const Tensor& targets,   // (N) I64
                                     const Tensor& weights);  // (N) F64

// ---- mixed-precision emulation ------------------------------------------------------------------------
// Rounds every element of x (F32) in place to the nearest value of `precision` and back to F32:
// BF16 or F16 with round-to-nearest-even, F16 overflowing to +-inf past 65504 and keeping subnormals,
// exactly as PyTorch's x.to(torch.bfloat16 / torch.float16).float() does. F32 leaves x as it is.
// This is how the CPU reproduces a GPU's bf16/fp16 numerics: the model calls it at the points where a
// GPU kernel would write a bf16/fp16 tensor (docs/precision.md).
void round_to_precision(const Tensor& x, DType precision);

}  // namespace reftrain::cpu


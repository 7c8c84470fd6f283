// model/transformer.h — the Qwen3-style decoder (pre-norm, RMSNorm, RoPE, GQA, QK-norm, SwiGLU).
//
// Memory lives in four arenas, every tensor under a stable dotted name (DESIGN.md):
//   params()     HF names: "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", ...
//   grads()      the same names prefixed "grad:"; backward() ADDS into them, zero_grad() clears them
//   acts()       activations in execution order: "model.embed_tokens.out",
//                "model.layers.0.input_layernorm.out", ..., "logits", "loss"
//   act_grads()  "grad:" + activation name; cleared at the start of every backward()
// The batch shape (B, T) is fixed at construction so that every buffer is allocated once.
//
// One forward per layer (x is the residual stream, (B, T, d)):
//   h  = rmsnorm(x, input_layernorm)
//   q, k, v = h Wq^T, h Wk^T, h Wv^T                     viewed (B, T, heads, head_dim)
//   q, k = rmsnorm_per_head(q, q_norm), rmsnorm_per_head(k, k_norm)      only when qk_norm
//   q, k = rope(q), rope(k)
//   a  = causal_attention(q, k, v)                        GQA: Hq / Hkv query heads share a KV head
//   x  = x + a Wo^T                                       "attn_residual"
//   h  = rmsnorm(x, post_attention_layernorm)
//   x  = x + Wdown (silu(h Wgate^T) * h Wup^T)            "out"
// then logits = rmsnorm(x, model.norm) lm_head^T (lm_head = embed_tokens when tied), and the mean
// cross-entropy over supervised targets. backward() is the exact reverse, op by op.
//
// Debugging and numerics (docs/tracer.md): after every op of forward() and backward() a private hook,
// after_op(), (1) rounds the op's outputs to the emulated compute precision (set_precision: BF16/F16
// on an F32 model; F32 = no rounding) and (2) hands outputs and inputs to the FrameTracer when one is
// set (set_tracer). With neither set the hook does nothing and the numbers are bit-for-bit those of a
// model without it.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "debug/name_map.h"
#include "debug/op_clock.h"
#include "debug/tracer.h"
#include "kernels/arena.h"
#include "kernels/cpu/ops.h"
#include "model/config.h"
#include "model/layout.h"

namespace reftrain {

struct ForwardResult {
    double loss = 0.0;                  // mean CE over supervised tokens (0 when there are none)
    int64_t supervised_tokens = 0;
    bool no_supervised_tokens = false;  // see cross_entropy_forward
};

class Transformer {
public:
    // dtype F32 (training) or F64 (gradient checks and parity tests in double precision).
    Transformer(const ModelConfig& config, int64_t batch_size, int64_t seq_len, DType dtype = DType::F32);
    ~Transformer();
    Transformer(const Transformer&) = delete;
    Transformer& operator=(const Transformer&) = delete;

    const ModelConfig& config() const { return config_; }
    int64_t batch_size() const { return B_; }
    int64_t seq_len() const { return T_; }
    DType dtype() const { return dtype_; }

    Arena& params() { return params_; }
    Arena& grads() { return grads_; }
    Arena& acts() { return acts_; }
    Arena& act_grads() { return act_grads_; }
    // The targets of the last forward() (B * T, kIgnoreIndex where unsupervised); empty without targets.
    const std::vector<int64_t>& targets() const { return targets_; }
    const Arena& params() const { return params_; }
    const Arena& grads() const { return grads_; }
    const Arena& acts() const { return acts_; }
    Tensor& param(const std::string& name) { return params_.get(name); }
    Tensor& grad(const std::string& name) { return grads_.get("grad:" + name); }

    // The documented init (docs/model.md): every matrix ~ N(0, initializer_range), every RMSNorm
    // weight = 1, o_proj/down_proj = 0 when zero_init_output_projections. Each tensor draws from its
    // own stream Rng::for_name(seed, name), so the result depends only on (seed, name, shape).
    void init_weights(uint64_t seed);

    // input_ids (B, T) I64; targets (B, T) I64 aligned with the inputs (targets[b, t] is the token
    // to predict at position t, kIgnoreIndex = not supervised) or a Tensor with null data for no loss.
    ForwardResult forward(const Tensor& input_ids, const Tensor& targets);
    // Backpropagates loss_weight * (the loss of the last forward), ADDING into grads(). The last
    // forward must have had targets. Gradient accumulation passes its per-micro-batch weight here
    // (train/trainer.cpp); a loss scaler would pass its scale.
    void backward(double loss_weight = 1.0);
    void zero_grad() { grads_.zero(); }

    // Reinforcement learning (train/grpo.cpp), after a forward with targets:
    // target_logprobs()[n] = log p(targets[n] | the inputs up to n) for each of the B*T positions in
    // row-major order, 0 at ignored positions (cpu::cross_entropy_target_logprobs, from the saved
    // logsumexp and logits: no extra pass over the model).
    std::vector<double> target_logprobs() const;
    // Backpropagates  sum_n weights[n] * CE_n  (CE_n = -log p(targets[n]), weights (B*T), 0 at ignored
    // positions) of the last forward, ADDING into grads(): a per-token weighted loss such as the
    // policy-gradient loss -sum_t A_t log p_t. Same ops as backward() from the logits' gradient on.
    void backward_weighted(std::span<const double> weights);
    // The loss, target_logprobs() and both backwards score softmax(logits / t) instead of softmax(logits):
    // the distribution a sampler at temperature t draws from (GRPO's importance ratio needs the trainer
    // to score what the sampler sampled; train/grpo.cpp). The logits tensor then holds logits / t.
    // Default 1 (the logits untouched, bit for bit).
    void set_logit_temperature(double t);
    double logit_temperature() const { return logit_temperature_; }

    // Loads HF-named weights, converting dtype. Refuses a file with missing or unexpected names for
    // this config, naming them all. With tied embeddings an "lm_head.weight" in the file is accepted
    // only when it equals "model.embed_tokens.weight".
    void load_weights(const std::string& path);
    // The same from tensors already in memory (a checkpoint read through a name map,
    // debug/name_map.h); `source` names them in messages.
    void load_weights(const std::vector<NamedArray>& weights, const std::string& source);
    // Writes the parameters under their HF names (metadata format=pt, so transformers reads it).
    void save_weights(const std::string& path, DType store_dtype = DType::F32) const;

    int64_t num_parameters() const { return params_.numel(); }

    // The tracer every op reports to (not owned; null = off). Setting one also turns on the per-layer
    // diagnostic "model.layers.{i}.self_attn.attn_logits_max" (B, Hq): the largest pre-softmax logit
    // q.k/sqrt(D) over the (query, key) pairs the causal softmax sees, per batch row and head, taken from
    // the attention op's own row maxima; in trace_acts(), not in acts().
    void set_tracer(FrameTracer* tracer);
    FrameTracer* tracer() const { return tracer_; }
    const Arena& trace_acts() const { return trace_acts_; }

    // Emulated compute precision: F32 (default, no rounding), BF16 or F16, on F32 models only (an F64
    // model accepts F32 alone). fp32 master weights stay in params() and fp32 gradients in grads(); ops
    // read a rounded compute copy of the weights (compute_params(), refreshed by every forward) and
    // every activation and activation gradient is rounded when written. Rounding points: docs/tracer.md.
    void set_precision(DType compute);
    // Times every op of forward() and backward() into `clock` (debug/op_clock.h; not owned; null = off).
    void set_op_clock(OpClock* clock) { clock_ = clock; }
    DType precision() const { return precision_; }
    const Arena& compute_params() const { return compute_params_; }

private:
    void load_named(const std::string& source, const std::vector<std::string>& names,
                    const std::function<void(const std::string&, const Tensor&)>& read);
    using Layer = DecoderLayer;  // pointers into the arenas for one decoder layer (model/layout.h)
    void declare_tensors();
    void resolve_layers();
    // The weight an op computes with: the parameter itself, or its rounded compute copy.
    const Tensor& weight(const Tensor* param) const;
    void refresh_compute_weights();
    // Called after every op: rounds `rounded` to precision_, then traces `rounded`, `exact` (saved
    // statistics and fp32 parameter gradients, never rounded) and `inputs` (read only on a trip).
    void after_op(std::string_view op, std::initializer_list<const Tensor*> rounded,
                  std::initializer_list<const Tensor*> exact, std::initializer_list<const Tensor*> inputs);
    // backward() and backward_weighted() after the cross-entropy's gradient is in grad:logits.
    void backward_from_logits();

    ModelConfig config_;
    int64_t B_, T_;
    DType dtype_;
    Arena params_{"parameters"}, grads_{"gradients"}, acts_{"activations"}, act_grads_{"activation gradients"};
    Arena rope_{"rope tables"};
    std::vector<Layer> layers_;
    // The last forward's inputs, kept for backward (views of the caller's memory are not kept).
    std::vector<int64_t> input_ids_, targets_;
    bool have_targets_ = false;
    double logit_temperature_ = 1.0;

    FrameTracer* tracer_ = nullptr;
    OpClock* clock_ = nullptr;
    DType precision_ = DType::F32;
    Arena compute_params_{"compute weights"};         // allocated by the first set_precision(BF16/F16)
    Arena trace_acts_{"tracer activations"};          // attn_logits_max per layer; by the first set_tracer
};

}  // namespace reftrain

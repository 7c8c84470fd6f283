// model/generate.h — autoregressive inference with a KV cache, and sampling.
//
// An InferenceSession runs the SAME math as Transformer::forward (the same CPU ops, in the same
// order) on one sequence, one token at a time after the prompt, keeping each layer's rotated keys
// and values in a cache. Tests check that its logits equal a full recompute (the `kv-cache`
// diagnostic later uses the same comparison).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/random.h"
#include "model/transformer.h"

namespace reftrain {

class InferenceSession {
public:
    // Reads the parameters of `model` (which must outlive the session); max_len bounds prompt +
    // generated tokens (<= max_position_embeddings). F32 and F64 models are supported.
    InferenceSession(const Transformer& model, int64_t max_len);
    ~InferenceSession();
    InferenceSession(const InferenceSession&) = delete;
    InferenceSession& operator=(const InferenceSession&) = delete;

    void reset();                                   // empty the cache
    // Appends tokens at positions length()..; returns the logits (V) of the last one, as doubles.
    // Fails naming the id/position when an id is outside the vocabulary or max_len would be exceeded.
    const std::vector<double>& feed(const std::vector<int64_t>& ids);
    int64_t length() const;
    int64_t max_len() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

struct SamplingConfig {
    double temperature = 1.0;   // 0 = greedy (argmax, lowest id on ties)
    int64_t top_k = 0;          // 0 = no top-k
    int64_t max_new_tokens = 64;
    std::vector<int64_t> stop_ids;   // generation stops after emitting one of these (it is included)
};

struct Generation {
    std::vector<int64_t> ids;   // generated ids only (excluding the prompt)
    std::vector<double> logprobs;  // generate(): log of the probability the sampler gave each id (sampling_logprob)
    bool stopped = false;       // ended on a stop id (false: hit max_new_tokens or max_len)
};

// One token from `logits` (V) under `config` (temperature and top_k; the other fields are generate()'s).
// temperature 0: argmax, lowest id on ties, and nothing is drawn from `rng`. Otherwise the ids are
// restricted to the top_k largest logits (ties at the k-th value go to the lower id) and one
// rng.uniform() draw u picks the first id, in ascending id order, whose cumulative probability under
// softmax(logits / temperature) exceeds u (inverse CDF, in fp64). A NaN or +inf logit is an error.
int64_t sample_from_logits(const std::vector<double>& logits, const SamplingConfig& config, Rng& rng);
// log P(id) under the distribution sample_from_logits draws from: softmax(logits / temperature) over the
// top_k ids (-inf for an id top_k drops; greedy: 0 for the argmax, -inf otherwise). What a trainer's
// importance ratio must divide by (train/grpo.cpp: the sampler's log-probs of the sampled tokens).
double sampling_logprob(const std::vector<double>& logits, const SamplingConfig& config, int64_t id);

// Resets the session, feeds the prompt and samples. Sampling draws from `rng` only (deterministic).
// Generation ends after a stop id, after max_new_tokens, or when prompt + generated reaches max_len.
Generation generate(InferenceSession& session, const std::vector<int64_t>& prompt, const SamplingConfig& config,
                    Rng& rng);

// Batched generation as a server lays it out: the prompts are left-padded with `pad_id` to the longest,
// then decoded in lockstep, one token for every unfinished row per step, rows in order (so sampling draws
// from `rng` row by row within a step). Each row has a cache of its own and starts at its first real
// token: its positions count from 0 there and no pad is ever attended, so every row generates exactly
// what generate() gives for its prompt alone. `first_logits`, when given, receives each row's logits
// after its prompt (the batch's first prediction), for comparing with one-at-a-time decoding.
// BUG left-pad-positions: the pads are fed as tokens, so a short prompt's positions count from the first
// pad and it attends to the pads (a left-padded batch run without its attention mask and position ids).
std::vector<Generation> generate_batch(const Transformer& model, const std::vector<std::vector<int64_t>>& prompts,
                                       const SamplingConfig& config, int64_t pad_id, Rng& rng,
                                       std::vector<std::vector<double>>* first_logits = nullptr);

}  // namespace reftrain

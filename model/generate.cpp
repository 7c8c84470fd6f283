// model/generate.cpp — KV-cache inference on one sequence, and sampling (see generate.h).
//
// feed() is Transformer::forward (transformer.cpp) op for op, on the n new tokens only:
//   x = embed(ids);  per layer: h = rmsnorm(x); q, k, v = h W^T; q, k = qk_norm; q, k = rope at
//   positions p..p+n-1; k and v land in the cache rows p..p+n-1; a = attention_decode(q, cache);
//   x = x + a Wo^T; x = x + down(silu(gate) * up);  then logits = rmsnorm(x_last) lm_head^T.
// Every buffer is allocated once for max_len rows (the longest chunk feed() can be given), and the
// cache holds keys AFTER RoPE, so a cached key is never rotated again. The RoPE tables are built
// for max_len rows by the same rope_tables() as the model's, with the same RoPE scaling; each entry
// depends only on (t, i), so row t is bitwise the row the full forward uses.
//
// Nothing but `length` marks which cache rows are valid: a feed that fails half-way (a bad id is
// caught before any work, but an op could still throw) leaves `length` unchanged, and the rows it
// wrote are simply overwritten by the next feed.
#include "model/generate.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <numeric>
#include <string>

#include "kernels/bugs.h"
#include "model/layout.h"

namespace reftrain {

using namespace cpu;

namespace {

// A view of shape `dims` starting `first` elements into t: a row range of a buffer or of the cache.
Tensor view(const Tensor& t, int64_t first, std::initializer_list<int64_t> dims) {
    Tensor v(static_cast<std::byte*>(t.data) + first * static_cast<int64_t>(dtype_size(t.dtype)), t.dtype, dims,
             t.name);
    check(first >= 0 && first + v.numel() <= t.numel(), "generate.cpp: view of ", v.shape_str(), " at element ",
          first, " runs past the end of '", t.name, "' ", t.shape_str());
    return v;
}

}  // namespace

struct InferenceSession::Impl {
    // The model's parameters for one layer, and this session's cache for it.
    struct Layer : LayerWeights<const Tensor*> {
        Tensor *k_cache, *v_cache;  // (max_len, Hkv, D), keys rotated
    };

    const Transformer& model;
    ModelConfig config;
    int64_t max_len;
    int64_t length = 0;
    Arena buffers{"inference buffers"};
    std::vector<Layer> layers;
    std::vector<double> logits;  // (V) of the last token fed

    Impl(const Transformer& m, int64_t max_len_);
    void forward(const std::vector<int64_t>& ids);
};

InferenceSession::Impl::Impl(const Transformer& m, int64_t max_len_) : model(m), config(m.config()), max_len(max_len_) {
    const ModelConfig& c = config;
    check(max_len >= 1 && max_len <= c.max_position_embeddings, "InferenceSession: max_len ", max_len,
          " must be in [1, max_position_embeddings = ", c.max_position_embeddings, "]");
    const DType dt = model.dtype();
    check(dt == DType::F32 || dt == DType::F64, "InferenceSession: model dtype ", dtype_name(dt),
          " is not supported (F32 or F64)");
    const int64_t M = max_len, d = c.hidden_size, V = c.vocab_size, F = c.intermediate_size;
    const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;

    // Scratch rows for up to M new tokens; the cache per layer. Names mirror the model's activations.
    buffers.add("rope.cos", dt, {M, D});
    buffers.add("rope.sin", dt, {M, D});
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string p = layer_prefix(i) + "self_attn.";
        buffers.add(p + "k_cache", dt, {M, Hkv, D});
        buffers.add(p + "v_cache", dt, {M, Hkv, D});
    }
    buffers.add("residual", dt, {M, d});
    buffers.add("attn_residual", dt, {M, d});
    buffers.add("layernorm.out", dt, {M, d});
    buffers.add("layernorm.rstd", dt, {M});
    buffers.add("q_proj.out", dt, {M, Hq, D});
    buffers.add("k_proj.out", dt, {M, Hkv, D});
    buffers.add("q_normed", dt, {M, Hq, D});
    buffers.add("q_norm.rstd", dt, {M * Hq});
    buffers.add("k_normed", dt, {M, Hkv, D});
    buffers.add("k_norm.rstd", dt, {M * Hkv});
    buffers.add("q_rotary", dt, {M, Hq, D});
    buffers.add("attn_out", dt, {M, Hq, D});
    buffers.add("o_proj.out", dt, {M, d});
    buffers.add("mlp.gate_proj.out", dt, {M, F});
    buffers.add("mlp.up_proj.out", dt, {M, F});
    buffers.add("mlp.act", dt, {M, F});
    buffers.add("mlp.down_proj.out", dt, {M, d});
    buffers.add("model.norm.out", dt, {1, d});
    buffers.add("model.norm.rstd", dt, {1});
    buffers.add("logits", dt, {1, V});
    buffers.allocate();
    rope_tables(buffers.get("rope.cos"), buffers.get("rope.sin"), c.rope_theta, c.rope_scaling, c.exact_rope_angles);

    const Arena& params = model.params();
    layers.resize(c.num_hidden_layers);
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string p = layer_prefix(i);
        Layer& l = layers[i];
        static_cast<LayerWeights<const Tensor*>&>(l) =
            resolve_layer_weights(c, i, [&](const std::string& name) { return &params.get(name); });
        l.k_cache = &buffers.get(p + "self_attn.k_cache");
        l.v_cache = &buffers.get(p + "self_attn.v_cache");
    }
}

// Runs the n new tokens at positions length..length+n-1 (ids already validated) and fills `logits`.
void InferenceSession::Impl::forward(const std::vector<int64_t>& ids) {
    const ModelConfig& c = config;
    const int64_t n = static_cast<int64_t>(ids.size()), p = length, d = c.hidden_size, V = c.vocab_size;
    const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
    const int64_t F = c.intermediate_size, L = p + n;
    const Arena& params = model.params();
    auto B = [&](const char* name) -> Tensor& { return buffers.get(name); };
    const Tensor ids_view(const_cast<int64_t*>(ids.data()), DType::I64, {n}, "input_ids");
    // RoPE rows p.. : rope_forward rotates its row t with table row t, so the table starts at p.
    // BUG kv-cache-mismatch: the new tokens are rotated from position 0, as if the cache were empty.
    const int64_t first_row = bugs().kv_cache_mismatch ? 0 : p;
    const Tensor cos = view(B("rope.cos"), first_row * D, {max_len - first_row, D});
    const Tensor sin = view(B("rope.sin"), first_row * D, {max_len - first_row, D});
    const Tensor x = view(B("residual"), 0, {n, d});
    const Tensor x_mid = view(B("attn_residual"), 0, {n, d});
    const Tensor h = view(B("layernorm.out"), 0, {n, d});
    const Tensor h_rstd = view(B("layernorm.rstd"), 0, {n});
    const Tensor q = view(B("q_proj.out"), 0, {n, Hq * D});
    const Tensor k = view(B("k_proj.out"), 0, {n, Hkv * D});
    const Tensor q_normed = view(B("q_normed"), 0, {n * Hq, D});
    const Tensor q_rstd = view(B("q_norm.rstd"), 0, {n * Hq});
    const Tensor k_normed = view(B("k_normed"), 0, {n * Hkv, D});
    const Tensor k_rstd = view(B("k_norm.rstd"), 0, {n * Hkv});
    const Tensor q_rotary = view(B("q_rotary"), 0, {1, n, Hq, D});
    const Tensor attn_out = view(B("attn_out"), 0, {n, Hq, D});
    const Tensor o_out = view(B("o_proj.out"), 0, {n, d});
    const Tensor gate = view(B("mlp.gate_proj.out"), 0, {n, F});
    const Tensor up = view(B("mlp.up_proj.out"), 0, {n, F});
    const Tensor act = view(B("mlp.act"), 0, {n, F});
    const Tensor down = view(B("mlp.down_proj.out"), 0, {n, d});

    embedding_forward(x, ids_view, params.get("model.embed_tokens.weight"));
    for (Layer& l : layers) {
        const Tensor k_new = view(*l.k_cache, p * Hkv * D, {1, n, Hkv, D});  // rows p..p+n-1
        const Tensor v_new = view(*l.v_cache, p * Hkv * D, {n, Hkv * D});
        rmsnorm_forward(h, h_rstd, x, *l.input_layernorm, c.rms_norm_eps);
        linear_forward(q, h, *l.q_proj);
        linear_forward(k, h, *l.k_proj);
        linear_forward(v_new, h, *l.v_proj);  // v needs no rotation: straight into the cache
        Tensor q_in = q.reshaped({1, n, Hq, D}), k_in = k.reshaped({1, n, Hkv, D});
        if (c.qk_norm) {
            rmsnorm_forward(q_normed, q_rstd, q.reshaped({n * Hq, D}), *l.q_norm, c.rms_norm_eps);
            rmsnorm_forward(k_normed, k_rstd, k.reshaped({n * Hkv, D}), *l.k_norm, c.rms_norm_eps);
            q_in = q_normed.reshaped({1, n, Hq, D});
            k_in = k_normed.reshaped({1, n, Hkv, D});
        }
        rope_forward(q_rotary, q_in, cos, sin);
        rope_forward(k_new, k_in, cos, sin);
        attention_decode_forward(attn_out, q_rotary.reshaped({n, Hq, D}), view(*l.k_cache, 0, {L, Hkv, D}),
                                 view(*l.v_cache, 0, {L, Hkv, D}));
        linear_forward(o_out, attn_out.reshaped({n, Hq * D}), *l.o_proj);
        residual_forward(x_mid, x, o_out);
        rmsnorm_forward(h, h_rstd, x_mid, *l.post_attention_layernorm, c.rms_norm_eps);
        linear_forward(gate, h, *l.gate_proj);
        linear_forward(up, h, *l.up_proj);
        swiglu_forward(act, gate, up);
        linear_forward(down, act, *l.down_proj);
        residual_forward(x, x_mid, down);  // the layer's output becomes the next layer's input
    }
    // Only the last token's logits are wanted; the final norm and lm_head are per row, so running
    // them on that row alone is the same math as the full forward's last row.
    const Tensor& lm_head = params.get(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    Tensor& normed = B("model.norm.out");
    rmsnorm_forward(normed, B("model.norm.rstd"), view(x, (n - 1) * d, {1, d}), params.get("model.norm.weight"),
                    c.rms_norm_eps);
    Tensor& out = B("logits");
    linear_forward(out, normed, lm_head);
    logits.resize(V);
    dispatch_float(out.dtype, "InferenceSession::feed", [&](auto tag) {
        const auto* values = out.ptr<decltype(tag)>();
        for (int64_t v = 0; v < V; ++v) logits[v] = static_cast<double>(values[v]);
    });
    length = L;
}

InferenceSession::InferenceSession(const Transformer& model, int64_t max_len)
    : impl_(std::make_unique<Impl>(model, max_len)) {}

InferenceSession::~InferenceSession() = default;

void InferenceSession::reset() {
    impl_->length = 0;
    impl_->logits.clear();
}

int64_t InferenceSession::length() const { return impl_->length; }
int64_t InferenceSession::max_len() const { return impl_->max_len; }

const std::vector<double>& InferenceSession::feed(const std::vector<int64_t>& ids) {
    Impl& s = *impl_;
    const int64_t n = static_cast<int64_t>(ids.size()), V = s.config.vocab_size;
    check(n >= 1, "InferenceSession::feed: no token ids given (at position ", s.length, ")");
    check(s.length + n <= s.max_len, "InferenceSession::feed: ", n, " tokens at positions ", s.length, "..",
          s.length + n - 1, " exceed max_len = ", s.max_len, " (", s.max_len - s.length, " positions left)");
    // Checked here, before any op runs, so the message names the position in the whole sequence.
    for (int64_t i = 0; i < n; ++i) {
        check(ids[i] >= 0 && ids[i] < V, "InferenceSession::feed: token id ", ids[i], " at position ", s.length + i,
              " is outside the vocabulary [0, ", V, ")");
    }
    s.forward(ids);
    return s.logits;
}

// ---- sampling ---------------------------------------------------------------------------------------

namespace {

// The sampler's distribution over ids, unnormalised: weights[v] = exp((logits[v] - max) / temperature)
// for the ids top_k keeps, 0 for the others; `best` is the argmax (lowest id on ties). Temperature 0
// leaves weights empty (greedy).
struct SamplingWeights {
    std::vector<double> weights;
    double total = 0.0;
    int64_t best = 0;
};

SamplingWeights sampling_weights(const std::vector<double>& logits, const SamplingConfig& config, const char* who) {
    const int64_t V = static_cast<int64_t>(logits.size());
    check(V >= 1, who, ": the logits are empty");
    check(std::isfinite(config.temperature) && config.temperature >= 0.0, who, ": temperature ", config.temperature,
          " must be finite and >= 0 (0 = greedy)");
    check(config.top_k >= 0, who, ": top_k ", config.top_k, " must be >= 0 (0 = no top-k)");
    SamplingWeights w;
    for (int64_t v = 0; v < V; ++v) {  // strict '>' keeps the lowest id among equal maxima
        check(!std::isnan(logits[v]) && logits[v] != INFINITY, who, ": the logit of id ", v, " is ", logits[v],
              "; logits must be finite (or -inf for a banned id)");
        if (logits[v] > logits[w.best]) w.best = v;
    }
    check(logits[w.best] != -INFINITY, who, ": every logit is -inf, nothing can be sampled");
    if (config.temperature == 0.0) return w;

    // Top-k: order by (logit descending, id ascending) so ties at the k-th value go to the lower id.
    std::vector<char> kept(V, 1);
    if (config.top_k > 0 && config.top_k < V) {
        std::vector<int64_t> order(V);
        std::iota(order.begin(), order.end(), int64_t{0});
        std::partial_sort(order.begin(), order.begin() + config.top_k, order.end(), [&](int64_t a, int64_t b) {
            return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
        });
        std::fill(kept.begin(), kept.end(), 0);
        for (int64_t i = 0; i < config.top_k; ++i) kept[order[i]] = 1;
    }
    // Unnormalised softmax weights (max subtracted).
    w.weights.assign(V, 0.0);
    for (int64_t v = 0; v < V; ++v) {
        if (kept[v]) w.weights[v] = std::exp((logits[v] - logits[w.best]) / config.temperature);
        w.total += w.weights[v];
    }
    return w;
}

}  // namespace

int64_t sample_from_logits(const std::vector<double>& logits, const SamplingConfig& config, Rng& rng) {
    const SamplingWeights w = sampling_weights(logits, config, "sample_from_logits");
    if (config.temperature == 0.0) return w.best;
    // u * total is compared with the running sum instead of dividing every weight, which is the same
    // inverse CDF with one rounding fewer.
    const double target = rng.uniform() * w.total;
    double cumulative = 0.0;
    int64_t last = w.best;
    for (int64_t v = 0; v < static_cast<int64_t>(w.weights.size()); ++v) {
        if (w.weights[v] == 0.0) continue;  // a dropped or -inf id can never be chosen
        cumulative += w.weights[v];
        last = v;
        if (target < cumulative) return v;
    }
    return last;  // u * total rounded up to the full sum: the last id with weight
}

double sampling_logprob(const std::vector<double>& logits, const SamplingConfig& config, int64_t id) {
    const SamplingWeights w = sampling_weights(logits, config, "sampling_logprob");
    check(id >= 0 && id < static_cast<int64_t>(logits.size()), "sampling_logprob: id ", id, " is outside [0, ",
          logits.size(), ")");
    if (config.temperature == 0.0) return id == w.best ? 0.0 : -INFINITY;
    return std::log(w.weights[id] / w.total);
}

Generation generate(InferenceSession& session, const std::vector<int64_t>& prompt, const SamplingConfig& config,
                    Rng& rng) {
    check(!prompt.empty(), "generate: the prompt is empty; at least one token is needed to predict the next");
    check(config.max_new_tokens >= 0, "generate: max_new_tokens ", config.max_new_tokens, " must be >= 0");
    check(std::isfinite(config.temperature) && config.temperature >= 0.0, "generate: temperature ",
          config.temperature, " must be finite and >= 0 (0 = greedy)");
    check(config.top_k >= 0, "generate: top_k ", config.top_k, " must be >= 0 (0 = no top-k)");
    session.reset();
    const std::vector<double>* logits = &session.feed(prompt);
    Generation result;
    const int64_t room = session.max_len() - static_cast<int64_t>(prompt.size());  // positions left
    const int64_t limit = std::min(config.max_new_tokens, room);
    while (static_cast<int64_t>(result.ids.size()) < limit) {
        const int64_t id = sample_from_logits(*logits, config, rng);
        result.ids.push_back(id);
        result.logprobs.push_back(sampling_logprob(*logits, config, id));
        if (std::find(config.stop_ids.begin(), config.stop_ids.end(), id) != config.stop_ids.end()) {
            result.stopped = true;
            break;
        }
        // The last token is never fed: nothing would read its logits, and it may sit at max_len - 1.
        if (static_cast<int64_t>(result.ids.size()) < limit) logits = &session.feed({id});
    }
    return result;
}

std::vector<Generation> generate_batch(const Transformer& model, const std::vector<std::vector<int64_t>>& prompts,
                                       const SamplingConfig& config, int64_t pad_id, Rng& rng,
                                       std::vector<std::vector<double>>* first_logits) {
    check(!prompts.empty(), "generate_batch: no prompts");
    check(config.max_new_tokens >= 0, "generate_batch: max_new_tokens ", config.max_new_tokens, " must be >= 0");
    size_t longest = 0;
    for (size_t r = 0; r < prompts.size(); ++r) {
        check(!prompts[r].empty(), "generate_batch: prompt ", r, " is empty; at least one token is needed");
        longest = std::max(longest, prompts[r].size());
    }
    const int64_t max_len = std::min<int64_t>(model.config().max_position_embeddings,
                                              static_cast<int64_t>(longest) + config.max_new_tokens);
    const size_t R = prompts.size();
    std::vector<std::unique_ptr<InferenceSession>> sessions(R);
    std::vector<const std::vector<double>*> logits(R);
    for (size_t r = 0; r < R; ++r) {
        sessions[r] = std::make_unique<InferenceSession>(model, max_len);
        // The row as laid out in the batch: pads first, then the prompt.
        std::vector<int64_t> row(longest - prompts[r].size(), pad_id);
        row.insert(row.end(), prompts[r].begin(), prompts[r].end());
        // BUG left-pad-positions: the whole padded row is fed, pads included.
        logits[r] = &sessions[r]->feed(bugs().left_pad_positions ? row : prompts[r]);
        if (first_logits) first_logits->push_back(*logits[r]);
    }
    std::vector<Generation> results(R);
    std::vector<bool> done(R, false);
    for (int64_t step = 0; step < config.max_new_tokens; ++step) {
        bool any = false;
        for (size_t r = 0; r < R; ++r) {
            if (done[r]) continue;
            if (sessions[r]->length() >= sessions[r]->max_len()) {
                done[r] = true;
                continue;
            }
            const int64_t id = sample_from_logits(*logits[r], config, rng);
            results[r].ids.push_back(id);
            if (std::find(config.stop_ids.begin(), config.stop_ids.end(), id) != config.stop_ids.end()) {
                results[r].stopped = true;
                done[r] = true;
                continue;
            }
            if (step + 1 < config.max_new_tokens && sessions[r]->length() < sessions[r]->max_len()) {
                logits[r] = &sessions[r]->feed({id});
                any = true;
            } else {
                done[r] = true;
            }
        }
        if (!any) break;
    }
    return results;
}

}  // namespace reftrain

// tests/test_generate.cpp — KV-cache inference against a full recompute, and sampling.
//
// The KV-cache tests feed a prompt (whole or in chunks) and then one token at a time, and after every
// feed compare the session's logits with Transformer::forward run over the whole prefix with the same
// weights. The sampling tests pin the contract of generate.h: greedy = argmax with the lowest id on
// ties, top_k ties go to the lower id, one uniform draw per sampled token, frequencies that match the
// softmax, stop ids, max_new_tokens and max_len.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/bugs.h"
#include "kernels/random.h"
#include "model/generate.h"
#include "model/transformer.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

// GQA (4 query heads on 2 KV heads) with QK-norm; head_dim 6 != 16 / 4.
ModelConfig gqa_config() {
    ModelConfig c = testing::tiny_model_config();
    c.max_position_embeddings = 12;
    return c;
}

// Llama-style: no QK-norm, tied embeddings, one KV head for two query heads, head_dim 10 != 16 / 2.
ModelConfig llama_tied_config() {
    ModelConfig c = gqa_config();
    c.qk_norm = false;
    c.tie_word_embeddings = true;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = 10;
    return c;
}

// A model of batch 1 (the session ignores the batch shape), random weights, norm weights moved away
// from 1 so that a norm applied to the wrong tensor would show.
void randomize(Transformer& model, uint64_t seed) {
    model.init_weights(seed);
    Rng rng(seed + 100);
    for (size_t i = 0; i < model.params().size(); ++i) {
        Tensor& p = model.params().at(i);
        if (p.ndim != 1) continue;
        dispatch_float(p.dtype, "randomize", [&](auto tag) {
            using T = decltype(tag);
            for (int64_t j = 0; j < p.numel(); ++j) p.ptr<T>()[j] = static_cast<T>(1.0 + 0.3 * rng.normal());
        });
    }
}

// Logits of the last position of `ids` from a fresh Transformer(B=1, T=ids.size()) holding the same
// parameter bytes: the arena layout depends only on (config, dtype), so a memcpy copies every tensor.
std::vector<double> full_recompute_logits(const Transformer& model, const std::vector<int64_t>& ids) {
    const int64_t T = static_cast<int64_t>(ids.size()), V = model.config().vocab_size;
    Transformer reference(model.config(), 1, T, model.dtype());
    EXPECT_EQ(reference.params().nbytes(), model.params().nbytes());
    std::memcpy(reference.params().data(), model.params().data(), model.params().nbytes());
    std::vector<int64_t> input = ids;
    reference.forward(Tensor(input.data(), DType::I64, {1, T}, "input_ids"), Tensor());
    const Tensor& logits = reference.acts().get("logits");
    std::vector<double> last(V);
    dispatch_float(logits.dtype, "full_recompute_logits", [&](auto tag) {
        const auto* row = logits.ptr<decltype(tag)>() + (T - 1) * V;
        for (int64_t v = 0; v < V; ++v) last[v] = static_cast<double>(row[v]);
    });
    return last;
}

// max_v |got - want| / max_v |want|
double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
    double diff = 0.0, scale = 0.0;
    for (size_t v = 0; v < want.size(); ++v) {
        diff = std::max(diff, std::abs(got[v] - want[v]));
        scale = std::max(scale, std::abs(want[v]));
    }
    return diff / scale;
}

std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
    Rng rng(seed);
    std::vector<int64_t> ids(n);
    for (auto& id : ids) id = static_cast<int64_t>(rng.below(vocab));
    return ids;
}

// Feeds `sequence[0:prompt_length]` in chunks of `chunk` tokens, then the rest one token at a time,
// comparing after every feed with a full recompute of the prefix. Returns the largest relative error.
double worst_kv_cache_error(const Transformer& model, const std::vector<int64_t>& sequence, int64_t prompt_length,
                            int64_t chunk) {
    InferenceSession session(model, static_cast<int64_t>(sequence.size()));
    double worst = 0.0;
    int64_t fed = 0;
    while (fed < static_cast<int64_t>(sequence.size())) {
        const int64_t n = fed < prompt_length ? std::min(chunk, prompt_length - fed) : 1;
        const std::vector<int64_t> piece(sequence.begin() + fed, sequence.begin() + fed + n);
        const std::vector<double> logits = session.feed(piece);
        fed += n;
        EXPECT_EQ(session.length(), fed);
        const std::vector<int64_t> prefix(sequence.begin(), sequence.begin() + fed);
        worst = std::max(worst, relative_error(logits, full_recompute_logits(model, prefix)));
    }
    return worst;
}

// Runs fn and expects an Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
    try {
        fn();
        ADD_FAILURE() << "expected an error containing '" << parts.front() << "'";
    } catch (const Error& e) {
        for (const std::string& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
}

// ---- (1) KV cache == full recompute ---------------------------------------------------------------

// In fp64 the two paths differ only by summation order (BLAS vs the fp64 loops of
// attention_decode_forward): measured ~1e-15, bound 1e-12.
TEST(KvCache, MatchesFullRecomputeF64GQAWithQKNorm) {
    Transformer model(gqa_config(), 1, 1, DType::F64);
    randomize(model, 11);
    const std::vector<int64_t> sequence = random_ids(12, 23, 12);  // fills max_position_embeddings
    for (int64_t chunk : {1, 3, 7}) {
        EXPECT_LT(worst_kv_cache_error(model, sequence, 7, chunk), 1e-12) << "prompt chunk " << chunk;
    }
}

TEST(KvCache, MatchesFullRecomputeF64LlamaStyleTied) {
    Transformer model(llama_tied_config(), 1, 1, DType::F64);
    randomize(model, 21);
    const std::vector<int64_t> sequence = random_ids(12, 23, 22);
    for (int64_t chunk : {1, 3, 7}) {
        EXPECT_LT(worst_kv_cache_error(model, sequence, 7, chunk), 1e-12) << "prompt chunk " << chunk;
    }
}

// In fp32 the full forward rounds every attention product to fp32 while the decode op accumulates
// in fp64, and BLAS blocks differently for 1 row than for T rows. Measured worst relative error
// over both configs and all chunkings: 7.2e-7; bound 1e-5. How the prompt is chunked (1, 3 or all 7
// tokens per feed) must not matter beyond that rounding.
TEST(KvCache, MatchesFullRecomputeF32InAnyChunking) {
    for (const ModelConfig& config : {gqa_config(), llama_tied_config()}) {
        Transformer model(config, 1, 1, DType::F32);
        randomize(model, 31);
        const std::vector<int64_t> sequence = random_ids(12, 23, 32);
        for (int64_t chunk : {1, 3, 7}) {
            EXPECT_LT(worst_kv_cache_error(model, sequence, 7, chunk), 1e-5)
                << "qk_norm " << config.qk_norm << ", prompt chunk " << chunk;
        }
    }
}

// With RoPE scaling the session builds its tables with the same scaled frequencies as the model.
// llama3 with L = 400 (theta 1e4) puts head_dim 6's wavelengths 6.3 / 135 / 2916 and head_dim 10's
// 6.3, 40 / 250 / 1579, 9935 in the kept / blended / divided bands (L/4 = 100, L = 400).
// Same bounds as the unscaled tests: fp64 1e-12, fp32 1e-5.
TEST(KvCache, MatchesFullRecomputeWithRopeScaling) {
    RopeScaling llama3;
    llama3.type = RopeScaling::Type::llama3;
    llama3.factor = 8.0;
    llama3.low_freq_factor = 1.0;
    llama3.high_freq_factor = 4.0;
    llama3.original_max_position_embeddings = 400;
    RopeScaling linear;
    linear.type = RopeScaling::Type::linear;
    linear.factor = 3.0;
    for (const RopeScaling& scaling : {llama3, linear}) {
        for (ModelConfig config : {gqa_config(), llama_tied_config()}) {
            config.rope_scaling = scaling;
            for (DType dtype : {DType::F64, DType::F32}) {
                Transformer model(config, 1, 1, dtype);
                randomize(model, 81);
                const std::vector<int64_t> sequence = random_ids(12, 23, 82);
                for (int64_t chunk : {1, 7}) {
                    EXPECT_LT(worst_kv_cache_error(model, sequence, 7, chunk), dtype == DType::F64 ? 1e-12 : 1e-5)
                        << rope_type_name(scaling.type) << ", qk_norm " << config.qk_norm << ", "
                        << dtype_name(dtype) << ", chunk " << chunk;
                }
            }
        }
    }
    // The scaling reaches the session: its logits differ from an unscaled model's with the same weights.
    ModelConfig config = gqa_config();
    Transformer plain(config, 1, 1, DType::F64);
    randomize(plain, 91);
    config.rope_scaling = linear;
    Transformer scaled(config, 1, 1, DType::F64);
    std::memcpy(scaled.params().data(), plain.params().data(), plain.params().nbytes());
    const std::vector<int64_t> sequence = random_ids(12, 23, 92);
    InferenceSession plain_session(plain, 12), scaled_session(scaled, 12);
    EXPECT_EQ(plain_session.feed({sequence[0]}), scaled_session.feed({sequence[0]}));  // position 0: angle 0
    const std::vector<int64_t> rest(sequence.begin() + 1, sequence.end());
    EXPECT_GT(relative_error(scaled_session.feed(rest), plain_session.feed(rest)), 1e-3);
}

TEST(KvCache, ResetGivesBitwiseTheSameLogits) {
    Transformer model(gqa_config(), 1, 1, DType::F32);
    randomize(model, 41);
    InferenceSession session(model, 12);
    const std::vector<int64_t> prompt = random_ids(5, 23, 42);
    const std::vector<double> first = session.feed(prompt);
    session.feed({3});
    session.reset();
    EXPECT_EQ(session.length(), 0);
    EXPECT_EQ(session.feed(prompt), first);
}

// ---- (2)-(6) sampling ---------------------------------------------------------------------------

TEST(Generate, GreedyPicksTheArgmaxWithLowestIdOnTies) {
    SamplingConfig greedy;
    greedy.temperature = 0.0;
    Rng rng(1);
    EXPECT_EQ(sample_from_logits({0.1, 2.0, -1.0, 2.0, 0.5}, greedy, rng), 1);
    EXPECT_EQ(sample_from_logits({-3.0, -2.0, -INFINITY}, greedy, rng), 1);
    EXPECT_EQ(rng.state(), Rng(1).state()) << "greedy decoding must not draw from the rng";

    // Through the model: every generated id is the argmax of a full recompute of its prefix.
    Transformer model(gqa_config(), 1, 1, DType::F64);
    randomize(model, 51);
    InferenceSession session(model, 12);
    const std::vector<int64_t> prompt = random_ids(4, 23, 52);
    greedy.max_new_tokens = 6;
    const Generation g = generate(session, prompt, greedy, rng);
    ASSERT_EQ(g.ids.size(), 6u);
    EXPECT_FALSE(g.stopped);
    std::vector<int64_t> prefix = prompt;
    for (int64_t id : g.ids) {
        const std::vector<double> logits = full_recompute_logits(model, prefix);
        EXPECT_EQ(id, std::max_element(logits.begin(), logits.end()) - logits.begin());
        prefix.push_back(id);
    }
}

TEST(Generate, SameSeedSameSampleDifferentSeedsDiffer) {
    Transformer model(gqa_config(), 1, 1, DType::F32);
    randomize(model, 61);
    InferenceSession session(model, 12);
    const std::vector<int64_t> prompt = random_ids(2, 23, 62);
    SamplingConfig config;  // temperature 1, no top-k
    config.max_new_tokens = 10;
    auto sample = [&](uint64_t seed) {
        Rng rng(seed);
        return generate(session, prompt, config, rng).ids;
    };
    const std::vector<int64_t> a = sample(7), b = sample(7), c = sample(8);
    ASSERT_EQ(a.size(), 10u);
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c) << "seeds 7 and 8 gave the same 10 tokens";

    // One uniform draw per sampled token, nothing else.
    Rng rng(7), counter(7);
    generate(session, prompt, config, rng);
    for (int i = 0; i < 10; ++i) counter.uniform();
    EXPECT_EQ(rng.state(), counter.state());
}

TEST(Generate, TopKOneEqualsGreedyAtAnyTemperature) {
    Transformer model(llama_tied_config(), 1, 1, DType::F32);
    randomize(model, 71);
    InferenceSession session(model, 12);
    const std::vector<int64_t> prompt = random_ids(3, 23, 72);
    SamplingConfig greedy;
    greedy.temperature = 0.0;
    greedy.max_new_tokens = 8;
    Rng rng(1);
    const std::vector<int64_t> expected = generate(session, prompt, greedy, rng).ids;
    for (double temperature : {0.1, 1.0, 5.0, 1000.0}) {
        SamplingConfig top1 = greedy;
        top1.temperature = temperature;
        top1.top_k = 1;
        Rng other(static_cast<uint64_t>(temperature * 10));
        EXPECT_EQ(generate(session, prompt, top1, other).ids, expected) << "temperature " << temperature;
    }
    // Ties at the k-th value go to the lower id.
    SamplingConfig tied;
    tied.top_k = 1;
    tied.temperature = 3.0;
    for (uint64_t seed = 0; seed < 20; ++seed) {
        Rng r(seed);
        EXPECT_EQ(sample_from_logits({0.0, 4.0, 1.0, 4.0}, tied, r), 1);
    }
}

// Empirical frequencies over 200000 draws against the exact probabilities. The count of id i is
// Binomial(N, p_i), so its frequency has standard deviation sqrt(p_i (1 - p_i) / N) <= 0.0012; the
// bound is 5 of those (the seed is fixed, so the test is deterministic, but a wrong CDF walk, a
// missing temperature or an off-by-one top-k moves some frequency by far more).
void expect_frequencies(const std::vector<double>& logits, const SamplingConfig& config,
                        const std::vector<double>& expected, uint64_t seed) {
    const int N = 200000;
    std::vector<int> counts(logits.size(), 0);
    Rng rng(seed);
    for (int i = 0; i < N; ++i) counts[sample_from_logits(logits, config, rng)]++;
    for (size_t v = 0; v < logits.size(); ++v) {
        const double frequency = static_cast<double>(counts[v]) / N, p = expected[v];
        if (p == 0.0) {
            EXPECT_EQ(counts[v], 0) << "id " << v << " is outside the top-k but was sampled";
        } else {
            EXPECT_NEAR(frequency, p, 5.0 * std::sqrt(p * (1.0 - p) / N))
                << "id " << v << ", temperature " << config.temperature << ", top_k " << config.top_k;
        }
    }
}

std::vector<double> softmax(const std::vector<double>& logits, double temperature, const std::vector<bool>& kept) {
    std::vector<double> p(logits.size(), 0.0);
    double sum = 0.0;
    for (size_t v = 0; v < logits.size(); ++v) sum += kept[v] ? std::exp(logits[v] / temperature) : 0.0;
    for (size_t v = 0; v < logits.size(); ++v) p[v] = kept[v] ? std::exp(logits[v] / temperature) / sum : 0.0;
    return p;
}

TEST(Generate, FrequenciesMatchTheSoftmax) {
    const std::vector<double> logits = {1.0, 0.0, 2.5, -0.5};
    SamplingConfig plain;  // temperature 1
    expect_frequencies(logits, plain, softmax(logits, 1.0, {true, true, true, true}), 3);
    SamplingConfig hot;
    hot.temperature = 2.0;
    expect_frequencies(logits, hot, softmax(logits, 2.0, {true, true, true, true}), 4);
    SamplingConfig top2;
    top2.top_k = 2;  // keeps ids 2 and 0
    expect_frequencies(logits, top2, softmax(logits, 1.0, {true, false, true, false}), 5);
    // A tie at the k-th value: ids 2 and 4 both have logit 1; top_k 3 keeps 1, 3 and the lower id 2.
    const std::vector<double> tied = {0.0, 3.0, 1.0, 3.0, 1.0};
    SamplingConfig top3;
    top3.top_k = 3;
    expect_frequencies(tied, top3, softmax(tied, 1.0, {false, true, true, true, false}), 6);
}

// sampling_logprob is the log of the probability sample_from_logits draws with: the softmax at the
// temperature over the top-k ids, -inf for a dropped id, and generate() records it for every token.
TEST(Generate, SamplingLogprobIsTheLogOfWhatTheSamplerDrawsWith) {
    const std::vector<double> logits = {1.0, 0.0, 2.5, -0.5};
    for (double t : {1.0, 0.7, 2.0}) {
        SamplingConfig c;
        c.temperature = t;
        const std::vector<double> p = softmax(logits, t, {true, true, true, true});
        for (int64_t id = 0; id < 4; ++id) EXPECT_NEAR(sampling_logprob(logits, c, id), std::log(p[id]), 1e-14) << t;
    }
    SamplingConfig top2;
    top2.top_k = 2;  // keeps ids 2 and 0
    const std::vector<double> p2 = softmax(logits, 1.0, {true, false, true, false});
    EXPECT_NEAR(sampling_logprob(logits, top2, 2), std::log(p2[2]), 1e-14);
    EXPECT_EQ(sampling_logprob(logits, top2, 1), -INFINITY);
    SamplingConfig greedy;
    greedy.temperature = 0.0;
    EXPECT_EQ(sampling_logprob(logits, greedy, 2), 0.0);
    EXPECT_EQ(sampling_logprob(logits, greedy, 0), -INFINITY);
    expect_error([&] { sampling_logprob(logits, top2, 4); }, {"sampling_logprob: id 4 is outside [0, 4)"});

    Transformer model(gqa_config(), 1, 1, DType::F32);
    model.init_weights(3);
    InferenceSession session(model, 12);
    SamplingConfig hot;
    hot.temperature = 0.7;
    hot.max_new_tokens = 6;
    Rng rng(9);
    const Generation g = generate(session, {1, 2, 3}, hot, rng);
    ASSERT_EQ(g.logprobs.size(), g.ids.size());
    // Replay: feed the same tokens and recompute each log-prob from the session's logits.
    session.reset();
    std::vector<int64_t> fed = {1, 2, 3};
    const std::vector<double>* next = &session.feed(fed);
    for (size_t i = 0; i < g.ids.size(); ++i) {
        EXPECT_EQ(g.logprobs[i], sampling_logprob(*next, hot, g.ids[i])) << "token " << i;
        EXPECT_LT(g.logprobs[i], 0.0);
        if (i + 1 < g.ids.size()) next = &session.feed({g.ids[i]});
    }
}

TEST(Generate, StopIdsEndGenerationAndLimitsAreRespected) {
    Transformer model(gqa_config(), 1, 1, DType::F32);
    randomize(model, 81);
    InferenceSession session(model, 12);
    const std::vector<int64_t> prompt = random_ids(3, 23, 82);
    SamplingConfig config;
    config.max_new_tokens = 9;  // prompt 3 + 9 = max_len 12: the limits coincide
    Rng rng(83);
    const std::vector<int64_t> free_run = generate(session, prompt, config, rng).ids;
    ASSERT_EQ(free_run.size(), 9u);

    // Stopping on the 4th token (at its first occurrence) keeps the same draws up to it, stop id included.
    const int64_t stop = free_run[3];
    const size_t first = std::find(free_run.begin(), free_run.end(), stop) - free_run.begin();
    int64_t unused = 0;  // a second stop id that never comes up must change nothing
    while (std::find(free_run.begin(), free_run.end(), unused) != free_run.end()) ++unused;
    config.stop_ids = {unused, stop};
    Rng same(83);
    const Generation stopped = generate(session, prompt, config, same);
    EXPECT_TRUE(stopped.stopped);
    EXPECT_EQ(stopped.ids, std::vector<int64_t>(free_run.begin(), free_run.begin() + first + 1));

    // max_new_tokens, and 0 of them.
    config.stop_ids.clear();
    config.max_new_tokens = 4;
    Rng again(83);
    const Generation four = generate(session, prompt, config, again);
    EXPECT_FALSE(four.stopped);
    EXPECT_EQ(four.ids, std::vector<int64_t>(free_run.begin(), free_run.begin() + 4));
    config.max_new_tokens = 0;
    EXPECT_TRUE(generate(session, prompt, config, again).ids.empty());

    // max_len: prompt 3 in a session of 5 leaves room for exactly 2 tokens, without an error.
    InferenceSession short_session(model, 5);
    config.max_new_tokens = 64;
    Rng third(83);
    const Generation bounded = generate(short_session, prompt, config, third);
    EXPECT_FALSE(bounded.stopped);
    EXPECT_EQ(bounded.ids, std::vector<int64_t>(free_run.begin(), free_run.begin() + 2));
    EXPECT_LE(short_session.length(), 5);
}

// ---- (7) errors -----------------------------------------------------------------------------------

TEST(Generate, ABatchOfLeftPaddedPromptsGeneratesWhatEachPromptGeneratesAlone) {
    reset_bugs();
    Transformer model(gqa_config(), 1, 1, DType::F32);
    randomize(model, 71);
    const std::vector<std::vector<int64_t>> prompts = {random_ids(3, 23, 72), random_ids(1, 23, 73),
                                                       random_ids(7, 23, 74), random_ids(2, 23, 75)};
    SamplingConfig greedy;
    greedy.temperature = 0.0;
    greedy.max_new_tokens = 5;
    Rng rng(1);
    std::vector<std::vector<double>> first;
    const std::vector<Generation> batch = generate_batch(model, prompts, greedy, 0, rng, &first);
    ASSERT_EQ(batch.size(), prompts.size());
    InferenceSession session(model, 12);
    for (size_t r = 0; r < prompts.size(); ++r) {
        EXPECT_EQ(batch[r].ids, generate(session, prompts[r], greedy, rng).ids) << "row " << r;
        session.reset();
        EXPECT_EQ(first[r], session.feed(prompts[r])) << "row " << r << ": the first prediction, bitwise";
    }
    // A user's own batched loop that feeds the left pads (no switch): the short rows' first predictions
    // move; the longest row, which has no pads, does not.
    for (size_t r = 0; r < prompts.size(); ++r) {
        std::vector<int64_t> row(7 - prompts[r].size(), 0);
        row.insert(row.end(), prompts[r].begin(), prompts[r].end());
        session.reset();
        const std::vector<double> padded = session.feed(row);
        if (prompts[r].size() == 7) {
            EXPECT_EQ(padded, first[r]);
        } else {
            EXPECT_NE(padded, first[r]) << "row " << r << " with " << 7 - prompts[r].size() << " pads";
        }
    }
    ScopedBug bug("left-pad-positions");
    std::vector<std::vector<double>> buggy;
    generate_batch(model, prompts, greedy, 0, rng, &buggy);
    EXPECT_NE(buggy[1], first[1]);
    EXPECT_EQ(buggy[2], first[2]) << "the longest prompt has no pads";
}

TEST(Generate, ErrorsNameTheIdPositionAndLimit) {
    Transformer model(gqa_config(), 1, 1, DType::F32);
    randomize(model, 91);
    InferenceSession session(model, 8);
    session.feed({1, 2});
    expect_error([&] { session.feed({4, 23}); }, {"token id 23 at position 3", "[0, 23)"});
    expect_error([&] { session.feed({-1}); }, {"token id -1 at position 2"});
    EXPECT_EQ(session.length(), 2) << "a refused feed must leave the cache as it was";
    session.feed({5, 6, 7, 8, 9});
    expect_error([&] { session.feed({1, 2}); }, {"2 tokens at positions 7..8", "max_len = 8"});
    session.feed({10});
    expect_error([&] { session.feed({1}); }, {"position", "max_len = 8"});
    expect_error([&] { session.feed({}); }, {"no token ids"});
    expect_error([&] { InferenceSession too_long(model, 13); }, {"max_len 13", "max_position_embeddings = 12"});
    SamplingConfig config;
    Rng rng(1);
    expect_error([&] { generate(session, {}, config, rng); }, {"prompt is empty"});
    expect_error([&] { generate(session, {1, 2, 3, 4, 5, 6, 7, 8, 9}, config, rng); }, {"max_len = 8"});
    config.temperature = -1.0;
    expect_error([&] { generate(session, {1}, config, rng); }, {"temperature -1"});
    config.temperature = 1.0;
    expect_error([&] { sample_from_logits({0.0, NAN}, config, rng); }, {"logit of id 1"});
}

}  // namespace
}  // namespace reftrain

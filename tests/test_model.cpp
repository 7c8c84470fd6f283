// tests/test_model.cpp — the Transformer as a whole: fp64 gradient check of every parameter through
// the full model, determinism, init, weight files, and the first sign of life (overfitting a batch).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "kernels/random.h"
#include "kernels/safetensors.h"
#include "model/dump.h"
#include "model/transformer.h"
#include "tests/gradcheck.h"
#include "tests/test_util.h"
#include "train/adamw.h"

namespace reftrain {
namespace {


struct Data {
    std::vector<int64_t> ids, targets;
    Tensor ids_tensor;
    Tensor targets_tensor;
    Data(int64_t B, int64_t T, int64_t V, uint64_t seed, double ignore_fraction = 0.25) : ids(B * T), targets(B * T) {
        Rng rng(seed);
        for (auto& id : ids) id = static_cast<int64_t>(rng.below(V));
        for (auto& t : targets) t = rng.uniform() < ignore_fraction ? cpu::kIgnoreIndex : static_cast<int64_t>(rng.below(V));
        ids_tensor = Tensor(ids.data(), DType::I64, {B, T}, "input_ids");
        targets_tensor = Tensor(targets.data(), DType::I64, {B, T}, "targets");
    }
};

std::filesystem::path temp_dir(const std::string& name) {
    return testing::scratch_dir("model_" + name);
}

// Every parameter's gradient through the whole model against finite differences, in fp64. Norm
// weights are perturbed away from 1 first so their gradients are generic.
void gradcheck_model(ModelConfig config, const std::string& label) {
    const int64_t B = 2, T = 5;
    Transformer model(config, B, T, DType::F64);
    model.init_weights(7);
    Rng rng(8);
    for (size_t i = 0; i < model.params().size(); ++i) {
        Tensor& p = model.params().at(i);
        if (p.ndim == 1) for (int64_t j = 0; j < p.numel(); ++j) p.ptr<double>()[j] = 1.0 + 0.3 * rng.normal();
    }
    Data data(B, T, config.vocab_size, 9);
    model.zero_grad();
    model.forward(data.ids_tensor, data.targets_tensor);
    model.backward();
    for (size_t i = 0; i < model.params().size(); ++i) {
        Tensor& p = model.params().at(i);
        const Tensor& g = model.grads().at(i);
        // Wrap the arena memory in Buffers the helper understands (copy in, copy back after).
        testing::Buffer x(p.name, {p.numel()}), dx(g.name, {p.numel()});
        std::memcpy(x.values.data(), p.data, p.nbytes());
        std::memcpy(dx.values.data(), g.data, g.nbytes());
        testing::expect_gradients_match(label, {&x}, {&dx}, [&] {
            std::memcpy(p.data, x.values.data(), p.nbytes());
            return model.forward(data.ids_tensor, data.targets_tensor).loss;
        }, 60);
        std::memcpy(p.data, x.values.data(), p.nbytes());
    }
}

TEST(ModelGradcheck, GQAWithQKNorm) { gradcheck_model(testing::tiny_model_config(), "gqa+qk_norm"); }

TEST(ModelGradcheck, LlamaStyleNoQKNormTiedEmbeddings) {
    ModelConfig c = testing::tiny_model_config();
    c.qk_norm = false;
    c.tie_word_embeddings = true;
    c.num_key_value_heads = 4;
    gradcheck_model(c, "llama+tied");
}

TEST(Model, SameSeedGivesBitwiseIdenticalGrads) {
    ModelConfig c;  // the tiny default config, fp32
    c.max_position_embeddings = 32;
    auto run = [&](uint64_t seed) {
        Transformer model(c, 3, 32);
        model.init_weights(seed);
        Data data(3, 32, c.vocab_size, seed + 1);
        model.zero_grad();
        model.forward(data.ids_tensor, data.targets_tensor);
        model.backward();
        const auto* g = model.grads().data();
        return std::vector<std::byte>(g, g + model.grads().nbytes());
    };
    std::vector<std::byte> a = run(42), b = run(42), other = run(43);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0) << "same seed, different gradient bits";
    EXPECT_NE(std::memcmp(a.data(), other.data(), a.size()), 0) << "different seeds gave identical gradients";
}

TEST(Model, InitFollowsTheDocumentedScheme) {
    ModelConfig c;
    c.zero_init_output_projections = true;
    Transformer model(c, 1, 1);
    model.init_weights(5);
    for (const Tensor& p : model.params().tensors()) {
        const float* v = p.ptr<float>();
        double sum = 0, sum_sq = 0;
        for (int64_t i = 0; i < p.numel(); ++i) { sum += v[i]; sum_sq += static_cast<double>(v[i]) * v[i]; }
        const double mean = sum / p.numel(), std = std::sqrt(sum_sq / p.numel() - mean * mean);
        if (p.ndim == 1) {
            EXPECT_EQ(mean, 1.0) << p.name << ": norm weights start at 1";
            EXPECT_EQ(std, 0.0) << p.name;
        } else if (p.name.ends_with("o_proj.weight") || p.name.ends_with("down_proj.weight")) {
            EXPECT_EQ(sum_sq, 0.0) << p.name << ": zero_init_output_projections";
        } else {
            EXPECT_NEAR(std, c.initializer_range, 0.1 * c.initializer_range) << p.name;
            EXPECT_NEAR(mean, 0.0, 0.1 * c.initializer_range) << p.name;
        }
    }
    // Per-name streams: a tensor's init does not depend on which other tensors exist.
    ModelConfig deeper = c;
    deeper.num_hidden_layers = 6;
    Transformer other(deeper, 1, 1);
    other.init_weights(5);
    const Tensor& a = model.param("model.layers.1.mlp.up_proj.weight");
    const Tensor& b = other.param("model.layers.1.mlp.up_proj.weight");
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes()), 0);
}

TEST(Model, FreshModelLossIsNearLogVocab) {
    ModelConfig c;
    Transformer model(c, 2, 64);
    model.init_weights(3);
    Data data(2, 64, c.vocab_size, 4, 0.0);
    const double loss = model.forward(data.ids_tensor, data.targets_tensor).loss;
    EXPECT_NEAR(loss, std::log(static_cast<double>(c.vocab_size)), 0.1);
}

TEST(Model, ZeroSupervisedTokensGiveZeroLossAndZeroGrads) {
    ModelConfig c = testing::tiny_model_config();
    Transformer model(c, 2, 5);
    model.init_weights(3);
    Data data(2, 5, c.vocab_size, 4, 1.0);  // every target ignored
    model.zero_grad();
    ForwardResult r = model.forward(data.ids_tensor, data.targets_tensor);
    model.backward();
    EXPECT_EQ(r.loss, 0.0);
    EXPECT_TRUE(r.no_supervised_tokens);
    const float* g = reinterpret_cast<const float*>(model.grads().data());
    for (int64_t i = 0; i < model.grads().numel(); ++i) ASSERT_EQ(g[i], 0.0f) << "element " << i;
}

TEST(Model, WeightsRoundTripThroughSafetensors) {
    ModelConfig c = testing::tiny_model_config();
    auto path = (temp_dir("roundtrip") / "w.safetensors").string();
    Transformer a(c, 1, 4), b(c, 1, 4);
    a.init_weights(1);
    a.save_weights(path);
    b.load_weights(path);
    EXPECT_EQ(std::memcmp(a.params().data(), b.params().data(), a.params().nbytes()), 0);
    // bf16 storage: loads back within bf16 rounding (relative 2^-8).
    a.save_weights(path, DType::BF16);
    b.load_weights(path);
    const Tensor& wa = a.param("model.layers.0.self_attn.q_proj.weight");
    const Tensor& wb = b.param("model.layers.0.self_attn.q_proj.weight");
    for (int64_t i = 0; i < wa.numel(); ++i) {
        EXPECT_NEAR(wb.ptr<float>()[i], wa.ptr<float>()[i], std::abs(wa.ptr<float>()[i]) * 0.0040);
    }
}

TEST(Model, LoadRefusesMissingAndUnexpectedNames) {
    ModelConfig with_qk = testing::tiny_model_config(), without_qk = testing::tiny_model_config();
    without_qk.qk_norm = false;
    auto path = (temp_dir("names") / "w.safetensors").string();
    Transformer llama(without_qk, 1, 4);
    llama.save_weights(path);
    Transformer qwen(with_qk, 1, 4);
    try {
        qwen.load_weights(path);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("missing: "), std::string::npos) << m;
        EXPECT_NE(m.find("model.layers.0.self_attn.q_norm.weight"), std::string::npos) << m;
        EXPECT_NE(m.find("model.layers.1.self_attn.k_norm.weight"), std::string::npos) << m;
        EXPECT_EQ(m.find("unexpected"), std::string::npos) << m;
        EXPECT_NE(m.find(path), std::string::npos) << m;
    }
    Transformer q2(with_qk, 1, 4);
    q2.save_weights(path);
    try {
        llama.load_weights(path);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("unexpected: model.layers.0.self_attn.q_norm.weight"), std::string::npos)
            << e.what();
    }
}

TEST(Model, TiedCheckpointWithEqualLmHeadLoads) {
    ModelConfig tied = testing::tiny_model_config(), untied = testing::tiny_model_config();
    tied.tie_word_embeddings = true;
    auto path = (temp_dir("tied") / "w.safetensors").string();
    Transformer src(untied, 1, 4);
    src.init_weights(2);
    std::memcpy(src.param("lm_head.weight").data, src.param("model.embed_tokens.weight").data,
                src.param("lm_head.weight").nbytes());
    src.save_weights(path);
    Transformer dst(tied, 1, 4);
    EXPECT_NO_THROW(dst.load_weights(path));
    src.param("lm_head.weight").ptr<float>()[0] += 1.0f;
    src.save_weights(path);
    EXPECT_THROW(dst.load_weights(path), Error);
}

TEST(Model, BatchValidationNamesFileRowAndPosition) {
    Batch batch{2, 3, {1, 2, 3, 4, 5, 6}, {2, 3, cpu::kIgnoreIndex, 5, 4, cpu::kIgnoreIndex}};
    EXPECT_NO_THROW(validate_batch(batch, 7, "b.safetensors"));
    auto message = [&](int64_t vocab) {
        try {
            validate_batch(batch, vocab, "b.safetensors");
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_EQ(message(6), "b.safetensors: input_ids[1, 2] = 6 is outside the vocabulary [0, 6)");
    batch.targets[1] = -1;
    EXPECT_NE(message(7).find("b.safetensors: targets[0, 1] = -1 is neither a token id"), std::string::npos) << message(7);
}

TEST(AdamW, MatchesTheUpdateRuleAndDecaysOnlyMatrices) {
    Arena params("p"), grads("g");
    params.add("matrix", DType::F64, {1, 1});
    grads.add("grad:matrix", DType::F64, {1, 1});
    params.add("norm", DType::F64, {1});
    grads.add("grad:norm", DType::F64, {1});
    params.allocate();
    grads.allocate();
    params.at(0).ptr<double>()[0] = 2.0;
    params.at(1).ptr<double>()[0] = 2.0;
    AdamWConfig cfg{.lr = 0.1, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.5};
    AdamW opt(params, grads, cfg);
    double p = 2.0, q = 2.0, m = 0, v = 0, mq = 0, vq = 0;
    for (int t = 1; t <= 3; ++t) {
        const double g = 0.3 * t;
        grads.at(0).ptr<double>()[0] = g;
        grads.at(1).ptr<double>()[0] = g;
        opt.step();
        p *= 1 - 0.1 * 0.5;  // decoupled decay on the matrix only
        m = 0.9 * m + 0.1 * g; v = 0.99 * v + 0.01 * g * g;
        mq = m; vq = v;
        const double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.99, t);
        p -= 0.1 / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + 1e-8);
        q -= 0.1 / bc1 * mq / (std::sqrt(vq) / std::sqrt(bc2) + 1e-8);
        EXPECT_NEAR(params.at(0).ptr<double>()[0], p, 1e-14) << "step " << t;
        EXPECT_NEAR(params.at(1).ptr<double>()[0], q, 1e-14) << "step " << t;
    }
    EXPECT_EQ(opt.step_count(), 3);
}

TEST(Model, OverfitsOneFixedBatch) {
    // The first sign of life: a tiny model memorises one batch. Fails if any gradient is wrong
    // enough to stop learning, or if the optimizer does not move the weights.
    ModelConfig c;
    c.vocab_size = 32;
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 8;
    c.max_position_embeddings = 16;
    const int64_t B = 4, T = 16;
    Transformer model(c, B, T);
    model.init_weights(11);
    Data data(B, T, c.vocab_size, 12, 0.0);
    AdamW opt(model.params(), model.grads(), AdamWConfig{.lr = 1e-2});
    double first = 0, last = 0;
    for (int step = 0; step < 150; ++step) {
        model.zero_grad();
        last = model.forward(data.ids_tensor, data.targets_tensor).loss;
        if (step == 0) first = last;
        model.backward();
        opt.step();
    }
    last = model.forward(data.ids_tensor, data.targets_tensor).loss;
    EXPECT_NEAR(first, std::log(32.0), 0.2);
    EXPECT_LT(last, 0.02) << "loss went from " << first << " to " << last;
}

}  // namespace
}  // namespace reftrain

// bench/tiny_step.h — the tiny config's training step (forward, backward, AdamW) that the CPU
// benchmarks time: V=512, d=128, 4 layers, 4 query / 2 KV heads, head_dim 32, ffn 384, B=16, T=128.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/random.h"
#include "model/transformer.h"
#include "train/adamw.h"

namespace reftrain {

inline ModelConfig tiny_config() {
    ModelConfig c;  // the defaults are the tiny config: V=512, d=128, L=4, Hq=4, Hkv=2, D=32, F=384
    c.max_position_embeddings = 128;
    return c;
}

struct TinyStep {
    static constexpr int64_t B = 16, T = 128;
    ModelConfig config = tiny_config();
    Transformer model{config, B, T};
    AdamW optimizer{model.params(), model.grads(), AdamWConfig{.lr = 1e-4}};
    std::vector<int64_t> ids = std::vector<int64_t>(B * T), targets = std::vector<int64_t>(B * T);

    TinyStep() {
        model.init_weights(1);
        Rng rng(2);
        for (auto& x : ids) x = static_cast<int64_t>(rng.below(config.vocab_size));
        for (auto& x : targets) x = static_cast<int64_t>(rng.below(config.vocab_size));
    }
    // One optimizer step on the fixed random batch; returns the loss.
    double step() {
        const Tensor ids_t(ids.data(), DType::I64, {B, T}, "input_ids");
        const Tensor targets_t(targets.data(), DType::I64, {B, T}, "targets");
        model.zero_grad();
        const ForwardResult r = model.forward(ids_t, targets_t);
        model.backward();
        optimizer.step();
        return r.loss;
    }
};

}  // namespace reftrain

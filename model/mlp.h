// model/mlp.h — the actor-critic for classic-control RL: two separate MLPs with tanh, written as
// explicit forward and backward passes like the transformer.
//
// The layout and init follow cleanrl's ppo.py (Huang et al., "The 37 Implementation Details of PPO",
// details 2 and 3), with cleanrl's parameter names so a reader can line the two up:
//   actor:  obs -> actor.0 (obs_dim -> h1) -> tanh -> actor.2 (h1 -> h2) -> tanh -> actor.4 (h2 -> A)   logits
//   critic: obs -> critic.0 (obs_dim -> h1) -> tanh -> critic.2 (h1 -> h2) -> tanh -> critic.4 (h2 -> 1) value
// Each linear layer has "<layer>.weight" (out, in) and "<layer>.bias" (out). Init: every weight
// orthogonal (rows or columns orthonormal, as torch.nn.init.orthogonal_) times a gain of sqrt(2) for
// hidden layers, 0.01 for the actor's output and 1.0 for the critic's; every bias 0. The tiny actor
// gain makes the first policy near-uniform; separate networks keep the value loss from pulling on the
// policy's features.
//
// Memory, as in the transformer: params() ("actor.0.weight", ...), grads() ("grad:<param>", backward
// ADDS into them), acts() ("actor.0.out", "actor.1.out" (tanh), ..., "logits", "value"). The batch size
// is fixed at construction; forward(obs, n) runs the first n <= max_batch rows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/arena.h"
#include "kernels/tensor.h"

namespace reftrain {

struct ActorCriticConfig {
    int64_t obs_dim = 4;
    int64_t num_actions = 2;
    std::vector<int64_t> hidden = {64, 64};  // widths of the hidden layers (the same for both nets)
};

class ActorCritic {
public:
    // dtype F32 (training) or F64 (gradient checks).
    ActorCritic(const ActorCriticConfig& config, int64_t max_batch, DType dtype = DType::F32);

    const ActorCriticConfig& config() const { return config_; }
    int64_t max_batch() const { return max_batch_; }
    DType dtype() const { return dtype_; }
    Arena& params() { return params_; }
    Arena& grads() { return grads_; }
    const Arena& params() const { return params_; }
    const Arena& acts() const { return acts_; }

    // Orthogonal init as above; each tensor from Rng::for_name(seed, name).
    void init_weights(uint64_t seed);

    // obs: n rows of obs_dim doubles. Fills logits (n, A) and values (n) as doubles (and acts()).
    void forward(const double* obs, int64_t n, std::vector<double>& logits, std::vector<double>& values);
    // Backpropagates dlogits (n, A) and dvalues (n) through the LAST forward, ADDING into grads().
    // Either may be empty (= zero): PPO's update passes both.
    void backward(const std::vector<double>& dlogits, const std::vector<double>& dvalues);
    void zero_grad() { grads_.zero(); }

    int64_t num_parameters() const { return params_.numel(); }

    // Save / load under the names above (safetensors); load refuses missing or extra names.
    void save(const std::string& path) const;
    void load(const std::string& path);

private:
    ActorCriticConfig config_;
    int64_t max_batch_;
    DType dtype_;
    Arena params_{"actor-critic parameters"}, grads_{"actor-critic gradients"}, acts_{"actor-critic activations"};
    int64_t last_n_ = 0;
    std::vector<double> last_obs_;
};

// Categorical policy helpers over logits rows (n, A), in fp64.
// log_softmax row by row; entropy of each row; log-prob of the chosen action of each row.
void log_softmax_rows(const std::vector<double>& logits, int64_t n, int64_t A, std::vector<double>& logp);
double categorical_entropy(const double* logp_row, int64_t A);

}  // namespace reftrain

// model/mlp.h — the actor-critic for classic-control RL: two separate MLPs with tanh, written as
// explicit forward and backward passes like the transformer.
//
// The layout and init follow cleanrl's ppo.py (Huang et al., "The 37 Implementation Details of PPO",
// core details 2, orthogonal init, and 13, separate actor and critic networks), with cleanrl's
// parameter names so a reader can line the two up:
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
// is fixed at construction; forward(obs, n) runs the first n <= max_batch rows (views of the arenas,
// so a call allocates nothing but the caller's output vectors, which it resizes).
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
    // One linear layer of one net with the tanh that follows it (none after the last layer). The
    // pointers are into the arenas; the *_rows views cover the first rows_ rows of the (max_batch, C)
    // activations and are rebuilt only when n changes, so a forward/backward allocates nothing.
    struct Layer {
        Tensor *weight, *bias, *dweight, *dbias;  // (out, in), (out)
        Tensor *out, *dout;                       // (max_batch, out)  x @ W^T + b
        Tensor *act = nullptr, *dact = nullptr;   // (max_batch, out)  tanh(out); null for the last layer
        Tensor out_rows, dout_rows, act_rows, dact_rows;
    };
    void declare_net(const std::string& net, int64_t out_dim, std::vector<Layer>& layers);
    void set_rows(int64_t n);
    void forward_net(std::vector<Layer>& layers);
    void backward_net(std::vector<Layer>& layers, const std::vector<double>& dhead);

    ActorCriticConfig config_;
    int64_t max_batch_;
    DType dtype_;
    Arena params_{"actor-critic parameters"}, grads_{"actor-critic gradients"}, acts_{"actor-critic activations"};
    // "grad:<activation>" scratch for backward (not part of the public contract).
    Arena act_grads_{"actor-critic activation gradients"};
    std::vector<Layer> actor_, critic_;
    Tensor* obs_ = nullptr;  // (max_batch, obs_dim) the observations in the model dtype
    Tensor obs_rows_;
    int64_t rows_ = -1;      // the row count the *_rows views currently cover
    int64_t last_n_ = -1;    // rows of the last forward; -1 before the first
};

// Categorical policy helpers over logits rows (n, A), in fp64.
// log_softmax row by row; entropy of each row; log-prob of the chosen action of each row.
void log_softmax_rows(const std::vector<double>& logits, int64_t n, int64_t A, std::vector<double>& logp);
double categorical_entropy(const double* logp_row, int64_t A);

}  // namespace reftrain

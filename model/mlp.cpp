// model/mlp.cpp — buffers, orthogonal init, forward and backward of the RL actor-critic (see mlp.h).
//
// Each net is a chain of (linear_forward, bias_add_forward, tanh_forward) with no tanh after the last
// layer; backward walks it in reverse. The observations are converted once to the model dtype and
// shared by both nets; the two nets have no parameter in common, so a gradient of the logits never
// reaches the critic and a gradient of the values never reaches the actor.
//
// Everything the hot path touches is allocated at construction for max_batch rows; forward(obs, n)
// uses views of the first n rows (rebuilt only when n changes), so PPO's thousands of calls allocate
// nothing beyond the caller's output vectors.
#include "model/mlp.h"

#include <cmath>
#include <cstring>
#include <set>

#include "kernels/cpu/activations.h"
#include "kernels/cpu/ops.h"
#include "kernels/random.h"
#include "kernels/safetensors.h"

namespace reftrain {

namespace {

// The first n rows of a (max_batch, C) tensor, under the same name.
Tensor first_rows(const Tensor& t, int64_t n) {
    Tensor view(t.data, t.dtype, {n, t.dim(1)}, t.name);
    view.device = t.device;
    return view;
}

// Sets every element of rows [0, n) of a (max_batch, C) tensor to 0.
void zero_rows(const Tensor& t, int64_t n) {
    std::memset(t.data, 0, static_cast<size_t>(n * t.dim(1)) * dtype_size(t.dtype));
}

// torch.nn.init.orthogonal_ for a 2-D weight (rows, cols), computed in fp64:
//   A = Gaussian (rows, cols) drawn row-major from the tensor's own stream;
//   M = A if rows >= cols else A^T, so M is (m, k) with m >= k;
//   M = Q R (reduced QR), Q (m, k) with orthonormal columns, Q's signs fixed so diag(R) > 0;
//   W = gain * (Q if rows >= cols else Q^T).
// The QR is modified Gram-Schmidt applied twice per column ("twice is enough", Giraud et al. 2005),
// which keeps Q orthonormal to ~1e-15 whatever the conditioning of a Gaussian draw. Gram-Schmidt
// produces R with a positive diagonal (the norms) directly, which is torch's sign correction.
void orthogonal_fill(const Tensor& w, uint64_t seed, double gain) {
    const int64_t rows = w.dim(0), cols = w.dim(1);
    Rng rng = Rng::for_name(seed, w.name);
    std::vector<double> a(static_cast<size_t>(rows * cols));
    for (double& v : a) v = rng.normal();
    const bool transposed = rows < cols;
    const int64_t m = transposed ? cols : rows, k = transposed ? rows : cols;
    // q holds M column by column: q[j*m + i] = M[i][j].
    std::vector<double> q(static_cast<size_t>(m * k));
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < k; ++j) q[j * m + i] = transposed ? a[j * cols + i] : a[i * cols + j];
    for (int64_t j = 0; j < k; ++j) {
        double* v = &q[j * m];
        for (int pass = 0; pass < 2; ++pass) {
            for (int64_t p = 0; p < j; ++p) {
                const double* u = &q[p * m];
                double dot = 0.0;
                for (int64_t i = 0; i < m; ++i) dot += u[i] * v[i];
                for (int64_t i = 0; i < m; ++i) v[i] -= dot * u[i];
            }
        }
        double norm = 0.0;
        for (int64_t i = 0; i < m; ++i) norm += v[i] * v[i];
        norm = std::sqrt(norm);
        check(norm > 1e-12, "orthogonal init of '", w.name, "': Gaussian draw is rank-deficient");
        for (int64_t i = 0; i < m; ++i) v[i] /= norm;
    }
    dispatch_float(w.dtype, "orthogonal_fill", [&](auto tag) {
        using T = decltype(tag);
        T* out = w.ptr<T>();
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c)
                out[r * cols + c] = static_cast<T>(gain * (transposed ? q[r * m + c] : q[c * m + r]));
    });
}

// Copies n doubles into a float tensor of either dtype, and back.
void copy_in(const Tensor& dst, const double* src, int64_t n) {
    dispatch_float(dst.dtype, "ActorCritic", [&](auto tag) {
        using T = decltype(tag);
        T* d = dst.ptr<T>();
        for (int64_t i = 0; i < n; ++i) d[i] = static_cast<T>(src[i]);
    });
}
void copy_out(double* dst, const Tensor& src, int64_t n) {
    dispatch_float(src.dtype, "ActorCritic", [&](auto tag) {
        using T = decltype(tag);
        const T* s = src.ptr<T>();
        for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<double>(s[i]);
    });
}

// The names of linear layer i of a net (cleanrl numbering: linear layers at even indices, the tanh
// after layer i at index 2i + 1; the head's output is "logits" or "value").
struct LayerNames {
    std::string weight, bias, out, act;  // act is "" for the head
};
LayerNames layer_names(const std::string& net, int64_t i, bool last) {
    const std::string prefix = net + "." + std::to_string(2 * i);
    return {prefix + ".weight", prefix + ".bias",
            last ? (net == "actor" ? "logits" : "value") : prefix + ".out",
            last ? "" : net + "." + std::to_string(2 * i + 1) + ".out"};
}

}  // namespace

ActorCritic::ActorCritic(const ActorCriticConfig& config, int64_t max_batch, DType dtype)
    : config_(config), max_batch_(max_batch), dtype_(dtype) {
    check(dtype == DType::F32 || dtype == DType::F64, "ActorCritic: compute dtype ", dtype_name(dtype),
          " is not supported (F32 or F64)");
    check(max_batch > 0, "ActorCritic: max_batch must be positive, got ", max_batch);
    check(config.obs_dim > 0, "ActorCritic: obs_dim must be positive, got ", config.obs_dim);
    check(config.num_actions > 0, "ActorCritic: num_actions must be positive, got ", config.num_actions);
    check(!config.hidden.empty(), "ActorCritic: hidden must list at least one layer width");
    for (int64_t width : config.hidden) check(width > 0, "ActorCritic: hidden width must be positive, got ", width);

    acts_.add("obs", dtype_, {max_batch_, config_.obs_dim});
    declare_net("actor", config_.num_actions, actor_);
    declare_net("critic", 1, critic_);
    params_.allocate();
    grads_.allocate();
    acts_.allocate();
    act_grads_.allocate();
    // Arenas never move their tensors after allocate(): resolve the pointers once.
    obs_ = &acts_.get("obs");
    for (auto [net, layers] : {std::pair{"actor", &actor_}, std::pair{"critic", &critic_}}) {
        for (size_t i = 0; i < layers->size(); ++i) {
            const LayerNames names = layer_names(net, static_cast<int64_t>(i), i + 1 == layers->size());
            Layer& layer = (*layers)[i];
            layer.weight = &params_.get(names.weight);
            layer.bias = &params_.get(names.bias);
            layer.dweight = &grads_.get("grad:" + names.weight);
            layer.dbias = &grads_.get("grad:" + names.bias);
            layer.out = &acts_.get(names.out);
            layer.dout = &act_grads_.get("grad:" + names.out);
            if (!names.act.empty()) {
                layer.act = &acts_.get(names.act);
                layer.dact = &act_grads_.get("grad:" + names.act);
            }
        }
    }
}

// Declares the parameters and activations of one net, in execution order, and sizes `layers` (the
// constructor fills in the pointers once the arenas are allocated).
void ActorCritic::declare_net(const std::string& net, int64_t out_dim, std::vector<Layer>& layers) {
    const int64_t depth = static_cast<int64_t>(config_.hidden.size()) + 1;  // linear layers
    int64_t in = config_.obs_dim;
    for (int64_t i = 0; i < depth; ++i) {
        const bool last = i == depth - 1;
        const int64_t out = last ? out_dim : config_.hidden[i];
        const LayerNames names = layer_names(net, i, last);
        params_.add(names.weight, dtype_, {out, in});
        grads_.add("grad:" + names.weight, dtype_, {out, in});
        params_.add(names.bias, dtype_, {out});
        grads_.add("grad:" + names.bias, dtype_, {out});
        acts_.add(names.out, dtype_, {max_batch_, out});
        act_grads_.add("grad:" + names.out, dtype_, {max_batch_, out});
        if (!last) {
            acts_.add(names.act, dtype_, {max_batch_, out});
            act_grads_.add("grad:" + names.act, dtype_, {max_batch_, out});
        }
        in = out;
    }
    layers.assign(static_cast<size_t>(depth), Layer{});
}

void ActorCritic::init_weights(uint64_t seed) {
    const double hidden_gain = std::sqrt(2.0);
    for (auto [layers, head_gain] : {std::pair{&actor_, 0.01}, std::pair{&critic_, 1.0}}) {
        for (size_t i = 0; i < layers->size(); ++i) {
            Layer& layer = (*layers)[i];
            const bool last = i + 1 == layers->size();
            orthogonal_fill(*layer.weight, seed, last ? head_gain : hidden_gain);
            std::memset(layer.bias->data, 0, layer.bias->nbytes());
        }
    }
}

void ActorCritic::set_rows(int64_t n) {
    if (n == rows_) return;
    obs_rows_ = first_rows(*obs_, n);
    for (auto* layers : {&actor_, &critic_}) {
        for (Layer& layer : *layers) {
            layer.out_rows = first_rows(*layer.out, n);
            layer.dout_rows = first_rows(*layer.dout, n);
            if (layer.act) {
                layer.act_rows = first_rows(*layer.act, n);
                layer.dact_rows = first_rows(*layer.dact, n);
            }
        }
    }
    rows_ = n;
}

void ActorCritic::forward_net(std::vector<Layer>& layers) {
    const Tensor* input = &obs_rows_;
    for (Layer& layer : layers) {
        cpu::linear_forward(layer.out_rows, *input, *layer.weight);
        cpu::bias_add_forward(layer.out_rows, *layer.bias);
        if (layer.act) {
            cpu::tanh_forward(layer.act_rows, layer.out_rows);
            input = &layer.act_rows;
        }
    }
}

void ActorCritic::forward(const double* obs, int64_t n, std::vector<double>& logits, std::vector<double>& values) {
    check(n >= 0 && n <= max_batch_, "ActorCritic::forward: n = ", n, " rows, expected 0..max_batch = ", max_batch_);
    check(n == 0 || obs != nullptr, "ActorCritic::forward: obs is null");
    set_rows(n);
    copy_in(obs_rows_, obs, n * config_.obs_dim);
    forward_net(actor_);
    forward_net(critic_);
    logits.resize(static_cast<size_t>(n * config_.num_actions));
    values.resize(static_cast<size_t>(n));
    copy_out(logits.data(), actor_.back().out_rows, n * config_.num_actions);
    copy_out(values.data(), critic_.back().out_rows, n);
    last_n_ = n;
}

// dhead: the gradient of the net's output, (n, out) doubles.
void ActorCritic::backward_net(std::vector<Layer>& layers, const std::vector<double>& dhead) {
    const int64_t n = rows_;
    // Every activation gradient of this net is accumulated into (backward ADDS), so clear its rows;
    // the head's gradient is overwritten by the copy below.
    for (size_t i = 0; i + 1 < layers.size(); ++i) {
        zero_rows(*layers[i].dout, n);
        zero_rows(*layers[i].dact, n);
    }
    copy_in(layers.back().dout_rows, dhead.data(), static_cast<int64_t>(dhead.size()));
    for (size_t i = layers.size(); i-- > 0;) {
        Layer& layer = layers[i];
        cpu::bias_add_backward(*layer.dbias, layer.dout_rows);
        if (i == 0) {
            cpu::linear_backward(Tensor{}, *layer.dweight, layer.dout_rows, obs_rows_, *layer.weight);
        } else {
            Layer& previous = layers[i - 1];
            cpu::linear_backward(previous.dact_rows, *layer.dweight, layer.dout_rows, previous.act_rows, *layer.weight);
            cpu::tanh_backward(previous.dout_rows, previous.dact_rows, previous.act_rows);
        }
    }
}

void ActorCritic::backward(const std::vector<double>& dlogits, const std::vector<double>& dvalues) {
    check(last_n_ >= 0, "ActorCritic::backward: called before any forward");
    const int64_t n = last_n_;
    check(dlogits.empty() || static_cast<int64_t>(dlogits.size()) == n * config_.num_actions,
          "ActorCritic::backward: dlogits has ", dlogits.size(), " values, expected 0 or n * num_actions = ",
          n * config_.num_actions, " (n = ", n, " rows of the last forward)");
    check(dvalues.empty() || static_cast<int64_t>(dvalues.size()) == n, "ActorCritic::backward: dvalues has ",
          dvalues.size(), " values, expected 0 or n = ", n, " (rows of the last forward)");
    set_rows(n);
    if (n == 0) return;
    if (!dlogits.empty()) backward_net(actor_, dlogits);
    if (!dvalues.empty()) backward_net(critic_, dvalues);
}

// ---- weights on disk ------------------------------------------------------------------------------------

void ActorCritic::save(const std::string& path) const {
    save_safetensors(path, params_.tensors(), {{"format", "pt"}});
}

void ActorCritic::load(const std::string& path) {
    SafetensorsFile file = SafetensorsFile::open(path);
    std::set<std::string> expected;
    for (const Tensor& t : params_.tensors()) expected.insert(t.name);
    std::string missing, unexpected;
    for (const std::string& name : expected) {
        if (!file.contains(name)) missing += (missing.empty() ? "" : ", ") + name;
    }
    for (const SafetensorsEntry& e : file.entries()) {
        if (!expected.count(e.name)) unexpected += (unexpected.empty() ? "" : ", ") + e.name;
    }
    if (!missing.empty() || !unexpected.empty()) {
        std::string message = path + ": tensor names do not match the actor-critic";
        if (!missing.empty()) message += "; missing: " + missing;
        if (!unexpected.empty()) message += "; unexpected: " + unexpected;
        message += " (expected actor.{0,2,...}/critic.{0,2,...} .weight and .bias, one pair per layer)";
        fail(message);
    }
    // read_into checks each shape and names the file, the tensor and both shapes.
    for (const Tensor& t : params_.tensors()) file.read_into(t.name, t);
}

// ---- categorical policy helpers ----------------------------------------------------------------------------

// logp[n, a] = logits[n, a] - max_a' logits[n, a'] - log sum_a' exp(logits[n, a'] - max)
void log_softmax_rows(const std::vector<double>& logits, int64_t n, int64_t A, std::vector<double>& logp) {
    check(n >= 0 && A > 0, "log_softmax_rows: n = ", n, ", A = ", A, "; expected n >= 0 and A > 0");
    check(static_cast<int64_t>(logits.size()) >= n * A, "log_softmax_rows: logits has ", logits.size(),
          " values, fewer than n * A = ", n * A);
    logp.resize(static_cast<size_t>(n * A));
    for (int64_t r = 0; r < n; ++r) {
        const double* row = logits.data() + r * A;
        double max = row[0];
        for (int64_t a = 1; a < A; ++a) max = std::max(max, row[a]);
        double sum = 0.0;
        for (int64_t a = 0; a < A; ++a) sum += std::exp(row[a] - max);
        const double log_sum = max + std::log(sum);
        for (int64_t a = 0; a < A; ++a) logp[r * A + a] = row[a] - log_sum;
    }
}

// H = -sum_a p_a log p_a with p_a = exp(logp_a); an action of probability 0 contributes 0 (the limit),
// not 0 * -inf = NaN.
double categorical_entropy(const double* logp_row, int64_t A) {
    double entropy = 0.0;
    for (int64_t a = 0; a < A; ++a) {
        const double p = std::exp(logp_row[a]);
        if (p > 0.0) entropy -= p * logp_row[a];
    }
    return entropy;
}

}  // namespace reftrain

// train/diagnostics.cpp — the diagnostics of train/diagnostics.h, and the run-config glue the CLI uses.
#include "train/diagnostics.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>

#include "kernels/cpu/ops.h"
#include "kernels/error.h"
#include "data/packing.h"
#include "data/tasks.h"
#include "model/generate.h"
#include "train/schedule.h"

namespace reftrain {

namespace {

std::string format_number(double v) {
    char buffer[64];
    std::snprintf(buffer, sizeof(buffer), "%.6g", v);
    return buffer;
}

// Element i of a float tensor (F32 or F64) as a double.
double element(const Tensor& t, int64_t i) {
    double value = 0.0;
    dispatch_float(t.dtype, "diagnostics", [&](auto tag) { value = static_cast<double>(t.ptr<decltype(tag)>()[i]); });
    return value;
}

void set_element(const Tensor& t, int64_t i, double value) {
    dispatch_float(t.dtype, "diagnostics", [&](auto tag) { t.ptr<decltype(tag)>()[i] = static_cast<decltype(tag)>(value); });
}

// max |x| over elements [begin, end) of a float tensor.
double max_abs(const Tensor& t, int64_t begin, int64_t end) {
    double m = 0.0;
    for (int64_t i = begin; i < end; ++i) m = std::max(m, std::fabs(element(t, i)));
    return m;
}

void require_batch_fits(const Transformer& model, const Batch& batch, const char* what) {
    check(batch.batch_size == model.batch_size() && batch.seq_len == model.seq_len(), what, ": the batch is (",
          batch.batch_size, ", ", batch.seq_len, ") but the model was built for (", model.batch_size(), ", ",
          model.seq_len(), ")");
    check(batch.input_ids.size() == static_cast<size_t>(batch.batch_size * batch.seq_len) &&
              batch.targets.size() == batch.input_ids.size(),
          what, ": the batch's id/target vectors do not hold batch_size * seq_len entries");
}

int64_t count_supervised(const std::vector<int64_t>& targets) {
    int64_t n = 0;
    for (int64_t t : targets) n += t != cpu::kIgnoreIndex;
    return n;
}

// Targets of `batch` restricted by `keep(b, t)`; where a kept row has no supervised target at all, the
// next input id is used instead so the probe is never vacuous.
std::vector<int64_t> probe_targets(const Batch& batch, int64_t row, int64_t position) {
    const int64_t T = batch.seq_len;
    std::vector<int64_t> targets(batch.targets.size(), cpu::kIgnoreIndex);
    if (position >= 0) {
        const int64_t original = batch.targets[row * T + position];
        targets[row * T + position] =
            original != cpu::kIgnoreIndex ? original : (position + 1 < T ? batch.input_ids[row * T + position + 1] : 0);
        return targets;
    }
    bool any = false;
    for (int64_t t = 0; t < T; ++t) {
        targets[row * T + t] = batch.targets[row * T + t];
        any |= targets[row * T + t] != cpu::kIgnoreIndex;
    }
    if (!any) {
        for (int64_t t = 0; t + 1 < T; ++t) targets[row * T + t] = batch.input_ids[row * T + t + 1];
    }
    return targets;
}

// One forward + backward of `model` on the batch's ids and `targets`; returns grad:model.embed_tokens.out.
const Tensor& backprop_to_input(Transformer& model, Batch& batch, std::vector<int64_t>& targets) {
    const Tensor ids = batch.input_ids_tensor();
    const Tensor target_tensor(targets.data(), DType::I64, {batch.batch_size, batch.seq_len}, "targets");
    model.forward(ids, target_tensor);
    model.backward();
    model.zero_grad();  // the parameter gradients of a probe are of no use; leave the model clean
    return model.act_grads().get("grad:model.embed_tokens.out");
}

}  // namespace

double DiagnosticResult::number(const std::string& key) const {
    for (const auto& [k, v] : numbers) {
        if (k == key) return v;
    }
    fail("diagnostic ", name, ": no number named '", key, "'");
}

std::string format_result(const DiagnosticResult& r) {
    std::ostringstream out;
    out << "diagnose " << r.name << ": " << (r.pass ? "PASS" : "FAIL") << " — " << r.verdict << "\n";
    for (const auto& [key, value] : r.numbers) out << "  " << key << " = " << format_number(value) << "\n";
    if (!r.table.empty()) out << r.table << (r.table.back() == '\n' ? "" : "\n");
    return out.str();
}

std::vector<DiagnosticInfo> diagnostic_list() {
    return {
        {"init-loss", "loss of the freshly initialised model vs ln V (bad-init-scale, double-softmax)"},
        {"overfit-batch", "AdamW on one fixed batch must reach a loss near 0 (dead-layer)"},
        {"grad-flow", "per-parameter grad rms, max, zero fraction, update/data ratio (dead-layer)"},
        {"causality", "backprop from position t: every input after t gets exactly 0 (causal-leak)"},
        {"batch-independence", "backprop from batch row b: every other row gets exactly 0 (view-vs-permute)"},
        {"gradcheck", "fp64 central differences vs backward on sampled parameter entries"},
        {"kv-cache", "cached decoding logits vs a full recompute (kv-cache-mismatch, causal-leak)"},
        {"mask", "BOS, supervised spans and target alignment of the run's dataset (mask bugs)"},
    };
}

// ---- init-loss ------------------------------------------------------------------------------------------

DiagnosticResult check_init_loss(Transformer& model, Batch& batch, double tolerance) {
    require_batch_fits(model, batch, "init-loss");
    DiagnosticResult r;
    r.name = "init-loss";
    const ForwardResult f = model.forward(batch.input_ids_tensor(), batch.targets_tensor());
    const double ln_v = std::log(static_cast<double>(model.config().vocab_size));
    const Tensor& logits = model.acts().get("logits");
    double sum = 0.0, sum_sq = 0.0;
    for (int64_t i = 0; i < logits.numel(); ++i) {
        const double v = element(logits, i);
        sum += v;
        sum_sq += v * v;
    }
    const double n = static_cast<double>(logits.numel());
    const double logit_std = std::sqrt(std::max(0.0, sum_sq / n - (sum / n) * (sum / n)));
    const double excess = f.loss - ln_v;
    r.numbers = {{"loss", f.loss}, {"ln_V", ln_v}, {"excess", excess}, {"tolerance", tolerance},
                 {"logit_std", logit_std}, {"supervised_tokens", static_cast<double>(f.supervised_tokens)}};
    std::ostringstream v;
    if (f.supervised_tokens == 0) {
        v << "the batch has no supervised tokens, so there is no loss to compare (check the data: mask diagnostic)";
    } else if (!std::isfinite(f.loss)) {
        v << "the initial loss is not finite";
    } else if (init_loss_near_log_vocab(f.loss, model.config().vocab_size, tolerance)) {
        r.pass = true;
        v << "initial loss " << format_number(f.loss) << " is within " << tolerance << " nats of ln V = "
          << format_number(ln_v) << ": the fresh model predicts nearly uniformly";
    } else if (excess > 0) {
        v << "initial loss " << format_number(f.loss) << " exceeds ln V = " << format_number(ln_v) << " by "
          << format_number(excess) << " nats (logit std " << format_number(logit_std)
          << "): the init is confidently wrong — initializer_range too large? (bad-init-scale)";
    } else {
        v << "initial loss " << format_number(f.loss) << " is " << format_number(-excess)
          << " nats BELOW ln V: an untrained model should not beat uniform guessing — a leak of the targets?";
    }
    r.verdict = v.str();
    return r;
}

// ---- overfit-batch ----------------------------------------------------------------------------------------

DiagnosticResult check_overfit_batch(Transformer& model, Batch& batch, const OverfitOptions& options) {
    require_batch_fits(model, batch, "overfit-batch");
    check(options.steps > 0, "overfit-batch: steps must be positive, got ", options.steps);
    DiagnosticResult r;
    r.name = "overfit-batch";
    AdamWConfig config;
    config.lr = options.lr;
    config.weight_decay = 0.0;
    AdamW optimizer(model.params(), model.grads(), config);
    std::vector<Tensor*> frozen;
    for (size_t i = 0; i < model.params().size(); ++i) {
        for (const std::string& prefix : options.frozen_prefixes) {
            if (model.params().at(i).name.rfind(prefix, 0) == 0) {
                frozen.push_back(&model.grads().at(i));
                break;
            }
        }
    }
    const Tensor ids = batch.input_ids_tensor(), targets = batch.targets_tensor();
    double initial = 0.0, best = std::numeric_limits<double>::infinity();
    int64_t supervised = 0;
    std::ostringstream curve;
    curve << "  step   loss\n";
    for (int64_t step = 0; step < options.steps; ++step) {
        model.zero_grad();
        const ForwardResult f = model.forward(ids, targets);
        if (step == 0) {
            initial = f.loss;
            supervised = f.supervised_tokens;
        }
        best = std::min(best, f.loss);
        if (step % std::max<int64_t>(1, options.steps / 5) == 0) curve << "  " << step << "   " << format_number(f.loss) << "\n";
        if (f.supervised_tokens == 0 || !std::isfinite(f.loss)) break;
        model.backward();
        for (Tensor* g : frozen) std::memset(g->data, 0, g->nbytes());  // the dead layer: never applied
        optimizer.step(options.lr);
    }
    const double final_loss = model.forward(ids, targets).loss;
    best = std::min(best, final_loss);
    model.zero_grad();
    curve << "  " << options.steps << "   " << format_number(final_loss) << "\n";
    r.table = curve.str();
    r.numbers = {{"initial_loss", initial},     {"final_loss", final_loss},
                 {"best_loss", best},           {"max_final_loss", options.max_final_loss},
                 {"steps", static_cast<double>(options.steps)}, {"lr", options.lr},
                 {"supervised_tokens", static_cast<double>(supervised)},
                 {"frozen_tensors", static_cast<double>(frozen.size())}};
    std::ostringstream v;
    if (supervised == 0) {
        v << "the batch has no supervised tokens: nothing to fit (check the data: mask diagnostic)";
    } else if (!std::isfinite(final_loss)) {
        v << "the loss became non-finite while fitting one batch (lr " << options.lr << " too high?)";
    } else if (final_loss < options.max_final_loss) {
        r.pass = true;
        v << "one batch fitted: loss " << format_number(initial) << " -> " << format_number(final_loss) << " in "
          << options.steps << " steps (bound " << options.max_final_loss << ")";
    } else {
        v << "could not fit one batch: loss " << format_number(initial) << " -> " << format_number(final_loss)
          << " after " << options.steps << " steps at lr " << options.lr << " (bound " << options.max_final_loss
          << "). A model that cannot memorise " << supervised
          << " tokens has a broken path: parameters not updated (dead-layer), lr 0, or a broken backward";
    }
    r.verdict = v.str();
    return r;
}

// ---- grad-flow ----------------------------------------------------------------------------------------------

DiagnosticResult check_grad_flow(Transformer& model, Batch& batch, double lr, const AdamWConfig& adamw) {
    require_batch_fits(model, batch, "grad-flow");
    DiagnosticResult r;
    r.name = "grad-flow";
    model.zero_grad();
    const ForwardResult f = model.forward(batch.input_ids_tensor(), batch.targets_tensor());
    if (f.supervised_tokens > 0) model.backward();
    // One AdamW step on a copy of the weights' state: the update/data ratio, then everything restored.
    const std::vector<std::byte> saved(model.params().data(), model.params().data() + model.params().nbytes());
    AdamWConfig config = adamw;
    config.lr = lr;
    AdamW optimizer(model.params(), model.grads(), config);
    optimizer.step(lr);

    std::ostringstream table;
    char line[256];
    std::snprintf(line, sizeof(line), "  %-48s %11s %11s %7s %11s\n", "parameter", "grad rms", "max |grad|", "zero %",
                  "update/data");
    table << line;
    std::vector<std::string> dead, non_finite;
    double min_ratio = std::numeric_limits<double>::infinity(), max_ratio = 0.0;
    for (size_t i = 0; i < model.params().size(); ++i) {
        const Tensor& p = model.params().at(i);
        const Tensor& g = model.grads().at(i);
        const Tensor before(const_cast<std::byte*>(saved.data()) + (static_cast<const std::byte*>(p.data) - model.params().data()),
                            p.dtype, {p.numel()}, p.name);
        double sum_sq = 0.0, max_grad = 0.0, delta_sq = 0.0, data_sq = 0.0;
        int64_t zeros = 0, bad = 0;
        for (int64_t j = 0; j < g.numel(); ++j) {
            const double gj = element(g, j);
            if (!std::isfinite(gj)) { ++bad; continue; }
            sum_sq += gj * gj;
            max_grad = std::max(max_grad, std::fabs(gj));
            zeros += gj == 0.0;
            const double b = element(before, j), d = element(p, j) - b;
            delta_sq += d * d;
            data_sq += b * b;
        }
        const int64_t n = g.numel();
        const double ratio = data_sq > 0 ? std::sqrt(delta_sq / data_sq) : std::numeric_limits<double>::infinity();
        if (bad > 0) non_finite.push_back(p.name);
        else if (zeros == n) dead.push_back(p.name);
        if (std::isfinite(ratio)) {
            min_ratio = std::min(min_ratio, ratio);
            max_ratio = std::max(max_ratio, ratio);
        }
        std::snprintf(line, sizeof(line), "  %-48s %11.3e %11.3e %7.1f %11.3e%s\n", p.name.c_str(),
                      std::sqrt(sum_sq / static_cast<double>(std::max<int64_t>(1, n))), max_grad,
                      100.0 * static_cast<double>(zeros) / static_cast<double>(std::max<int64_t>(1, n)), ratio,
                      bad > 0 ? "  NON-FINITE" : zeros == n ? "  DEAD (no gradient)" : "");
        table << line;
    }
    std::memcpy(model.params().data(), saved.data(), saved.size());
    model.zero_grad();
    r.table = table.str();
    r.numbers = {{"loss", f.loss},
                 {"parameters", static_cast<double>(model.params().size())},
                 {"dead_parameters", static_cast<double>(dead.size())},
                 {"non_finite_parameters", static_cast<double>(non_finite.size())},
                 {"lr", lr},
                 {"min_update_data_ratio", std::isfinite(min_ratio) ? min_ratio : 0.0},
                 {"max_update_data_ratio", max_ratio}};
    auto first_names = [](const std::vector<std::string>& names) {
        std::string s;
        for (size_t i = 0; i < names.size() && i < 3; ++i) s += (i ? ", " : "") + names[i];
        if (names.size() > 3) s += ", ... (" + std::to_string(names.size()) + " in all)";
        return s;
    };
    std::ostringstream v;
    if (f.supervised_tokens == 0) {
        v << "the batch has no supervised tokens: no gradient can flow (check the data: mask diagnostic)";
    } else if (!non_finite.empty()) {
        v << non_finite.size() << " parameter(s) have non-finite gradients: " << first_names(non_finite);
    } else if (!dead.empty()) {
        v << dead.size() << " parameter(s) get exactly zero gradient (dead: nothing reaches them): " << first_names(dead)
          << ". A zeroed output projection blocks everything before it in its block";
    } else {
        r.pass = true;
        v << "every one of " << model.params().size() << " parameters gets a finite, nonzero gradient; update/data "
          << "ratio " << format_number(r.number("min_update_data_ratio")) << " .. " << format_number(max_ratio)
          << " at lr " << lr;
    }
    r.verdict = v.str();
    return r;
}

// ---- causality ----------------------------------------------------------------------------------------------

DiagnosticResult check_causality(Transformer& model, Batch& batch, std::vector<int64_t> positions) {
    require_batch_fits(model, batch, "causality");
    const int64_t T = batch.seq_len, d = model.config().hidden_size;
    check(T >= 2, "causality: needs seq_len >= 2, got ", T);
    if (positions.empty()) positions = {0, T / 3, (2 * T) / 3, T - 2};
    std::sort(positions.begin(), positions.end());
    positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
    DiagnosticResult r;
    r.name = "causality";
    std::ostringstream table;
    table << "  t     max|grad| at t   max|grad| before t   max|grad| after t   first position after t with grad\n";
    int64_t leaks = 0, vacuous = 0, first_leak_t = -1, first_leak_s = -1;
    double worst_future = 0.0;
    for (int64_t t : positions) {
        check(t >= 0 && t < T, "causality: position ", t, " is outside [0, ", T, ")");
        std::vector<int64_t> targets = probe_targets(batch, 0, t);
        const Tensor& dx = backprop_to_input(model, batch, targets);  // (B, T, d); row 0 is the first T*d
        const double at_t = max_abs(dx, t * d, (t + 1) * d);
        const double before = t > 0 ? max_abs(dx, 0, t * d) : 0.0;
        double after = 0.0;
        int64_t first = -1;
        for (int64_t s = t + 1; s < T; ++s) {
            const double m = max_abs(dx, s * d, (s + 1) * d);
            if (m != 0.0 && first < 0) first = s;
            after = std::max(after, m);
        }
        if (after != 0.0) {
            ++leaks;
            if (first_leak_t < 0) { first_leak_t = t; first_leak_s = first; }
        }
        if (at_t == 0.0) ++vacuous;
        worst_future = std::max(worst_future, after);
        char line[200];
        std::snprintf(line, sizeof(line), "  %-5lld %14.3e %20.3e %19.3e   %s\n", static_cast<long long>(t), at_t, before,
                      after, first >= 0 ? std::to_string(first).c_str() : "-");
        table << line;
        r.numbers.emplace_back("t=" + std::to_string(t) + " max_grad_after_t", after);
    }
    r.table = table.str();
    r.numbers.insert(r.numbers.begin(), {{"positions_checked", static_cast<double>(positions.size())},
                                         {"leaking_positions", static_cast<double>(leaks)},
                                         {"max_grad_after_t", worst_future}});
    std::ostringstream v;
    if (leaks > 0) {
        v << "the loss at position " << first_leak_t << " has a gradient w.r.t. the input at position " << first_leak_s
          << " (max " << format_number(worst_future) << ", must be exactly 0): the model sees the future (causal-leak)";
    } else if (vacuous > 0) {
        v << vacuous << " probed position(s) got no gradient even at t itself: the check is vacuous there";
    } else {
        r.pass = true;
        v << "for each of " << positions.size() << " positions t, inputs after t get exactly zero gradient and t "
          << "itself a nonzero one";
    }
    r.verdict = v.str();
    return r;
}

// ---- batch-independence -------------------------------------------------------------------------------------

DiagnosticResult check_batch_independence(Transformer& model, Batch& batch) {
    require_batch_fits(model, batch, "batch-independence");
    const int64_t B = batch.batch_size, T = batch.seq_len, d = model.config().hidden_size;
    check(B >= 2, "batch-independence: needs batch_size >= 2 (one row cannot leak into another), got ", B);
    DiagnosticResult r;
    r.name = "batch-independence";
    std::ostringstream table;
    table << "  loss on row   max|grad| own row   max|grad| other rows   first other row with grad\n";
    int64_t leaks = 0, vacuous = 0, first_row = -1, first_other = -1;
    double worst = 0.0;
    const int64_t rows = std::min<int64_t>(B, 8);
    for (int64_t b = 0; b < rows; ++b) {
        std::vector<int64_t> targets = probe_targets(batch, b, -1);
        const Tensor& dx = backprop_to_input(model, batch, targets);
        const double own = max_abs(dx, b * T * d, (b + 1) * T * d);
        double other = 0.0;
        int64_t first = -1;
        for (int64_t o = 0; o < B; ++o) {
            if (o == b) continue;
            const double m = max_abs(dx, o * T * d, (o + 1) * T * d);
            if (m != 0.0 && first < 0) first = o;
            other = std::max(other, m);
        }
        if (other != 0.0) {
            ++leaks;
            if (first_row < 0) { first_row = b; first_other = first; }
        }
        if (own == 0.0) ++vacuous;
        worst = std::max(worst, other);
        char line[200];
        std::snprintf(line, sizeof(line), "  %-13lld %17.3e %22.3e   %s\n", static_cast<long long>(b), own, other,
                      first >= 0 ? std::to_string(first).c_str() : "-");
        table << line;
    }
    r.table = table.str();
    r.numbers = {{"rows_checked", static_cast<double>(rows)},
                 {"leaking_rows", static_cast<double>(leaks)},
                 {"max_grad_other_rows", worst}};
    std::ostringstream v;
    if (leaks > 0) {
        v << "the loss of batch row " << first_row << " has a gradient w.r.t. the inputs of row " << first_other
          << " (max " << format_number(worst) << ", must be exactly 0): rows mix — a reshape where a permute was "
          << "needed? (view-vs-permute)";
    } else if (vacuous > 0) {
        v << vacuous << " row(s) got no gradient on their own inputs: the check is vacuous there";
    } else {
        r.pass = true;
        v << "the loss of each of " << rows << " rows reaches only its own row's inputs (others exactly 0)";
    }
    r.verdict = v.str();
    return r;
}

// ---- gradcheck ----------------------------------------------------------------------------------------------

DiagnosticResult check_gradcheck(const ModelConfig& config, const Batch& batch, const GradcheckOptions& options) {
    const int64_t B = std::min(options.rows, batch.batch_size), T = std::min(options.seq_len, batch.seq_len);
    check(B >= 1 && T >= 1, "gradcheck: empty batch");
    Batch cut{B, T, std::vector<int64_t>(B * T), std::vector<int64_t>(B * T)};
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < T; ++t) {
            cut.input_ids[b * T + t] = batch.input_ids[b * batch.seq_len + t];
            cut.targets[b * T + t] = batch.targets[b * batch.seq_len + t];
        }
    }
    if (count_supervised(cut.targets) == 0) {  // a short prefix may hold only the prompt: predict the next id
        for (int64_t b = 0; b < B; ++b) {
            for (int64_t t = 0; t + 1 < T; ++t) cut.targets[b * T + t] = cut.input_ids[b * T + t + 1];
        }
    }
    Transformer model(config, B, T, DType::F64);
    model.init_weights(options.seed);
    const Tensor ids = cut.input_ids_tensor(), targets = cut.targets_tensor();
    model.zero_grad();
    model.forward(ids, targets);
    model.backward(options.loss_weight);

    DiagnosticResult r;
    r.name = "gradcheck";
    std::ostringstream table;
    char line[256];
    std::snprintf(line, sizeof(line), "  %-48s %11s %11s %11s\n", "parameter", "max |grad|", "max error", "error/bound");
    table << line;
    double worst_ratio = 0.0, max_error = 0.0, max_grad_all = 0.0;
    std::string worst_name;
    int64_t entries = 0;
    for (size_t i = 0; i < model.params().size(); ++i) {
        const Tensor& p = model.params().at(i);
        const Tensor& g = model.grads().at(i);
        const int64_t n = p.numel();
        // Evenly spread entries plus the one with the largest analytic gradient (embedding rows of
        // tokens not in the batch have zero gradient, so spreading alone could miss every live entry).
        std::vector<int64_t> picks;
        const int64_t stride = std::max<int64_t>(1, n / std::max<int64_t>(1, options.samples_per_tensor));
        for (int64_t j = 0; j < n && static_cast<int64_t>(picks.size()) < options.samples_per_tensor; j += stride) {
            picks.push_back(j);
        }
        int64_t largest = 0;
        for (int64_t j = 0; j < n; ++j) {
            if (std::fabs(element(g, j)) > std::fabs(element(g, largest))) largest = j;
        }
        if (std::find(picks.begin(), picks.end(), largest) == picks.end()) picks.push_back(largest);
        double tensor_max_grad = 0.0, tensor_error = 0.0;
        for (int64_t j : picks) {
            const double saved = element(p, j);
            set_element(p, j, saved + options.step);
            const double up = model.forward(ids, targets).loss;
            set_element(p, j, saved - options.step);
            const double down = model.forward(ids, targets).loss;
            set_element(p, j, saved);
            const double numeric = (up - down) / (2 * options.step), analytic = element(g, j);
            tensor_max_grad = std::max({tensor_max_grad, std::fabs(numeric), std::fabs(analytic)});
            tensor_error = std::max(tensor_error, std::fabs(numeric - analytic));
            ++entries;
        }
        const double bound = options.relative_tolerance * tensor_max_grad + options.absolute_tolerance;
        const double ratio = tensor_error / bound;
        if (ratio > worst_ratio) {
            worst_ratio = ratio;
            worst_name = p.name;
        }
        max_error = std::max(max_error, tensor_error);
        max_grad_all = std::max(max_grad_all, tensor_max_grad);
        std::snprintf(line, sizeof(line), "  %-48s %11.3e %11.3e %11.3e%s\n", p.name.c_str(), tensor_max_grad,
                      tensor_error, ratio, ratio > 1.0 ? "  WRONG" : "");
        table << line;
    }
    r.table = table.str();
    r.numbers = {{"max_error_ratio", worst_ratio},
                 {"max_abs_error", max_error},
                 {"max_abs_grad", max_grad_all},
                 {"tensors", static_cast<double>(model.params().size())},
                 {"entries", static_cast<double>(entries)},
                 {"relative_tolerance", options.relative_tolerance},
                 {"absolute_tolerance", options.absolute_tolerance},
                 {"step", options.step}};
    std::ostringstream v;
    if (max_grad_all == 0.0) {
        v << "every sampled gradient is zero: the check is vacuous";
    } else if (worst_ratio <= 1.0) {
        r.pass = true;
        v << "backward matches fp64 central differences on " << entries << " entries of "
          << model.params().size() << " tensors (worst error " << format_number(worst_ratio)
          << " x the bound rel " << options.relative_tolerance << " * max|grad| + " << options.absolute_tolerance << ")";
    } else {
        v << "backward disagrees with central differences: worst in " << worst_name << ", error "
          << format_number(worst_ratio) << " x the bound — the analytic gradient is wrong";
    }
    r.verdict = v.str();
    return r;
}

// ---- kv-cache -----------------------------------------------------------------------------------------------

DiagnosticResult compare_decode_with_full(const DecodeFn& decode, const std::vector<int64_t>& prompt,
                                          const std::vector<double>& full, int64_t V, double relative_tolerance) {
    const int64_t L = static_cast<int64_t>(prompt.size());
    check(static_cast<int64_t>(full.size()) == L * V, "kv-cache: the full forward gave ", full.size(),
          " logits for ", L, " positions x V = ", V);
    double max_diff = 0.0, max_logit = 0.0;
    std::vector<double> diffs(L, 0.0);
    for (int64_t t = 0; t < L; ++t) {
        const std::vector<double> cached = decode(prompt[t]);
        check(static_cast<int64_t>(cached.size()) == V, "kv-cache: the decode loop returned ", cached.size(),
              " logits at position ", t, ", want V = ", V);
        for (int64_t v = 0; v < V; ++v) {
            const double full_value = full[t * V + v];
            diffs[t] = std::max(diffs[t], std::fabs(cached[v] - full_value));
            max_logit = std::max(max_logit, std::fabs(full_value));
        }
        max_diff = std::max(max_diff, diffs[t]);
    }
    const double bound = relative_tolerance * std::max(max_logit, 1e-30);
    int64_t first_bad = -1;
    for (int64_t t = 0; t < L && first_bad < 0; ++t) {
        if (!(diffs[t] <= bound)) first_bad = t;
    }
    DiagnosticResult r;
    r.name = "kv-cache";
    // The table: every position when the prompt is short, else the mismatches (first 10) and the worst.
    std::ostringstream table;
    table << "  position   max |cached - full|\n";
    const int64_t worst = std::max_element(diffs.begin(), diffs.end()) - diffs.begin();
    int64_t shown_mismatches = 0;
    for (int64_t t = 0; t < L; ++t) {
        const bool mismatch = !(diffs[t] <= bound);
        if (!(L <= 16 || (mismatch && shown_mismatches < 10) || t == worst)) continue;
        shown_mismatches += mismatch;
        char line[96];
        std::snprintf(line, sizeof(line), "  %-10lld %.3e%s%s\n", static_cast<long long>(t), diffs[t],
                      mismatch ? "  MISMATCH" : "", t == worst && L > 16 ? "  (worst)" : "");
        table << line;
    }
    r.table = table.str();
    r.numbers = {{"positions", static_cast<double>(L)},
                 {"max_abs_diff", max_diff},
                 {"max_abs_logit", max_logit},
                 {"relative_diff", max_diff / std::max(max_logit, 1e-30)},
                 {"relative_tolerance", relative_tolerance},
                 {"first_mismatch_position", static_cast<double>(first_bad)}};
    std::ostringstream v;
    if (first_bad < 0) {
        r.pass = true;
        v << "cached decoding matches the full recompute at all " << L << " positions (max diff "
          << format_number(max_diff) << " <= " << relative_tolerance << " * max|logit| " << format_number(max_logit) << ")";
    } else {
        v << "cached decoding differs from the full recompute from position " << first_bad << " (max diff "
          << format_number(max_diff) << " vs bound " << format_number(bound)
          << "): the cache path and the training path compute different functions (kv-cache-mismatch; a causal-leak "
          << "in the full path shows up here too, since decoding cannot see the future)";
    }
    r.verdict = v.str();
    return r;
}

DiagnosticResult check_kv_cache(const Transformer& model, const std::vector<int64_t>& prompt, double relative_tolerance) {
    const ModelConfig& c = model.config();
    const int64_t L = static_cast<int64_t>(prompt.size()), V = c.vocab_size;
    check(L >= 1 && L <= c.max_position_embeddings, "kv-cache: the prompt has ", L,
          " tokens; it needs 1 .. max_position_embeddings = ", c.max_position_embeddings);
    // The full recompute: a (1, L) model with the same weights (the arenas have the same layout).
    Transformer full(c, 1, L, model.dtype());
    check(full.params().nbytes() == model.params().nbytes(), "kv-cache: parameter layouts differ");
    std::memcpy(full.params().data(), model.params().data(), model.params().nbytes());
    std::vector<int64_t> ids = prompt;
    full.forward(Tensor(ids.data(), DType::I64, {1, L}, "input_ids"), Tensor());
    const Tensor& logits = full.acts().get("logits");  // (1, L, V)
    std::vector<double> full_logits(static_cast<size_t>(L * V));
    for (int64_t i = 0; i < L * V; ++i) full_logits[i] = element(logits, i);
    InferenceSession session(model, L);
    return compare_decode_with_full([&](int64_t token) { return session.feed({token}); }, prompt, full_logits, V,
                                    relative_tolerance);
}

namespace {

// The largest change of the outputs selected by `watch(b, t)` between two logit sets of a (B, T) batch.
double moved(const std::vector<double>& a, const std::vector<double>& b, int64_t B, int64_t T, int64_t V,
             const std::function<bool(int64_t, int64_t)>& watch, int64_t* where_b, int64_t* where_t) {
    double worst = 0.0;
    for (int64_t row = 0; row < B; ++row) {
        for (int64_t t = 0; t < T; ++t) {
            if (!watch(row, t)) continue;
            for (int64_t v = 0; v < V; ++v) {
                const size_t i = static_cast<size_t>((row * T + t) * V + v);
                const double d = std::fabs(a[i] - b[i]);
                if (!(d <= worst)) {
                    worst = std::isnan(d) ? INFINITY : d;
                    *where_b = row;
                    *where_t = t;
                }
            }
        }
    }
    return worst;
}

std::vector<double> checked_logits(const LogitsFn& logits_of, const std::vector<int64_t>& ids, int64_t B, int64_t T,
                                   int64_t V, const char* name) {
    std::vector<double> out = logits_of(ids, B, T);
    check(static_cast<int64_t>(out.size()) == B * T * V, name, ": the logits function returned ", out.size(),
          " values for B * T * V = ", B, " * ", T, " * ", V);
    return out;
}

// The loop both perturbation checks share: for each of `n` perturbations, `perturb(k, ids)` edits a copy
// of the batch, and the outputs `watched(k, b, t)` says must not move are compared with the unperturbed
// ones. Counts the perturbations that moved any of them and keeps the largest move and where it was.
struct Leaks {
    int64_t count = 0, k = -1, b = -1, t = -1;
    double worst = 0.0;
};
Leaks find_leaks(const LogitsFn& logits_of, const std::vector<int64_t>& ids, int64_t B, int64_t T, int64_t V,
                 const char* name, int64_t n, const std::function<void(int64_t, std::vector<int64_t>&)>& perturb,
                 const std::function<bool(int64_t, int64_t, int64_t)>& watched) {
    const std::vector<double> base = checked_logits(logits_of, ids, B, T, V, name);
    Leaks leaks;
    for (int64_t k = 0; k < n; ++k) {
        std::vector<int64_t> changed = ids;
        perturb(k, changed);
        int64_t b = -1, t = -1;
        const double d = moved(base, checked_logits(logits_of, changed, B, T, V, name), B, T, V,
                               [&](int64_t row, int64_t pos) { return watched(k, row, pos); }, &b, &t);
        if (!(d > 0.0)) continue;
        ++leaks.count;
        if (!(d <= leaks.worst)) leaks = {leaks.count, k, b, t, d};
    }
    return leaks;
}

}  // namespace

DiagnosticResult check_causality_by_perturbation(const LogitsFn& logits_of, const std::vector<int64_t>& ids, int64_t B,
                                                 int64_t T, int64_t V) {
    check(B >= 1 && T >= 2 && static_cast<int64_t>(ids.size()) == B * T, "causality: needs a (B, T) batch with T >= 2");
    // Perturbation k changes position s = k + 1 in every row; the outputs before s must not move.
    const Leaks leaks = find_leaks(
        logits_of, ids, B, T, V, "causality", T - 1,
        [&](int64_t k, std::vector<int64_t>& x) {
            for (int64_t row = 0; row < B; ++row) x[row * T + k + 1] = (x[row * T + k + 1] + 1) % V;
        },
        [](int64_t k, int64_t, int64_t t) { return t < k + 1; });
    DiagnosticResult r;
    r.name = "causality";
    r.pass = leaks.count == 0;
    r.numbers = {{"positions_perturbed", static_cast<double>(T - 1)},
                 {"leaking_positions", static_cast<double>(leaks.count)},
                 {"max_change_before", leaks.worst}};
    r.verdict = r.pass ? concat("changing any token leaves every earlier position's logits exactly as they were (",
                                T - 1, " positions perturbed)")
                       : concat(leaks.count, " of ", T - 1, " perturbed positions change earlier outputs; the largest: "
                                "the token at ", leaks.k + 1, " moves the logits at ", leaks.t, " by ",
                                format_number(leaks.worst), ": position t sees the future");
    return r;
}

DiagnosticResult check_batch_independence_by_perturbation(const LogitsFn& logits_of, const std::vector<int64_t>& ids,
                                                          int64_t B, int64_t T, int64_t V) {
    check(B >= 2 && T >= 1 && static_cast<int64_t>(ids.size()) == B * T,
          "batch-independence: needs a (B, T) batch with B >= 2");
    // Perturbation k changes every token of row k; the other rows' outputs must not move.
    const Leaks leaks = find_leaks(
        logits_of, ids, B, T, V, "batch-independence", B,
        [&](int64_t k, std::vector<int64_t>& x) {
            for (int64_t t = 0; t < T; ++t) x[k * T + t] = (x[k * T + t] + 1) % V;
        },
        [](int64_t k, int64_t row, int64_t) { return row != k; });
    DiagnosticResult r;
    r.name = "batch-independence";
    r.pass = leaks.count == 0;
    r.numbers = {{"rows_perturbed", static_cast<double>(B)}, {"leaking_rows", static_cast<double>(leaks.count)},
                 {"max_change_elsewhere", leaks.worst}};
    r.verdict = r.pass ? concat("changing any row leaves every other row's logits exactly as they were (", B, " rows)")
                       : concat(leaks.count, " of ", B, " rows change other rows' outputs; the largest: row ", leaks.k,
                                " moves row ", leaks.b, " by ", format_number(leaks.worst), ": batch rows are mixed");
    return r;
}

// ---- mask ---------------------------------------------------------------------------------------------------

int64_t misaligned_batch_targets(const Batch& batch, int64_t* supervised) {
    int64_t bad = 0, n = 0;
    for (int64_t b = 0; b < batch.batch_size; ++b) {
        for (int64_t t = 0; t < batch.seq_len; ++t) {
            const int64_t target = batch.targets[b * batch.seq_len + t];
            if (target == cpu::kIgnoreIndex) continue;
            ++n;
            // The last position's target is the row's (T+1)-th token, not among the inputs: unverifiable.
            if (t + 1 < batch.seq_len && target != batch.input_ids[b * batch.seq_len + t + 1]) ++bad;
        }
    }
    if (supervised) *supervised = n;
    return bad;
}

DiagnosticResult audit_masks(const ChatTemplate& chat, const std::vector<Conversation>& conversations,
                             const std::vector<RenderedConversation>& rendered) {
    check(conversations.size() == rendered.size(), "mask: ", conversations.size(), " conversations but ",
          rendered.size(), " renderings");
    const Tokenizer& tokenizer = chat.tokenizer();
    const int64_t bos = chat.bos_id(), eot = chat.end_of_turn_id();
    int64_t tokens = 0, supervised = 0, length_mismatch = 0, bos_errors = 0, unsupervised = 0, span_errors = 0,
            target_errors = 0;
    int64_t first_bad = -1;
    std::string first_problem;
    for (size_t i = 0; i < rendered.size(); ++i) {
        const RenderedConversation& r = rendered[i];
        const Conversation& c = conversations[i];
        std::string problem;
        tokens += static_cast<int64_t>(r.ids.size());
        if (r.ids.size() != r.supervised.size()) {
            ++length_mismatch;
            problem = std::to_string(r.ids.size()) + " ids but " + std::to_string(r.supervised.size()) + " flags";
        } else {
            supervised += r.num_supervised();
            const int64_t bos_count = std::count(r.ids.begin(), r.ids.end(), bos);
            if (r.ids.empty() || r.ids[0] != bos || bos_count != 1) {
                ++bos_errors;
                problem = "BOS must appear exactly once, at position 0 (found " + std::to_string(bos_count) + ")";
            }
            if (r.num_supervised() == 0) {
                ++unsupervised;
                if (problem.empty()) problem = "no supervised token (no assistant message to learn from?)";
            }
            // The supervised spans, in order, against the assistant messages.
            std::vector<std::vector<int64_t>> spans;
            for (size_t t = 0; t < r.ids.size(); ++t) {
                if (!r.supervised[t]) continue;
                if (t == 0 || !r.supervised[t - 1]) spans.emplace_back();
                spans.back().push_back(r.ids[t]);
            }
            std::vector<std::vector<int64_t>> expected;
            for (const Message& m : c.messages) {
                if (m.role != "assistant") continue;
                expected.push_back(tokenizer.encode(m.content));
                expected.back().push_back(eot);
            }
            if (spans != expected && r.num_supervised() > 0) {
                ++span_errors;
                if (problem.empty()) {
                    problem = std::to_string(spans.size()) + " supervised span(s) for " + std::to_string(expected.size()) +
                              " assistant message(s); supervised text must be exactly each assistant content + end-of-turn";
                    for (size_t s = 0; s < spans.size() && s < expected.size(); ++s) {
                        if (spans[s] != expected[s]) {
                            problem += "; span " + std::to_string(s) + " is \"" + tokenizer.decode(spans[s]) +
                                       "\", expected \"" + tokenizer.decode(expected[s]) + "\"";
                            break;
                        }
                    }
                }
            }
            // Targets: position t predicts token t + 1 exactly where token t + 1 is supervised.
            const std::vector<int64_t> targets = shifted_targets(r);
            int64_t wrong = 0;
            for (size_t t = 0; t < r.ids.size(); ++t) {
                const int64_t want =
                    t + 1 < r.ids.size() && r.supervised[t + 1] ? r.ids[t + 1] : static_cast<int64_t>(cpu::kIgnoreIndex);
                wrong += targets[t] != want;
            }
            if (wrong > 0) {
                ++target_errors;
                if (problem.empty()) {
                    problem = std::to_string(wrong) + " target(s) misaligned: targets[t] must be ids[t + 1] where token t + 1 "
                              "is supervised (mask-off-by-one?)";
                }
            }
        }
        if (!problem.empty() && first_bad < 0) {
            first_bad = static_cast<int64_t>(i);
            first_problem = problem;
        }
    }
    DiagnosticResult r;
    r.name = "mask";
    const int64_t n = static_cast<int64_t>(rendered.size());
    r.numbers = {{"conversations", static_cast<double>(n)},
                 {"tokens", static_cast<double>(tokens)},
                 {"supervised_tokens", static_cast<double>(supervised)},
                 {"supervised_percent", 100.0 * static_cast<double>(supervised) / static_cast<double>(std::max<int64_t>(1, tokens))},
                 {"length_mismatches", static_cast<double>(length_mismatch)},
                 {"bos_errors", static_cast<double>(bos_errors)},
                 {"unsupervised_conversations", static_cast<double>(unsupervised)},
                 {"span_errors", static_cast<double>(span_errors)},
                 {"target_errors", static_cast<double>(target_errors)}};
    const int64_t shown = first_bad >= 0 ? first_bad : 0;
    if (n > 0 && rendered[shown].ids.size() == rendered[shown].supervised.size()) {
        r.table = "  conversation " + std::to_string(shown) + " (" + conversations[shown].source +
                  "), supervised tokens in [[ ]]:\n" + visualize(rendered[shown], tokenizer, /*color=*/false);
    }
    std::ostringstream v;
    if (n == 0) {
        v << "no conversations to audit";
    } else if (first_bad >= 0) {
        v << "conversation " << first_bad << " (" << conversations[first_bad].source << "): " << first_problem;
    } else {
        r.pass = true;
        v << "all " << n << " conversations: one BOS at 0, supervised = assistant content + end-of-turn, targets "
          << "aligned; " << format_number(r.number("supervised_percent")) << "% of tokens supervised";
    }
    r.verdict = v.str();
    return r;
}

DiagnosticResult audit_masks(const ChatTemplate& chat, const std::vector<Conversation>& conversations) {
    std::vector<RenderedConversation> rendered;
    rendered.reserve(conversations.size());
    for (const Conversation& c : conversations) rendered.push_back(chat.render(c));
    return audit_masks(chat, conversations, rendered);
}

// ---- from a run config ------------------------------------------------------------------------------------

Batch first_training_batch(const RunConfig& config, const RunData& data, int64_t rows) {
    Packer packer(data.train_docs, config.train.seq_len, config.data.bos_aligned, config.seed, data.chat->bos_id());
    Batch batch{rows, config.train.seq_len, {}, {}};
    packer.next_batch(rows, batch.input_ids, batch.targets);
    return batch;
}

std::vector<Conversation> training_conversations(const RunConfig& config) {
    const DataConfig& d = config.data;
    if (!d.jsonl.empty()) return load_conversations_jsonl(d.jsonl);
    std::vector<Conversation> out;
    const std::unique_ptr<Task> task = make_task(d.task, d.task_options);
    for (const TaskExample& e : generate_split(*task, Split::train, d.train_examples, config.seed)) {
        out.push_back(to_conversation(e, d.system_prompt));
    }
    return out;
}

DiagnosticResult run_diagnostic(const std::string& name, const RunConfig& config, const DiagnoseOptions& options,
                                std::ostream& log) {
    bool known = false;
    std::string names;
    for (const DiagnosticInfo& info : diagnostic_list()) {
        known |= info.name == name;
        names += (names.empty() ? "" : ", ") + info.name;
    }
    check(known, "diagnose: unknown diagnostic '", name, "' (known: ", names, ")");
    if (config.threads > 0) omp_set_num_threads(static_cast<int>(config.threads));
    const RunData data = prepare_run_data(config.data, config.train.seq_len, config.seed, log);
    const ModelConfig model_config = model_config_for_run(config, data.tokenizer->vocab_size());

    if (name == "mask") {
        DiagnosticResult r = audit_masks(*data.chat, training_conversations(config));
        // The packed batches too: a target that is not the next input of its row is a packing bug.
        Packer packer(data.train_docs, config.train.seq_len, config.data.bos_aligned, config.seed, data.chat->bos_id());
        const int64_t batches = 8;
        int64_t misaligned = 0, supervised = 0;
        for (int64_t i = 0; i < batches; ++i) {
            Batch batch{config.train.batch_size, config.train.seq_len, {}, {}};
            packer.next_batch(batch.batch_size, batch.input_ids, batch.targets);
            int64_t n = 0;
            misaligned += misaligned_batch_targets(batch, &n);
            supervised += n;
        }
        r.numbers.emplace_back("packed_batches", static_cast<double>(batches));
        r.numbers.emplace_back("packed_supervised_targets", static_cast<double>(supervised));
        r.numbers.emplace_back("packed_misaligned_targets", static_cast<double>(misaligned));
        if (supervised == 0 && r.pass) {
            r.pass = false;
            r.verdict = "the conversations are supervised but every target of the first " + std::to_string(batches) +
                        " packed batches is ignored: the collator drops the labels (labels-all-masked)";
        } else if (misaligned > 0 && r.pass) {
            r.pass = false;
            r.verdict = std::to_string(misaligned) + " of " + std::to_string(supervised) +
                        " supervised targets in the first packed batches are not the next input id of their row";
        }
        return r;
    }
    if (name == "gradcheck") {
        return check_gradcheck(model_config, first_training_batch(config, data, 2), GradcheckOptions{.seed = config.seed});
    }

    const int64_t rows = std::max<int64_t>(2, std::min(options.rows, config.train.batch_size));
    Batch batch = first_training_batch(config, data, rows);
    Transformer model(model_config, rows, config.train.seq_len);
    model.init_weights(config.seed);
    log << "diagnose " << name << ": model " << model.num_parameters() << " parameters (seed " << config.seed
        << "), batch " << rows << " x " << config.train.seq_len << "\n";
    if (name == "init-loss") return check_init_loss(model, batch);
    if (name == "overfit-batch") {
        OverfitOptions o;
        if (options.steps > 0) o.steps = options.steps;
        if (options.lr > 0) o.lr = options.lr;
        return check_overfit_batch(model, batch, o);
    }
    if (name == "grad-flow") return check_grad_flow(model, batch, options.lr > 0 ? options.lr : config.schedule.lr, config.train.adamw);
    if (name == "causality") return check_causality(model, batch, options.positions);
    if (name == "batch-independence") return check_batch_independence(model, batch);
    // kv-cache: the first training conversation, as far as the context allows.
    std::vector<int64_t> prompt = data.train_docs.front().ids;
    prompt.resize(std::min<size_t>(prompt.size(), static_cast<size_t>(model_config.max_position_embeddings)));
    return check_kv_cache(model, prompt);
}

}  // namespace reftrain

// debug/diff.cpp — see diff.h for the error measure and the walk order.
#include "debug/diff.h"
#include "kernels/json_strict.h"

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

namespace reftrain {

namespace {
// A __metadata__ value that holds JSON text, read by the one strict reader (kernels/json_strict.h).
nlohmann::json parse_metadata_json(const std::string& text) {
    DuplicateKey duplicate;
    return parse_json_noting_duplicates(text, &duplicate);
}
}  // namespace

std::string encode_dump_order(const std::vector<std::string>& names) { return nlohmann::json(names).dump(); }

std::optional<std::vector<std::string>> read_dump_order(const SafetensorsFile& file) {
    auto found = file.metadata().find(kDumpOrderKey);
    if (found == file.metadata().end()) return std::nullopt;
    nlohmann::json parsed;
    try {
        parsed = parse_metadata_json(found->second);
    } catch (const nlohmann::json::exception& e) {
        fail(file.path(), ": __metadata__ '", kDumpOrderKey, "' is not valid JSON (expected a list of tensor names): ",
             e.what());
    }
    check(parsed.is_array(), file.path(), ": __metadata__ '", kDumpOrderKey, "' must be a JSON list of tensor names, got ",
          parsed.type_name());
    std::vector<std::string> names;
    for (const auto& item : parsed) {
        check(item.is_string(), file.path(), ": __metadata__ '", kDumpOrderKey, "' holds ", item.dump(),
              ", expected only tensor names (strings)");
        names.push_back(item.get<std::string>());
    }
    return names;
}

namespace {

// Rank of a dtype's precision: a higher rank is a coarser (looser) tolerance.
int coarseness(DType dtype) {
    switch (dtype) {
        case DType::I32: case DType::I64: case DType::U8: return 0;
        case DType::F64: return 1;
        case DType::F32: return 2;
        case DType::F16: return 3;
        case DType::BF16: return 4;
    }
    return 4;
}

// Every element of the tensor as float64, whatever its stored dtype.
std::vector<double> read_as_double(const SafetensorsFile& file, const SafetensorsEntry& entry) {
    const int64_t n = entry.numel();
    std::vector<double> out(static_cast<size_t>(n));
    const std::byte* raw = file.raw_data(entry.name);
    const size_t width = dtype_size(entry.dtype);
    for (int64_t i = 0; i < n; ++i) {
        const std::byte* p = raw + static_cast<size_t>(i) * width;
        switch (entry.dtype) {
            case DType::F64: { double v; std::memcpy(&v, p, 8); out[i] = v; break; }
            case DType::F32: { float v; std::memcpy(&v, p, 4); out[i] = v; break; }
            case DType::BF16: { uint16_t v; std::memcpy(&v, p, 2); out[i] = bf16_to_float(v); break; }
            case DType::F16: { uint16_t v; std::memcpy(&v, p, 2); out[i] = f16_to_float(v); break; }
            case DType::I64: { int64_t v; std::memcpy(&v, p, 8); out[i] = static_cast<double>(v); break; }
            case DType::I32: { int32_t v; std::memcpy(&v, p, 4); out[i] = v; break; }
            case DType::U8: { uint8_t v; std::memcpy(&v, p, 1); out[i] = v; break; }
        }
    }
    return out;
}

std::vector<int64_t> without_unit_dims(const std::vector<int64_t>& shape) {
    std::vector<int64_t> out;
    for (int64_t s : shape) {
        if (s != 1) out.push_back(s);
    }
    return out;
}

// Two shapes hold the same elements in the same row-major order when one is the other with
// neighbouring dimensions merged: (B, T, H*D) and (B, T, H, D). Size-1 dimensions are ignored. The
// test is that every boundary of the coarser shape (its running products) is one of the finer's.
bool same_layout(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
    const std::vector<int64_t> x = without_unit_dims(a), y = without_unit_dims(b);
    if (x == y) return true;
    auto boundaries = [](const std::vector<int64_t>& s) {
        std::set<int64_t> out;
        int64_t running = 1;
        for (int64_t d : s) out.insert(running *= d);
        return out;
    };
    const std::set<int64_t> bx = boundaries(x), by = boundaries(y);
    if (x.empty() || y.empty() || *bx.rbegin() != *by.rbegin()) return false;
    const std::set<int64_t>& coarse = bx.size() <= by.size() ? bx : by;
    const std::set<int64_t>& fine = bx.size() <= by.size() ? by : bx;
    return std::includes(fine.begin(), fine.end(), coarse.begin(), coarse.end());
}

// "(2, 9, 48)"; compact = "(2,9,48)", one word in the table.
std::string shape_text(const std::vector<int64_t>& shape, bool compact = false) {
    std::string out = "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i) out += compact ? "," : ", ";
        out += std::to_string(shape[i]);
    }
    out += ")";
    return out;
}

std::vector<int64_t> unravel(int64_t flat, const std::vector<int64_t>& shape) {
    std::vector<int64_t> index(shape.size());
    for (size_t k = shape.size(); k-- > 0;) {
        index[k] = shape[k] > 0 ? flat % shape[k] : 0;
        flat = shape[k] > 0 ? flat / shape[k] : 0;
    }
    return index;
}

// The error |a - b| of one element as the diff measures it (inf for a one-sided NaN/Inf, -1 for the
// same non-finite value on both sides).
double element_error(double x, double y) {
    if (std::isfinite(x) && std::isfinite(y)) return std::fabs(x - y);
    if ((std::isnan(x) && std::isnan(y)) || x == y) return -1.0;
    return INFINITY;
}

// The largest |value| over A's parameter gradients: the scale of the backward pass.
double gradient_scale(const Dump& a) {
    double g = 0.0;
    for (const NamedArray& t : a.tensors) {
        if (tensor_kind(t.name) != TensorKind::Gradient) continue;
        for (double v : t.values) {
            if (std::isfinite(v)) g = std::max(g, std::fabs(v));
        }
    }
    return g;
}

// `backward_scale`: gradient_scale(A). A parameter whose gradient cancels to near zero (a layer's q/k
// when attention is near uniform) carries the absolute rounding of the whole backward pass, not a
// fraction of its own tiny scale, so a gradient's atol is at least rtol / 100 of the largest gradient
// (10 fp32 ulps of it with the default fp32 rtol), unless --atol says otherwise.
TensorDiff compare_arrays(const NamedArray& ea, const NamedArray& eb, const DiffOptions& options,
                          double backward_scale) {
    TensorDiff row;
    row.name = ea.name;
    row.kind = tensor_kind(ea.name);
    row.shape_a = ea.shape;
    row.shape_b = eb.shape;
    row.dtype_a = ea.dtype;
    row.dtype_b = eb.dtype;
    row.tolerance = default_tolerance(ea.dtype, eb.dtype);
    if (options.rtol) row.tolerance.rtol = *options.rtol;
    if (options.atol) {
        row.tolerance.atol = *options.atol;
    } else if (row.kind == TensorKind::Gradient || row.name.rfind("grad.clipped:", 0) == 0) {
        row.tolerance.atol = std::max(row.tolerance.atol, row.tolerance.rtol / 100.0 * backward_scale);
    }
    if (!same_layout(ea.shape, eb.shape)) {
        row.status = TensorStatus::ShapeMismatch;
        row.max_abs = row.max_rel = INFINITY;
        return row;
    }
    const std::vector<double>& va = ea.values;
    const std::vector<double>& vb = eb.values;
    int64_t worst = -1;
    for (size_t i = 0; i < va.size(); ++i) {
        const double err = element_error(va[i], vb[i]);
        if (err < 0) {
            ++row.nonfinite_in_both;
            continue;
        }
        if (std::isinf(err)) {
            ++row.nonfinite_mismatches;
        } else {
            row.scale = std::max({row.scale, std::fabs(va[i]), std::fabs(vb[i])});
        }
        if (worst < 0 || err > row.max_abs) {
            row.max_abs = err;
            worst = static_cast<int64_t>(i);
        }
    }
    if (worst >= 0) {
        row.worst_index = unravel(worst, ea.shape);
        row.a_at_worst = va[worst];
        row.b_at_worst = vb[worst];
    }
    row.max_rel = row.scale > 0 ? row.max_abs / row.scale : (row.max_abs > 0 ? INFINITY : 0.0);
    const bool within = row.max_abs <= row.tolerance.atol + row.tolerance.rtol * row.scale;
    row.status = within ? TensorStatus::Ok : TensorStatus::OverTolerance;
    return row;
}

// A's stored order, else B's, else A's data layout; names A has but the order lacks go at the end.
std::vector<std::string> walk_order(const Dump& a, const Dump& b, DiffReport& report) {
    std::optional<std::vector<std::string>> stored = a.order;
    report.order_source = "A's " + std::string(kDumpOrderKey);
    if (!stored) {
        stored = b.order;
        report.order_source = "B's " + std::string(kDumpOrderKey);
    }
    std::vector<std::string> order;
    std::unordered_set<std::string> seen;
    if (stored) {
        for (const std::string& name : *stored) {
            if (seen.insert(name).second) order.push_back(name);
        }
    } else {
        report.order_source = "A's file layout";
        report.warnings.push_back(concat("neither file has __metadata__ '", kDumpOrderKey,
                                         "': walking A's tensors in data layout order, which need not be "
                                         "execution order (the first tensor over tolerance may not be the "
                                         "earliest difference)"));
    }
    // Names in the files that the stored order does not list: A's, then B's, in layout order.
    int64_t unlisted = 0;
    for (const Dump* dump : {&a, &b}) {
        for (const NamedArray& e : dump->tensors) {
            if (seen.insert(e.name).second) {
                order.push_back(e.name);
                if (stored) ++unlisted;
            }
        }
    }
    if (unlisted > 0) {
        report.warnings.push_back(concat(unlisted, " tensor(s) are not in ", report.order_source,
                                         " and are walked last, in data layout order"));
    }
    return order;
}

// The least floor of the suspicious test: a hundredth of the tolerance. With the default tolerances
// that is 1e-6 relative for fp32 (a correct fp32 model reaches ~1e-6: docs/diffing.md) and 1e-11
// for fp64 (a correct fp64 model reaches ~1e-14); a tolerance given on the command line moves it too.
double least_floor(const TensorDiff& t) { return t.tolerance.rtol / 100.0; }

DType coarser_of(DType a, DType b) { return coarseness(a) >= coarseness(b) ? a : b; }

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void mark_suspicious(std::vector<TensorDiff>& rows, double jump) {
    if (jump <= 0) return;
    double floor = 0.0;
    for (TensorDiff& t : rows) {
        if (t.kind == TensorKind::Parameter || !dtype_is_float(t.dtype_a) || !dtype_is_float(t.dtype_b)) continue;
        t.floor = std::max(floor, least_floor(t));
        // An error under atol is nothing to see (a tensor of near-zeros has a meaningless max rel).
        const bool measurable = t.max_abs > t.tolerance.atol;
        if (t.ok() && measurable && t.max_rel > jump * t.floor) t.suspicious = true;
        if (t.ok() && measurable) floor = std::max(floor, t.max_rel);
    }
}

Coverage measure_coverage(const DiffReport& report, const Dump& a, const Dump& b) {
    Coverage c;
    for (const NamedArray& t : a.tensors) {
        const TensorKind kind = tensor_kind(t.name);
        c.params_a += kind == TensorKind::Parameter;
        c.grads_a += kind == TensorKind::Gradient;
        c.activations_a += kind == TensorKind::Activation;
        c.optimizer_a += kind == TensorKind::Optimizer;
    }
    for (const NamedArray& t : b.tensors) {
        const TensorKind kind = tensor_kind(t.name);
        c.params_b += kind == TensorKind::Parameter;
        c.grads_b += kind == TensorKind::Gradient;
    }
    for (const TensorDiff& t : report.tensors) {
        c.params += t.kind == TensorKind::Parameter;
        c.grads += t.kind == TensorKind::Gradient;
        c.activations += t.kind == TensorKind::Activation;
        c.optimizer += t.kind == TensorKind::Optimizer;
    }
    auto one_sided = [&](TensorKind kind, const char* what) {
        for (const auto* side : {&report.only_in_a, &report.only_in_b}) {
            std::vector<std::string> names;
            for (const std::string& n : *side) {
                if (tensor_kind(n) == kind) names.push_back(n);
            }
            if (names.empty()) continue;
            std::string listed;
            for (const std::string& g : group_names_by_layer(names)) listed += (listed.empty() ? "" : ", ") + g;
            c.gaps.push_back(concat(names.size(), " ", what, side == &report.only_in_a ? " of A" : " of B",
                                    " have no counterpart: ", listed));
        }
    };
    one_sided(TensorKind::Parameter, "parameter(s)");
    one_sided(TensorKind::Gradient, "parameter gradient(s)");
    if (c.activations == 0) {
        c.gaps.push_back("no activation between the embedding and the logits was compared (record module outputs, "
                         "or give B's names a map)");
    }
    return c;
}

// The error of `t` per index along each axis, with names from reftrain's layout (docs/model.md).
std::vector<Localisation::Axis> error_profile(const NamedArray& a, const NamedArray& b, const TensorDiff& row,
                                              const MapDims& dims) {
    std::vector<int64_t> shape = a.shape;
    std::vector<std::string> names;
    const TensorKind kind = row.kind;
    if (kind == TensorKind::Activation || kind == TensorKind::Output || kind == TensorKind::Embedding) {
        if (ends_with(row.name, "attn_probs") && shape.size() == 4) {
            names = {"batch", "head", "query", "key"};
        } else if (shape.size() == 4) {
            names = {"batch", "position", "head", "feature"};
        } else if (shape.size() == 3 && ends_with(row.name, "attn_out") && dims.head_dim > 0 &&
                   shape[2] % dims.head_dim == 0) {
            shape = {shape[0], shape[1], shape[2] / dims.head_dim, dims.head_dim};
            names = {"batch", "position", "head", "feature"};
        } else if (shape.size() == 3) {
            names = {"batch", "position", "feature"};
        } else if (shape.size() == 2) {
            names = {"batch", "position"};
        }
    } else if (shape.size() == 2) {
        names = {"row", "column"};
    } else if (shape.size() == 1) {
        names = {"feature"};
    }
    std::vector<Localisation::Axis> axes;
    if (names.size() != shape.size() || row.scale <= 0) return axes;
    for (size_t k = 0; k < shape.size(); ++k) axes.push_back({names[k], std::vector<double>(shape[k], 0.0)});
    std::vector<int64_t> idx(shape.size(), 0);
    for (size_t flat = 0; flat < a.values.size(); ++flat) {
        const double err = std::max(0.0, element_error(a.values[flat], b.values[flat])) / row.scale;
        for (size_t k = 0; k < shape.size(); ++k) axes[k].error[idx[k]] = std::max(axes[k].error[idx[k]], err);
        for (size_t k = shape.size(); k-- > 0;) {
            if (++idx[k] < shape[k]) break;
            idx[k] = 0;
        }
    }
    return axes;
}

// "1, 2" or "0-3, 5": indices as ranges.
std::string index_list(const std::vector<int64_t>& indices) {
    std::string out;
    for (size_t i = 0; i < indices.size();) {
        size_t j = i;
        while (j + 1 < indices.size() && indices[j + 1] == indices[j] + 1) ++j;
        out += (out.empty() ? "" : ", ") + std::to_string(indices[i]);
        if (j > i) out += "-" + std::to_string(indices[j]);
        i = j + 1;
    }
    return out;
}

// Pearson correlation of err[t] with t: near 1 when the error grows steadily with position.
double growth_with_index(const std::vector<double>& err) {
    const double n = static_cast<double>(err.size());
    if (err.size() < 3) return 0.0;
    double mt = (n - 1) / 2, me = 0;
    for (double e : err) me += e / n;
    double stt = 0, see = 0, ste = 0;
    for (size_t t = 0; t < err.size(); ++t) {
        stt += (t - mt) * (t - mt);
        see += (err[t] - me) * (err[t] - me);
        ste += (t - mt) * (err[t] - me);
    }
    return see > 0 ? ste / std::sqrt(stt * see) : 0.0;
}

// The likely cause of a difference that covers the whole tensor, by what the tensor is.
std::string cause_by_tensor(const TensorDiff& t, const DiffReport& report) {
    const std::string& n = t.name;
    const bool small = t.ok();  // suspicious but within tolerance
    if (t.kind == TensorKind::Parameter) {
        return "the two sides did not load the same weights: check the map (split sizes, transpose, rope "
               "permutation) or the checkpoint";
    }
    if (t.kind == TensorKind::Gradient) {
        return "the forward agreed but this gradient does not: the backward of the op that owns it (a hand-written "
               "backward, a detached tensor, a missing accumulation), or the loss normalisation";
    }
    if (ends_with(n, "_normed") || ends_with(n, "layernorm.out") || ends_with(n, "norm.out")) {
        std::string what = ends_with(n, "_normed") ? "QK-norm (RMSNorm of each head over its head_dim)" : "RMSNorm";
        return small ? what + ": a small, smooth difference everywhere is a constant: eps inside the sqrt "
                              "(x / sqrt(mean(x^2) + eps)) vs outside, or another eps value"
                     : what + ": the axis it normalises over (one head's head_dim for QK-norm, the hidden size "
                              "otherwise), eps placement, or the weight (x * w, not x + w)";
    }
    if (ends_with(n, "_rotary")) return "RoPE: rotate-half pairs (i, i + D/2) vs interleaved (2i, 2i+1), the sign, or theta";
    if (ends_with(n, "mlp.act")) {
        return "SwiGLU: reftrain computes silu(gate_proj(x)) * up_proj(x): gate and up swapped, or another "
               "activation (gelu, relu)";
    }
    if (ends_with(n, "gate_proj.out") || ends_with(n, "up_proj.out")) {
        return "the MLP input projections: gate and up swapped or mis-split (check the map's split)";
    }
    if (ends_with(n, "attn_residual") || (n.find("layers.") != std::string::npos && ends_with(n, ".out") &&
                                          n.find("proj") == std::string::npos && n.find("norm") == std::string::npos)) {
        return "residual wiring: each block adds its output to its input before the norm (x + attn(norm(x))), "
               "not to the normed input";
    }
    if (ends_with(n, "attn_out") || ends_with(n, "attn_probs") || ends_with(n, "o_proj.out")) {
        return "attention: the softmax scale (1/sqrt(head_dim)), the causal mask, or the head grouping";
    }
    if (n == "logits") {
        bool norm_missing = std::find(report.only_in_a.begin(), report.only_in_a.end(), "model.norm.out") !=
                            report.only_in_a.end();
        return std::string("everything before the logits agreed: the final norm (model.norm) or lm_head (tying)") +
               (norm_missing ? "; B has no model.norm.out: is the final norm applied at all?" : "");
    }
    if (n == "loss" || n == "loss.logsumexp") {
        return "the loss: mean cross-entropy over supervised positions, targets already aligned (no second shift), "
               "-100 ignored";
    }
    if (ends_with(n, "_proj.out")) return "the projection: its weights or their split/permutation in the map";
    if (n == "model.embed_tokens.out") return "the embedding lookup (a scale factor, or other ids)";
    return "";
}

std::optional<nlohmann::json> metadata_json(const Dump& dump, const std::string& key) {
    auto found = dump.metadata.find(key);
    if (found == dump.metadata.end()) return std::nullopt;
    try {
        return parse_metadata_json(found->second);
    } catch (const nlohmann::json::exception&) {
        return std::nullopt;
    }
}

// The optimizer tensors' own signatures: the clipped gradient against the raw one, an update
// against the moments and the parameter before the step.
std::optional<std::string> optimizer_cause(const TensorDiff& t, const Dump& a, const Dump& b) {
    auto prefixed = [&](const std::string& prefix) { return t.name.rfind(prefix, 0) == 0; };
    const std::string base = t.name.substr(t.name.find(':') + 1);
    const NamedArray* ta = a.find(t.name);
    const NamedArray* tb = b.find(t.name);
    if (!ta || !tb) return std::nullopt;
    if (prefixed("grad.clipped:")) {
        const NamedArray* raw = a.find("grad:" + base);
        if (raw && raw->values.size() == tb->values.size()) {
            double diff = 0, scale = 0;
            for (size_t i = 0; i < raw->values.size(); ++i) {
                diff = std::max(diff, std::fabs(raw->values[i] - tb->values[i]));
                scale = std::max(scale, std::fabs(raw->values[i]));
            }
            if (diff <= 1e-5 * scale) {
                return std::string("B's optimizer saw the raw, unclipped gradient: clipping ran after "
                                   "optimizer.step() (or not at all); clip between backward and step");
            }
        }
        return std::string("the clipped gradients differ by a factor: max_norm, or the norm taken over other "
                           "parameters than all of them");
    }
    if (prefixed("adam.m:") || prefixed("adam.v:")) {
        return std::string("the moments: beta1/beta2, or the gradient the optimizer was given");
    }
    if (!prefixed("updated:")) return std::nullopt;
    const NamedArray* p = a.find(base);
    if (!p || p->values.size() != ta->values.size()) return std::nullopt;
    // d = (their update - ours) against the parameter: weight decay makes it -k * p.
    double num = 0, den = 0, res = 0, norm = 0, ratio_num = 0, ratio_den = 0;
    for (size_t i = 0; i < p->values.size(); ++i) {
        const double da = ta->values[i] - p->values[i], db = tb->values[i] - p->values[i];
        num += (db - da) * p->values[i];
        den += p->values[i] * p->values[i];
        ratio_num += db * da;
        ratio_den += da * da;
    }
    const double k = den > 0 ? num / den : 0;
    for (size_t i = 0; i < p->values.size(); ++i) {
        const double da = ta->values[i] - p->values[i], db = tb->values[i] - p->values[i];
        res = std::max(res, std::fabs(db - da - k * p->values[i]));
        norm = std::max(norm, std::fabs(db - da));
    }
    char text[400];
    if (norm > 0 && res <= 1e-3 * norm) {
        std::snprintf(text, sizeof text,
                      "B's update differs from ours by %.3g x the parameter: weight decay; reftrain decays 2-D "
                      "tensors only (matrices and embeddings), not norm weights or biases, so %s",
                      k, k < 0 ? "B decays a tensor reftrain does not (check B's parameter groups)"
                               : "reftrain decays a tensor B does not (or with another lr * wd)");
        return std::string(text);
    }
    const double r = ratio_den > 0 ? ratio_num / ratio_den : 0;
    std::string hint;
    if (auto opt = metadata_json(a, "reftrain.optimizer")) {
        const double b1 = opt->value("beta1", 0.9), b2 = opt->value("beta2", 0.999);
        const double no_correction = (1 - b1) / std::sqrt(1 - b2);
        if (std::fabs(r - no_correction) < 0.05 * no_correction) {
            std::snprintf(text, sizeof text,
                          "; %.3g is (1 - beta1) / sqrt(1 - beta2) at step 1: B skips Adam's bias correction", r);
            hint = text;
        }
    }
    std::snprintf(text, sizeof text, "the moments agree but B's step is %.3g x ours: the learning rate, the bias "
                                     "correction or eps placement%s", r, hint.c_str());
    return std::string(text);
}

Localisation localise(const TensorDiff& row, const Dump& a, const Dump& b, const DiffReport& report,
                      const MapDims& dims) {
    Localisation loc;
    loc.tensor = row.name;
    const NamedArray* ta = a.find(row.name);
    const NamedArray* tb = b.find(row.name);
    if (row.status == TensorStatus::ShapeMismatch || !ta || !tb) {
        loc.signature = "the shapes differ";
        loc.cause = "a layout the map does not describe (a transpose, a permute such as (B, H, T, D) vs (B, T, H, D), "
                    "or a split)";
        return loc;
    }
    loc.axes = error_profile(*ta, *tb, row, dims);
    const double worst = row.max_rel;
    const double noise = std::max(least_floor(row), 1e-3 * worst);
    auto clean = [&](double e) { return e <= noise; };
    auto axis = [&](const char* name) -> const Localisation::Axis* {
        for (const auto& ax : loc.axes) {
            if (ax.name == name) return &ax;
        }
        return nullptr;
    };
    auto split = [&](const Localisation::Axis& ax, std::vector<int64_t>& good, std::vector<int64_t>& bad) {
        for (size_t i = 0; i < ax.error.size(); ++i) (clean(ax.error[i]) ? good : bad).push_back(static_cast<int64_t>(i));
    };
    const bool attention = ends_with(row.name, "attn_probs") || ends_with(row.name, "attn_out") ||
                           ends_with(row.name, "o_proj.out");
    const bool rotary = ends_with(row.name, "_rotary");

    // A causal leak shows directly: B puts probability on keys after the query.
    if (ends_with(row.name, "attn_probs") && tb->shape.size() == 4) {
        const int64_t T = tb->shape[2];
        for (size_t flat = 0; flat < tb->values.size(); ++flat) {
            const int64_t q = static_cast<int64_t>(flat / T) % T, k = static_cast<int64_t>(flat % T);
            if (k > q && tb->values[flat] != 0.0) {
                loc.signature = concat("B gives query ", q, " weight on key ", k, ", which comes after it");
                loc.cause = "the causal mask is off by one (or missing): each position must see keys 0..t only";
                return loc;
            }
        }
    }
    // Some indices of an axis agree, the others do not: "heads 0, 3 agree, heads 1-2 do not".
    auto partly = [&](const char* name, const char* good_word, const char* bad_word, const char* cause) {
        const Localisation::Axis* ax = axis(name);
        if (!ax || ax->error.size() < 2) return false;
        std::vector<int64_t> good, bad;
        split(*ax, good, bad);
        if (good.empty() || bad.empty()) return false;
        loc.signature = concat(good_word, " ", index_list(good), " agree, ", bad_word, " ", index_list(bad), " do not");
        loc.cause = cause;
        return true;
    };
    if (partly("head", "heads", "heads",
               "head grouping: with GQA, query head h must use KV head h / (heads / kv_heads) "
               "(repeat_interleave, not repeat), or a reshape/transpose puts heads in another order")) {
        return loc;
    }
    const Localisation::Axis* position = axis("position");
    if (!position) position = axis("query");
    if (position && position->error.size() >= 2) {
        std::vector<int64_t> good, bad;
        split(*position, good, bad);
        const int64_t T = static_cast<int64_t>(position->error.size());
        if (bad.size() == 1 && T >= 3) {
            loc.signature = concat("only position ", bad[0], " differs");
            loc.cause = "a shift or a mask at that position: targets shifted twice or not at all, a padding or "
                        "mask edge";
            return loc;
        }
        if (!bad.empty() && good.size() == 1 && good[0] == T - 1 && T >= 3) {
            loc.signature = "every position differs except the last";
            loc.cause = attention ? "the causal mask is off by one: each position also sees the next token (the "
                                    "last has none to see)"
                                  : "something shifted by one position (targets, a mask)";
            return loc;
        }
        if (!bad.empty() && clean(position->error[0])) {
            std::vector<double> tail(position->error.begin(), position->error.end());
            const double growth = growth_with_index(tail);
            if (rotary) {
                // float32 angles: HF rounds t * inv_freq to float32, an error of ~6e-8 * t rad, so the
                // difference is at rounding level (relative ~1e-7 * t), far below any formula bug's.
                const double per_position = worst / static_cast<double>(T - 1);
                if (worst < 1e-4 && per_position < 1e-6) {
                    char text[200];
                    std::snprintf(text, sizeof text,
                                  "position 0 agrees and later positions differ at rounding level (%.1e per position)",
                                  per_position);
                    loc.signature = text;
                    loc.cause = "float32 vs exact RoPE angles: reftrain (like HF) computes the angles t * theta^(-2i/D) "
                                "in float32; dump with `reftrain dump --rope-angles exact` to compare against exact "
                                "angles, or compute yours as HF does";
                    return loc;
                }
                loc.signature = growth > 0.5 ? "position 0 agrees and the error grows with position"
                                             : "position 0 agrees and later positions do not";
                loc.cause = "RoPE: position 0 is not rotated on either side, so a difference that starts at 1 is the "
                            "rotation itself: interleaved pairs (2i, 2i+1) vs rotate-half (i, i + D/2), the half that "
                            "takes the minus sign, or the angles (theta, scaling)";
                return loc;
            }
            if (attention) {
                loc.signature = "position 0 agrees and later positions do not";
                loc.cause = "position 0 attends only to itself, so its output does not depend on the scores: the "
                            "scores differ: the softmax scale (1/sqrt(head_dim)), the mask, or RoPE (tap q_rotary and "
                            "k_rotary to tell)";
                return loc;
            }
            loc.signature = "position 0 agrees and later positions do not";
            loc.cause = "something that mixes positions: attention or RoPE upstream";
            return loc;
        }
    }
    if (partly("batch", "batch rows", "rows",
               "rows mixing: a view/reshape where a transpose is needed moves data between batch rows")) {
        return loc;
    }
    if (auto c = optimizer_cause(row, a, b)) {
        loc.signature = row.name.rfind("updated:", 0) == 0 ? "the update differs" : "the optimizer's input differs";
        loc.cause = *c;
        return loc;
    }
    loc.signature = row.ok() ? "a small difference everywhere, far above the error of the tensors before it"
                             : "the whole tensor differs";
    loc.cause = cause_by_tensor(row, report);
    return loc;
}

// The optimizer step judged on its own: A's moments and updated parameters are recomputed from B's
// clipped gradients with reftrain's AdamW rule (train/adamw.h) and the hyperparameters A stored, so a
// gradient difference within tolerance is not amplified into a false alarm (Adam's first step is
// ~lr * sign(g): a gradient element near zero flips with rounding). The clipped gradients themselves
// are compared as they are. Assumes a fresh optimizer (one step from zero moments), as dumps are.
void recompute_optimizer_from_b(Dump& a, const Dump& b, DiffReport& report) {
    const std::optional<nlohmann::json> opt = metadata_json(a, "reftrain.optimizer");
    if (!opt || opt->value("name", "") != "adamw") return;
    const double lr = opt->value("lr", 1e-3), b1 = opt->value("beta1", 0.9), b2 = opt->value("beta2", 0.999);
    const double eps = opt->value("eps", 1e-8), wd = opt->value("weight_decay", 0.0);
    int64_t recomputed = 0;
    for (NamedArray& t : a.tensors) {
        if (t.name.rfind("updated:", 0) != 0) continue;
        const std::string base = t.name.substr(std::string("updated:").size());
        const NamedArray* g = b.find("grad.clipped:" + base);
        const NamedArray* p = a.find(base);
        if (!g || !p || g->values.size() != t.values.size() || p->values.size() != t.values.size()) continue;
        const double decay = p->shape.size() == 2 ? wd : 0.0;  // AdamW::decays: 2-D tensors only
        std::vector<double> m(t.values.size()), v(t.values.size());
        for (size_t i = 0; i < t.values.size(); ++i) {
            m[i] = (1 - b1) * g->values[i];
            v[i] = (1 - b2) * g->values[i] * g->values[i];
            t.values[i] = p->values[i] * (1 - lr * decay) - lr / (1 - b1) * m[i] / (std::sqrt(v[i]) / std::sqrt(1 - b2) + eps);
        }
        for (auto& [prefix, values] : {std::pair<const char*, std::vector<double>*>{"adam.m:", &m}, {"adam.v:", &v}}) {
            for (NamedArray& moment : a.tensors) {
                if (moment.name == prefix + base && moment.values.size() == values->size()) moment.values = *values;
            }
        }
        ++recomputed;
    }
    if (recomputed > 0) {
        report.notes.push_back(concat("A's adam.m/adam.v/updated tensors (", recomputed, " parameters) are reftrain's "
                                         "AdamW applied to B's clipped gradients (lr ", lr, ", betas ", b1, "/", b2,
                                         ", eps ", eps, ", weight decay ", wd, " on 2-D tensors): the step is judged on "
                                         "its own, from the same inputs"));
    }
}

Dump apply_map(Dump b, const DiffOptions& options, const MapDims& dims, DiffReport& report) {
    std::optional<NameMap> map;
    if (!options.map_path.empty()) {
        map = NameMap::load(options.map_path);
        report.map_source = options.map_path;
    } else if (auto found = b.metadata.find("reftrain.map"); found != b.metadata.end()) {
        nlohmann::json parsed;
        try {
            parsed = parse_metadata_json(found->second);
        } catch (const nlohmann::json::exception& e) {
            fail(b.path, ": __metadata__ 'reftrain.map' is not valid JSON: ", e.what());
        }
        const std::string source = parsed.is_object() && parsed.contains("source") && parsed["source"].is_string()
                                       ? parsed["source"].get<std::string>()
                                       : "the map stored in " + b.path;
        map = NameMap::parse(parsed, source);
        report.map_source = source + " (stored in B)";
    }
    if (!map) return b;
    b.tensors = map->apply(std::move(b.tensors), dims, MapUse::Dump);
    b.order.reset();  // B's stored order is in its own names; A's order governs the walk
    b.reindex();
    return b;
}

}  // namespace

const NamedArray* Dump::find(const std::string& name) const {
    auto found = index_.find(name);
    return found == index_.end() ? nullptr : &tensors[found->second];
}

void Dump::reindex() {
    index_.clear();
    for (size_t i = 0; i < tensors.size(); ++i) index_[tensors[i].name] = i;
}

Dump read_dump(const SafetensorsFile& file) {
    Dump dump;
    dump.path = file.path();
    dump.metadata = file.metadata();
    dump.order = read_dump_order(file);
    for (const SafetensorsEntry& e : file.entries()) {
        dump.tensors.push_back(NamedArray{e.name, e.dtype, e.shape, read_as_double(file, e)});
    }
    dump.reindex();
    return dump;
}

TensorKind tensor_kind(const std::string& name) {
    if (name.rfind("grad:", 0) == 0) return TensorKind::Gradient;
    for (const std::string& p : derived_prefixes()) {
        if (name.rfind(p, 0) == 0) return TensorKind::Optimizer;
    }
    if (name == "logits" || name == "loss" || name == "loss.logsumexp") return TensorKind::Output;
    if (name == "model.embed_tokens.out") return TensorKind::Embedding;
    if (ends_with(name, ".weight") || ends_with(name, ".bias")) return TensorKind::Parameter;
    return TensorKind::Activation;
}

Tolerance default_tolerance(DType a, DType b) {
    switch (coarser_of(a, b)) {
        case DType::F64: return {1e-9, 1e-12};
        case DType::F32: return {1e-4, 1e-7};
        case DType::F16: return {4e-3, 1e-5};
        case DType::BF16: return {3e-2, 1e-5};
        default: return {0.0, 0.0};
    }
}

std::string TensorDiff::verdict() const {
    char text[200];
    if (status == TensorStatus::ShapeMismatch) {
        return "shape " + shape_text(shape_a) + " in A vs " + shape_text(shape_b) + " in B";
    }
    if (nonfinite_mismatches > 0) {
        std::snprintf(text, sizeof text, "%" PRId64 " NaN/Inf where the other side differs", nonfinite_mismatches);
        return text;
    }
    if (status == TensorStatus::OverTolerance) {
        if (scale > 0 && tolerance.atol < tolerance.rtol * scale) {
            std::snprintf(text, sizeof text, "max rel %.2e > rtol %.0e", max_rel, tolerance.rtol);
        } else {
            std::snprintf(text, sizeof text, "max abs %.2e > atol %.0e + rtol %.0e * %.2e", max_abs, tolerance.atol,
                          tolerance.rtol, scale);
        }
        return text;
    }
    if (suspicious) {
        std::snprintf(text, sizeof text, "SUSPICIOUS: within tolerance, but %.0fx the floor %.1e before it",
                      max_rel / floor, floor);
        return text;
    }
    if (nonfinite_in_both > 0) return "ok (" + std::to_string(nonfinite_in_both) + " NaN/Inf equal on both sides)";
    if (max_abs > tolerance.rtol * scale) {  // only the absolute tolerance carries it: a tensor of near-zeros
        std::snprintf(text, sizeof text, "ok (within atol %.0e)", tolerance.atol);
        return text;
    }
    return "ok";
}

int64_t DiffReport::first_failure() const {
    for (size_t i = 0; i < tensors.size(); ++i) {
        if (!tensors[i].ok()) return static_cast<int64_t>(i);
    }
    return -1;
}

int64_t DiffReport::first_flagged() const {
    for (size_t i = 0; i < tensors.size(); ++i) {
        if (tensors[i].flagged()) return static_cast<int64_t>(i);
    }
    return -1;
}

int64_t DiffReport::failure_count() const {
    return std::count_if(tensors.begin(), tensors.end(), [](const TensorDiff& t) { return !t.ok(); });
}

int64_t DiffReport::suspicious_count() const {
    return std::count_if(tensors.begin(), tensors.end(), [](const TensorDiff& t) { return t.suspicious; });
}

int DiffReport::exit_status() const {
    if (first_flagged() >= 0) return 1;
    if (!partial && !coverage.sufficient()) return 3;
    if (strict && (!only_in_a.empty() || !only_in_b.empty())) return 1;
    return 0;
}

std::vector<std::string> group_names_by_layer(const std::vector<std::string>& names) {
    // Key: the name with its first ".<digits>." replaced by ".{}."; value: the indices, in order seen.
    std::vector<std::string> keys;
    std::map<std::string, std::vector<int64_t>> layers;
    for (const std::string& n : names) {
        std::string key = n;
        int64_t layer = -1;
        for (size_t k = 0; k + 2 < n.size(); ++k) {
            if (n[k] != '.' || !std::isdigit(static_cast<unsigned char>(n[k + 1]))) continue;
            size_t e = k + 1;
            while (e < n.size() && std::isdigit(static_cast<unsigned char>(n[e]))) ++e;
            if (e < n.size() && n[e] != '.') continue;
            layer = std::stoll(n.substr(k + 1, e - k - 1));
            key = n.substr(0, k + 1) + "{}" + n.substr(e);
            break;
        }
        if (!layers.count(key)) keys.push_back(key);
        if (layer >= 0) layers[key].push_back(layer);
        else layers[key];
    }
    std::vector<std::string> out;
    for (const std::string& key : keys) {
        std::vector<int64_t>& idx = layers[key];
        if (idx.empty()) {
            out.push_back(key);
            continue;
        }
        std::sort(idx.begin(), idx.end());
        const size_t at = key.find("{}");
        out.push_back(key.substr(0, at) + (idx.size() == 1 ? std::to_string(idx[0]) : "{" + index_list(idx) + "}") +
                      key.substr(at + 2));
    }
    return out;
}

DiffReport diff_dumps(Dump a, Dump b, const DiffOptions& options) {
    DiffReport report;
    report.path_a = a.path;
    report.path_b = b.path;
    report.strict = options.strict;
    report.partial = options.partial;
    // The model's dimensions, for the map's sizes and RoPE reordering and for splitting attn_out into
    // heads: from the config reftrain's dump stores (unknown when A has none).
    MapDims dims;
    if (auto config = metadata_json(a, "reftrain.config")) dims = MapDims::from_config_json(*config);
    b = apply_map(std::move(b), options, dims, report);
    recompute_optimizer_from_b(a, b, report);
    const double backward_scale = gradient_scale(a);
    for (const std::string& name : walk_order(a, b, report)) {
        const NamedArray* in_a = a.find(name);
        const NamedArray* in_b = b.find(name);
        if (in_a && in_b) {
            report.tensors.push_back(compare_arrays(*in_a, *in_b, options, backward_scale));
        } else if (in_a) {
            report.only_in_a.push_back(name);
        } else if (in_b) {
            report.only_in_b.push_back(name);
        }
    }
    check(!report.tensors.empty(), "reftrain diff: ", a.path, " and ", b.path,
          " share no tensor name, so nothing can be compared (", a.tensors.size(), " and ", b.tensors.size(),
          " tensors; are both reftrain-named dumps, or does B need a map (--map)?)");
    mark_suspicious(report.tensors, options.jump);
    report.coverage = measure_coverage(report, a, b);
    if (const int64_t first = report.first_flagged(); first >= 0) {
        report.localisation = localise(report.tensors[first], a, b, report, dims);
    }
    return report;
}

DiffReport diff_dumps(const SafetensorsFile& a, const SafetensorsFile& b, const DiffOptions& options) {
    return diff_dumps(read_dump(a), read_dump(b), options);
}

DiffReport diff_dump_files(const std::string& path_a, const std::string& path_b, const DiffOptions& options) {
    const SafetensorsFile a = SafetensorsFile::open(path_a);
    const SafetensorsFile b = SafetensorsFile::open(path_b);
    return diff_dumps(a, b, options);
}

namespace {

// Words wrapped to `width` columns, continuation lines indented by `indent`.
std::string wrap(const std::string& text, size_t width, size_t indent) {
    std::string out, line;
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find(' ', start);
        if (end == std::string::npos) end = text.size();
        const std::string word = text.substr(start, end - start);
        if (!line.empty() && line.size() + 1 + word.size() > width) {
            out += line + "\n";
            line = std::string(indent, ' ');
        }
        line += (line.empty() || line.back() == ' ' ? "" : " ") + word;
        start = end + 1;
    }
    return out + line + "\n";
}

std::string profile_text(const Localisation::Axis& ax) {
    std::string out;
    char cell[48];
    const size_t n = ax.error.size();
    for (size_t i = 0; i < n; ++i) {
        if (n > 16 && i == 8) {
            out += " ...";
            i = n - 5;
        }
        std::snprintf(cell, sizeof cell, "%s%zu:%.1e", out.empty() ? "" : " ", i, ax.error[i]);
        out += cell;
    }
    return out;
}

}  // namespace

std::string format_diff_report(const DiffReport& report, bool all) {
    std::string out;
    char line[640];
    out += "A: " + report.path_a + "\nB: " + report.path_b + "\n";
    if (!report.map_source.empty()) out += "B's names mapped by " + report.map_source + "\n";
    out += "order: " + report.order_source + "; a tensor passes when max|a-b| <= atol + rtol * max(max|a|, max|b|)\n";
    for (const std::string& w : report.warnings) out += "warning: " + w + "\n";
    for (const std::string& n : report.notes) out += wrap("note: " + n, 110, 4);

    size_t width = 6;
    for (const TensorDiff& t : report.tensors) width = std::max(width, t.name.size());
    std::snprintf(line, sizeof line, "%5s  %-*s  %-9s  %-20s %10s %10s  %s\n", "#", static_cast<int>(width), "tensor",
                  "dtype A/B", "shape", "max_abs", "max_rel", "status");
    out += line;
    const int64_t first = report.first_flagged();
    const int64_t last_row = all || first < 0 ? static_cast<int64_t>(report.tensors.size()) - 1 : first;
    for (int64_t i = 0; i <= last_row; ++i) {
        const TensorDiff& t = report.tensors[i];
        std::string dtypes = std::string(dtype_name(t.dtype_a)) + "/" + dtype_name(t.dtype_b);
        std::snprintf(line, sizeof line, "%5" PRId64 "  %-*s  %-9s  %-20s %10.3e %10.3e  %s\n", i + 1,
                      static_cast<int>(width), t.name.c_str(), dtypes.c_str(), shape_text(t.shape_a, true).c_str(),
                      t.max_abs, t.max_rel, t.verdict().c_str());
        out += line;
    }
    if (last_row + 1 < static_cast<int64_t>(report.tensors.size())) {
        std::snprintf(line, sizeof line, "  ... %zu more tensors not listed (--all lists every one)\n",
                      report.tensors.size() - static_cast<size_t>(last_row + 1));
        out += line;
    }

    auto list_names = [&](const std::vector<std::string>& names, const char* side) {
        if (names.empty()) return;
        std::string text = std::to_string(names.size()) + " tensor(s) only in " + side + ":";
        for (const std::string& g : group_names_by_layer(names)) text += " " + g;
        out += wrap(text, 110, 4);
    };
    list_names(report.only_in_a, "A");
    list_names(report.only_in_b, "B");

    const Coverage& c = report.coverage;
    std::snprintf(line, sizeof line,
                  "coverage: parameters %" PRId64 " compared (A %" PRId64 ", B %" PRId64 "), parameter gradients %" PRId64
                  " (A %" PRId64 ", B %" PRId64 "), activations %" PRId64 " of A's %" PRId64 ", optimizer %" PRId64
                  " of A's %" PRId64 "\n",
                  c.params, c.params_a, c.params_b, c.grads, c.grads_a, c.grads_b, c.activations, c.activations_a,
                  c.optimizer, c.optimizer_a);
    out += line;
    for (const std::string& gap : c.gaps) out += wrap("coverage gap: " + gap, 110, 4);

    std::snprintf(line, sizeof line,
                  "compared %zu tensors: %" PRId64 " over tolerance, %" PRId64 " suspicious; %zu only in A, %zu only in "
                  "B%s\n",
                  report.tensors.size(), report.failure_count(), report.suspicious_count(), report.only_in_a.size(),
                  report.only_in_b.size(),
                  report.strict && (!report.only_in_a.empty() || !report.only_in_b.empty()) ? " (--strict: a difference)"
                                                                                           : "");
    out += line;
    if (report.localisation) {
        const Localisation& loc = *report.localisation;
        out += "where " + loc.tensor + " differs (max |a-b| / scale per index):\n";
        for (const auto& ax : loc.axes) out += "  " + ax.name + ": " + profile_text(ax) + "\n";
        out += wrap("signature: " + loc.signature, 110, 4);
        if (!loc.cause.empty()) out += wrap("likely cause: " + loc.cause, 110, 4);
    }
    const int64_t failure = report.first_failure();
    if (first >= 0) {
        const TensorDiff& t = report.tensors[first];
        out += std::string(t.ok() ? "first suspicious tensor: " : "first tensor over tolerance: ") + t.name + " (" +
               t.verdict() + ")";
        if (t.status == TensorStatus::OverTolerance || t.suspicious) {
            std::snprintf(line, sizeof line, "; worst element %s: A %.9g, B %.9g", shape_text(t.worst_index).c_str(),
                          t.a_at_worst, t.b_at_worst);
            out += line;
        }
        out += "\n";
        if (t.ok() && failure >= 0) out += "first tensor over tolerance: " + report.tensors[failure].name + "\n";
    } else if (report.exit_status() == 3) {
        out += "insufficient coverage: no tensor differs, but too little was compared to call the two the same "
               "(see the coverage gaps; --partial accepts this)\n";
    } else if (report.exit_status() == 0) {
        out += "no tensor over tolerance";
        out += report.coverage.sufficient() ? "\n" : " (coverage is partial: --partial)\n";
    } else {
        out += "every shared tensor is within tolerance, but --strict counts the one-sided names above\n";
    }
    return out;
}

}  // namespace reftrain

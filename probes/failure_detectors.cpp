// probes/failure_detectors.cpp — see failure_detectors.h.
#include "probes/failure_detectors.h"

#include <algorithm>
#include <cmath>

#include "kernels/error.h"

namespace reftrain {

DetectorVerdict loss_plateau_near_uniform(const std::vector<double>& curve, int64_t vocab_size, double margin) {
    check(!curve.empty() && vocab_size > 1, "loss_plateau_near_uniform: needs a loss curve and a vocabulary");
    const double uniform = std::log(static_cast<double>(vocab_size));
    const double last = curve.back();
    if (std::isfinite(last) && last < uniform - margin) return {};
    return {true, concat("learning plateau: after ", curve.size(), " steps the loss is ", last, ", still within ",
                         margin, " nats of ln V = ", uniform, " (a uniform prediction); the logits cannot move the "
                         "loss: look for a softmax (or log_softmax) applied before the cross-entropy, a frozen "
                         "model, or a learning rate of 0")};
}

DetectorVerdict gradients_differ(const Arena& a, const Arena& b, const std::string& a_name, const std::string& b_name,
                                 double tolerance) {
    check(a.size() == b.size(), "gradients_differ: ", a.size(), " and ", b.size(), " tensors");
    double worst = 0.0;
    std::string worst_name;
    for (size_t i = 0; i < a.size(); ++i) {
        const std::vector<double> x = values_as_f64(a.at(i)), y = values_as_f64(b.at(i));
        double diff = 0.0, scale = 0.0;
        for (size_t j = 0; j < x.size(); ++j) {
            diff = std::max(diff, std::fabs(x[j] - y[j]));
            scale = std::max(scale, std::fabs(y[j]));
        }
        const double relative = scale > 0.0 ? diff / scale : diff;
        if (relative > worst) {
            worst = relative;
            worst_name = a.at(i).name;
        }
    }
    if (worst <= tolerance) return {};
    return {true, concat("the ", a_name, " gradient differs from the ", b_name, " gradient of the same rows: ",
                         worst_name, " by ", worst, " of its largest entry (tolerance ", tolerance, ")")};
}

ArenaSnapshot snapshot(const std::vector<const Arena*>& arenas) {
    ArenaSnapshot s;
    for (const Arena* arena : arenas) {
        for (const Tensor& t : arena->tensors()) {
            s.names.push_back(t.name);
            s.values.push_back(values_as_f64(t));
        }
    }
    return s;
}

DetectorVerdict changed_by_skipped_step(const ArenaSnapshot& before, const ArenaSnapshot& after) {
    check(before.names == after.names, "changed_by_skipped_step: the snapshots hold different tensors");
    int64_t changed = 0, nonfinite = 0;
    std::string first;
    for (size_t i = 0; i < before.values.size(); ++i) {
        for (size_t j = 0; j < before.values[i].size(); ++j) {
            const double x = before.values[i][j], y = after.values[i][j];
            const bool same = x == y || (std::isnan(x) && std::isnan(y));
            if (same) continue;
            ++changed;
            nonfinite += !std::isfinite(y);
            if (first.empty()) first = after.names[i];
        }
    }
    if (changed == 0) return {};
    return {true, concat("a step with a non-finite gradient changed ", changed, " weight/moment entries (", nonfinite,
                         " of them now NaN or inf; first tensor: ", first, "): it must be skipped whole")};
}

DetectorVerdict snapshots_differ(const ArenaSnapshot& a, const ArenaSnapshot& b, const std::string& what) {
    check(a.names == b.names, "snapshots_differ: the snapshots hold different tensors");
    int64_t differing = 0;
    double largest = 0.0;
    std::string first;
    for (size_t i = 0; i < a.values.size(); ++i) {
        for (size_t j = 0; j < a.values[i].size(); ++j) {
            if (a.values[i][j] == b.values[i][j]) continue;
            ++differing;
            largest = std::max(largest, std::fabs(a.values[i][j] - b.values[i][j]));
            if (first.empty()) first = a.names[i];
        }
    }
    if (differing == 0) return {};
    return {true, concat(what, ": ", differing, " entries differ (largest difference ", largest, "; first tensor: ",
                         first, ")")};
}

DetectorVerdict prompt_not_training_prefix(const std::vector<int64_t>& training_ids, size_t answer_start,
                                           const std::vector<int64_t>& prompt_ids,
                                           const std::vector<std::string>& training_pieces,
                                           const std::vector<std::string>& prompt_pieces) {
    check(answer_start <= training_ids.size(), "prompt_not_training_prefix: answer_start ", answer_start,
          " is past the ", training_ids.size(), " training tokens");
    size_t t = 0;
    while (t < prompt_ids.size() && t < answer_start && prompt_ids[t] == training_ids[t]) ++t;
    if (t == prompt_ids.size() && t == answer_start) return {};
    auto piece = [](const std::vector<std::string>& pieces, size_t i, size_t end) {
        return i < end && i < pieces.size() ? "'" + pieces[i] + "'" : std::string("(the end)");
    };
    return {true, concat("the sampling prompt (", prompt_ids.size(), " tokens) is not what training put before "
                         "the answer (", answer_start, " tokens): they part at position ", t, ", where sampling has ",
                         piece(prompt_pieces, t, prompt_ids.size()), " and training had ",
                         piece(training_pieces, t, answer_start),
                         ": the model is asked to continue from a context it never saw")};
}

double t_critical(int64_t dof, double level) {
    static const double t95[] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                                 2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                                 2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
    static const double t99[] = {63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499, 3.355, 3.250, 3.169,
                                 3.106,  3.055, 3.012, 2.977, 2.947, 2.921, 2.898, 2.878, 2.861, 2.845,
                                 2.831,  2.819, 2.807, 2.797, 2.787, 2.779, 2.771, 2.763, 2.756, 2.750};
    check(dof >= 1, "t_critical: needs at least 1 degree of freedom (2 pairs), got ", dof);
    check(level == 0.95 || level == 0.99, "t_critical: level must be 0.95 or 0.99, got ", level);
    const double* table = level == 0.95 ? t95 : t99;
    return dof <= 30 ? table[dof - 1] : (level == 0.95 ? 1.960 : 2.576);
}

PairedComparison paired_t(const std::vector<double>& a, const std::vector<double>& b, double level) {
    check(a.size() == b.size() && a.size() >= 2, "paired_t: needs two equal-length lists of at least 2 runs, got ",
          a.size(), " and ", b.size());
    PairedComparison c;
    c.pairs = static_cast<int64_t>(a.size());
    std::vector<double> d(a.size());
    for (size_t i = 0; i < a.size(); ++i) d[i] = b[i] - a[i];
    for (double x : d) c.mean_difference += x;
    c.mean_difference /= static_cast<double>(d.size());
    double var = 0.0;
    for (double x : d) var += (x - c.mean_difference) * (x - c.mean_difference);
    var /= static_cast<double>(d.size() - 1);
    c.standard_error = std::sqrt(var / static_cast<double>(d.size()));
    c.t = c.standard_error > 0.0 ? c.mean_difference / c.standard_error
                                 : (c.mean_difference == 0.0 ? 0.0 : std::copysign(INFINITY, c.mean_difference));
    c.critical_t = t_critical(c.pairs - 1, level);
    return c;
}

}  // namespace reftrain

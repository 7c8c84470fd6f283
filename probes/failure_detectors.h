// probes/failure_detectors.h — detectors of the failure catalog that are a check over what any run has
// (a loss curve, two gradient arenas, weights before and after a step), kept apart from the scenarios so
// the tests can feed them hand-made symptoms without any bug switch (tests/test_failure_detectors.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/arena.h"

namespace reftrain {

struct DetectorVerdict {
    bool fired = false;
    std::string message;   // empty when silent
};

// The loss never left the uniform prediction's neighbourhood: after `curve.size()` steps the last loss is
// still above ln V - margin. A model that learns anything at all gets well below that within a few dozen
// steps on the catalog's task; probabilities fed to a cross-entropy as if they were logits cannot go
// below log(1 + (V - 1) / e) ~ ln V - 1.
DetectorVerdict loss_plateau_near_uniform(const std::vector<double>& curve, int64_t vocab_size, double margin = 1.5);

// Two gradients of the same parameters agree: max |a - b| <= tolerance * max |b| over every tensor.
// Names the tensor with the worst relative difference.
DetectorVerdict gradients_differ(const Arena& a, const Arena& b, const std::string& a_name, const std::string& b_name,
                                 double tolerance = 1e-5);

// A snapshot of some arenas (weights, moments) as doubles, to compare after a step.
struct ArenaSnapshot {
    std::vector<std::string> names;
    std::vector<std::vector<double>> values;
};
ArenaSnapshot snapshot(const std::vector<const Arena*>& arenas);
// A step whose gradient was not finite must leave weights and moments bit-identical: fires naming the
// count of changed and of non-finite elements otherwise.
DetectorVerdict changed_by_skipped_step(const ArenaSnapshot& before, const ArenaSnapshot& after);
// Bitwise equality of two snapshots (straight run vs save / load / continue): fires naming the first
// tensor that differs and the largest difference.
DetectorVerdict snapshots_differ(const ArenaSnapshot& a, const ArenaSnapshot& b, const std::string& what);

// A prompt rendered for sampling must be exactly what training put before the answer: the same
// conversation rendered for training (prompt + answer), up to `answer_start` (its first supervised token).
// The model then continues exactly where it learned to write the answer. Fires naming the first position
// where they part, with both tokens (`*_pieces`: the tokens as the tokenizer prints them). Catches another
// template, a missing or extra generation prompt, an extra or missing BOS, another system prompt.
DetectorVerdict prompt_not_training_prefix(const std::vector<int64_t>& training_ids, size_t answer_start,
                                           const std::vector<int64_t>& prompt_ids,
                                           const std::vector<std::string>& training_pieces,
                                           const std::vector<std::string>& prompt_pieces);

// "B beats A" from paired runs (same seed for both in each pair): the mean of b - a, its standard error
// and the t-statistic with n - 1 degrees of freedom, against the two-sided critical value at `level`
// (0.95 or 0.99). 0.99 by default: a claim tested this way at 95 % is wrong one time in 20 when B does
// nothing, which a catalog run over several seeds meets (seed 2 did).
struct PairedComparison {
    int64_t pairs = 0;
    double mean_difference = 0.0, standard_error = 0.0, t = 0.0, critical_t = 0.0;
    bool significant() const { return std::fabs(t) > critical_t; }
};
PairedComparison paired_t(const std::vector<double>& a, const std::vector<double>& b, double level = 0.99);
// Two-sided critical value of Student's t at `level` (0.95 or 0.99) for `dof` degrees of freedom (1..30;
// the normal's beyond).
double t_critical(int64_t dof, double level);

}  // namespace reftrain

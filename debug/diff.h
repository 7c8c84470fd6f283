// debug/diff.h — compare two dumps tensor by tensor and name the first tensor that disagrees.
//
// A dump is a safetensors file of named tensors from one training step (model/dump.h writes one from
// reftrain, tools/python/reftrain_mirror.py and tools/python/dump_hooks.py from PyTorch). The diff
// walks the names in execution order, so the first tensor over tolerance is the earliest place the two
// implementations part ways: everything computed after it inherits the difference.
//
// Execution order. A safetensors header is a JSON object, whose key order readers may not keep, so
// every writer stores the walk order in the header's __metadata__ under "reftrain.order" as a JSON list
// of names: parameters (a same-weights check), then activations in forward order ending in "logits"
// and "loss", then the parameter gradients in the order backward produces them (last layer first).
// The diff uses A's order, else B's, else A's data layout order (with a warning).
//
// The error of a tensor, with a and b its two versions as float64 and scale = max(max|a|, max|b|):
//     max_abs = max_i |a_i - b_i|
//     max_rel = max_abs / scale            (0 when both tensors are all zero)
//     passes  iff max_abs <= atol + rtol * scale
// The error is measured against the tensor's largest value, not element by element: an element that
// is near zero because of cancellation carries the absolute round-off of its inputs, and element-wise
// ratios there are noise. It is symmetric in a and b. A NaN or Inf in one tensor where the other has a
// different value counts as an infinite error; the same non-finite value in both counts as equal.
// Shapes must hold the same elements in the same order: equal after dropping size-1 dimensions (a
// loss of shape () matches (1,)), or one the other with neighbouring dimensions merged ((B, T, H*D)
// and (B, T, H, D)).
//
// Beyond the error of each tensor (docs/diffing.md has the whole account):
//   - B's names may be another implementation's, read through a map (debug/name_map.h) that B
//     carries in "reftrain.map" (tools/python/dump_hooks.py stores it) or that --map names;
//   - coverage: the verdict is "insufficient coverage" rather than "same" when a parameter or a
//     parameter gradient has no counterpart, or no activation was compared;
//   - suspicious rows: within tolerance, but far above the errors of the tensors before it;
//   - localisation: where the first flagged tensor's error lives along each axis, matched against
//     the signatures of known bugs (RoPE, head grouping, masks, rows mixing, the optimizer step).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "debug/name_map.h"
#include "kernels/dtype.h"
#include "kernels/safetensors.h"

namespace reftrain {

// The __metadata__ key that holds the execution order, and its encoding (a JSON list of names).
inline constexpr const char* kDumpOrderKey = "reftrain.order";
std::string encode_dump_order(const std::vector<std::string>& names);
// The order stored in `file`, or nullopt when it has none; fails naming the file when the value is not
// a JSON list of strings.
std::optional<std::vector<std::string>> read_dump_order(const SafetensorsFile& file);

struct Tolerance {
    double rtol = 0.0, atol = 0.0;
};

// The default tolerance for a tensor stored as `a` in one file and `b` in the other: that of the less
// precise of the two (docs/diffing.md gives the measurements behind the numbers).
//   F64  rtol 1e-9  atol 1e-12   both sides computed in fp64
//   F32  rtol 1e-4  atol 1e-7    at least one side fp32
//   F16  rtol 4e-3  atol 1e-5    about 8 fp16 ulps at the tensor's scale (not measured in this repo)
//   BF16 rtol 3e-2  atol 1e-5    about 8 bf16 ulps at the tensor's scale (not measured in this repo)
//   integers (both sides)  exact
Tolerance default_tolerance(DType a, DType b);

// One dump in memory: every tensor as float64 (NamedArray), the stored order and the metadata.
struct Dump {
    std::string path;
    std::map<std::string, std::string> metadata;
    std::vector<NamedArray> tensors;                    // in the file's data layout order
    std::optional<std::vector<std::string>> order;      // "reftrain.order", when stored
    const NamedArray* find(const std::string& name) const;
    void reindex();

private:
    std::unordered_map<std::string, size_t> index_;
};
Dump read_dump(const SafetensorsFile& file);

// What a name is, from reftrain's naming (docs/model.md): the coverage verdict counts these.
enum class TensorKind { Parameter, Gradient, Optimizer, Embedding, Activation, Output };
TensorKind tensor_kind(const std::string& name);

struct DiffOptions {
    std::optional<double> rtol, atol;  // when set, replace the per-dtype default for every tensor
    bool strict = false;               // a name present in only one file counts as a difference
    bool partial = false;              // thin coverage is intended: do not fail on it
    // A tensor within tolerance whose max rel exceeds jump x the floor (the largest error of the
    // non-parameter tensors before it, at least the dtype's noise) is suspicious; 0 turns this off.
    double jump = 10.0;
    // A map file for B's names (debug/name_map.h); empty: the map B carries in "reftrain.map", if any.
    std::string map_path;
};

enum class TensorStatus { Ok, OverTolerance, ShapeMismatch };

struct TensorDiff {
    std::string name;
    std::vector<int64_t> shape_a, shape_b;
    DType dtype_a = DType::F32, dtype_b = DType::F32;
    TensorKind kind = TensorKind::Activation;
    Tolerance tolerance;
    TensorStatus status = TensorStatus::Ok;
    double max_abs = 0.0, max_rel = 0.0, scale = 0.0;
    // Where max_abs is reached (row-major multi-index into shape_a) and the two values there.
    std::vector<int64_t> worst_index;
    double a_at_worst = 0.0, b_at_worst = 0.0;
    int64_t nonfinite_mismatches = 0;  // positions where one side is NaN/Inf and the other differs
    int64_t nonfinite_in_both = 0;     // positions holding the same NaN/Inf on both sides
    bool suspicious = false;           // within tolerance, but far above the floor set before it
    double floor = 0.0;                // the floor it was measured against

    bool ok() const { return status == TensorStatus::Ok; }
    bool flagged() const { return !ok() || suspicious; }
    // "max rel 3.2e-01 > rtol 1e-04", "shape (2, 3) vs (3, 2)", "ok": the status in words.
    std::string verdict() const;
};

// How much was compared, per kind, and why that is not enough to call the two the same.
struct Coverage {
    int64_t params = 0, params_a = 0, params_b = 0;  // compared / present in A / present in B
    int64_t grads = 0, grads_a = 0, grads_b = 0;
    int64_t activations = 0, activations_a = 0;      // between the embedding and the logits
    int64_t optimizer = 0, optimizer_a = 0;
    std::vector<std::string> gaps;                   // empty: sufficient
    bool sufficient() const { return gaps.empty(); }
};

// Where the first flagged tensor's error lives, and what that pattern usually means.
struct Localisation {
    std::string tensor;
    struct Axis {
        std::string name;           // batch, position, head, feature, query, key, row, column
        std::vector<double> error;  // per index: max |a - b| over the other axes / the tensor's scale
    };
    std::vector<Axis> axes;
    std::string signature;  // the pattern, in words ("position 0 agrees; the error grows with position")
    std::string cause;      // the likely cause and what to check
};

struct DiffReport {
    std::string path_a, path_b;
    std::string order_source;           // "A's reftrain.order", "B's reftrain.order" or "A's file layout"
    std::string map_source;             // the map applied to B's names, "" when none
    std::vector<std::string> warnings;  // e.g. no stored order
    std::vector<std::string> notes;     // how the comparison was made (a map applied, the optimizer recomputed)
    std::vector<TensorDiff> tensors;    // every name in both files, in execution order
    std::vector<std::string> only_in_a, only_in_b;  // in A's order / B's order
    Coverage coverage;
    std::optional<Localisation> localisation;  // of the first flagged tensor
    bool strict = false, partial = false;

    // Index into `tensors` of the first tensor over tolerance or with a different shape; -1 if none.
    int64_t first_failure() const;
    // The first tensor that fails or is suspicious; -1 if none.
    int64_t first_flagged() const;
    int64_t failure_count() const;
    int64_t suspicious_count() const;
    // 0 same: every shared tensor within tolerance and none suspicious, coverage sufficient (or
    //   --partial), and with `strict` no one-sided name;
    // 1 differ: a tensor over tolerance, of another shape, or suspicious (or, with `strict`, one-sided);
    // 3 insufficient coverage: nothing differs, but too little was compared to say "same".
    // (2, "could not compare", is the caller's: a file that does not open throws.)
    int exit_status() const;
};

// Compares two dumps. Fails (reftrain::Error naming the file) when a file cannot be read, its order
// metadata or its map is malformed, or the two share no tensor name at all.
DiffReport diff_dumps(Dump a, Dump b, const DiffOptions& options = {});
DiffReport diff_dumps(const SafetensorsFile& a, const SafetensorsFile& b, const DiffOptions& options = {});
DiffReport diff_dump_files(const std::string& path_a, const std::string& path_b, const DiffOptions& options = {});

// The report as text: a header, one row per tensor up to and including the first flagged one (every
// row when `all` or when nothing is flagged), the one-sided names grouped by layer pattern, the
// coverage, the localisation, and a summary whose last line is the verdict.
std::string format_diff_report(const DiffReport& report, bool all);

// "model.layers.{0-3}.self_attn.q_rotary": names that differ only in a layer index, grouped.
std::vector<std::string> group_names_by_layer(const std::vector<std::string>& names);

}  // namespace reftrain

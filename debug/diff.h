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
// Shapes must agree after dropping size-1 dimensions (so a loss of shape () matches one of (1,)).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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

struct DiffOptions {
    std::optional<double> rtol, atol;  // when set, replace the per-dtype default for every tensor
    bool strict = false;               // a name present in only one file counts as a difference
};

enum class TensorStatus { Ok, OverTolerance, ShapeMismatch };

struct TensorDiff {
    std::string name;
    std::vector<int64_t> shape_a, shape_b;
    DType dtype_a = DType::F32, dtype_b = DType::F32;
    Tolerance tolerance;
    TensorStatus status = TensorStatus::Ok;
    double max_abs = 0.0, max_rel = 0.0, scale = 0.0;
    // Where max_abs is reached (row-major multi-index into shape_a) and the two values there.
    std::vector<int64_t> worst_index;
    double a_at_worst = 0.0, b_at_worst = 0.0;
    int64_t nonfinite_mismatches = 0;  // positions where one side is NaN/Inf and the other differs
    int64_t nonfinite_in_both = 0;     // positions holding the same NaN/Inf on both sides

    bool ok() const { return status == TensorStatus::Ok; }
    // "max rel 3.2e-01 > rtol 1e-04", "shape (2, 3) vs (3, 2)", "ok": the status in words.
    std::string verdict() const;
};

struct DiffReport {
    std::string path_a, path_b;
    std::string order_source;           // "A's reftrain.order", "B's reftrain.order" or "A's file layout"
    std::vector<std::string> warnings;  // e.g. no stored order
    std::vector<TensorDiff> tensors;    // every name in both files, in execution order
    std::vector<std::string> only_in_a, only_in_b;  // in A's order / B's order
    bool strict = false;

    // Index into `tensors` of the first tensor over tolerance or with a different shape; -1 if none.
    int64_t first_failure() const;
    int64_t failure_count() const;
    // 0 when every shared tensor is within tolerance (and, with `strict`, no name is one-sided),
    // 1 when they differ. (2, "could not compare", is the caller's: a file that does not open throws.)
    int exit_status() const;
};

// Compares two dumps. Fails (reftrain::Error naming the file) when a file cannot be read, its order
// metadata is malformed, or the two files share no tensor name at all.
DiffReport diff_dumps(const SafetensorsFile& a, const SafetensorsFile& b, const DiffOptions& options = {});
DiffReport diff_dump_files(const std::string& path_a, const std::string& path_b, const DiffOptions& options = {});

// The report as text: a header, one row per tensor up to and including the first failure (every row
// when `all` or when nothing fails), the one-sided names, and a summary whose last line names the
// first tensor over tolerance: "first tensor over tolerance: NAME (max rel 3.2e-01 > rtol 1e-04)".
std::string format_diff_report(const DiffReport& report, bool all);

}  // namespace reftrain

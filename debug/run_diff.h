// debug/run_diff.h — compare two training runs' metrics.jsonl step by step and name the first step that
// differs beyond tolerance: the first thing to run when a port's loss curve drifts from ours.
//
// A metrics file holds one JSON object per line. reftrain writes (train/trainer.cpp, ppo.cpp, grpo.cpp):
//   {"kind":"train","step":7,"loss":..,"lr":..,"grad_norm":..|null,"tokens":..,"supervised_tokens":..,
//    "seconds":..[,"loss_scale":..][,"skipped":true]}
//   {"kind":"eval","step":200,"val_loss":..,"val_tokens":..[,"exact_match":..]}    {"kind":"test",...}
//   PPO: one line per update, no "kind" and no "step": {"update":3,"learning_rate":..,"grad_norm":..,...}
//   GRPO: {"kind":"update","update":3,"loss":..,"grad_norm":..,...}, {"kind":"eval","update":0,...}
// The minimal file a port writes: one object per line with "step" and any of "loss", "grad_norm", "lr",
// "loss_scale"; "kind" defaults to "train"; "skipped": true on a step whose update was skipped.
//
// Lines pair by (kind, step), where a line without "step" is indexed by its "update" (PPO, GRPO); the
// walk follows A's line order, which is execution order (eval at step N comes after train step N).
// A field's relative error, with a and b its two values:
//     rel = |a - b| / max(|a|, |b|)        (0 when both are 0)
//     passes iff rel <= rtol
// null (what reftrain writes for a NaN or Inf) and non-finite values equal only the same on the other
// side; against a finite value their error is infinite. "skipped" true on one side only is a difference
// of its own. Timing ("seconds", "*_seconds") is never compared.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace reftrain {

// One line of a metrics file.
struct MetricsRecord {
    std::string kind;      // "train" when the line has no "kind"
    int64_t step = 0;      // "step", else "update"
    int64_t line = 0;      // 1-based line number in the file, for messages
    nlohmann::json values; // the whole object as written
};

struct RunMetrics {
    std::string path;  // the metrics file itself (DIR/metrics.jsonl for a run directory)
    std::vector<MetricsRecord> records;  // in file order
    bool indexed_by_update = false;      // some line had no "step" and was indexed by its "update"
};

// Parses metrics text; `path` names it in errors. Fails (reftrain::Error "PATH line L: ...") on a line
// that is not a JSON object, repeats a key, has no integer "step" (nor "update"), or a "kind" that is
// not a string. Blank lines are skipped.
RunMetrics parse_run_metrics(const std::string& text, const std::string& path);
// `path` is a run directory (its metrics.jsonl is read) or a .jsonl file; fails naming it when missing.
std::string resolve_metrics_path(const std::string& path);
RunMetrics read_run_metrics(const std::string& path);

// The fields compared unless told otherwise, and their tolerances (docs: /tmp/diff_runs_doc.md):
//   loss, grad_norm  rtol 1e-4   fp32 arithmetic in different order (another port, thread count, BLAS)
//   lr               rtol 1e-9   the schedule is a formula of the step, computed in fp64
//   loss_scale       exact       a power of two that doubles or halves
//   another field    exact when both values are JSON integers (a count), else rtol 1e-4
inline const std::vector<std::string>& default_run_diff_fields() {
    static const std::vector<std::string> fields = {"loss", "grad_norm", "lr", "loss_scale"};
    return fields;
}
double default_field_rtol(const std::string& field, const nlohmann::json& a, const nlohmann::json& b);
// "" when `field` may be compared, else why not ("seconds" is timing; "step" pairs lines, ...).
std::string compared_field_problem(const std::string& field);

struct RunDiffOptions {
    std::vector<std::string> fields = default_run_diff_fields();  // compared where both lines have them
    std::optional<double> rtol;                  // replaces every default
    std::map<std::string, double> field_rtol;    // replaces one field's tolerance (wins over `rtol`)
};

struct FieldDiff {
    std::string field;
    double a = 0.0, b = 0.0;  // NaN for null
    double rel = 0.0;         // infinite when one side is non-finite and the other differs
    double rtol = 0.0;
    bool ok() const { return rel <= rtol; }
};

struct StepDiff {
    std::string kind;
    int64_t step = 0;
    int64_t line_a = 0, line_b = 0;
    std::vector<FieldDiff> fields;  // the requested fields both lines have, in the requested order
    bool skipped_a = false, skipped_b = false;

    bool skipped_differs() const { return skipped_a != skipped_b; }
    bool ok() const;
    // The first field over tolerance, or nullptr (when only "skipped" differs, or nothing does).
    const FieldDiff* first_failing_field() const;
};

// Steps first..last of one kind (consecutive integers) that only one file has.
struct StepRange {
    std::string kind;
    int64_t first = 0, last = 0;
};

struct RunDiffReport {
    std::string path_a, path_b;
    std::vector<std::string> fields_compared;      // requested fields compared at least once, in order
    std::vector<int64_t> field_comparisons;        // for each of fields_compared: on how many steps
    std::vector<std::string> fields_not_compared;  // requested fields no shared step has on both sides
    std::vector<std::string> other_shared_fields;  // numeric fields on both sides that were not requested
    std::vector<StepDiff> steps;                   // shared (kind, step) with something compared, A's order
    int64_t shared_steps = 0;                      // shared (kind, step) pairs, compared or not
    std::vector<StepRange> only_in_a, only_in_b;
    int64_t only_in_a_count = 0, only_in_b_count = 0;
    std::vector<std::string> warnings;             // duplicates, a much shorter run, unused fields
    std::string insufficient_coverage;             // why nothing can be concluded; "" when compared

    // Index into `steps` of the first step that differs; -1 if none.
    int64_t first_difference() const;
    int64_t difference_count() const;
    // 0 every compared step within tolerance, 1 a step differs, 3 insufficient coverage (no shared step,
    // or no shared step with a compared field). 2, "could not compare", is the caller's: bad input throws.
    int exit_status() const;
};

// Compares two runs. Fails (reftrain::Error naming the file, line and field) on a compared field whose
// value is not a number or null, a "skipped" that is not true/false, or a field `options` may not name.
RunDiffReport diff_runs(const RunMetrics& a, const RunMetrics& b, const RunDiffOptions& options = {});
RunDiffReport diff_run_files(const std::string& path_a, const std::string& path_b, const RunDiffOptions& options = {});

// The report as text: the two files, one row per compared step up to and including the first difference
// (with `all` every row; without, at most the 20 rows before it), the one-sided steps as ranges, the
// warnings, and a summary whose last line is "first step that differs: step N, FIELD A=.. B=.. (rel ..)"
// or "no step differs beyond tolerance over N steps (fields: ..)" or "insufficient coverage: ...".
std::string format_run_diff_report(const RunDiffReport& report, bool all);

}  // namespace reftrain

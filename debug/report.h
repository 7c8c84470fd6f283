// debug/report.h — `reftrain report RUN_DIR`: one self-contained HTML page that shows a run (docs/report.md).
//
// The page is read from what the run left behind, nothing else: RUN_DIR/metrics.jsonl (read with
// debug/run_diff.h's reader, the one every metrics consumer uses) and the resolved config
// (RUN_DIR/run_config.json, else the latest checkpoint's run.json). It holds, as inline SVG (no network,
// no script):
//   - training: loss and validation loss, exact match, learning rate, the gradient norm before clipping
//     with the clip threshold and every clipped step, tokens/s, the loss scale with skipped steps, and
//     every invariant warning as a mark on the timeline and a row of a table;
//   - the samples each eval showed;
//   - heat maps of the tracer's "tracer" lines (worst abs-max and rms per tensor group and layer over the
//     steps), with the first step that came within 10x of its dtype's largest value outlined;
//   - for any other kind of line (PPO and GRPO updates, their evals), one chart per numeric field;
//   - the resolved config.
// A failure scenario's directory (`reftrain failure run ID --run-dir D` leaves D/ID/failure.json) gets a
// page of its own: both halves' curves side by side, the detector's first firing marked on each.
#pragma once

#include <string>

namespace reftrain {

// The page for one run directory (or failure scenario directory); fails (reftrain::Error naming the file)
// when it has neither metrics.jsonl nor failure.json, or a line of metrics.jsonl is not a metrics record.
std::string render_run_report(const std::string& run_dir);

// Writes the page to `out_path` (RUN_DIR/report.html when empty), atomically; returns the path.
std::string write_run_report(const std::string& run_dir, const std::string& out_path = "");

}  // namespace reftrain

// debug/tracer_summary.h — one step of the NaN tracer reduced to a line of metrics.jsonl, so that a
// report can draw the run-up to an overflow as a picture (docs/report.md).
//
// A frame holds four numbers for every tensor the step wrote (debug/tracer.h): hundreds of entries.
// The summary keeps, per tensor GROUP and layer, the worst abs-max and the largest rms of the frame:
//   - the group of "model.layers.3.mlp.down_proj.out" is "mlp.down_proj.out" in layer 3; of
//     "grad:model.layers.3.mlp.down_proj.weight" it is "grad:mlp.down_proj.weight"; a tensor outside the
//     layers ("model.embed_tokens.out", "loss.logsumexp") is its own group, with layer -1;
//   - a tensor written twice in a step (an accumulated gradient) counts with its worst write;
// and two names a person looks for first:
//   - the tensor with the largest finite |x| of the step, and
//   - the first tensor that is not a gradient, in execution order, whose |x| came within 10x of the
//     largest value its dtype can hold (parameters are fp32 master weights; activations are in the run's
//     compute precision: fp16 65504, bf16 and fp32 3.4e38), or none. Gradients are left out because
//     under fp16 the loss scaler drives them towards the limit on purpose (and skips a step that passes it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "debug/tracer.h"

namespace reftrain {

struct TracerGroupStats {
    std::string group;
    int64_t layer = -1;        // -1: not inside model.layers.N
    double abs_max = 0.0;      // worst over the group's tensors in this layer
    double rms = 0.0;          // largest rms over them
    int64_t nonfinite = 0;     // summed
};

struct TracerSummary {
    int64_t step = -1;
    std::vector<TracerGroupStats> groups;   // in order of first appearance in the frame
    std::string worst_tensor;               // largest finite abs-max of the step ("" for an empty frame)
    double worst_abs_max = 0.0;
    std::string near_overflow_tensor;       // first tensor within 10x of its dtype's largest value, or ""
    double near_overflow_abs_max = 0.0;
    double near_overflow_limit = 0.0;       // the largest value of that tensor's dtype
};

// The group and layer of a tensor name (see the top of this file).
void tracer_group_of(const std::string& name, std::string* group, int64_t* layer);

// `compute_max`: the largest finite value of the run's compute precision (65504 for fp16, ...).
TracerSummary summarize_frame(const FrameTracer& tracer, const FrameTracer::Frame& frame, double compute_max);

// {"kind": "tracer", "step": N, "worst_abs_max": X, "worst_tensor": NAME, "near_overflow": {...} | null,
//  "groups": {GROUP: {"layers": [...], "abs_max": [...], "rms": [...]}}}; numbers kept to 4 significant
// digits, which is all a heat map shows and keeps a line near 2 KB for a small model.
nlohmann::json tracer_summary_json(const TracerSummary& summary);

}  // namespace reftrain

// debug/tracer.h — the frame-buffered NaN tracer (DESIGN.md, "Debugging in every layer"; docs/tracer.md).
//
// Every op of the forward, the backward and the optimizer update hands the tensors it wrote to
// record(); the tracer reduces each one to four numbers (TensorStats) in one pass and appends them to
// the current frame, in execution order. end_step() pushes the frame into a ring that keeps the last
// K steps. The first non-finite value of a step trips the tracer right inside that record() call,
// while the op's inputs still hold what the op read:
//   - it names the tensor (the first output in execution order with a non-finite value),
//   - writes the op's inputs and outputs to <run_dir>/tracer/step_<N>_<tensor>.safetensors and a JSON
//     report next to it (step, tensor, op, the inputs' names, the run-up frames),
//   - formats the run-up: for the bad tensor and each input, one row per frame of the ring, so the
//     growth that preceded the overflow is on the screen and not only the crash site.
// What happens next (stop the run or skip the step) is the caller's decision, by Options::policy; the
// tracer itself never throws on a trip.
//
// Cost: one pass per tensor (16 vector lanes whose fp32 sums of squares are flushed into fp64 every
// 256 elements, so the loop vectorises and rms is good to ~1e-6; fixed chunks combined in order so the
// numbers do not depend on the thread count), no allocation in
// record() once the first step has interned the names. Depends on kernels/ only.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kernels/tensor.h"

namespace reftrain {

// Over the FINITE elements of a tensor: smallest and largest |x| and sqrt(mean x^2) (all 0 when no
// element is finite); `nonfinite` counts the inf and NaN elements. Keeping inf out of the magnitudes
// lets the run-up show how close to overflow the finite values were.
struct TensorStats {
    double abs_min = 0.0, abs_max = 0.0, rms = 0.0;
    int64_t nonfinite = 0;
};

// One pass over an F32 or F64 tensor (other dtypes fail naming the tensor).
TensorStats tensor_stats(const Tensor& t);

class FrameTracer {
public:
    enum class Policy { stop, skip };  // on a trip: end the run, or drop this step's update and go on
    struct Options {
        int frames = 21;           // K: frames kept in the ring (the current step's included)
        std::string run_dir;       // dumps go to <run_dir>/tracer/; empty = report in memory only
        Policy policy = Policy::stop;
        bool enabled = true;       // false: record() returns at once and nothing trips
        std::ostream* log = nullptr;  // where the run-up table is printed on a trip; null = std::cerr
    };

    struct Entry {
        int32_t name;  // id into names()
        int32_t op;    // id into names()
        TensorStats stats;
    };
    struct Frame {
        int64_t step = -1;
        std::vector<Entry> entries;  // execution order; a tensor written twice (accumulated grads) twice
    };

    // What the tracer knows about the first non-finite value of a step.
    struct Incident {
        int64_t step = 0;
        std::string tensor, op;           // the first bad tensor and the op that wrote it
        std::vector<std::string> outputs;  // all outputs of that op, in the order given to record()
        std::vector<std::string> inputs;   // its inputs
        TensorStats stats;                 // of the bad tensor
        std::string dump_path, report_path;  // empty when Options::run_dir is empty
        std::string runup;                 // the formatted run-up table (also printed to Options::log)
    };

    FrameTracer();  // default Options
    explicit FrameTracer(Options options);

    const Options& options() const { return options_; }
    bool enabled() const { return options_.enabled; }
    void set_enabled(bool enabled) { options_.enabled = enabled; }

    // Starts the frame of optimizer step `step` and clears tripped().
    void begin_step(int64_t step);
    // Stats of each output appended to the current frame; on the step's first non-finite output the
    // incident is recorded, dumped and printed (see the top of this file). `inputs` are only read on a
    // trip. Null pointers in either list are skipped.
    void record(std::string_view op, std::initializer_list<const Tensor*> outputs,
                std::initializer_list<const Tensor*> inputs = {});
    void record(std::string_view op, std::span<const Tensor* const> outputs, std::span<const Tensor* const> inputs);
    // Every tensor of a list as the outputs of one op with no inputs: the parameters after the
    // optimizer update, record("adamw.update", model.params().tensors()).
    void record(std::string_view op, const std::vector<Tensor>& outputs);
    // Statistics computed elsewhere (the GPU's batched reduction, model/transformer_cuda.cpp) for one
    // output of `op`, appended as record() would. It cannot trip (there is no tensor to dump): the
    // caller hands a non-finite tensor to record() instead, with host copies of the op's tensors.
    void record_stats(std::string_view op, std::string_view name, const TensorStats& stats);
    // Pushes the current frame into the ring (dropping the oldest beyond K).
    void end_step();

    bool tripped() const { return tripped_; }  // this step has a non-finite value
    // The last incident (the current step's when tripped()); nullopt before the first trip.
    const std::optional<Incident>& incident() const { return incident_; }
    // The first incident since construction: where a run that skips bad steps first went wrong.
    const std::optional<Incident>& first_incident() const { return first_incident_; }
    int64_t trips() const { return trips_; }  // steps that tripped since construction

    // The ring, oldest first; the current (not yet ended) frame is not in it.
    size_t frame_count() const { return ring_count_; }
    const Frame& frame(size_t i) const;
    const Frame& current_frame() const { return current_; }
    // The stats of `name` in a frame (its last write when it was written more than once).
    std::optional<TensorStats> find(const Frame& frame, const std::string& name) const;
    const std::string& name(int32_t id) const { return names_[static_cast<size_t>(id)]; }

private:
    struct NameHash {
        using is_transparent = void;
        size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    int32_t intern(std::string_view name);
    void trip(std::string_view op, const Tensor& bad, const TensorStats& stats, std::span<const Tensor* const> outputs,
              std::span<const Tensor* const> inputs);
    std::string format_runup(const Incident& incident, std::span<const Tensor* const> tensors) const;

    Options options_;
    std::vector<Frame> ring_;  // K slots used circularly; ring_head_ = next slot to write
    size_t ring_head_ = 0, ring_count_ = 0;
    Frame current_;
    std::vector<std::string> names_;
    std::unordered_map<std::string, int32_t, NameHash, std::equal_to<>> ids_;
    bool tripped_ = false;
    int64_t trips_ = 0;
    std::optional<Incident> incident_, first_incident_;
};

}  // namespace reftrain

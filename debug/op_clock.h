// debug/op_clock.h — where a CPU training step spends its time, op by op.
//
// A model with a clock set (Transformer::set_op_clock) reads the time after every op it runs and
// charges the interval since the previous reading to that op, so the intervals tile the forward and
// the backward with nothing left out: the tensor lookups between two ops count toward the second. A
// key is the op and its first output, with the layer index replaced by N ("linear_forward
// model.layers.N.self_attn.q_proj.out"), so one row sums an op over the layers. The tracer's own work
// after an op is charged to a row of its own, "tracer", which is how its overhead shows up in the
// table. Code outside the model (the optimizer, zero_grad) is timed by the caller through lap().
//
// Reading the clock costs about 20 ns (steady_clock); the tiny config runs ~400 ops per step of
// ~100 ms, so the clock changes nothing measurable. Off (no clock set) it costs a null check.
// Clock::thread_cpu reads the calling thread's CPU time instead of the wall: on a machine shared with
// other jobs, a 1-thread step's table then counts the work done, not the time waited for a core.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace reftrain {

class OpClock {
public:
    enum class Clock { wall, thread_cpu };
    explicit OpClock(Clock clock = Clock::wall) : clock_(clock) { start(); }

    struct Row {
        std::string key;
        double seconds = 0.0;
        int64_t calls = 0;
    };

    // Starts an interval: whatever runs until the next lap() is charged to that lap's key.
    void start() { last_ = now(); }
    // Charges the time since the last start() or lap() to `key`, and starts the next interval.
    void lap(std::string_view key);
    // The same, with the key built from an op and its first output name (layer index -> N).
    void lap(std::string_view op, std::string_view output_name);

    // One row per key, largest total first; the total of all rows.
    std::vector<Row> rows() const;
    double total_seconds() const;
    // The table as text, times per step: "steps" divides every total.
    std::string table(int64_t steps) const;
    void clear() { by_key_.clear(); }

    // "model.layers.12.mlp.up_proj.out" -> "model.layers.N.mlp.up_proj.out"; other names unchanged.
    static std::string layer_generic(std::string_view name);

private:
    double now() const;  // seconds

    Clock clock_;
    double last_ = 0.0;
    std::map<std::string, Row, std::less<>> by_key_;
};

}  // namespace reftrain

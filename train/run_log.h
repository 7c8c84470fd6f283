// train/run_log.h — a run's log: RUN_DIR/metrics.jsonl, mirrored live into a TensorBoard event file.
//
// Every writer of metrics (the trainer, PPO, GRPO) goes through one RunLog, so the two files always say
// the same thing. write(line) appends the JSON line to metrics.jsonl and flushes it (a killed run keeps
// every line it logged), then, with TensorBoard on, writes one Event holding a scalar per numeric
// top-level field and flushes that too: TensorBoard polls the file, which is what makes it live.
//
// The event file (docs/tensorboard.md): RUN_DIR/events.out.tfevents.<unix seconds>.<hostname>.<pid>.reftrain,
// a TFRecord stream of serialized tensorflow.Event protos, encoded by hand in run_log.cpp (no protobuf
// library). Tags are "<kind>/<field>" ("train/loss", "eval/exact_match", "update/kl_k1"); a line without
// a "kind" (PPO's) is tagged "metrics/<field>". A field's step is the line's "step", else its "update",
// else the number of lines this RunLog wrote before it.
//
// Resume: open(dir, append = true, tb, resume_step = S) continues a run from its checkpoint at step S. The
// caller has kept metrics.jsonl's lines up to step S (train/trainer.cpp drops those past S); the new event
// file opens with SessionLog START at step S + 1, and TensorBoard (purge_orphaned_data, on by default)
// then drops every point the killed run logged at step S + 1 or later, keeping step S and before: the
// same cut as metrics.jsonl. A fresh open (append = false) truncates metrics.jsonl and removes the
// *.reftrain event files an earlier run left in RUN_DIR, so TensorBoard shows this run only.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace reftrain {

class RunLog {
public:
    RunLog() = default;   // closed: write() does nothing
    RunLog(const RunLog&) = delete;
    RunLog& operator=(const RunLog&) = delete;

    // Creates run_dir if needed. append: keep metrics.jsonl's lines (a resumed run) instead of truncating.
    // tensorboard: also write an event file. resume_step > 0 with append: the step of the checkpoint
    // resumed from (see above). Fails (reftrain::Error) naming the path that cannot be created or opened.
    void open(const std::string& run_dir, bool append, bool tensorboard, int64_t resume_step = 0);
    // One JSON object: a line of metrics.jsonl and, with TensorBoard on, its numbers as scalars, both
    // flushed. A failed write (a full disk) fails naming the file.
    void write(const nlohmann::json& line);
    bool is_open() const { return metrics_.is_open(); }
    void flush();
    // run_dir/run_config.json: the run's resolved config beside its metrics (for `reftrain report` and a
    // person), written atomically; nothing when closed.
    void write_config(const nlohmann::json& resolved);
    // The event file ("" without TensorBoard or before open).
    const std::string& event_path() const { return event_path_; }

private:
    std::string run_dir_, metrics_path_, event_path_;
    std::ofstream metrics_, events_;
    int64_t lines_written_ = 0;

    void write_record(const std::string& event);   // one TFRecord, flushed
};

// ---- the pieces, unit-tested in tests/test_run_log.cpp --------------------------------------------------

struct TensorBoardScalar {
    std::string tag;
    double value = 0.0;   // stored as float32 (Summary.Value.simple_value)
};
struct TensorBoardLine {
    int64_t step = 0;
    std::vector<TensorBoardScalar> scalars;   // in the line's key order (nlohmann::json sorts keys)
};
// What write() mirrors of `line`: every top-level number (bools as 0/1), tagged "<kind>/<field>"; not
// null, strings, arrays or objects, nor "kind", "step" and "update" themselves. `fallback_step` is the
// step when the line has neither "step" nor "update".
TensorBoardLine tensorboard_scalars(const nlohmann::json& line, int64_t fallback_step);

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): crc32c("123456789") = 0xE3069283.
uint32_t crc32c(std::string_view bytes);
// TFRecord's masked CRC, ((crc >> 15) | (crc << 17)) + 0xa282ead8: a CRC of data holding CRCs stays unlike them.
uint32_t masked_crc32c(std::string_view bytes);

// Serialized tensorflow.Event protos (tensorboard/compat/proto/event.proto, summary.proto).
std::string event_file_version(double wall_time);                          // file_version "brain.Event:2"
std::string event_session_start(double wall_time, int64_t step);           // session_log { status: START }
std::string event_scalars(double wall_time, const TensorBoardLine& line);  // summary { value { tag simple_value } ... }
// One TFRecord: uint64 length, uint32 masked CRC of those 8 bytes, data, uint32 masked CRC of the data
// (all little endian).
std::string tfrecord(std::string_view data);

}  // namespace reftrain

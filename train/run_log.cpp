// train/run_log.cpp — see run_log.h: metrics.jsonl plus a TensorBoard event file, and the few bytes of
// TensorBoard's formats that takes, written by hand.
//
// Two formats, both little endian:
// - TFRecord (the container): per record, uint64 length, uint32 masked CRC-32C of those 8 bytes, the data,
//   uint32 masked CRC-32C of the data.
// - Protocol buffers (each record's data is one tensorflow.Event). A field is a key, the varint
//   (field_number << 3 | wire_type), then its payload by wire type:
//     0 varint   int64 and enums: 7 bits a byte, lowest group first, high bit set = more bytes follow
//     1 fixed64  double: 8 bytes
//     2 length   strings and sub-messages: a varint byte count, then the bytes
//     5 fixed32  float: 4 bytes
// The field numbers, from tensorboard/compat/proto/event.proto and summary.proto:
//   Event      1 wall_time double, 2 step int64, 3 file_version string, 5 summary Summary,
//              7 session_log SessionLog (6 is the deprecated log_message)
//   Summary    1 value (repeated Value)
//   Value      1 tag string, 2 simple_value float
//   SessionLog 1 status enum (START = 1)
#include "train/run_log.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "kernels/error.h"
#include "kernels/safetensors.h"

namespace reftrain {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- CRC-32C -------------------------------------------------------------------------------------------

namespace {

// table[b] = the CRC register after shifting byte b through 8 rounds of the reflected polynomial.
std::array<uint32_t, 256> make_crc32c_table() {
    std::array<uint32_t, 256> table{};
    for (uint32_t b = 0; b < 256; ++b) {
        uint32_t crc = b;
        for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        table[b] = crc;
    }
    return table;
}

}  // namespace

uint32_t crc32c(std::string_view bytes) {
    static const std::array<uint32_t, 256> table = make_crc32c_table();
    uint32_t crc = 0xFFFFFFFFu;
    for (const char c : bytes) crc = table[(crc ^ static_cast<uint8_t>(c)) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(std::string_view bytes) {
    const uint32_t crc = crc32c(bytes);
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

// ---- protocol buffers: the fields an Event needs ------------------------------------------------------

namespace {

void put_little_endian(std::string& out, uint64_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

void put_varint(std::string& out, uint64_t value) {
    while (value >= 0x80) {
        out.push_back(static_cast<char>((value & 0x7F) | 0x80));
        value >>= 7;
    }
    out.push_back(static_cast<char>(value));
}

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLength = 2, kFixed32 = 5 };

void put_key(std::string& out, uint32_t field, WireType type) { put_varint(out, (field << 3) | type); }

// int64 and enums; a negative number is its 64-bit two's complement (10 bytes), as protobuf writes it.
void put_int_field(std::string& out, uint32_t field, int64_t value) {
    put_key(out, field, kVarint);
    put_varint(out, static_cast<uint64_t>(value));
}

void put_double_field(std::string& out, uint32_t field, double value) {
    uint64_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    put_key(out, field, kFixed64);
    put_little_endian(out, bits, 8);
}

void put_float_field(std::string& out, uint32_t field, float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    put_key(out, field, kFixed32);
    put_little_endian(out, bits, 4);
}

// A string, or a sub-message already serialized.
void put_bytes_field(std::string& out, uint32_t field, std::string_view bytes) {
    put_key(out, field, kLength);
    put_varint(out, bytes.size());
    out.append(bytes);
}

// Event fields 1 and 2, which every event here starts with.
std::string event_header(double wall_time, int64_t step) {
    std::string event;
    put_double_field(event, 1, wall_time);
    put_int_field(event, 2, step);
    return event;
}

}  // namespace

std::string event_file_version(double wall_time) {
    std::string event = event_header(wall_time, 0);
    put_bytes_field(event, 3, "brain.Event:2");   // TensorBoard reads version 2 as "purge on SessionLog START"
    return event;
}

std::string event_session_start(double wall_time, int64_t step) {
    std::string session_log;
    put_int_field(session_log, 1, 1);   // status = START
    std::string event = event_header(wall_time, step);
    put_bytes_field(event, 7, session_log);
    return event;
}

std::string event_scalars(double wall_time, const TensorBoardLine& line) {
    std::string summary;
    for (const TensorBoardScalar& s : line.scalars) {
        std::string value;
        put_bytes_field(value, 1, s.tag);
        put_float_field(value, 2, static_cast<float>(s.value));
        put_bytes_field(summary, 1, value);
    }
    std::string event = event_header(wall_time, line.step);
    put_bytes_field(event, 5, summary);
    return event;
}

std::string tfrecord(std::string_view data) {
    std::string length;
    put_little_endian(length, data.size(), 8);
    std::string record = length;
    put_little_endian(record, masked_crc32c(length), 4);
    record.append(data);
    put_little_endian(record, masked_crc32c(data), 4);
    return record;
}

// ---- what a metrics line becomes ----------------------------------------------------------------------

TensorBoardLine tensorboard_scalars(const json& line, int64_t fallback_step) {
    TensorBoardLine out;
    out.step = fallback_step;
    if (!line.is_object()) return out;
    if (line.contains("step") && line.at("step").is_number()) {
        out.step = line.at("step").get<int64_t>();
    } else if (line.contains("update") && line.at("update").is_number()) {
        out.step = line.at("update").get<int64_t>();
    }
    const std::string kind = line.contains("kind") && line.at("kind").is_string() ? line.at("kind").get<std::string>()
                                                                                   : std::string("metrics");
    for (const auto& [field, value] : line.items()) {
        if (field == "kind" || field == "step" || field == "update") continue;
        if (value.is_number()) {
            out.scalars.push_back({kind + "/" + field, value.get<double>()});
        } else if (value.is_boolean()) {
            out.scalars.push_back({kind + "/" + field, value.get<bool>() ? 1.0 : 0.0});
        }
    }
    return out;
}

// ---- the log --------------------------------------------------------------------------------------------

namespace {

double seconds_since_epoch() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool is_event_file(const fs::path& path) { return path.filename().string().rfind("events.out.tfevents.", 0) == 0; }

// The <unix seconds> of an event file's name (0 when it has none; at most 15 digits are read).
int64_t seconds_of(const fs::path& path) {
    const std::string rest = path.filename().string().substr(std::strlen("events.out.tfevents."));
    int64_t seconds = 0;
    for (size_t i = 0; i < rest.size() && i < 15 && rest[i] >= '0' && rest[i] <= '9'; ++i) {
        seconds = seconds * 10 + (rest[i] - '0');
    }
    return seconds;
}

std::string hostname() {
    char name[256] = {};
    if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
    return name;
}

}  // namespace

void RunLog::open(const std::string& run_dir, bool append, bool tensorboard, int64_t resume_step) {
    metrics_.close();
    events_.close();
    event_path_.clear();
    lines_written_ = 0;

    std::error_code ec;
    fs::create_directories(run_dir, ec);
    check(!ec && fs::is_directory(run_dir), run_dir, ": cannot create the run directory (", ec.message(),
          "); expected a directory for metrics.jsonl and the TensorBoard event file");
    run_dir_ = run_dir;
    metrics_path_ = (fs::path(run_dir) / "metrics.jsonl").string();
    metrics_.open(metrics_path_, append ? std::ios::app : std::ios::trunc);
    check(metrics_.is_open(), metrics_path_, ": cannot open for writing (", std::strerror(errno), ")");

    // A fresh run's metrics.jsonl starts empty: its event files go too. TensorBoard reads a directory's
    // event files in name order, so the new file's seconds are past every existing one's (a resume in the
    // same second as the kill must still be read last, or its START would purge nothing).
    std::vector<fs::path> event_files;
    for (const fs::directory_entry& entry : fs::directory_iterator(run_dir, ec)) {
        if (is_event_file(entry.path())) event_files.push_back(entry.path());
    }
    int64_t seconds = static_cast<int64_t>(seconds_since_epoch());
    for (const fs::path& path : event_files) {
        if (!append && path.extension() == ".reftrain") {
            std::error_code removed;
            fs::remove(path, removed);
            if (removed) {
                metrics_.close();
                fail(path.string(), ": cannot remove the event file of an earlier run (", removed.message(), ")");
            }
            continue;
        }
        seconds = std::max(seconds, seconds_of(path) + 1);
    }
    if (!tensorboard) return;

    event_path_ = (fs::path(run_dir) / concat("events.out.tfevents.", seconds, ".", hostname(), ".", getpid(),
                                              ".reftrain")).string();
    events_.open(event_path_, std::ios::binary | std::ios::trunc);
    if (!events_.is_open()) {
        metrics_.close();   // all or nothing: a failed open leaves the log closed
        fail(event_path_, ": cannot open the TensorBoard event file for writing (", std::strerror(errno), ")");
    }
    const double now = seconds_since_epoch();
    write_record(event_file_version(now));
    if (append && resume_step > 0) write_record(event_session_start(now, resume_step + 1));
}

void RunLog::write(const json& line) {
    if (!metrics_.is_open()) return;
    // Bytes that are not UTF-8 in a string become U+FFFD instead of an exception.
    metrics_ << line.dump(-1, ' ', false, json::error_handler_t::replace) << "\n" << std::flush;
    check(static_cast<bool>(metrics_), metrics_path_, ": cannot write a line (", std::strerror(errno), ")");
    if (events_.is_open()) {
        const TensorBoardLine scalars = tensorboard_scalars(line, lines_written_);
        if (!scalars.scalars.empty()) write_record(event_scalars(seconds_since_epoch(), scalars));
    }
    ++lines_written_;
}

void RunLog::flush() {
    if (metrics_.is_open()) metrics_.flush();
    if (events_.is_open()) events_.flush();
}

void RunLog::write_record(const std::string& event) {
    events_ << tfrecord(event) << std::flush;
    check(static_cast<bool>(events_), event_path_, ": cannot write a TensorBoard event (", std::strerror(errno), ")");
}

void RunLog::write_config(const nlohmann::json& resolved) {
    if (!is_open()) return;
    const std::string text = resolved.dump(2) + "\n";
    write_file_atomically((fs::path(run_dir_) / "run_config.json").string(), text.data(), text.size());
}

}  // namespace reftrain

// tests/test_run_log.cpp — train/run_log.h: CRC-32C against its check value, the TFRecord framing and the
// Event bytes read back from a written file, which fields of a metrics line become scalars (and at which
// step), resume (SessionLog START past the checkpoint, a file read after the killed run's), fresh runs
// removing old event files, errors naming the path (a bad run_dir, a full disk), and a string that is not
// UTF-8 written rather than thrown. TensorBoard's own reader checks the same files in
// tests/python/test_tensorboard.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/test_util.h"
#include "train/grpo.h"
#include "train/ppo.h"
#include "train/run_config.h"
#include "train/run_log.h"

namespace reftrain {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::expect_error;
using testing::scratch_dir;

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    return bytes.str();
}

uint64_t little_endian(const std::string& bytes, size_t at, int size) {
    uint64_t value = 0;
    for (int i = 0; i < size; ++i) value |= uint64_t{static_cast<uint8_t>(bytes.at(at + i))} << (8 * i);
    return value;
}

uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

// The records of an event file, each checked for its framing: length, masked CRC of the length bytes, data,
// masked CRC of the data, nothing left over.
std::vector<std::string> read_records(const std::string& file) {
    std::vector<std::string> records;
    size_t at = 0;
    while (at < file.size()) {
        EXPECT_LE(at + 12, file.size()) << "a record header cut short at byte " << at;
        if (at + 12 > file.size()) break;
        const uint64_t length = little_endian(file, at, 8);
        EXPECT_EQ(little_endian(file, at + 8, 4), masked(crc32c(file.substr(at, 8)))) << "length CRC at byte " << at;
        EXPECT_LE(at + 16 + length, file.size()) << "a record cut short at byte " << at;
        if (at + 16 + length > file.size()) break;
        const std::string data = file.substr(at + 12, length);
        EXPECT_EQ(little_endian(file, at + 12 + length, 4), masked(crc32c(data))) << "data CRC at byte " << at;
        records.push_back(data);
        at += 16 + length;
    }
    return records;
}

// A protobuf reader just large enough to list an Event's scalars: (step, tag, value) per Summary.Value.
uint64_t read_varint(const std::string& bytes, size_t& at) {
    uint64_t value = 0;
    for (int shift = 0;; shift += 7) {
        const uint8_t b = static_cast<uint8_t>(bytes.at(at++));
        value |= uint64_t{b & 0x7Fu} << shift;
        if (!(b & 0x80)) return value;
    }
}

struct Field {
    uint32_t number = 0, wire_type = 0;
    uint64_t varint = 0;   // wire types 0, 1 and 5: the value's bits
    std::string bytes;     // wire type 2
};

std::vector<Field> read_fields(const std::string& message) {
    std::vector<Field> fields;
    size_t at = 0;
    while (at < message.size()) {
        const uint64_t key = read_varint(message, at);
        Field f;
        f.number = static_cast<uint32_t>(key >> 3);
        f.wire_type = static_cast<uint32_t>(key & 7);
        if (f.wire_type == 0) f.varint = read_varint(message, at);
        if (f.wire_type == 1) f.varint = little_endian(message, at, 8), at += 8;
        if (f.wire_type == 5) f.varint = little_endian(message, at, 4), at += 4;
        if (f.wire_type == 2) {
            const uint64_t size = read_varint(message, at);
            f.bytes = message.substr(at, size);
            at += size;
        }
        fields.push_back(f);
    }
    return fields;
}

struct ReadScalar {
    int64_t step;
    std::string tag;
    float value;
};

std::vector<ReadScalar> read_scalars(const fs::path& event_file) {
    std::vector<ReadScalar> out;
    for (const std::string& record : read_records(read_bytes(event_file))) {
        int64_t step = 0;
        for (const Field& event_field : read_fields(record)) {
            if (event_field.number == 2) step = static_cast<int64_t>(event_field.varint);
            if (event_field.number != 5) continue;   // summary
            for (const Field& value : read_fields(event_field.bytes)) {
                ReadScalar s{step, "", 0.0f};
                for (const Field& f : read_fields(value.bytes)) {
                    if (f.number == 1) s.tag = f.bytes;
                    if (f.number == 2) {
                        const uint32_t bits = static_cast<uint32_t>(f.varint);
                        std::memcpy(&s.value, &bits, sizeof bits);
                    }
                }
                out.push_back(s);
            }
        }
    }
    return out;
}

std::vector<fs::path> event_files(const fs::path& dir) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir)) {
        if (entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0) files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());   // TensorBoard's reading order
    return files;
}

// Event bytes after the 9 of wall_time (key 0x09 + a double), which vary.
std::string after_wall_time(const std::string& event) {
    EXPECT_EQ(static_cast<uint8_t>(event.at(0)), 0x09) << "field 1, wire type 1 (wall_time) first";
    return event.substr(9);
}

// ---- the checks -------------------------------------------------------------------------------------------

TEST(RunLog, Crc32cMatchesTheCheckValue) {
    EXPECT_EQ(crc32c("123456789"), 0xE3069283u);   // the standard check value of CRC-32C
    EXPECT_EQ(crc32c(""), 0u);
    EXPECT_EQ(masked_crc32c("123456789"), masked(0xE3069283u));
}

// One line, read back byte by byte: the file_version record, then one scalar event whose bytes are the
// proto fields of event.proto / summary.proto spelled out.
TEST(RunLog, EventFileIsFramedTfRecordsOfEventProtos) {
    const fs::path dir = scratch_dir("run_log_framing");
    RunLog log;
    log.open(dir.string(), false, true);
    log.write({{"kind", "train"}, {"step", 3}, {"loss", 0.5}});
    log.flush();
    ASSERT_EQ(event_files(dir).size(), 1u);
    EXPECT_EQ(event_files(dir)[0].string(), log.event_path());
    const std::string name = event_files(dir)[0].filename().string();
    EXPECT_EQ(name.substr(name.size() - 9), ".reftrain") << name;

    const std::vector<std::string> records = read_records(read_bytes(log.event_path()));
    ASSERT_EQ(records.size(), 2u);
    // step 0 (0x10 0x00), file_version (0x1A) "brain.Event:2" (13 bytes)
    EXPECT_EQ(after_wall_time(records[0]), std::string("\x10\x00\x1A\x0D", 4) + "brain.Event:2");
    // step 3; summary (0x2A, 19 bytes) { value (0x0A, 17 bytes) { tag (0x0A, 10) "train/loss",
    // simple_value (0x15) 0.5f = 0x3F000000 little endian } }
    EXPECT_EQ(after_wall_time(records[1]),
              std::string("\x10\x03\x2A\x13\x0A\x11\x0A\x0A", 8) + "train/loss" + std::string("\x15\x00\x00\x00\x3F", 5));
    double wall_time;
    std::memcpy(&wall_time, records[1].data() + 1, 8);
    EXPECT_NEAR(wall_time, static_cast<double>(std::time(nullptr)), 60.0);

    EXPECT_EQ(read_bytes(dir / "metrics.jsonl"), "{\"kind\":\"train\",\"loss\":0.5,\"step\":3}\n");
}

TEST(RunLog, WriteMirrorsOnlyTheNumbersOfALine) {
    const fs::path dir = scratch_dir("run_log_numbers");
    RunLog log;
    log.open(dir.string(), false, true);
    const json line = {{"kind", "eval"},      {"step", 7},          {"exact_match", 0.875},
                       {"examples", 200},     {"skipped", true},    {"delta", -2.5},
                       {"sample", "41+17=58"}, {"grad_norm", nullptr}, {"losses", {1.0, 2.0}},
                       {"nested", {{"a", 1}}}};
    log.write(line);
    const std::vector<ReadScalar> scalars = read_scalars(log.event_path());
    std::map<std::string, float> got;
    for (const ReadScalar& s : scalars) {
        EXPECT_EQ(s.step, 7) << s.tag;
        got[s.tag] = s.value;
    }
    EXPECT_EQ(scalars.size(), got.size()) << "a tag written twice";
    const std::map<std::string, float> want = {
        {"eval/delta", -2.5f}, {"eval/exact_match", 0.875f}, {"eval/examples", 200.0f}, {"eval/skipped", 1.0f}};
    EXPECT_EQ(got, want);
    // metrics.jsonl keeps the whole line.
    EXPECT_EQ(json::parse(read_bytes(dir / "metrics.jsonl")), line);
}

// The step: "step", else "update" (GRPO, PPO), else the lines written before; PPO's lines have no "kind".
TEST(RunLog, StepComesFromStepThenUpdateThenTheLineCount) {
    EXPECT_EQ(tensorboard_scalars({{"kind", "train"}, {"step", 12}, {"update", 3}, {"loss", 1}}, 99).step, 12);
    const TensorBoardLine grpo = tensorboard_scalars({{"kind", "update"}, {"update", 4}, {"kl_k1", 0.25}}, 99);
    EXPECT_EQ(grpo.step, 4);
    ASSERT_EQ(grpo.scalars.size(), 1u);
    EXPECT_EQ(grpo.scalars[0].tag, "update/kl_k1");
    const TensorBoardLine ppo = tensorboard_scalars({{"update", 5}, {"entropy", 0.6}}, 99);
    ASSERT_EQ(ppo.scalars.size(), 1u);
    EXPECT_EQ(ppo.scalars[0].tag, "metrics/entropy");
    EXPECT_EQ(tensorboard_scalars({{"kind", "note"}, {"x", 1}}, 99).step, 99);

    const fs::path dir = scratch_dir("run_log_count");
    RunLog log;
    log.open(dir.string(), false, true);
    log.write({{"kind", "note"}, {"text", "no numbers: no event"}});
    log.write({{"kind", "note"}, {"x", 1}});
    log.write({{"kind", "note"}, {"x", 2}});
    const std::vector<ReadScalar> scalars = read_scalars(log.event_path());
    ASSERT_EQ(scalars.size(), 2u);
    EXPECT_EQ(scalars[0].step, 1);
    EXPECT_EQ(scalars[1].step, 2);
    EXPECT_EQ(read_records(read_bytes(log.event_path())).size(), 3u);   // file_version + 2 (none for the line without numbers)
}

TEST(RunLog, ClosedOrWithoutTensorBoardWritesNoEvents) {
    RunLog closed;
    EXPECT_FALSE(closed.is_open());
    closed.write({{"kind", "train"}, {"step", 1}, {"loss", 1.0}});   // nothing, no error

    const fs::path dir = scratch_dir("run_log_off");
    RunLog log;
    log.open(dir.string(), false, false);
    EXPECT_TRUE(log.is_open());
    log.write({{"kind", "train"}, {"step", 1}, {"loss", 1.0}});
    EXPECT_TRUE(event_files(dir).empty());
    EXPECT_EQ(log.event_path(), "");
    EXPECT_EQ(read_bytes(dir / "metrics.jsonl"), "{\"kind\":\"train\",\"loss\":1.0,\"step\":1}\n");
}

// A fresh run removes the *.reftrain event files an earlier run left (its metrics.jsonl starts empty too),
// and leaves other programs' event files alone.
TEST(RunLog, FreshRunRemovesOldReftrainEventFiles) {
    const fs::path dir = scratch_dir("run_log_fresh");
    std::ofstream(dir / "events.out.tfevents.1700000000.other.1.reftrain") << "old";
    std::ofstream(dir / "events.out.tfevents.1700000000.other.1") << "not ours";
    RunLog log;
    log.open(dir.string(), false, true);
    const std::vector<fs::path> files = event_files(dir);
    ASSERT_EQ(files.size(), 2u);
    EXPECT_EQ(files[0].filename(), "events.out.tfevents.1700000000.other.1");
    EXPECT_EQ(files[1].string(), log.event_path());
}

// A killed run logged steps 1..8 and an eval at its checkpoint, step 5; the caller kept metrics.jsonl's
// lines up to step 5; the resumed run logs 6..10 with other losses. The new event file is read after the
// old one (a later name, even within the same second) and starts with SessionLog START at step 6, so
// TensorBoard drops the killed run's steps 6..8 and keeps step 5's eval. With REFTRAIN_RUN_LOG_RESUME_DIR
// set, the files go there and stay: tests/python/test_tensorboard.py reads them with TensorBoard's reader.
TEST(RunLog, ResumeStartsTheNewFileWithSessionStartPastTheCheckpoint) {
    const char* keep = std::getenv("REFTRAIN_RUN_LOG_RESUME_DIR");
    const fs::path dir = keep ? fs::path(keep) : scratch_dir("run_log_resume");
    if (keep) {
        fs::remove_all(dir);
        fs::create_directories(dir);
    }
    std::string kept_lines;
    {
        RunLog killed;
        killed.open(dir.string(), false, true);
        for (int step = 1; step <= 8; ++step) {
            const json line = {{"kind", "train"}, {"step", step}, {"loss", 1.0 * step}};
            killed.write(line);
            if (step <= 5) kept_lines += line.dump() + "\n";
            if (step == 5) {
                const json eval = {{"kind", "eval"}, {"step", 5}, {"val_loss", 0.25}};
                killed.write(eval);
                kept_lines += eval.dump() + "\n";
            }
        }
    }
    std::ofstream(dir / "metrics.jsonl", std::ios::trunc) << kept_lines;   // what the trainer's trim leaves

    RunLog resumed;
    resumed.open(dir.string(), true, true, 5);
    for (int step = 6; step <= 10; ++step) resumed.write({{"kind", "train"}, {"step", step}, {"loss", 100.0 + step}});
    resumed.flush();

    const std::vector<fs::path> files = event_files(dir);
    ASSERT_EQ(files.size(), 2u);
    EXPECT_EQ(files[1].string(), resumed.event_path()) << "the resumed run's file must sort last";
    const std::vector<std::string> records = read_records(read_bytes(resumed.event_path()));
    ASSERT_EQ(records.size(), 2u + 5u);
    EXPECT_EQ(after_wall_time(records[0]), std::string("\x10\x00\x1A\x0D", 4) + "brain.Event:2");
    // step 6; session_log (field 7, 0x3A, 2 bytes) { status (0x08) START (1) }
    EXPECT_EQ(after_wall_time(records[1]), std::string("\x10\x06\x3A\x02\x08\x01", 6));
    // metrics.jsonl: the kept lines, then the resumed steps.
    std::istringstream metrics(read_bytes(dir / "metrics.jsonl"));
    std::vector<int64_t> steps;
    for (std::string line; std::getline(metrics, line);) {
        if (json::parse(line).at("kind") == "train") steps.push_back(json::parse(line).at("step").get<int64_t>());
    }
    EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
}

TEST(RunLog, UnwritableRunDirFailsNamingThePath) {
    const fs::path dir = scratch_dir("run_log_bad");
    std::ofstream(dir / "a_file") << "x";
    const std::string bad = (dir / "a_file" / "run").string();
    RunLog log;
    expect_error([&] { log.open(bad, false, true); }, {bad, "cannot create the run directory"});
    EXPECT_FALSE(log.is_open());
    log.write({{"kind", "train"}, {"step", 1}, {"loss", 1.0}});   // still closed: nothing, no crash

    // metrics.jsonl itself unopenable: a directory of that name.
    const fs::path blocked = dir / "blocked";
    fs::create_directories(blocked / "metrics.jsonl");
    expect_error([&] { log.open(blocked.string(), false, true); },
                 {(blocked / "metrics.jsonl").string(), "cannot open for writing"});
    EXPECT_FALSE(log.is_open());

    // A full disk: metrics.jsonl is /dev/full, where every write fails with ENOSPC.
    if (fs::exists("/dev/full")) {
        const fs::path full = dir / "full";
        fs::create_directories(full);
        fs::create_symlink("/dev/full", full / "metrics.jsonl");
        log.open(full.string(), true, false);
        expect_error([&] { log.write({{"kind", "train"}, {"step", 1}, {"loss", 1.0}}); },
                     {(full / "metrics.jsonl").string(), "cannot write a line"});
    }
}

// A string that is not UTF-8 (a sample of a broken tokenizer) is written with U+FFFD, not thrown.
TEST(RunLog, NonUtf8StringIsReplacedNotThrown) {
    const fs::path dir = scratch_dir("run_log_utf8");
    RunLog log;
    log.open(dir.string(), false, true);
    log.write({{"kind", "eval"}, {"step", 1}, {"sample", "4\xff" "1"}, {"exact_match", 0.5}});
    EXPECT_EQ(json::parse(read_bytes(dir / "metrics.jsonl")).at("sample"), "4\xEF\xBF\xBD" "1");
    ASSERT_EQ(read_scalars(log.event_path()).size(), 1u);
}

// The `tensorboard` key: on by default in all three configs, off with --set; a checkpoint's run.json from
// before the key existed still reads (as GRPO's init does), taking the default.
TEST(RunLog, TensorBoardKeyDefaultsOnAndOldRunJsonStillReads) {
    EXPECT_TRUE(load_run_config("", {}).tensorboard);
    EXPECT_FALSE(load_run_config("", {"tensorboard=false"}).tensorboard);
    EXPECT_TRUE(load_ppo_config("", {}).tensorboard);
    EXPECT_FALSE(load_ppo_config("", {"tensorboard=false"}).tensorboard);
    EXPECT_TRUE(load_grpo_config("", {"init=x"}).tensorboard);
    EXPECT_FALSE(load_grpo_config("", {"init=x", "tensorboard=false"}).tensorboard);
    expect_error([] { load_ppo_config("", {"tensorboard=1"}); }, {"'tensorboard' must be a boolean"});

    json old = load_run_config("", {"seed=5"}).resolved;
    old.erase("tensorboard");
    expect_error([&] { parse_run_config(old, "old/run.json"); }, {"old/run.json: 'tensorboard' is missing"});
    const RunConfig saved = parse_saved_run_config(old, "old/run.json");
    EXPECT_TRUE(saved.tensorboard);
    EXPECT_EQ(saved.seed, 5u);
    old["no_such_key"] = 1;
    expect_error([&] { parse_saved_run_config(old, "old/run.json"); }, {"old/run.json: unknown key 'no_such_key'"});
}

}  // namespace
}  // namespace reftrain

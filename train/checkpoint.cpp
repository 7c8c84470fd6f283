// train/checkpoint.cpp — see checkpoint.h for the directory layout.
//
// state.bin, byte by byte (integers little-endian):
//   [0, 8)          magic "RFTSTATE"
//   [8, 12)         u32 version (kCheckpointVersion)
//   [12, 20)        u64 payload length P
//   [20, 20 + P)    payload: u64 header length H, H bytes of JSON header, then the moment bytes
//   [20 + P, +4)    u32 CRC-32 (zlib) of the payload
// The JSON header lists every moment tensor with its dtype, shape and byte range inside the moment
// bytes, which must tile them exactly (as safetensors does). RNG states are written as decimal
// strings: they use all 64 bits, and a JSON number above 2^53 is rounded by many readers.
//
// Order of operations on load: everything is read and verified into a StoredState first (state.bin
// framing, CRC, header, table; the CRC and tensor table of model.safetensors; config.json against the
// model; the moment table against the optimizer). Only then are the model, optimizer and state
// written, so a refused checkpoint leaves all three exactly as they were.
#include "train/checkpoint.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include "kernels/error.h"
#include "kernels/json_strict.h"
#include "kernels/safetensors.h"

namespace reftrain {

static_assert(std::endian::native == std::endian::little, "state.bin stores moments in host byte order");

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr char kMagic[8] = {'R', 'F', 'T', 'S', 'T', 'A', 'T', 'E'};
constexpr size_t kPrefixBytes = 8 + 4 + 8;  // magic, version, payload length
constexpr size_t kCrcBytes = 4;

// zlib's crc32 takes a 32-bit length, so large buffers go through in pieces.
uint32_t crc32_of(const std::byte* data, size_t size) {
    uLong crc = crc32(0L, Z_NULL, 0);
    while (size > 0) {
        const uInt piece = static_cast<uInt>(std::min<size_t>(size, size_t{1} << 30));
        crc = crc32(crc, reinterpret_cast<const Bytef*>(data), piece);
        data += piece;
        size -= piece;
    }
    return static_cast<uint32_t>(crc);
}

void put_u32(std::vector<std::byte>& out, uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xffu));
}
void put_u64(std::vector<std::byte>& out, uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xffu));
}
uint32_t get_u32(const std::byte* p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | std::to_integer<uint32_t>(p[i]);
    return v;
}
uint64_t get_u64(const std::byte* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | std::to_integer<uint64_t>(p[i]);
    return v;
}

std::string hex32(uint32_t v) {
    char text[11];
    std::snprintf(text, sizeof text, "0x%08x", v);
    return text;
}

std::vector<std::byte> read_file(const std::string& path, const std::string& what) {
    std::error_code ec;
    check(fs::is_regular_file(path, ec), path, ": missing ", what, " (expected a regular file)");
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) fail(path, ": cannot open ", what, ": ", std::strerror(errno));
    const std::streamoff size = in.tellg();
    check(size >= 0, path, ": cannot determine the size of ", what);
    std::vector<std::byte> bytes(static_cast<size_t>(size));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(bytes.data()), size);
    check(in.gcount() == size, path, ": read ", in.gcount(), " of ", size, " bytes of ", what);
    return bytes;
}

// Makes renames and new entries inside `dir` durable. Some filesystems cannot fsync a directory
// (EINVAL); there is nothing more to do on those.
void fsync_directory(const std::string& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) fail(dir, ": cannot open directory to fsync it: ", std::strerror(errno));
    if (::fsync(fd) != 0 && errno != EINVAL) {
        std::string reason = std::strerror(errno);
        ::close(fd);
        fail(dir, ": fsync of the directory failed: ", reason);
    }
    ::close(fd);
}

void rename_or_fail(const std::string& from, const std::string& to) {
    std::error_code ec;
    fs::rename(from, to, ec);
    if (ec) fail(to, ": cannot rename '", from, "' to it: ", ec.message());
}

// "run/ckpt/" and "run/ckpt" name the same directory; the ".tmp" sibling must be "run/ckpt.tmp".
std::string without_trailing_slash(std::string dir) {
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    return dir;
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<int64_t> shape_of(const Tensor& t) { return std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.ndim); }

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + ")";
}

// ----------------------------------------------------------------------------------------------------
// state.bin: encoding

std::vector<std::byte> encode_state(AdamW& optimizer, const TrainState& state, uint32_t weights_crc,
                                    uint64_t weights_bytes) {
    json header = json::object();
    header["step"] = state.step;
    header["optimizer_step_count"] = optimizer.step_count();
    json rng = json::array();
    for (uint64_t s : state.rng_states) rng.push_back(std::to_string(s));
    header["rng_states"] = rng;
    header["data_position"] = {{"epoch", state.data.epoch}, {"cursor", state.data.cursor}, {"offset", state.data.offset}};
    header["template_fingerprint"] = state.template_fingerprint;
    header["tokenizer_fingerprint"] = state.tokenizer_fingerprint;
    header["extra"] = state.extra;
    header["model_safetensors"] = {{"bytes", weights_bytes}, {"crc32", weights_crc}};
    json table = json::array();
    size_t offset = 0;
    for (const Tensor& t : optimizer.moments().tensors()) {
        table.push_back({{"name", t.name}, {"dtype", dtype_name(t.dtype)}, {"shape", shape_of(t)},
                         {"begin", offset}, {"end", offset + t.nbytes()}});
        offset += t.nbytes();
    }
    header["moments"] = table;
    const std::string header_text = header.dump();

    std::vector<std::byte> payload;
    payload.reserve(8 + header_text.size() + offset);
    put_u64(payload, header_text.size());
    const auto* text = reinterpret_cast<const std::byte*>(header_text.data());
    payload.insert(payload.end(), text, text + header_text.size());
    for (const Tensor& t : optimizer.moments().tensors()) {
        const auto* bytes = static_cast<const std::byte*>(t.data);
        payload.insert(payload.end(), bytes, bytes + t.nbytes());
    }

    std::vector<std::byte> file;
    file.reserve(kPrefixBytes + payload.size() + kCrcBytes);
    for (char c : kMagic) file.push_back(static_cast<std::byte>(c));
    put_u32(file, kCheckpointVersion);
    put_u64(file, payload.size());
    file.insert(file.end(), payload.begin(), payload.end());
    put_u32(file, crc32_of(payload.data(), payload.size()));
    return file;
}

// ----------------------------------------------------------------------------------------------------
// state.bin: decoding and verification

struct StoredMoment {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;  // inside the moment bytes
};

struct StoredState {
    TrainState state;
    int64_t optimizer_step_count = 0;
    uint32_t weights_crc = 0;
    uint64_t weights_bytes = 0;
    std::vector<StoredMoment> moments;
    std::vector<std::byte> file;  // the whole state.bin
    size_t moments_start = 0;     // offset of the moment bytes in `file`
};

const json& field(const json& object, const char* name, const std::string& where) {
    check(object.is_object() && object.contains(name), where, ": header field '", name, "' is missing");
    return object[name];
}

// The largest step a checkpoint may record: 2^50 steps is beyond any run, and exact in a double.
constexpr int64_t kMaxCheckpointStep = int64_t{1} << 50;

int64_t integer_field(const json& object, const char* name, const std::string& where) {
    const json& v = field(object, name, where);
    check(v.is_number_integer() && (!v.is_number_unsigned() || v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())), where,
          ": header field '", name, "' must be an integer, got ", v.dump());
    const int64_t value = v.get<int64_t>();
    check(value >= 0, where, ": header field '", name, "' must be >= 0, got ", value);
    return value;
}

std::string string_field(const json& object, const char* name, const std::string& where) {
    const json& v = field(object, name, where);
    check(v.is_string(), where, ": header field '", name, "' must be a string, got ", v.type_name());
    return v.get<std::string>();
}

uint64_t parse_u64_text(const json& v, const std::string& where, size_t index) {
    check(v.is_string(), where, ": header field 'rng_states' entry ", index,
          " must be a decimal string (u64), got ", v.dump());
    const std::string& text = v.get_ref<const std::string&>();
    uint64_t value = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    check(!text.empty() && error == std::errc() && end == text.data() + text.size(), where,
          ": header field 'rng_states' entry ", index, " is '", text, "', expected a decimal u64");
    return value;
}

StoredState read_state_file(const std::string& path) {
    StoredState stored;
    stored.file = read_file(path, "state file (state.bin)");
    const std::vector<std::byte>& bytes = stored.file;
    const size_t size = bytes.size();

    // Magic first: a file that is not ours should be named as such even when it is short.
    const size_t magic_seen = std::min(size, sizeof kMagic);
    // (An empty file has no data() to compare, and memcmp on a null pointer is undefined even for 0
    // bytes: it is called "truncated" below.)
    check(magic_seen == 0 || std::memcmp(bytes.data(), kMagic, magic_seen) == 0, path,
          ": not a reftrain state file (bad magic; expected the file to start with \"RFTSTATE\")");
    check(size >= kPrefixBytes, path, ": truncated: ", size, " bytes, shorter than the ", kPrefixBytes,
          "-byte prefix (magic, version, payload length)");
    const uint32_t version = get_u32(bytes.data() + 8);
    check(version <= kCheckpointVersion, path, ": format version ", version,
          " was written by a newer reftrain; this build reads version ", kCheckpointVersion, " and older");
    check(version >= 1, path, ": invalid state.bin version 0 (versions start at 1)");

    const uint64_t payload_size = get_u64(bytes.data() + 12);
    const size_t available = size - kPrefixBytes;
    check(payload_size <= available && available - payload_size >= kCrcBytes, path, ": truncated: the file has ",
          size, " bytes, but its payload length ", payload_size, " needs ", kPrefixBytes, " + ", payload_size,
          " + ", kCrcBytes, " bytes");
    check(available - payload_size == kCrcBytes, path, ": corrupt: ", available - payload_size - kCrcBytes,
          " unexpected bytes after the checksum");
    const std::byte* payload = bytes.data() + kPrefixBytes;
    const uint32_t stored_crc = get_u32(payload + payload_size);
    const uint32_t actual_crc = crc32_of(payload, payload_size);
    check(stored_crc == actual_crc, path, ": corrupt: CRC-32 of the payload is ", hex32(actual_crc),
          ", the file records ", hex32(stored_crc));

    // The CRC matched, so what follows can only fail for a file some other writer produced.
    check(payload_size >= 8, path, ": corrupt: payload of ", payload_size, " bytes has no header length");
    const uint64_t header_size = get_u64(payload);
    check(header_size <= payload_size - 8, path, ": corrupt: header length ", header_size,
          " runs past the payload (", payload_size - 8, " bytes)");
    const std::string& where = path;
    json header;
    DuplicateKey duplicate;
    try {
        header = parse_json_noting_duplicates(
            std::string_view(reinterpret_cast<const char*>(payload + 8), header_size), &duplicate);
    } catch (const json::exception& e) {
        fail(path, ": corrupt: header is not valid JSON (", e.what(), ")");
    }
    check(header.is_object(), path, ": corrupt: header must be a JSON object, got ", header.type_name());
    check(duplicate.key.empty(), path, ": corrupt: duplicate key '", duplicate.key, "' in the header");

    TrainState& state = stored.state;
    state.step = integer_field(header, "step", where);
    stored.optimizer_step_count = integer_field(header, "optimizer_step_count", where);
    // A step count no run reaches (the schedule and AdamW's bias correction take it as a double).
    check(state.step >= 0 && state.step <= kMaxCheckpointStep, path, ": header field 'step' = ", state.step,
          " is outside [0, 2^50]");
    check(stored.optimizer_step_count >= 0 && stored.optimizer_step_count <= kMaxCheckpointStep, path,
          ": header field 'optimizer_step_count' = ", stored.optimizer_step_count, " is outside [0, 2^50]");
    const json& rng = field(header, "rng_states", where);
    check(rng.is_array(), path, ": header field 'rng_states' must be an array, got ", rng.type_name());
    for (size_t i = 0; i < rng.size(); ++i) state.rng_states.push_back(parse_u64_text(rng[i], where, i));
    const json& data = field(header, "data_position", where);
    state.data.epoch = integer_field(data, "epoch", where + " data_position");
    state.data.cursor = integer_field(data, "cursor", where + " data_position");
    state.data.offset = integer_field(data, "offset", where + " data_position");
    state.template_fingerprint = string_field(header, "template_fingerprint", where);
    state.tokenizer_fingerprint = string_field(header, "tokenizer_fingerprint", where);
    state.extra = field(header, "extra", where);
    const json& weights = field(header, "model_safetensors", where);
    stored.weights_bytes = static_cast<uint64_t>(integer_field(weights, "bytes", where + " model_safetensors"));
    const int64_t crc = integer_field(weights, "crc32", where + " model_safetensors");
    check(crc <= 0xffffffffLL, path, ": header field 'model_safetensors.crc32' = ", crc, " does not fit in 32 bits");
    stored.weights_crc = static_cast<uint32_t>(crc);

    // The moment table must tile the moment bytes exactly, each range sized numel * dtype size.
    stored.moments_start = kPrefixBytes + 8 + header_size;
    const size_t moment_bytes = payload_size - 8 - header_size;
    const json& table = field(header, "moments", where);
    check(table.is_array(), path, ": header field 'moments' must be an array, got ", table.type_name());
    size_t covered = 0;
    for (size_t i = 0; i < table.size(); ++i) {
        const std::string entry_where = concat(path, " moments[", i, "]");
        StoredMoment m;
        m.name = string_field(table[i], "name", entry_where);
        const std::string dtype = string_field(table[i], "dtype", entry_where);
        check(dtype_from_name(dtype, &m.dtype) && dtype_is_float(m.dtype), entry_where, ": dtype '", dtype,
              "' is not a float dtype");
        const json& shape = field(table[i], "shape", entry_where);
        check(shape.is_array(), entry_where, ": field 'shape' must be an array");
        size_t numel = 1, span = 0;
        for (const json& d : shape) {
            check(d.is_number_integer() && d.get<int64_t>() >= 0, entry_where, ": bad dimension ", d.dump());
            m.shape.push_back(d.get<int64_t>());
            // Checked: a shape like [2^62, 4] must not wrap to a span of 0 bytes that then "matches".
            check(!__builtin_mul_overflow(numel, static_cast<size_t>(m.shape.back()), &numel), entry_where,
                  ": the shape ", shape.dump(), " has more elements than a 64-bit size can count");
        }
        check(!__builtin_mul_overflow(numel, dtype_size(m.dtype), &span) && span <= moment_bytes, entry_where,
              ": the shape ", shape.dump(), " spans more bytes than the payload's ", moment_bytes);
        m.begin = static_cast<size_t>(integer_field(table[i], "begin", entry_where));
        m.end = static_cast<size_t>(integer_field(table[i], "end", entry_where));
        check(m.begin == covered && m.end >= m.begin && m.end - m.begin == span, entry_where,
              ": '", m.name, "' has byte range [", m.begin, ", ", m.end, "), expected to start at ", covered,
              " and span ", span, " bytes");
        covered = m.end;
        stored.moments.push_back(std::move(m));
    }
    check(covered == moment_bytes, path, ": corrupt: the moment table covers ", covered, " bytes, the payload holds ",
          moment_bytes);
    return stored;
}

// ----------------------------------------------------------------------------------------------------
// Checks of the other files against the stored state and the target objects (nothing is written).

void verify_weights_file(const std::string& path, const StoredState& stored, const Transformer& model) {
    const std::vector<std::byte> bytes = read_file(path, "weights file (model.safetensors)");
    check(bytes.size() == stored.weights_bytes, path, ": has ", bytes.size(), " bytes, state.bin records ",
          stored.weights_bytes, ": truncated or replaced");
    const uint32_t crc = crc32_of(bytes.data(), bytes.size());
    check(crc == stored.weights_crc, path, ": corrupt: CRC-32 is ", hex32(crc), ", state.bin records ",
          hex32(stored.weights_crc));
    // Names and shapes here, so that load_weights below cannot fail half way through the tensors.
    SafetensorsFile file = SafetensorsFile::open(path);
    for (const Tensor& p : model.params().tensors()) {
        check(file.contains(p.name), path, ": tensor '", p.name, "' of the model is missing (the checkpoint "
              "is of another model config)");
        check(file.entry(p.name).shape == shape_of(p), path, ": tensor '", p.name, "' has shape ",
              file.entry(p.name).shape_str(), ", the model expects ", p.shape_str(),
              " (the checkpoint is of another model config)");
    }
    check(file.entries().size() == model.params().size(), path, ": holds ", file.entries().size(),
          " tensors, the model has ", model.params().size(), " (the checkpoint is of another model config)");
}

void verify_model_config(const std::string& path, const Transformer& model) {
    const json stored = ModelConfig::load(path).to_json();
    const json expected = model.config().to_json();
    std::string differences;
    for (const auto& [key, value] : expected.items()) {
        if (!stored.contains(key) || stored[key] != value) {
            differences += concat(differences.empty() ? "" : ", ", key, " (checkpoint ",
                                  stored.contains(key) ? stored[key].dump() : "absent", ", model ", value.dump(), ")");
        }
    }
    check(differences.empty(), path, ": the checkpoint's model config differs from the model's: ", differences);
}

void verify_moment_table(const std::string& path, const StoredState& stored, AdamW& optimizer) {
    const Arena& moments = optimizer.moments();
    check(stored.moments.size() == moments.size(), path, ": optimizer tensor table holds ", stored.moments.size(),
          " moment tensors, this optimizer has ", moments.size(), " (the checkpoint is of another model config)");
    for (size_t i = 0; i < moments.size(); ++i) {
        const StoredMoment& s = stored.moments[i];
        const Tensor& t = moments.at(i);
        check(s.name == t.name && s.dtype == t.dtype && s.shape == shape_of(t), path,
              ": optimizer tensor table does not match: entry ", i, " is '", s.name, "' ", dtype_name(s.dtype), " ",
              shape_string(s.shape), ", the optimizer has '", t.name, "' ", dtype_name(t.dtype), " ", t.shape_str());
    }
}

}  // namespace

// ----------------------------------------------------------------------------------------------------

void save_checkpoint(const std::string& dir_in, const Transformer& model, AdamW& optimizer, const TrainState& state,
                     const nlohmann::json& run_config, const std::string& tokenizer_model_path, bool overwrite) {
    const std::string dir = without_trailing_slash(dir_in);
    check(!dir.empty(), "save_checkpoint: the checkpoint directory is empty");
    check(!ends_with(dir, ".tmp"), dir, ": a checkpoint directory may not end in '.tmp' (reserved for unfinished writes)");
    std::error_code ec;
    const bool exists = fs::exists(dir, ec);
    if (exists) {
        check(overwrite, dir, ": checkpoint directory already exists (pass overwrite to replace it)");
        check(fs::is_directory(dir, ec), dir, ": exists and is not a directory; refusing to replace it");
        // Overwrite deletes the old directory, so it must be a checkpoint (or empty), never a random folder.
        check(fs::exists(fs::path(dir) / "state.bin", ec) || fs::is_empty(dir, ec), dir,
              ": exists but holds no state.bin, so it is not a checkpoint; refusing to replace it");
    }

    // A stale <dir>.tmp is what a crash during an earlier save leaves; it is never loaded, just replaced.
    const std::string tmp = dir + ".tmp";
    fs::remove_all(tmp, ec);
    check(!ec, tmp, ": cannot remove the stale unfinished checkpoint: ", ec.message());
    fs::create_directories(tmp, ec);
    check(!ec, tmp, ": cannot create directory: ", ec.message());

    try {
        const std::string weights_path = (fs::path(tmp) / "model.safetensors").string();
        model.save_weights(weights_path, model.dtype());  // the model's own dtype: resume must be bitwise
        // The CRC is of the bytes that reached the disk, read back.
        const std::vector<std::byte> weights = read_file(weights_path, "weights file (model.safetensors)");
        const uint32_t weights_crc = crc32_of(weights.data(), weights.size());

        model.config().save((fs::path(tmp) / "config.json").string());
        const std::string run_text = run_config.dump(2) + "\n";
        write_file_atomically((fs::path(tmp) / "run.json").string(), run_text.data(), run_text.size());
        if (!tokenizer_model_path.empty()) {
            const std::vector<std::byte> tokenizer = read_file(tokenizer_model_path, "tokenizer model");
            write_file_atomically((fs::path(tmp) / "tokenizer.model").string(), tokenizer.data(), tokenizer.size());
        }
        const std::vector<std::byte> state_bytes = encode_state(optimizer, state, weights_crc, weights.size());
        write_file_atomically((fs::path(tmp) / "state.bin").string(), state_bytes.data(), state_bytes.size());
        fsync_directory(tmp);
    } catch (...) {
        fs::remove_all(tmp, ec);  // best effort; the error being thrown is the one worth reporting
        throw;
    }

    const std::string parent = fs::path(dir).has_parent_path() ? fs::path(dir).parent_path().string() : ".";
    if (exists) {
        // Old out of the way, new in, then delete old: at every instant one complete checkpoint exists
        // under <dir> or <dir>.old (load_checkpoint points at the latter if a crash leaves only it).
        const std::string old = dir + ".old";
        fs::remove_all(old, ec);
        check(!ec, old, ": cannot remove: ", ec.message());
        rename_or_fail(dir, old);
        rename_or_fail(tmp, dir);
        fsync_directory(parent);
        fs::remove_all(old, ec);
        check(!ec, old, ": cannot remove the replaced checkpoint: ", ec.message());
    } else {
        rename_or_fail(tmp, dir);
    }
    fsync_directory(parent);
}

void load_checkpoint(const std::string& dir_in, Transformer& model, AdamW* optimizer, TrainState& state) {
    const std::string dir = without_trailing_slash(dir_in);
    check(!ends_with(dir, ".tmp"), dir, ": is an unfinished checkpoint write (a crash left it); it is never loaded");
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
        const bool old_exists = fs::exists(dir + ".old", ec);
        fail(dir, ": missing checkpoint directory",
             old_exists ? concat(" (a crash during an overwrite left the previous checkpoint at ", dir, ".old)") : "");
    }
    const std::string state_path = (fs::path(dir) / "state.bin").string();
    const std::string weights_path = (fs::path(dir) / "model.safetensors").string();

    // 1. Verify everything.
    StoredState stored = read_state_file(state_path);
    verify_weights_file(weights_path, stored, model);
    verify_model_config((fs::path(dir) / "config.json").string(), model);
    if (optimizer) verify_moment_table(state_path, stored, *optimizer);

    // 2. Apply. Nothing above touched the model, optimizer or state.
    model.load_weights(weights_path);
    if (optimizer) {
        for (size_t i = 0; i < stored.moments.size(); ++i) {
            const StoredMoment& m = stored.moments[i];
            std::memcpy(optimizer->moments().at(i).data, stored.file.data() + stored.moments_start + m.begin,
                        m.end - m.begin);
        }
        optimizer->set_step_count(stored.optimizer_step_count);
    }
    state = std::move(stored.state);
}

nlohmann::json read_checkpoint_run_config(const std::string& dir) {
    const std::string path = (fs::path(without_trailing_slash(dir)) / "run.json").string();
    const std::vector<std::byte> bytes = read_file(path, "run config (run.json)");
    DuplicateKey duplicate;
    json config;
    try {
        config = parse_json_noting_duplicates(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                                              &duplicate);
    } catch (const json::exception& e) {
        fail(path, ": not valid JSON (", e.what(), ")");
    }
    check(duplicate.key.empty(), path, ": duplicate key '", duplicate.key, "'");
    return config;
}

TrainState read_checkpoint_state(const std::string& dir) {
    const std::string d = without_trailing_slash(dir);
    check(!ends_with(d, ".tmp"), d, ": is an unfinished checkpoint write (a crash left it); it is never loaded");
    return read_state_file((fs::path(d) / "state.bin").string()).state;
}

std::string save_run_checkpoint(const std::string& run_dir, const Transformer& model, AdamW& optimizer,
                                const TrainState& state, const nlohmann::json& run_config,
                                const std::string& tokenizer_model_path) {
    const fs::path root = fs::path(run_dir) / "checkpoints";
    fs::create_directories(root);
    char name[32];
    std::snprintf(name, sizeof name, "step_%07lld", static_cast<long long>(state.step));
    const fs::path dir = root / name;
    // `latest` moves only after every file of the new checkpoint is in place. A write that fails (a full
    // disk: ENOSPC; a file-size limit: EFBIG) leaves the previous checkpoint and `latest` as they were, and
    // the half-written directory is removed so that nothing looks like a checkpoint that is not one.
    std::string previous;
    std::ifstream(root / "latest") >> previous;
    try {
        save_checkpoint(dir.string(), model, optimizer, state, run_config, tokenizer_model_path, /*overwrite=*/true);
        const std::string latest = std::string(name) + "\n";
        write_file_atomically((root / "latest").string(), latest.data(), latest.size());
    } catch (const Error& e) {
        std::error_code ignored;
        if (previous != name) fs::remove_all(dir, ignored);
        fs::remove_all(dir.string() + ".tmp", ignored);   // the unfinished write itself
        fail("could not write checkpoint ", dir.string(), " (", e.what(), "). ",
             previous.empty() ? std::string("No earlier checkpoint exists.")
                              : concat("The last good checkpoint, ", (root / previous).string(),
                                       ", is intact and checkpoints/latest still names it: free space and continue "
                                       "with --set resume=latest."));
    }
    return dir.string();
}

std::string resolve_checkpoint_dir(const std::string& path) {
    const fs::path p(path);
    if (fs::exists(p / "state.bin")) return p.string();
    const fs::path latest = p / "checkpoints" / "latest";
    std::ifstream in(latest);
    check(static_cast<bool>(in), path, ": neither a checkpoint (no state.bin) nor a run directory with ",
          "checkpoints/latest (no checkpoint saved yet); train one with `reftrain train` first");
    std::string name;
    std::getline(in, name);
    return (latest.parent_path() / name).string();
}

}  // namespace reftrain

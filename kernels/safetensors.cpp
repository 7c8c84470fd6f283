// kernels/safetensors.cpp — see safetensors.h. The reader validates in three passes: the framing
// (length prefix, JSON, duplicate names), each entry on its own (types, dtype, shape, offsets, size),
// then the layout of the data buffer (entries sorted by offset must tile it exactly).
#include "kernels/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "kernels/json_strict.h"

namespace reftrain {

// Tensor bytes are copied as they are in the file, which the format defines as little-endian.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

using json = nlohmann::json;

const char* const kKnownDtypes = "F32, F64, BF16, F16, I32, I64, U8";

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + ")";
}

// A JSON value in a message, cut short so a corrupt header does not flood the terminal.
std::string short_dump(const json& j) {
    std::string s = j.dump();
    return s.size() <= 60 ? s : s.substr(0, 57) + "...";
}

// Reads a JSON integer that must be >= 0 and fit in int64; false if it is anything else.
bool read_non_negative(const json& j, int64_t* out) {
    if (!j.is_number_integer()) return false;
    if (j.is_number_unsigned()) {
        uint64_t u = j.get<uint64_t>();
        if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
        *out = static_cast<int64_t>(u);
        return true;
    }
    *out = j.get<int64_t>();
    return *out >= 0;
}

bool is_integer_dtype(DType d) { return d == DType::I32 || d == DType::I64 || d == DType::U8; }

// Element i of a float buffer of dtype `d`, as fp32 (F64 rounds to nearest) or as fp64 (exact).
float load_float(const std::byte* p, DType d, size_t i) {
    switch (d) {
        case DType::F32: { float v; std::memcpy(&v, p + 4 * i, 4); return v; }
        case DType::F64: { double v; std::memcpy(&v, p + 8 * i, 8); return static_cast<float>(v); }
        case DType::BF16: { uint16_t h; std::memcpy(&h, p + 2 * i, 2); return bf16_to_float(h); }
        case DType::F16: { uint16_t h; std::memcpy(&h, p + 2 * i, 2); return f16_to_float(h); }
        default: return 0.0f;  // callers only pass float dtypes
    }
}

double load_double(const std::byte* p, DType d, size_t i) {
    if (d == DType::F64) { double v; std::memcpy(&v, p + 8 * i, 8); return v; }
    return load_float(p, d, i);  // F32, BF16, F16 are exact in fp64
}

void store_float(std::byte* p, DType d, size_t i, float v) {
    switch (d) {
        case DType::F32: std::memcpy(p + 4 * i, &v, 4); return;
        case DType::BF16: { uint16_t h = float_to_bf16(v); std::memcpy(p + 2 * i, &h, 2); return; }
        case DType::F16: { uint16_t h = float_to_f16(v); std::memcpy(p + 2 * i, &h, 2); return; }
        default: return;  // F64 is stored by the caller from load_double
    }
}

int64_t load_integer(const std::byte* p, DType d, size_t i) {
    switch (d) {
        case DType::I32: { int32_t v; std::memcpy(&v, p + 4 * i, 4); return v; }
        case DType::I64: { int64_t v; std::memcpy(&v, p + 8 * i, 8); return v; }
        case DType::U8: return static_cast<int64_t>(std::to_integer<uint8_t>(p[i]));
        default: return 0;
    }
}

// Converts `count` elements from `src` (dtype `from`) to `dst` (dtype `to`). `where` starts every
// error message ("FILE: tensor 'NAME'").
void convert_elements(const std::byte* src, DType from, std::byte* dst, DType to, size_t count,
                      const std::string& where) {
    if (from == to) {
        if (count) std::memcpy(dst, src, count * dtype_size(from));
        return;
    }
    if (dtype_is_float(from) && dtype_is_float(to)) {
        for (size_t i = 0; i < count; ++i) {
            if (to == DType::F64) {
                double v = load_double(src, from, i);
                std::memcpy(dst + 8 * i, &v, 8);
            } else {
                store_float(dst, to, i, load_float(src, from, i));
            }
        }
        return;
    }
    if (is_integer_dtype(from) && (to == DType::I32 || to == DType::I64)) {
        for (size_t i = 0; i < count; ++i) {
            int64_t v = load_integer(src, from, i);
            if (to == DType::I64) {
                std::memcpy(dst + 8 * i, &v, 8);
            } else {
                check(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(),
                      where, ": element ", i, " = ", v, " does not fit in I32 (converting ",
                      dtype_name(from), " to I32)");
                int32_t narrow = static_cast<int32_t>(v);
                std::memcpy(dst + 4 * i, &narrow, 4);
            }
        }
        return;
    }
    fail(where, ": cannot convert ", dtype_name(from), " to ", dtype_name(to),
         " (float dtypes F32/F64/BF16/F16 convert among themselves, integers to I32/I64; never "
         "float <-> integer)");
}

std::vector<std::byte> read_whole_file(const std::string& path) {
    std::error_code ec;
    auto status = std::filesystem::status(path, ec);
    if (!std::filesystem::exists(status)) {
        fail(path, ": cannot open safetensors file: ", ec ? ec.message() : std::string("no such file"));
    }
    check(!std::filesystem::is_directory(status), path,
          ": cannot open safetensors file: it is a directory, expected a .safetensors file");
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) fail(path, ": cannot open safetensors file: ", std::strerror(errno));
    std::streamoff size = in.tellg();
    check(size >= 0, path, ": cannot read safetensors file (cannot determine its size)");
    std::vector<std::byte> bytes(static_cast<size_t>(size));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(bytes.data()), size);
    check(in.gcount() == size, path, ": cannot read safetensors file: read ", in.gcount(), " of ", size,
          " bytes");
    return bytes;
}

}  // namespace

int64_t SafetensorsEntry::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string SafetensorsEntry::shape_str() const { return shape_string(shape); }

SafetensorsFile SafetensorsFile::open(const std::string& path) {
    SafetensorsFile file;
    file.path_ = path;
    file.bytes_ = read_whole_file(path);
    const std::vector<std::byte>& bytes = file.bytes_;

    // --- Framing: u64 header length, JSON header, no duplicate keys. ---
    check(bytes.size() >= 8, path, ": file is truncated: ", bytes.size(),
          " bytes, shorter than the 8-byte header length that starts every safetensors file");
    uint64_t header_length = 0;
    for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | std::to_integer<uint64_t>(bytes[i]);
    check(header_length <= bytes.size() - 8, path, ": header length ", header_length,
          " runs past the end of the file (", bytes.size(), " bytes; at most ", bytes.size() - 8,
          " header bytes are present): truncated or not a safetensors file");
    file.data_start_ = 8 + static_cast<size_t>(header_length);

    const char* header_begin = reinterpret_cast<const char*>(bytes.data() + 8);
    DuplicateKey duplicate;
    json header;
    try {
        header = parse_json_noting_duplicates(std::string_view(header_begin, header_length), &duplicate);
    } catch (const json::exception& e) {
        fail(path, ": header is not valid JSON (", e.what(), ")");
    }
    check(header.is_object(), path, ": header must be a JSON object mapping tensor names to entries, got ",
          header.type_name());
    if (!duplicate.key.empty()) {
        if (duplicate.depth == 1) fail(path, ": duplicate tensor name '", duplicate.key, "' in the header");
        fail(path, ": duplicate key '", duplicate.key, "' inside a header entry");
    }

    // --- Each entry on its own. ---
    const size_t data_size = bytes.size() - file.data_start_;
    for (const auto& [name, value] : header.items()) {
        if (name == "__metadata__") {
            check(value.is_object(), path, ": __metadata__ must be an object of string to string, got ",
                  value.type_name());
            for (const auto& [key, text] : value.items()) {
                check(text.is_string(), path, ": __metadata__ must be an object of string to string, "
                      "but key '", key, "' has a ", text.type_name(), " value ", short_dump(text));
                file.metadata_[key] = text.get<std::string>();
            }
            continue;
        }
        const std::string where = concat(path, ": tensor '", name, "'");
        check(value.is_object(), where,
              ": entry must be a JSON object with dtype, shape and data_offsets, got ", value.type_name());
        for (const char* field : {"dtype", "shape", "data_offsets"}) {
            check(value.contains(field), where, ": entry is missing field '", field, "'");
        }
        for (const auto& [field, unused] : value.items()) {
            check(field == "dtype" || field == "shape" || field == "data_offsets", where, ": unknown field '",
                  field, "' in entry (expected dtype, shape, data_offsets)");
        }

        SafetensorsEntry entry;
        entry.name = name;
        const json& dtype = value["dtype"];
        check(dtype.is_string(), where, ": field 'dtype' must be a string, got ", dtype.type_name(), " ",
              short_dump(dtype));
        if (!dtype_from_name(dtype.get<std::string>(), &entry.dtype)) {
            fail(where, ": unknown dtype '", dtype.get<std::string>(), "' (known: ", kKnownDtypes, ")");
        }

        const json& shape = value["shape"];
        check(shape.is_array(), where, ": field 'shape' must be an array of integers, got ",
              shape.type_name(), " ", short_dump(shape));
        size_t numel = 1;
        bool numel_overflows = false;
        for (const json& dim : shape) {
            check(dim.is_number_integer(), where, ": field 'shape' must be an array of integers, got ",
                  short_dump(shape));
            int64_t d = 0;
            check(read_non_negative(dim, &d), where, ": negative dimension ", short_dump(dim), " in shape ",
                  short_dump(shape), " (dimensions must be >= 0)");
            entry.shape.push_back(d);
            numel_overflows |= __builtin_mul_overflow(numel, static_cast<size_t>(d), &numel);
        }

        const json& offsets = value["data_offsets"];
        int64_t begin = 0, end = 0;
        check(offsets.is_array() && offsets.size() == 2 && read_non_negative(offsets[0], &begin) &&
                  read_non_negative(offsets[1], &end),
              where, ": field 'data_offsets' must be [begin, end] with two non-negative integers, got ",
              short_dump(offsets));
        check(begin <= end, where, ": data_offsets begin ", begin, " > end ", end);
        check(static_cast<uint64_t>(end) <= data_size, where, ": data_offsets [", begin, ", ", end,
              "] run past the end of the data buffer (", data_size,
              " bytes after the header): offsets out of range or the file is truncated");
        entry.begin = static_cast<size_t>(begin);
        entry.end = static_cast<size_t>(end);

        size_t expected_bytes = 0;
        numel_overflows |= __builtin_mul_overflow(numel, dtype_size(entry.dtype), &expected_bytes);
        check(!numel_overflows && expected_bytes == entry.end - entry.begin, where,
              ": byte size does not match shape: data_offsets span ", entry.end - entry.begin,
              " bytes, but shape ", entry.shape_str(), " of ", dtype_name(entry.dtype), " needs ",
              numel_overflows ? std::string("more than 2^64") : std::to_string(expected_bytes), " bytes");
        file.entries_.push_back(std::move(entry));
    }

    // --- The data buffer: sorted by offset, the entries must tile it without holes or overlaps. ---
    auto by_offset = [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
        if (a.begin != b.begin) return a.begin < b.begin;
        if (a.end != b.end) return a.end < b.end;
        return a.name < b.name;
    };
    std::sort(file.entries_.begin(), file.entries_.end(), by_offset);
    size_t covered = 0;
    const SafetensorsEntry* previous = nullptr;  // the entry that ends at `covered`
    for (const SafetensorsEntry& e : file.entries_) {
        if (e.begin < covered) {
            fail(path, ": tensors '", previous->name, "' (bytes [", previous->begin, ", ", previous->end,
                 ")) and '", e.name, "' (bytes [", e.begin, ", ", e.end, ")) overlap in the data buffer");
        }
        check(e.begin == covered, path, ": hole in the data buffer: bytes [", covered, ", ", e.begin,
              ") before tensor '", e.name, "' are not covered by any tensor");
        covered = e.end;
        previous = &e;
    }
    check(covered == data_size, path, ": hole in the data buffer: bytes [", covered, ", ", data_size,
          ") at its end are not covered by any tensor (", data_size, " data bytes, tensors cover ", covered,
          ")");
    for (size_t i = 0; i < file.entries_.size(); ++i) file.index_[file.entries_[i].name] = i;
    return file;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) {
        fail(path_, ": no tensor named '", name, "' (the file holds ", entries_.size(), " tensors)");
    }
    return entries_[it->second];
}

const std::byte* SafetensorsFile::raw_data(const std::string& name) const {
    return bytes_.data() + data_start_ + entry(name).begin;
}

void SafetensorsFile::read_into(const std::string& name, const Tensor& dst) const {
    const SafetensorsEntry& e = entry(name);
    const std::string where = concat(path_, ": tensor '", name, "'");
    check(dst.device == Device::CPU, where, ": destination tensor '", dst.name,
          "' must be on the CPU (read into a CPU tensor, then copy to the device)");
    bool same_shape = static_cast<size_t>(dst.ndim) == e.shape.size();
    for (int i = 0; same_shape && i < dst.ndim; ++i) same_shape = dst.shape[i] == e.shape[i];
    check(same_shape, where, " has shape ", e.shape_str(), " in the file, but the destination tensor '",
          dst.name, "' has shape ", dst.shape_str());
    check(dst.data != nullptr || dst.numel() == 0, where, ": destination tensor '", dst.name,
          "' has no storage (data is null)");
    convert_elements(raw_data(name), e.dtype, static_cast<std::byte*>(dst.data), dst.dtype,
                     static_cast<size_t>(e.numel()), where);
}

void save_safetensors(const std::string& path, const std::vector<Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata, std::optional<DType> store_dtype) {
    check(!store_dtype || dtype_is_float(*store_dtype), path, ": store dtype ",
          store_dtype ? dtype_name(*store_dtype) : "", " is not a float dtype (F32, F64, BF16 or F16)");

    // The header keeps the caller's order (ordered_json), so offsets increase down the file.
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::set<std::string> names;
    std::vector<DType> stored_dtypes;
    size_t data_size = 0;
    for (const Tensor& t : tensors) {
        check(!t.name.empty(), path, ": cannot save a tensor without a name");
        check(t.name != "__metadata__", path, ": '__metadata__' is reserved and cannot name a tensor");
        check(names.insert(t.name).second, path, ": tensor name '", t.name, "' appears twice");
        check(t.device == Device::CPU, path, ": tensor '", t.name, "' must be on the CPU to be saved");
        check(t.data != nullptr || t.numel() == 0, path, ": tensor '", t.name,
              "' has no storage (data is null)");
        DType stored = store_dtype && dtype_is_float(t.dtype) ? *store_dtype : t.dtype;
        size_t nbytes = static_cast<size_t>(t.numel()) * dtype_size(stored);
        header[t.name] = {{"dtype", dtype_name(stored)},
                          {"shape", std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.ndim)},
                          {"data_offsets", {data_size, data_size + nbytes}}};
        stored_dtypes.push_back(stored);
        data_size += nbytes;
    }
    std::string header_text = header.dump();
    header_text.append((8 - header_text.size() % 8) % 8, ' ');  // data starts 8-byte aligned

    std::vector<std::byte> out(8 + header_text.size() + data_size);
    uint64_t header_length = header_text.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((header_length >> (8 * i)) & 0xffu);
    std::memcpy(out.data() + 8, header_text.data(), header_text.size());
    std::byte* data = out.data() + 8 + header_text.size();
    for (size_t i = 0; i < tensors.size(); ++i) {
        const Tensor& t = tensors[i];
        convert_elements(static_cast<const std::byte*>(t.data), t.dtype, data, stored_dtypes[i],
                         static_cast<size_t>(t.numel()), concat(path, ": tensor '", t.name, "'"));
        data += static_cast<size_t>(t.numel()) * dtype_size(stored_dtypes[i]);
    }
    write_file_atomically(path, out.data(), out.size());
}

void write_file_atomically(const std::string& path, const void* data, size_t size) {
    // A temp name unique to this process and call: two writers of the same path (two runs filling
    // one tokenizer cache) must not interleave their bytes in one temp file. The rename is atomic.
    static std::atomic<uint64_t> counter{0};
    const std::string tmp = concat(path, ".tmp.", ::getpid(), ".", counter++);
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail(tmp, ": cannot create file for writing: ", std::strerror(errno));
    auto give_up = [&](const char* what) {
        std::string reason = std::strerror(errno);
        ::close(fd);
        ::unlink(tmp.c_str());
        fail(tmp, ": ", what, " failed: ", reason);
    };
    const char* p = static_cast<const char*>(data);
    size_t left = size;
    while (left > 0) {
        ssize_t n = ::write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) give_up("write");
        p += n;
        left -= static_cast<size_t>(n);
    }
    if (::fsync(fd) != 0) give_up("fsync");
    if (::close(fd) != 0) {
        std::string reason = std::strerror(errno);
        ::unlink(tmp.c_str());
        fail(tmp, ": close failed: ", reason);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        std::string reason = std::strerror(errno);
        ::unlink(tmp.c_str());
        fail(path, ": cannot rename '", tmp, "' over it: ", reason);
    }
    // Make the rename itself durable; a failure here loses nothing already written, so it is ignored.
    std::string dir = std::filesystem::path(path).parent_path().string();
    int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
        ::fsync(dir_fd);
        ::close(dir_fd);
    }
}

}  // namespace reftrain

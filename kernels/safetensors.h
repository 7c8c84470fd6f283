// kernels/safetensors.h — read and write HF `.safetensors` files (weights, dumps, tracer snapshots).
//
// Format: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON mapping each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data buffer that follows
// the header), plus an optional "__metadata__" object of string -> string. The header may end in
// spaces (writers pad it so the data starts 8-byte aligned).
//
// The reader loads the whole file into memory and validates everything in open(): a file that opens
// has every tensor's bytes in range, sized numel * dtype_size, and the tensors tile the data buffer
// exactly (no hole, no overlap), as the reference implementation requires. Any violation throws
// reftrain::Error naming the file, the tensor or field, and what was expected. Tensor data is copied
// out with memcpy, so nothing assumes the file's bytes are aligned.
//
// Conversions on read and write: float dtypes convert any to any (F32/F64/BF16/F16; bf16/fp16 go
// through kernels/dtype.h and round to nearest even; F64 reaches bf16/fp16 through fp32, as PyTorch
// does); I32 <-> I64 (and U8 -> I32/I64) convert with a range check. Float <-> integer never converts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/tensor.h"

namespace reftrain {

struct SafetensorsEntry {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;  // byte range inside the data buffer (after the header)

    int64_t numel() const;
    std::string shape_str() const;  // "(16, 128)", the same spelling as Tensor::shape_str()
};

class SafetensorsFile {
public:
    // Reads the whole file and validates the header and the layout of the data buffer.
    static SafetensorsFile open(const std::string& path);

    const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // sorted by data offset
    bool contains(const std::string& name) const { return index_.count(name) != 0; }
    // Fails naming the file and the tensor if there is no tensor `name`.
    const SafetensorsEntry& entry(const std::string& name) const;

    // Copies tensor `name` into `dst`, a CPU tensor of dtype F32, F64, BF16, F16, I32, I64 (or U8 when
    // the file holds U8), converting as described at the top of this file. The shape must match
    // exactly; otherwise the message names the file, the tensor and both shapes.
    void read_into(const std::string& name, const Tensor& dst) const;

    // The tensor's bytes as stored (file dtype, little-endian, possibly unaligned).
    const std::byte* raw_data(const std::string& name) const;

    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    std::vector<std::byte> bytes_;  // the whole file
    size_t data_start_ = 0;         // 8 + header length
    std::vector<SafetensorsEntry> entries_;
    std::unordered_map<std::string, size_t> index_;  // name -> position in entries_
    std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (CPU tensors, in the given order, under their Tensor::name) to `path` atomically:
// the bytes go to "<path>.tmp", are fsync'ed, and the file is renamed over `path`. Each tensor is
// stored in its own dtype, or, when `store_dtype` is given (a float dtype), float tensors are
// converted to it; integer tensors always keep their dtype. Names must be unique and non-empty.
void save_safetensors(const std::string& path, const std::vector<Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      std::optional<DType> store_dtype = std::nullopt);

// Writes `size` bytes to `path` atomically (temp file "<path>.tmp", fsync, rename, fsync of the
// directory). Used by save_safetensors and by every other writer of a file a run depends on.
void write_file_atomically(const std::string& path, const void* data, size_t size);

}  // namespace reftrain

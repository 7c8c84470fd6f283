// kernels/arena.h — one contiguous, 64-byte aligned allocation holding many named tensors.
//
// The model keeps three arenas (DESIGN.md): parameters, their gradients (a twin with the same names
// prefixed "grad:"), and activations. Use: declare every tensor with add(), call allocate() once,
// then look tensors up by name or walk them in declaration order (which is execution order for
// activations, the order diffs and the tracer report in). One block means zeroing all gradients is
// one memset and a checkpoint is one contiguous write.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/tensor.h"

namespace reftrain {

// The bookkeeping every arena shares (Arena below; DeviceArena in kernels/cuda/arena.h): tensors
// declared by name, in order, each at an aligned byte offset of one block that the arena owns.
class ArenaLayout {
public:
    bool allocated() const { return block_ != nullptr; }
    Tensor& get(const std::string& name);
    const Tensor& get(const std::string& name) const;
    bool contains(const std::string& name) const { return index_.count(name) != 0; }
    Tensor& at(size_t i) { return tensors_[i]; }
    const Tensor& at(size_t i) const { return tensors_[i]; }
    size_t size() const { return tensors_.size(); }
    const std::vector<Tensor>& tensors() const { return tensors_; }
    std::byte* data() const { return block_; }
    size_t nbytes() const { return total_bytes_; }   // from the block's start to the last tensor's end
    int64_t numel() const;                           // total elements over all tensors
    const std::string& label() const { return label_; }

protected:
    explicit ArenaLayout(std::string label) : label_(std::move(label)) {}
    // Declares a tensor at the first multiple of `alignment` bytes past the previous one; fails on a
    // duplicate name or after place(). Returns its index.
    size_t declare(const std::string& name, DType dtype, const std::vector<int64_t>& dims, size_t alignment);
    // Points every tensor at its slice of `block` (on `device`), once.
    void place(std::byte* block, Device device);

private:
    std::string label_;
    std::vector<Tensor> tensors_;
    std::vector<size_t> offsets_;
    std::unordered_map<std::string, size_t> index_;
    std::byte* block_ = nullptr;   // owned by the derived arena
    size_t total_bytes_ = 0;
};

// Host memory: every tensor 64-byte aligned (one cache line, an AVX-512 vector).
class Arena : public ArenaLayout {
public:
    explicit Arena(std::string label = "arena") : ArenaLayout(std::move(label)) {}
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    Arena(Arena&&) = default;
    Arena& operator=(Arena&&) = default;

    size_t add(const std::string& name, DType dtype, std::initializer_list<int64_t> dims);
    size_t add(const std::string& name, DType dtype, const std::vector<int64_t>& dims);
    // Allocates one zeroed block for everything declared and points each tensor at its slice.
    void allocate();
    void zero();                       // memset the whole block

private:
    struct FreeAligned { void operator()(std::byte* p) const; };
    std::unique_ptr<std::byte, FreeAligned> owned_;
};

}  // namespace reftrain

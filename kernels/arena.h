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

class Arena {
public:
    explicit Arena(std::string label = "arena") : label_(std::move(label)) {}
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    Arena(Arena&&) = default;
    Arena& operator=(Arena&&) = default;

    // Declares a tensor; fails on a duplicate name or after allocate(). Returns its index.
    size_t add(const std::string& name, DType dtype, std::initializer_list<int64_t> dims);
    size_t add(const std::string& name, DType dtype, const std::vector<int64_t>& dims);
    // Allocates one zeroed block for everything declared and points each tensor at its slice.
    void allocate();
    bool allocated() const { return block_ != nullptr; }

    Tensor& get(const std::string& name);
    const Tensor& get(const std::string& name) const;
    bool contains(const std::string& name) const { return index_.count(name) != 0; }
    Tensor& at(size_t i) { return tensors_[i]; }
    const Tensor& at(size_t i) const { return tensors_[i]; }
    size_t size() const { return tensors_.size(); }
    const std::vector<Tensor>& tensors() const { return tensors_; }

    void zero();                       // memset the whole block
    std::byte* data() { return block_.get(); }
    const std::byte* data() const { return block_.get(); }
    size_t nbytes() const { return total_bytes_; }
    int64_t numel() const;             // total elements over all tensors
    const std::string& label() const { return label_; }

private:
    struct FreeAligned { void operator()(std::byte* p) const; };
    std::string label_;
    std::vector<Tensor> tensors_;
    std::vector<size_t> offsets_;
    std::unordered_map<std::string, size_t> index_;
    std::unique_ptr<std::byte, FreeAligned> block_;
    size_t total_bytes_ = 0;
};

}  // namespace reftrain

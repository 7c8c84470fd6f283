// kernels/arena.cpp — see arena.h.
#include "kernels/arena.h"

#include <cstdlib>
#include <cstring>

namespace reftrain {

size_t ArenaLayout::declare(const std::string& name, DType dtype, const std::vector<int64_t>& dims, size_t alignment) {
    check(!allocated(), label_, ": cannot add tensor '", name, "' after allocate()");
    check(!contains(name), label_, ": tensor '", name, "' declared twice");
    Tensor t(nullptr, dtype, dims, name);
    const size_t offset = (total_bytes_ + alignment - 1) / alignment * alignment;
    offsets_.push_back(offset);
    total_bytes_ = offset + t.nbytes();
    index_[name] = tensors_.size();
    tensors_.push_back(std::move(t));
    return tensors_.size() - 1;
}

void ArenaLayout::place(std::byte* block, Device device) {
    check(!allocated(), label_, ": allocate() called twice");
    block_ = block;
    for (size_t i = 0; i < tensors_.size(); ++i) {
        tensors_[i].data = block + offsets_[i];
        tensors_[i].device = device;
    }
}

Tensor& ArenaLayout::get(const std::string& name) {
    auto it = index_.find(name);
    check(it != index_.end(), label_, ": no tensor named '", name, "'");
    return tensors_[it->second];
}

const Tensor& ArenaLayout::get(const std::string& name) const {
    auto it = index_.find(name);
    check(it != index_.end(), label_, ": no tensor named '", name, "'");
    return tensors_[it->second];
}

int64_t ArenaLayout::numel() const {
    int64_t n = 0;
    for (const Tensor& t : tensors_) n += t.numel();
    return n;
}

static constexpr size_t kAlignment = 64;

void Arena::FreeAligned::operator()(std::byte* p) const { std::free(p); }

size_t Arena::add(const std::string& name, DType dtype, std::initializer_list<int64_t> dims) {
    return add(name, dtype, std::vector<int64_t>(dims));
}

size_t Arena::add(const std::string& name, DType dtype, const std::vector<int64_t>& dims) {
    return declare(name, dtype, dims, kAlignment);
}

void Arena::allocate() {
    check(!allocated(), label(), ": allocate() called twice");
    size_t bytes = (nbytes() + kAlignment - 1) / kAlignment * kAlignment;
    if (bytes == 0) bytes = kAlignment;
    auto* p = static_cast<std::byte*>(std::aligned_alloc(kAlignment, bytes));
    check(p != nullptr, label(), ": could not allocate ", bytes, " bytes");
    std::memset(p, 0, bytes);
    owned_.reset(p);
    place(p, Device::CPU);
}

void Arena::zero() {
    if (allocated()) std::memset(data(), 0, nbytes());
}

}  // namespace reftrain

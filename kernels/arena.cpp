// kernels/arena.cpp — see arena.h.
#include "kernels/arena.h"

#include <omp.h>

#include <algorithm>

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace reftrain {

size_t ArenaLayout::declare(const std::string& name, DType dtype, const std::vector<int64_t>& dims, size_t alignment) {
    check(!allocated(), label_, ": cannot add tensor '", name, "' after allocate()");
    check(!contains(name), label_, ": tensor '", name, "' declared twice");
    // Sizes come from files (a config's vocab_size): every product and sum is checked, so that no value
    // can wrap into a small allocation that the code then writes past.
    std::string shape;
    for (int64_t d : dims) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    size_t elements = 1;
    for (int64_t d : dims) {
        check(d >= 0, label_, ": tensor '", name, "' has a negative dimension in [", shape, "]");
        check(!__builtin_mul_overflow(elements, static_cast<size_t>(d), &elements), label_, ": tensor '", name,
              "' of shape [", shape, "] has more elements than a 64-bit size can count");
    }
    size_t bytes = 0, offset = 0, end = 0;
    check(!__builtin_mul_overflow(elements, dtype_size(dtype), &bytes) &&
              !__builtin_add_overflow(total_bytes_, alignment - 1, &offset) &&
              !__builtin_add_overflow(offset / alignment * alignment, bytes, &end),
          label_, ": tensor '", name, "' of ", elements, " elements does not fit a 64-bit byte count");
    Tensor t(nullptr, dtype, dims, name);
    offset = offset / alignment * alignment;
    offsets_.push_back(offset);
    total_bytes_ = end;
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
    // The budget: never ask for more than the machine's memory (a wrong size in a file would otherwise
    // allocate for seconds, then fail in std::bad_alloc or be killed). The figure goes in the message.
    const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page_size > 0) {
        const double gib = 1024.0 * 1024.0 * 1024.0;
        const size_t memory = static_cast<size_t>(pages) * static_cast<size_t>(page_size);
        check(bytes <= memory, label(), ": needs ", static_cast<double>(bytes) / gib, " GiB (", tensors().size(),
              " tensors), more than this machine's ", static_cast<double>(memory) / gib, " GiB of memory");
    }
    auto* p = static_cast<std::byte*>(std::aligned_alloc(kAlignment, bytes));
    check(p != nullptr, label(), ": could not allocate ", bytes, " bytes");
    std::memset(p, 0, bytes);
    owned_.reset(p);
    place(p, Device::CPU);
}

void Arena::zero() {
    if (!allocated()) return;
    // One contiguous part per OpenMP thread: the activation gradients of a training step are tens of
    // MB, cleared every backward, and one thread's memset leaves the other cores idle. The parts stay
    // large so that memset keeps its streaming stores (small pieces went through the cache, 2x slower).
    const size_t n = nbytes();
    auto* bytes = static_cast<std::byte*>(data());
    if (n < (size_t{4} << 20)) {
        std::memset(bytes, 0, n);
        return;
    }
#pragma omp parallel
    {
        const size_t parts = static_cast<size_t>(omp_get_num_threads()), k = static_cast<size_t>(omp_get_thread_num());
        const size_t begin = n / parts * k, end = k + 1 == parts ? n : n / parts * (k + 1);
        std::memset(bytes + begin, 0, end - begin);
    }
}

}  // namespace reftrain

// kernels/tensor.h — the non-owning Tensor view that every op takes.
//
// A Tensor is a pointer plus dtype, device, shape and a stable dotted name. It never owns memory:
// storage lives in an Arena (kernels/arena.h) or, in tests, in a std::vector. Tensors are always
// contiguous and row-major; a shape is at most kMaxDims long. Names are the join key for the
// tracer, dumps and diffs (DESIGN.md): "model.layers.3.self_attn.q_proj.weight", "grad:...".
//
// Ops check the shapes and dtypes of their arguments with expect_shape/expect_dtype, so a wrong
// call fails with a message naming the op, the argument and both shapes instead of reading garbage.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/error.h"

namespace reftrain {

enum class Device : uint8_t { CPU, CUDA };

inline constexpr int kMaxDims = 5;

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<uint16_t>() { return DType::BF16; }  // raw bits; see dtype.h
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }

struct Tensor {
    void* data = nullptr;
    DType dtype = DType::F32;
    Device device = Device::CPU;
    int ndim = 0;
    std::array<int64_t, kMaxDims> shape{};
    std::string name;

    Tensor() = default;
    Tensor(void* data, DType dtype, std::initializer_list<int64_t> dims, std::string name = "");
    Tensor(void* data, DType dtype, const std::vector<int64_t>& dims, std::string name = "");

    int64_t numel() const;
    size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
    // dim(-1) is the last dimension.
    int64_t dim(int axis) const;
    std::string shape_str() const;  // "(16, 128, 512)"

    // Typed pointer; fails if the dtype does not match T (bf16 and f16 both read as uint16_t).
    template <class T>
    T* ptr() const {
        bool ok = dtype == dtype_of<T>() || (std::is_same_v<T, uint16_t> && dtype == DType::F16);
        check(ok, "tensor '", name, "': read as ", dtype_name(dtype_of<T>()), " but its dtype is ",
              dtype_name(dtype));
        return static_cast<T*>(data);
    }

    // The same memory under another shape with the same number of elements.
    Tensor reshaped(std::initializer_list<int64_t> dims) const;
};

// Fails unless t has exactly the given shape; -1 in `dims` matches any size.
// `op` and `arg` name the call site in the message: "rmsnorm_forward: argument 'weight' ...".
void expect_shape(const Tensor& t, std::initializer_list<int64_t> dims, const char* op, const char* arg);
void expect_dtype(const Tensor& t, DType dtype, const char* op, const char* arg);
void expect_same_dtype(const Tensor& a, const Tensor& b, const char* op);

// Runs fn(T{}) with T = float or double according to `dtype`; every op's CPU reference is a template
// over these two so that gradient checks run the very same code in fp64.
template <class Fn>
void dispatch_float(DType dtype, const char* op, Fn&& fn) {
    switch (dtype) {
        case DType::F32: fn(float{}); return;
        case DType::F64: fn(double{}); return;
        default: fail(op, ": dtype ", dtype_name(dtype), " is not supported on the CPU (F32 or F64)");
    }
}

// A copy of an F32 or F64 tensor's values as doubles (checks that read weights or gradients of either).
std::vector<double> values_as_f64(const Tensor& t);

}  // namespace reftrain

// kernels/tensor.cpp — shape bookkeeping and argument checks for Tensor views.
#include "kernels/tensor.h"

namespace reftrain {

Tensor::Tensor(void* data_, DType dtype_, std::initializer_list<int64_t> dims, std::string name_)
    : Tensor(data_, dtype_, std::vector<int64_t>(dims), std::move(name_)) {}

Tensor::Tensor(void* data_, DType dtype_, const std::vector<int64_t>& dims, std::string name_)
    : data(data_), dtype(dtype_), name(std::move(name_)) {
    check(dims.size() <= static_cast<size_t>(kMaxDims), "tensor '", name, "': ", dims.size(),
          " dimensions, at most ", kMaxDims, " supported");
    for (int64_t d : dims) {
        check(d >= 0, "tensor '", name, "': negative dimension ", d);
        shape[ndim++] = d;
    }
}

int64_t Tensor::numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
}

int64_t Tensor::dim(int axis) const {
    int a = axis < 0 ? axis + ndim : axis;
    check(a >= 0 && a < ndim, "tensor '", name, "': axis ", axis, " out of range for shape ", shape_str());
    return shape[a];
}

std::string Tensor::shape_str() const {
    std::string s = "(";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + ")";
}

Tensor Tensor::reshaped(std::initializer_list<int64_t> dims) const {
    Tensor out(data, dtype, dims, name);
    out.device = device;
    check(out.numel() == numel(), "tensor '", name, "': cannot view shape ", shape_str(), " as ",
          out.shape_str());
    return out;
}

void expect_shape(const Tensor& t, std::initializer_list<int64_t> dims, const char* op, const char* arg) {
    bool ok = t.ndim == static_cast<int>(dims.size());
    int i = 0;
    for (int64_t d : dims) {
        if (ok && d != -1 && t.shape[i] != d) ok = false;
        ++i;
    }
    if (ok) return;
    std::string want = "(";
    i = 0;
    for (int64_t d : dims) want += (i++ ? ", " : "") + (d == -1 ? std::string("*") : std::to_string(d));
    fail(op, ": argument '", arg, "' (tensor '", t.name, "') has shape ", t.shape_str(), ", expected ",
         want, ")");
}

void expect_dtype(const Tensor& t, DType dtype, const char* op, const char* arg) {
    check(t.dtype == dtype, op, ": argument '", arg, "' (tensor '", t.name, "') has dtype ",
          dtype_name(t.dtype), ", expected ", dtype_name(dtype));
}

void expect_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
    check(a.dtype == b.dtype, op, ": tensors '", a.name, "' (", dtype_name(a.dtype), ") and '", b.name,
          "' (", dtype_name(b.dtype), ") must have the same dtype");
}

std::vector<double> values_as_f64(const Tensor& t) {
    std::vector<double> out(static_cast<size_t>(t.numel()));
    dispatch_float(t.dtype, "values_as_f64", [&](auto tag) {
        const auto* p = t.ptr<decltype(tag)>();
        for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(p[i]);
    });
    return out;
}

}  // namespace reftrain

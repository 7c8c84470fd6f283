// kernels/cuda/elementwise.cu — the element-wise ops: residual add, SwiGLU, RoPE (forward and backward).
//
// One thread per output element (per rotated pair for RoPE), grid-stride loops, fp32 arithmetic on
// F32 or BF16 storage. Each kernel names the CPU function it must match (kernels/cpu/*.cpp); the
// formulas are written in the same order as there.
#include "kernels/cuda/common.cuh"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace reftrain::cuda {

namespace {

constexpr int kBlock = 256;

#define REFTRAIN_GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// Matches cpu::residual_forward (residual.cpp): out = a + b.
template <class T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, int64_t n) {
    REFTRAIN_GRID_STRIDE(i, n) store(out, i, load(a, i) + load(b, i));
}

// Matches cpu::residual_backward (residual.cpp): d += dout, for da and db alike.
template <class T>
__global__ void accumulate_kernel(T* d, const T* dout, int64_t n) {
    REFTRAIN_GRID_STRIDE(i, n) store(d, i, load(d, i) + load(dout, i));
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Matches cpu::swiglu_forward (swiglu.cpp): out = g * sigmoid(g) * u.
template <class T>
__global__ void swiglu_forward_kernel(T* out, const T* gate, const T* up, int64_t n) {
    REFTRAIN_GRID_STRIDE(i, n) {
        const float g = load(gate, i);
        store(out, i, g * sigmoid(g) * load(up, i));
    }
}

// Matches cpu::swiglu_backward (swiglu.cpp): with s = sigmoid(g),
//   dgate += dout * up * s * (1 + g (1 - s));  dup += dout * g * s
template <class T>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
    REFTRAIN_GRID_STRIDE(i, n) {
        const float g = load(gate, i), dy = load(dout, i);
        const float s = sigmoid(g);
        if (dgate) store(dgate, i, load(dgate, i) + dy * load(up, i) * s * (1.0f + g * (1.0f - s)));
        if (dup) store(dup, i, load(dup, i) + dy * g * s);
    }
}

// Matches cpu::rope_forward (sign = +1, overwrite) and cpu::rope_backward (sign = -1, accumulate),
// rope.cpp's rotate_impl. One thread per pair (i, i + D/2) of one (b, t, head) row:
//   lo = x[i] c[i] - sign x[i+h] s[i];  hi = x[i+h] c[i+h] + sign x[i] s[i+h]
template <class T>
__global__ void rope_kernel(T* out, const T* x, const T* cos, const T* sin, int64_t rows, int64_t T_len, int64_t H,
                            int64_t D, float sign, bool accumulate) {
    const int64_t h = D / 2;
    REFTRAIN_GRID_STRIDE(k, rows * h) {
        const int64_t row = k / h, i = k % h;
        const int64_t t = (row / H) % T_len;
        const int64_t base = row * D;
        const float x_lo = load(x, base + i), x_hi = load(x, base + i + h);
        const float lo = x_lo * load(cos, t * D + i) - sign * x_hi * load(sin, t * D + i);
        const float hi = x_hi * load(cos, t * D + i + h) + sign * x_lo * load(sin, t * D + i + h);
        if (accumulate) {
            store(out, base + i, load(out, base + i) + lo);
            store(out, base + i + h, load(out, base + i + h) + hi);
        } else {
            store(out, base + i, lo);
            store(out, base + i + h, hi);
        }
    }
}

void check_same_size(const Tensor& a, const Tensor& b, const char* op) {
    check(a.numel() == b.numel(), op, ": '", a.name, "' ", a.shape_str(), " and '", b.name, "' ", b.shape_str(),
          ": sizes differ");
}

void check_rope_args(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, const char* op) {
    cpu::check_rope_args(out, x, cos, sin, op);  // shapes, even D, table length, dtypes: as on the CPU
    expect_on_device(out, op, "out");
    expect_on_device(x, op, "x");
    expect_on_device(cos, op, "cos");
    expect_on_device(sin, op, "sin");
}

}  // namespace

void residual_forward(const Tensor& out, const Tensor& a, const Tensor& b, cudaStream_t stream) {
    const char* op = "cuda::residual_forward";
    check_same_size(a, out, op);
    check_same_size(b, out, op);
    expect_same_dtype(a, b, op);
    expect_same_dtype(a, out, op);
    expect_on_device(out, op, "out");
    expect_on_device(a, op, "a");
    expect_on_device(b, op, "b");
    const int64_t n = out.numel();
    if (n == 0) return;
    dispatch_storage(out.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        residual_forward_kernel<T><<<grid_for(n, kBlock), kBlock, 0, stream>>>(device_ptr<T>(out), device_ptr<T>(a),
                                                                              device_ptr<T>(b), n);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    });
}

void residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout, cudaStream_t stream) {
    const char* op = "cuda::residual_backward";
    const std::pair<const Tensor*, const char*> grads[] = {{&da, "da"}, {&db, "db"}};
    for (const auto& [d, arg] : grads) {
        if (!d->data) continue;
        check_same_size(*d, dout, op);
        expect_same_dtype(*d, dout, op);
        expect_on_device(*d, op, arg);
    }
    expect_on_device(dout, op, "dout");
    const int64_t n = dout.numel();
    if (n == 0) return;
    dispatch_storage(dout.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        for (const auto& [d, arg] : grads) {
            if (!d->data) continue;
            accumulate_kernel<T><<<grid_for(n, kBlock), kBlock, 0, stream>>>(device_ptr<T>(*d), device_ptr<T>(dout), n);
            REFTRAIN_CUDA_CHECK_LAUNCH();
        }
    });
}

void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up, cudaStream_t stream) {
    const char* op = "cuda::swiglu_forward";
    const int64_t N = gate.dim(0), F = gate.dim(1);
    expect_shape(gate, {N, F}, op, "gate");
    expect_shape(up, {N, F}, op, "up");
    expect_shape(out, {N, F}, op, "out");
    expect_same_dtype(gate, up, op);
    expect_same_dtype(gate, out, op);
    expect_on_device(out, op, "out");
    expect_on_device(gate, op, "gate");
    expect_on_device(up, op, "up");
    const int64_t n = N * F;
    if (n == 0) return;
    dispatch_storage(gate.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        swiglu_forward_kernel<T><<<grid_for(n, kBlock), kBlock, 0, stream>>>(device_ptr<T>(out), device_ptr<T>(gate),
                                                                            device_ptr<T>(up), n);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    });
}

void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                     cudaStream_t stream) {
    const char* op = "cuda::swiglu_backward";
    const int64_t N = gate.dim(0), F = gate.dim(1);
    expect_shape(gate, {N, F}, op, "gate");
    expect_shape(dout, {N, F}, op, "dout");
    expect_shape(up, {N, F}, op, "up");
    expect_same_dtype(gate, up, op);
    expect_same_dtype(gate, dout, op);
    expect_on_device(dout, op, "dout");
    expect_on_device(gate, op, "gate");
    expect_on_device(up, op, "up");
    if (dgate.data) {
        expect_shape(dgate, {N, F}, op, "dgate");
        expect_same_dtype(gate, dgate, op);
        expect_on_device(dgate, op, "dgate");
    }
    if (dup.data) {
        expect_shape(dup, {N, F}, op, "dup");
        expect_same_dtype(gate, dup, op);
        expect_on_device(dup, op, "dup");
    }
    const int64_t n = N * F;
    if (n == 0 || (!dgate.data && !dup.data)) return;
    dispatch_storage(gate.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        swiglu_backward_kernel<T><<<grid_for(n, kBlock), kBlock, 0, stream>>>(
            device_ptr<T>(dgate), device_ptr<T>(dup), device_ptr<T>(dout), device_ptr<T>(gate), device_ptr<T>(up), n);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    });
}

void rope_forward(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, cudaStream_t stream) {
    const char* op = "cuda::rope_forward";
    check_rope_args(out, x, cos, sin, op);
    const int64_t rows = x.dim(0) * x.dim(1) * x.dim(2), D = x.dim(3);
    if (rows * D == 0) return;
    dispatch_storage(x.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        rope_kernel<T><<<grid_for(rows * D / 2, kBlock), kBlock, 0, stream>>>(
            device_ptr<T>(out), device_ptr<T>(x), device_ptr<T>(cos), device_ptr<T>(sin), rows, x.dim(1), x.dim(2), D,
            1.0f, false);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    });
}

void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin, cudaStream_t stream) {
    if (!dx.data) return;
    const char* op = "cuda::rope_backward";
    check_rope_args(dx, dout, cos, sin, op);
    const int64_t rows = dout.dim(0) * dout.dim(1) * dout.dim(2), D = dout.dim(3);
    if (rows * D == 0) return;
    dispatch_storage(dout.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        rope_kernel<T><<<grid_for(rows * D / 2, kBlock), kBlock, 0, stream>>>(
            device_ptr<T>(dx), device_ptr<T>(dout), device_ptr<T>(cos), device_ptr<T>(sin), rows, dout.dim(1),
            dout.dim(2), D, -1.0f, true);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    });
}

}  // namespace reftrain::cuda

// tests/cuda/test_cuda_matmul.cpp — cuda::linear_forward/backward (cuBLASLt, kernels/cuda/matmul.cpp)
// against cpu::linear_forward/backward, and the mixed-precision gradients of RMSNorm and the embedding
// (BF16 activations, F32 parameter gradient) against their CPU twins.
//
// Three dtype cases for the linear layer: F32 (everything fp32), BF16 (everything bf16) and BF16 with an
// F32 dweight (the weight gradient of a bf16 model kept in fp32). Every output starts as NaN bytes and
// every gradient at a random non-zero value, so a skipped element or an overwrite instead of += fails.
// Comparisons use expect_close with a floor of 1% of the tensor's scale (as tests/cuda/test_cuda_ops.cpp).
// Two kinds of inputs, two kinds of bounds:
//   Exact inputs (dyadic: multiples of 1/8 up to 2, gradients multiples of 1/64 up to 2). Every product
//   and every partial sum is a multiple of 2^-6 below 2^14 (two backward calls of K <= 1536 products of
//   at most 4), representable in fp32 whatever the summation order (tensor cores included: the products
//   are exact and every sum fits in 20 bits), so GPU and CPU compute the same exact fp32 numbers, and a
//   BF16 output is that number rounded to nearest even on both sides. Bound 0: bitwise equal, for every
//   dtype case and every product. This is the test that catches a wrong layout, transpose, leading
//   dimension or a dropped term.
//   Random inputs (uniform in [-2, 2], |v| >= 0.01), which exercise real rounding:
//     F32 output, and the F32 dweight of the mixed case: bound 1e-5 * sqrt(K) relative, K the length
//       of the dot products (IC for out, OC for dx, N for dweight). GPU and CPU both accumulate in fp32
//       but in different orders, which alone differs by O(2^-24 sqrt(K)) relative at the floor: on these
//       shapes a CPU simulation of three orders (sequential FMA, OpenBLAS, 16-wide chunks summed exactly
//       then added, like a tensor-core MMA) differed by at most 1.1e-5 (K = 70), 4.5e-5 (K = 576),
//       5.1e-5 (K = 1536), so the bound leaves >= 5x. A flat 1e-5 would fail on ordering noise alone;
//       the exact tests above are where this file is tight. TF32 (10-bit inputs) would miss the bound
//       by ~100x. The mixed dweight gets the F32 bound, not BF16's: the CPU runs on the same
//       bf16-rounded inputs in fp32 and the GPU stores fp32, so only the summation order differs.
//     BF16 output: 1e-2 (the GPU's final rounding to bf16, <= 2^-9, plus at most one more ulp where the
//       CPU's value, rounded to bf16 for the comparison, falls on the other side of a rounding boundary).
//   A BF16 gradient's += may round once or twice (judge_accumulation below): each call is judged against
//   the nearer of the two, starting from what the GPU holds.
// Shapes: (N, IC, OC) = (37, 70, 50), no dimension a multiple of 8 or 16 (leading dimensions that are
// not 16-byte multiples for BF16), and (256, 576, 1536), an MLP projection of the 135M model at 256 tokens.
// Without a CUDA device every GPU test is SKIPPED; CudaMatmulArguments runs anywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

using cuda_testing::DeviceBuffer;

constexpr double kFloorFraction = 1e-2;
constexpr double kBoundBF16 = 1e-2;

double bound_f32_dot(int64_t K) { return 1e-5 * std::sqrt(static_cast<double>(K)); }

double compare(const std::vector<float>& got, const std::vector<float>& want, double bound, const std::string& what) {
    return cuda_testing::expect_close(got, want, bound, what, kFloorFraction);
}

using cuda_testing::download_as;
using cuda_testing::host;
using cuda_testing::poisoned_as;
using cuda_testing::representable;
using cuda_testing::upload_as;

// Non-zero multiples of 1 / denominator in [-limit, limit]: exactly representable in fp32 and bf16
// (limit * denominator <= 256 keeps them within bf16's 8 significant bits).
std::vector<float> dyadic_floats(size_t count, uint64_t seed, int denominator, int limit) {
    std::mt19937_64 engine(seed);
    const int steps = limit * denominator;
    std::uniform_int_distribution<int> uniform(-steps, steps - 1);
    std::vector<float> values(count);
    for (float& v : values) {
        const int k = uniform(engine);
        v = static_cast<float>(k >= 0 ? k + 1 : k) / static_cast<float>(denominator);  // skips 0
    }
    return values;
}

// One backward call's ADD into a gradient, `before` -> `got` on the GPU, `sum` = before + product in fp32
// on the CPU. F32: compare with the bound. BF16: a correct kernel may round once, bf16(before +
// product), or twice, bf16(before + bf16(product)), as a GEMM that writes its product and a separate
// add would (PyTorch's autograd accumulates that way). The first H200 run saw cuBLASLt do both: its
// kernel for (256, 576, 1536) rounded twice (2 bf16 ulps of the product off the once-rounded sum on
// exact inputs), the one for (37, 70, 50) once. So each element must equal one of the two on exact
// inputs (still bitwise: a wrong layout or a dropped term matches neither) and be within the bound of
// the nearer one on random inputs. Prints how many elements were rounded twice.
void judge_accumulation(const std::vector<float>& got, const std::vector<float>& before, const std::vector<float>& sum,
                        DType dtype, bool exact, double bound, const std::string& what) {
    const std::vector<float> once = representable(sum, dtype);
    if (dtype != DType::BF16) {
        compare(got, once, bound, what);
        return;
    }
    std::vector<float> twice(sum.size()), nearer(sum.size());
    int64_t rounded_twice = 0;
    for (size_t i = 0; i < sum.size(); ++i) {
        const float product = bf16_to_float(float_to_bf16(sum[i] - before[i]));
        twice[i] = bf16_to_float(float_to_bf16(before[i] + product));
        const bool is_twice = got[i] == twice[i] && got[i] != once[i];
        rounded_twice += is_twice;
        nearer[i] = std::fabs(got[i] - twice[i]) < std::fabs(got[i] - once[i]) ? twice[i] : once[i];
    }
    std::printf("[measured] %s: %lld of %zu elements rounded twice\n", what.c_str(), static_cast<long long>(rounded_twice),
                sum.size());
    compare(got, nearer, bound, what);
}

// The dtypes of one linear-layer case: x, weight, out, dout, dx share `data`; dweight is `grad`.
struct LinearDtypes {
    DType data;
    DType grad;
    const char* name;
};
void PrintTo(const LinearDtypes& dtypes, std::ostream* out) { *out << dtypes.name; }

enum class Inputs { exact, random };

std::string label(const LinearDtypes& dtypes, Inputs inputs, int64_t N, int64_t IC, int64_t OC, const char* what) {
    return concat(what, " (", dtypes.name, ", ", inputs == Inputs::exact ? "exact" : "random", " inputs, N=", N,
                  " IC=", IC, " OC=", OC, ")");
}

class CudaMatmul : public ::testing::TestWithParam<LinearDtypes> {};

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaMatmul,
                         ::testing::Values(LinearDtypes{DType::F32, DType::F32, "F32"},
                                           LinearDtypes{DType::BF16, DType::BF16, "BF16"},
                                           LinearDtypes{DType::BF16, DType::F32, "BF16_F32dweight"}),
                         [](const ::testing::TestParamInfo<LinearDtypes>& info) { return std::string(info.param.name); });

// Forward, then backward twice (the second call checks that a gradient that already holds a sum keeps
// accumulating), GPU against CPU.
void check_linear(const LinearDtypes& dt, Inputs inputs, int64_t N, int64_t IC, int64_t OC) {
    const bool exact = inputs == Inputs::exact;
    auto draw = [&](size_t count, uint64_t seed, DType dtype, bool gradient) {
        if (exact) return dyadic_floats(count, seed, gradient ? 64 : 8, 2);
        return representable(cuda_testing::random_floats(count, seed), dtype);
    };
    std::vector<float> x = draw(N * IC, 101, dt.data, false), w = draw(OC * IC, 102, dt.data, false);
    std::vector<float> dout = draw(N * OC, 103, dt.data, false);
    std::vector<float> dx = draw(N * IC, 104, dt.data, true), dw = draw(OC * IC, 105, dt.grad, true);
    DeviceBuffer x_dev = upload_as(x, dt.data), w_dev = upload_as(w, dt.data), dout_dev = upload_as(dout, dt.data);
    DeviceBuffer out_dev = poisoned_as(N * OC, dt.data), dx_dev = upload_as(dx, dt.data), dw_dev = upload_as(dw, dt.grad);
    const Tensor x_t = x_dev.tensor(dt.data, {N, IC}, "x"), w_t = w_dev.tensor(dt.data, {OC, IC}, "weight");
    const Tensor dout_t = dout_dev.tensor(dt.data, {N, OC}, "dout");
    const Tensor dx_t = dx_dev.tensor(dt.data, {N, IC}, "dx"), dw_t = dw_dev.tensor(dt.grad, {OC, IC}, "dweight");

    std::vector<float> out(N * OC);
    cpu::linear_forward(host(out, {N, OC}, "out"), host(x, {N, IC}, "x"), host(w, {OC, IC}, "weight"));
    cuda::linear_forward(out_dev.tensor(dt.data, {N, OC}, "out"), x_t, w_t);
    auto bound = [&](DType dtype, int64_t K) {
        return exact ? 0.0 : (dtype == DType::F32 ? bound_f32_dot(K) : kBoundBF16);
    };
    compare(download_as(out_dev, dt.data), representable(out, dt.data), bound(dt.data, IC),
            label(dt, inputs, N, IC, OC, "out = x @ weight^T"));

    for (int call = 1; call <= 2; ++call) {
        const std::vector<float> dx_before = dx, dw_before = dw;
        cpu::linear_backward(host(dx, {N, IC}, "dx"), host(dw, {OC, IC}, "dweight"), host(dout, {N, OC}, "dout"),
                             host(x, {N, IC}, "x"), host(w, {OC, IC}, "weight"));
        cuda::linear_backward(dx_t, dw_t, dout_t, x_t, w_t);
        const std::string suffix = call == 1 ? " (first call)" : " (second call: still +=)";
        const std::vector<float> dx_gpu = download_as(dx_dev, dt.data), dw_gpu = download_as(dw_dev, dt.grad);
        judge_accumulation(dx_gpu, dx_before, dx, dt.data, exact, bound(dt.data, OC),
                           label(dt, inputs, N, IC, OC, "dx += dout @ weight") + suffix);
        judge_accumulation(dw_gpu, dw_before, dw, dt.grad, exact, bound(dt.grad, N),
                           label(dt, inputs, N, IC, OC, "dweight += dout^T @ x") + suffix);
        // The next call adds to what this one left: a BF16 gradient goes on from the GPU's own value
        // (either rounding below is correct), an F32 one from the CPU's.
        if (dt.data == DType::BF16) dx = dx_gpu;
        if (dt.grad == DType::BF16) dw = dw_gpu;
    }
}

TEST_P(CudaMatmul, ExactInputsGiveTheCpuResultBitForBit) {
    REFTRAIN_REQUIRE_GPU();
    check_linear(GetParam(), Inputs::exact, 37, 70, 50);
    check_linear(GetParam(), Inputs::exact, 256, 576, 1536);
}

TEST_P(CudaMatmul, RandomInputsAgreeWithTheCpuWithinTheStatedBounds) {
    REFTRAIN_REQUIRE_GPU();
    check_linear(GetParam(), Inputs::random, 37, 70, 50);
    check_linear(GetParam(), Inputs::random, 256, 576, 1536);
    check_linear(GetParam(), Inputs::random, 1, 16, 8);  // one row: a GEMV
}

TEST_P(CudaMatmul, NullGradientsAreSkipped) {
    REFTRAIN_REQUIRE_GPU();
    const LinearDtypes dt = GetParam();
    const int64_t N = 37, IC = 70, OC = 50;
    std::vector<float> x = representable(cuda_testing::random_floats(N * IC, 201), dt.data);
    std::vector<float> w = representable(cuda_testing::random_floats(OC * IC, 202), dt.data);
    std::vector<float> dout = representable(cuda_testing::random_floats(N * OC, 203), dt.data);
    std::vector<float> dx = representable(cuda_testing::random_floats(N * IC, 204), dt.data);
    std::vector<float> dw = representable(cuda_testing::random_floats(OC * IC, 205), dt.grad);
    DeviceBuffer x_dev = upload_as(x, dt.data), w_dev = upload_as(w, dt.data), dout_dev = upload_as(dout, dt.data);
    DeviceBuffer dx_dev = upload_as(dx, dt.data), dw_dev = upload_as(dw, dt.grad);
    const Tensor x_t = x_dev.tensor(dt.data, {N, IC}, "x"), w_t = w_dev.tensor(dt.data, {OC, IC}, "weight");
    const Tensor dout_t = dout_dev.tensor(dt.data, {N, OC}, "dout");

    cuda::linear_backward(Tensor(), Tensor(), dout_t, x_t, w_t);  // nothing to do, no error
    cuda::linear_backward(Tensor(), dw_dev.tensor(dt.grad, {OC, IC}, "dweight"), dout_t, x_t, w_t);
    cuda::linear_backward(dx_dev.tensor(dt.data, {N, IC}, "dx"), Tensor(), dout_t, x_t, w_t);
    cpu::linear_backward(Tensor(), host(dw, {OC, IC}, "dweight"), host(dout, {N, OC}, "dout"), host(x, {N, IC}, "x"),
                         host(w, {OC, IC}, "weight"));
    cpu::linear_backward(host(dx, {N, IC}, "dx"), Tensor(), host(dout, {N, OC}, "dout"), host(x, {N, IC}, "x"),
                         host(w, {OC, IC}, "weight"));
    // Each gradient was added to exactly once.
    compare(download_as(dx_dev, dt.data), representable(dx, dt.data),
            dt.data == DType::F32 ? bound_f32_dot(OC) : kBoundBF16, std::string("dx alone (") + dt.name + ")");
    compare(download_as(dw_dev, dt.grad), representable(dw, dt.grad),
            dt.grad == DType::F32 ? bound_f32_dot(N) : kBoundBF16, std::string("dweight alone (") + dt.name + ")");
}

// Deterministic mode (the default) excludes split-K, and the algorithm is cached per shape, so two
// identical calls give the same bits. A tall-skinny dweight (k = N = 8192 rows into a 96 x 64 output)
// is the shape where a split-K algorithm would be the heuristic's natural choice. Random inputs: exact
// ones would make every summation order agree and prove nothing.
TEST_P(CudaMatmul, DeterministicModeRepeatsBitForBit) {
    REFTRAIN_REQUIRE_GPU();
    const LinearDtypes dt = GetParam();
    const bool was_deterministic = cuda::deterministic();
    cuda::set_deterministic(true);
    const int64_t N = 8192, IC = 64, OC = 96;
    std::vector<float> x = cuda_testing::random_floats(N * IC, 301), w = cuda_testing::random_floats(OC * IC, 302);
    std::vector<float> dout = cuda_testing::random_floats(N * OC, 303);
    DeviceBuffer x_dev = upload_as(x, dt.data), w_dev = upload_as(w, dt.data), dout_dev = upload_as(dout, dt.data);
    const Tensor x_t = x_dev.tensor(dt.data, {N, IC}, "x"), w_t = w_dev.tensor(dt.data, {OC, IC}, "weight");
    const Tensor dout_t = dout_dev.tensor(dt.data, {N, OC}, "dout");
    std::vector<std::vector<float>> outs, dxs, dws;
    for (int run = 0; run < 2; ++run) {
        DeviceBuffer out_dev = poisoned_as(N * OC, dt.data);
        DeviceBuffer dx_dev = upload_as(std::vector<float>(N * IC, 0.5f), dt.data);
        DeviceBuffer dw_dev = upload_as(std::vector<float>(OC * IC, 0.5f), dt.grad);
        cuda::linear_forward(out_dev.tensor(dt.data, {N, OC}, "out"), x_t, w_t);
        cuda::linear_backward(dx_dev.tensor(dt.data, {N, IC}, "dx"), dw_dev.tensor(dt.grad, {OC, IC}, "dweight"), dout_t,
                              x_t, w_t);
        outs.push_back(download_as(out_dev, dt.data));
        dxs.push_back(download_as(dx_dev, dt.data));
        dws.push_back(download_as(dw_dev, dt.grad));
    }
    cuda::set_deterministic(was_deterministic);
    EXPECT_EQ(outs[0], outs[1]) << "linear_forward out differs between two identical runs (" << dt.name << ")";
    EXPECT_EQ(dxs[0], dxs[1]) << "linear_backward dx differs between two identical runs (" << dt.name << ")";
    EXPECT_EQ(dws[0], dws[1]) << "linear_backward dweight differs between two identical runs (" << dt.name << ")";
}

// Empty dimensions: N = 0 does nothing; IC = 0 makes out an empty sum (zeros); OC = 0 adds nothing to dx.
// (The CPU twin is not used here: OpenBLAS rejects a leading dimension of 0.)
TEST_P(CudaMatmul, EmptyDimensions) {
    REFTRAIN_REQUIRE_GPU();
    const LinearDtypes dt = GetParam();
    const int64_t N = 5, IC = 7, OC = 3;
    DeviceBuffer none;  // zero bytes, null pointer: the storage of every empty tensor below
    DeviceBuffer w_dev = upload_as(cuda_testing::random_floats(OC * IC, 401), dt.data);
    DeviceBuffer dw_dev = upload_as(std::vector<float>(OC * IC, 1.0f), dt.grad);
    cuda::linear_forward(none.tensor(dt.data, {0, OC}, "out"), none.tensor(dt.data, {0, IC}, "x"),
                         w_dev.tensor(dt.data, {OC, IC}, "weight"));
    cuda::linear_backward(none.tensor(dt.data, {0, IC}, "dx"), dw_dev.tensor(dt.grad, {OC, IC}, "dweight"),
                          none.tensor(dt.data, {0, OC}, "dout"), none.tensor(dt.data, {0, IC}, "x"),
                          w_dev.tensor(dt.data, {OC, IC}, "weight"));
    EXPECT_EQ(download_as(dw_dev, dt.grad), std::vector<float>(OC * IC, 1.0f)) << "N = 0 changed dweight";

    DeviceBuffer out_dev = poisoned_as(N * OC, dt.data);
    cuda::linear_forward(out_dev.tensor(dt.data, {N, OC}, "out"), none.tensor(dt.data, {N, 0}, "x"),
                         none.tensor(dt.data, {OC, 0}, "weight"));
    EXPECT_EQ(download_as(out_dev, dt.data), std::vector<float>(N * OC, 0.0f)) << "IC = 0: out must be zeros";

    DeviceBuffer x_dev = upload_as(cuda_testing::random_floats(N * IC, 402), dt.data);
    DeviceBuffer dx_dev = upload_as(std::vector<float>(N * IC, 1.0f), dt.data);
    cuda::linear_backward(dx_dev.tensor(dt.data, {N, IC}, "dx"), none.tensor(dt.grad, {0, IC}, "dweight"),
                          none.tensor(dt.data, {N, 0}, "dout"), x_dev.tensor(dt.data, {N, IC}, "x"),
                          none.tensor(dt.data, {0, IC}, "weight"));
    EXPECT_EQ(download_as(dx_dev, dt.data), std::vector<float>(N * IC, 1.0f)) << "OC = 0 changed dx";
}

// ---- mixed-precision parameter gradients of RMSNorm and the embedding -------------------------------------

// BF16 x, dout, weight, dx; F32 dweight. dx: 1e-2 (bf16). dweight: the F32 bound of test_cuda_ops.cpp
// (1e-4) plus N * 2^-24 for summing N products in fp32 where the CPU sums in fp64; the inputs are the
// same bf16-rounded numbers on both sides, so nothing of bf16's precision enters.
TEST(CudaMixedGradients, RmsnormBackwardIntoAnF32Dweight) {
    REFTRAIN_REQUIRE_GPU();
    const int64_t N = 300, C = 200;  // five dweight chunks of 64 rows, the last partial; C not a multiple of 32
    const DType dt = DType::BF16;
    std::vector<float> x = representable(cuda_testing::random_floats(N * C, 501), dt);
    std::vector<float> w = representable(cuda_testing::random_floats(C, 502, 0.5f, 1.5f), dt);
    std::vector<float> dout = representable(cuda_testing::random_floats(N * C, 503), dt);
    std::vector<float> dx = representable(cuda_testing::random_floats(N * C, 504), dt);
    std::vector<float> dw = cuda_testing::random_floats(C, 505);  // F32: not rounded
    std::vector<float> out(N * C), rstd(N);
    cpu::rmsnorm_forward(host(out, {N, C}, "out"), host(rstd, {N}, "rstd"), host(x, {N, C}, "x"), host(w, {C}, "weight"),
                         1e-6);
    DeviceBuffer x_dev = upload_as(x, dt), w_dev = upload_as(w, dt), dout_dev = upload_as(dout, dt);
    DeviceBuffer dx_dev = upload_as(dx, dt), dw_dev = upload_as(dw, DType::F32), rstd_dev = cuda_testing::to_device(rstd);
    cpu::rmsnorm_backward(host(dx, {N, C}, "dx"), host(dw, {C}, "dweight"), host(dout, {N, C}, "dout"),
                          host(x, {N, C}, "x"), host(w, {C}, "weight"), host(rstd, {N}, "rstd"));
    cuda::rmsnorm_backward(dx_dev.tensor(dt, {N, C}, "dx"), dw_dev.tensor(DType::F32, {C}, "dweight"),
                           dout_dev.tensor(dt, {N, C}, "dout"), x_dev.tensor(dt, {N, C}, "x"), w_dev.tensor(dt, {C}, "weight"),
                           rstd_dev.tensor(DType::F32, {N}, "rstd"));
    compare(download_as(dx_dev, dt), dx, kBoundBF16, "rmsnorm_backward dx (BF16)");
    compare(cuda_testing::to_host<float>(dw_dev), dw, 1e-4 + N * 6e-8, "rmsnorm_backward dweight (F32 from BF16)");
}

// BF16 dout, F32 dtable: the kernel widens each bf16 value and performs the CPU's fp32 additions in the
// CPU's order (tokens in order per column), so the result is bitwise the CPU's on the same inputs.
TEST(CudaMixedGradients, EmbeddingBackwardIntoAnF32Dtable) {
    REFTRAIN_REQUIRE_GPU();
    const int64_t V = 50, C = 300, N = 97;
    std::vector<int64_t> ids(N);
    for (int64_t n = 0; n < N; ++n) ids[n] = (n * 7 + n / 3) % 31;  // ids repeat ~3x; 19 rows never used
    std::vector<float> dout = representable(cuda_testing::random_floats(N * C, 601), DType::BF16);
    std::vector<float> dtable = cuda_testing::random_floats(V * C, 602);
    DeviceBuffer ids_dev = cuda_testing::to_device(ids), dout_dev = upload_as(dout, DType::BF16);
    DeviceBuffer dtable_dev = upload_as(dtable, DType::F32);
    cpu::embedding_backward(host(dtable, {V, C}, "dtable"), host(dout, {N, C}, "dout"),
                            Tensor(ids.data(), DType::I64, {N}, "ids"));
    cuda::embedding_backward(dtable_dev.tensor(DType::F32, {V, C}, "dtable"), dout_dev.tensor(DType::BF16, {N, C}, "dout"),
                             ids_dev.tensor(DType::I64, {N}, "ids"));
    compare(cuda_testing::to_host<float>(dtable_dev), dtable, 0.0, "embedding_backward dtable (F32 from BF16, exact)");
}

// ---- argument checks: no device needed (the ops validate before any CUDA call) -------------------------

TEST(CudaMatmulArguments, RejectHostTensorsWrongShapesAndDtypes) {
    // Fake device tensors over host memory: never dereferenced, every call below fails (or returns)
    // before it reaches the device.
    auto on_device = [](Tensor t) {
        t.device = Device::CUDA;
        return t;
    };
    std::vector<float> x(6 * 4), w(3 * 4), out(6 * 3), dx(6 * 4), dw(3 * 4), dout(6 * 3);
    std::vector<uint16_t> w16(3 * 4), dw16(3 * 4), x16(6 * 4), dout16(6 * 3);
    std::vector<double> x64(6 * 4);
    const Tensor x_t = on_device(Tensor(x.data(), DType::F32, {6, 4}, "x"));
    const Tensor w_t = on_device(Tensor(w.data(), DType::F32, {3, 4}, "weight"));
    const Tensor out_t = on_device(Tensor(out.data(), DType::F32, {6, 3}, "out"));
    const Tensor dx_t = on_device(Tensor(dx.data(), DType::F32, {6, 4}, "dx"));
    const Tensor dw_t = on_device(Tensor(dw.data(), DType::F32, {3, 4}, "dweight"));
    const Tensor dout_t = on_device(Tensor(dout.data(), DType::F32, {6, 3}, "dout"));

    testing::expect_error([&] { cuda::linear_forward(Tensor(out.data(), DType::F32, {6, 3}, "out"), x_t, w_t); },
                          {"cuda::linear_forward", "'out'", "not a CUDA tensor"});
    testing::expect_error(
        [&] { cuda::linear_forward(out_t, x_t, on_device(Tensor(w.data(), DType::F32, {4, 3}, "weight"))); },
        {"cuda::linear_forward", "'weight'", "(4, 3)"});
    testing::expect_error(
        [&] { cuda::linear_forward(out_t, on_device(Tensor(x.data(), DType::F32, {24}, "x")), w_t); },
        {"cuda::linear_forward", "'x'", "(24)"});
    testing::expect_error(
        [&] { cuda::linear_forward(on_device(Tensor(out.data(), DType::F32, {6, 4}, "out")), x_t, w_t); },
        {"cuda::linear_forward", "'out'", "expected (6, 3)"});
    testing::expect_error(
        [&] {
            cuda::linear_forward(out_t, on_device(Tensor(x64.data(), DType::F64, {6, 4}, "x")),
                                 on_device(Tensor(x64.data(), DType::F64, {3, 4}, "weight")));
        },
        {"cuda::linear_forward", "'x'", "F64", "F32 or BF16"});
    testing::expect_error(
        [&] { cuda::linear_forward(out_t, x_t, on_device(Tensor(w16.data(), DType::BF16, {3, 4}, "weight"))); },
        {"cuda::linear_forward", "'weight'", "same dtype"});

    testing::expect_error([&] { cuda::linear_backward(Tensor(dx.data(), DType::F32, {6, 4}, "dx"), dw_t, dout_t, x_t, w_t); },
                          {"cuda::linear_backward", "'dx'", "not a CUDA tensor"});
    testing::expect_error(
        [&] { cuda::linear_backward(on_device(Tensor(dx.data(), DType::F32, {4, 6}, "dx")), dw_t, dout_t, x_t, w_t); },
        {"cuda::linear_backward", "'dx'", "expected (6, 4)"});
    testing::expect_error(
        [&] { cuda::linear_backward(dx_t, dw_t, on_device(Tensor(dout.data(), DType::F32, {3, 6}, "dout")), x_t, w_t); },
        {"cuda::linear_backward", "'dout'", "expected (6, 3)"});
    testing::expect_error(
        [&] {
            cuda::linear_backward(dx_t, on_device(Tensor(dw.data(), DType::F32, {3, 5}, "dweight")), dout_t, x_t, w_t);
        },
        {"cuda::linear_backward", "'dweight'", "expected (3, 4)"});
    // A BF16 dweight for F32 activations is refused (only the widening direction is supported) ...
    testing::expect_error(
        [&] {
            cuda::linear_backward(dx_t, on_device(Tensor(dw16.data(), DType::BF16, {3, 4}, "dweight")), dout_t, x_t,
                                  w_t);
        },
        {"cuda::linear_backward", "'dweight'", "has dtype BF16, expected F32"});
    // ... as is an F32 dx for BF16 activations (dx has the dtype of x).
    const Tensor x16_t = on_device(Tensor(x16.data(), DType::BF16, {6, 4}, "x"));
    const Tensor w16_t = on_device(Tensor(w16.data(), DType::BF16, {3, 4}, "weight"));
    const Tensor dout16_t = on_device(Tensor(dout16.data(), DType::BF16, {6, 3}, "dout"));
    testing::expect_error([&] { cuda::linear_backward(dx_t, Tensor(), dout16_t, x16_t, w16_t); },
                          {"cuda::linear_backward", "same dtype"});
    testing::expect_error(
        [&] {
            cuda::linear_backward(Tensor(), on_device(Tensor(x64.data(), DType::F64, {3, 4}, "dweight")), dout16_t,
                                  x16_t, w16_t);
        },
        {"cuda::linear_backward", "'dweight'", "F64"});

    // N = 0: the checks pass and the ops return before touching the device (there is none here).
    const Tensor empty_x = on_device(Tensor(nullptr, DType::F32, {0, 4}, "x"));
    cuda::linear_forward(on_device(Tensor(nullptr, DType::F32, {0, 3}, "out")), empty_x, w_t);
    cuda::linear_backward(on_device(Tensor(nullptr, DType::F32, {0, 4}, "dx")), dw_t,
                          on_device(Tensor(nullptr, DType::F32, {0, 3}, "dout")), empty_x, w_t);
}

TEST(CudaMatmulArguments, MixedGradientDtypesOfRmsnormAndEmbedding) {
    auto on_device = [](Tensor t) {
        t.device = Device::CUDA;
        return t;
    };
    std::vector<float> x(12), w(4), r(3);
    std::vector<uint16_t> w16(4);
    std::vector<double> dw64(4);
    const Tensor x_t = on_device(Tensor(x.data(), DType::F32, {3, 4}, "x"));
    const Tensor w_t = on_device(Tensor(w.data(), DType::F32, {4}, "weight"));
    const Tensor rstd_t = on_device(Tensor(r.data(), DType::F32, {3}, "rstd"));
    // F32 activations take only an F32 dweight; F64 is refused for any activations.
    testing::expect_error(
        [&] {
            cuda::rmsnorm_backward(Tensor(), on_device(Tensor(w16.data(), DType::BF16, {4}, "dweight")), x_t, x_t, w_t,
                                   rstd_t);
        },
        {"cuda::rmsnorm_backward", "'dweight'", "has dtype BF16, expected F32"});
    testing::expect_error(
        [&] {
            cuda::rmsnorm_backward(Tensor(), on_device(Tensor(dw64.data(), DType::F64, {4}, "dweight")), x_t, x_t, w_t,
                                   rstd_t);
        },
        {"cuda::rmsnorm_backward", "'dweight'", "F64"});

    std::vector<int64_t> ids(3);
    std::vector<uint16_t> table16(5 * 4);
    const Tensor ids_t = on_device(Tensor(ids.data(), DType::I64, {3}, "ids"));
    testing::expect_error(
        [&] {
            cuda::embedding_backward(on_device(Tensor(table16.data(), DType::BF16, {5, 4}, "dtable")), x_t, ids_t);
        },
        {"cuda::embedding_backward", "'dtable'", "has dtype BF16, expected F32"});
}

}  // namespace
}  // namespace reftrain

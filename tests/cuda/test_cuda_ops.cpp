// tests/cuda/test_cuda_ops.cpp — every CUDA op (kernels/cuda/ops.h) against its CPU twin (kernels/cpu/ops.h).
//
// Each test draws random non-zero inputs, runs the CPU reference in fp32 and the CUDA op in F32 or BF16
// on device buffers whose outputs were poisoned with NaN bytes first, and compares with compare():
//   error_i = |gpu_i - cpu_i| / max(|cpu_i|, kFloorFraction * max_j |cpu_j|)   must be <= bound.
// The floor (1% of the tensor's scale) is needed because backward ops ADD into random initial
// gradients, so some results cancel to ~0, and a few fp32 ulps of the terms (~1e-7 M) are then a large
// fraction of the result; with the floor, k ulps cost at most k * 6e-8 / 1e-2 = k * 6e-6.
// Bounds:
//   F32   1e-4 (kBoundF32): the same fp32 formulas; differences are expf/sqrtf ulps, FMA contraction and
//         the CPU's fp64 row sums (RMSNorm): allows ~16 ulps at the floor, 1000x below a bf16 error.
//   BF16  1e-2 (kBoundBF16): the CPU runs on the bf16-rounded inputs (and bf16-rounded initial
//         gradients), so the only difference is the GPU's final rounding to bf16, <= 2^-9 = 0.2%.
//   Exact (0): embedding forward (a copy) and embedding backward: F32 performs the CPU's fp32 additions
//         in the CPU's order; BF16 is compared with the CPU op applied one token at a time, rounding
//         dtable to bf16 after each token (cpu::round_to_precision), which is what the kernel does.
// Backward tests start every gradient at a random non-zero value, so they also check that the op ADDS.
// Without a CUDA device every GPU test is SKIPPED (REFTRAIN_REQUIRE_GPU); the argument checks at the
// bottom run anywhere, because the CUDA ops validate their arguments before touching the device.
#include <gtest/gtest.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace reftrain {

// Test names and ctest listings say "F32"/"BF16" instead of a byte dump of the parameter.
static void PrintTo(DType dtype, std::ostream* out) { *out << dtype_name(dtype); }

namespace {

using cuda_testing::DeviceBuffer;
using cuda_testing::expect_close;

constexpr double kBoundF32 = 1e-4;
constexpr double kBoundBF16 = 1e-2;
constexpr double kFloorFraction = 1e-2;

double compare(const std::vector<float>& got, const std::vector<float>& want, double bound, const std::string& what) {
    return expect_close(got, want, bound, what, kFloorFraction);
}

double bound_for(DType dtype) { return dtype == DType::F32 ? kBoundF32 : kBoundBF16; }

using cuda_testing::download_as;
using cuda_testing::host;
using cuda_testing::poisoned_as;
using cuda_testing::representable;
using cuda_testing::upload_as;

std::string label(const char* what, DType dtype) { return std::string(what) + " (" + dtype_name(dtype) + ")"; }

class CudaOps : public ::testing::TestWithParam<DType> {};

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaOps, ::testing::Values(DType::F32, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& info) { return std::string(dtype_name(info.param)); });

TEST_P(CudaOps, ResidualForwardAndBackward) {
    REFTRAIN_REQUIRE_GPU();
    const DType dt = GetParam();
    const int64_t N = 37, C = 129;  // odd sizes: no kernel may assume a multiple of the block
    std::vector<float> a = representable(cuda_testing::random_floats(N * C, 1), dt);
    std::vector<float> b = representable(cuda_testing::random_floats(N * C, 2), dt);
    std::vector<float> out(N * C);
    cpu::residual_forward(host(out, {N, C}, "out"), host(a, {N, C}, "a"), host(b, {N, C}, "b"));
    DeviceBuffer da_dev = upload_as(a, dt), db_dev = upload_as(b, dt), out_dev = poisoned_as(N * C, dt);
    cuda::residual_forward(out_dev.tensor(dt, {N, C}, "out"), da_dev.tensor(dt, {N, C}, "a"), db_dev.tensor(dt, {N, C}, "b"));
    compare(download_as(out_dev, dt), out, bound_for(dt), label("residual_forward out", dt));

    std::vector<float> dout = representable(cuda_testing::random_floats(N * C, 3), dt);
    std::vector<float> ga = representable(cuda_testing::random_floats(N * C, 4), dt);
    std::vector<float> gb = representable(cuda_testing::random_floats(N * C, 5), dt);
    DeviceBuffer dout_dev = upload_as(dout, dt), ga_dev = upload_as(ga, dt), gb_dev = upload_as(gb, dt);
    cpu::residual_backward(host(ga, {N, C}, "da"), host(gb, {N, C}, "db"), host(dout, {N, C}, "dout"));
    cuda::residual_backward(ga_dev.tensor(dt, {N, C}, "da"), gb_dev.tensor(dt, {N, C}, "db"),
                            dout_dev.tensor(dt, {N, C}, "dout"));
    compare(download_as(ga_dev, dt), ga, bound_for(dt), label("residual_backward da", dt));
    compare(download_as(gb_dev, dt), gb, bound_for(dt), label("residual_backward db", dt));
}

TEST_P(CudaOps, SwigluForwardAndBackward) {
    REFTRAIN_REQUIRE_GPU();
    const DType dt = GetParam();
    const int64_t N = 33, F = 260;
    std::vector<float> gate = representable(cuda_testing::random_floats(N * F, 11, -6.0f, 6.0f), dt);
    std::vector<float> up = representable(cuda_testing::random_floats(N * F, 12), dt);
    std::vector<float> out(N * F);
    cpu::swiglu_forward(host(out, {N, F}, "out"), host(gate, {N, F}, "gate"), host(up, {N, F}, "up"));
    DeviceBuffer gate_dev = upload_as(gate, dt), up_dev = upload_as(up, dt), out_dev = poisoned_as(N * F, dt);
    cuda::swiglu_forward(out_dev.tensor(dt, {N, F}, "out"), gate_dev.tensor(dt, {N, F}, "gate"),
                         up_dev.tensor(dt, {N, F}, "up"));
    compare(download_as(out_dev, dt), out, bound_for(dt), label("swiglu_forward out", dt));

    std::vector<float> dout = representable(cuda_testing::random_floats(N * F, 13), dt);
    std::vector<float> dgate = representable(cuda_testing::random_floats(N * F, 14), dt);
    std::vector<float> dup = representable(cuda_testing::random_floats(N * F, 15), dt);
    DeviceBuffer dout_dev = upload_as(dout, dt), dgate_dev = upload_as(dgate, dt), dup_dev = upload_as(dup, dt);
    cpu::swiglu_backward(host(dgate, {N, F}, "dgate"), host(dup, {N, F}, "dup"), host(dout, {N, F}, "dout"),
                         host(gate, {N, F}, "gate"), host(up, {N, F}, "up"));
    cuda::swiglu_backward(dgate_dev.tensor(dt, {N, F}, "dgate"), dup_dev.tensor(dt, {N, F}, "dup"),
                          dout_dev.tensor(dt, {N, F}, "dout"), gate_dev.tensor(dt, {N, F}, "gate"),
                          up_dev.tensor(dt, {N, F}, "up"));
    compare(download_as(dgate_dev, dt), dgate, bound_for(dt), label("swiglu_backward dgate", dt));
    compare(download_as(dup_dev, dt), dup, bound_for(dt), label("swiglu_backward dup", dt));
}

TEST_P(CudaOps, RopeForwardAndBackward) {
    REFTRAIN_REQUIRE_GPU();
    const DType dt = GetParam();
    const int64_t B = 2, T = 9, H = 3, D = 64, T_max = 16, n = B * T * H * D;
    std::vector<float> cos_table(T_max * D), sin_table(T_max * D);
    cpu::rope_tables(host(cos_table, {T_max, D}, "cos"), host(sin_table, {T_max, D}, "sin"), 10000.0);
    cos_table = representable(cos_table, dt);
    sin_table = representable(sin_table, dt);
    std::vector<float> x = representable(cuda_testing::random_floats(n, 21), dt);
    std::vector<float> out(n);
    cpu::rope_forward(host(out, {B, T, H, D}, "out"), host(x, {B, T, H, D}, "x"), host(cos_table, {T_max, D}, "cos"),
                      host(sin_table, {T_max, D}, "sin"));
    DeviceBuffer cos_dev = upload_as(cos_table, dt), sin_dev = upload_as(sin_table, dt);
    DeviceBuffer x_dev = upload_as(x, dt), out_dev = poisoned_as(n, dt);
    const Tensor cos_t = cos_dev.tensor(dt, {T_max, D}, "cos"), sin_t = sin_dev.tensor(dt, {T_max, D}, "sin");
    cuda::rope_forward(out_dev.tensor(dt, {B, T, H, D}, "out"), x_dev.tensor(dt, {B, T, H, D}, "x"), cos_t, sin_t);
    compare(download_as(out_dev, dt), out, bound_for(dt), label("rope_forward out", dt));

    std::vector<float> dout = representable(cuda_testing::random_floats(n, 22), dt);
    std::vector<float> dx = representable(cuda_testing::random_floats(n, 23), dt);
    DeviceBuffer dout_dev = upload_as(dout, dt), dx_dev = upload_as(dx, dt);
    cpu::rope_backward(host(dx, {B, T, H, D}, "dx"), host(dout, {B, T, H, D}, "dout"), host(cos_table, {T_max, D}, "cos"),
                       host(sin_table, {T_max, D}, "sin"));
    cuda::rope_backward(dx_dev.tensor(dt, {B, T, H, D}, "dx"), dout_dev.tensor(dt, {B, T, H, D}, "dout"), cos_t, sin_t);
    compare(download_as(dx_dev, dt), dx, bound_for(dt), label("rope_backward dx", dt));
}

// RMSNorm over rows of width C: C = 200 (one partial warp, fewer threads than a block) and C = 1000
// (each thread strides over several columns); N = 300 rows span five dweight chunks of 64, the last
// partial. The QK-norm case is the same call on (B*T*H, head_dim) rows.
void check_rmsnorm(DType dt, int64_t N, int64_t C, const char* what) {
    const double eps = 1e-6;
    std::vector<float> x = representable(cuda_testing::random_floats(N * C, 31), dt);
    std::vector<float> w = representable(cuda_testing::random_floats(C, 32, 0.5f, 1.5f), dt);
    std::vector<float> out(N * C), rstd(N);
    cpu::rmsnorm_forward(host(out, {N, C}, "out"), host(rstd, {N}, "rstd"), host(x, {N, C}, "x"), host(w, {C}, "weight"),
                         eps);
    DeviceBuffer x_dev = upload_as(x, dt), w_dev = upload_as(w, dt), out_dev = poisoned_as(N * C, dt);
    DeviceBuffer rstd_dev = cuda_testing::poisoned<float>(N);
    const Tensor x_t = x_dev.tensor(dt, {N, C}, "x"), w_t = w_dev.tensor(dt, {C}, "weight");
    cuda::rmsnorm_forward(out_dev.tensor(dt, {N, C}, "out"), rstd_dev.tensor(DType::F32, {N}, "rstd"), x_t, w_t, eps);
    compare(download_as(out_dev, dt), out, bound_for(dt), label(what, dt) + " forward out");
    compare(cuda_testing::to_host<float>(rstd_dev), rstd, kBoundF32, label(what, dt) + " forward rstd");

    // The backward gets the CPU's rstd, so it is tested on its own.
    std::vector<float> dout = representable(cuda_testing::random_floats(N * C, 33), dt);
    std::vector<float> dx = representable(cuda_testing::random_floats(N * C, 34), dt);
    std::vector<float> dw = representable(cuda_testing::random_floats(C, 35), dt);
    DeviceBuffer dout_dev = upload_as(dout, dt), dx_dev = upload_as(dx, dt), dw_dev = upload_as(dw, dt);
    DeviceBuffer cpu_rstd_dev = cuda_testing::to_device(rstd);
    cpu::rmsnorm_backward(host(dx, {N, C}, "dx"), host(dw, {C}, "dweight"), host(dout, {N, C}, "dout"),
                          host(x, {N, C}, "x"), host(w, {C}, "weight"), host(rstd, {N}, "rstd"));
    cuda::rmsnorm_backward(dx_dev.tensor(dt, {N, C}, "dx"), dw_dev.tensor(dt, {C}, "dweight"),
                           dout_dev.tensor(dt, {N, C}, "dout"), x_t, w_t, cpu_rstd_dev.tensor(DType::F32, {N}, "rstd"));
    // dweight sums N products in fp32 (the CPU in fp64): allow N * 2^-24 on top of the F32 bound.
    const double dw_bound = dt == DType::F32 ? kBoundF32 + N * 6e-8 : kBoundBF16;
    compare(download_as(dx_dev, dt), dx, bound_for(dt), label(what, dt) + " backward dx");
    compare(download_as(dw_dev, dt), dw, dw_bound, label(what, dt) + " backward dweight");
}

TEST_P(CudaOps, RmsnormForwardAndBackward) {
    REFTRAIN_REQUIRE_GPU();
    check_rmsnorm(GetParam(), 300, 200, "rmsnorm (300, 200)");
    check_rmsnorm(GetParam(), 300, 1000, "rmsnorm (300, 1000)");
}

TEST_P(CudaOps, RmsnormAsQkNormPerHead) {
    REFTRAIN_REQUIRE_GPU();
    const int64_t B = 2, T = 33, H = 4, head_dim = 128;
    check_rmsnorm(GetParam(), B * T * H, head_dim, "qk-norm (B*T*H, head_dim)");
}

TEST_P(CudaOps, RmsnormBackwardSkipsNullGradientsAndIsReproducible) {
    REFTRAIN_REQUIRE_GPU();
    const DType dt = GetParam();
    const int64_t N = 130, C = 96;
    std::vector<float> x = representable(cuda_testing::random_floats(N * C, 41), dt);
    std::vector<float> w = representable(cuda_testing::random_floats(C, 42), dt);
    std::vector<float> dout = representable(cuda_testing::random_floats(N * C, 43), dt);
    std::vector<float> rstd = cuda_testing::random_floats(N, 44, 0.5f, 2.0f);
    DeviceBuffer x_dev = upload_as(x, dt), w_dev = upload_as(w, dt), dout_dev = upload_as(dout, dt);
    DeviceBuffer rstd_dev = cuda_testing::to_device(rstd);
    std::vector<std::vector<float>> runs;
    for (int run = 0; run < 2; ++run) {
        DeviceBuffer dw_dev = upload_as(std::vector<float>(C, 0.0f), dt);
        cuda::rmsnorm_backward(Tensor(), dw_dev.tensor(dt, {C}, "dweight"), dout_dev.tensor(dt, {N, C}, "dout"),
                               x_dev.tensor(dt, {N, C}, "x"), w_dev.tensor(dt, {C}, "weight"),
                               rstd_dev.tensor(DType::F32, {N}, "rstd"));
        runs.push_back(download_as(dw_dev, dt));
    }
    EXPECT_EQ(runs[0], runs[1]) << "rmsnorm_backward dweight differs between two identical runs";
}

TEST_P(CudaOps, EmbeddingForwardAndBackward) {
    REFTRAIN_REQUIRE_GPU();
    const DType dt = GetParam();
    const int64_t V = 50, C = 300, N = 97;
    std::vector<int64_t> ids(N);
    for (int64_t n = 0; n < N; ++n) ids[n] = (n * 7 + n / 3) % 31;  // ids repeat ~3x; 19 rows never used
    std::vector<float> table = representable(cuda_testing::random_floats(V * C, 51), dt);
    std::vector<float> out(N * C);
    const Tensor ids_host(ids.data(), DType::I64, {N}, "ids");
    cpu::embedding_forward(host(out, {N, C}, "out"), ids_host, host(table, {V, C}, "table"));
    DeviceBuffer ids_dev = cuda_testing::to_device(ids);
    DeviceBuffer table_dev = upload_as(table, dt), out_dev = poisoned_as(N * C, dt);
    const Tensor ids_t = ids_dev.tensor(DType::I64, {N}, "ids");
    cuda::embedding_forward(out_dev.tensor(dt, {N, C}, "out"), ids_t, table_dev.tensor(dt, {V, C}, "table"));
    compare(download_as(out_dev, dt), out, 0.0, label("embedding_forward out (a copy: exact)", dt));

    std::vector<float> dout = representable(cuda_testing::random_floats(N * C, 52), dt);
    std::vector<float> dtable = representable(cuda_testing::random_floats(V * C, 53), dt);
    DeviceBuffer dout_dev = upload_as(dout, dt), dtable_dev = upload_as(dtable, dt);
    if (dt == DType::F32) {
        cpu::embedding_backward(host(dtable, {V, C}, "dtable"), host(dout, {N, C}, "dout"), ids_host);
    } else {  // the kernel rounds dtable to bf16 after every token's add
        for (int64_t n = 0; n < N; ++n) {
            cpu::embedding_backward(host(dtable, {V, C}, "dtable"), Tensor(dout.data() + n * C, DType::F32, {1, C}, "dout"),
                                    Tensor(ids.data() + n, DType::I64, {1}, "ids"));
            cpu::round_to_precision(host(dtable, {V, C}, "dtable"), DType::BF16);
        }
    }
    cuda::embedding_backward(dtable_dev.tensor(dt, {V, C}, "dtable"), dout_dev.tensor(dt, {N, C}, "dout"), ids_t);
    // The same fp32 additions in the same order (token order per column), the same roundings: bitwise equal.
    compare(download_as(dtable_dev, dt), dtable, 0.0, label("embedding_backward dtable (exact)", dt));
}

TEST_P(CudaOps, EmbeddingRejectsAnIdOutsideTheVocabulary) {
    REFTRAIN_REQUIRE_GPU();
    const DType dt = GetParam();
    const int64_t V = 8, C = 4, N = 6;
    std::vector<int64_t> ids = {1, 2, 3, 8, 9, 0};  // first bad id at position 3
    DeviceBuffer ids_dev = cuda_testing::to_device(ids);
    DeviceBuffer table_dev = upload_as(cuda_testing::random_floats(V * C, 61), dt), out_dev = poisoned_as(N * C, dt);
    testing::expect_error(
        [&] {
            cuda::embedding_forward(out_dev.tensor(dt, {N, C}, "out"), ids_dev.tensor(DType::I64, {N}, "batch.ids"),
                                    table_dev.tensor(dt, {V, C}, "table"));
        },
        {"cuda::embedding_forward", "token id 8 at position 3", "batch.ids", "[0, 8)"});
    testing::expect_error(
        [&] {
            cuda::embedding_backward(table_dev.tensor(dt, {V, C}, "dtable"), out_dev.tensor(dt, {N, C}, "dout"),
                                     ids_dev.tensor(DType::I64, {N}, "batch.ids"));
        },
        {"cuda::embedding_backward", "token id 8 at position 3"});
}

// ---- argument checks: no device needed (the ops validate before any CUDA call) -------------------------

TEST(CudaOpsArguments, RejectHostTensorsWrongDtypesAndShapes) {
    std::vector<float> a(12), b(12), out(12);
    const Tensor a_host(a.data(), DType::F32, {3, 4}, "a"), b_host(b.data(), DType::F32, {3, 4}, "b");
    const Tensor out_host(out.data(), DType::F32, {3, 4}, "out");
    testing::expect_error([&] { cuda::residual_forward(out_host, a_host, b_host); },
                          {"cuda::residual_forward", "'out'", "not a CUDA tensor"});

    // Fake device tensors (never dereferenced: every check below fails first).
    auto on_device = [](Tensor t) { t.device = Device::CUDA; return t; };
    std::vector<double> d(12);
    testing::expect_error([&] { cuda::swiglu_forward(on_device(out_host), on_device(a_host),
                                                     on_device(Tensor(d.data(), DType::F64, {3, 4}, "up"))); },
                          {"cuda::swiglu_forward", "dtype"});
    std::vector<float> x(12), w(4), r(3);
    const Tensor x_t = on_device(Tensor(x.data(), DType::F32, {3, 4}, "x"));
    const Tensor w_t = on_device(Tensor(w.data(), DType::F32, {4}, "weight"));
    const Tensor out_t = on_device(Tensor(out.data(), DType::F32, {3, 4}, "out"));
    std::vector<uint16_t> r16(3);
    testing::expect_error(
        [&] { cuda::rmsnorm_forward(out_t, on_device(Tensor(r16.data(), DType::BF16, {3}, "rstd")), x_t, w_t, 1e-6); },
        {"cuda::rmsnorm_forward", "rstd"});
    testing::expect_error(
        [&] { cuda::rmsnorm_forward(out_t, on_device(Tensor(r.data(), DType::F32, {3}, "rstd")), x_t,
                                    on_device(Tensor(w.data(), DType::F32, {2, 2}, "weight")), 1e-6); },
        {"cuda::rmsnorm_forward", "weight"});
    std::vector<float> cs(8 * 5);
    const Tensor odd = on_device(Tensor(x.data(), DType::F32, {1, 1, 2, 5}, "q"));
    testing::expect_error([&] { cuda::rope_forward(odd, odd, on_device(Tensor(cs.data(), DType::F32, {8, 5}, "cos")),
                                                   on_device(Tensor(cs.data(), DType::F32, {8, 5}, "sin"))); },
                          {"cuda::rope_forward", "must be even"});
}

}  // namespace
}  // namespace reftrain

// tests/cuda/test_cuda_optim.cpp — the optimizer-side CUDA kernels (kernels/cuda/optim.h, loss.h) against
// their CPU twins: AdamW::step, global_grad_norm / clip_grad_norm, the dtype.h conversions and
// cpu::round_to_precision, unscale_and_check, cpu::cross_entropy_forward/backward, tensor_stats.
//
// Every input is random and non-zero, every output buffer is poisoned (NaN) before the kernel runs, and
// each comparison states its bound and why: bitwise where both sides perform the same IEEE operations
// (casts, unscaling, min/max/counts), a few fp32 ulps where a libm function or the CPU's FMA contraction
// (-march=native) differs, fp64 rounding where only the summation order differs. Reductions are also
// run twice and must agree bit for bit. Without a CUDA device every GPU test is SKIPPED
// (REFTRAIN_REQUIRE_GPU); the argument checks at the bottom run anywhere, because these functions
// validate their arguments before the first CUDA call.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "debug/tracer.h"
#include "kernels/arena.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/loss.h"
#include "kernels/cuda/optim.h"
#include "kernels/dtype.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"
#include "train/adamw.h"
#include "train/grad_clip.h"
#include "train/loss_scaler.h"

namespace reftrain {
namespace {

using cuda_testing::DeviceBuffer;
using cuda_testing::expect_close;
using cuda_testing::poisoned;
using cuda_testing::random_floats;
using cuda_testing::to_device;
using cuda_testing::to_host;

// The contents of an F32 arena tensor as a vector, and back.
std::vector<float> values_of(const Tensor& t) {
    const float* p = t.ptr<float>();
    return std::vector<float>(p, p + t.numel());
}
void fill(Tensor& t, const std::vector<float>& values) {
    ASSERT_EQ(static_cast<size_t>(t.numel()), values.size());
    std::memcpy(t.data, values.data(), values.size() * sizeof(float));
}

Tensor device_view(const DeviceBuffer& buffer, DType dtype, const Tensor& like) {
    Tensor t(buffer.data(), dtype, std::vector<int64_t>(like.shape.begin(), like.shape.begin() + like.ndim), like.name);
    t.device = Device::CUDA;
    return t;
}

bool is_nan_bf16(uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu) != 0; }
bool is_nan_f16(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

// A pinned host buffer of TensorStatsRecord, freed on scope exit.
struct PinnedStats {
    cuda::TensorStatsRecord* p = nullptr;
    explicit PinnedStats(size_t count) {
        REFTRAIN_CUDA_CHECK(cudaMallocHost(&p, count * sizeof(cuda::TensorStatsRecord)));
        std::memset(static_cast<void*>(p), 0xFF, count * sizeof(cuda::TensorStatsRecord));
    }
    ~PinnedStats() { cudaFreeHost(p); }
};

// ---- AdamW ----------------------------------------------------------------------------------------------------

// Three steps on a matrix (decayed) and a vector (not decayed), new gradients each step, against
// AdamW::step. Bound 2e-6 relative: the device rounds every operation (no FMA), the CPU build may
// contract b1*m + c1*g into an FMA under -march=native, which moves m and v by an ulp of their terms
// and p by a few ulps. For m the error is taken relative to the largest |m| (floor fraction 1): with
// fresh gradients each step b1*m and c1*g can cancel, and an ulp of the terms is then large next to
// the small result.
TEST(CudaOptim, AdamWMatchesCpuOverThreeSteps) {
    REFTRAIN_REQUIRE_GPU();
    Arena params("params"), grads("grads");
    params.add("w", DType::F32, {48, 300});
    params.add("gain", DType::F32, {300});
    grads.add("grad:w", DType::F32, {48, 300});
    grads.add("grad:gain", DType::F32, {300});
    params.allocate();
    grads.allocate();
    fill(params.at(0), random_floats(48 * 300, 1));
    fill(params.at(1), random_floats(300, 2, 0.5f, 1.5f));
    AdamWConfig config;
    config.lr = 3e-3;
    config.weight_decay = 0.1;
    AdamW cpu_adamw(params, grads, config);

    std::vector<DeviceBuffer> p, m, v, g;
    for (size_t i = 0; i < params.size(); ++i) {
        p.push_back(to_device(values_of(params.at(i))));
        m.push_back(to_device(std::vector<float>(params.at(i).numel(), 0.0f)));  // AdamW's moments start at 0
        v.push_back(to_device(std::vector<float>(params.at(i).numel(), 0.0f)));
        g.push_back(DeviceBuffer(params.at(i).nbytes()));
    }
    for (int step = 1; step <= 3; ++step) {
        const double lr = config.lr * (1.0 - 0.2 * step);  // a schedule's changing value
        for (size_t i = 0; i < params.size(); ++i) {
            const std::vector<float> grad = random_floats(params.at(i).numel(), 100 + 10 * step + i, -0.3f, 0.3f);
            fill(grads.at(i), grad);
            g[i].upload(grad.data(), g[i].bytes());
            cuda::AdamWStepConfig device_config{lr, config.beta1, config.beta2, config.eps, config.weight_decay, step};
            cuda::adamw_step(device_view(p[i], DType::F32, params.at(i)), device_view(g[i], DType::F32, params.at(i)),
                             device_view(m[i], DType::F32, params.at(i)), device_view(v[i], DType::F32, params.at(i)),
                             device_config, AdamW::decays(params.at(i)));
        }
        cpu_adamw.step(lr);
        for (size_t i = 0; i < params.size(); ++i) {
            const std::string where = params.at(i).name + " after step " + std::to_string(step);
            expect_close(to_host<float>(p[i]), values_of(params.at(i)), 2e-6, "param " + where);
            expect_close(to_host<float>(m[i]), values_of(cpu_adamw.moments().at(2 * i)), 2e-6, "exp_avg " + where, 1.0);
            expect_close(to_host<float>(v[i]), values_of(cpu_adamw.moments().at(2 * i + 1)), 2e-6, "exp_avg_sq " + where);
        }
    }
}

// ---- gradient norm and clipping ----------------------------------------------------------------------------------

struct GradSet {
    Arena cpu{"grads"};
    std::vector<DeviceBuffer> device;
    std::vector<Tensor> views;
    explicit GradSet(uint64_t seed) {
        const std::vector<std::vector<int64_t>> shapes = {{5000}, {1}, {70, 1000}, {4096}};
        for (size_t i = 0; i < shapes.size(); ++i) cpu.add("grad:t" + std::to_string(i), DType::F32, shapes[i]);
        cpu.allocate();
        for (size_t i = 0; i < cpu.size(); ++i) {
            fill(cpu.at(i), random_floats(cpu.at(i).numel(), seed + i));
            device.push_back(to_device(values_of(cpu.at(i))));
        }
        for (size_t i = 0; i < cpu.size(); ++i) views.push_back(device_view(device[i], DType::F32, cpu.at(i)));
    }
};

// Same sum of exact fp64 squares in another order: bound 1e-12 relative. Run twice: same bits.
TEST(CudaOptim, GlobalGradNormMatchesCpuAndIsDeterministic) {
    REFTRAIN_REQUIRE_GPU();
    GradSet grads(7);
    const double want = global_grad_norm(grads.cpu);
    const double first = cuda::global_grad_norm_to_host(grads.views);
    const double second = cuda::global_grad_norm_to_host(grads.views);
    EXPECT_NEAR(first, want, 1e-12 * want);
    EXPECT_EQ(std::memcmp(&first, &second, sizeof(double)), 0) << first << " vs " << second;
}

// Clipping to a quarter of the norm: the coefficient max_norm / (norm + 1e-6) is rounded to fp32 from
// norms equal to 1e-12, so it may differ by one fp32 ulp: bound 3e-7 relative on every gradient. The
// device keeps the PRE-clip norm. A max_norm above the norm leaves the gradients bitwise untouched.
TEST(CudaOptim, ClipGradNormMatchesCpu) {
    REFTRAIN_REQUIRE_GPU();
    GradSet grads(11);
    const double norm = global_grad_norm(grads.cpu);
    DeviceBuffer norm_device = poisoned<double>(1);

    const std::vector<float> before = to_host<float>(grads.device[2]);
    cuda::clip_grad_norm(grads.views, 10.0 * norm, static_cast<double*>(norm_device.data()));
    EXPECT_EQ(to_host<float>(grads.device[2]), before) << "max_norm above the norm must not touch the gradients";

    const double returned = clip_grad_norm(grads.cpu, norm / 4.0);
    cuda::clip_grad_norm(grads.views, norm / 4.0, static_cast<double*>(norm_device.data()));
    EXPECT_NEAR(to_host<double>(norm_device)[0], returned, 1e-12 * returned) << "the pre-clip norm";
    for (size_t i = 0; i < grads.views.size(); ++i) {
        expect_close(to_host<float>(grads.device[i]), values_of(grads.cpu.at(i)), 3e-7, "clipped " + grads.cpu.at(i).name);
    }
}

// ---- casts ------------------------------------------------------------------------------------------------------------

// Hand-picked edges (ties, fp16 overflow boundary, subnormals, infinities) plus random bit patterns.
std::vector<float> cast_inputs() {
    std::vector<float> x = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.996f, 65520.0f, -65520.0f, 1e5f,
                            6.1035156e-5f, 6.0e-8f, 5.9604645e-8f, 2.9802322e-8f, 2.98e-8f, 1e-10f, 1e-40f, -1e-45f,
                            std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), bits_float(0xffc12345u)};
    for (uint32_t tie : {0x3f808000u, 0x3f818000u, 0x3f801000u, 0x3f803000u, 0x477fe000u, 0x477ff000u}) x.push_back(bits_float(tie));
    std::mt19937 engine(3);
    for (int i = 0; i < (1 << 16); ++i) x.push_back(bits_float(static_cast<uint32_t>(engine())));
    return x;
}

// Bitwise against float_to_bf16 / float_to_f16 for every non-NaN input; NaN in, NaN out.
TEST(CudaOptim, NarrowingCastsAreBitExact) {
    REFTRAIN_REQUIRE_GPU();
    const std::vector<float> x = cast_inputs();
    const int64_t n = static_cast<int64_t>(x.size());
    DeviceBuffer in = to_device(x);
    Tensor in_view = in.tensor(DType::F32, {n}, "x");
    DeviceBuffer bf16 = poisoned<uint16_t>(x.size()), f16 = poisoned<uint16_t>(x.size());
    cuda::cast_f32_to_bf16(bf16.tensor(DType::BF16, {n}, "x.bf16"), in_view);
    cuda::cast_f32_to_f16(f16.tensor(DType::F16, {n}, "x.f16"), in_view);
    const std::vector<uint16_t> got_bf16 = to_host<uint16_t>(bf16), got_f16 = to_host<uint16_t>(f16);
    int mismatches = 0;
    for (size_t i = 0; i < x.size() && mismatches < 10; ++i) {
        if (std::isnan(x[i])) {
            EXPECT_TRUE(is_nan_bf16(got_bf16[i]) && is_nan_f16(got_f16[i])) << "NaN input " << i;
            continue;
        }
        if (got_bf16[i] != float_to_bf16(x[i]) || got_f16[i] != float_to_f16(x[i])) {
            ++mismatches;
            ADD_FAILURE() << "input bits 0x" << std::hex << float_bits(x[i]) << ": bf16 0x" << got_bf16[i] << " vs 0x"
                          << float_to_bf16(x[i]) << ", f16 0x" << got_f16[i] << " vs 0x" << float_to_f16(x[i]);
        }
    }
}

// Every one of the 65536 bf16 and fp16 bit patterns, widened: bitwise equal, NaN to NaN.
TEST(CudaOptim, WideningCastsAreBitExactOnAllPatterns) {
    REFTRAIN_REQUIRE_GPU();
    std::vector<uint16_t> all(1 << 16);
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
    const int64_t n = static_cast<int64_t>(all.size());
    DeviceBuffer in = to_device(all);
    DeviceBuffer out_bf16 = poisoned<float>(all.size()), out_f16 = poisoned<float>(all.size());
    cuda::cast_bf16_to_f32(out_bf16.tensor(DType::F32, {n}, "bf16.f32"), in.tensor(DType::BF16, {n}, "bf16"));
    cuda::cast_f16_to_f32(out_f16.tensor(DType::F32, {n}, "f16.f32"), in.tensor(DType::F16, {n}, "f16"));
    const std::vector<float> got_bf16 = to_host<float>(out_bf16), got_f16 = to_host<float>(out_f16);
    for (size_t i = 0; i < all.size(); ++i) {
        const float want_bf16 = bf16_to_float(all[i]), want_f16 = f16_to_float(all[i]);
        if (std::isnan(want_bf16)) EXPECT_TRUE(std::isnan(got_bf16[i])) << "bf16 0x" << std::hex << i;
        else ASSERT_EQ(float_bits(got_bf16[i]), float_bits(want_bf16)) << "bf16 0x" << std::hex << i;
        if (std::isnan(want_f16)) EXPECT_TRUE(std::isnan(got_f16[i])) << "f16 0x" << std::hex << i;
        else ASSERT_EQ(float_bits(got_f16[i]), float_bits(want_f16)) << "f16 0x" << std::hex << i;
    }
}

// In place through BF16 and F16, bitwise against cpu::round_to_precision; F32 leaves x untouched.
TEST(CudaOptim, RoundToPrecisionIsBitExact) {
    REFTRAIN_REQUIRE_GPU();
    const std::vector<float> x = cast_inputs();
    const int64_t n = static_cast<int64_t>(x.size());
    for (DType precision : {DType::BF16, DType::F16, DType::F32}) {
        std::vector<float> want = x;
        cpu::round_to_precision(Tensor(want.data(), DType::F32, {n}, "x"), precision);
        DeviceBuffer device = to_device(x);
        cuda::round_to_precision(device.tensor(DType::F32, {n}, "x"), precision);
        const std::vector<float> got = to_host<float>(device);
        for (size_t i = 0; i < x.size(); ++i) {
            if (std::isnan(want[i])) EXPECT_TRUE(std::isnan(got[i])) << dtype_name(precision) << " element " << i;
            else ASSERT_EQ(float_bits(got[i]), float_bits(want[i]))
                << dtype_name(precision) << " input bits 0x" << std::hex << float_bits(x[i]);
        }
    }
}

// ---- loss-scaler unscaling -------------------------------------------------------------------------------------------

// The same single fp32 multiply by the same inv_scale on both sides: bitwise. The flag is poisoned
// first (the call must zero it), raised by an inf or a NaN, and the gradients are unscaled even then.
TEST(CudaOptim, UnscaleAndCheckMatchesCpu) {
    REFTRAIN_REQUIRE_GPU();
    const double scale = 3072.0;  // not a power of two: inv_scale is inexact
    for (bool inject : {false, true}) {
        Arena grads("grads");
        grads.add("grad:a", DType::F32, {3000});
        grads.add("grad:b", DType::F32, {17, 33});
        grads.allocate();
        std::vector<DeviceBuffer> device;
        std::vector<Tensor> views;
        for (size_t i = 0; i < grads.size(); ++i) {
            std::vector<float> g = random_floats(grads.at(i).numel(), 40 + i, -3e3f, 3e3f);
            if (inject && i == 1) {
                g[5] = std::numeric_limits<float>::infinity();
                g[100] = std::numeric_limits<float>::quiet_NaN();
            }
            fill(grads.at(i), g);
            device.push_back(to_device(g));
        }
        for (size_t i = 0; i < grads.size(); ++i) views.push_back(device_view(device[i], DType::F32, grads.at(i)));
        DeviceBuffer flag = poisoned<int32_t>(1);
        cuda::unscale_and_check(views, scale, static_cast<int32_t*>(flag.data()));
        const bool want = unscale_and_check(grads, scale);
        EXPECT_EQ(want, inject);
        EXPECT_EQ(to_host<int32_t>(flag)[0], want ? 1 : 0);
        for (size_t i = 0; i < grads.size(); ++i) {
            const std::vector<float> got = to_host<float>(device[i]), expected = values_of(grads.at(i));
            for (size_t j = 0; j < got.size(); ++j) {
                if (std::isnan(expected[j])) EXPECT_TRUE(std::isnan(got[j]));
                else ASSERT_EQ(float_bits(got[j]), float_bits(expected[j])) << grads.at(i).name << "[" << j << "]";
            }
        }
    }
    DeviceBuffer flag = poisoned<int32_t>(1);
    std::vector<Tensor> none;
    EXPECT_THROW(cuda::unscale_and_check(none, 0.0, static_cast<int32_t*>(flag.data())), Error);
}

// ---- cross-entropy --------------------------------------------------------------------------------------------------

struct CrossEntropyCase {
    int64_t N = 37, V = 1000;  // V not a multiple of the block size
    std::vector<float> logits;
    std::vector<int64_t> targets;
    explicit CrossEntropyCase(uint64_t seed, bool supervise = true) {
        logits = random_floats(static_cast<size_t>(N * V), seed, -4.0f, 4.0f);
        std::mt19937_64 engine(seed + 1);
        for (int64_t n = 0; n < N; ++n) {
            const bool ignored = !supervise || n % 5 == 2;
            targets.push_back(ignored ? cpu::kIgnoreIndex : static_cast<int64_t>(engine() % V));
        }
    }
};

// lse: exp and log in fp64 on both sides, another summation order: the fp32 result within 1 ulp
// (bound 2e-7 relative). The loss: fp64 sums of those lse in another order: 1e-6 relative. The second
// run gives the same bits (lse and loss).
TEST(CudaOptim, CrossEntropyForwardMatchesCpuAndIsDeterministic) {
    REFTRAIN_REQUIRE_GPU();
    CrossEntropyCase c(21);
    std::vector<float> want_lse(c.N);
    const cpu::CrossEntropyResult want =
        cpu::cross_entropy_forward(Tensor(want_lse.data(), DType::F32, {c.N}, "lse"),
                                   Tensor(c.logits.data(), DType::F32, {c.N, c.V}, "logits"),
                                   Tensor(c.targets.data(), DType::I64, {c.N}, "targets"));
    DeviceBuffer logits = to_device(c.logits), targets = to_device(c.targets);
    DeviceBuffer result = poisoned<cuda::CrossEntropyDeviceResult>(1);
    std::vector<float> lse_runs[2];
    cpu::CrossEntropyResult got_runs[2];
    for (int run = 0; run < 2; ++run) {
        DeviceBuffer lse = poisoned<float>(c.N);
        const Tensor targets_view = targets.tensor(DType::I64, {c.N}, "targets");
        cuda::cross_entropy_forward(lse.tensor(DType::F32, {c.N}, "lse"), logits.tensor(DType::F32, {c.N, c.V}, "logits"),
                                    targets_view, static_cast<cuda::CrossEntropyDeviceResult*>(result.data()));
        got_runs[run] = cuda::cross_entropy_result_to_host(
            static_cast<const cuda::CrossEntropyDeviceResult*>(result.data()), targets_view);
        lse_runs[run] = to_host<float>(lse);
    }
    expect_close(lse_runs[0], want_lse, 2e-7, "logsumexp");
    EXPECT_EQ(got_runs[0].supervised_tokens, want.supervised_tokens);
    EXPECT_FALSE(got_runs[0].no_supervised_tokens);
    EXPECT_NEAR(got_runs[0].loss, want.loss, 1e-6 * want.loss);
    EXPECT_EQ(std::memcmp(&got_runs[0].loss, &got_runs[1].loss, sizeof(double)), 0) << "loss differs between runs";
    EXPECT_EQ(lse_runs[0], lse_runs[1]) << "logsumexp differs between runs";
}

// dlogits starts from random values (the backward ADDS). expf on the device is within 2 ulp, glibc's
// within 1; the CPU build may also contract d += scale * p into an FMA (-march=native), which moves a
// result by half an ulp of the initial |d| (~6e-11) even where d cancels to ~0. Against the floor
// (1e-3 of the largest gradient, ~6e-5) that is ~1e-6: bound 1e-5 relative.
TEST(CudaOptim, CrossEntropyBackwardMatchesCpu) {
    REFTRAIN_REQUIRE_GPU();
    CrossEntropyCase c(31);
    const double dloss = 1.7;
    std::vector<float> lse(c.N);
    const Tensor logits_cpu(c.logits.data(), DType::F32, {c.N, c.V}, "logits");
    const Tensor targets_cpu(c.targets.data(), DType::I64, {c.N}, "targets");
    cpu::cross_entropy_forward(Tensor(lse.data(), DType::F32, {c.N}, "lse"), logits_cpu, targets_cpu);
    const std::vector<float> initial = random_floats(static_cast<size_t>(c.N * c.V), 32, -1e-3f, 1e-3f, 1e-5f);
    std::vector<float> want = initial;
    cpu::cross_entropy_backward(Tensor(want.data(), DType::F32, {c.N, c.V}, "dlogits"), logits_cpu,
                                Tensor(lse.data(), DType::F32, {c.N}, "lse"), targets_cpu, dloss);

    DeviceBuffer logits = to_device(c.logits), targets = to_device(c.targets), lse_device = poisoned<float>(c.N);
    DeviceBuffer result = poisoned<cuda::CrossEntropyDeviceResult>(1), dlogits = to_device(initial);
    auto* result_ptr = static_cast<cuda::CrossEntropyDeviceResult*>(result.data());
    const Tensor lse_view = lse_device.tensor(DType::F32, {c.N}, "lse");
    const Tensor logits_view = logits.tensor(DType::F32, {c.N, c.V}, "logits");
    const Tensor targets_view = targets.tensor(DType::I64, {c.N}, "targets");
    cuda::cross_entropy_forward(lse_view, logits_view, targets_view, result_ptr);
    cuda::cross_entropy_backward(dlogits.tensor(DType::F32, {c.N, c.V}, "dlogits"), logits_view, lse_view, targets_view,
                                 result_ptr, dloss);
    expect_close(to_host<float>(dlogits), want, 1e-5, "dlogits");
}

// Nothing supervised: loss exactly 0, the flag set, dlogits bitwise untouched (as the CPU).
TEST(CudaOptim, CrossEntropyWithoutSupervisedTokens) {
    REFTRAIN_REQUIRE_GPU();
    CrossEntropyCase c(41, /*supervise=*/false);
    DeviceBuffer logits = to_device(c.logits), targets = to_device(c.targets), lse = poisoned<float>(c.N);
    DeviceBuffer result = poisoned<cuda::CrossEntropyDeviceResult>(1);
    const std::vector<float> initial = random_floats(static_cast<size_t>(c.N * c.V), 42);
    DeviceBuffer dlogits = to_device(initial);
    auto* result_ptr = static_cast<cuda::CrossEntropyDeviceResult*>(result.data());
    const Tensor logits_view = logits.tensor(DType::F32, {c.N, c.V}, "logits");
    const Tensor targets_view = targets.tensor(DType::I64, {c.N}, "targets");
    const Tensor lse_view = lse.tensor(DType::F32, {c.N}, "lse");
    cuda::cross_entropy_forward(lse_view, logits_view, targets_view, result_ptr);
    const cpu::CrossEntropyResult got = cuda::cross_entropy_result_to_host(result_ptr, targets_view);
    EXPECT_EQ(got.loss, 0.0);
    EXPECT_EQ(got.supervised_tokens, 0);
    EXPECT_TRUE(got.no_supervised_tokens);
    cuda::cross_entropy_backward(dlogits.tensor(DType::F32, {c.N, c.V}, "dlogits"), logits_view, lse_view, targets_view,
                                 result_ptr, 1.0);
    EXPECT_EQ(to_host<float>(dlogits), initial);
}

// A target outside [0, V) that is not -100: the error names the row and the value, as the CPU's.
TEST(CudaOptim, CrossEntropyRejectsBadTargetNamingTheRow) {
    REFTRAIN_REQUIRE_GPU();
    CrossEntropyCase c(51);
    c.targets[3] = c.V;
    c.targets[9] = -7;
    DeviceBuffer logits = to_device(c.logits), targets = to_device(c.targets), lse = poisoned<float>(c.N);
    DeviceBuffer result = poisoned<cuda::CrossEntropyDeviceResult>(1);
    auto* result_ptr = static_cast<cuda::CrossEntropyDeviceResult*>(result.data());
    const Tensor targets_view = targets.tensor(DType::I64, {c.N}, "targets");
    cuda::cross_entropy_forward(lse.tensor(DType::F32, {c.N}, "lse"), logits.tensor(DType::F32, {c.N, c.V}, "logits"),
                                targets_view, result_ptr);
    try {
        cuda::cross_entropy_result_to_host(result_ptr, targets_view);
        ADD_FAILURE() << "a bad target was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("target 1000 at row 3 of 'targets'"), std::string::npos) << e.what();
    }
}

// ---- tracer statistics ------------------------------------------------------------------------------------------------

// 70 tensors (two batches of the 64-tensor launch), one of several chunks, one with inf and NaN, one
// all NaN, one BF16 (compared with the CPU stats of its widened values). abs_min, abs_max, nonfinite
// bitwise; rms 1e-6 relative (the CPU's fp32 lanes). Statistics land in pinned memory after one sync,
// and a second run gives the same bits.
TEST(CudaOptim, TensorStatsBatchedMatchesTracerAndIsDeterministic) {
    REFTRAIN_REQUIRE_GPU();
    std::vector<std::vector<float>> host;
    host.push_back(random_floats(300000, 61, -5.0f, 5.0f));  // 5 chunks of 65536
    host.push_back(random_floats(1, 62));
    std::vector<float> with_bad = random_floats(4097, 63);
    with_bad[7] = std::numeric_limits<float>::infinity();
    with_bad[4000] = -std::numeric_limits<float>::quiet_NaN();
    with_bad[12] = 1e30f;  // the finite largest, to check inf is kept out of abs_max
    host.push_back(with_bad);
    host.push_back(std::vector<float>(50, std::numeric_limits<float>::quiet_NaN()));
    for (int i = 0; i < 65; ++i) host.push_back(random_floats(100 + 37 * i, 1000 + i, -1e-3f, 1e-3f, 1e-6f));
    const size_t bf16_index = host.size();
    host.push_back(cuda_testing::rounded_bf16(random_floats(3000, 70)));

    std::vector<DeviceBuffer> device;
    std::vector<Tensor> views;
    for (size_t i = 0; i < host.size(); ++i) {
        const int64_t n = static_cast<int64_t>(host[i].size());
        if (i == bf16_index) {
            device.push_back(to_device(cuda_testing::to_bf16(host[i])));
            views.push_back(device.back().tensor(DType::BF16, {n}, "t" + std::to_string(i)));
        } else {
            device.push_back(to_device(host[i]));
            views.push_back(device.back().tensor(DType::F32, {n}, "t" + std::to_string(i)));
        }
    }
    DeviceBuffer stats_device = poisoned<cuda::TensorStatsRecord>(views.size());
    auto* stats_ptr = static_cast<cuda::TensorStatsRecord*>(stats_device.data());
    PinnedStats first(views.size()), second(views.size());
    cuda::tensor_stats_batched(views, stats_ptr, first.p);
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(0));
    cuda::tensor_stats_batched(views, stats_ptr, second.p);
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(0));
    for (size_t i = 0; i < host.size(); ++i) {
        const TensorStats want = tensor_stats(Tensor(host[i].data(), DType::F32, {static_cast<int64_t>(host[i].size())},
                                                     "t" + std::to_string(i)));
        const cuda::TensorStatsRecord& got = first.p[i];
        EXPECT_EQ(got.abs_min, want.abs_min) << "tensor " << i;
        EXPECT_EQ(got.abs_max, want.abs_max) << "tensor " << i;
        EXPECT_EQ(got.nonfinite, want.nonfinite) << "tensor " << i;
        EXPECT_NEAR(got.rms, want.rms, 1e-6 * want.rms) << "tensor " << i;
        EXPECT_EQ(std::memcmp(&first.p[i], &second.p[i], sizeof(cuda::TensorStatsRecord)), 0) << "tensor " << i;
    }
    EXPECT_EQ(first.p[2].nonfinite, 2);
    EXPECT_EQ(first.p[2].abs_max, 1e30f);
    EXPECT_EQ(first.p[3].rms, 0.0);  // nothing finite: all zeros

    std::vector<cuda::TensorStatsRecord> pageable(views.size());
    EXPECT_THROW(cuda::tensor_stats_batched(views, stats_ptr, pageable.data()), Error);
}

// ---- argument checks (no device needed) -----------------------------------------------------------------------------

TEST(CudaOptimArguments, RejectHostTensorsBadDtypesAndBadScales) {
    std::vector<float> a(12), b(12), c(12), d(12);
    const Tensor p(a.data(), DType::F32, {3, 4}, "w"), g(b.data(), DType::F32, {3, 4}, "grad:w");
    const Tensor m(c.data(), DType::F32, {3, 4}, "adam.m:w"), v(d.data(), DType::F32, {3, 4}, "adam.v:w");
    testing::expect_error([&] { cuda::adamw_step(p, g, m, v, {}, true); },
                          {"cuda::adamw_step", "'param'", "not a CUDA tensor"});
    // Fake device tensors (never dereferenced: every check below fails first).
    auto on_device = [](Tensor t) { t.device = Device::CUDA; return t; };
    const Tensor short_v = on_device(Tensor(d.data(), DType::F32, {11}, "adam.v:w"));
    testing::expect_error([&] { cuda::adamw_step(on_device(p), on_device(g), on_device(m), short_v, {}, true); },
                          {"cuda::adamw_step", "'adam.v:w' 11"});
    const std::vector<Tensor> grads = {on_device(g)};
    int32_t flag = 0;
    testing::expect_error([&] { cuda::unscale_and_check(grads, 0.0, &flag); },
                          {"cuda::unscale_and_check", "finite and > 0"});
    testing::expect_error([&] { cuda::unscale_and_check(grads, 1e39, &flag); },  // inf in fp32
                          {"cuda::unscale_and_check", "finite and > 0"});
    testing::expect_error([&] { cuda::cast_f32_to_bf16(on_device(Tensor(a.data(), DType::BF16, {11}, "out")), on_device(p)); },
                          {"cuda::cast_f32_to_bf16", "'out' has 11 elements"});
    testing::expect_error([&] { cuda::round_to_precision(on_device(p), DType::F64); },
                          {"cuda::round_to_precision", "F32, BF16 or F16"});
    std::vector<int64_t> targets(4);
    testing::expect_error(
        [&] {
            cuda::cross_entropy_forward(on_device(Tensor(a.data(), DType::F32, {3}, "lse")), on_device(p),
                                        on_device(Tensor(targets.data(), DType::I64, {4}, "targets")), nullptr);
        },
        {"cuda::cross_entropy_forward", "4 targets for 3 rows"});
}

}  // namespace
}  // namespace reftrain

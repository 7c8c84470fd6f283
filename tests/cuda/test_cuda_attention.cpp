// tests/cuda/test_cuda_attention.cpp — cuda::attention_forward/backward (kernels/cuda/ops.h), both
// backends, against cpu::attention_forward/backward.
//
// The CPU saves the (T, T) probabilities; the GPU saves lse (B, Hq, T) instead. The reference lse is
// computed here in fp64 from the same q and k (log sum_{s<=t} exp(q[t].k[s] / sqrt(D))). Each case
// draws random non-zero q, k, v, dout, poisons out and lse with NaN bytes, runs the forward, then the
// backward into dq, dk, dv prefilled with random values of about half the gradient's own size (so a
// backward that overwrites instead of adding is off by ~50%), then runs the backward a second time on
// the same buffers and compares with the CPU backward applied twice (the ADD, again). The GPU backward
// gets the GPU forward's out and lse, as in training.
//
// Comparison (tests/cuda/cuda_test_util.h expect_close): error_i = |gpu_i - ref_i| / max(|ref_i|, 1% of
// max_j |ref_j|). Bounds (the kernel ones checked against a host-thread emulation of these very
// kernels, each block run as 128 threads with real barriers and shuffles, since no GPU has run them:
// worst seen F32 4e-5 for out, 4.4e-6 for lse, 3.9e-5 for gradients; BF16 0.39% everywhere):
//   F32 kernel   out and gradients 1e-4, lse 2e-5: the same fp32 formulas in another order (online
//                softmax rescaled tile by tile, sequential dot products where the CPU's sgemm blocks
//                them, P recomputed as exp(S - lse)); outputs that cancel down to the 1% floor carry a
//                few ulps of their O(1) terms. 200x below a bf16 error.
//   BF16 kernel  2e-2 against the CPU run in fp32 on the bf16-rounded inputs and prefill: the kernel
//                rounds each stored value once to bf16 (2^-9 = 0.2%; 0.39% seen at the floor).
//   cuDNN        out and gradients normwise 1e-2 (kBoundCudnnNormwise: the per-element 2e-2 with a 1% floor
//                failed on the H200 at 7-22%, a few ulps of the tensor's maximum); lse 1e-3 (its exp2-based softmax and tensor-core accumulation order; a
//                base-2 lse would be off by 44%, a missing scale by far more). Its gradients are
//                flash attention's: R[t] = dout[t].out[t] from the stored BF16 out, where the CPU (and
//                the kernel) sum P dP exactly; where dP - R cancels that costs up to ~15% of a small
//                gradient element (seen in the emulation with that R). So cuDNN's dq, dk, dv are held
//                (normwise) to that same formula evaluated in fp64 on the GPU's own out (it also rounds P
//                and dS to bf16 for its tensor-core products: a few times 2^-9, with margin).
// Determinism: two runs of forward + backward must give the same bytes: the kernel backend always,
// the cuDNN backward in deterministic mode (cuda::set_deterministic(true)).
// Without a CUDA device every test here is SKIPPED except CudaAttentionArguments, which runs anywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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
using cuda_testing::expect_close;

constexpr double kFloorFraction = 1e-2;
constexpr double kBoundF32Forward = 1e-4;
constexpr double kBoundF32Backward = 1e-4;
constexpr double kBoundBF16 = 2e-2;
constexpr double kBoundLseKernel = 2e-5;
constexpr double kBoundLseCudnn = 1e-3;
// cuDNN's out and gradients, normwise (|got - want| / max |want|): it rounds P and dS to bf16 for its
// tensor-core products and its dQ, dK, dV to bf16 in scratch before the ADD, so its error is a few
// bf16 ulps of the tensor's LARGEST values, which the 1% floor turns into 7-22% at small elements (the
// first H200 run: out 0.07-0.10, gradients up to 0.22 at the floor, i.e. about 1e-3 to 2e-3 of the
// tensor's maximum). 1e-2 is 2.5 ulps at the maximum; a wrong mask, scale or layout is off by O(1).
constexpr double kBoundCudnnNormwise = 1e-2;

struct AttentionCase {
    int64_t B, T, Hq, Hkv, D;
    int64_t q_size() const { return B * T * Hq * D; }
    int64_t kv_size() const { return B * T * Hkv * D; }
    int64_t lse_size() const { return B * Hq * T; }
    std::string name() const {
        return concat("B", B, "_T", T, "_Hq", Hq, "_Hkv", Hkv, "_D", D);
    }
};

// Odd T everywhere (no tile is full at the end); GQA groups 2, 3 and 1; head_dim 32, 48 (not a multiple
// of 32: partial lanes), 64 and 128 (the limit).
const AttentionCase kCases[] = {
    {2, 37, 4, 2, 32},
    {1, 70, 6, 2, 48},
    {1, 45, 3, 1, 64},
    {2, 33, 2, 2, 128},
};

using cuda_testing::download_as;
using cuda_testing::host;
using cuda_testing::poisoned_as;
using cuda_testing::representable;
using cuda_testing::upload_as;

std::vector<float> scaled(std::vector<float> values, float factor) {
    for (float& v : values) v *= factor;
    return values;
}

float max_abs(const std::vector<float>& values) {
    float m = 0.0f;
    for (float v : values) m = std::max(m, std::fabs(v));
    return m;
}

// The inputs of one case, already representable in `dtype`.
struct Inputs {
    std::vector<float> q, k, v, dout;
    std::vector<float> dq0, dk0, dv0;  // the prefill of the gradients
};

// The CPU's answer; dq, dk, dv after one backward (`once`) and after two (`twice`).
struct Reference {
    std::vector<float> out, lse, dq_once, dk_once, dv_once, dq_twice, dk_twice, dv_twice;
    std::vector<double> dq, dk, dv;  // the gradient alone (a backward into zeros)
};

// The CPU backward: dq, dk, dv += gradient. probs from the CPU forward.
void cpu_backward(const AttentionCase& c, Inputs& in, std::vector<float>& probs, std::vector<float>& dq,
                  std::vector<float>& dk, std::vector<float>& dv) {
    const int64_t B = c.B, T = c.T, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
    cpu::attention_backward(host(dq, {B, T, Hq, D}, "dq"), host(dk, {B, T, Hkv, D}, "dk"),
                            host(dv, {B, T, Hkv, D}, "dv"), host(in.dout, {B, T, Hq, D}, "dout"),
                            host(probs, {B, Hq, T, T}, "probs"), host(in.q, {B, T, Hq, D}, "q"),
                            host(in.k, {B, T, Hkv, D}, "k"), host(in.v, {B, T, Hkv, D}, "v"));
}

// lse[b, h, t] = log sum_{s<=t} exp(q[b,t,h].k[b,s,g] / sqrt(D)) in fp64.
std::vector<float> reference_lse(const AttentionCase& c, const Inputs& in) {
    std::vector<float> lse(c.lse_size());
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
    const int64_t group = c.Hq / c.Hkv;
    for (int64_t b = 0; b < c.B; ++b)
        for (int64_t h = 0; h < c.Hq; ++h)
            for (int64_t t = 0; t < c.T; ++t) {
                std::vector<double> scores(t + 1);
                for (int64_t s = 0; s <= t; ++s) {
                    double dot = 0.0;
                    for (int64_t d = 0; d < c.D; ++d)
                        dot += static_cast<double>(in.q[((b * c.T + t) * c.Hq + h) * c.D + d]) *
                               in.k[((b * c.T + s) * c.Hkv + h / group) * c.D + d];
                    scores[s] = scale * dot;
                }
                const double m = *std::max_element(scores.begin(), scores.end());
                double sum = 0.0;
                for (double x : scores) sum += std::exp(x - m);
                lse[(b * c.Hq + h) * c.T + t] = static_cast<float>(m + std::log(sum));
            }
    return lse;
}

// The gradient flash attention (cuDNN) computes, in fp64: the CPU's formulas with R[t] = dout[t].out[t]
// taken from `out_used` (the GPU's stored out) instead of sum_s P[t, s] dP[t, s]. Returns the gradient
// alone (no prefill), in the (B, T, H, D) layouts of q and k.
struct Gradients {
    std::vector<double> dq, dk, dv;
};

Gradients flash_gradients(const AttentionCase& c, const Inputs& in, const std::vector<float>& out_used) {
    Gradients g{std::vector<double>(c.q_size()), std::vector<double>(c.kv_size()), std::vector<double>(c.kv_size())};
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
    const int64_t group = c.Hq / c.Hkv, D = c.D;
    auto q_at = [&](int64_t b, int64_t t, int64_t h) { return ((b * c.T + t) * c.Hq + h) * D; };
    auto kv_at = [&](int64_t b, int64_t s, int64_t kv_head) { return ((b * c.T + s) * c.Hkv + kv_head) * D; };
    for (int64_t b = 0; b < c.B; ++b)
        for (int64_t h = 0; h < c.Hq; ++h)
            for (int64_t t = 0; t < c.T; ++t) {
                const int64_t kv_head = h / group, qi = q_at(b, t, h);
                std::vector<double> p(t + 1);
                for (int64_t s = 0; s <= t; ++s) {
                    double dot = 0.0;
                    for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(in.q[qi + d]) * in.k[kv_at(b, s, kv_head) + d];
                    p[s] = scale * dot;
                }
                const double m = *std::max_element(p.begin(), p.end());
                double sum = 0.0;
                for (double& x : p) sum += (x = std::exp(x - m));
                for (double& x : p) x /= sum;
                double r = 0.0;
                for (int64_t d = 0; d < D; ++d) r += static_cast<double>(in.dout[qi + d]) * out_used[qi + d];
                for (int64_t s = 0; s <= t; ++s) {
                    const int64_t ki = kv_at(b, s, kv_head);
                    double dp = 0.0;
                    for (int64_t d = 0; d < D; ++d) dp += static_cast<double>(in.dout[qi + d]) * in.v[ki + d];
                    const double ds = p[s] * (dp - r);
                    for (int64_t d = 0; d < D; ++d) {
                        g.dq[qi + d] += scale * ds * in.k[ki + d];
                        g.dk[ki + d] += scale * ds * in.q[qi + d];
                        g.dv[ki + d] += p[s] * in.dout[qi + d];
                    }
                }
            }
    return g;
}

// prefill + times * gradient, rounded once to float.
std::vector<float> accumulated(const std::vector<float>& prefill, const std::vector<double>& gradient, int times) {
    std::vector<float> result(prefill.size());
    for (size_t i = 0; i < prefill.size(); ++i) result[i] = static_cast<float>(prefill[i] + times * gradient[i]);
    return result;
}

Inputs make_inputs(const AttentionCase& c, DType dt, uint64_t seed) {
    Inputs in;
    in.q = representable(cuda_testing::random_floats(c.q_size(), seed + 1), dt);
    in.k = representable(cuda_testing::random_floats(c.kv_size(), seed + 2), dt);
    in.v = representable(cuda_testing::random_floats(c.kv_size(), seed + 3), dt);
    in.dout = representable(cuda_testing::random_floats(c.q_size(), seed + 4), dt);
    // Prefill at half the size of each gradient, measured with a CPU backward from zero.
    const int64_t B = c.B, T = c.T, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
    std::vector<float> out(c.q_size()), probs(B * Hq * T * T);
    cpu::attention_forward(host(out, {B, T, Hq, D}, "out"), host(probs, {B, Hq, T, T}, "probs"),
                           host(in.q, {B, T, Hq, D}, "q"), host(in.k, {B, T, Hkv, D}, "k"),
                           host(in.v, {B, T, Hkv, D}, "v"));
    std::vector<float> dq(c.q_size()), dk(c.kv_size()), dv(c.kv_size());
    cpu_backward(c, in, probs, dq, dk, dv);
    in.dq0 = representable(scaled(cuda_testing::random_floats(c.q_size(), seed + 5, -1.0f, 1.0f), 0.5f * max_abs(dq)), dt);
    in.dk0 = representable(scaled(cuda_testing::random_floats(c.kv_size(), seed + 6, -1.0f, 1.0f), 0.5f * max_abs(dk)), dt);
    in.dv0 = representable(scaled(cuda_testing::random_floats(c.kv_size(), seed + 7, -1.0f, 1.0f), 0.5f * max_abs(dv)), dt);
    return in;
}

Reference cpu_reference(const AttentionCase& c, Inputs& in) {
    const int64_t B = c.B, T = c.T, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
    Reference ref;
    ref.out.resize(c.q_size());
    std::vector<float> probs(B * Hq * T * T);
    cpu::attention_forward(host(ref.out, {B, T, Hq, D}, "out"), host(probs, {B, Hq, T, T}, "probs"),
                           host(in.q, {B, T, Hq, D}, "q"), host(in.k, {B, T, Hkv, D}, "k"),
                           host(in.v, {B, T, Hkv, D}, "v"));
    ref.lse = reference_lse(c, in);
    ref.dq_once = in.dq0;
    ref.dk_once = in.dk0;
    ref.dv_once = in.dv0;
    cpu_backward(c, in, probs, ref.dq_once, ref.dk_once, ref.dv_once);
    ref.dq_twice = ref.dq_once;
    ref.dk_twice = ref.dk_once;
    ref.dv_twice = ref.dv_once;
    cpu_backward(c, in, probs, ref.dq_twice, ref.dk_twice, ref.dv_twice);
    std::vector<float> dq(c.q_size(), 0.0f), dk(c.kv_size(), 0.0f), dv(c.kv_size(), 0.0f);
    cpu_backward(c, in, probs, dq, dk, dv);
    ref.dq.assign(dq.begin(), dq.end());
    ref.dk.assign(dk.begin(), dk.end());
    ref.dv.assign(dv.begin(), dv.end());
    return ref;
}

// One GPU run: forward, backward, backward again. Every result is downloaded as fp32 values and also
// as raw bytes (for the determinism tests).
struct GpuRun {
    std::vector<float> out, lse, dq_once, dk_once, dv_once, dq_twice, dk_twice, dv_twice;
    std::vector<uint8_t> bytes;  // out, lse, dq, dk, dv after the first backward, concatenated
};

std::vector<uint8_t> raw(const DeviceBuffer& buffer) { return cuda_testing::to_host<uint8_t>(buffer); }

GpuRun run_gpu(const AttentionCase& c, DType dt, const Inputs& in) {
    const int64_t B = c.B, T = c.T, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
    DeviceBuffer q = upload_as(in.q, dt), k = upload_as(in.k, dt), v = upload_as(in.v, dt);
    DeviceBuffer dout = upload_as(in.dout, dt);
    DeviceBuffer out = poisoned_as(c.q_size(), dt), lse = cuda_testing::poisoned<float>(c.lse_size());
    const Tensor q_t = q.tensor(dt, {B, T, Hq, D}, "q"), k_t = k.tensor(dt, {B, T, Hkv, D}, "k");
    const Tensor v_t = v.tensor(dt, {B, T, Hkv, D}, "v"), dout_t = dout.tensor(dt, {B, T, Hq, D}, "dout");
    const Tensor out_t = out.tensor(dt, {B, T, Hq, D}, "out"), lse_t = lse.tensor(DType::F32, {B, Hq, T}, "lse");
    cuda::attention_forward(out_t, lse_t, q_t, k_t, v_t);

    DeviceBuffer dq = upload_as(in.dq0, dt), dk = upload_as(in.dk0, dt), dv = upload_as(in.dv0, dt);
    const Tensor dq_t = dq.tensor(dt, {B, T, Hq, D}, "dq"), dk_t = dk.tensor(dt, {B, T, Hkv, D}, "dk");
    const Tensor dv_t = dv.tensor(dt, {B, T, Hkv, D}, "dv");
    cuda::attention_backward(dq_t, dk_t, dv_t, dout_t, out_t, lse_t, q_t, k_t, v_t);

    GpuRun run;
    run.out = download_as(out, dt);
    run.lse = cuda_testing::to_host<float>(lse);
    run.dq_once = download_as(dq, dt);
    run.dk_once = download_as(dk, dt);
    run.dv_once = download_as(dv, dt);
    for (const DeviceBuffer* buffer : {&out, &lse, &dq, &dk, &dv}) {
        const std::vector<uint8_t> b = raw(*buffer);
        run.bytes.insert(run.bytes.end(), b.begin(), b.end());
    }
    cuda::attention_backward(dq_t, dk_t, dv_t, dout_t, out_t, lse_t, q_t, k_t, v_t);
    run.dq_twice = download_as(dq, dt);
    run.dk_twice = download_as(dk, dt);
    run.dv_twice = download_as(dv, dt);
    return run;
}

// Sets the attention backend (and determinism mode) for one scope, then restores both.
class BackendScope {
public:
    BackendScope(cuda::AttentionBackend backend, bool deterministic)
        : backend_(cuda::attention_backend()), deterministic_(cuda::deterministic()) {
        cuda::set_attention_backend(backend);
        cuda::set_deterministic(deterministic);
    }
    ~BackendScope() {
        cuda::set_attention_backend(backend_);
        cuda::set_deterministic(deterministic_);
    }

private:
    cuda::AttentionBackend backend_;
    bool deterministic_;
};

// Forward and backward (twice) on the GPU against the references. With `flash_reference` (cuDNN) the
// gradients are compared with flash_gradients() on the GPU's out instead of the CPU's backward.
void compare_with_cpu(const AttentionCase& c, DType dt, const char* backend, double lse_bound, uint64_t seed,
                      bool flash_reference = false) {
    Inputs in = make_inputs(c, dt, seed);
    Reference ref = cpu_reference(c, in);
    const GpuRun gpu = run_gpu(c, dt, in);
    if (flash_reference) {
        const Gradients g = flash_gradients(c, in, gpu.out);
        ref.dq_once = accumulated(in.dq0, g.dq, 1);
        ref.dk_once = accumulated(in.dk0, g.dk, 1);
        ref.dv_once = accumulated(in.dv0, g.dv, 1);
        ref.dq_twice = accumulated(in.dq0, g.dq, 2);
        ref.dk_twice = accumulated(in.dk0, g.dk, 2);
        ref.dv_twice = accumulated(in.dv0, g.dv, 2);
        ref.dq = g.dq, ref.dk = g.dk, ref.dv = g.dv;
    }
    if (dt == DType::BF16) {
        // A BF16 gradient is rounded to bf16 when each backward stores it, so "prefill + 2 gradients"
        // in fp32 is not what a correct kernel holds: where the gradient cancels the prefill, the first
        // call's rounding (2^-9 of |prefill + gradient|) is many times 2^-9 of the small final value
        // (3-4% seen on the H200 against the fp32 sum). The second call is held to what it must do: add
        // the gradient to whatever the first call left.
        ref.dq_twice = accumulated(gpu.dq_once, ref.dq, 1);
        ref.dk_twice = accumulated(gpu.dk_once, ref.dk, 1);
        ref.dv_twice = accumulated(gpu.dv_once, ref.dv, 1);
    }
    const double forward_bound = flash_reference ? kBoundCudnnNormwise : dt == DType::F32 ? kBoundF32Forward : kBoundBF16;
    const double backward_bound = flash_reference ? kBoundCudnnNormwise : dt == DType::F32 ? kBoundF32Backward : kBoundBF16;
    const double floor = flash_reference ? 1.0 : kFloorFraction;  // 1.0: normwise
    const std::string what = concat(backend, " ", dtype_name(dt), " ", c.name(), ": ");
    auto compare = [&](const std::vector<float>& got, const std::vector<float>& want, double bound,
                       const std::string& label) { expect_close(got, want, bound, label, floor); };
    compare(gpu.out, ref.out, forward_bound, what + "out");
    expect_close(gpu.lse, ref.lse, lse_bound, what + "lse", kFloorFraction);
    compare(gpu.dq_once, ref.dq_once, backward_bound, what + "dq (prefill + gradient)");
    compare(gpu.dk_once, ref.dk_once, backward_bound, what + "dk (prefill + gradient)");
    compare(gpu.dv_once, ref.dv_once, backward_bound, what + "dv (prefill + gradient)");
    compare(gpu.dq_twice, ref.dq_twice, backward_bound, what + "dq (prefill + 2 gradients)");
    compare(gpu.dk_twice, ref.dk_twice, backward_bound, what + "dk (prefill + 2 gradients)");
    compare(gpu.dv_twice, ref.dv_twice, backward_bound, what + "dv (prefill + 2 gradients)");
}

#define REFTRAIN_REQUIRE_CUDNN_ATTENTION()                                                               \
    do {                                                                                                 \
        if (!cuda::cudnn_attention_available())                                                          \
            GTEST_SKIP() << "cuDNN attention is not compiled in (CMake found no cudnn_frontend.h or "     \
                            "libcudnn; scripts/setup.sh installs PyPI's nvidia-cudnn-frontend headers)"; \
    } while (0)

class CudaAttention : public ::testing::TestWithParam<DType> {};

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaAttention, ::testing::Values(DType::F32, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& info) { return std::string(dtype_name(info.param)); });

TEST_P(CudaAttention, KernelMatchesCpu) {
    REFTRAIN_REQUIRE_GPU();
    BackendScope scope(cuda::AttentionBackend::kernel, true);
    uint64_t seed = 100;
    for (const AttentionCase& c : kCases) compare_with_cpu(c, GetParam(), "kernel", kBoundLseKernel, seed += 10);
}

TEST_P(CudaAttention, KernelIsBitwiseRepeatable) {
    REFTRAIN_REQUIRE_GPU();
    BackendScope scope(cuda::AttentionBackend::kernel, false);  // the kernels are deterministic either way
    const AttentionCase c{2, 37, 6, 2, 64};
    const Inputs in = make_inputs(c, GetParam(), 300);
    const GpuRun first = run_gpu(c, GetParam(), in), second = run_gpu(c, GetParam(), in);
    EXPECT_TRUE(first.bytes == second.bytes) << "two kernel runs of forward + backward differ in their bytes";
}

TEST(CudaAttentionCudnn, MatchesCpu) {
    REFTRAIN_REQUIRE_GPU();
    REFTRAIN_REQUIRE_CUDNN_ATTENTION();
    BackendScope scope(cuda::AttentionBackend::cudnn, true);
    uint64_t seed = 200;
    for (const AttentionCase& c : kCases)
        compare_with_cpu(c, DType::BF16, "cudnn", kBoundLseCudnn, seed += 10, /*flash_reference=*/true);
}

TEST(CudaAttentionCudnn, NonDeterministicModeMatchesCpu) {
    REFTRAIN_REQUIRE_GPU();
    REFTRAIN_REQUIRE_CUDNN_ATTENTION();
    BackendScope scope(cuda::AttentionBackend::cudnn, false);
    compare_with_cpu(kCases[0], DType::BF16, "cudnn (non-deterministic)", kBoundLseCudnn, 250,
                     /*flash_reference=*/true);
}

// With cudnn chosen, shapes cuDNN refuses (head_dim not a multiple of 8; T = 1) run on the kernels,
// which sum R exactly: they match the CPU's own backward at the BF16 bound.
TEST(CudaAttentionCudnn, ShapesCudnnRefusesRunOnTheKernels) {
    REFTRAIN_REQUIRE_GPU();
    REFTRAIN_REQUIRE_CUDNN_ATTENTION();
    BackendScope scope(cuda::AttentionBackend::cudnn, true);
    compare_with_cpu({1, 19, 2, 1, 20}, DType::BF16, "cudnn chosen, head_dim 20", kBoundLseKernel, 260);
    compare_with_cpu({2, 1, 2, 1, 64}, DType::BF16, "cudnn chosen, T 1", kBoundLseKernel, 270);
}

TEST(CudaAttentionCudnn, DeterministicBackwardIsBitwiseRepeatable) {
    REFTRAIN_REQUIRE_GPU();
    REFTRAIN_REQUIRE_CUDNN_ATTENTION();
    BackendScope scope(cuda::AttentionBackend::cudnn, true);
    const AttentionCase c{2, 130, 6, 2, 64};  // several of cuDNN's key tiles, so dQ sums across tiles
    const Inputs in = make_inputs(c, DType::BF16, 400);
    const GpuRun first = run_gpu(c, DType::BF16, in), second = run_gpu(c, DType::BF16, in);
    EXPECT_TRUE(first.bytes == second.bytes) << "two cuDNN runs in deterministic mode differ in their bytes";
}

// The two backends' lse follow one convention (natural log of the scaled scores), so a forward on one
// may feed a backward on the other: cuDNN's forward, then the kernel's backward.
TEST(CudaAttentionCudnn, LseIsInterchangeableWithTheKernel) {
    REFTRAIN_REQUIRE_GPU();
    REFTRAIN_REQUIRE_CUDNN_ATTENTION();
    const AttentionCase c = kCases[0];
    const int64_t B = c.B, T = c.T, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
    Inputs in = make_inputs(c, DType::BF16, 500);
    const Reference ref = cpu_reference(c, in);
    const DType dt = DType::BF16;
    DeviceBuffer q = upload_as(in.q, dt), k = upload_as(in.k, dt), v = upload_as(in.v, dt);
    DeviceBuffer dout = upload_as(in.dout, dt);
    DeviceBuffer out = poisoned_as(c.q_size(), dt), lse = cuda_testing::poisoned<float>(c.lse_size());
    DeviceBuffer dq = upload_as(in.dq0, dt), dk = upload_as(in.dk0, dt), dv = upload_as(in.dv0, dt);
    const Tensor q_t = q.tensor(dt, {B, T, Hq, D}, "q"), k_t = k.tensor(dt, {B, T, Hkv, D}, "k");
    const Tensor v_t = v.tensor(dt, {B, T, Hkv, D}, "v"), out_t = out.tensor(dt, {B, T, Hq, D}, "out");
    const Tensor lse_t = lse.tensor(DType::F32, {B, Hq, T}, "lse");
    {
        BackendScope scope(cuda::AttentionBackend::cudnn, true);
        cuda::attention_forward(out_t, lse_t, q_t, k_t, v_t);
    }
    {
        BackendScope scope(cuda::AttentionBackend::kernel, true);
        cuda::attention_backward(dq.tensor(dt, {B, T, Hq, D}, "dq"), dk.tensor(dt, {B, T, Hkv, D}, "dk"),
                                 dv.tensor(dt, {B, T, Hkv, D}, "dv"), dout.tensor(dt, {B, T, Hq, D}, "dout"),
                                 out_t, lse_t, q_t, k_t, v_t);
    }
    expect_close(cuda_testing::to_host<float>(lse), ref.lse, kBoundLseCudnn, "cudnn lse", kFloorFraction);
    expect_close(download_as(dq, dt), ref.dq_once, kBoundBF16, "kernel dq from cudnn lse", kFloorFraction);
    expect_close(download_as(dk, dt), ref.dk_once, kBoundBF16, "kernel dk from cudnn lse", kFloorFraction);
    expect_close(download_as(dv, dt), ref.dv_once, kBoundBF16, "kernel dv from cudnn lse", kFloorFraction);
}

// Runs anywhere: every check fails before a kernel is launched or the device is touched.
TEST(CudaAttentionArguments, RejectBadShapesHeadDimsHostTensorsAndNullGradients) {
    auto on_device = [](Tensor t) {
        t.device = Device::CUDA;
        return t;
    };
    const int64_t B = 1, T = 3, Hq = 4, Hkv = 2, D = 8;
    std::vector<float> qs(B * T * Hq * 160), ks(B * T * Hkv * 160), vs(B * T * Hkv * 160), os(B * T * Hq * 160);
    std::vector<float> ls(B * Hq * T);
    const Tensor q = on_device(Tensor(qs.data(), DType::F32, {B, T, Hq, D}, "q"));
    const Tensor k = on_device(Tensor(ks.data(), DType::F32, {B, T, Hkv, D}, "k"));
    const Tensor v = on_device(Tensor(vs.data(), DType::F32, {B, T, Hkv, D}, "v"));
    const Tensor out = on_device(Tensor(os.data(), DType::F32, {B, T, Hq, D}, "out"));
    const Tensor lse = on_device(Tensor(ls.data(), DType::F32, {B, Hq, T}, "lse"));

    // A host tensor.
    testing::expect_error([&] { cuda::attention_forward(out, lse, Tensor(qs.data(), DType::F32, {B, T, Hq, D}, "q"), k, v); },
                          {"cuda::attention_forward", "'q'", "not a CUDA tensor"});
    // k with the wrong sequence length.
    testing::expect_error(
        [&] { cuda::attention_forward(out, lse, q, on_device(Tensor(ks.data(), DType::F32, {B, T - 1, Hkv, D}, "k")), v); },
        {"cuda::attention_forward", "'k'"});
    // lse of the wrong shape, then the wrong dtype.
    testing::expect_error(
        [&] { cuda::attention_forward(out, on_device(Tensor(ls.data(), DType::F32, {B, T, Hq}, "lse")), q, k, v); },
        {"cuda::attention_forward", "'lse'"});
    std::vector<uint16_t> ls16(B * Hq * T);
    testing::expect_error(
        [&] { cuda::attention_forward(out, on_device(Tensor(ls16.data(), DType::BF16, {B, Hq, T}, "lse")), q, k, v); },
        {"cuda::attention_forward", "lse"});
    // Query heads not a multiple of the key/value heads.
    const Tensor k3 = on_device(Tensor(ks.data(), DType::F32, {B, T, 3, D}, "k"));
    testing::expect_error([&] { cuda::attention_forward(out, lse, q, k3, k3); },
                          {"cuda::attention_forward", "4 query heads", "3 key/value heads"});
    // head_dim 160 > 128.
    const Tensor q160 = on_device(Tensor(qs.data(), DType::F32, {B, T, Hq, 160}, "q"));
    const Tensor k160 = on_device(Tensor(ks.data(), DType::F32, {B, T, Hkv, 160}, "k"));
    const Tensor v160 = on_device(Tensor(vs.data(), DType::F32, {B, T, Hkv, 160}, "v"));
    const Tensor o160 = on_device(Tensor(os.data(), DType::F32, {B, T, Hq, 160}, "out"));
    testing::expect_error([&] { cuda::attention_forward(o160, lse, q160, k160, v160); },
                          {"cuda::attention_forward", "head_dim 160", "'q'", "128"});
    // Backward: a null gradient, and dk of the wrong shape.
    std::vector<float> gq(qs.size()), gk(ks.size()), gv(vs.size()), go(os.size());
    const Tensor dq = on_device(Tensor(gq.data(), DType::F32, {B, T, Hq, D}, "dq"));
    const Tensor dk = on_device(Tensor(gk.data(), DType::F32, {B, T, Hkv, D}, "dk"));
    const Tensor dv = on_device(Tensor(gv.data(), DType::F32, {B, T, Hkv, D}, "dv"));
    const Tensor dout = on_device(Tensor(go.data(), DType::F32, {B, T, Hq, D}, "dout"));
    testing::expect_error([&] { cuda::attention_backward(dq, Tensor(), dv, dout, out, lse, q, k, v); },
                          {"cuda::attention_backward", "'dk'", "null"});
    testing::expect_error(
        [&] { cuda::attention_backward(dq, on_device(Tensor(gk.data(), DType::F32, {B, T, Hq, D}, "dk")), dv, dout, out,
                                       lse, q, k, v); },
        {"cuda::attention_backward", "'dk'"});
    testing::expect_error([&] { cuda::attention_backward(dq, dk, dv, dout, out, lse, q, k, v160); },
                          {"cuda::attention_backward", "'v'"});

    // Choosing cuDNN without it compiled in says how to get it; with it, the choice round-trips.
    const cuda::AttentionBackend before = cuda::attention_backend();
    if (!cuda::cudnn_attention_available()) {
        testing::expect_error([] { cuda::set_attention_backend(cuda::AttentionBackend::cudnn); },
                              {"cuda::set_attention_backend", "scripts/setup.sh", "nvidia-cudnn-frontend"});
        EXPECT_EQ(before, cuda::AttentionBackend::kernel);
    } else {
        cuda::set_attention_backend(cuda::AttentionBackend::cudnn);
        EXPECT_EQ(cuda::attention_backend(), cuda::AttentionBackend::cudnn);
        cuda::set_attention_backend(before);
    }
}

}  // namespace
}  // namespace reftrain

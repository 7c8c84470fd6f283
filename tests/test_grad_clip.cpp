// tests/test_grad_clip.cpp — train/grad_clip.h: the global norm against a brute-force fp64 sum, the
// clipping rule (scaled to max_norm, pre-clip norm returned), no change under the limit, the off
// switch, and the same bits whatever the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include <omp.h>

#include "kernels/arena.h"
#include "kernels/random.h"
#include "train/grad_clip.h"

namespace reftrain {
namespace {

// A gradient arena with mixed dtypes and a tensor longer than one accumulation chunk, filled with
// normals of standard deviation `scale`.
void fill_gradients(Arena& grads, double scale, uint64_t seed) {
    grads.add("grad:a", DType::F32, {3, 7});
    grads.add("grad:b", DType::F64, {5});
    grads.add("grad:c", DType::F32, {10000});  // several chunks plus a partial one
    grads.add("grad:d", DType::F64, {2, 2, 3});
    grads.allocate();
    Rng rng(seed);
    for (const Tensor& t : grads.tensors()) {
        for (int64_t i = 0; i < t.numel(); ++i) {
            const double v = scale * rng.normal();
            if (t.dtype == DType::F32) t.ptr<float>()[i] = static_cast<float>(v);
            else t.ptr<double>()[i] = v;
        }
    }
}

// The definition, element by element, in fp64.
double brute_force_norm(const Arena& grads) {
    double sum = 0.0;
    for (const Tensor& t : grads.tensors()) {
        for (int64_t i = 0; i < t.numel(); ++i) {
            const double v = t.dtype == DType::F32 ? t.ptr<float>()[i] : t.ptr<double>()[i];
            sum += v * v;
        }
    }
    return std::sqrt(sum);
}

std::vector<std::byte> snapshot(const Arena& a) {
    return std::vector<std::byte>(a.data(), a.data() + a.nbytes());
}

TEST(GradClip, NormEqualsBruteForceFp64Norm) {
    Arena grads("gradients");
    fill_gradients(grads, 0.5, 1);
    const double expected = brute_force_norm(grads);
    // Same terms, summed in another grouping: equal to rounding, far below fp32 resolution.
    EXPECT_NEAR(global_grad_norm(grads), expected, 1e-12 * expected);
    EXPECT_GT(expected, 10.0);  // the data is not degenerate
}

TEST(GradClip, SameBitsForAnyThreadCount) {
    Arena grads("gradients");
    fill_gradients(grads, 1.0, 2);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const double one_thread = global_grad_norm(grads);
    omp_set_num_threads(4);
    const double four_threads = global_grad_norm(grads);
    omp_set_num_threads(saved);
    EXPECT_EQ(std::memcmp(&one_thread, &four_threads, sizeof(double)), 0) << one_thread << " vs " << four_threads;
}

TEST(GradClip, ClipsToMaxNormAndReturnsThePreClipNorm) {
    Arena grads("gradients");
    fill_gradients(grads, 1.0, 3);
    const double before = global_grad_norm(grads);
    ASSERT_GT(before, 50.0);
    // Keep a copy to check every element is scaled by the same factor.
    Arena original("original");
    fill_gradients(original, 1.0, 3);

    const double max_norm = 1.0;
    const double returned = clip_grad_norm(grads, max_norm);
    EXPECT_EQ(returned, before);  // the pre-clip norm, the one to log
    const double after = global_grad_norm(grads);
    EXPECT_NEAR(after, max_norm, 1e-6 * max_norm);
    EXPECT_LT(after, max_norm + 1e-6);  // torch's rule divides by norm + 1e-6: never above the limit

    const double scale = max_norm / (before + 1e-6);
    for (size_t t = 0; t < grads.size(); ++t) {
        const Tensor& g = grads.at(t);
        const Tensor& o = original.at(t);
        for (int64_t i = 0; i < g.numel(); ++i) {
            if (g.dtype == DType::F32) {
                ASSERT_EQ(g.ptr<float>()[i], o.ptr<float>()[i] * static_cast<float>(scale)) << g.name << "[" << i << "]";
            } else {
                ASSERT_EQ(g.ptr<double>()[i], o.ptr<double>()[i] * scale) << g.name << "[" << i << "]";
            }
        }
    }
}

TEST(GradClip, LeavesGradientsUnderTheLimitUnchanged) {
    Arena grads("gradients");
    fill_gradients(grads, 1e-3, 4);
    const std::vector<std::byte> before = snapshot(grads);
    const double norm = global_grad_norm(grads);
    ASSERT_LT(norm, 1.0);
    EXPECT_EQ(clip_grad_norm(grads, 1.0), norm);
    EXPECT_EQ(snapshot(grads), before);
}

TEST(GradClip, NonPositiveMaxNormDisablesClipping) {
    Arena grads("gradients");
    fill_gradients(grads, 1.0, 5);
    const std::vector<std::byte> before = snapshot(grads);
    const double norm = global_grad_norm(grads);
    EXPECT_EQ(clip_grad_norm(grads, 0.0), norm);
    EXPECT_EQ(clip_grad_norm(grads, -1.0), norm);
    EXPECT_EQ(snapshot(grads), before);
}

TEST(GradClip, NonFiniteNormIsReturnedAndGradientsAreLeftForTheSkipPolicy) {
    Arena grads("gradients");
    fill_gradients(grads, 1.0, 6);
    grads.get("grad:c").ptr<float>()[17] = INFINITY;
    const std::vector<std::byte> before = snapshot(grads);
    EXPECT_TRUE(std::isinf(clip_grad_norm(grads, 1.0)));
    EXPECT_EQ(snapshot(grads), before);  // not zeroed by a scale of 1 / inf
}

}  // namespace
}  // namespace reftrain

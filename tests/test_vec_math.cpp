// tests/test_vec_math.cpp — kernels/cpu/vec_math.h. The vectorised fp32 exp: its error against fp64,
// the special values, and that an element's result does not depend on where it sits in an array. The
// row reductions: accurate for every length, in the documented lane order (so the same bits wherever a
// row sits), and a maximum that is exact, with NaN rows still NaN after the shift.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/vec_math.h"
#include "kernels/random.h"

namespace reftrain {
namespace {

// Distance in units in the last place between two finite positive floats.
int64_t ulps(float a, float b) {
    int32_t ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return std::llabs(static_cast<int64_t>(ia) - static_cast<int64_t>(ib));
}

TEST(VecMath, ExpIsWithinOneUlpOfTheCorrectlyRoundedValue) {
    Rng rng(1);
    std::vector<float> x(100000), y(x.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(-87.0 + 175.0 * rng.uniform());
    cpu::exp_array(x.data(), y.data(), static_cast<int64_t>(x.size()));
    int64_t worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        const float want = static_cast<float>(std::exp(static_cast<double>(x[i])));  // fp64, rounded once
        worst = std::max(worst, ulps(y[i], want));
    }
    EXPECT_LE(worst, 1) << cpu::exp_kernel_name();
}

TEST(VecMath, ExpSpecialValues) {
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> x = {0.0f, -0.0f, inf, -inf, nan, 89.0f, -104.0f, 1.0f, -1.0f};
    std::vector<float> y(x.size());
    cpu::exp_array(x.data(), y.data(), static_cast<int64_t>(x.size()));
    EXPECT_EQ(y[0], 1.0f);
    EXPECT_EQ(y[1], 1.0f);
    EXPECT_EQ(y[2], inf);
    EXPECT_EQ(y[3], 0.0f);
    EXPECT_TRUE(std::isnan(y[4]));
    EXPECT_EQ(y[5], inf) << "exp(89) is past FLT_MAX";
    EXPECT_EQ(y[6], 0.0f) << "exp(-104) is below the smallest subnormal";
    EXPECT_LE(ulps(y[7], static_cast<float>(std::exp(1.0))), 1);
    EXPECT_LE(ulps(y[8], static_cast<float>(std::exp(-1.0))), 1);
}

// The same value gives the same bits at any offset and in any array length (a tail shorter than a
// vector goes through the vector kernel too): what keeps the ops' results independent of how their
// rows are split over threads.
TEST(VecMath, ExpOfAnElementDoesNotDependOnItsPosition) {
    Rng rng(2);
    std::vector<float> x(53);
    for (float& v : x) v = static_cast<float>(4.0 * rng.normal());
    std::vector<float> whole(x.size());
    cpu::exp_array(x.data(), whole.data(), static_cast<int64_t>(x.size()));
    for (size_t begin = 0; begin < x.size(); ++begin) {
        for (size_t n : {size_t{1}, size_t{3}, size_t{17}}) {
            if (begin + n > x.size()) continue;
            std::vector<float> part(n);
            cpu::exp_array(x.data() + begin, part.data(), static_cast<int64_t>(n));
            EXPECT_EQ(std::memcmp(part.data(), whole.data() + begin, n * sizeof(float)), 0) << begin << " " << n;
        }
    }
    // In place, and nothing written past n.
    std::vector<float> in_place(x.begin(), x.end());
    in_place.push_back(123.0f);
    cpu::exp_array(in_place.data(), in_place.data(), static_cast<int64_t>(x.size()));
    EXPECT_EQ(std::memcmp(in_place.data(), whole.data(), x.size() * sizeof(float)), 0);
    EXPECT_EQ(in_place.back(), 123.0f);
    cpu::exp_array(x.data(), whole.data(), 0);  // n = 0 touches nothing
}

TEST(VecMath, Fp64KeepsTheLibmExp) {
    std::vector<double> x = {-3.5, 0.25, 10.0}, y(3);
    cpu::exp_array(x.data(), y.data(), 3);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(y[i], std::exp(x[i]));
}

// The documented order, written out plainly: term i into partial sum i % 8, then the fixed tree.
double documented_lane_sum(const std::vector<double>& terms) {
    double acc[8] = {};
    for (size_t i = 0; i < terms.size(); ++i) acc[i % 8] += terms[i];
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

TEST(VecMathReductions, SumsAreAccurateForEveryLengthAndFollowTheDocumentedOrder) {
    Rng rng(7);
    for (int64_t n = 0; n <= 300; ++n) {
        std::vector<float> a(n), b(n), c(n);
        for (int64_t i = 0; i < n; ++i) {
            a[i] = static_cast<float>(rng.normal() * 3.0);
            b[i] = static_cast<float>(rng.normal());
            c[i] = static_cast<float>(rng.uniform() + 0.5);
        }
        std::vector<double> t_sum(n), t_dot(n), t_dot3(n);
        long double ref_sum = 0, ref_dot = 0, ref_dot3 = 0, mag_sum = 0, mag_dot = 0, mag_dot3 = 0;
        for (int64_t i = 0; i < n; ++i) {
            t_sum[i] = a[i];
            t_dot[i] = static_cast<double>(a[i]) * static_cast<double>(b[i]);
            t_dot3[i] = static_cast<double>(a[i]) * static_cast<double>(b[i]) * static_cast<double>(c[i]);
            ref_sum += t_sum[i];
            ref_dot += t_dot[i];
            ref_dot3 += t_dot3[i];
            mag_sum += std::fabs(t_sum[i]);
            mag_dot += std::fabs(t_dot[i]);
            mag_dot3 += std::fabs(t_dot3[i]);
        }
        const double sum = cpu::sum_f64(a.data(), n), dot = cpu::dot_f64(a.data(), b.data(), n);
        const double dot3 = cpu::dot3_f64(a.data(), b.data(), c.data(), n);
        // The classical bound of a summation, n eps sum|term|: a lost tail or a term counted twice is
        // off by a whole term, far outside it.
        const double eps = std::numeric_limits<double>::epsilon();
        EXPECT_LE(std::fabs(sum - static_cast<double>(ref_sum)), (n + 1) * eps * static_cast<double>(mag_sum)) << n;
        EXPECT_LE(std::fabs(dot - static_cast<double>(ref_dot)), (n + 1) * eps * static_cast<double>(mag_dot)) << n;
        EXPECT_LE(std::fabs(dot3 - static_cast<double>(ref_dot3)), (n + 1) * eps * static_cast<double>(mag_dot3)) << n;
        // The exact bits of the documented order (an FMA may fuse a product into its add, so the dot
        // products are compared to the order up to that last rounding: the plain sum has no product).
        EXPECT_EQ(sum, documented_lane_sum(t_sum)) << n;
        EXPECT_NEAR(dot, documented_lane_sum(t_dot), 4 * eps * static_cast<double>(mag_dot)) << n;
        // The same row at another place in memory gives the same bits.
        std::vector<float> shifted(n + 5, 9.0f);
        std::copy(a.begin(), a.end(), shifted.begin() + 5);
        EXPECT_EQ(cpu::sum_f64(shifted.data() + 5, n), sum) << n;
    }
    // fp64 arrays take the same path.
    const std::vector<double> d = {1e16, 1.0, -1e16, 1.0, 0.5, 0.25, 3.0, -2.0, 7.0};
    EXPECT_EQ(cpu::sum_f64(d.data(), static_cast<int64_t>(d.size())), documented_lane_sum(d));
}

TEST(VecMathReductions, MaxIsExactAndANaNRowStaysNaNAfterTheShift) {
    Rng rng(3);
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    for (int64_t n = 1; n <= 100; ++n) {
        std::vector<float> x(n);
        for (auto& v : x) v = static_cast<float>(rng.normal() * 10.0);
        if (n % 3 == 0) x[rng.below(n)] = -inf;
        EXPECT_EQ(cpu::max_value(x.data(), n), *std::max_element(x.begin(), x.end())) << n;
        // A NaN anywhere: whatever the maximum comes out as, the shifted exp's sum is NaN, as the
        // softmax and the log-sum-exp need.
        for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
            std::vector<float> y = x;
            y[at] = nan;
            float rest = -inf;  // the maximum of the other elements
            for (int64_t i = 0; i < n; ++i) rest = i != at ? std::max(rest, y[i]) : rest;
            const float m = cpu::max_value(y.data(), n);
            EXPECT_TRUE(std::isnan(m) || m == rest) << n << " " << at;
            for (auto& v : y) v -= m;
            cpu::exp_array(y.data(), y.data(), n);
            EXPECT_TRUE(std::isnan(cpu::sum_f64(y.data(), n))) << n << " " << at;
        }
    }
    const std::vector<float> all_neg_inf(20, -inf);
    EXPECT_EQ(cpu::max_value(all_neg_inf.data(), 20), -inf);
}

}  // namespace
}  // namespace reftrain

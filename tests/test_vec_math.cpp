// tests/test_vec_math.cpp — the vectorised fp32 exp (kernels/cpu/vec_math.h): its error against fp64,
// the special values, and that an element's result does not depend on where it sits in an array.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace reftrain

// tests/gradcheck.h — central finite differences in fp64 for the op tests and the model test.
//
// For an op y = f(x_1, ..., x_k) and a fixed random upstream gradient g, the scalar
//   L(x) = sum_j g_j y_j(x)
// has dL/dx_i = the op's backward applied to g. We perturb each input element by ±h and compare
//   (L(x + h e) - L(x - h e)) / 2h
// with the analytic value. In fp64 with h = 1e-6 the truncation error is O(h^2) ~ 1e-12 and the
// rounding error ~ 1e-16 / 1e-6 = 1e-10 relative to L, so a bound of 1e-6 relative to the largest
// gradient leaves four orders of magnitude of margin while still catching any real mistake (a wrong
// sign, a missing term, a transposed index all give O(1) relative errors).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "kernels/random.h"
#include "kernels/tensor.h"

namespace reftrain::testing {

// An owning fp64 buffer with a Tensor view; shape given at construction.
struct Buffer {
    std::vector<double> values;
    Tensor tensor;
    Buffer(std::string name, std::initializer_list<int64_t> shape, double fill = 0.0)
        : tensor(nullptr, DType::F64, shape, std::move(name)) {
        values.assign(tensor.numel(), fill);
        tensor.data = values.data();
    }
    Buffer(const Buffer& other) : values(other.values), tensor(other.tensor) { tensor.data = values.data(); }
    Buffer& operator=(const Buffer&) = delete;
    void randomize(Rng& rng, double scale = 1.0) {
        for (double& v : values) v = scale * rng.normal();
    }
    void zero() { std::fill(values.begin(), values.end(), 0.0); }
    operator const Tensor&() const { return tensor; }
};

inline constexpr double kGradcheckStep = 1e-6;
inline constexpr double kGradcheckRelTol = 1e-6;

// Checks analytic gradients `grads[i]` (from the op's backward, already computed) against finite
// differences of `loss()` with respect to `inputs[i]`. `loss` must recompute the forward from the
// current input values. Checks at most `max_elements` elements per input (evenly spread).
inline void expect_gradients_match(const std::string& what, std::vector<Buffer*> inputs,
                                   std::vector<const Buffer*> grads, const std::function<double()>& loss,
                                   int64_t max_elements = 400) {
    ASSERT_EQ(inputs.size(), grads.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
        Buffer& x = *inputs[i];
        const Buffer& g = *grads[i];
        const int64_t n = static_cast<int64_t>(x.values.size());
        const int64_t stride = std::max<int64_t>(1, n / max_elements);
        double max_grad = 0.0, max_error = 0.0;
        int64_t worst = -1;
        std::vector<std::pair<int64_t, double>> numeric;
        for (int64_t j = 0; j < n; j += stride) {
            const double saved = x.values[j];
            x.values[j] = saved + kGradcheckStep;
            const double up = loss();
            x.values[j] = saved - kGradcheckStep;
            const double down = loss();
            x.values[j] = saved;
            numeric.emplace_back(j, (up - down) / (2 * kGradcheckStep));
        }
        for (auto [j, num] : numeric) max_grad = std::max({max_grad, std::abs(num), std::abs(g.values[j])});
        for (auto [j, num] : numeric) {
            const double err = std::abs(num - g.values[j]);
            if (err > max_error) { max_error = err; worst = j; }
        }
        const double bound = kGradcheckRelTol * std::max(max_grad, 1e-8);
        EXPECT_LE(max_error, bound) << what << ": gradient of '" << x.tensor.name << "' off at element " << worst
                                    << ": analytic " << g.values[worst] << " vs finite difference "
                                    << [&] { for (auto [j, num] : numeric) if (j == worst) return num; return 0.0; }()
                                    << " (max |grad| " << max_grad << ")";
        EXPECT_GT(max_grad, 0.0) << what << ": gradient of '" << x.tensor.name
                                 << "' is identically zero; the check would be vacuous";
    }
}

inline double weighted_sum(const Buffer& y, const Buffer& g) {
    double s = 0.0;
    for (size_t j = 0; j < y.values.size(); ++j) s += y.values[j] * g.values[j];
    return s;
}

}  // namespace reftrain::testing

// kernels/cpu/rope.cpp — rotary position embedding (Su et al. 2021) in HF's rotate-half layout.
//
// HF (and so Qwen3/Llama checkpoints) pairs dimension i with i + D/2, not 2i with 2i+1 as the paper
// writes it. With h = D/2 and c = cos[t, i], s = sin[t, i] (the tables repeat: cos[t, i] = cos[t, i+h]):
//   forward   y[i]     = x[i] c - x[i+h] s            for i < h
//             y[i+h]   = x[i+h] c + x[i] s
//   backward  (the transpose of that 2x2 rotation)
//             dx[i]   += dy[i] c + dy[i+h] s
//             dx[i+h] += dy[i+h] c - dy[i] s
// Applying RoPE to the wrong half, or with the interleaved layout to an HF checkpoint, is a silent
// bug: the model still trains, it just does not match the checkpoint. The parity test pins the layout.
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"

namespace reftrain::cpu {

namespace {

// HF's angles, float32 all the way: e = float(2i) / D, inv_freq = 1 / powf(theta, e) (then rescaled,
// see rope_inverse_frequencies), angle = float(t) * inv_freq. Every HF checkpoint was trained with
// these; exact angles drift from them by ~6e-8 t rad (2e-3 rad at t = 32k), which a diff against an HF
// model would flag. cos/sin of the float32 angle are evaluated in fp64 and rounded once to float32, so
// the table holds the same float32 values in every compute dtype (the fp64 model widens them).
template <class T>
void tables_impl(const Tensor& cos, const Tensor& sin, const std::vector<float>& inv_freq) {
    const int64_t T_max = cos.dim(0), D = cos.dim(1), h = D / 2;
    T* c = cos.ptr<T>();
    T* s = sin.ptr<T>();
    for (int64_t i = 0; i < h; ++i) {
        for (int64_t t = 0; t < T_max; ++t) {
            const double angle = static_cast<double>(static_cast<float>(t) * inv_freq[static_cast<size_t>(i)]);
            c[t * D + i] = c[t * D + i + h] = static_cast<T>(static_cast<float>(std::cos(angle)));
            s[t * D + i] = s[t * D + i + h] = static_cast<T>(static_cast<float>(std::sin(angle)));
        }
    }
}

// sign = +1 applies the rotation (forward), sign = -1 its transpose (backward); `accumulate` adds.
template <class T>
void rotate_impl(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, T sign,
                 bool accumulate) {
    const int64_t B = x.dim(0), Tn = x.dim(1), H = x.dim(2), D = x.dim(3), h = D / 2;
    const T* in = x.ptr<T>();
    const T* c = cos.ptr<T>();
    const T* s = sin.ptr<T>();
    T* o = out.ptr<T>();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < Tn; ++t) {
            const T* ct = c + t * D;
            const T* st = s + t * D;
            for (int64_t head = 0; head < H; ++head) {
                const int64_t base = ((b * Tn + t) * H + head) * D;
                const T* xi = in + base;
                T* yi = o + base;
                for (int64_t i = 0; i < h; ++i) {
                    const T lo = xi[i] * ct[i] - sign * xi[i + h] * st[i];
                    const T hi = xi[i + h] * ct[i + h] + sign * xi[i] * st[i + h];
                    if (accumulate) { yi[i] += lo; yi[i + h] += hi; }
                    else { yi[i] = lo; yi[i + h] = hi; }
                }
            }
        }
    }
}

}  // namespace

void check_rope_args(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, const char* op) {
    const int64_t B = x.dim(0), T = x.dim(1), H = x.dim(2), D = x.dim(3);
    expect_shape(x, {B, T, H, D}, op, "x");
    expect_shape(out, {B, T, H, D}, op, "out");
    check(D % 2 == 0, op, ": head dimension ", D, " of '", x.name, "' must be even (RoPE rotates pairs)");
    expect_shape(cos, {-1, D}, op, "cos");
    expect_shape(sin, {cos.dim(0), D}, op, "sin");
    check(T <= cos.dim(0), op, ": sequence length ", T, " exceeds the RoPE table length ", cos.dim(0),
          " (max_position_embeddings)");
    expect_same_dtype(x, out, op);
    expect_same_dtype(x, cos, op);
    expect_same_dtype(x, sin, op);
}

// GCC fuses a*b + c into one fused multiply-add, even across statements, unless told not to
// (-ffp-contract=fast is its default for C++). HF's frequencies come from PyTorch ops that each round
// once, so this function must round after every operation too: contraction is off for it alone.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
// One float32 rounding per PyTorch op of HF's _compute_default_rope_parameters,
// _compute_linear_scaling_rope_parameters and _compute_llama3_parameters (transformers 4.4x and 5.x
// compute the same numbers). What PyTorch does with a Python number next to a float32 tensor decides
// the bits: the number is rounded to float32 first (x / factor, x - low_freq_factor, the comparisons),
// and `number / tensor` is tensor.reciprocal() * number, two roundings, not one division.
std::vector<float> rope_inverse_frequencies(int64_t head_dim, double theta, const RopeScaling& scaling) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    check(head_dim >= 2 && head_dim % 2 == 0, "rope_inverse_frequencies: head dimension ", head_dim,
          " must be even and >= 2");
    const int64_t h = head_dim / 2;
    std::vector<float> inv_freq(static_cast<size_t>(h));
    const float base = static_cast<float>(theta);
    for (int64_t i = 0; i < h; ++i) {
        const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
        inv_freq[static_cast<size_t>(i)] = 1.0f / std::pow(base, exponent);
    }
    const float factor = static_cast<float>(scaling.factor);
    switch (scaling.type) {
        case RopeScaling::Type::none:
            break;
        case RopeScaling::Type::linear:
            for (float& f : inv_freq) f = f / factor;
            break;
        case RopeScaling::Type::llama3: {
            // Python computes these in double; the comparisons round them to float32.
            const double context = static_cast<double>(scaling.original_max_position_embeddings);
            const float low_freq_wavelength = static_cast<float>(context / scaling.low_freq_factor);
            const float high_freq_wavelength = static_cast<float>(context / scaling.high_freq_factor);
            const float two_pi = static_cast<float>(2.0 * 3.14159265358979323846);
            const float context_f = static_cast<float>(context);
            const float low = static_cast<float>(scaling.low_freq_factor);
            const float spread = static_cast<float>(scaling.high_freq_factor - scaling.low_freq_factor);
            for (float& f : inv_freq) {
                const float wavelength = (1.0f / f) * two_pi;
                const float divided = wavelength > low_freq_wavelength ? f / factor : f;
                const float smooth = ((1.0f / wavelength) * context_f - low) / spread;
                const float kept_part = smooth * divided;
                const float scaled_part = ((1.0f - smooth) * divided) / factor;
                const float smoothed = scaled_part + kept_part;
                const bool medium = !(wavelength < high_freq_wavelength) && !(wavelength > low_freq_wavelength);
                f = medium ? smoothed : divided;
            }
            break;
        }
    }
    return inv_freq;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// The exact angles: the same rules as rope_inverse_frequencies (kernels/rope_scaling.h) in fp64, for
// an fp64 model that wants no float32 rounding anywhere (`"rope_angles": "exact"`).
std::vector<double> exact_inverse_frequencies(int64_t head_dim, double theta, const RopeScaling& scaling) {
    const int64_t h = head_dim / 2;
    std::vector<double> inv_freq(static_cast<size_t>(h));
    for (int64_t i = 0; i < h; ++i) {
        double f = std::pow(theta, -static_cast<double>(2 * i) / static_cast<double>(head_dim));
        if (scaling.type == RopeScaling::Type::linear) f /= scaling.factor;
        if (scaling.type == RopeScaling::Type::llama3) {
            const double L = static_cast<double>(scaling.original_max_position_embeddings);
            const double wavelength = 2.0 * 3.14159265358979323846 / f;
            if (wavelength > L / scaling.low_freq_factor) {
                f /= scaling.factor;
            } else if (wavelength >= L / scaling.high_freq_factor) {
                const double s = (L / wavelength - scaling.low_freq_factor) /
                                 (scaling.high_freq_factor - scaling.low_freq_factor);
                f = (1.0 - s) * f / scaling.factor + s * f;
            }
        }
        inv_freq[static_cast<size_t>(i)] = f;
    }
    return inv_freq;
}

void rope_tables(const Tensor& cos, const Tensor& sin, double theta, const RopeScaling& scaling, bool exact_angles) {
    expect_shape(sin, {cos.dim(0), cos.dim(1)}, "rope_tables", "sin");
    check(cos.dim(1) % 2 == 0, "rope_tables: head dimension ", cos.dim(1), " must be even");
    if (exact_angles) {
        const std::vector<double> inv_freq = exact_inverse_frequencies(cos.dim(1), theta, scaling);
        dispatch_float(cos.dtype, "rope_tables", [&](auto tag) {
            using T = decltype(tag);
            const int64_t T_max = cos.dim(0), D = cos.dim(1), h = D / 2;
            for (int64_t i = 0; i < h; ++i) {
                for (int64_t t = 0; t < T_max; ++t) {
                    const double angle = static_cast<double>(t) * inv_freq[static_cast<size_t>(i)];
                    cos.ptr<T>()[t * D + i] = cos.ptr<T>()[t * D + i + h] = static_cast<T>(std::cos(angle));
                    sin.ptr<T>()[t * D + i] = sin.ptr<T>()[t * D + i + h] = static_cast<T>(std::sin(angle));
                }
            }
        });
        return;
    }
    const std::vector<float> inv_freq = rope_inverse_frequencies(cos.dim(1), theta, scaling);
    dispatch_float(cos.dtype, "rope_tables", [&](auto t) { tables_impl<decltype(t)>(cos, sin, inv_freq); });
}

void rope_forward(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) {
    check_rope_args(out, x, cos, sin, "rope_forward");
    dispatch_float(x.dtype, "rope_forward", [&](auto t) {
        using T = decltype(t);
        rotate_impl<T>(out, x, cos, sin, T(1), false);
    });
}

void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin) {
    if (!dx.data) return;
    check_rope_args(dx, dout, cos, sin, "rope_backward");
    dispatch_float(dout.dtype, "rope_backward", [&](auto t) {
        using T = decltype(t);
        rotate_impl<T>(dx, dout, cos, sin, T(-1), true);
    });
}

}  // namespace reftrain::cpu

// kernels/dtype.cpp — dtype names and IEEE binary16 conversions (round to nearest even).
#include "kernels/dtype.h"

#include <cmath>

namespace reftrain {

size_t dtype_size(DType dtype) {
    switch (dtype) {
        case DType::F32: return 4;
        case DType::F64: return 8;
        case DType::BF16: return 2;
        case DType::F16: return 2;
        case DType::I32: return 4;
        case DType::I64: return 8;
        case DType::U8: return 1;
    }
    return 0;
}

const char* dtype_name(DType dtype) {
    switch (dtype) {
        case DType::F32: return "F32";
        case DType::F64: return "F64";
        case DType::BF16: return "BF16";
        case DType::F16: return "F16";
        case DType::I32: return "I32";
        case DType::I64: return "I64";
        case DType::U8: return "U8";
    }
    return "?";
}

bool dtype_from_name(const std::string& name, DType* out) {
    static const DType all[] = {DType::F32, DType::F64, DType::BF16, DType::F16,
                                DType::I32, DType::I64, DType::U8};
    for (DType d : all) {
        if (name == dtype_name(d)) { *out = d; return true; }
    }
    return false;
}

bool dtype_is_float(DType dtype) {
    return dtype == DType::F32 || dtype == DType::F64 || dtype == DType::BF16 || dtype == DType::F16;
}

// fp32 -> fp16: sign, 5-bit exponent (bias 15), 10-bit mantissa. Values past 65504 (after rounding)
// become inf; values below 2^-14 become subnormals, and below half the smallest subnormal become 0.
uint16_t float_to_f16(float x) {
    uint32_t u = float_bits(x);
    uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    uint32_t abs_bits = u & 0x7fffffffu;
    if (abs_bits > 0x7f800000u) return sign | 0x7e00u;                // NaN
    if (abs_bits >= 0x477ff000u) return sign | 0x7c00u;               // rounds to >= 65520: inf
    if (abs_bits >= 0x38800000u) {                                    // normal fp16 (>= 2^-14)
        uint32_t mantissa_odd = (abs_bits >> 13) & 1u;
        abs_bits += 0xc8000fffu + mantissa_odd;                       // rebias exponent 127->15, round
        return sign | static_cast<uint16_t>(abs_bits >> 13);
    }
    // Subnormal or zero: value = m * 2^-24. Let the FPU do the rounding exactly (x * 2^24 is exact
    // in fp32 for these magnitudes, and nearbyint rounds half to even in the default mode).
    float scaled = bits_float(abs_bits) * 16777216.0f;
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
}

float f16_to_float(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf / NaN
    if (exponent == 0) {                                                            // zero / subnormal
        float value = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
        return sign ? -value : value;
    }
    return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

}  // namespace reftrain

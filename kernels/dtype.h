// kernels/dtype.h — element types and the bit-exact conversions between fp32 and bf16/fp16.
//
// bf16 and fp16 are stored as raw uint16_t bit patterns. Conversions from fp32 round to nearest,
// ties to even (what PyTorch's .to(torch.bfloat16 / torch.float16) does); fp16 overflows to ±inf and
// keeps subnormals. These are the only rounding functions in the project, so the CPU emulation of
// mixed precision (docs/precision.md) and the safetensors loader agree by construction.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace reftrain {

enum class DType : uint8_t { F32, F64, BF16, F16, I32, I64, U8 };

size_t dtype_size(DType dtype);
// The safetensors spelling: "F32", "F64", "BF16", "F16", "I32", "I64", "U8".
const char* dtype_name(DType dtype);
// Parses a safetensors dtype name; returns false for an unknown name.
bool dtype_from_name(const std::string& name, DType* out);
bool dtype_is_float(DType dtype);

inline uint32_t float_bits(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float bits_float(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

// bf16 = the top 16 bits of an fp32, rounded to nearest even; NaN stays a (quiet) NaN.
inline uint16_t float_to_bf16(float x) {
    uint32_t u = float_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
    uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>((u + rounding_bias) >> 16);
}
inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

uint16_t float_to_f16(float x);
float f16_to_float(uint16_t h);

}  // namespace reftrain

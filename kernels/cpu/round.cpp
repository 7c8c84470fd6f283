// kernels/cpu/round.cpp — mixed-precision emulation: round F32 values through bf16 / fp16 and back.
//
// The rounding itself is kernels/dtype.h's float_to_bf16 / float_to_f16 (round to nearest even, fp16
// overflow to inf, subnormals kept), the one definition shared with the safetensors writer; this file
// only applies it in place. Bit-exact agreement with PyTorch's x.to(torch.bfloat16 / float16).float()
// is checked by tests/python/test_precision_emulation.py; hand-picked edge cases by tests/test_round.cpp.
#include "kernels/cpu/ops.h"
#include "kernels/dtype.h"
#include "kernels/error.h"

namespace reftrain::cpu {

void round_to_precision(const Tensor& x, DType precision) {
    check(precision == DType::F32 || precision == DType::BF16 || precision == DType::F16,
          "round_to_precision: precision must be F32, BF16 or F16, got ", dtype_name(precision), " (tensor '", x.name,
          "')");
    if (precision == DType::F32) return;  // fp32 compute: nothing to emulate
    expect_dtype(x, DType::F32, "round_to_precision", "x");
    check(x.device == Device::CPU, "round_to_precision: tensor '", x.name, "' is not on the CPU");
    float* p = x.ptr<float>();
    const int64_t n = x.numel();
    if (precision == DType::BF16) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i) p[i] = bf16_to_float(float_to_bf16(p[i]));
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i) p[i] = f16_to_float(float_to_f16(p[i]));
    }
}

}  // namespace reftrain::cpu

// kernels/cpu/round.cpp — mixed-precision emulation: round F32 values through bf16 / fp16 and back.
#include "kernels/cpu/ops.h"
#include "kernels/dtype.h"
#include "kernels/error.h"

namespace reftrain::cpu {

void round_to_precision(const Tensor& x, DType precision) {
    if (precision == DType::F32) return;
    expect_dtype(x, DType::F32, "round_to_precision", "x");
    check(precision == DType::BF16 || precision == DType::F16, "round_to_precision: precision must be F32, BF16 or F16, got ",
          dtype_name(precision));
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

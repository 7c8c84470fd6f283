// kernels/cuda/attention_cudnn.h — the seam between attention.cu (argument checks, backend choice) and
// attention_cudnn.cpp (cuDNN's SDPA through the cudnn-frontend graph API).
//
// attention_cudnn.cpp is compiled only when CMake finds the cudnn-frontend headers and libcudnn; it is
// then the only translation unit that includes the (large) frontend headers, and the target defines
// REFTRAIN_HAVE_CUDNN_FRONTEND. These functions take arguments already checked by
// cuda::attention_forward/backward: BF16 q, k, v, out, dout, dq, dk, dv on the device, F32 lse, the
// shapes of kernels/cuda/ops.h.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/tensor.h"

namespace reftrain::cuda::detail {

void cudnn_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                             const Tensor& v, cudaStream_t stream);
void cudnn_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                              const Tensor& v, cudaStream_t stream);

}  // namespace reftrain::cuda::detail

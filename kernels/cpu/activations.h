// kernels/cpu/activations.h — the ops of the RL actor-critic MLP that kernels/cpu/ops.h lacks: the
// bias of a linear layer and the tanh nonlinearity. The matrix products are cpu::linear_forward /
// cpu::linear_backward from ops.h.
//
// The conventions of ops.h hold here too: Tensor views with shapes checked on every call, F32 or F64
// (one dtype per call), forwards overwrite (bias_add_forward updates `out` in place), backwards ADD
// into every gradient, a gradient whose data pointer is null is skipped, and every sum is computed by
// one thread in a fixed order so results do not depend on the OpenMP thread count.
#pragma once

#include "kernels/tensor.h"

namespace reftrain::cpu {

// ---- bias of a linear layer ------------------------------------------------------------------------
// out[n, c] += bias[c]   (in place: `out` holds x @ W^T from linear_forward)
void bias_add_forward(const Tensor& out,   // (N, C)
                      const Tensor& bias); // (C)
// dbias[c] += sum_n dout[n, c]   (the gradient of the input is dout itself: the caller reuses it)
void bias_add_backward(const Tensor& dbias, // (C)
                       const Tensor& dout); // (N, C)

// ---- tanh --------------------------------------------------------------------------------------------
// out = tanh(x)
void tanh_forward(const Tensor& out, // (N, C)
                  const Tensor& x);  // (N, C)
// dx += dout * (1 - out^2), from the saved output: tanh'(x) = 1 - tanh(x)^2
void tanh_backward(const Tensor& dx,   // (N, C)
                   const Tensor& dout, // (N, C)
                   const Tensor& out); // (N, C)

}  // namespace reftrain::cpu

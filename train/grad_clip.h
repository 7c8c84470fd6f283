// train/grad_clip.h — global gradient norm and clipping.
//
// norm = sqrt(sum over every gradient element of g^2), accumulated in fp64 in a fixed order (same
// bits for any thread count). clip_grad_norm scales every gradient by max_norm / (norm + 1e-6) when
// norm > max_norm, exactly torch.nn.utils.clip_grad_norm_'s rule, and returns the PRE-clip norm,
// which is the number worth logging (the post-clip norm is max_norm whenever clipping happens).
#pragma once

#include "kernels/arena.h"

namespace reftrain {

double global_grad_norm(const Arena& grads);
// max_norm <= 0 disables clipping (the norm is still computed and returned).
double clip_grad_norm(Arena& grads, double max_norm);
// The clip for a norm measured elsewhere: scales by max_norm / (norm + 1e-6) when finite norm > max_norm.
void clip_to_norm(Arena& grads, double norm, double max_norm);

}  // namespace reftrain

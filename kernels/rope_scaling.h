// kernels/rope_scaling.h — how RoPE frequencies are rescaled for a longer context, as HF names it.
//
// HF's `rope_scaling` (transformers 4) / `rope_parameters` (transformers 5) object selects a rule that
// rewrites the inverse frequencies inv_freq[i] = theta^(-2i/D) once, before any position is seen:
//   - none   (rope_type "default"): inv_freq as is.
//   - linear (kaiokendev's position interpolation): inv_freq / factor, i.e. positions divided by factor.
//   - llama3 (Llama 3.1 / 3.2 / 3.3): per frequency, by its wavelength 2 pi / inv_freq, with
//     L = original_max_position_embeddings:
//       wavelength < L / high_freq_factor  -> unchanged (fast rotations keep local order)
//       wavelength > L / low_freq_factor   -> inv_freq / factor
//       in between                         -> (1 - s) inv_freq / factor + s inv_freq,
//                                             s = (L / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
// Neither rule scales cos/sin afterwards (HF's attention factor is 1 for both). The float32 arithmetic
// that reproduces HF's numbers bit for bit is cpu::rope_inverse_frequencies (kernels/cpu/rope.cpp).
// Rules whose frequencies depend on the sequence length (dynamic) or that rescale the attention
// (yarn, longrope) are not implemented; model/config.cpp refuses them by name.
#pragma once

#include <cstdint>

namespace reftrain {

struct RopeScaling {
    enum class Type { none, linear, llama3 };
    Type type = Type::none;
    double factor = 1.0;                              // linear, llama3: how much longer the context is
    double low_freq_factor = 1.0;                     // llama3: wavelengths above L / low_freq_factor are divided
    double high_freq_factor = 4.0;                    // llama3: wavelengths below L / high_freq_factor are kept
    int64_t original_max_position_embeddings = 8192;  // llama3: L, the pretraining context

    bool operator==(const RopeScaling&) const = default;
};

// "default", "linear" or "llama3": HF's rope_type string for the type.
inline const char* rope_type_name(RopeScaling::Type type) {
    switch (type) {
        case RopeScaling::Type::linear: return "linear";
        case RopeScaling::Type::llama3: return "llama3";
        case RopeScaling::Type::none: break;
    }
    return "default";
}

}  // namespace reftrain

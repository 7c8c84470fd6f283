// kernels/random.h — the project's deterministic random numbers.
//
// std::normal_distribution is implementation-defined (libstdc++ and libc++ give different numbers),
// so "same seed, same bits" needs our own generator. SplitMix64 (Steele, Lea & Flood 2014) is small,
// passes BigCrush, and is trivially seedable; normals come from Box-Muller in fp64.
//
// Streams are derived per name: Rng::for_name(seed, "model.layers.0.mlp.up_proj.weight") gives every
// tensor its own stream, so adding or reordering tensors never changes the init of the others.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

namespace reftrain {

class Rng {
public:
    explicit Rng(uint64_t seed) : state_(seed) {}

    static uint64_t hash_name(std::string_view name) {  // FNV-1a, 64 bit
        uint64_t h = 0xcbf29ce484222325ull;
        for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
        return h;
    }
    static Rng for_name(uint64_t seed, std::string_view name) {
        Rng mixer(seed ^ hash_name(name));
        return Rng(mixer.next_u64());
    }

    uint64_t next_u64() {
        uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // Uniform in [0, 1) with 53 random bits.
    double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
    // Standard normal (Box-Muller; one of the pair is discarded to keep the state simple).
    double normal() {
        const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
        const double u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
    // Uniform integer in [0, n).
    uint64_t below(uint64_t n) { return next_u64() % n; }

    // The whole state is one word: checkpoints save it so a resumed run draws the same numbers.
    uint64_t state() const { return state_; }
    void set_state(uint64_t state) { state_ = state; }

private:
    uint64_t state_;
};

}  // namespace reftrain

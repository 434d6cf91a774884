// Deterministic data for the quantization tests (no dependence on std:: distributions).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "src/quant/spec.h"

namespace quant_test {

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next() {
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1p-53; }  // [0, 1)
  double normal() {
    const double u1 = uniform() + 0x1p-54, u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

inline std::vector<float> normal_matrix(Rng& rng, int64_t n, double sigma) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(sigma * rng.normal());
  return v;
}

// A round-to-nearest spec with the given bits and clip rule, other fields at their defaults.
inline ptool::quant::QuantSpec spec_of(int bits, ptool::quant::Clip clip) {
  ptool::quant::QuantSpec s;
  s.bits = bits;
  s.clip = clip;
  return s;
}

}  // namespace quant_test

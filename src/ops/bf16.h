// Rounding to bfloat16 where ptool mimics a tensor the reference stores in bf16 (Muon's NS in bf16, the
// baseline's bf16 token embedding); the value stays a float.
#pragma once
#include <bit>
#include <cstdint>

namespace ptool {

// The nearest bfloat16 (ties to even), as a float. NaN stays NaN; overflow gives ±inf.
inline float round_to_bf16(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return x;  // NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  u &= 0xFFFF0000u;
  return std::bit_cast<float>(u);
}

inline bool is_bf16_value(float x) { return round_to_bf16(x) == x; }

}  // namespace ptool

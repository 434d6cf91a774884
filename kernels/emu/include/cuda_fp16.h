// cuemu: fp16 storage type and its round-to-nearest-even conversions (see kernels/emu/cuemu.h).
#pragma once
#include <cstdint>

#include "kernels/emu/cuemu.h"

struct __half {
  uint16_t __x;
};

inline __half __float2half_rn(float f) { return {cuemu::float_to_half_bits(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return cuemu::half_bits_to_float(h.__x); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { return {u}; }

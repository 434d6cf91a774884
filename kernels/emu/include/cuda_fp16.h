// cuemu: fp16 storage type; its round-to-nearest-even conversions are ptool's own (src/quant/fp16.h).
#pragma once
#include <cstdint>

#include "kernels/emu/cuemu.h"
#include "src/quant/fp16.h"

struct __half {
  uint16_t __x;
};

inline __half __float2half_rn(float f) { return {ptool::quant::float_to_half(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return ptool::quant::half_to_float(h.__x); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { return {u}; }

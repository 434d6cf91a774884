// IEEE 754 binary16 <-> binary32 conversion, bit exact with numpy's astype(float16) and torch's .half():
// round to nearest, ties to even; subnormals kept; overflow to +-inf; NaN -> 0x7e00 with its sign (as torch).
#pragma once
#include <cstdint>

namespace ptool::quant {

uint16_t float_to_half(float f);
float half_to_float(uint16_t h);
// The float nearest to f that a half can hold: half_to_float(float_to_half(f)).
inline float round_to_half(float f) { return half_to_float(float_to_half(f)); }

constexpr float kHalfMax = 65504.0f;

}  // namespace ptool::quant

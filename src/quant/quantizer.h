// One entry point per tensor for `ptool quantize`: a spec (or the first matching rule) in, a
// QuantizedTensor out. The library only handles float tensors; non-float checkpoint tensors are the
// caller's to copy unchanged.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

#include "src/quant/gptq.h"
#include "src/quant/quantized_tensor.h"
#include "src/quant/rules.h"
#include "src/quant/spec.h"

namespace ptool::quant {

// Passthrough: fp32 values, or rounded to fp16 (ties to even) when f32 is false.
QuantizedTensor keep_float(std::string_view name, std::span<const int64_t> shape, std::span<const float> values,
                           bool f32);

// Quantizes with `spec`: GPTQ (gptq.h) when spec.gptq and the tensor is 2-D, which needs H [cols * cols]
// (row-major; an empty span is an error naming the tensor); otherwise round-to-nearest (rtn.h). A GPTQ spec on
// a tensor that is not 2-D falls back to round-to-nearest (scheme named accordingly, noted in info).
// H is also used by hsdclip round-to-nearest.
QuantizedTensor quantize_tensor(std::string_view name, std::span<const int64_t> shape, std::span<const float> values,
                                const QuantSpec& spec, std::span<const double> H = {}, const Log& log = {});

// The first matching rule decides (rules.h); info["rule"] records which one.
QuantizedTensor quantize_by_rules(const RuleSet& rules, std::string_view name, std::span<const int64_t> shape,
                                  std::span<const float> values, std::span<const double> H = {},
                                  const Log& log = {});

}  // namespace ptool::quant

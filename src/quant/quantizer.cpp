#include "src/quant/quantizer.h"

#include "formats/error.h"
#include "src/quant/fp16.h"
#include "src/quant/rtn.h"

namespace ptool::quant {

QuantizedTensor keep_float(std::string_view name, std::span<const int64_t> shape, std::span<const float> values,
                           bool f32) {
  QuantizedTensor t;
  t.name = std::string(name);
  t.shape.assign(shape.begin(), shape.end());
  if (static_cast<int64_t>(values.size()) != t.numel())
    throw Error("tensor '" + t.name + "': " + std::to_string(values.size()) + " values for a shape of " +
                std::to_string(t.numel()) + " elements");
  if (f32) {
    t.scheme = "f32";
    t.layout = Layout::f32;
    t.values_f32.assign(values.begin(), values.end());
  } else {
    t.scheme = "f16";
    t.layout = Layout::f16;
    t.values_f16.resize(values.size());
    for (size_t i = 0; i < values.size(); ++i) t.values_f16[i] = float_to_half(values[i]);
  }
  return t;
}

QuantizedTensor quantize_tensor(std::string_view name, std::span<const int64_t> shape, std::span<const float> values,
                                const QuantSpec& spec, std::span<const double> H, const Log& log) {
  const std::string tname(name);
  const bool two_d = shape.size() == 2;
  const int64_t cols = two_d ? shape[1] : 0;
  if (!H.empty() && two_d && static_cast<int64_t>(H.size()) != cols * cols)
    throw Error("tensor '" + tname + "': Hessian has " + std::to_string(H.size()) + " entries, expected " +
                std::to_string(cols) + "^2");
  if (spec.gptq && two_d) {
    if (H.empty()) throw Error("tensor '" + tname + "': GPTQ needs a Hessian and none was collected for it");
    if (static_cast<int64_t>(values.size()) != shape[0] * cols)
      throw Error("tensor '" + tname + "': " + std::to_string(values.size()) + " values for shape [" +
                  std::to_string(shape[0]) + ", " + std::to_string(cols) + "]");
    return gptq_quantize(name, values.data(), shape[0], cols, H.data(), spec, log).tensor;
  }
  const bool use_h = two_d && !H.empty();
  QuantizedTensor t = quantize_rtn(name, shape, values, spec, use_h ? H.data() : nullptr);
  if (spec.gptq) {
    t.info["note"] = "GPTQ needs a matrix; this tensor was rounded to nearest";
    if (log) log("tensor '" + tname + "': not a matrix, GPTQ rule applied as round-to-nearest");
  }
  return t;
}

QuantizedTensor quantize_by_rules(const RuleSet& rules, std::string_view name, std::span<const int64_t> shape,
                                  std::span<const float> values, std::span<const double> H, const Log& log) {
  const Rule& rule = match_rule(rules, name, shape_numel(shape));
  QuantizedTensor t = rule.action == Action::quantize
                          ? quantize_tensor(name, shape, values, rule.spec, H, log)
                          : keep_float(name, shape, values, rule.action == Action::keep_f32);
  t.info["rule"] = rule.origin;
  return t;
}

}  // namespace ptool::quant

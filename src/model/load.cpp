#include "src/model/load.h"

#include <cstring>

#include "formats/error.h"
#include "src/quant/fp16.h"
#include "src/quant/quantized_tensor.h"

namespace ptool::model {

std::vector<float> tensor_values(const TensorRecord& r) {
  if (!r.scheme.empty()) return quant::dequantize(quant::from_record(r));
  const int64_t n = r.numel();
  std::vector<float> out(n);
  switch (r.dtype) {
    case DType::f32:
      std::memcpy(out.data(), r.data.data(), n * sizeof(float));
      break;
    case DType::f16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, r.data.data() + 2 * i, 2);
        out[i] = quant::half_to_float(h);
      }
      break;
    case DType::bf16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, r.data.data() + 2 * i, 2);
        uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&out[i], &bits, 4);
      }
      break;
    default:
      throw Error("tensor '" + r.name + "' has dtype " + std::string(dtype_name(r.dtype)) +
                  ", which is not a float weight");
  }
  return out;
}

LoadedModel load_model(const Artifact& a, const std::string& file) {
  LoadedModel lm;
  lm.stage = a.stage;
  lm.metadata = a.metadata;
  if (!a.metadata.contains("model")) throw Error(file + ": artifact has no model config in its metadata");
  lm.config = config_from_json(a.metadata.at("model"));
  if (a.metadata.contains("tokenizer") && a.metadata["tokenizer"].contains("sha256"))
    lm.tokenizer_sha256 = a.metadata["tokenizer"]["sha256"].get<std::string>();
  const ParamLayout L = make_layout(lm.config);
  lm.weights.assign(L.total, 0.0f);
  for (auto& s : L.specs) {
    const TensorRecord* r = a.find(s.name);
    if (!r) throw Error(file + ": tensor '" + s.name + "' is missing");
    auto v = tensor_values(*r);
    if (static_cast<int64_t>(v.size()) != s.numel)
      throw Error(file + ": tensor '" + s.name + "' has " + std::to_string(v.size()) + " values, the config needs " +
                  std::to_string(s.numel));
    std::copy(v.begin(), v.end(), lm.weights.begin() + s.offset);
  }
  // As the reference's dequantizer casts back to the tensor's bf16 dtype.
  round_bf16_tensors(lm.config, L, lm.weights.data());
  return lm;
}

LoadedModel load_model(const std::string& path) { return load_model(read_artifact(path), path); }

}  // namespace ptool::model

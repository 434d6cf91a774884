// Loads a model's config and float weights from an artifact of any stage (checkpoint, quantized or packed):
// quantized tensors are dequantized, fp16/bf16 passthrough widened, in the layout's order; the tensors the config
// keeps in bf16 (embed_bf16) are rounded to bf16 values.
#pragma once
#include <string>
#include <vector>

#include "formats/artifact.h"
#include "src/model/config.h"
#include "src/model/layout.h"

namespace ptool::model {

struct LoadedModel {
  ModelConfig config;
  std::vector<float> weights;   // layout order, make_layout(config).total values
  Stage stage = Stage::checkpoint;
  std::string tokenizer_sha256;
  nlohmann::json metadata;
};

LoadedModel load_model(const std::string& path);
LoadedModel load_model(const Artifact& a, const std::string& name_for_errors);

// Float values of a plain (f32/f16/bf16) or quantized tensor record.
std::vector<float> tensor_values(const TensorRecord& r);

}  // namespace ptool::model

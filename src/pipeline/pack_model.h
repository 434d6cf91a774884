// `ptool pack`: a quantized artifact in, the submission out. Tensors are grouped into sections by kind
// (embedding, attention, MLP codes; float passthrough), each section gets the codec (and byte shuffle)
// that stores it smallest (arith, ptool's entropy coder for int8 matrices, is a candidate for code sections),
// and the result must fit the byte budget with the declared code bytes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "formats/artifact.h"

namespace ptool::pipeline {

struct PackOptions {
  std::string codec = "auto";      // zlib | zstd | brotli | arith | auto (smallest per section)
  int level = -1;                  // -1: the codec's maximum
  uint64_t budget = 16000000;
  uint64_t code_bytes = 0;         // bytes of code that count against the budget
};

struct SectionReport {
  std::string name;
  std::string codec;
  uint8_t shuffle = 0;
  uint64_t raw_bytes = 0, stored_bytes = 0;
  int64_t tensors = 0;
};

struct PackResult {
  std::vector<uint8_t> bytes;      // the packed artifact
  std::vector<SectionReport> sections;
  uint64_t total_bytes = 0;        // file bytes + code bytes
  bool fits = false;
};

// Section name for a tensor of the quantized stage: codes.embed / codes.attn / codes.mlp / codes.other / float.
std::string pack_section(const TensorRecord& r);

PackResult pack_model(const Artifact& quantized, const PackOptions& opt);

}  // namespace ptool::pipeline

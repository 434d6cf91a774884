// A quantized (or passed-through) tensor, its dequantization, and its byte payload in the artifact.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/artifact.h"

namespace ptool::quant {

// How the values are stored. Dequantization depends only on the layout.
enum class Layout : uint8_t {
  f32,             // passthrough: values_f32
  f16,             // passthrough: values_f16 (half bit patterns)
  per_row,         // 2-D [rows, cols]: codes row-major, scales_f16[rows]; W[r, c] = float(q) * half(s_r)
  per_tensor_f16,  // any other shape: codes, scales_f16[0]
  per_tensor_f32,  // any other shape: codes, scale_f32 (the baseline's int8 vectors > 65,536 elements)
};
std::string_view layout_name(Layout l);

struct QuantizedTensor {
  std::string name;
  std::string scheme;              // "f32" / "f16" for passthrough, else a scheme_name() (spec.h)
  uint32_t scheme_version = 1;
  Layout layout = Layout::f32;
  int bits = 0;                    // 2..8 for coded layouts, 0 for passthrough
  std::vector<int64_t> shape;
  std::vector<int8_t> codes;       // numel, row-major
  std::vector<uint16_t> scales_f16;
  float scale_f32 = 0;
  std::vector<float> values_f32;
  std::vector<uint16_t> values_f16;
  // How it was made (clip rule, chosen percentile, k, lambda, GPTQ damping and retries, notes). Not needed
  // to dequantize; the quantize command may keep it in the artifact metadata.
  nlohmann::json info = nlohmann::json::object();

  int64_t numel() const;
  bool coded() const { return layout != Layout::f32 && layout != Layout::f16; }
  int range() const { return bits > 0 ? (1 << (bits - 1)) - 1 : 0; }
};

int64_t shape_numel(std::span<const int64_t> shape);  // throws Error on a negative dimension or overflow

// Throws Error (naming the tensor) when sizes disagree with the shape, a code is outside [-R, R], or a
// scale is not finite.
void validate(const QuantizedTensor& t);

std::vector<float> dequantize(const QuantizedTensor& t);
void dequantize_into(const QuantizedTensor& t, std::span<float> out);  // out.size() == numel

// Payload bytes, little-endian: f32 numel*4; f16 numel*2; per_row codes (numel bytes) then rows fp16 scales;
// per_tensor_f16 codes then 2 bytes; per_tensor_f32 codes then 4 bytes.
size_t payload_size(const QuantizedTensor& t);
std::vector<uint8_t> encode_payload(const QuantizedTensor& t);

// Artifact tensor records: passthrough as a plain record (scheme "", dtype f32/f16); coded tensors as
// scheme = the scheme name, dtype i8, data = the payload above. from_record validates every size and code.
TensorRecord to_record(const QuantizedTensor& t);
QuantizedTensor from_record(const TensorRecord& r);
// Payload size a record of this scheme and shape must have (for artifact validators). Throws on unknown.
size_t expected_payload_size(std::string_view scheme, DType dtype, std::span<const int64_t> shape);

}  // namespace ptool::quant

// The dry-run report of `ptool quantize`: per tensor scheme, bits, reconstruction error and estimated bytes.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/quant/quantized_tensor.h"

namespace ptool::quant {

// Order-0 Shannon entropy of the codes, bits per code (0 for an empty or constant array).
double code_entropy_bits(std::span<const int8_t> codes);

// Estimated stored bytes: numel * entropy / 8 for the codes plus the raw scale bytes (2 per fp16 scale,
// 4 for an fp32 scale); passthrough tensors count their raw bytes. A stand-in for the codec's output.
double estimate_bytes(const QuantizedTensor& t);

struct TensorReport {
  std::string name;
  std::string scheme;
  int bits = 0;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  double mse = 0;             // mean (W - What)^2
  double max_abs_err = 0;
  double rel_err = 0;         // |W - What|^2 / |W|^2 (0 when W = 0)
  double entropy_bits = 0;    // per code (coded tensors)
  int64_t payload_bytes = 0;  // raw payload (codes + scales, or the float values)
  double est_bytes = 0;       // estimate_bytes()
  nlohmann::json info;        // the tensor's info (rule, percentile, k, GPTQ notes)
};

TensorReport make_report(const QuantizedTensor& t, std::span<const float> original);

// A fixed-width table, one line per tensor plus a total line.
std::string format_report(std::span<const TensorReport> rows);
nlohmann::json report_json(std::span<const TensorReport> rows);

}  // namespace ptool::quant

#include "src/quant/report.h"

#include <array>
#include <cmath>
#include <cstdio>

#include "formats/error.h"

namespace ptool::quant {

double code_entropy_bits(std::span<const int8_t> codes) {
  if (codes.empty()) return 0;
  std::array<int64_t, 256> hist{};
  for (int8_t q : codes) ++hist[static_cast<uint8_t>(q)];
  const double n = static_cast<double>(codes.size());
  double h = 0;
  for (int64_t c : hist)
    if (c > 0) {
      const double p = static_cast<double>(c) / n;
      h -= p * std::log2(p);
    }
  return h;
}

double estimate_bytes(const QuantizedTensor& t) {
  switch (t.layout) {
    case Layout::f32:
    case Layout::f16: return static_cast<double>(payload_size(t));
    case Layout::per_row:
    case Layout::per_tensor_f16:
      return static_cast<double>(t.codes.size()) * code_entropy_bits(t.codes) / 8.0 + 2.0 * t.scales_f16.size();
    case Layout::per_tensor_f32: return static_cast<double>(t.codes.size()) * code_entropy_bits(t.codes) / 8.0 + 4.0;
  }
  return 0;
}

TensorReport make_report(const QuantizedTensor& t, std::span<const float> original) {
  TensorReport r;
  r.name = t.name;
  r.scheme = t.scheme;
  r.bits = t.bits;
  r.shape = t.shape;
  r.numel = t.numel();
  if (static_cast<int64_t>(original.size()) != r.numel)
    throw Error("report for '" + t.name + "': " + std::to_string(original.size()) + " original values for " +
                std::to_string(r.numel) + " elements");
  const std::vector<float> deq = dequantize(t);
  double se = 0, norm = 0;
  for (int64_t i = 0; i < r.numel; ++i) {
    const double d = static_cast<double>(original[i]) - deq[i];
    se += d * d;
    norm += static_cast<double>(original[i]) * original[i];
    r.max_abs_err = std::max(r.max_abs_err, std::fabs(d));
  }
  r.mse = r.numel ? se / static_cast<double>(r.numel) : 0;
  r.rel_err = norm > 0 ? se / norm : 0;
  r.entropy_bits = t.coded() ? code_entropy_bits(t.codes) : 0;
  r.payload_bytes = static_cast<int64_t>(payload_size(t));
  r.est_bytes = estimate_bytes(t);
  r.info = t.info;
  return r;
}

std::string format_report(std::span<const TensorReport> rows) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-40s %-20s %4s %12s %11s %11s %9s %12s %12s\n", "tensor", "scheme", "bits",
                "numel", "mse", "rel_err", "H(q)", "payload_B", "est_B");
  out += line;
  int64_t numel = 0, payload = 0;
  double est = 0;
  for (const TensorReport& r : rows) {
    std::snprintf(line, sizeof line, "%-40s %-20s %4d %12lld %11.4e %11.4e %9.3f %12lld %12.0f\n", r.name.c_str(),
                  r.scheme.c_str(), r.bits, static_cast<long long>(r.numel), r.mse, r.rel_err, r.entropy_bits,
                  static_cast<long long>(r.payload_bytes), r.est_bytes);
    out += line;
    numel += r.numel;
    payload += r.payload_bytes;
    est += r.est_bytes;
  }
  std::snprintf(line, sizeof line, "%-40s %-20s %4s %12lld %11s %11s %9s %12lld %12.0f\n", "total", "", "",
                static_cast<long long>(numel), "", "", "", static_cast<long long>(payload), est);
  out += line;
  return out;
}

nlohmann::json report_json(std::span<const TensorReport> rows) {
  nlohmann::json tensors = nlohmann::json::array();
  int64_t payload = 0;
  double est = 0;
  for (const TensorReport& r : rows) {
    tensors.push_back({{"name", r.name},
                       {"scheme", r.scheme},
                       {"bits", r.bits},
                       {"shape", r.shape},
                       {"numel", r.numel},
                       {"mse", r.mse},
                       {"max_abs_err", r.max_abs_err},
                       {"rel_err", r.rel_err},
                       {"entropy_bits", r.entropy_bits},
                       {"payload_bytes", r.payload_bytes},
                       {"est_bytes", r.est_bytes},
                       {"info", r.info}});
    payload += r.payload_bytes;
    est += r.est_bytes;
  }
  return {{"tensors", tensors}, {"payload_bytes", payload}, {"est_bytes", est}};
}

}  // namespace ptool::quant

#include "src/quant/quantized_tensor.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "formats/error.h"
#include "src/quant/fp16.h"
#include "src/quant/spec.h"

namespace ptool::quant {

std::string_view layout_name(Layout l) {
  switch (l) {
    case Layout::f32: return "f32";
    case Layout::f16: return "f16";
    case Layout::per_row: return "per_row";
    case Layout::per_tensor_f16: return "per_tensor_f16";
    case Layout::per_tensor_f32: return "per_tensor_f32";
  }
  return "unknown";
}

int64_t shape_numel(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error("negative dimension " + std::to_string(d) + " in a tensor shape");
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) throw Error("tensor shape overflows int64");
    n *= d;
  }
  return n;
}

int64_t QuantizedTensor::numel() const { return shape_numel(shape); }

namespace {

[[noreturn]] void fail(const QuantizedTensor& t, const std::string& what) {
  throw Error("quantized tensor '" + t.name + "' (" + t.scheme + "): " + what);
}

int64_t rows_of(const QuantizedTensor& t) { return t.shape.empty() ? 1 : t.shape[0]; }

}  // namespace

void validate(const QuantizedTensor& t) {
  const int64_t n = t.numel();
  auto expect = [&](size_t have, int64_t want, const char* what) {
    if (static_cast<int64_t>(have) != want)
      fail(t, std::string(what) + " has " + std::to_string(have) + " entries, expected " + std::to_string(want));
  };
  switch (t.layout) {
    case Layout::f32: expect(t.values_f32.size(), n, "values_f32"); return;
    case Layout::f16: expect(t.values_f16.size(), n, "values_f16"); return;
    case Layout::per_row:
      if (t.shape.size() != 2) fail(t, "per-row layout needs a 2-D shape");
      expect(t.scales_f16.size(), t.shape[0], "scales_f16");
      break;
    case Layout::per_tensor_f16: expect(t.scales_f16.size(), 1, "scales_f16"); break;
    case Layout::per_tensor_f32:
      if (!std::isfinite(t.scale_f32)) fail(t, "scale is not finite");
      break;
  }
  if (t.bits < 2 || t.bits > 8) fail(t, "bits " + std::to_string(t.bits) + " is outside 2..8");
  expect(t.codes.size(), n, "codes");
  for (uint16_t s : t.scales_f16)
    if ((s & 0x7c00u) == 0x7c00u) fail(t, "a scale is inf or NaN");
  const int R = t.range();
  for (size_t i = 0; i < t.codes.size(); ++i)
    if (t.codes[i] < -R || t.codes[i] > R)
      fail(t, "code " + std::to_string(t.codes[i]) + " at element " + std::to_string(i) + " is outside [-" +
                  std::to_string(R) + ", " + std::to_string(R) + "]");
}

void dequantize_into(const QuantizedTensor& t, std::span<float> out) {
  validate(t);
  const int64_t n = t.numel();
  if (static_cast<int64_t>(out.size()) != n)
    fail(t, "output has " + std::to_string(out.size()) + " elements, expected " + std::to_string(n));
  switch (t.layout) {
    case Layout::f32:
      std::copy(t.values_f32.begin(), t.values_f32.end(), out.begin());
      return;
    case Layout::f16:
      for (int64_t i = 0; i < n; ++i) out[i] = half_to_float(t.values_f16[i]);
      return;
    case Layout::per_row: {
      const int64_t rows = t.shape[0], cols = t.shape[1];
      for (int64_t r = 0; r < rows; ++r) {
        const float s = half_to_float(t.scales_f16[r]);
        for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = static_cast<float>(t.codes[r * cols + c]) * s;
      }
      return;
    }
    case Layout::per_tensor_f16:
    case Layout::per_tensor_f32: {
      const float s = t.layout == Layout::per_tensor_f32 ? t.scale_f32 : half_to_float(t.scales_f16[0]);
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(t.codes[i]) * s;
      return;
    }
  }
}

std::vector<float> dequantize(const QuantizedTensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  dequantize_into(t, out);
  return out;
}

size_t payload_size(const QuantizedTensor& t) {
  const size_t n = static_cast<size_t>(t.numel());
  switch (t.layout) {
    case Layout::f32: return n * 4;
    case Layout::f16: return n * 2;
    case Layout::per_row: return n + 2 * static_cast<size_t>(rows_of(t));
    case Layout::per_tensor_f16: return n + 2;
    case Layout::per_tensor_f32: return n + 4;
  }
  return 0;
}

namespace {

void put_u16(std::vector<uint8_t>& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v & 0xff));
  b.push_back(static_cast<uint8_t>(v >> 8));
}
void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint16_t get_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t get_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}

}  // namespace

std::vector<uint8_t> encode_payload(const QuantizedTensor& t) {
  validate(t);
  std::vector<uint8_t> b;
  b.reserve(payload_size(t));
  switch (t.layout) {
    case Layout::f32:
      for (float v : t.values_f32) put_u32(b, std::bit_cast<uint32_t>(v));
      break;
    case Layout::f16:
      for (uint16_t v : t.values_f16) put_u16(b, v);
      break;
    case Layout::per_row:
    case Layout::per_tensor_f16:
      for (int8_t q : t.codes) b.push_back(static_cast<uint8_t>(q));
      for (uint16_t s : t.scales_f16) put_u16(b, s);
      break;
    case Layout::per_tensor_f32:
      for (int8_t q : t.codes) b.push_back(static_cast<uint8_t>(q));
      put_u32(b, std::bit_cast<uint32_t>(t.scale_f32));
      break;
  }
  return b;
}

namespace {

// Local names so that this file needs nothing from the artifact implementation but its structs.
std::string dtype_label(DType d) {
  switch (d) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::i8: return "i8";
    default: return "dtype#" + std::to_string(static_cast<int>(d));
  }
}

Layout coded_layout(const SchemeInfo& info, size_t ndim) {
  if (ndim == 2) return Layout::per_row;
  return info.tensor_scale_f32 ? Layout::per_tensor_f32 : Layout::per_tensor_f16;
}

}  // namespace

size_t expected_payload_size(std::string_view scheme, DType dtype, std::span<const int64_t> shape) {
  QuantizedTensor t;
  t.shape.assign(shape.begin(), shape.end());
  if (scheme.empty()) {
    if (dtype == DType::f32) t.layout = Layout::f32;
    else if (dtype == DType::f16) t.layout = Layout::f16;
    else throw Error("plain tensor of dtype " + dtype_label(dtype) + " is not a quantizer passthrough");
  } else {
    t.layout = coded_layout(parse_scheme(scheme), shape.size());
  }
  return payload_size(t);
}

TensorRecord to_record(const QuantizedTensor& t) {
  TensorRecord r;
  r.name = t.name;
  r.shape = t.shape;
  if (t.coded()) {
    r.dtype = DType::i8;
    r.scheme = t.scheme;
    r.scheme_version = t.scheme_version;
  } else {
    r.dtype = t.layout == Layout::f32 ? DType::f32 : DType::f16;
  }
  r.data = encode_payload(t);
  return r;
}

QuantizedTensor from_record(const TensorRecord& r) {
  QuantizedTensor t;
  t.name = r.name;
  t.shape = r.shape;
  const size_t want = expected_payload_size(r.scheme, r.dtype, r.shape);
  if (r.data.size() != want)
    throw Error("tensor '" + r.name + "' (" + (r.scheme.empty() ? dtype_label(r.dtype) : r.scheme) +
                "): payload is " + std::to_string(r.data.size()) + " bytes, expected " + std::to_string(want));
  const size_t n = static_cast<size_t>(t.numel());
  const uint8_t* p = r.data.data();
  if (r.scheme.empty()) {
    t.layout = r.dtype == DType::f32 ? Layout::f32 : Layout::f16;
    t.scheme = t.layout == Layout::f32 ? "f32" : "f16";
    if (t.layout == Layout::f32) {
      t.values_f32.resize(n);
      for (size_t i = 0; i < n; ++i) t.values_f32[i] = std::bit_cast<float>(get_u32(p + 4 * i));
    } else {
      t.values_f16.resize(n);
      for (size_t i = 0; i < n; ++i) t.values_f16[i] = get_u16(p + 2 * i);
    }
    return t;
  }
  if (r.dtype != DType::i8)
    throw Error("tensor '" + r.name + "': scheme " + r.scheme + " is stored as i8, not " + dtype_label(r.dtype));
  if (r.scheme_version != kSchemeVersion)
    throw Error("tensor '" + r.name + "': scheme " + r.scheme + " version " + std::to_string(r.scheme_version) +
                " is not supported (this build reads version " + std::to_string(kSchemeVersion) + ")");
  const SchemeInfo info = parse_scheme(r.scheme);
  t.scheme = r.scheme;
  t.scheme_version = r.scheme_version;
  t.bits = info.bits;
  t.layout = coded_layout(info, r.shape.size());
  t.codes.resize(n);
  std::memcpy(t.codes.data(), p, n);
  p += n;
  if (t.layout == Layout::per_row) {
    t.scales_f16.resize(static_cast<size_t>(r.shape[0]));
    for (size_t i = 0; i < t.scales_f16.size(); ++i) t.scales_f16[i] = get_u16(p + 2 * i);
  } else if (t.layout == Layout::per_tensor_f16) {
    t.scales_f16 = {get_u16(p)};
  } else {
    t.scale_f32 = std::bit_cast<float>(get_u32(p));
  }
  validate(t);
  return t;
}

}  // namespace ptool::quant

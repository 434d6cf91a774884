#include "src/quant/rtn.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "formats/error.h"
#include "src/quant/fp16.h"

namespace ptool::quant {

float quantile_sorted(std::span<const float> sorted, double p) {
  const int64_t n = static_cast<int64_t>(sorted.size());
  if (n == 0) throw Error("quantile of an empty array");
  const float rank = static_cast<float>(p) * static_cast<float>(n - 1);
  const int64_t lo = static_cast<int64_t>(rank);
  const int64_t hi = std::min<int64_t>(static_cast<int64_t>(std::ceil(rank)), n - 1);
  const float w = rank - static_cast<float>(lo);
  const float a = sorted[lo], b = sorted[hi];
  const float d = b - a;
  return std::fabs(w) < 0.5f ? std::fma(w, d, a) : std::fma(w - 1.0f, d, b);
}

float unbiased_std(std::span<const float> x) {
  const size_t n = x.size();
  if (n < 2) return 0.0f;
  double mean = 0;
  for (float v : x) mean += v;
  mean /= static_cast<double>(n);
  double ss = 0;
  for (float v : x) ss += (v - mean) * (v - mean);
  return static_cast<float>(std::sqrt(ss / static_cast<double>(n - 1)));
}

std::vector<double> hsdclip_row_factors(const float* W, int64_t rows, int64_t cols, const double* H,
                                        double percdamp, double lambda) {
  std::vector<double> diag(static_cast<size_t>(cols));
  double mean = 0;
  for (int64_t c = 0; c < cols; ++c) {
    diag[c] = H[c * cols + c] == 0 ? 1.0 : H[c * cols + c];
    mean += diag[c];
  }
  mean /= static_cast<double>(cols);
  const double damp = percdamp * mean;
  double mean2 = 0;
  for (double& d : diag) {
    d = std::max(d + damp, 1e-8);
    mean2 += d;
  }
  mean2 /= static_cast<double>(cols);
  std::vector<double> imp(static_cast<size_t>(rows));
  double imp_mean = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) s += std::fabs(static_cast<double>(W[r * cols + c])) * (diag[c] / mean2);
    imp[r] = s / static_cast<double>(cols);
    imp_mean += imp[r];
  }
  imp_mean /= static_cast<double>(rows);
  for (double& v : imp) v = imp_mean > 0 ? 1.0 + lambda * (v / imp_mean - 1.0) : 1.0;
  return imp;
}

namespace {

// fp16 scale bits for a positive fp32 scale; see row_scales().
uint16_t half_scale(float s, int64_t row) {
  if (std::isnan(s)) throw Error("row " + std::to_string(row) + ": scale is NaN");
  uint16_t h = float_to_half(s);
  if ((h & 0x7fffu) == 0) h = 1;  // underflow to zero: smallest subnormal
  if ((h & 0x7c00u) == 0x7c00u)
    throw Error("row " + std::to_string(row) + ": scale " + std::to_string(s) + " does not fit in fp16");
  return h;
}

float row_absmax(const float* row, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(row[i]));
  return m;
}

void sorted_abs(const float* row, int64_t n, std::vector<float>& buf) {
  buf.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) buf[i] = std::fabs(row[i]);
  std::sort(buf.begin(), buf.end());
}

void check_finite(std::string_view name, std::span<const float> W) {
  for (size_t i = 0; i < W.size(); ++i)
    if (!std::isfinite(W[i]))
      throw Error("tensor '" + std::string(name) + "': element " + std::to_string(i) + " is not finite");
}

inline float round_clamp(float x, float R) { return std::clamp(std::nearbyint(x), -R, R); }

}  // namespace

std::vector<uint16_t> row_scales(const float* W, int64_t rows, int64_t cols, const QuantSpec& spec, double p,
                                 const double* H) {
  const int R = spec.range();
  const float Rf = static_cast<float>(R);
  const float floor = static_cast<float>(spec.floor_value());
  std::vector<double> adj;
  if (spec.clip == Clip::hsdclip) {
    if (!H) throw Error("Hessian-aware SDClip needs a Hessian");
    adj = hsdclip_row_factors(W, rows, cols, H, spec.gptq_options.percdamp, spec.lambda);
  }
  const float k = static_cast<float>(spec.k);
  std::vector<uint16_t> scales(static_cast<size_t>(rows));
  std::vector<float> buf;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = W + r * cols;
    float s = 0;
    switch (spec.clip) {
      case Clip::clean:
      case Clip::search:
        sorted_abs(row, cols, buf);
        s = std::max(quantile_sorted(buf, p) / Rf, floor);
        break;
      case Clip::rowmax: s = std::max(row_absmax(row, cols) / Rf, floor); break;
      case Clip::ste_rowmax:
        s = spec.scale_floor < 0 ? std::max(row_absmax(row, cols), static_cast<float>(1.0 / R)) / Rf
                                 : std::max(row_absmax(row, cols) / Rf, floor);
        break;
      case Clip::sdclip: s = std::max(k * unbiased_std({row, static_cast<size_t>(cols)}) / Rf, floor); break;
      case Clip::hsdclip:
        s = std::max(k * unbiased_std({row, static_cast<size_t>(cols)}) * static_cast<float>(adj[r]) / Rf, floor);
        break;
    }
    scales[r] = half_scale(s, r);
  }
  return scales;
}

void quantize_with_scales(const float* W, int64_t rows, int64_t cols, int bits, const uint16_t* scales_f16,
                          int8_t* codes) {
  const float Rf = static_cast<float>((1 << (bits - 1)) - 1);
  for (int64_t r = 0; r < rows; ++r) {
    const float s = half_to_float(scales_f16[r]);
    for (int64_t c = 0; c < cols; ++c)
      codes[r * cols + c] = static_cast<int8_t>(round_clamp(W[r * cols + c] / s, Rf));
  }
}

namespace {

// Baseline per-row int8 (generalised to R): clamp to the quantile, round with the fp32 scale, store fp16.
void clean_rows(const float* W, int64_t rows, int64_t cols, const QuantSpec& spec, int8_t* codes,
                uint16_t* scales) {
  const float Rf = static_cast<float>(spec.range());
  const float floor = static_cast<float>(spec.floor_value());
  std::vector<float> buf;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = W + r * cols;
    sorted_abs(row, cols, buf);
    const float clip = quantile_sorted(buf, spec.percentile);
    float s = std::max(clip / Rf, floor);
    if (!(s > 0)) s = half_to_float(1);  // only with a zero floor and an all-zero clip: every code is 0
    for (int64_t c = 0; c < cols; ++c)
      codes[r * cols + c] = static_cast<int8_t>(round_clamp(std::max(std::min(row[c], clip), -clip) / s, Rf));
    scales[r] = half_scale(s, r);
  }
}

double dequant_sse(const float* W, int64_t rows, int64_t cols, const int8_t* codes, const uint16_t* scales) {
  double sse = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float s = half_to_float(scales[r]);
    for (int64_t c = 0; c < cols; ++c) {
      const float d = static_cast<float>(codes[r * cols + c]) * s;  // exactly what dequantize() gives
      const double e = static_cast<double>(W[r * cols + c]) - static_cast<double>(d);
      sse += e * e;
    }
  }
  return sse;
}

}  // namespace

QuantizedTensor quantize_rtn(std::string_view name, std::span<const int64_t> shape, std::span<const float> W,
                             const QuantSpec& spec_in, const double* H) {
  QuantSpec spec = spec_in;
  spec.gptq = false;
  try {
    check_spec(spec);
  } catch (const Error& e) {
    throw Error("tensor '" + std::string(name) + "': " + e.what());
  }
  QuantizedTensor t;
  t.name = std::string(name);
  t.shape.assign(shape.begin(), shape.end());
  t.bits = spec.bits;
  t.scheme = scheme_name(spec);
  t.scheme_version = kSchemeVersion;
  const int64_t n = t.numel();
  if (static_cast<int64_t>(W.size()) != n)
    throw Error("tensor '" + t.name + "': " + std::to_string(W.size()) + " values for a shape of " +
                std::to_string(n) + " elements");
  if (n == 0) throw Error("tensor '" + t.name + "' is empty; pass it through instead");
  check_finite(name, W);
  const bool two_d = shape.size() == 2;
  const int64_t rows = two_d ? shape[0] : 1, cols = two_d ? shape[1] : n;
  t.codes.resize(static_cast<size_t>(n));
  t.info["clip"] = std::string(clip_name(spec.clip));
  t.info["bits"] = spec.bits;
  try {
    if (spec.clip == Clip::clean && !two_d) {  // the baseline's per-tensor int8: fp32 scale, no floor
      std::vector<float> buf;
      sorted_abs(W.data(), n, buf);
      const float clip = quantile_sorted(buf, spec.percentile);
      const float s = clip > 0 ? clip / static_cast<float>(spec.range()) : 1.0f;
      const float Rf = static_cast<float>(spec.range());
      for (int64_t i = 0; i < n; ++i)
        t.codes[i] = static_cast<int8_t>(round_clamp(std::max(std::min(W[i], clip), -clip) / s, Rf));
      t.layout = Layout::per_tensor_f32;
      t.scale_f32 = s;
      t.info["percentile"] = spec.percentile;
      return t;
    }
    t.layout = two_d ? Layout::per_row : Layout::per_tensor_f16;
    t.scales_f16.resize(static_cast<size_t>(rows));
    switch (spec.clip) {
      case Clip::clean:
        clean_rows(W.data(), rows, cols, spec, t.codes.data(), t.scales_f16.data());
        t.info["percentile"] = spec.percentile;
        break;
      case Clip::search: {
        double best = INFINITY;
        std::vector<int8_t> codes(t.codes.size());
        for (double p : spec.percentiles) {
          std::vector<uint16_t> scales = row_scales(W.data(), rows, cols, spec, p);
          quantize_with_scales(W.data(), rows, cols, spec.bits, scales.data(), codes.data());
          const double mse = dequant_sse(W.data(), rows, cols, codes.data(), scales.data()) / static_cast<double>(n);
          if (mse < best) {
            best = mse;
            t.codes.swap(codes);
            t.scales_f16 = std::move(scales);
            t.info["percentile"] = p;
          }
        }
        break;
      }
      case Clip::hsdclip:
        if (!two_d) {  // no Hessian applies to a non-matrix: plain SDClip
          QuantSpec s2 = spec;
          s2.clip = Clip::sdclip;
          t.scales_f16 = row_scales(W.data(), rows, cols, s2, 1.0);
          t.info["note"] = "not a matrix: Hessian factor 1";
        } else {
          if (!H) throw Error("Hessian-aware SDClip needs a Hessian and none was given");
          t.scales_f16 = row_scales(W.data(), rows, cols, spec, 1.0, H);
        }
        t.info["k"] = spec.k;
        t.info["lambda"] = spec.lambda;
        quantize_with_scales(W.data(), rows, cols, spec.bits, t.scales_f16.data(), t.codes.data());
        break;
      case Clip::sdclip:
        t.info["k"] = spec.k;
        [[fallthrough]];
      case Clip::rowmax:
      case Clip::ste_rowmax:
        t.scales_f16 = row_scales(W.data(), rows, cols, spec, 1.0);
        quantize_with_scales(W.data(), rows, cols, spec.bits, t.scales_f16.data(), t.codes.data());
        break;
    }
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.starts_with("tensor '")) throw;
    throw Error("tensor '" + t.name + "': " + msg);
  }
  return t;
}

void fake_quantize_rows(const float* W, int64_t rows, int64_t cols, int bits, float* out) {
  if (bits < 2 || bits > 8) throw Error("fake quant bits " + std::to_string(bits) + " is outside 2..8");
  const int R = (1 << (bits - 1)) - 1;
  const float Rf = static_cast<float>(R);
  const float floor = static_cast<float>(1.0 / R);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = W + r * cols;
    float* o = out + r * cols;
    // Same steps as row_scales(Clip::ste_rowmax) + quantize_with_scales + dequantize. A NaN weight
    // propagates (NaN scale) instead of throwing, so that training's own NaN check reports it.
    float m = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::isnan(row[c]) ? row[c] : std::max(m, std::fabs(row[c]));
    if (std::isnan(m)) {
      for (int64_t c = 0; c < cols; ++c) o[c] = m;
      continue;
    }
    uint16_t h = float_to_half(std::max(m, floor) / Rf);
    if ((h & 0x7fffu) == 0) h = 1;
    const float s = half_to_float(h);
    // Through an integer, as dequantize() does: code 0 gives +0, never -0.
    for (int64_t c = 0; c < cols; ++c) o[c] = static_cast<float>(static_cast<int>(round_clamp(row[c] / s, Rf))) * s;
  }
}

void fake_quantize_rows(const float* W, int64_t rows, int64_t cols, const QuantSpec& spec, float* out,
                        const double* H) {
  if (spec.gptq) throw Error("fake quantization is round-to-nearest; GPTQ has no STE form");
  const int64_t shape[2] = {rows, cols};
  const QuantizedTensor t =
      quantize_rtn("fake_quant", shape, {W, static_cast<size_t>(rows * cols)}, spec, H);
  dequantize_into(t, {out, static_cast<size_t>(rows * cols)});
}

double squared_error(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) throw Error("squared_error: sizes differ");
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    s += d * d;
  }
  return s;
}

}  // namespace ptool::quant

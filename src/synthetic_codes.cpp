#include "src/synthetic_codes.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "formats/error.h"

namespace ptool {

namespace {

// xoshiro256** seeded through splitmix64.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& x : s_) {
      seed += 0x9E3779B97F4A7C15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      x = z ^ (z >> 31);
    }
  }
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform();
    const double u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * std::numbers::pi * u2);
  }
  int uniform_int(int lo, int hi) {  // inclusive
    return lo + static_cast<int>(next() % static_cast<uint64_t>(hi - lo + 1));
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
  double spare_ = 0;
  bool has_spare_ = false;
};

// Round to the nearest fp16 value (round half to even), saturating at the largest finite half.
float round_to_fp16(float v) {
  if (!std::isfinite(v) || v == 0.0f) return v;
  const double a = std::fabs(static_cast<double>(v));
  if (a >= 65504.0) return std::copysign(65504.0f, v);
  int e;
  std::frexp(a, &e);                           // a = m * 2^e, m in [0.5, 1)
  const int exp_unit = std::max(e - 11, -24);  // 11 significant bits; subnormal step 2^-24
  const double q = std::nearbyint(std::ldexp(a, -exp_unit));
  return static_cast<float>(std::copysign(std::ldexp(q, exp_unit), static_cast<double>(v)));
}

uint64_t mix_seed(uint64_t seed, uint64_t index) {
  uint64_t z = seed ^ (index + 0x632BE59BD9B4E019ull) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 32)) * 0xD6E8FEB86659FD93ull;
  return z ^ (z >> 32);
}

}  // namespace

SyntheticWeightOptions synthetic_preset(const std::string& name) {
  SyntheticWeightOptions o;
  if (name == "default") return o;
  if (name == "iid") {
    o.row_log_sigma = 0;
    o.col_log_sigma = 0;
    o.low_rank = 0;
    o.low_rank_share = 0;
    o.gaussian_row_share = 1.0;
    return o;
  }
  if (name == "strong") {
    o.col_log_sigma = 0.4;
    o.low_rank_share = 0.3;
    o.gaussian_row_share = 0.25;
    o.min_dof = 3;
    o.max_dof = 8;
    return o;
  }
  throw Error("unknown synthetic preset '" + name + "' (expected iid, default or strong)");
}

std::vector<SyntheticTensorSpec> baseline_code_specs(int layers, int dim, int vocab) {
  std::vector<SyntheticTensorSpec> specs;
  specs.push_back({"tok_emb.weight", "tok_emb", vocab, dim, 8, 20.0});
  const int kv = dim / 2;  // 4 KV heads of 64 with 8 query heads
  for (int i = 0; i < layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    specs.push_back({b + "attn.c_q.weight", "attn.c_q", dim, dim, 6, 12.85});
    specs.push_back({b + "attn.c_k.weight", "attn.c_k", kv, dim, 6, 12.85});
    specs.push_back({b + "attn.c_v.weight", "attn.c_v", kv, dim, 6, 12.85});
    specs.push_back({b + "attn.proj.weight", "attn.proj", dim, dim, 6, 12.85});
    specs.push_back({b + "mlp.fc.weight", "mlp.fc", 2 * dim, dim, 6, 12.85});
    specs.push_back({b + "mlp.proj.weight", "mlp.proj", dim, 2 * dim, 6, 12.85});
  }
  return specs;
}

std::vector<float> synthetic_weights(int64_t rows, int64_t cols, const SyntheticWeightOptions& opt, uint64_t seed) {
  if (rows < 0 || cols < 0) throw Error("synthetic_weights: negative shape");
  Rng rng(seed);
  std::vector<double> row_std(rows), col_scale(cols);
  for (auto& s : row_std) s = std::exp(opt.row_log_sigma * rng.normal());
  for (auto& s : col_scale) s = std::exp(opt.col_log_sigma * rng.normal());
  // Normalise the column scales to unit mean square so col_log_sigma does not change the overall scale.
  double ms = 0;
  for (double s : col_scale) ms += s * s;
  if (cols > 0) ms /= static_cast<double>(cols);
  for (auto& s : col_scale) s /= std::sqrt(ms > 0 ? ms : 1.0);

  const int rank = opt.low_rank_share > 0 ? std::max(opt.low_rank, 0) : 0;
  std::vector<double> u(static_cast<size_t>(rows) * rank), v(static_cast<size_t>(rank) * cols);
  for (auto& x : u) x = rng.normal();
  for (auto& x : v) x = rng.normal();
  const double lr_w = rank > 0 ? std::sqrt(opt.low_rank_share / rank) : 0.0;
  const double noise_w = std::sqrt(1.0 - (rank > 0 ? opt.low_rank_share : 0.0));

  std::vector<float> w(static_cast<size_t>(rows) * cols);
  std::vector<double> lr_row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(lr_row.begin(), lr_row.end(), 0.0);
    for (int k = 0; k < rank; ++k) {
      const double a = u[r * rank + k];
      const double* vk = &v[static_cast<size_t>(k) * cols];
      for (int64_t c = 0; c < cols; ++c) lr_row[c] += a * vk[c];
    }
    const bool gaussian = rng.uniform() < opt.gaussian_row_share;
    const int dof = gaussian ? 0 : rng.uniform_int(std::max(opt.min_dof, 3), std::max(opt.max_dof, opt.min_dof));
    const double t_norm = dof > 2 ? std::sqrt((dof - 2.0) / dof) : 1.0;
    for (int64_t c = 0; c < cols; ++c) {
      double n = rng.normal();
      if (dof > 0) {
        double chi2 = 0;
        for (int j = 0; j < dof; ++j) {
          const double z = rng.normal();
          chi2 += z * z;
        }
        n = n / std::sqrt(std::max(chi2, 1e-12) / dof) * t_norm;
      }
      w[r * cols + c] = static_cast<float>(row_std[r] * col_scale[c] * (lr_w * lr_row[c] + noise_w * n));
    }
  }
  return w;
}

QuantizedCodes sdclip_quantize(const std::vector<float>& w, int64_t rows, int64_t cols, int bits, double clip_sigmas) {
  if (bits < 2 || bits > 8) throw Error("sdclip_quantize: bits must be in 2..8");
  if (rows < 0 || cols < 0 || static_cast<int64_t>(w.size()) != rows * cols)
    throw Error("sdclip_quantize: weight count does not match the shape");
  const int R = (1 << (bits - 1)) - 1;
  QuantizedCodes q;
  q.rows = rows;
  q.cols = cols;
  q.bits = bits;
  q.codes.resize(w.size());
  q.scales.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = &w[r * cols];
    double mean = 0;
    for (int64_t c = 0; c < cols; ++c) mean += row[c];
    mean = cols > 0 ? mean / cols : 0;
    double var = 0;
    for (int64_t c = 0; c < cols; ++c) var += (row[c] - mean) * (row[c] - mean);
    const double sd = cols > 1 ? std::sqrt(var / (cols - 1)) : 0.0;
    const float s = round_to_fp16(static_cast<float>(std::max(clip_sigmas * sd / R, 1e-10)));
    q.scales[r] = s;
    for (int64_t c = 0; c < cols; ++c) {
      double v = s > 0 ? std::nearbyint(row[c] / static_cast<double>(s)) : 0.0;
      v = std::clamp(v, static_cast<double>(-R), static_cast<double>(R));
      q.codes[r * cols + c] = static_cast<int8_t>(v);
    }
  }
  return q;
}

QuantizedCodes synthetic_codes(const SyntheticTensorSpec& spec, const SyntheticWeightOptions& opt, uint64_t seed) {
  QuantizedCodes q = sdclip_quantize(synthetic_weights(spec.rows, spec.cols, opt, seed), spec.rows, spec.cols,
                                     spec.bits, spec.clip_sigmas);
  q.name = spec.name;
  q.group = spec.group;
  return q;
}

std::vector<QuantizedCodes> synthetic_model_codes(const std::vector<SyntheticTensorSpec>& specs,
                                                  const SyntheticWeightOptions& opt, uint64_t seed) {
  std::vector<QuantizedCodes> out;
  out.reserve(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) out.push_back(synthetic_codes(specs[i], opt, mix_seed(seed, i)));
  return out;
}

}  // namespace ptool

// Round-to-nearest schemes against values worked out by hand from REFERENCE.md §5 (float32 steps as the
// records compute them; the fp16 bit patterns are IEEE round-to-nearest-even).
#include <cmath>
#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

#include "formats/error.h"
#include "src/quant/fp16.h"
#include "src/quant/quantized_tensor.h"
#include "src/quant/rtn.h"
#include "test_quant_helpers.h"

using namespace ptool::quant;
using quant_test::Rng;
using quant_test::spec_of;

namespace {
std::vector<int8_t> codes_of(std::initializer_list<int> v) { return {v.begin(), v.end()}; }
}  // namespace

TEST_CASE("quantile: torch.quantile linear interpolation in float32", "[quant]") {
  const std::vector<float> x = {1, 2, 4, 8};
  // p = 0.5: rank = 0.5 * 3 = 1.5 -> between x[1] = 2 and x[2] = 4, w = 0.5 -> 4 - (4-2)*0.5 = 3.
  CHECK(quantile_sorted(x, 0.5) == 3.0f);
  CHECK(quantile_sorted(x, 0.0) == 1.0f);
  CHECK(quantile_sorted(x, 1.0) == 8.0f);
  // p = 0.9999984 is the float 1 - 27 * 2^-24 = 0.99999839067459...; rank = fl(p * 3) = 2.999995231628418,
  // lo = 2, w = 0.999995231628418 >= 0.5, so torch computes 8 + (w - 1) * (8 - 4) = 8 - 4 * 4.76837e-6
  // = 7.999980926513672 (0x40ffffd8).
  CHECK(quantile_sorted(x, 0.9999984) == 7.999980926513672f);
  CHECK(quantile_sorted(std::vector<float>{5}, 0.3) == 5.0f);
  CHECK_THROWS_AS(quantile_sorted(std::vector<float>{}, 0.5), ptool::Error);
}

TEST_CASE("int8 clean per-row reproduces int8_clean_per_row_v1 by hand", "[quant]") {
  // Row 0 = [0.5, -0.25, 0.125, 1.0]: sorted |W| = [0.125, 0.25, 0.5, 1.0];
  //   clip = quantile(0.9999984) = 1.0 + (w-1)(1.0 - 0.5) = 0.999997615814209;
  //   scale = max(clip/127, 1/127) = fl(1/127) = 0.007874015718698502 (clip < 1, so the floor wins);
  //   q = round(clamp(W)/scale) = round([63.5, -31.75, 15.875, 126.9997]) = [64, -32, 16, 127]
  //   (63.5 is an exact tie: half to even gives 64); stored scale fp16 = 0x2008 (0.00787353515625).
  // Row 1 = [2, -3, 0.5, 1.5]: sorted |W| = [0.5, 1.5, 2, 3]; clip = 3 + (w-1)(3 - 2) = 2.999995231628418;
  //   scale = clip/127 = 0.02362200990319252 (> 1/127); -3 is clamped to -clip;
  //   W/scale = [84.6668, -127.0, 21.1667, 63.5001] -> [85, -127, 21, 64]; fp16 scale 0x260c.
  const std::vector<float> W = {0.5f, -0.25f, 0.125f, 1.0f, 2.0f, -3.0f, 0.5f, 1.5f};
  const int64_t shape[] = {2, 4};
  const QuantizedTensor t = quantize_rtn("m", shape, W, spec_of(8, Clip::clean));
  CHECK(t.scheme == "int8_clean");
  CHECK(t.layout == Layout::per_row);
  CHECK(t.codes == codes_of({64, -32, 16, 127, 85, -127, 21, 64}));
  REQUIRE(t.scales_f16.size() == 2);
  CHECK(t.scales_f16[0] == 0x2008);
  CHECK(t.scales_f16[1] == 0x260c);
  // Dequantization uses the stored fp16 scale: q * half(s).
  const std::vector<float> d = dequantize(t);
  CHECK(d[0] == 64 * 0.00787353515625f);
  CHECK(d[5] == -127 * 0.02362060546875f);
}

TEST_CASE("int8 clean per-tensor (vectors) uses one fp32 scale without floor", "[quant]") {
  // The 8 values above as one vector: sorted |W| = [.125 .25 .25 .5 .5 1 1.5 2 3] minus one .5 ->
  // [0.125, 0.25, 0.5, 0.5, 1, 1.5, 2, 3]; rank = fl(p * 7) = 6.999988555908203, w = 0.99998856;
  // clip = 3 + (w-1)(3-2) = 2.999988555908203; scale = clip/127 = 0.02362195774912834 (fp32, 0x3cc182d6);
  // W/scale = [21.17, -10.58, 5.29, 42.33, 84.67, -127, 21.17, 63.50024] -> codes below.
  const std::vector<float> W = {0.5f, -0.25f, 0.125f, 1.0f, 2.0f, -3.0f, 0.5f, 1.5f};
  const int64_t shape[] = {8};
  const QuantizedTensor t = quantize_rtn("v", shape, W, spec_of(8, Clip::clean));
  CHECK(t.layout == Layout::per_tensor_f32);
  CHECK(std::bit_cast<uint32_t>(t.scale_f32) == 0x3cc182d6u);
  CHECK(t.codes == codes_of({21, -11, 5, 42, 85, -127, 21, 64}));
  // An all-zero vector gets scale 1.0, as in the baseline.
  const std::vector<float> Z(8, 0.0f);
  CHECK(quantize_rtn("z", shape, Z, spec_of(8, Clip::clean)).scale_f32 == 1.0f);
}

TEST_CASE("int6 row-max by hand", "[quant]") {
  // Row [3.1, -1.55, 0.2, 0]: rowmax 3.1 -> s = max(3.1/31, 1/31) = 0.099999994 -> fp16 0x2e66 = 0.0999755859375;
  // W/s = [31.0076, -15.5038, 2.0005, 0] -> [31, -16, 2, 0].
  const std::vector<float> W = {3.1f, -1.55f, 0.2f, 0.0f};
  const int64_t shape[] = {1, 4};
  const QuantizedTensor t = quantize_rtn("r", shape, W, spec_of(6, Clip::rowmax));
  CHECK(t.scheme == "int6_rowmax");
  CHECK(t.scales_f16[0] == 0x2e66);
  CHECK(t.codes == codes_of({31, -16, 2, 0}));
  CHECK(dequantize(t)[1] == -1.599609375f);
}

TEST_CASE("int6 STE row-max by hand, and fake quant equals the quantizer bit for bit", "[quant]") {
  // Row 0 [0.5, -0.25, 0.01, 0]: s = max(0.5, 1/31)/31 = 0.016129032 -> fp16 0x2421 = 0.0161285400390625;
  //   W/s = [31.0009, -15.5005, 0.62, 0] -> [31, -16, 1, 0].
  // Row 1 [0.01, -0.02, 0, 0.005]: rowmax 0.02 < 1/31, so s = (1/31)/31 = 0.0010405827 -> fp16 0x1443;
  //   W/s = [9.611, -19.222, 0, 4.806] -> [10, -19, 0, 5].  (The late-QAT floor max(rowmax/31, 1/31) would
  //   give s = 1/31 here and codes [0, -1, 0, 0].)
  const std::vector<float> W = {0.5f, -0.25f, 0.01f, 0.0f, 0.01f, -0.02f, 0.0f, 0.005f};
  const int64_t shape[] = {2, 4};
  const QuantizedTensor t = quantize_rtn("s", shape, W, spec_of(6, Clip::ste_rowmax));
  CHECK(t.scheme == "int6_ste_rowmax");
  CHECK(t.scales_f16 == std::vector<uint16_t>{0x2421, 0x1443});
  CHECK(t.codes == codes_of({31, -16, 1, 0, 10, -19, 0, 5}));
  std::vector<float> fq(W.size());
  fake_quantize_rows(W.data(), 2, 4, 6, fq.data());
  const std::vector<float> d = dequantize(t);
  CHECK(std::memcmp(fq.data(), d.data(), d.size() * sizeof(float)) == 0);
  CHECK(fq[0] == 31 * 0.0161285400390625f);
  CHECK(fq[4] == 0.010404586791992188f);
}

TEST_CASE("STE fake quant == dequantize(quantize) bit for bit on random matrices", "[quant]") {
  Rng rng(7);
  for (int bits : {4, 5, 6, 7, 8}) {
    const int64_t rows = 37, cols = 129;
    std::vector<float> W = quant_test::normal_matrix(rng, rows * cols, 0.05);
    for (int64_t c = 0; c < cols; ++c) W[3 * cols + c] = 0.0f;            // a zero row
    for (int64_t c = 0; c < cols; ++c) W[5 * cols + c] *= 100.0f;         // a large row (rowmax > 1)
    for (int64_t c = 0; c < cols; ++c) W[6 * cols + c] *= 1e-4f;          // a row far below the floor
    const int64_t shape[] = {rows, cols};
    const QuantizedTensor t = quantize_rtn("w", shape, W, spec_of(bits, Clip::ste_rowmax));
    const std::vector<float> d = dequantize(t);
    std::vector<float> fq(W.size());
    fake_quantize_rows(W.data(), rows, cols, bits, fq.data());
    REQUIRE(std::memcmp(fq.data(), d.data(), d.size() * sizeof(float)) == 0);
    // In place gives the same.
    std::vector<float> inplace = W;
    fake_quantize_rows(inplace.data(), rows, cols, bits, inplace.data());
    REQUIRE(std::memcmp(inplace.data(), d.data(), d.size() * sizeof(float)) == 0);
  }
  // The spec form matches every round-to-nearest scheme.
  const int64_t rows = 16, cols = 64;
  const std::vector<float> W = quant_test::normal_matrix(rng, rows * cols, 2.0);
  const int64_t shape[] = {rows, cols};
  for (Clip clip : {Clip::clean, Clip::rowmax, Clip::ste_rowmax, Clip::search, Clip::sdclip}) {
    const QuantSpec s = spec_of(6, clip);
    std::vector<float> fq(W.size());
    fake_quantize_rows(W.data(), rows, cols, s, fq.data());
    const std::vector<float> d = dequantize(quantize_rtn("w", shape, W, s));
    REQUIRE(std::memcmp(fq.data(), d.data(), d.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("SDClip by hand", "[quant]") {
  // Row [1..8]: unbiased std = sqrt(42/7) = sqrt(6) = 2.4494898.
  // k = 2, bits 3 (R = 3): s = 2 * 2.4494898 / 3 = 1.6329932 -> fp16 0x3e88 = 1.6328125;
  //   W/s = [0.61, 1.22, 1.84, 2.45, 3.06, 3.67, 4.29, 4.90] -> [1, 1, 2, 2, 3, 3, 3, 3] (clamped at R).
  // k = 12.85, bits 6: s = 12.85 * 2.4494898 / 31 = 1.0153531 -> fp16 0x3c10 = 1.015625 -> codes 1..8.
  const std::vector<float> W = {1, 2, 3, 4, 5, 6, 7, 8};
  const int64_t shape[] = {1, 8};
  QuantSpec s = spec_of(3, Clip::sdclip);
  s.k = 2.0;
  QuantizedTensor t = quantize_rtn("sd", shape, W, s);
  CHECK(t.scheme == "int3_sdclip");
  CHECK(t.scales_f16[0] == 0x3e88);
  CHECK(t.codes == codes_of({1, 1, 2, 2, 3, 3, 3, 3}));
  s = spec_of(6, Clip::sdclip);  // default k = 12.85
  t = quantize_rtn("sd", shape, W, s);
  CHECK(t.scales_f16[0] == 0x3c10);
  CHECK(t.codes == codes_of({1, 2, 3, 4, 5, 6, 7, 8}));
  CHECK(unbiased_std(W) == 2.4494898319244385f);
  // A zero row: std 0 -> scale 1e-10 underflows fp16 and becomes the smallest half; codes stay 0.
  const std::vector<float> Z(8, 0.0f);
  t = quantize_rtn("z", shape, Z, s);
  CHECK(t.scales_f16[0] == 0x0001);
  CHECK(t.codes == std::vector<int8_t>(8, 0));
}

TEST_CASE("Hessian-aware SDClip by hand", "[quant]") {
  // W = [[1, 0.5], [0.25, 2]], diag H = [3, 1] (off-diagonal ignored), damping 0.01 * mean = 0.02:
  //   diag' = [3.02, 1.02], col_imp = diag'/2.02 = [1.49505, 0.50495];
  //   imp = [mean(1*1.49505, 0.5*0.50495), mean(0.25*1.49505, 2*0.50495)] = [0.87376, 0.69183],
  //   divided by their mean -> [1.11621, 0.88379];
  //   lambda 0.5: factor = [1.0581028, 0.9418972].
  //   k = 3, bits 4 (R = 7): row 0 std = 0.35355338, s = 3 * 0.35355338 * 1.0581028 / 7 = 0.16032676 -> 0x3121;
  //   row 1 std = 1.2374369, s = 3 * 1.2374369 * 0.9418972 / 7 = 0.49951646 -> 0x37fe.
  //   codes: [1/0.16028, 0.5/0.16028] = [6.24, 3.12] -> [6, 3]; [0.25/0.4995, 2/0.4995] = [0.5005, 4.004] -> [1, 4].
  const std::vector<float> W = {1.0f, 0.5f, 0.25f, 2.0f};
  const std::vector<double> H = {3.0, 0.7, 0.7, 1.0};
  const int64_t shape[] = {2, 2};
  const std::vector<double> f = hsdclip_row_factors(W.data(), 2, 2, H.data(), 0.01, 0.5);
  CHECK(f[0] == Approx(1.0581027667984189).epsilon(1e-12));
  CHECK(f[1] == Approx(0.9418972332015811).epsilon(1e-12));
  QuantSpec s = spec_of(4, Clip::hsdclip);
  s.k = 3.0;
  s.lambda = 0.5;
  const QuantizedTensor t = quantize_rtn("h", shape, W, s, H.data());
  CHECK(t.scheme == "int4_hsdclip");
  CHECK(t.scales_f16 == std::vector<uint16_t>{0x3121, 0x37fe});
  CHECK(t.codes == codes_of({6, 3, 1, 4}));
  CHECK_THROWS_AS(quantize_rtn("h", shape, W, s), ptool::Error);  // no Hessian
}

TEST_CASE("GPTQ-lite keeps the percentile with the smallest whole-matrix MSE", "[quant]") {
  // Each row: 1999 N(0,1) values plus 9 and -10 (n = 2001). Percentile ranks are p * 2000:
  // 0.999 -> the 3rd largest |w| (~3.3), 0.9995 -> 9, 0.9999 -> 9.8, 0.99999 -> 9.98, 1.0 -> 10.
  // Clipping 10 to 9 costs 1 per row but shrinks the step from 10/31 to 9/31 (noise n s^2/12: 3.6 -> 2.9 per
  // row); clipping to ~3.3 costs ~77. So 0.9995 wins, and the search must find it.
  Rng rng(11);
  const int64_t rows = 4, cols = 2001;
  std::vector<float> W(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) W[r * cols + c] = static_cast<float>(std::clamp(rng.normal(), -3.5, 3.5));
    W[r * cols + 100 + r] = 9.0f;
    W[r * cols + 1500 - r] = -10.0f;
  }
  const int64_t shape[] = {rows, cols};
  QuantSpec s = spec_of(6, Clip::search);
  const QuantizedTensor t = quantize_rtn("lite", shape, W, s);
  CHECK(t.scheme == "int6_gptq_lite");
  CHECK(t.info.at("percentile").get<double>() == 0.9995);
  // Independent check: recompute every candidate and confirm the choice is the argmin and its codes match.
  double best = INFINITY, best_p = 0;
  std::vector<int8_t> best_codes;
  for (double p : s.percentiles) {
    const std::vector<uint16_t> sc = row_scales(W.data(), rows, cols, s, p);
    std::vector<int8_t> q(W.size());
    quantize_with_scales(W.data(), rows, cols, 6, sc.data(), q.data());
    double se = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const double e = W[r * cols + c] - q[r * cols + c] * static_cast<double>(half_to_float(sc[r]));
        se += e * e;
      }
    if (se < best) {
      best = se;
      best_p = p;
      best_codes = q;
    }
  }
  CHECK(best_p == 0.9995);
  CHECK(t.codes == best_codes);
}

TEST_CASE("round trip error is at most half a step (or the clipped excess)", "[quant]") {
  Rng rng(3);
  const int64_t rows = 24, cols = 200;
  std::vector<float> W = quant_test::normal_matrix(rng, rows * cols, 1.5);
  W[17] = 25.0f;  // an outlier that quantile clips
  const int64_t shape[] = {rows, cols};
  for (Clip clip : {Clip::clean, Clip::rowmax, Clip::ste_rowmax, Clip::search, Clip::sdclip}) {
    for (int bits : {5, 6, 7, 8}) {
      const QuantizedTensor t = quantize_rtn("w", shape, W, spec_of(bits, clip));
      const std::vector<float> d = dequantize(t);
      const int R = t.range();
      for (int64_t r = 0; r < rows; ++r) {
        const double s = half_to_float(t.scales_f16[r]);
        for (int64_t c = 0; c < cols; ++c) {
          const double w = W[r * cols + c], err = std::fabs(w - d[r * cols + c]);
          // clean rounds with the fp32 scale and dequantizes with the fp16 one: allow that relative 2^-11.
          const double slack = 1e-6 * std::fabs(w) + (clip == Clip::clean ? R * s * 0x1p-11 : 0.0);
          const double bound = std::fabs(w) <= (R + 0.5) * s ? s / 2 : std::fabs(w) - R * s;
          INFO("clip " << clip_name(clip) << " bits " << bits << " row " << r << " col " << c);
          REQUIRE(err <= bound + slack);
        }
      }
    }
  }
}

TEST_CASE("SDClip: larger k lowers code entropy", "[quant]") {
  Rng rng(5);
  const int64_t rows = 32, cols = 256;
  const std::vector<float> W = quant_test::normal_matrix(rng, rows * cols, 0.02);
  const int64_t shape[] = {rows, cols};
  auto entropy = [&](double k) {
    QuantSpec s = spec_of(6, Clip::sdclip);
    s.k = k;
    const QuantizedTensor t = quantize_rtn("w", shape, W, s);
    std::vector<int64_t> hist(256, 0);
    for (int8_t q : t.codes) ++hist[static_cast<uint8_t>(q)];
    double h = 0;
    for (int64_t c : hist)
      if (c) h -= static_cast<double>(c) / t.codes.size() * std::log2(static_cast<double>(c) / t.codes.size());
    return h;
  };
  CHECK(entropy(6.0) > entropy(12.0));
  CHECK(entropy(12.0) > entropy(24.0));
  // H(q) ~ b - log2 k + const: doubling k saves about one bit.
  CHECK(entropy(6.0) - entropy(12.0) == Approx(1.0).margin(0.15));
}

TEST_CASE("quantize_rtn rejects bad input with one-line errors", "[quant]") {
  std::vector<float> W = {1, 2, 3, 4};
  const int64_t shape[] = {2, 2};
  W[2] = NAN;
  CHECK_THROWS_WITH(quantize_rtn("bad", shape, W, spec_of(6, Clip::rowmax)),
                    Catch::Contains("tensor 'bad'") && Catch::Contains("element 2 is not finite"));
  W[2] = 3;
  CHECK_THROWS_WITH(quantize_rtn("bits", shape, W, spec_of(9, Clip::rowmax)), Catch::Contains("outside 2..8"));
  const int64_t wrong[] = {3, 2};
  CHECK_THROWS_WITH(quantize_rtn("n", wrong, W, spec_of(6, Clip::rowmax)), Catch::Contains("4 values"));
  W[0] = 1e9f;  // scale 1e9/31 overflows fp16
  CHECK_THROWS_WITH(quantize_rtn("big", shape, W, spec_of(6, Clip::rowmax)), Catch::Contains("fp16"));
}

// GPTQ and the Hessian accumulator.
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "formats/error.h"
#include "src/quant/fp16.h"
#include "src/quant/gptq.h"
#include "src/quant/quantizer.h"
#include "src/quant/rtn.h"
#include "test_quant_helpers.h"

using namespace ptool::quant;
using quant_test::Rng;

namespace {

QuantSpec gspec(int bits, Clip clip) {
  QuantSpec s;
  s.bits = bits;
  s.clip = clip;
  s.gptq = true;
  return s;
}

// X [tokens, cols] with strongly correlated columns: a few latent factors plus a little noise.
std::vector<float> correlated_inputs(Rng& rng, int64_t tokens, int64_t cols, int64_t factors, double noise) {
  std::vector<double> A(static_cast<size_t>(factors * cols));
  for (double& a : A) a = rng.normal();
  std::vector<float> X(static_cast<size_t>(tokens * cols));
  std::vector<double> z(static_cast<size_t>(factors));
  for (int64_t t = 0; t < tokens; ++t) {
    for (double& v : z) v = rng.normal();
    for (int64_t c = 0; c < cols; ++c) {
      double x = noise * rng.normal();
      for (int64_t f = 0; f < factors; ++f) x += z[f] * A[f * cols + c];
      X[t * cols + c] = static_cast<float>(x);
    }
  }
  return X;
}

std::vector<double> gram(const std::vector<float>& X, int64_t tokens, int64_t cols) {
  std::vector<double> H(static_cast<size_t>(cols * cols), 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) H[i * cols + j] += double(X[t * cols + i]) * double(X[t * cols + j]);
  return H;
}

}  // namespace

TEST_CASE("GPTQ by hand: error feedback moves a correlated column", "[quant]") {
  // W = [0.35, 0.1, 0.75], bits 3 (R = 3), row-max scale with no floor: s = 0.75/3 = 0.25 (exact in fp16).
  // H = [[1, .9, 0], [.9, 1, 0], [0, 0, 1]], damping 0.01 * mean(diag) = 0.01; act-order off.
  // Column 0: q = round(1.4) = 1, residual 0.1. U = chol_upper(H^-1), and U01/U00 = Hinv01/Hinv00 = -0.9/1.01,
  // so column 1 becomes 0.1 - 0.1 * (-0.9/1.01) = 0.18911 -> q = round(0.756) = 1 (round-to-nearest gives 0).
  // Column 2 is independent: 0.75 -> 3.
  // H-weighted error: RTN E = [0.1, 0.1, 0] -> 0.01 + 0.01 + 2*0.9*0.01 = 0.038;
  //                   GPTQ E = [0.1, -0.15, 0] -> 0.01 + 0.0225 - 2*0.9*0.015 = 0.0055.
  const std::vector<float> W = {0.35f, 0.1f, 0.75f};
  const std::vector<double> H = {1, 0.9, 0, 0.9, 1, 0, 0, 0, 1};
  QuantSpec s = gspec(3, Clip::rowmax);
  s.scale_floor = 0;
  s.gptq_options.act_order = false;
  const GptqResult g = gptq_quantize("hand", W.data(), 1, 3, H.data(), s);
  CHECK(g.tensor.scheme == "int3_gptq_rowmax");
  CHECK(g.tensor.scales_f16[0] == float_to_half(0.25f));
  CHECK(g.tensor.codes == std::vector<int8_t>{1, 1, 3});
  CHECK(g.retries == 0);
  CHECK(g.damp == Approx(0.01));
  const std::vector<float> dg = dequantize(g.tensor);
  CHECK(hessian_weighted_error(W.data(), dg.data(), 1, 3, H.data()) == Approx(0.0055).epsilon(1e-5));
  const int64_t shape[] = {1, 3};
  QuantSpec r = s;
  r.gptq = false;
  const QuantizedTensor rt = quantize_rtn("hand", shape, W, r);
  CHECK(rt.codes == std::vector<int8_t>{1, 0, 3});
  const std::vector<float> dr = dequantize(rt);
  CHECK(hessian_weighted_error(W.data(), dr.data(), 1, 3, H.data()) == Approx(0.038).epsilon(1e-5));
}

TEST_CASE("upper Cholesky of the inverse: U^T U = A^-1, U upper", "[quant]") {
  Rng rng(1);
  const int64_t n = 9;
  const std::vector<float> X = correlated_inputs(rng, 40, n, 3, 0.3);
  std::vector<double> A = gram(X, 40, n);
  for (int64_t i = 0; i < n; ++i) A[i * n + i] += 0.1;
  std::vector<double> U;
  REQUIRE(upper_cholesky_of_inverse(A.data(), n, U));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) CHECK(U[i * n + j] == 0.0);
  // (U^T U) A = I
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double v = 0;
      for (int64_t k = 0; k < n; ++k) {
        double uu = 0;
        for (int64_t m = 0; m < n; ++m) uu += U[m * n + i] * U[m * n + k];
        v += uu * A[k * n + j];
      }
      CHECK(v == Approx(i == j ? 1.0 : 0.0).margin(1e-9));
    }
  const std::vector<double> indefinite = {1, 2, 2, 1};
  CHECK_FALSE(upper_cholesky_of_inverse(indefinite.data(), 2, U));
  // Singular: a pivot of ~0 is refused once a minimum pivot is asked for.
  const std::vector<double> singular = {2, 2, 2, 2};
  CHECK_FALSE(upper_cholesky_of_inverse(singular.data(), 2, U, 0.5));
}

TEST_CASE("GPTQ beats round-to-nearest in the Hessian norm on correlated inputs", "[quant]") {
  Rng rng(2024);
  const int64_t tokens = 512, rows = 48, cols = 96;
  const std::vector<float> X = correlated_inputs(rng, tokens, cols, 6, 0.1);
  HessianAccumulator acc(cols);
  acc.add_batch(X.data(), tokens);
  const std::vector<double> H = acc.finalize();
  const std::vector<float> W = quant_test::normal_matrix(rng, rows * cols, 0.05);
  const int64_t shape[] = {rows, cols};
  for (Clip clip : {Clip::sdclip, Clip::search, Clip::rowmax}) {
    for (int bits : {4, 6}) {
      QuantSpec s = gspec(bits, clip);
      s.scale_floor = 0;  // use the whole grid (the records' 1/R floor would dominate weights this small)
      const QuantizedTensor g = quantize_tensor("w", shape, W, s, H);
      QuantSpec r = s;
      r.gptq = false;
      const QuantizedTensor q = quantize_tensor("w", shape, W, r, H);
      const std::vector<float> dg = dequantize(g), dq = dequantize(q);
      const double eg = hessian_weighted_error(W.data(), dg.data(), rows, cols, H.data());
      const double eq = hessian_weighted_error(W.data(), dq.data(), rows, cols, H.data());
      INFO("clip " << clip_name(clip) << " bits " << bits << " gptq " << eg << " rtn " << eq);
      CHECK(eg < 0.5 * eq);
      if (clip != Clip::search) CHECK(g.scales_f16 == q.scales_f16);  // same scales, better codes
    }
  }
}

TEST_CASE("GPTQ: block size only changes the order of additions", "[quant]") {
  Rng rng(99);
  const int64_t tokens = 256, rows = 16, cols = 40;
  const std::vector<float> X = correlated_inputs(rng, tokens, cols, 4, 0.2);
  const std::vector<double> H = gram(X, tokens, cols);
  const std::vector<float> W = quant_test::normal_matrix(rng, rows * cols, 1.0);
  QuantSpec s = gspec(5, Clip::sdclip);
  s.gptq_options.block_size = 128;
  const GptqResult a = gptq_quantize("w", W.data(), rows, cols, H.data(), s);
  for (int64_t b : {1, 7, 16, 40}) {
    s.gptq_options.block_size = b;
    const GptqResult c = gptq_quantize("w", W.data(), rows, cols, H.data(), s);
    INFO("block " << b);
    CHECK(c.tensor.codes == a.tensor.codes);
  }
}

TEST_CASE("GPTQ with a diagonal Hessian is round-to-nearest (act-order inverted correctly)", "[quant]") {
  // With diagonal H, U is diagonal and no error is fed forward, so whatever order act-order picks, the codes
  // must be exactly the round-to-nearest codes in the ORIGINAL column order.
  Rng rng(5);
  const int64_t rows = 12, cols = 50;
  const std::vector<float> W = quant_test::normal_matrix(rng, rows * cols, 1.0);
  std::vector<double> H(static_cast<size_t>(cols * cols), 0.0);
  for (int64_t j = 0; j < cols; ++j) H[j * cols + j] = 1.0 + static_cast<double>((j * 37) % cols);  // shuffled
  const int64_t shape[] = {rows, cols};
  QuantSpec s = gspec(6, Clip::sdclip);
  const GptqResult g = gptq_quantize("d", W.data(), rows, cols, H.data(), s);
  s.gptq = false;
  CHECK(g.tensor.codes == quantize_rtn("d", shape, W, s).codes);
}

TEST_CASE("GPTQ act-order: permuting the columns of W and H permutes the codes", "[quant]") {
  Rng rng(8);
  const int64_t tokens = 200, rows = 10, cols = 24;
  const std::vector<float> X = correlated_inputs(rng, tokens, cols, 3, 0.3);
  std::vector<double> H = gram(X, tokens, cols);
  // Distinct integer diagonals (raised, so H stays positive definite) make the sort order and the mean exact.
  for (int64_t j = 0; j < cols; ++j) H[j * cols + j] = std::ceil(H[j * cols + j]) + 1000.0 * ((j * 7) % cols);
  const std::vector<float> W = quant_test::normal_matrix(rng, rows * cols, 1.0);
  std::vector<int64_t> p(static_cast<size_t>(cols));
  std::iota(p.begin(), p.end(), 0);
  for (int64_t i = cols - 1; i > 0; --i) std::swap(p[i], p[rng.next() % (i + 1)]);
  std::vector<float> Wp(W.size());
  std::vector<double> Hp(H.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) Wp[r * cols + j] = W[r * cols + p[j]];
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) Hp[i * cols + j] = H[p[i] * cols + p[j]];
  QuantSpec s = gspec(4, Clip::rowmax);  // row max is permutation invariant (sdclip's std sum order is not)
  const GptqResult a = gptq_quantize("a", W.data(), rows, cols, H.data(), s);
  const GptqResult b = gptq_quantize("b", Wp.data(), rows, cols, Hp.data(), s);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) REQUIRE(b.tensor.codes[r * cols + j] == a.tensor.codes[r * cols + p[j]]);
  // And act-order matters: without it the codes differ somewhere.
  s.gptq_options.act_order = false;
  CHECK(gptq_quantize("c", W.data(), rows, cols, H.data(), s).tensor.codes != a.tensor.codes);
}

TEST_CASE("GPTQ: dead columns get code 0 and do not disturb the others", "[quant]") {
  Rng rng(4);
  const int64_t tokens = 128, rows = 8, cols = 16;
  std::vector<float> X = correlated_inputs(rng, tokens, cols, 3, 0.2);
  for (int64_t t = 0; t < tokens; ++t) X[t * cols + 5] = X[t * cols + 11] = 0.0f;  // inputs that never fire
  const std::vector<double> H = gram(X, tokens, cols);
  REQUIRE(H[5 * cols + 5] == 0.0);
  const std::vector<float> W = quant_test::normal_matrix(rng, rows * cols, 1.0);
  QuantSpec s = gspec(6, Clip::sdclip);
  const GptqResult g = gptq_quantize("dead", W.data(), rows, cols, H.data(), s);
  CHECK(g.tensor.info.at("dead_columns") == 2);
  for (int64_t r = 0; r < rows; ++r) {
    CHECK(g.tensor.codes[r * cols + 5] == 0);
    CHECK(g.tensor.codes[r * cols + 11] == 0);
  }
  for (float v : dequantize(g.tensor)) CHECK(std::isfinite(v));
  // The live part is as good as GPTQ on the live sub-problem alone: the H-weighted error ignores dead columns.
  const std::vector<float> d = dequantize(g.tensor);
  const std::vector<float> dr = dequantize(quantize_rtn("dead", std::vector<int64_t>{rows, cols}, W, [&] {
    QuantSpec r = s;
    r.gptq = false;
    return r;
  }()));
  CHECK(hessian_weighted_error(W.data(), d.data(), rows, cols, H.data()) <
        hessian_weighted_error(W.data(), dr.data(), rows, cols, H.data()));
}

TEST_CASE("GPTQ: a failed Cholesky retries with 10x damping and reports it", "[quant]") {
  // H = [[1, 2], [2, 1]] has eigenvalues 3 and -1. Damping 0.01, 0.1 and 1.0 (x mean diag 1) leave it
  // indefinite or singular; 10 makes it positive definite: three retries.
  const std::vector<double> H = {1, 2, 2, 1};
  const std::vector<float> W = {0.3f, -0.7f, 0.2f, 0.9f};
  std::vector<std::string> logged;
  const Log log = [&](const std::string& m) { logged.push_back(m); };
  QuantSpec s = gspec(6, Clip::sdclip);
  const GptqResult g = gptq_quantize("sing", W.data(), 2, 2, H.data(), s, log);
  CHECK(g.retries == 3);
  CHECK_FALSE(g.fell_back);
  CHECK(g.damp == Approx(10.0));
  REQUIRE(logged.size() == 3);
  CHECK(logged[0].find("tensor 'sing'") != std::string::npos);
  CHECK(logged[0].find("Cholesky failed") != std::string::npos);
  CHECK(g.tensor.info.at("notes").size() == 3);
  CHECK(g.tensor.info.at("percdamp").get<double>() == Approx(10.0));
  // With only two retries allowed it falls back to round-to-nearest with the same scales.
  logged.clear();
  s.gptq_options.max_retries = 2;
  const GptqResult f = gptq_quantize("sing", W.data(), 2, 2, H.data(), s, log);
  CHECK(f.fell_back);
  CHECK(logged.back().find("fell back") != std::string::npos);
  QuantSpec r = s;
  r.gptq = false;
  CHECK(f.tensor.codes == quantize_rtn("sing", std::vector<int64_t>{2, 2}, W, r).codes);
  // A NaN in H is an error, not a retry.
  std::vector<double> bad = H;
  bad[1] = NAN;
  CHECK_THROWS_WITH(gptq_quantize("nan", W.data(), 2, 2, bad.data(), s), Catch::Contains("not finite"));
}

TEST_CASE("Hessian accumulator: sum of X^T X over batches, divided by the batch count", "[quant]") {
  Rng rng(6);
  const int64_t cols = 5;
  const std::vector<float> X1 = quant_test::normal_matrix(rng, 300 * cols, 1.0);  // > one 256-row chunk
  const std::vector<float> X2 = quant_test::normal_matrix(rng, 7 * cols, 1.0);
  HessianAccumulator acc(cols);
  CHECK_THROWS_WITH(acc.finalize(), Catch::Contains("before any calibration batch"));
  acc.add(X1.data(), 300);
  acc.add(X2.data(), 7);  // a second visit of a looped layer, same batch
  acc.end_batch();
  acc.add_batch(X2.data(), 7);
  CHECK(acc.batches() == 2);
  CHECK(acc.tokens() == 314);
  const std::vector<double> G1 = gram(X1, 300, cols), G2 = gram(X2, 7, cols);
  const std::vector<double> H = acc.finalize();
  double tr = 0;
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const double want = (G1[i * cols + j] + 2 * G2[i * cols + j]) / 2;
      CHECK(H[i * cols + j] == Approx(want).epsilon(1e-12));
      CHECK(H[i * cols + j] == H[j * cols + i]);
      if (i == j) tr += want;
    }
  CHECK(acc.trace() == Approx(tr).epsilon(1e-12));
  // A Gram matrix computed elsewhere adds the same; merge sums accumulators.
  HessianAccumulator other(cols);
  std::vector<float> G1f(G1.begin(), G1.end());
  other.add_gram(G1f.data(), 300);
  other.end_batch();
  HessianAccumulator sum(cols);
  sum.merge(other);
  sum.merge(other);
  const std::vector<double> Hs = sum.finalize();
  for (int64_t i = 0; i < cols * cols; ++i) CHECK(Hs[i] == Approx(G1[i]).epsilon(1e-6));
  CHECK_THROWS_AS(sum.merge(HessianAccumulator(3)), ptool::Error);
  CHECK_THROWS_AS(HessianAccumulator(0), ptool::Error);
}

TEST_CASE("quantize_tensor: GPTQ needs a Hessian; vectors fall back to round-to-nearest", "[quant]") {
  const std::vector<float> W = {0.1f, 0.2f, -0.3f, 0.4f};
  const int64_t shape2[] = {2, 2}, shape1[] = {4};
  const QuantSpec s = gspec(6, Clip::sdclip);
  CHECK_THROWS_WITH(quantize_tensor("w", shape2, W, s), Catch::Contains("needs a Hessian"));
  const std::vector<double> H3(9, 1.0);
  CHECK_THROWS_WITH(quantize_tensor("w", shape2, W, s, H3), Catch::Contains("expected 2^2"));
  std::vector<std::string> logged;
  const QuantizedTensor v = quantize_tensor("v", shape1, W, s, {}, [&](const std::string& m) { logged.push_back(m); });
  CHECK(v.scheme == "int6_sdclip");
  CHECK(v.layout == Layout::per_tensor_f16);
  CHECK(logged.size() == 1);
}

// QuantizedTensor payloads, artifact records, reports and budget fitting.
#include <cmath>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "formats/error.h"
#include "src/quant/budget.h"
#include "src/quant/fp16.h"
#include "src/quant/quantizer.h"
#include "src/quant/report.h"
#include "src/quant/rtn.h"
#include "test_quant_helpers.h"

using namespace ptool::quant;
using quant_test::Rng;
using quant_test::spec_of;


TEST_CASE("scheme names parse back", "[quant]") {
  QuantSpec s = spec_of(6, Clip::search);
  CHECK(scheme_name(s) == "int6_gptq_lite");
  s.gptq = true;
  CHECK(scheme_name(s) == "int6_gptq_search");
  for (const char* name : {"int8_clean", "int6_ste_rowmax", "int6_gptq_lite", "int6_gptq_search", "int7_gptq_sdclip",
                           "int5_hsdclip", "int6_gptq_hsdclip", "int4_rowmax"}) {
    const SchemeInfo info = parse_scheme(name);
    QuantSpec t;
    t.bits = info.bits;
    t.clip = info.clip;
    t.gptq = info.gptq;
    CHECK(scheme_name(t) == name);
  }
  CHECK(parse_scheme("int8_clean").tensor_scale_f32);
  CHECK_FALSE(parse_scheme("int6_sdclip").tensor_scale_f32);
  for (const char* bad : {"", "int9_sdclip", "int6_foo", "int6sdclip", "float6_sdclip", "int6_gptq_"})
    CHECK_THROWS_AS(parse_scheme(bad), ptool::Error);
}

TEST_CASE("payloads and artifact records round trip every layout", "[quant]") {
  Rng rng(9);
  const std::vector<float> W = quant_test::normal_matrix(rng, 6 * 10, 1.0);
  const int64_t mat[] = {6, 10}, vec[] = {60};
  std::vector<QuantizedTensor> ts = {
      keep_float("a", mat, W, true), keep_float("b", mat, W, false),
      quantize_rtn("c", mat, W, spec_of(6, Clip::sdclip)), quantize_rtn("d", vec, W, spec_of(5, Clip::rowmax)),
      quantize_rtn("e", vec, W, spec_of(8, Clip::clean))};
  const Layout layouts[] = {Layout::f32, Layout::f16, Layout::per_row, Layout::per_tensor_f16, Layout::per_tensor_f32};
  const size_t sizes[] = {240, 120, 60 + 12, 60 + 2, 60 + 4};
  for (size_t i = 0; i < ts.size(); ++i) {
    const QuantizedTensor& t = ts[i];
    INFO(t.name);
    CHECK(t.layout == layouts[i]);
    CHECK(payload_size(t) == sizes[i]);
    CHECK(encode_payload(t).size() == sizes[i]);
    const ptool::TensorRecord r = to_record(t);
    CHECK(r.data.size() == sizes[i]);
    CHECK(expected_payload_size(r.scheme, r.dtype, r.shape) == sizes[i]);
    const QuantizedTensor back = from_record(r);
    CHECK(back.layout == t.layout);
    CHECK(back.scheme == t.scheme);
    CHECK(dequantize(back) == dequantize(t));
  }
  CHECK(to_record(ts[2]).scheme == "int6_sdclip");
  CHECK(to_record(ts[2]).dtype == ptool::DType::i8);
  CHECK(to_record(ts[0]).scheme.empty());
  CHECK(dequantize(ts[0]) == W);
  CHECK(dequantize(ts[1])[0] == round_to_half(W[0]));
}

TEST_CASE("from_record rejects corrupt records", "[quant]") {
  Rng rng(10);
  const std::vector<float> W = quant_test::normal_matrix(rng, 4 * 8, 1.0);
  const int64_t mat[] = {4, 8};
  const ptool::TensorRecord good = to_record(quantize_rtn("w", mat, W, spec_of(6, Clip::rowmax)));
  ptool::TensorRecord r = good;
  r.data.pop_back();
  CHECK_THROWS_WITH(from_record(r), Catch::Contains("tensor 'w'") && Catch::Contains("expected 40"));
  r = good;
  r.data[3] = 40;  // outside [-31, 31]
  CHECK_THROWS_WITH(from_record(r), Catch::Contains("code 40 at element 3"));
  r = good;
  r.scheme = "int6_magic";
  CHECK_THROWS_WITH(from_record(r), Catch::Contains("unknown quant scheme 'int6_magic'"));
  r = good;
  r.scheme_version = 2;
  CHECK_THROWS_WITH(from_record(r), Catch::Contains("version 2"));
  r = good;
  r.data[32] = 0x00;
  r.data[33] = 0x7c;  // first scale = +inf
  CHECK_THROWS_WITH(from_record(r), Catch::Contains("inf or NaN"));
  r = good;
  r.scheme.clear();
  r.dtype = ptool::DType::i32;
  CHECK_THROWS_AS(from_record(r), ptool::Error);
}

TEST_CASE("report: entropy, estimated bytes and errors", "[quant]") {
  const std::vector<int8_t> two = {0, 0, 1, 1};
  CHECK(code_entropy_bits(two) == 1.0);
  const std::vector<int8_t> four = {-1, 0, 1, 2, -1, 0, 1, 2};
  CHECK(code_entropy_bits(four) == 2.0);
  CHECK(code_entropy_bits(std::vector<int8_t>(5, 3)) == 0.0);
  // Row [3.1, -1.55, 0.2, 0] at int6 row-max: codes [31, -16, 2, 0] (2 bits each), one fp16 scale.
  const std::vector<float> W = {3.1f, -1.55f, 0.2f, 0.0f};
  const int64_t shape[] = {1, 4};
  const QuantizedTensor t = quantize_rtn("r", shape, W, spec_of(6, Clip::rowmax));
  CHECK(estimate_bytes(t) == 4 * 2.0 / 8 + 2);
  const TensorReport rep = make_report(t, W);
  CHECK(rep.numel == 4);
  CHECK(rep.payload_bytes == 6);
  const double e1 = 3.1 - 3.0992431640625, e2 = -1.55 + 1.599609375, e3 = 0.2 - 0.199951171875;
  CHECK(rep.mse == Approx((e1 * e1 + e2 * e2 + e3 * e3) / 4).epsilon(1e-5));
  CHECK(rep.max_abs_err == Approx(std::fabs(e2)).epsilon(1e-5));
  const std::vector<TensorReport> rows = {rep, make_report(keep_float("f", shape, W, false), W)};
  const std::string table = format_report(rows);
  CHECK(table.find("int6_rowmax") != std::string::npos);
  CHECK(table.find("total") != std::string::npos);
  const nlohmann::json j = report_json(rows);
  CHECK(j.at("payload_bytes") == 6 + 8);
  CHECK(j.at("tensors").size() == 2);
  CHECK_THROWS_AS(make_report(t, std::vector<float>{1, 2}), ptool::Error);
}

TEST_CASE("allocate_budget: under budget, optimal on small problems", "[quant]") {
  Rng rng(12);
  for (int trial = 0; trial < 40; ++trial) {
    // 3 groups x 6 options: bytes fall and loss rises with the option index (like k), random convexity.
    AllocationProblem p;
    for (int g = 0; g < 3; ++g) {
      std::vector<double> b, l;
      double bytes = 1000 + 1000 * rng.uniform(), loss = 0.1 * rng.uniform();
      for (int o = 0; o < 6; ++o) {
        b.push_back(bytes);
        l.push_back(loss);
        bytes -= 50 + 100 * rng.uniform();
        loss += 0.1 + rng.uniform() * (o + 1);
      }
      p.bytes.push_back(b);
      p.loss.push_back(l);
    }
    const double budget = 2200 + 1500 * rng.uniform();
    const Allocation a = allocate_budget(p, budget);
    // Brute force.
    double best = INFINITY;
    bool any = false;
    for (int i = 0; i < 216; ++i) {
      const int c[3] = {i % 6, (i / 6) % 6, i / 36};
      double b = 0, l = 0;
      for (int g = 0; g < 3; ++g) {
        b += p.bytes[g][c[g]];
        l += p.loss[g][c[g]];
      }
      if (b <= budget) {
        any = true;
        best = std::min(best, l);
      }
    }
    INFO("trial " << trial);
    REQUIRE(a.feasible == any);
    if (!any) continue;
    REQUIRE(a.bytes <= budget);
    REQUIRE(a.loss <= best * 1.10 + 1e-12);  // Lagrangian + greedy fill: near-optimal
  }
  // Generous budget: least loss everywhere. Impossible budget: smallest options, infeasible.
  AllocationProblem p{{{100, 50, 10}, {200, 20}}, {{0, 1, 5}, {0, 3}}};
  Allocation a = allocate_budget(p, 1e9);
  CHECK(a.choice == std::vector<size_t>{0, 0});
  a = allocate_budget(p, 1);
  CHECK_FALSE(a.feasible);
  CHECK(a.choice == std::vector<size_t>{2, 1});
  a = allocate_budget(p, 150);  // 100+20 (loss 3) or 50+20 (loss 4) or 10+20 (5); 100+20 fits and is best
  CHECK(a.choice == std::vector<size_t>{0, 1});
  CHECK(a.bytes == 120);
  CHECK_THROWS_AS(allocate_budget(AllocationProblem{}, 10), ptool::Error);
}

TEST_CASE("fit_to_budget picks per-group k under the budget, sharper for the sensitive group", "[quant]") {
  Rng rng(13);
  const int64_t rows = 32, cols = 128;
  const std::vector<float> A = quant_test::normal_matrix(rng, rows * cols, 0.02);
  const std::vector<float> B = quant_test::normal_matrix(rng, rows * cols, 0.02);
  std::vector<BudgetTensor> ts = {
      {"blocks.0.mlp.fc.weight", "early", {rows, cols}, A, 30.0, 6},
      {"blocks.9.mlp.fc.weight", "late", {rows, cols}, B, 1.0, 6},
  };
  std::vector<BudgetCandidate> cands;
  for (double k : geometric_grid(4.0, 32.0, 13)) cands.push_back({0, k});
  // Mock codec: bytes = numel * H(q) / 8 * 0.95 + scales, counting calls.
  int calls = 0;
  const GroupSizeEstimator mock = [&](const std::string&, const std::vector<QuantizedTensor>& q) {
    ++calls;
    return 0.95 * entropy_size_estimator("", q);
  };
  // Budget: halfway between everything at k=4 and everything at k=32.
  double lo = 0, hi = 0;
  for (const BudgetTensor& t : ts) {
    QuantSpec s;
    s.k = 32.0;
    lo += 0.95 * estimate_bytes(quantize_rtn(t.name, t.shape, t.values, s));
    s.k = 4.0;
    hi += 0.95 * estimate_bytes(quantize_rtn(t.name, t.shape, t.values, s));
  }
  const double budget = 0.5 * (lo + hi);
  std::vector<std::string> logged;
  const FitResult r = fit_to_budget(ts, cands, budget, mock, [&](const std::string& m) { logged.push_back(m); });
  CHECK(calls == 2 * 13);
  REQUIRE(r.feasible);
  CHECK(r.bytes <= budget);
  CHECK(r.bytes > 0.97 * budget);  // lands just under, not far below
  REQUIRE(r.groups.size() == 2);
  CHECK(r.groups[0].group == "early");
  CHECK(r.groups[0].candidate.k < r.groups[1].candidate.k);
  CHECK(logged.size() == 2);
  // Too small a budget: infeasible, the largest k everywhere.
  const FitResult none = fit_to_budget(ts, cands, 10.0, mock);
  CHECK_FALSE(none.feasible);
  CHECK(none.groups[0].candidate.k == Approx(32.0));
  CHECK_THROWS_AS(fit_to_budget({}, cands, 1e6), ptool::Error);
}

TEST_CASE("mixed bits by sensitivity and the k grid", "[quant]") {
  const std::vector<double> sens = {5, 1, 9, 3, 7};
  CHECK(bits_by_sensitivity(sens, 2, 5, 6) == std::vector<int>{5, 5, 6, 5, 6});
  const std::vector<char> forced = {0, 1, 0, 0, 0};
  CHECK(bits_by_sensitivity(sens, 2, 5, 6, forced) == std::vector<int>{5, 6, 6, 5, 5});
  CHECK(bits_by_sensitivity(sens, 10, 5, 6) == std::vector<int>(5, 6));
  const std::vector<double> g = geometric_grid(10.0, 40.0, 3);
  CHECK(g[0] == 10.0);
  CHECK(g[1] == Approx(20.0));
  CHECK(g[2] == 40.0);
  CHECK_THROWS_AS(geometric_grid(0.0, 1.0, 3), ptool::Error);
}

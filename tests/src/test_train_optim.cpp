// Muon (Newton-Schulz, momentum, row normalisation, shape scale, WD) and Adam/AdamW against hand-worked
// values. REFERENCE.md §3.3, §4.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include <Eigen/Dense>

#include "formats/error.h"
#include "src/ops/bf16.h"
#include "src/train/adam.h"
#include "src/train/muon.h"
#include "src/train/param_store.h"
#include "src/train/rng.h"

using namespace ptool::train;
using ptool::round_to_bf16;
using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

// The scalar map every singular value goes through: σ ← aσ + bσ³ + cσ⁵, in double.
double ns_scalar(double s, const NsConfig& cfg) {
  for (int k = 0; k < cfg.steps; ++k) {
    const NsCoeffs& c = cfg.coeffs[std::min<size_t>(static_cast<size_t>(k), cfg.coeffs.size() - 1)];
    s = c.a * s + c.b * s * s * s + c.c * s * s * s * s * s;
  }
  return s;
}

std::vector<float> random_matrix(int64_t rows, int64_t cols, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> m(static_cast<size_t>(rows * cols));
  rng.fill_normal(m, 0.0, 1.0);
  return m;
}

Eigen::VectorXf singular_values(const float* p, int64_t rows, int64_t cols) {
  Eigen::Map<const Mat> m(p, rows, cols);
  const Eigen::MatrixXf dense = m;
  Eigen::JacobiSVD<Eigen::MatrixXf> svd(dense);
  return svd.singularValues();
}

}  // namespace

TEST_CASE("bf16 rounding is round-to-nearest-even", "[train]") {
  CHECK(round_to_bf16(1.0f) == 1.0f);
  CHECK(round_to_bf16(1.0f + 0x1.0p-8f) == 1.0f);                    // halfway, ties to even (down)
  CHECK(round_to_bf16(1.0f + 3 * 0x1.0p-8f) == 1.0f + 0x1.0p-6f);    // halfway, ties to even (up)
  CHECK(round_to_bf16(1.0f + 0x1.0p-8f + 0x1.0p-20f) == 1.0f + 0x1.0p-7f);
  CHECK(round_to_bf16(-3.0f) == -3.0f);
  CHECK(std::isnan(round_to_bf16(NAN)));
}

TEST_CASE("NS coefficient sets", "[train]") {
  const NsConfig q = NsConfig::quintic();
  REQUIRE(q.coeffs.size() == 1);
  CHECK(q.coeffs[0].a == 3.4445);
  CHECK(q.coeffs[0].b == -4.7750);
  CHECK(q.coeffs[0].c == 2.0315);
  CHECK(q.steps == 5);
  CHECK(q.eps == 1e-7);
  const NsConfig pe = NsConfig::polar_express(7);
  CHECK(pe.steps == 5);  // the reference slices _PE_COEFFS[:steps]
  REQUIRE(pe.coeffs.size() == 5);
  CHECK(pe.coeffs[0].a == 8.156554524902461);
  CHECK(pe.coeffs[4].c == 0.42323551169305323);
}

TEST_CASE("NS maps the singular values of a diagonal matrix by the quintic", "[train]") {
  // diag(3, 4): ‖·‖_F = 5, normalised singular values 0.6 and 0.8; NS acts on each independently.
  const NsConfig cfg = NsConfig::quintic(5);
  const float G[4] = {3, 0, 0, 4};
  float out[4];
  newton_schulz(G, 2, 2, cfg, out);
  const double s1 = ns_scalar(3.0 / (5.0 + 1e-7), cfg), s2 = ns_scalar(4.0 / (5.0 + 1e-7), cfg);
  CHECK(out[0] == Approx(s1).epsilon(1e-5));
  CHECK(out[3] == Approx(s2).epsilon(1e-5));
  CHECK(std::abs(out[1]) < 1e-6);
  CHECK(std::abs(out[2]) < 1e-6);
  // Pinned: the quintic overshoots and oscillates, it does not converge to 1.
  CHECK(s1 == Approx(0.722876).margin(1e-5));
  CHECK(s2 == Approx(1.119204).margin(1e-5));

  // A rotated copy R·diag(3,4) gives R·diag(s1, s2) (NS is equivariant under orthogonal factors).
  const double th = 0.3, c = std::cos(th), s = std::sin(th);
  const float RG[4] = {float(3 * c), float(-4 * s), float(3 * s), float(4 * c)};
  newton_schulz(RG, 2, 2, cfg, out);
  CHECK(out[0] == Approx(c * s1).margin(1e-5));
  CHECK(out[1] == Approx(-s * s2).margin(1e-5));
  CHECK(out[2] == Approx(s * s1).margin(1e-5));
  CHECK(out[3] == Approx(c * s2).margin(1e-5));
}

TEST_CASE("NS of a random rectangular matrix is approximately orthogonal", "[train]") {
  // Normalised singular values of a 32x64 Gaussian lie in ~[0.05, 0.2]; after 5 quintic steps they
  // land in [0.68, 1.14] (see muon.h), not at 1.
  const auto G = random_matrix(32, 64, 7);
  std::vector<float> out(G.size());
  newton_schulz(G.data(), 32, 64, NsConfig::quintic(5), out.data());
  const auto sv = singular_values(out.data(), 32, 64);
  CHECK(sv.minCoeff() > 0.6f);
  CHECK(sv.maxCoeff() < 1.25f);
  CHECK(sv.maxCoeff() > 0.9f);

  newton_schulz(G.data(), 32, 64, NsConfig::polar_express(5), out.data());
  const auto pe = singular_values(out.data(), 32, 64);
  CHECK(pe.minCoeff() > 0.85f);
  CHECK(pe.maxCoeff() < 1.15f);
}

TEST_CASE("NS with rows > cols works on the transpose", "[train]") {
  const auto G = random_matrix(48, 16, 11);  // rows > cols
  std::vector<float> Gt(G.size());
  for (int r = 0; r < 48; ++r)
    for (int c = 0; c < 16; ++c) Gt[c * 48 + r] = G[r * 16 + c];
  std::vector<float> out(G.size()), outT(G.size());
  newton_schulz(G.data(), 48, 16, NsConfig::quintic(5), out.data());
  newton_schulz(Gt.data(), 16, 48, NsConfig::quintic(5), outT.data());
  for (int r = 0; r < 48; ++r)
    for (int c = 0; c < 16; ++c) REQUIRE(out[r * 16 + c] == outT[c * 48 + r]);  // bit-identical path
  const auto sv = singular_values(out.data(), 48, 16);
  CHECK(sv.size() == 16);
  CHECK(sv.minCoeff() > 0.6f);
  CHECK(sv.maxCoeff() < 1.25f);
  // In place (out aliases G).
  std::vector<float> inplace = G;
  newton_schulz(inplace.data(), 48, 16, NsConfig::quintic(5), inplace.data());
  CHECK(inplace == out);
  CHECK_THROWS_AS(newton_schulz(G.data(), 0, 16, NsConfig::quintic(5), out.data()), ptool::Error);
}

TEST_CASE("NS bf16 mimic stays close to the float result", "[train]") {
  const auto G = random_matrix(64, 128, 3);
  std::vector<float> f(G.size()), b(G.size());
  newton_schulz(G.data(), 64, 128, NsConfig::quintic(5), f.data(), false);
  newton_schulz(G.data(), 64, 128, NsConfig::quintic(5), b.data(), true);
  double num = 0, den = 0;
  bool all_bf16 = true;
  for (size_t i = 0; i < f.size(); ++i) {
    num += double(f[i] - b[i]) * (f[i] - b[i]);
    den += double(f[i]) * f[i];
    all_bf16 = all_bf16 && round_to_bf16(b[i]) == b[i];
  }
  CHECK(all_bf16);
  CHECK(num > 0);                       // the rounding does something
  CHECK(std::sqrt(num / den) < 0.03);   // ...but stays a few percent at most
}

TEST_CASE("Muon shape scale and momentum warm-up", "[train]") {
  CHECK(muon_shape_scale(4, 2) == Approx(std::sqrt(2.0)));
  CHECK(muon_shape_scale(2, 4) == 1.0);
  CHECK(muon_shape_scale(3, 3) == 1.0);
  CHECK(muon_shape_scale(1536, 512) == Approx(std::sqrt(3.0)));
  CHECK(muon_momentum_at(0, 0.85, 0.95, 500) == Approx(0.85));
  CHECK(muon_momentum_at(250, 0.85, 0.95, 500) == Approx(0.90));
  CHECK(muon_momentum_at(500, 0.85, 0.95, 500) == Approx(0.95));
  CHECK(muon_momentum_at(5000, 0.85, 0.95, 500) == Approx(0.95));
  CHECK(muon_momentum_at(3, 0.85, 0.95, 0) == Approx(0.95));
  CHECK(muon_momentum_at(750, 0.92, 0.99, 1500) == Approx(0.955));
}

TEST_CASE("Muon step on a row vector and a column vector (hand-worked)", "[train]") {
  // A 1xN matrix has one singular value; NS maps the normalised vector u = U/‖U‖ to p⁵(1)·u.
  const MuonConfig base;  // lr 0.04, μ 0.95, nesterov, quintic 5
  const double p5 = ns_scalar(1.0, base.ns);
  CHECK(p5 == Approx(0.696437).margin(1e-5));  // pinned: 1 -> 0.701 -> ... after 5 steps

  const std::vector<float> g1 = {3, 0, 4, 0}, g2 = {0, 1, 0, 0};
  std::vector<float> scratch;
  for (int column = 0; column < 2; ++column) {
    const int64_t rows = column ? 4 : 1, cols = column ? 1 : 4;
    const double scale = column ? 2.0 : 1.0;  // sqrt(max(1, 4/1))
    std::vector<float> W = {1, 1, 1, 1}, buf(4, 0.0f);
    muon_update(W.data(), g1.data(), buf.data(), 1, rows, cols, base, scratch);
    // Step 1: buf = g1, U = g1 + μ·g1 ∥ g1 → W = 1 − lr·p5·scale·g1/5.
    for (int i = 0; i < 4; ++i) CHECK(W[i] == Approx(1.0 - 0.04 * p5 * scale * g1[i] / 5.0).margin(1e-6));
    CHECK(buf == g1);
    // Step 2: buf = μ·g1 + g2; U = g2 + μ·buf.
    std::vector<double> U(4), W1(W.begin(), W.end());
    double nrm = 0;
    for (int i = 0; i < 4; ++i) {
      const double b = 0.95 * g1[i] + g2[i];
      U[i] = g2[i] + 0.95 * b;
      nrm += U[i] * U[i];
    }
    nrm = std::sqrt(nrm);
    muon_update(W.data(), g2.data(), buf.data(), 1, rows, cols, base, scratch);
    for (int i = 0; i < 4; ++i) CHECK(W[i] == Approx(W1[i] - 0.04 * p5 * scale * U[i] / nrm).margin(1e-6));
  }
}

TEST_CASE("Muon: no Nesterov, weight decay, row normalisation", "[train]") {
  std::vector<float> scratch;
  MuonConfig cfg;
  cfg.lr = 0.1;
  cfg.momentum = 0.5;
  cfg.nesterov = false;
  cfg.weight_decay = 0.2;
  // Diagonal 2x2 gradient: U = buf = G on the first step; NS gives diag(p5(0.6), p5(0.8)).
  const float G[4] = {3, 0, 0, 4};
  std::vector<float> W = {2, 0, 0, 2}, buf(4, 0.0f);
  muon_update(W.data(), G, buf.data(), 1, 2, 2, cfg, scratch);
  const double s1 = ns_scalar(0.6, cfg.ns), s2 = ns_scalar(0.8, cfg.ns);
  CHECK(W[0] == Approx(2 * (1 - 0.1 * 0.2) - 0.1 * s1).margin(1e-5));  // W·(1−lr·wd) − lr·U
  CHECK(W[3] == Approx(2 * (1 - 0.1 * 0.2) - 0.1 * s2).margin(1e-5));
  CHECK(W[1] == Approx(0).margin(1e-6));

  // MuonEq-R: rows of diag(3,4) normalise to I; ‖I‖_F = √2 → both singular values p5(1/√2).
  cfg.weight_decay = 0.0;
  cfg.row_normalize = true;
  W = {0, 0, 0, 0};
  std::fill(buf.begin(), buf.end(), 0.0f);
  muon_update(W.data(), G, buf.data(), 1, 2, 2, cfg, scratch);
  const double sr = ns_scalar(1.0 / std::sqrt(2.0), cfg.ns);
  CHECK(W[0] == Approx(-0.1 * sr).margin(1e-5));
  CHECK(W[3] == Approx(-0.1 * sr).margin(1e-5));
}

TEST_CASE("Muon over a ParamStore: only muon slices, banks per matrix", "[train]") {
  ParamStore p;
  p.add("blocks.0.attn.c_q.weight", {2, 3}, Group::muon);
  p.add("blocks.0.attn_scale", {3}, Group::adam_scalar);
  p.add("bank", {2, 3, 2}, Group::muon);  // two 3x2 matrices (rows > cols: transposed path, scale √1.5)
  Rng rng(5);
  rng.fill_normal(p.flat(), 0, 1);
  ParamStore g = p.zeros_like();
  rng.fill_normal(g.flat(), 0, 1);
  const ParamStore p0 = p;

  Muon muon(p);
  CHECK(muon.muon_slices() == std::vector<size_t>{0, 2});
  MuonConfig cfg;
  muon.step(p, g, cfg);

  // Scalar slice untouched; its momentum stays zero.
  for (size_t i = 0; i < 3; ++i) CHECK(p.view("blocks.0.attn_scale")[i] == p0.view("blocks.0.attn_scale")[i]);
  for (float v : muon.momentum().view("blocks.0.attn_scale")) CHECK(v == 0.0f);

  // Each slice / bank matrix equals a direct muon_update.
  std::vector<float> scratch;
  for (const char* name : {"blocks.0.attn.c_q.weight", "bank"}) {
    const Slice& s = p.slice(name);
    std::vector<float> W(p0.view(s).begin(), p0.view(s).end()), buf(s.numel, 0.0f);
    const size_t per = static_cast<size_t>(s.rows() * s.cols());
    for (int64_t m = 0; m < s.batch(); ++m)
      muon_update(W.data() + m * per, g.view(s).data() + m * per, buf.data() + m * per, 1, s.rows(), s.cols(), cfg,
                  scratch);
    for (size_t i = 0; i < s.numel; ++i) CHECK(p.view(s)[i] == W[i]);
  }
  // The bank's shape scale is √(3/2): the update of each 3x2 matrix has singular values ≈ √1.5 · p5(σ).
  {
    const Slice& s = p.slice("bank");
    std::vector<float> upd(6);
    for (int i = 0; i < 6; ++i) upd[i] = (p0.view(s)[i] - p.view(s)[i]) / 0.04f;
    const auto sv = singular_values(upd.data(), 3, 2);
    std::vector<float> U(6);
    for (int i = 0; i < 6; ++i) U[i] = g.view(s)[i] * 1.95f;  // first step, Nesterov: (1+μ)·G
    std::vector<float> ns(6);
    newton_schulz(U.data(), 3, 2, cfg.ns, ns.data());
    const auto sv_ns = singular_values(ns.data(), 3, 2);
    CHECK(sv[0] == Approx(std::sqrt(1.5) * sv_ns[0]).epsilon(1e-4));
    CHECK(sv[1] == Approx(std::sqrt(1.5) * sv_ns[1]).epsilon(1e-4));
  }

  // step_slices: round-robin sharding hook.
  Muon m2(p0);
  ParamStore p2 = p0;
  m2.step_slices(p2, g, cfg, {2});
  CHECK(std::equal(p2.view("blocks.0.attn.c_q.weight").begin(), p2.view("blocks.0.attn.c_q.weight").end(),
                   p0.view("blocks.0.attn.c_q.weight").begin()));
  CHECK_THROWS_AS(m2.step_slices(p2, g, cfg, {1}), ptool::Error);  // not a muon slice

  ParamStore bad;
  bad.add("v", {4}, Group::muon);
  CHECK_THROWS_AS(Muon(bad), ptool::Error);
  ParamStore other;
  other.add("x", {6}, Group::frozen);
  CHECK_THROWS_AS(muon.step(p, other, cfg), ptool::Error);  // layout mismatch
}

TEST_CASE("Adam matches hand-computed first steps with bias correction", "[train]") {
  AdamConfig cfg;  // betas (0.9, 0.95), eps 1e-8
  float w = 1.0f, m = 0.0f, v = 0.0f;
  float g = 0.5f;
  adam_update(&w, &g, &m, &v, 1, 1, AdamGroup{true, 0.1, 0.0}, cfg);
  // m = 0.05, v = 0.0125, m̂ = 0.5, v̂ = 0.25: w = 1 − 0.1 · 0.5/(0.5 + 1e-8).
  CHECK(m == Approx(0.05f));
  CHECK(v == Approx(0.0125f));
  CHECK(w == Approx(1.0 - 0.1 * 0.5 / (0.5 + 1e-8)).epsilon(1e-6));
  g = -0.25f;
  adam_update(&w, &g, &m, &v, 1, 2, AdamGroup{true, 0.1, 0.0}, cfg);
  // m = 0.02, v = 0.015; step 2: w −= (0.1/0.19) · 0.02 / (sqrt(0.015)/sqrt(0.0975) + 1e-8).
  CHECK(m == Approx(0.02f));
  CHECK(v == Approx(0.015f));
  const double expect = 0.9 - (0.1 / 0.19) * 0.02 / (std::sqrt(0.015) / std::sqrt(0.0975) + 1e-8);
  CHECK(w == Approx(expect).epsilon(1e-6));
  CHECK(w == Approx(0.873163).epsilon(1e-5));  // pinned
  CHECK_THROWS_AS(adam_update(&w, &g, &m, &v, 1, 0, AdamGroup{true, 0.1, 0.0}, cfg), ptool::Error);
}

TEST_CASE("AdamW decoupled decay vs Adam L2 decay", "[train]") {
  AdamConfig cfg;
  // Zero gradient: AdamW only decays, w·(1 − lr·wd); Adam's L2 form turns wd·w into a gradient.
  float w = 2.0f, m = 0.0f, v = 0.0f, g = 0.0f;
  adam_update(&w, &g, &m, &v, 1, 1, AdamGroup{true, 0.1, 0.1}, cfg);
  CHECK(w == Approx(2.0 * (1 - 0.01)));
  CHECK(m == 0.0f);
  cfg.decoupled_weight_decay = false;
  w = 2.0f, m = 0.0f, v = 0.0f;
  adam_update(&w, &g, &m, &v, 1, 1, AdamGroup{true, 0.1, 0.1}, cfg);
  CHECK(m == Approx(0.1 * 0.2));
  CHECK(w == Approx(2.0 - 0.1).epsilon(1e-6));  // first step moves by lr in the direction of −(wd·w)
}

TEST_CASE("A bf16 Adam group rounds the gradient before the update and the moments and weights after it", "[train]") {
  // torch's fused Adam on a bf16 parameter (the reference's tok_emb): bf16 grad, moments and weight, fp32 math.
  const AdamConfig cfg;
  const size_t n = 257;
  Rng rng(7);
  std::vector<float> w(n), g(n), m(n), v(n);
  for (size_t i = 0; i < n; ++i) {
    w[i] = round_to_bf16(static_cast<float>(rng.normal()) * 0.01f);
    g[i] = static_cast<float>(rng.normal()) * 1e-3f;  // fp32: not a bf16 value
    m[i] = round_to_bf16(static_cast<float>(rng.normal()) * 1e-4f);
    v[i] = round_to_bf16(static_cast<float>(rng.uniform()) * 1e-6f);
  }
  auto bw = w, bm = m, bv = v;
  adam_update(bw.data(), g.data(), bm.data(), bv.data(), n, 3, AdamGroup{true, 0.05, 0.0, true}, cfg);
  // The same step written out: round g, the fp32 update, then round what it stores.
  auto rg = g, ew = w, em = m, ev = v;
  for (float& x : rg) x = round_to_bf16(x);
  adam_update(ew.data(), rg.data(), em.data(), ev.data(), n, 3, AdamGroup{true, 0.05, 0.0}, cfg);
  size_t fp32_not_bf16 = 0;
  for (size_t i = 0; i < n; ++i) {
    fp32_not_bf16 += !ptool::is_bf16_value(ew[i]);
    CHECK(bw[i] == round_to_bf16(ew[i]));
    CHECK(bm[i] == round_to_bf16(em[i]));
    CHECK(bv[i] == round_to_bf16(ev[i]));
  }
  CHECK(fp32_not_bf16 > n / 2);  // the fp32 group's weights leave the bf16 grid, so the rounding is seen
}

TEST_CASE("Adam over a ParamStore with per-group lr", "[train]") {
  ParamStore p;
  p.add("tok_emb.weight", {2, 2}, Group::adam_embed);
  p.add("blocks.0.attn.c_q.weight", {2, 2}, Group::muon);
  p.add("skip_weights", {2}, Group::adam_scalar);
  p.add("frozen_thing", {1}, Group::frozen);
  p.fill(1.0f);
  ParamStore g = p.zeros_like();
  g.fill(0.5f);
  Adam adam(p);
  AdamConfig cfg;
  cfg.group(Group::adam_embed).lr = 0.05;
  cfg.group(Group::adam_scalar).lr = 0.04;
  cfg.group(Group::adam_scalar).weight_decay = 0.5;
  adam.step(p, g, cfg);
  CHECK(adam.step_count() == 1);
  for (float x : p.view("tok_emb.weight")) CHECK(x == Approx(1.0 - 0.05 * 0.5 / (0.5 + 1e-8)).epsilon(1e-6));
  for (float x : p.view("skip_weights"))
    CHECK(x == Approx(1.0 * (1 - 0.04 * 0.5) - 0.04 * 0.5 / (0.5 + 1e-8)).epsilon(1e-6));
  for (float x : p.view("blocks.0.attn.c_q.weight")) CHECK(x == 1.0f);
  CHECK(p.view("frozen_thing")[0] == 1.0f);
  for (float x : adam.exp_avg().view("blocks.0.attn.c_q.weight")) CHECK(x == 0.0f);
  for (float x : adam.exp_avg().view("tok_emb.weight")) CHECK(x == Approx(0.05f));
  // Resume: a fresh Adam with restored moments and step count continues identically.
  Adam resumed(p);
  resumed.exp_avg().copy_from(adam.exp_avg());
  resumed.exp_avg_sq().copy_from(adam.exp_avg_sq());
  resumed.set_step_count(adam.step_count());
  ParamStore q = p;
  adam.step(p, g, cfg);
  resumed.step(q, g, cfg);
  CHECK(std::equal(p.flat().begin(), p.flat().end(), q.flat().begin()));
}

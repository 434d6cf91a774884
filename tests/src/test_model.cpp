#include <catch2/catch.hpp>

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <utility>

#include "formats/artifact.h"
#include "formats/error.h"
#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/model/load.h"
#include "src/model/model.h"
#include "src/ops/bf16.h"

using namespace ptool;
using namespace ptool::model;

namespace {

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 11;
  c.d_model = 8;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.mlp_mult = 2;
  c.physical_blocks = 2;
  c.schedule = {0, 1};
  c.train_seq_len = 5;
  c.logit_softcap = 3.0;
  return c;
}

// Random (not zero) weights everywhere so that every path carries gradient.
std::vector<double> random_params(const ParamLayout& L, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 0.5);
  std::vector<double> p(L.total);
  for (auto& v : p) v = nd(rng);
  for (auto& s : L.specs)
    if (s.name.find("scale") != std::string::npos || s.name.find("q_gain") != std::string::npos)
      for (int64_t i = 0; i < s.numel; ++i) p[s.offset + i] = 1.0 + 0.3 * nd(rng);
  return p;
}

// Central-difference check of d(mean loss)/d(params) on every parameter tensor (a sample of entries each).
void check_model_gradient(const ModelConfig& c) {
  auto be = make_cpu_backend<double>();
  Model<double> m(c, *be);
  const int64_t B = 2, Tn = 5, N = B * Tn;
  std::mt19937 rng(7);
  std::vector<int32_t> x(N), y(N);
  for (auto& t : x) t = static_cast<int32_t>(rng() % c.vocab_size);
  for (auto& t : y) t = static_cast<int32_t>(rng() % c.vocab_size);
  auto p = random_params(m.layout(), 3);
  m.load_params(p.data());
  m.zero_grads();
  m.forward_backward(x.data(), y.data(), B, Tn, 1.0 / N);
  std::vector<double> g(m.param_count());
  be->download(g.data(), m.grads(), g.size());
  const double h = 1e-5;
  for (auto& s : m.layout().specs) {
    const int64_t step = std::max<int64_t>(1, s.numel / 7);
    for (int64_t i = 0; i < s.numel; i += step) {
      const int64_t j = s.offset + i;
      auto q = p;
      q[j] += h;
      m.load_params(q.data());
      const double lp = m.forward(x.data(), y.data(), B, Tn) / N;
      q[j] -= 2 * h;
      m.load_params(q.data());
      const double lm = m.forward(x.data(), y.data(), B, Tn) / N;
      const double num = (lp - lm) / (2 * h);
      INFO(s.name << "[" << i << "] analytic " << g[j] << " numeric " << num);
      CHECK(g[j] == Approx(num).margin(1e-7).epsilon(1e-5));
    }
  }
}

}  // namespace

TEST_CASE("baseline preset has the reference's 17,059,912 parameters", "[model]") {
  auto c = preset("baseline");
  CHECK(make_layout(c).total == 17059912);
}

TEST_CASE("every preset validates and round-trips through JSON", "[model]") {
  for (auto& name : preset_names()) {
    INFO(name);
    auto c = preset(name);
    auto back = config_from_json(config_to_json(c));
    CHECK(config_to_json(back) == config_to_json(c));
    CHECK(!preset_description(name).empty());
  }
}

TEST_CASE("recurrence expands to unique entry, looped shared blocks and unique exit", "[model]") {
  auto c = config_from_json(nlohmann::json::parse(
      R"({"d_model": 16, "n_heads": 2, "n_kv_heads": 1, "recurrence": {"entry": 1, "shared": 2, "loops": 3, "exit": 1}})"));
  CHECK(c.physical_blocks == 4);
  CHECK(c.schedule == std::vector<int64_t>{0, 1, 2, 1, 2, 1, 2, 3});
  CHECK(c.encoder_layers() == 4);
  CHECK(c.skip_count() == 4);
}

TEST_CASE("unknown keys and impossible shapes are refused with a message", "[model]") {
  using nlohmann::json;
  CHECK_THROWS_WITH(config_from_json(json::parse(R"({"d_modle": 64})")), Catch::Contains("unknown key 'd_modle'"));
  CHECK_THROWS_WITH(config_from_json(json::parse(R"({"d_model": 60, "n_heads": 8})")),
                    Catch::Contains("multiple of n_heads"));
  CHECK_THROWS_WITH(config_from_json(json::parse(R"({"n_heads": 8, "n_kv_heads": 3})")),
                    Catch::Contains("n_kv_heads"));
  CHECK_THROWS_WITH(config_from_json(json::parse(R"({"physical_blocks": 2, "schedule": [0, 2]})")),
                    Catch::Contains("schedule names block 2"));
  CHECK_THROWS_WITH(config_from_json(json::parse(R"({"physical_blocks": 3, "schedule": [0, 1]})")),
                    Catch::Contains("never used"));
  CHECK_THROWS_WITH(preset("nope"), Catch::Contains("unknown preset 'nope'"));
}

TEST_CASE("initialisation follows the reference: zero output projections, embedding std, unit scales", "[model]") {
  auto c = preset("tiny");
  auto L = make_layout(c);
  std::vector<float> p(L.total);
  init_params(c, L, 1337, p.data());
  auto span = [&](const std::string& n) { auto& s = L.at(n); return std::vector<float>(p.begin() + s.offset, p.begin() + s.offset + s.numel); };
  for (float v : span("blocks.0.attn.proj.weight")) REQUIRE(v == 0.0f);
  for (float v : span("blocks.1.mlp.proj.weight")) REQUIRE(v == 0.0f);
  for (float v : span("blocks.0.attn_scale")) REQUIRE(v == 1.0f);
  for (float v : span("blocks.0.attn.q_gain")) REQUIRE(v == Approx(1.5f));
  auto e = span("tok_emb.weight");
  double ss = 0;
  for (float v : e) ss += double(v) * v;
  CHECK(std::sqrt(ss / e.size()) == Approx(0.005).epsilon(0.05));
  auto fc = span("blocks.0.mlp.fc.weight");
  const float bound = 1.0f / std::sqrt(float(c.d_model));
  for (float v : fc) REQUIRE(std::abs(v) <= bound);
  std::vector<float> p2(L.total);
  init_params(c, L, 1337, p2.data());
  CHECK(p == p2);
}

TEST_CASE("model gradient matches finite differences: plain U-Net", "[model][gradcheck]") {
  check_model_gradient(small_config());
}

TEST_CASE("model gradient matches finite differences: block 1 looped 3 times (shared weights sum every visit), gated skips, per-virtual scalars", "[model][gradcheck]") {
  auto c = small_config();
  c.physical_blocks = 3;
  c.schedule = {0, 1, 1, 1, 2};
  c.per_virtual_scalars = true;
  c.skips = SkipKind::gated;
  c.activation = cpu::Activation::leaky_relu2;
  check_model_gradient(c);
}

TEST_CASE("model gradient matches finite differences: untied head, ln_scale, learned norm scales, partial RoPE, no QK-norm", "[model][gradcheck]") {
  auto c = small_config();
  c.tie_embeddings = false;
  c.ln_scale = true;
  c.norm_scale = true;
  c.qk_norm = false;
  c.rope_dims = 2;
  c.resid_mix = false;
  c.logit_softcap = 0;
  check_model_gradient(c);
}

TEST_CASE("model gradient matches finite differences: XSA in the last layer, and in every visit of a looped block",
          "[model][gradcheck]") {
  auto c = small_config();
  c.xsa_last = 1;
  check_model_gradient(c);
  c.physical_blocks = 3;
  c.schedule = {0, 1, 1, 1, 2};
  c.n_heads = 4;  // groups of 2 heads share a value: v's gradient from XSA sums over them
  c.xsa_last = 99;
  check_model_gradient(c);
}

TEST_CASE("model gradient matches finite differences: value embeddings in the last two layers of a looped block",
          "[model][gradcheck]") {
  auto c = small_config();
  c.physical_blocks = 3;
  c.schedule = {0, 1, 1, 1, 2};
  c.ve_dim = 3;
  c.ve_last = 2;  // one visit of block 1 with it, two without; block 2 with it
  check_model_gradient(c);
}

TEST_CASE("model gradient matches finite differences: bigram hash and smear gate at the embedding",
          "[model][gradcheck]") {
  auto c = small_config();
  c.bigram_buckets = 7;
  c.bigram_dim = 3;
  c.smear_gate = true;
  check_model_gradient(c);
  c.bigram_buckets = c.bigram_dim = 0;  // each alone
  check_model_gradient(c);
  c.smear_gate = false;
  c.bigram_buckets = 5;
  c.bigram_dim = 2;
  check_model_gradient(c);
}

TEST_CASE("bigram hash and smear gate: their parameters, inits and the configs refused", "[model]") {
  auto c = preset("tiny");
  c.bigram_buckets = 100;
  c.bigram_dim = 16;
  c.smear_gate = true;
  const auto L = make_layout(c);
  CHECK(L.at("bigram.embed.weight").shape == std::vector<int64_t>{100, 16});
  CHECK(L.at("bigram.proj.weight").shape == std::vector<int64_t>{c.d_model, 16});
  CHECK(L.at("smear_gate").shape == std::vector<int64_t>{c.d_model});
  std::vector<float> p(L.total);
  init_params(c, L, 5, p.data());
  auto at = [&](const std::string& n, int64_t i) { return p[L.at(n).offset + i]; };
  CHECK(at("bigram.embed.weight", 7) == 0.0f);
  CHECK(at("bigram.proj.weight", 7) != 0.0f);  // gradient must reach the zero table
  CHECK(at("bigram_scale", 0) == 0.05f);
  CHECK(at("smear_gate", 3) == 0.0f);
  using nlohmann::json;
  CHECK_THROWS_WITH(config_from_json(json::parse(R"({"bigram_buckets": 64})")), Catch::Contains("bigram_dim"));
  CHECK_THROWS_WITH(config_from_json(json::parse(R"({"bigram_buckets": 1, "bigram_dim": 4})")),
                    Catch::Contains("at least 2"));
  CHECK_THROWS_WITH(config_from_json(json::parse(R"({"smear_gate": true, "embed_bf16": true})")),
                    Catch::Contains("embed_bf16"));
}

TEST_CASE("overtone init: resid_mix on a sigmoid schedule over depth, the embedding's spectrum a power law with "
          "its singular vectors kept", "[model]") {
  auto c = preset("tiny_recurrent");  // 5 virtual layers with scalars of their own
  c.vocab_size = 96;
  const auto L = make_layout(c);
  std::vector<float> plain(L.total), over(L.total);
  init_params(c, L, 11, plain.data());
  c.overtone_init = true;
  init_params(c, L, 11, over.data());
  const int64_t D = c.d_model, sets = c.scalar_sets();
  REQUIRE(sets == 5);
  for (int64_t i = 0; i < sets; ++i) {
    const float* m = over.data() + L.at("layers." + std::to_string(i) + ".resid_mix").offset;
    const double m0 = 1.0 / (1.0 + std::exp(-3.0 * (i / 4.0 - 0.5)));
    CHECK(m[0] == Approx(m0).epsilon(1e-7));
    CHECK(m[D - 1] == m[0]);
    CHECK(m[D] == Approx(1.0 - m0).epsilon(1e-6));
  }
  using Mat = Eigen::MatrixXd;
  const auto& e = L.at("tok_emb.weight");
  auto matrix = [&](const std::vector<float>& p) {
    Mat W(e.shape[0], e.shape[1]);
    for (int64_t r = 0; r < e.shape[0]; ++r)
      for (int64_t k = 0; k < e.shape[1]; ++k) W(r, k) = p[e.offset + r * e.shape[1] + k];
    return W;
  };
  const Mat W0 = matrix(plain), W1 = matrix(over);
  Eigen::JacobiSVD<Mat> s0(W0, Eigen::ComputeThinU | Eigen::ComputeThinV), s1(W1);
  const Eigen::VectorXd S0 = s0.singularValues(), S1 = s1.singularValues();
  for (Eigen::Index k = 0; k < S1.size(); ++k) CHECK(S1[k] == Approx(S0[0] / std::sqrt(k + 1.0)).epsilon(1e-5));
  // W1 V0 = U0 S1: the same singular vectors, the new values
  const Mat diff = W1 * s0.matrixV() - s0.matrixU() * S1.asDiagonal();
  CHECK(diff.cwiseAbs().maxCoeff() < 1e-5 * S1[0]);
  // the rest of the model is untouched
  for (const auto& spec : L.specs)
    if (spec.name != "tok_emb.weight" && spec.name.find("resid_mix") == std::string::npos)
      CHECK(std::equal(plain.begin() + spec.offset, plain.begin() + spec.offset + spec.numel,
                       over.begin() + spec.offset));
}

TEST_CASE("value embeddings: a table, a zero projection, ve_scale 0.1 and one scalar per VE layer", "[model]") {
  auto c = preset("tiny");
  c.ve_dim = 8;
  c.ve_last = 5;  // more than the two layers there are: both
  const auto L = make_layout(c);
  CHECK(L.at("ve.embed.weight").shape == std::vector<int64_t>{c.vocab_size, 8});
  CHECK(L.at("ve.proj.weight").shape == std::vector<int64_t>{c.kv_dim(), 8});
  CHECK(L.at("ve_layer_scales").shape == std::vector<int64_t>{2});
  CHECK(L.at("ve.embed.weight").group == OptGroup::embed);
  CHECK(L.at("ve.proj.weight").group == OptGroup::matrix);
  CHECK(L.at("ve_scale").group == OptGroup::scalar);
  std::vector<float> p(L.total);
  init_params(c, L, 5, p.data());
  auto span = [&](const std::string& n) {
    auto& s = L.at(n);
    return std::vector<float>(p.begin() + s.offset, p.begin() + s.offset + s.numel);
  };
  double ss = 0;
  for (float v : span("ve.embed.weight")) ss += double(v) * v;
  CHECK(std::sqrt(ss / L.at("ve.embed.weight").numel) == Approx(0.01).epsilon(0.05));
  for (float v : span("ve.proj.weight")) REQUIRE(v == 0.0f);
  CHECK(span("ve_scale") == std::vector<float>{0.1f});
  CHECK(span("ve_layer_scales") == std::vector<float>{1.0f, 1.0f});
  using nlohmann::json;
  CHECK_THROWS_WITH(config_from_json(json::parse(R"({"ve_dim": 8})")), Catch::Contains("ve_last"));
  CHECK_THROWS_WITH(config_from_json(json::parse(R"({"ve_last": 2})")), Catch::Contains("ve_dim"));
}

TEST_CASE("XSA changes only the layers it is configured for", "[model]") {
  auto loss = [](int64_t xsa_last) {
    ModelConfig c = small_config();
    c.xsa_last = xsa_last;
    auto be = make_cpu_backend<double>();
    Model<double> m(c, *be);
    const auto p = random_params(m.layout(), 21);
    m.load_params(p.data());
    std::vector<int32_t> x{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, y{2, 3, 4, 5, 6, 7, 8, 9, 10, 0};
    return m.forward(x.data(), y.data(), 2, 5);
  };
  const double none = loss(0), last = loss(1), both = loss(2);
  CHECK(none != last);
  CHECK(last != both);
  CHECK(loss(5) == both);  // more than the layers there are: all of them
  CHECK_THROWS_WITH(config_from_json(nlohmann::json::parse(R"({"xsa_last": -1})")), Catch::Contains("xsa_last"));
}

TEST_CASE("accumulate_gradients gives forward_backward's gradients and loss sums, read once per step", "[model]") {
  const ModelConfig c = small_config();
  auto be = make_cpu_backend<double>();
  Model<double> m(c, *be);
  const auto p = random_params(m.layout(), 5);
  m.load_params(p.data());
  const int64_t B = 2, Tn = 5, N = B * Tn;
  std::mt19937 rng(9);
  std::vector<std::vector<int32_t>> xs(3, std::vector<int32_t>(N)), ys = xs;
  for (auto* v : {&xs, &ys})
    for (auto& batch : *v)
      for (auto& t : batch) t = static_cast<int32_t>(rng() % c.vocab_size);

  m.zero_grads();
  double want = 0;
  for (size_t i = 0; i < xs.size(); ++i) want += m.forward_backward(xs[i].data(), ys[i].data(), B, Tn, 0.25);
  std::vector<double> g_want(m.param_count()), g_got(m.param_count());
  be->download(g_want.data(), m.grads(), g_want.size());

  m.zero_grads();
  for (size_t i = 0; i < xs.size(); ++i) m.accumulate_gradients(xs[i].data(), ys[i].data(), B, Tn, 0.25);
  be->download(g_got.data(), m.grads(), g_got.size());
  CHECK(m.take_loss_sum() == want);  // the same additions in the same order
  CHECK(g_got == g_want);
  CHECK(m.take_loss_sum() == 0.0);   // the read resets the accumulator

  ys[1][3] = static_cast<int32_t>(c.vocab_size);  // out of range: refused before anything runs
  CHECK_THROWS_AS(m.accumulate_gradients(xs[1].data(), ys[1].data(), B, Tn, 0.25), Error);
}

TEST_CASE("embed_bf16: the baseline keeps tok_emb on the bf16 grid from initialisation on, and nothing else",
          "[model]") {
  CHECK(preset("baseline").embed_bf16);  // REFERENCE.md 3.2: tok_emb.weight stays bf16
  CHECK_FALSE(preset("tiny").embed_bf16);
  auto c = preset("tiny");
  const auto L = make_layout(c);
  std::vector<float> plain(L.total), rounded(L.total);
  init_params(c, L, 1337, plain.data());
  c.embed_bf16 = true;
  init_params(c, L, 1337, rounded.data());
  const ParamSpec& e = L.at("tok_emb.weight");
  int64_t moved = 0;
  for (int64_t i = 0; i < L.total; ++i) {
    const bool emb = i >= e.offset && i < e.offset + e.numel;
    REQUIRE(rounded[i] == (emb ? round_to_bf16(plain[i]) : plain[i]));
    moved += rounded[i] != plain[i];
  }
  CHECK(moved > e.numel / 2);  // N(0, 0.005) draws are almost never bf16 values already
  // round_bf16_tensors is what init used; a config without embed_bf16 leaves everything alone.
  std::vector<float> again = plain;
  round_bf16_tensors(c, L, again.data());
  CHECK(again == rounded);
  c.embed_bf16 = false;
  again = plain;
  round_bf16_tensors(c, L, again.data());
  CHECK(again == plain);
}

TEST_CASE("embed_bf16 rounds the normed embedding x0 to bf16 before the first layer reads it", "[model]") {
  // resid_mix (1, 0) makes layer 0's attention input rmsnorm(x0), which the GPTQ visitor shows: it must be the
  // norm of bf16(rmsnorm(embedding row)), computed here by hand, and differ from the unrounded one.
  ModelConfig c = small_config();
  c.d_model = 64;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  auto run = [&](bool bf16) {
    c.embed_bf16 = bf16;
    auto be = make_cpu_backend<float>();
    Model<float> m(c, *be);
    std::vector<float> p(m.param_count());
    init_params(c, m.layout(), 5, p.data());
    m.load_params(p.data());
    std::vector<int32_t> x = {1, 4, 9, 3, 7}, y = {4, 9, 3, 7, 2};
    m.forward(x.data(), y.data(), 1, 5);
    std::vector<float> h;
    m.visit_linear_inputs([&](const std::string& w, const float* X, int64_t rows, int64_t cols) {
      if (w == "blocks.0.attn.c_q.weight") h.assign(X, X + rows * cols);
    });
    // By hand: the embedding rows (bf16 values under embed_bf16, from init), rmsnorm, [round], rmsnorm.
    const int64_t D = c.d_model;
    auto rmsnorm = [&](std::vector<double> v) {
      double ss = 0;
      for (double a : v) ss += a * a;
      const double r = 1.0 / std::sqrt(ss / D + std::numeric_limits<float>::epsilon());
      for (double& a : v) a *= r;
      return v;
    };
    const int64_t off = m.layout().at("tok_emb.weight").offset;
    double worst_as_rounded = 0, worst_as_plain = 0;
    for (size_t t = 0; t < x.size(); ++t) {
      std::vector<double> row(p.begin() + off + x[t] * D, p.begin() + off + (x[t] + 1) * D);
      auto x0 = rmsnorm(row);
      auto plain = rmsnorm(x0);
      for (double& a : x0) a = round_to_bf16(static_cast<float>(a));
      auto rounded = rmsnorm(x0);
      for (int64_t d = 0; d < D; ++d) {
        worst_as_rounded = std::max(worst_as_rounded, std::abs(h[t * D + d] - rounded[d]));
        worst_as_plain = std::max(worst_as_plain, std::abs(h[t * D + d] - plain[d]));
      }
    }
    return std::pair(worst_as_rounded, worst_as_plain);
  };
  const auto [r_bf16, p_bf16] = run(true);
  CHECK(r_bf16 < 2e-6);   // float rounding of two norms
  CHECK(p_bf16 > 1e-3);   // bf16's half ulp near 1 is 2^-9
  const auto [r_fp32, p_fp32] = run(false);
  CHECK(p_fp32 < 2e-6);
  CHECK(r_fp32 > 1e-3);
}

TEST_CASE("round_bf16_params rounds the model's tok_emb in backend memory under embed_bf16 only", "[model]") {
  ModelConfig c = small_config();
  for (bool bf16 : {false, true}) {
    c.embed_bf16 = bf16;
    auto be = make_cpu_backend<float>();
    Model<float> m(c, *be);
    std::vector<float> p(m.param_count()), back(m.param_count());
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 0.1f);
    for (float& v : p) v = nd(rng);
    m.load_params(p.data());
    m.round_bf16_params();
    m.store_params(back.data());
    const ParamSpec& e = m.layout().at("tok_emb.weight");
    for (int64_t i = 0; i < m.param_count(); ++i) {
      const bool emb = i >= e.offset && i < e.offset + e.numel;
      REQUIRE(back[i] == (bf16 && emb ? round_to_bf16(p[i]) : p[i]));
    }
  }
}

TEST_CASE("load_model puts an embed_bf16 model's tok_emb back on the bf16 grid, as the reference's dequantizer does",
          "[model]") {
  ModelConfig c = small_config();
  const ParamLayout L = make_layout(c);
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 0.1f);
  std::vector<float> w(L.total);
  for (float& v : w) v = nd(rng);
  for (bool bf16 : {false, true}) {
    c.embed_bf16 = bf16;
    Artifact a;
    a.stage = Stage::quantized;  // dequantized values are not bf16 values: stand-ins here are plain floats
    a.metadata["model"] = config_to_json(c);
    for (const ParamSpec& s : L.specs) {
      TensorRecord r;
      r.name = s.name;
      r.shape = s.shape;
      r.data.resize(s.numel * sizeof(float));
      std::memcpy(r.data.data(), w.data() + s.offset, r.data.size());
      a.tensors.push_back(std::move(r));
    }
    const LoadedModel lm = load_model(a, "in-memory artifact");
    const ParamSpec& e = L.at("tok_emb.weight");
    for (int64_t i = 0; i < L.total; ++i) {
      const bool emb = i >= e.offset && i < e.offset + e.numel;
      REQUIRE(lm.weights[i] == (bf16 && emb ? round_to_bf16(w[i]) : w[i]));
    }
  }
}

TEST_CASE("forward with score_from scores only each sequence's suffix, as the full forward does", "[model]") {
  ModelConfig c = small_config();
  c.xsa_last = GENERATE(0, 1);  // with XSA, the last layer's scored rows take their own values along
  INFO("xsa_last " << c.xsa_last);
  auto be = make_cpu_backend<double>();
  Model<double> m(c, *be);
  const auto p = random_params(m.layout(), 13);
  m.load_params(p.data());
  const int64_t B = 3, Tn = 5, N = B * Tn, from = 2, S = Tn - from;
  std::mt19937 rng(17);
  std::vector<int32_t> x(N), y(N);
  for (auto& t : x) t = static_cast<int32_t>(rng() % c.vocab_size);
  for (auto& t : y) t = static_cast<int32_t>(rng() % c.vocab_size);
  std::vector<double> all(N), part(B * S);
  m.forward(x.data(), y.data(), B, Tn, all.data());
  for (int64_t b = 0; b < B; ++b) y[b * Tn] = -1;  // an unscored target is never read
  const double sum = m.forward(x.data(), y.data(), B, Tn, part.data(), from);
  double want = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = from; t < Tn; ++t) {
      CHECK(part[b * S + t - from] == Approx(all[b * Tn + t]).epsilon(1e-12));
      want += all[b * Tn + t];
    }
  CHECK(sum == Approx(want).epsilon(1e-12));
  CHECK_THROWS_AS(m.forward(x.data(), y.data(), B, Tn, part.data(), Tn), Error);
  CHECK_THROWS_AS(m.forward(x.data(), y.data(), B, Tn, part.data(), -1), Error);
  y[from] = static_cast<int32_t>(c.vocab_size);  // a scored target out of range still throws
  CHECK_THROWS_AS(m.forward(x.data(), y.data(), B, Tn, part.data(), from), Error);
}

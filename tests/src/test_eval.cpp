#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>
#include <random>

#include "src/eval/evaluate.h"
#include "src/model/layout.h"
#include "src/ops/bf16.h"

using namespace ptool;
using namespace ptool::eval;

namespace {

model::ModelConfig eval_config(bool embed_bf16 = false) {
  model::ModelConfig c;
  c.embed_bf16 = embed_bf16;
  c.vocab_size = 16;
  c.d_model = 16;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.physical_blocks = 2;
  c.schedule = {0, 1};
  c.train_seq_len = 8;
  return c;
}

// A made-up byte table: token t is (t % 3) bytes, odd tokens have a leading space, 0 and 1 are boundaries.
ByteLuts toy_luts(int V) {
  ByteLuts l;
  for (int t = 0; t < V; ++t) {
    l.base_bytes.push_back(t < 2 ? 0 : t % 3);
    l.has_leading_space.push_back(t >= 2 && t % 2 == 1);
    l.is_boundary.push_back(t < 2);
  }
  return l;
}

std::vector<uint16_t> random_tokens(size_t n, int V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint16_t> t(n);
  for (auto& v : t) v = static_cast<uint16_t>(rng() % V);
  return t;
}

struct Fixture {
  model::ModelConfig cfg;
  std::unique_ptr<Backend<float>> be = make_cpu_backend<float>();
  model::Model<float> m{cfg, *be};
  explicit Fixture(bool embed_bf16 = false) : cfg(eval_config(embed_bf16)) {
    auto L = model::make_layout(cfg);
    std::vector<float> p(L.total);
    model::init_params(cfg, L, 42, p.data());
    // Non-zero output projections so the model is not trivially uniform.
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0, 0.2f);
    for (auto& s : L.specs)
      if (s.name.find("proj") != std::string::npos)
        for (int64_t i = 0; i < s.numel; ++i) p[s.offset + i] = nd(rng);
    m.load_params(p.data());
  }
};

}  // namespace

TEST_CASE("sliding windows score every target exactly once for any length, stride and size", "[eval]") {
  for (int64_t N : {1, 2, 7, 64, 65, 100, 1000, 1023})
    for (int64_t L : {1, 2, 8, 64})
      for (int64_t S : {1, 3, 8, 64}) {
        if (S > L) continue;
        auto w = sliding_windows(N, L, S);
        std::vector<int> count(N, 0);
        for (auto& win : w) {
          REQUIRE(win.len <= L);
          REQUIRE(win.start + win.len <= N);
          for (int64_t p = win.score_from; p < win.len; ++p) {
            count[win.start + p]++;
            // Every target after the first window has at least L - S tokens of context.
            if (win.start > 0) REQUIRE(p >= L - S);
          }
        }
        for (int64_t t = 0; t < N; ++t) {
          INFO("N " << N << " L " << L << " S " << S << " target " << t);
          REQUIRE(count[t] == 1);
        }
        if (N > L - S) CHECK(static_cast<int64_t>(w.size()) == (N - (L - S) + S - 1) / S);
      }
}

TEST_CASE("standard windows are non-overlapping full sequences and drop the tail", "[eval]") {
  auto w = standard_windows(100, 32);
  REQUIRE(w.size() == 3);
  CHECK(w[2].start == 64);
  for (auto& x : w) CHECK(x.score_from == 0);
}

TEST_CASE("val_bpb equals total NLL / (ln 2 * bytes) with bytes from the byte rule", "[eval]") {
  Fixture f;
  auto tokens = random_tokens(8 * 6 + 1, 16, 3);
  auto luts = toy_luts(16);
  auto r = eval_standard(f.m, tokens, 8, luts, 4);
  CHECK(r.tokens == 48);
  CHECK(r.bytes == count_target_bytes(luts, std::span<const uint16_t>(tokens)));
  CHECK(r.val_bpb() == Approx(r.nll_sum / (std::numbers::ln2 * double(r.bytes))).epsilon(1e-12));
  CHECK(r.val_loss() == Approx(r.nll_sum / 48).epsilon(1e-12));
}

TEST_CASE("sliding eval with stride = length equals standard eval", "[eval]") {
  Fixture f;
  auto tokens = random_tokens(8 * 5 + 1, 16, 4);
  auto luts = toy_luts(16);
  auto a = eval_standard(f.m, tokens, 8, luts, 2);
  auto b = eval_sliding(f.m, tokens, 8, 8, luts, 3);
  CHECK(a.tokens == b.tokens);
  CHECK(a.bytes == b.bytes);
  CHECK(a.nll_sum == Approx(b.nll_sum).epsilon(1e-9));
}

TEST_CASE("batching windows does not change the score", "[eval]") {
  Fixture f;
  auto tokens = random_tokens(77, 16, 5);
  auto luts = toy_luts(16);
  auto a = eval_sliding(f.m, tokens, 8, 3, luts, 1);
  auto b = eval_sliding(f.m, tokens, 8, 3, luts, 7);
  CHECK(a.tokens == 76);
  CHECK(a.nll_sum == Approx(b.nll_sum).epsilon(1e-9));
}

TEST_CASE("score-first TTT never changes a token's score after seeing it", "[eval][ttt]") {
  auto tokens = random_tokens(4 * 16 + 1, 16, 6);
  auto luts = toy_luts(16);
  TttOptions opt;
  opt.chunk_tokens = 16;
  opt.epochs = 2;
  opt.lr = 0.5;
  opt.batch_seqs = 2;
  std::vector<double> adapted, frozen;
  {
    Fixture f;
    eval_ttt(f.m, tokens, 8, 4, luts, 4, opt, &adapted);
  }
  {
    Fixture f;
    auto o = opt;
    o.lr = 0;  // trains on nothing
    auto r = eval_ttt(f.m, tokens, 8, 4, luts, 4, o, &frozen);
    Fixture g;
    auto s = eval_sliding(g.m, tokens, 8, 4, luts, 4);
    CHECK(r.nll_sum == Approx(s.nll_sum).epsilon(1e-9));  // lr 0: TTT is plain sliding eval
  }
  // The first chunk is scored before any update: identical.
  for (int t = 0; t < 16; ++t) REQUIRE(adapted[t] == frozen[t]);
  // Later chunks are scored by the adapted model: different.
  double diff = 0;
  for (int t = 16; t < 64; ++t) diff += std::abs(adapted[t] - frozen[t]);
  CHECK(diff > 1e-4);
}

TEST_CASE("score-first TTT keeps an embed_bf16 model's tok_emb on the bf16 grid", "[eval][ttt]") {
  auto tokens = random_tokens(4 * 16 + 1, 16, 6);
  TttOptions opt;
  opt.chunk_tokens = 16;
  opt.lr = 0.5;
  opt.batch_seqs = 2;
  for (bool bf16 : {false, true}) {
    Fixture f(bf16);
    eval_ttt(f.m, tokens, 8, 4, toy_luts(16), 4, opt);
    std::vector<float> w(f.m.param_count());
    f.m.store_params(w.data());
    const auto& e = f.m.layout().at("tok_emb.weight");
    int64_t off_grid = 0;
    for (int64_t i = 0; i < e.numel; ++i) off_grid += !is_bf16_value(w[e.offset + i]);
    INFO("embed_bf16 " << bf16);
    CHECK((bf16 ? off_grid == 0 : off_grid > e.numel / 2));
  }
}

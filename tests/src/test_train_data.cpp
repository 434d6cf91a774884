// ParamStore, the deterministic RNG, and the reference TokenStream / DistributedTokenLoader (§1.4).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "formats/error.h"
#include "src/train/param_store.h"
#include "src/train/rng.h"
#include "src/train/token_stream.h"

using namespace ptool::train;

// ---- ParamStore ------------------------------------------------------------------------------------

TEST_CASE("ParamStore lays out named slices in one buffer", "[train]") {
  ParamStore p;
  const Slice& e = p.add("tok_emb.weight", {8, 4}, Group::adam_embed);
  CHECK(e.offset == 0);
  CHECK(e.numel == 32);
  p.add("blocks.0.attn.c_q.weight", {4, 4}, Group::muon);
  p.add("blocks.0.q_gain", {2}, Group::adam_scalar);
  p.add("scalar", {}, Group::adam_scalar);
  CHECK(p.num_slices() == 4);
  CHECK(p.slice("blocks.0.attn.c_q.weight").offset == 32);
  CHECK(p.slice("blocks.0.q_gain").offset == 48);
  CHECK(p.slice("scalar").offset == 50);
  CHECK(p.slice("scalar").numel == 1);
  CHECK(p.size() == 51);
  CHECK(p.num_params() == 51);
  CHECK(p.index_of("blocks.0.q_gain") == 2);
  CHECK(p.find("nope") == nullptr);
  CHECK_THROWS_AS(p.slice("nope"), ptool::Error);
  CHECK_THROWS_AS(p.add("scalar", {1}, Group::frozen), ptool::Error);
  CHECK_THROWS_AS(p.add("", {1}, Group::frozen), ptool::Error);
  CHECK_THROWS_AS(p.add("neg", {2, -1}, Group::frozen), ptool::Error);

  auto q = p.view("blocks.0.q_gain");
  q[0] = 1.5f;
  q[1] = 2.5f;
  CHECK(p.data()[48] == 1.5f);
  CHECK(p.data()[49] == 2.5f);

  const Slice& m = p.slice("blocks.0.attn.c_q.weight");
  CHECK(m.rows() == 4);
  CHECK(m.cols() == 4);
  CHECK(m.batch() == 1);

  ParamStore g = p.zeros_like();
  CHECK(g.same_layout(p));
  CHECK(g.size() == p.size());
  for (float v : g.flat()) CHECK(v == 0.0f);
  g.copy_from(p);
  CHECK(g.view("blocks.0.q_gain")[1] == 2.5f);
  ParamStore other;
  other.add("x", {51}, Group::frozen);
  CHECK_FALSE(other.same_layout(p));
  CHECK_THROWS_AS(g.copy_from(other), ptool::Error);
}

TEST_CASE("ParamStore alignment pads slice offsets with zeros", "[train]") {
  ParamStore p(16);
  p.add("a", {3}, Group::adam_scalar);
  p.add("b", {2, 5}, Group::muon);
  p.add("c", {4, 2, 3}, Group::muon);
  CHECK(p.slice("a").offset == 0);
  CHECK(p.slice("b").offset == 16);
  CHECK(p.slice("c").offset == 32);
  CHECK(p.size() == 56);
  CHECK(p.num_params() == 3 + 10 + 24);
  CHECK(p.slice("c").batch() == 4);
  CHECK(p.slice("c").rows() == 2);
  CHECK(p.slice("c").cols() == 3);
  for (float v : p.flat()) CHECK(v == 0.0f);
  CHECK(p.zeros_like().slice("c").offset == 32);
}

TEST_CASE("optimizer groups: names and the baseline split", "[train]") {
  for (int i = 0; i < kNumGroups; ++i) {
    const auto g = static_cast<Group>(i);
    CHECK(parse_group(group_name(g)) == g);
  }
  CHECK_THROWS_AS(parse_group("sgd"), ptool::Error);
  CHECK(default_group("tok_emb.weight", 2) == Group::adam_embed);
  CHECK(default_group("lm_head.weight", 2) == Group::adam_head);
  CHECK(default_group("blocks.3.attn.c_q.weight", 2) == Group::muon);
  CHECK(default_group("blocks.3.mlp.proj.weight", 2) == Group::muon);
  CHECK(default_group("blocks.3.resid_mix", 2) == Group::adam_scalar);  // 2-D control tensor
  CHECK(default_group("blocks.3.attn.q_gain", 1) == Group::adam_scalar);
  CHECK(default_group("blocks.3.attn_scale", 1) == Group::adam_scalar);
  CHECK(default_group("skip_weights", 2) == Group::adam_scalar);
  CHECK(is_control_name("blocks.0.mlp_scale"));
  CHECK_FALSE(is_control_name("blocks.0.mlp.fc.weight"));
}

// ---- RNG -------------------------------------------------------------------------------------------

TEST_CASE("RNG: reference vectors, seeding and state", "[train]") {
  uint64_t x = 0;
  CHECK(splitmix64(&x) == 0xE220A8397B1DCDAFull);  // splitmix64 from 0
  // xoshiro256** from state {1, 2, 3, 4} (the generator's published reference output).
  Rng r = Rng::from_state({{1, 2, 3, 4}});
  CHECK(r.next_u64() == 11520ull);
  CHECK(r.next_u64() == 0ull);
  CHECK(r.next_u64() == 1509978240ull);
  CHECK(r.next_u64() == 1215971899390074240ull);
  // The documented seeding: Rng(42) state = 4 splitmix64 outputs from 42 ^ mix(0).
  Rng a(42);
  CHECK(a.state().s[0] == 0x4D9B3F1EC9CF6B1Bull);
  CHECK(a.state().s[3] == 0xAAF470FCBC468F50ull);
  CHECK(a.next_u64() == 2303456275738999573ull);
  CHECK(a.next_u64() == 5438210688795116325ull);

  Rng b(42), c(42, Rng::hash_name("blocks.0.attn.c_q.weight")), d(43);
  const auto st = b.state();
  std::vector<uint64_t> first;
  for (int i = 0; i < 10; ++i) first.push_back(b.next_u64());
  b.restore(st);
  for (int i = 0; i < 10; ++i) CHECK(b.next_u64() == first[i]);
  CHECK(c.next_u64() != first[0]);
  CHECK(d.next_u64() != first[0]);
  CHECK(Rng::hash_name("") == 0xCBF29CE484222325ull);
}

TEST_CASE("RNG: distributions", "[train]") {
  Rng r(1337);
  double sum = 0, sum2 = 0, umin = 1, umax = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const double u = r.uniform();
    umin = std::min(umin, u);
    umax = std::max(umax, u);
    const double z = r.normal();
    sum += z;
    sum2 += z * z;
  }
  CHECK(umin >= 0.0);
  CHECK(umax < 1.0);
  CHECK(std::abs(sum / n) < 0.03);
  CHECK(std::abs(std::sqrt(sum2 / n) - 1.0) < 0.03);
  std::vector<int> hist(7, 0);
  for (int i = 0; i < 7000; ++i) {
    const uint64_t k = r.below(7);
    REQUIRE(k < 7);
    ++hist[k];
  }
  for (int h : hist) CHECK(std::abs(h - 1000) < 150);
  std::vector<float> w(1000);
  r.fill_normal(w, 0.0, 0.005);
  double s2 = 0;
  for (float v : w) s2 += double(v) * v;
  CHECK(std::sqrt(s2 / 1000) == Approx(0.005).epsilon(0.1));
  r.fill_uniform(w, -0.5, 0.5);
  for (float v : w) REQUIRE((v >= -0.5f && v <= 0.5f));
  const float f = r.uniform_f();
  CHECK((f >= 0.0f && f < 1.0f));
}

// ---- TokenStream -----------------------------------------------------------------------------------

namespace {

// Shards whose tokens are 1000·(shard+1) + position, plus the largest uint16 at the end of the last.
struct Fixture {
  std::vector<std::vector<uint16_t>> data;
  std::vector<uint16_t> concat;
  explicit Fixture(std::vector<size_t> sizes) {
    for (size_t s = 0; s < sizes.size(); ++s) {
      std::vector<uint16_t> v(sizes[s]);
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<uint16_t>(1000 * (s + 1) + i);
      data.push_back(v);
    }
    if (!data.empty() && !data.back().empty()) data.back().back() = 65535;
    for (auto& v : data) concat.insert(concat.end(), v.begin(), v.end());
  }
  std::vector<std::span<const uint16_t>> spans() const {
    std::vector<std::span<const uint16_t>> s;
    for (auto& v : data) s.emplace_back(v);
    return s;
  }
  // The endless stream by hand: token k of the concatenation, wrapped.
  int32_t at(uint64_t k) const { return concat[k % concat.size()]; }
};

}  // namespace

TEST_CASE("TokenStream batches equal slicing the concatenated stream by hand", "[train]") {
  Fixture f({5, 0, 3, 7});  // an empty shard in the middle; 15 tokens in all
  TokenStream ts(f.spans());
  CHECK(ts.total_tokens() == 15);
  // global 8, seq_len 2, grad_accum 2, world 1 → local 4, chunk 5 tokens per call.
  CHECK(TokenStream::local_tokens(8, 2, 2, 1) == 4);
  uint64_t p = 0;
  for (int call = 0; call < 12; ++call) {  // 60 tokens: wraps around four times
    const TokenBatch b = ts.next_batch(8, 2, 2, 0, 1);
    REQUIRE(b.x.size() == 4);
    REQUIRE(b.rows == 2);
    REQUIRE(b.seq_len == 2);
    for (int i = 0; i < 4; ++i) {
      REQUIRE(b.x[i] == f.at(p + i));
      REQUIRE(b.y[i] == f.at(p + i + 1));
    }
    p += 5;
  }
  // The largest uint16 is widened, not sign-extended.
  TokenStream t2(f.spans());
  std::vector<int32_t> all(15);
  t2.take(15, all.data());
  CHECK(all.back() == 65535);
  CHECK(all[5] == 3000);  // shard 1 is empty, shard 2 starts at index 5
}

TEST_CASE("TokenStream: rank slices for world = 2", "[train]") {
  Fixture f({7, 6});
  TokenStream r0(f.spans()), r1(f.spans());
  // global 16, seq_len 2, grad_accum 2, world 2 → local 4; chunk = 2 · 5 tokens per call.
  uint64_t p = 0;
  std::vector<int32_t> x(4), y(4);
  for (int call = 0; call < 7; ++call) {
    r0.next_batch(16, 2, 2, 0, 2, x.data(), y.data());
    for (int i = 0; i < 4; ++i) {
      REQUIRE(x[i] == f.at(p + i));
      REQUIRE(y[i] == f.at(p + i + 1));
    }
    r1.next_batch(16, 2, 2, 1, 2, x.data(), y.data());
    for (int i = 0; i < 4; ++i) {
      REQUIRE(x[i] == f.at(p + 5 + i));
      REQUIRE(y[i] == f.at(p + 5 + i + 1));
    }
    p += 10;
    REQUIRE(r0.state() == r1.state());  // every rank consumes the whole chunk
  }
}

TEST_CASE("TokenStream: position at shard ends and wrap-around", "[train]") {
  Fixture f({4, 6});
  TokenStream ts(f.spans());
  std::vector<int32_t> buf(10);
  ts.take(4, buf.data());
  CHECK(ts.state().shard_index == 0);  // exhausted but not advanced (reference semantics)
  CHECK(ts.state().offset == 4);
  ts.take(1, buf.data());
  CHECK(buf[0] == 2000);
  CHECK(ts.state().shard_index == 1);
  CHECK(ts.state().offset == 1);
  ts.skip(5);
  CHECK(ts.state().shard_index == 1);
  CHECK(ts.state().offset == 6);
  ts.take(3, buf.data());  // wraps to shard 0
  CHECK(buf[0] == 1000);
  CHECK(buf[2] == 1002);
  CHECK(ts.state().shard_index == 0);
  CHECK(ts.state().offset == 3);
  ts.skip(25);  // more than all shards together: absolute position 13 + 25 = 38 ≡ 8 → shard 1, offset 4
  CHECK(ts.state().shard_index == 1);
  CHECK(ts.state().offset == 4);
  ts.skip(2);   // ends exactly at the end of the last shard: stays there until more is asked for
  CHECK(ts.state().shard_index == 1);
  CHECK(ts.state().offset == 6);
}

TEST_CASE("TokenStream: state save/restore continues identically", "[train]") {
  Fixture f({11, 3, 9});
  TokenStream a(f.spans());
  for (int i = 0; i < 3; ++i) a.next_batch(12, 3, 1, 0, 2);  // local 6, chunk 14
  const TokenStreamState st = a.state();
  std::vector<TokenBatch> expect;
  for (int i = 0; i < 4; ++i) expect.push_back(a.next_batch(12, 3, 1, 1, 2));

  TokenStream b(f.spans());
  b.restore(st);
  CHECK(b.state() == st);
  for (int i = 0; i < 4; ++i) {
    const TokenBatch got = b.next_batch(12, 3, 1, 1, 2);
    CHECK(got.x == expect[i].x);
    CHECK(got.y == expect[i].y);
  }
  CHECK(b.state() == a.state());

  // A different shard list or an impossible position is refused.
  Fixture g({11, 3, 10});
  TokenStream c(g.spans());
  CHECK_THROWS_AS(c.restore(st), ptool::Error);
  TokenStreamState bad = st;
  bad.offset = 12;
  bad.shard_index = 0;
  CHECK_THROWS_AS(b.restore(bad), ptool::Error);
  bad.shard_index = 3;
  bad.offset = 0;
  CHECK_THROWS_AS(b.restore(bad), ptool::Error);
}

TEST_CASE("TokenStream rejects bad settings", "[train]") {
  Fixture f({10});
  TokenStream ts(f.spans());
  CHECK_THROWS_AS(TokenStream::local_tokens(10, 3, 1, 1), ptool::Error);  // 10 not a multiple of 3
  CHECK_THROWS_AS(TokenStream::local_tokens(4, 2, 4, 1), ptool::Error);   // local 1 < seq_len
  CHECK_THROWS_AS(TokenStream::local_tokens(8, 2, 1, 0), ptool::Error);
  CHECK(TokenStream::local_tokens(9, 2, 2, 1) == 4);                      // floor division, as the reference
  CHECK_THROWS_AS(ts.next_batch(8, 2, 1, 2, 2), ptool::Error);            // rank outside world
  CHECK_THROWS_AS(TokenStream({}), ptool::Error);
  Fixture empty({0, 0});
  CHECK_THROWS_AS(TokenStream(empty.spans()), ptool::Error);
}

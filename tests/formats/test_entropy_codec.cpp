#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "formats/codec.h"
#include "formats/entropy_codec.h"
#include "formats/error.h"
#include "src/synthetic_codes.h"

using ptool::decode_codes;
using ptool::encode_codes;
using ptool::EntropyCodecOptions;

namespace {

EntropyCodecOptions with_mode(int mode) {
  EntropyCodecOptions o;
  o.mode = mode;
  return o;
}

void check_round_trip(const std::vector<int8_t>& codes, int64_t rows, int64_t cols) {
  for (int mode : {-1, 0, 1}) {
    INFO("mode " << mode << ", shape " << rows << "x" << cols);
    const auto stream = encode_codes(codes, rows, cols, with_mode(mode));
    const auto info = ptool::peek_codes_stream(stream);
    CHECK(info.rows == rows);
    CHECK(info.cols == cols);
    CHECK(info.header_bytes + info.payload_bytes == stream.size());
    REQUIRE(decode_codes(stream, rows, cols) == codes);
  }
}

double order0_bytes(const std::vector<int8_t>& codes) {
  size_t hist[256] = {};
  for (int8_t q : codes) ++hist[static_cast<uint8_t>(q)];
  double bits = 0;
  for (size_t c : hist)
    if (c) bits -= static_cast<double>(c) * std::log2(static_cast<double>(c) / static_cast<double>(codes.size()));
  return bits / 8;
}

std::vector<int8_t> laplacian_codes(size_t n, double scale, int clip, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> ex(1.0 / scale);
  std::bernoulli_distribution sign(0.5);
  std::vector<int8_t> out(n);
  for (auto& q : out) {
    const double v = std::min(std::nearbyint(ex(rng)), static_cast<double>(clip));
    q = static_cast<int8_t>(sign(rng) ? -v : v);
  }
  return out;
}

template <class F>
void expect_refused(F&& f) {
  CHECK_THROWS_AS(f(), ptool::Error);
}

}  // namespace

TEST_CASE("entropy codec: exact round trips", "[entropy_codec]") {
  std::mt19937_64 rng(7);
  SECTION("uniform random over the full int8 range") {
    std::vector<int8_t> codes(37 * 53);
    for (auto& q : codes) q = static_cast<int8_t>(rng() & 0xff);
    check_round_trip(codes, 37, 53);
  }
  SECTION("constant tensors") {
    for (int v : {0, 1, -1, 31, -31, 127, -127, -128}) {
      INFO("value " << v);
      check_round_trip(std::vector<int8_t>(64 * 40, static_cast<int8_t>(v)), 64, 40);
    }
  }
  SECTION("extreme values") {
    std::vector<int8_t> codes(50 * 50);
    for (size_t i = 0; i < codes.size(); ++i) {
      const int pick = static_cast<int>(rng() % 4);
      codes[i] = static_cast<int8_t>(pick == 0 ? -128 : pick == 1 ? 127 : pick == 2 ? -127 : 0);
    }
    check_round_trip(codes, 50, 50);
  }
  SECTION("empty and tiny shapes") {
    check_round_trip({}, 0, 0);
    check_round_trip({}, 0, 17);
    check_round_trip({}, 17, 0);
    for (int v : {-128, -1, 0, 1, 127}) check_round_trip({static_cast<int8_t>(v)}, 1, 1);
    check_round_trip({3, -128, 127}, 1, 3);
    check_round_trip({3, -128, 127}, 3, 1);
  }
  SECTION("long rows and tall columns") {
    auto codes = laplacian_codes(60000, 2.0, 31, 11);
    check_round_trip(codes, 1, 60000);
    check_round_trip(codes, 60000, 1);
  }
  SECTION("wide int8 codes (Golomb shift > 0)") {
    auto codes = laplacian_codes(128 * 256, 24.0, 127, 12);
    codes[5] = -128;
    check_round_trip(codes, 128, 256);
  }
  SECTION("synthetic SDClip codes, int6 and int8") {
    const auto opt = ptool::synthetic_preset("strong");
    for (const auto& spec : {ptool::SyntheticTensorSpec{"a", "a", 96, 160, 6, 12.85},
                             ptool::SyntheticTensorSpec{"e", "e", 64, 128, 8, 20.0},
                             ptool::SyntheticTensorSpec{"f", "f", 64, 128, 5, 8.0}}) {
      const auto q = ptool::synthetic_codes(spec, opt, 99);
      check_round_trip(q.codes, q.rows, q.cols);
    }
  }
  SECTION("encoding is deterministic") {
    const auto codes = laplacian_codes(100 * 100, 3.0, 31, 13);
    CHECK(encode_codes(codes, 100, 100) == encode_codes(codes, 100, 100));
  }
}

TEST_CASE("entropy codec: bad arguments", "[entropy_codec]") {
  const std::vector<int8_t> codes(12, 1);
  expect_refused([&] { encode_codes(codes, 3, 5); });
  expect_refused([&] { encode_codes(codes, -3, -4); });
  expect_refused([&] { encode_codes(codes, 3, 4, with_mode(2)); });
  const auto stream = encode_codes(codes, 3, 4);
  expect_refused([&] { decode_codes(stream, 4, 3); });
  expect_refused([&] { decode_codes(stream, 3, 5); });
  expect_refused([&] { decode_codes(stream, -1, 4); });
  expect_refused([&] { decode_codes(stream, int64_t{1} << 40, int64_t{1} << 40); });
}

TEST_CASE("entropy codec: corrupt and truncated streams are refused", "[entropy_codec]") {
  const auto codes = laplacian_codes(16 * 24, 2.5, 31, 21);
  for (int mode : {0, 1}) {
    INFO("mode " << mode);
    const auto stream = encode_codes(codes, 16, 24, with_mode(mode));
    // Every truncation.
    for (size_t len = 0; len < stream.size(); ++len) {
      INFO("truncated to " << len << " of " << stream.size());
      std::vector<uint8_t> cut(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(len));
      expect_refused([&] { decode_codes(cut, 16, 24); });
    }
    // Trailing garbage.
    auto longer = stream;
    longer.push_back(0);
    expect_refused([&] { decode_codes(longer, 16, 24); });
    // Bit flips: every bit of the header and of the last 8 bytes, one bit of every other byte. A flip that
    // leaves the decoded codes unchanged is caught by the strict end-of-payload check, others by the
    // structure or the 32-bit checksum (a silent success is astronomically unlikely).
    const size_t header = ptool::peek_codes_stream(stream).header_bytes;
    for (size_t i = 0; i < stream.size(); ++i) {
      const bool all_bits = i < header || i + 8 >= stream.size();
      for (int b = 0; b < 8; ++b) {
        if (!all_bits && b != static_cast<int>(i % 8)) continue;
        auto bad = stream;
        bad[i] ^= static_cast<uint8_t>(1 << b);
        INFO("byte " << i << " bit " << b);
        expect_refused([&] { decode_codes(bad, 16, 24); });
      }
    }
  }
  SECTION("foreign and random bytes") {
    std::mt19937_64 rng(5);
    for (int t = 0; t < 2000; ++t) {
      std::vector<uint8_t> junk(rng() % 64);
      for (auto& b : junk) b = static_cast<uint8_t>(rng());
      if (junk.size() >= 4 && t % 2 == 0) junk[0] = 'P', junk[1] = 'E', junk[2] = 'C', junk[3] = 1;
      if (junk.size() >= 6 && t % 4 == 0) junk[4] = 24, junk[5] = 40;
      expect_refused([&] { decode_codes(junk, 24, 40); });
    }
  }
  SECTION("a header claiming a huge shape") {
    std::vector<uint8_t> s = {'P', 'E', 'C', 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x02};
    expect_refused([&] { decode_codes(s, 24, 40); });
    expect_refused([&] { (void)ptool::peek_codes_stream(s); });
  }
}

TEST_CASE("entropy codec: i.i.d. Laplacian codes cost about their order-0 entropy", "[entropy_codec]") {
  for (double scale : {0.7, 2.0, 6.0}) {
    const auto codes = laplacian_codes(256 * 512, scale, 31, 31);
    const double h0 = order0_bytes(codes);
    const auto stream = encode_codes(codes, 256, 512);
    INFO("scale " << scale << ": " << stream.size() << " bytes, order-0 " << h0);
    CHECK(static_cast<double>(stream.size()) <= 1.01 * h0 + 16);
  }
}

TEST_CASE("entropy codec: smaller than brotli-11 on realistic synthetic codes", "[entropy_codec]") {
  // The embedding and three matrices of the baseline model's first block, SDClip int8 / int6, default
  // synthetic structure (bench_entropy runs the whole model).
  std::vector<ptool::SyntheticTensorSpec> specs;
  for (const auto& s : ptool::baseline_code_specs(1))
    if (s.group == "tok_emb" || s.group == "attn.c_q" || s.group == "attn.c_k" || s.group == "mlp.fc")
      specs.push_back(s);
  REQUIRE(specs.size() == 4);
  const auto tensors = ptool::synthetic_model_codes(specs, ptool::synthetic_preset("default"), 2024);
  size_t ours = 0;
  std::vector<uint8_t> all;
  for (const auto& t : tensors) {
    const auto stream = encode_codes(t.codes, t.rows, t.cols);
    REQUIRE(decode_codes(stream, t.rows, t.cols) == t.codes);
    ours += stream.size();
    all.insert(all.end(), reinterpret_cast<const uint8_t*>(t.codes.data()),
               reinterpret_cast<const uint8_t*>(t.codes.data()) + t.codes.size());
  }
  ptool::CodecOptions brotli;
  brotli.codec = ptool::Codec::brotli;
  brotli.level = 11;
  brotli.window_log = 24;
  const size_t theirs = ptool::compress(all, brotli).size();
  INFO("ptool " << ours << " bytes, brotli-11 " << theirs << " bytes");
  CHECK(ours < theirs);
  CHECK(static_cast<double>(ours) < 0.99 * static_cast<double>(theirs));
}

TEST_CASE("entropy codec: the automatic mode keeps the smaller model", "[entropy_codec]") {
  // Local scale that changes in 4x8 blocks: row and column means miss it, the neighbour model sees it.
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal(0, 1);
  const int rows = 128, cols = 256, brow = rows / 4, bcol = cols / 8;
  std::vector<double> scale(static_cast<size_t>(brow * bcol));
  for (auto& s : scale) s = 2 * std::exp(normal(rng));
  std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const double v = std::nearbyint(normal(rng) * scale[static_cast<size_t>((r / 4) * bcol + c / 8)]);
      codes[static_cast<size_t>(r * cols + c)] = static_cast<int8_t>(std::clamp(v, -31.0, 31.0));
    }
  const auto s0 = encode_codes(codes, rows, cols, with_mode(0));
  const auto s1 = encode_codes(codes, rows, cols, with_mode(1));
  const auto sa = encode_codes(codes, rows, cols);
  CHECK(s1.size() < s0.size());
  CHECK(ptool::peek_codes_stream(sa).mode == 1);
  CHECK(sa == s1);
  REQUIRE(decode_codes(sa, rows, cols) == codes);
  // And on SDClip codes the single-context model wins and is chosen.
  const auto q = ptool::synthetic_codes({"w", "w", 256, 512, 6, 12.85}, ptool::synthetic_preset("default"), 5);
  const auto a = encode_codes(q.codes, q.rows, q.cols);
  CHECK(a.size() <= encode_codes(q.codes, q.rows, q.cols, with_mode(1)).size());
  CHECK(a.size() <= encode_codes(q.codes, q.rows, q.cols, with_mode(0)).size());
}

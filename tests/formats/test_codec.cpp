// Codecs (formats/codec.h): round trips over every level and window, level/window validation, corrupt input.
#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "formats/codec.h"
#include "formats/error.h"

using ptool::Codec;
using ptool::CodecOptions;
using ptool::Error;

namespace {

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Compressible but not trivial: words from a small dictionary plus a slowly drifting int8-like signal.
std::vector<uint8_t> text_like(size_t n, uint32_t seed) {
  static const char* words[] = {"the ", "weight ", "of ", "int6 ", "quantized ", "matrix ", "and ", "scale ",
                                "per ", "row ", "bits ", "byte "};
  std::mt19937 rng(seed);
  std::vector<uint8_t> v;
  v.reserve(n);
  while (v.size() < n) {
    if (rng() % 4 == 0) {
      v.push_back(static_cast<uint8_t>(static_cast<int8_t>(std::normal_distribution<float>(0, 12)(rng))));
    } else {
      for (const char* c = words[rng() % 12]; *c && v.size() < n; ++c) v.push_back(static_cast<uint8_t>(*c));
    }
  }
  return v;
}

std::vector<std::vector<uint8_t>> inputs() {
  return {{}, {42}, random_bytes(3000, 1), text_like(50000, 2), std::vector<uint8_t>(70000, 0xAB)};
}

void round_trip(const CodecOptions& opt, const std::vector<uint8_t>& raw) {
  const auto stored = ptool::compress(raw, opt);
  const auto back = ptool::decompress(opt.codec, stored, raw.size());
  REQUIRE(back == raw);
}

}  // namespace

TEST_CASE("codec names parse back", "[codec]") {
  for (Codec c : {Codec::none, Codec::zlib, Codec::zstd, Codec::brotli}) CHECK(ptool::parse_codec(ptool::codec_name(c)) == c);
  CHECK_THROWS_AS(ptool::parse_codec("lzma"), Error);
  CHECK_THROWS_AS(ptool::parse_codec(""), Error);
}

TEST_CASE("none codec copies and checks the length", "[codec]") {
  const auto raw = text_like(1000, 3);
  CodecOptions opt{Codec::none};
  CHECK(ptool::compress(raw, opt) == raw);
  round_trip(opt, raw);
  CHECK_THROWS_AS(ptool::decompress(Codec::none, raw, raw.size() + 1), Error);
  CHECK_THROWS_AS(ptool::decompress(Codec::none, raw, raw.size() - 1), Error);
}

TEST_CASE("zlib round trips at levels 1-9", "[codec]") {
  const auto data = inputs();
  for (int level = 1; level <= 9; ++level) {
    INFO("zlib level " << level);
    for (const auto& raw : data) round_trip({Codec::zlib, level, 0}, raw);
  }
  round_trip({Codec::zlib, -1, 0}, data[3]);  // -1: maximum level
  // Higher levels do not lose to level 1 on compressible data.
  CHECK(ptool::compress(data[3], {Codec::zlib, 9, 0}).size() <= ptool::compress(data[3], {Codec::zlib, 1, 0}).size());
}

TEST_CASE("zstd round trips at levels 1-22", "[codec]") {
  const auto data = inputs();
  for (int level = 1; level <= 22; ++level) {
    INFO("zstd level " << level);
    for (const auto& raw : data) round_trip({Codec::zstd, level, 0}, raw);
  }
  round_trip({Codec::zstd, -1, 0}, data[3]);
  for (int wlog : {10, 20, 27, 31}) {
    INFO("zstd window_log " << wlog);
    round_trip({Codec::zstd, 19, wlog}, data[3]);
  }
}

TEST_CASE("zstd long window finds matches beyond the default window", "[codec]") {
  // 3 MB of noise twice: level 1's default window (2^19) cannot see the repeat; a 2^23 long window can.
  const auto block = random_bytes(3u << 20, 7);
  std::vector<uint8_t> raw(block);
  raw.insert(raw.end(), block.begin(), block.end());
  const auto plain = ptool::compress(raw, {Codec::zstd, 1, 0});
  const auto longw = ptool::compress(raw, {Codec::zstd, 1, 23});
  CHECK(plain.size() > raw.size() * 9 / 10);
  CHECK(longw.size() < raw.size() * 6 / 10);
  CHECK(ptool::decompress(Codec::zstd, longw, raw.size()) == raw);
}

TEST_CASE("brotli round trips at qualities 0-11 and windows 10-24", "[codec]") {
  const auto data = inputs();
  for (int q = 0; q <= 11; ++q) {
    INFO("brotli quality " << q);
    for (const auto& raw : data) round_trip({Codec::brotli, q, 0}, raw);
  }
  for (int w = 10; w <= 24; ++w) {
    INFO("brotli window " << w);
    round_trip({Codec::brotli, 5, w}, data[3]);
    round_trip({Codec::brotli, 11, w}, data[3]);
  }
  round_trip({Codec::brotli, -1, 0}, data[3]);
}

TEST_CASE("codec levels and windows outside their range are refused", "[codec]") {
  const auto raw = text_like(1000, 4);
  CHECK_THROWS_AS(ptool::compress(raw, {Codec::zlib, 0, 0}), Error);
  CHECK_THROWS_AS(ptool::compress(raw, {Codec::zlib, 10, 0}), Error);
  CHECK_THROWS_AS(ptool::compress(raw, {Codec::zstd, 0, 0}), Error);
  CHECK_THROWS_AS(ptool::compress(raw, {Codec::zstd, 23, 0}), Error);
  CHECK_THROWS_AS(ptool::compress(raw, {Codec::brotli, -2, 0}), Error);
  CHECK_THROWS_AS(ptool::compress(raw, {Codec::brotli, 12, 0}), Error);
  CHECK_THROWS_AS(ptool::compress(raw, {Codec::brotli, 5, 9}), Error);
  CHECK_THROWS_AS(ptool::compress(raw, {Codec::brotli, 5, 25}), Error);
  CHECK_THROWS_WITH(ptool::compress(raw, {Codec::zstd, 3, 5}), Catch::Contains("zstd window 5 is outside"));
  CHECK_THROWS_WITH(ptool::compress(raw, {Codec::zstd, 3, 40}), Catch::Contains("zstd window 40 is outside"));
  try {
    ptool::compress(raw, {Codec::zstd, 30, 0});
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK_THAT(msg, Catch::Contains("zstd") && Catch::Contains("30") && Catch::Contains("1..22"));
  }
}

TEST_CASE("corrupt or mismatched input is refused with Error", "[codec]") {
  const auto raw = text_like(40000, 5);
  for (const CodecOptions& opt : {CodecOptions{Codec::zlib, 6, 0}, CodecOptions{Codec::zstd, 19, 0},
                                  CodecOptions{Codec::zstd, 3, 27}, CodecOptions{Codec::brotli, 11, 22}}) {
    INFO(ptool::codec_name(opt.codec) << " level " << opt.level << " window " << opt.window_log);
    const auto stored = ptool::compress(raw, opt);
    REQUIRE(stored.size() > 16);

    // Truncated streams.
    for (size_t keep : {size_t{0}, size_t{1}, stored.size() / 2, stored.size() - 1}) {
      INFO("truncated to " << keep);
      const std::vector<uint8_t> cut(stored.begin(), stored.begin() + static_cast<std::ptrdiff_t>(keep));
      CHECK_THROWS_AS(ptool::decompress(opt.codec, cut, raw.size()), Error);
    }
    // Wrong declared size, both ways.
    CHECK_THROWS_AS(ptool::decompress(opt.codec, stored, raw.size() - 1), Error);
    CHECK_THROWS_AS(ptool::decompress(opt.codec, stored, raw.size() + 1), Error);
    // Noise is not a stream of any codec.
    CHECK_THROWS_AS(ptool::decompress(opt.codec, random_bytes(stored.size(), 9), raw.size()), Error);
    // A damaged first byte breaks every format's header.
    auto bad = stored;
    bad[0] ^= 0xFF;
    CHECK_THROWS_AS(ptool::decompress(opt.codec, bad, raw.size()), Error);
    // Flipped bits elsewhere: zlib's adler32 catches them; zstd and brotli frames carry no checksum here, so a
    // flip may decode to other bytes of the right size, but it must never crash or throw anything else.
    std::mt19937 rng(11);
    for (int i = 0; i < 50; ++i) {
      auto flipped = stored;
      flipped[1 + rng() % (flipped.size() - 1)] ^= static_cast<uint8_t>(1u << (rng() % 8));
      try {
        const auto out = ptool::decompress(opt.codec, flipped, raw.size());
        CHECK(opt.codec != Codec::zlib);
        CHECK(out.size() == raw.size());
      } catch (const Error&) {
      }
    }
  }
}

TEST_CASE("empty data compresses and decompresses in every codec", "[codec]") {
  for (const CodecOptions& opt : {CodecOptions{Codec::none}, CodecOptions{Codec::zlib, 9, 0},
                                  CodecOptions{Codec::zstd, 22, 0}, CodecOptions{Codec::brotli, 11, 24}}) {
    INFO(ptool::codec_name(opt.codec));
    const auto stored = ptool::compress({}, opt);
    CHECK(ptool::decompress(opt.codec, stored, 0).empty());
    if (opt.codec != Codec::none) CHECK_THROWS_AS(ptool::decompress(opt.codec, stored, 10), Error);
  }
}

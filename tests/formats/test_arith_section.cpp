// Section codec 4, "arith" (ARTIFACT.md §3.1): int8 matrices through the entropy codec, the rest through a byte
// codec. Round trips through the codec and the whole artifact, and a corrupt-stream matrix whose every case is
// refused with its own message before anything the stored bytes cannot account for is allocated.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "formats/arith_section.h"
#include "formats/artifact.h"
#include "formats/error.h"
#include "tests/formats/test_artifact_util.h"

using namespace ptool;
using namespace ptool::testing;
using Catch::Matchers::Contains;

namespace {

// Laplacian-ish int6 codes with per-row magnitude differences (what the codec is built for).
std::vector<uint8_t> code_bytes(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out;
  for (int64_t r = 0; r < rows; ++r) {
    std::exponential_distribution<double> mag(1.0 / (1.0 + static_cast<double>(r % 5)));
    for (int64_t c = 0; c < cols; ++c) {
      const int m = std::min(31, static_cast<int>(mag(rng)));
      out.push_back(static_cast<uint8_t>(static_cast<int8_t>(rng() & 1 ? m : -m)));
    }
  }
  return out;
}

// A per-row quantized record: codes then one fp16 scale per row.
TensorRecord quantized_record(const std::string& name, int64_t rows, int64_t cols, uint32_t seed,
                              const std::string& section) {
  TensorRecord r;
  r.name = name;
  r.shape = {rows, cols};
  r.dtype = DType::i8;
  r.scheme = "int6_per_row";
  r.scheme_version = 1;
  r.section = section;
  r.data = code_bytes(rows, cols, seed);
  for (int64_t i = 0; i < rows; ++i) {
    r.data.push_back(static_cast<uint8_t>(0x10 + i));
    r.data.push_back(0x2c);
  }
  return r;
}

TensorRecord plain_record(const std::string& name, std::vector<int64_t> shape, DType dtype, size_t bytes,
                          const std::string& section) {
  TensorRecord r;
  r.name = name;
  r.shape = std::move(shape);
  r.dtype = dtype;
  r.section = section;
  r.data = iota_bytes(bytes, 7);
  return r;
}

Artifact mixed_artifact() {
  Artifact a;
  a.stage = Stage::packed;
  a.metadata = {{"config", {{"vocab_size", 8}}}};
  a.tensors.push_back(quantized_record("blocks.0.attn.c_q.weight", 48, 64, 1, "codes"));
  a.tensors.push_back(plain_record("norm", {64}, DType::f32, 256, "codes"));      // not a matrix: rest stream
  a.tensors.push_back(quantized_record("blocks.0.mlp.fc.weight", 96, 64, 2, "codes"));
  a.tensors.push_back(plain_record("table", {5, 7}, DType::i8, 35, "codes"));     // a plain int8 matrix
  a.tensors.push_back(plain_record("vec", {9}, DType::i8, 9, "codes"));           // rank 1: rest stream
  a.tensors.push_back(plain_record("other", {3, 3}, DType::f32, 36, "float"));
  return a;
}

WriteOptions arith_options(uint32_t alignment) {
  WriteOptions wo;
  SectionOptions so;
  so.name = "codes";
  so.codec.codec = Codec::arith;
  so.alignment = alignment;
  wo.sections.push_back(so);
  wo.default_codec.codec = Codec::zstd;
  return wo;
}

std::string decode_error(std::span<const uint8_t> stored, uint64_t raw_bytes, const std::vector<MatrixRegion>& regions) {
  try {
    decode_arith_section(stored, raw_bytes, regions);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("arith section: only rank-2 int8 tensors are matrices", "[arith]") {
  const std::vector<int64_t> m{4, 5}, v{20}, z{0, 5};
  CHECK(matrix_region(DType::i8, m, 64, 20).has_value());
  CHECK(matrix_region(DType::i8, m, 64, 28)->bytes() == 20);  // codes followed by scales
  CHECK_FALSE(matrix_region(DType::i8, m, 64, 19));           // shorter than its codes
  CHECK_FALSE(matrix_region(DType::u8, m, 0, 20));
  CHECK_FALSE(matrix_region(DType::i8, v, 0, 20));
  CHECK_FALSE(matrix_region(DType::i8, z, 0, 0));
}

TEST_CASE("arith section: the codec round-trips matrices, the bytes between them and the tail", "[arith]") {
  const auto a = code_bytes(30, 40, 3), b = code_bytes(8, 100, 4);
  std::vector<uint8_t> raw = iota_bytes(10, 200);  // bytes before the first matrix
  const MatrixRegion ra{raw.size(), 30, 40};
  raw.insert(raw.end(), a.begin(), a.end());
  raw.insert(raw.end(), 6, 0);
  const MatrixRegion rb{raw.size(), 8, 100};
  raw.insert(raw.end(), b.begin(), b.end());
  const auto tail = iota_bytes(33, 1);
  raw.insert(raw.end(), tail.begin(), tail.end());
  const std::vector<MatrixRegion> regions{ra, rb};
  const auto stored = encode_arith_section(raw, regions);
  CHECK(decode_arith_section(stored, raw.size(), regions) == raw);
  CHECK(stored.size() < raw.size());

  // No matrices at all, and nothing but matrices.
  const std::vector<MatrixRegion> none;
  CHECK(decode_arith_section(encode_arith_section(tail, none), tail.size(), none) == tail);
  const std::vector<MatrixRegion> whole{{0, 30, 40}};
  CHECK(decode_arith_section(encode_arith_section(a, whole), a.size(), whole) == a);
}

TEST_CASE("arith section: the encoder refuses regions out of order or outside the bytes", "[arith]") {
  const std::vector<uint8_t> raw(100, 0);
  const std::vector<MatrixRegion> overlap{{0, 5, 5}, {20, 5, 5}};
  CHECK_THROWS_WITH(encode_arith_section(raw, overlap), Contains("matrix #1"));
  const std::vector<MatrixRegion> outside{{90, 5, 5}};
  CHECK_THROWS_WITH(encode_arith_section(raw, outside), Contains("not inside"));
}

TEST_CASE("artifact with an arith section: round trip, version 1.1, other files stay 1.0", "[arith][artifact]") {
  const Artifact a = mixed_artifact();
  for (uint32_t alignment : {1u, 64u}) {
    CAPTURE(alignment);
    const auto bytes = serialize_artifact(a, arith_options(alignment));
    ArtifactLayout L;
    const Artifact b = parse_artifact(bytes, "arith.ptz", L);
    CHECK(b.tensors == a.tensors);
    CHECK(L.version_minor == 1);
    REQUIRE(L.sections.size() == 2);
    CHECK(L.sections[0].codec == Codec::arith);
    CHECK(L.sections[0].stored_bytes < L.sections[0].raw_bytes);
  }
  WriteOptions zstd;
  zstd.default_codec.codec = Codec::zstd;
  ArtifactLayout L;
  parse_artifact(serialize_artifact(a, zstd), "zstd.ptz", L);
  CHECK(L.version_minor == 0);
}

TEST_CASE("artifact writer refuses arith with a byte shuffle", "[arith][artifact]") {
  WriteOptions wo = arith_options(1);
  wo.sections[0].shuffle_stride = 2;
  CHECK_THROWS_WITH(serialize_artifact(mixed_artifact(), wo), Contains("does not take a byte shuffle"));
}

TEST_CASE("arith section: corrupt streams are refused, each with its own message", "[arith][corrupt]") {
  const auto a = code_bytes(16, 32, 5);
  std::vector<uint8_t> raw = a;
  std::mt19937 rng(11);
  for (int i = 0; i < 40; ++i) raw.push_back(static_cast<uint8_t>(rng()));
  const std::vector<MatrixRegion> regions{{0, 16, 32}};
  const auto good = encode_arith_section(raw, regions);
  REQUIRE(good[0] == static_cast<uint8_t>(Codec::none));  // 40 random bytes do not shrink under Brotli
  const size_t stream_len_at = 16 + 40;

  auto with = [&](auto change) {
    auto s = good;
    change(s);
    return decode_error(s, raw.size(), regions);
  };
  CHECK_THAT(decode_error({good.data(), 10}, raw.size(), regions), Contains("cannot hold its 16-byte prefix"));
  CHECK_THAT(with([](auto& s) { s[0] = 7; }), Contains("unknown codec 7 for the bytes outside the matrices"));
  CHECK_THAT(with([](auto& s) { s[3] = 1; }), Contains("reserved byte 3 is not zero"));
  CHECK_THAT(with([](auto& s) { patch(s, 8, 1u << 20, 8); }), Contains("rest stream of 1048576 bytes runs past"));
  CHECK_THAT(with([&](auto& s) { patch(s, stream_len_at, 1u << 20, 8); }),
             Contains("matrix stream #0 of 1048576 bytes runs past"));
  CHECK_THAT(with([&](auto& s) { s.resize(stream_len_at + 4); }), Contains("end before the length of matrix stream #0"));
  CHECK_THAT(with([](auto& s) { s.push_back(0); }), Contains("1 stored bytes after the last matrix stream"));
  CHECK_THAT(with([](auto& s) { s.back() ^= 0x40; }), Contains("matrix stream #0: entropy-coded codes"));
  CHECK_THAT(with([](auto& s) { patch(s, 8, 39, 8); s.erase(s.begin() + 16); }),
             Contains("39 bytes outside the matrices, expected 40"));
  CHECK_THAT(decode_error(good, raw.size() - 16, {{{0, 16, 31}}}), Contains("differs from the expected 16x31"));

  // A Brotli rest stream that decodes to the wrong length is measured before the section is allocated.
  std::vector<uint8_t> zeros(4096, 0);
  const std::vector<MatrixRegion> none;
  const auto brotli_rest = encode_arith_section(zeros, none);
  REQUIRE(brotli_rest[0] == static_cast<uint8_t>(Codec::brotli));
  CHECK_THAT(decode_error(brotli_rest, 4000, none), Contains("decode to more than 4000 bytes, expected 4000"));

  // A matrix far larger than its stream could carry is refused before 2^40 bytes are allocated.
  const std::vector<MatrixRegion> huge{{0, int64_t{1} << 20, int64_t{1} << 20}};
  CHECK_THAT(decode_error(good, uint64_t{1} << 40, huge), Contains("too few to hold 1048576x1048576 codes"));
}

TEST_CASE("artifact reader: arith sections in a 1.0 file or with a shuffle are refused", "[arith][corrupt]") {
  const auto codes = code_bytes(4, 8, 6);
  const std::vector<MatrixRegion> regions{{0, 4, 8}};
  RawFile f;
  f.minor = 1;
  RawSection s;
  s.codec = static_cast<uint8_t>(Codec::arith);
  s.alignment = 1;
  s.stored = encode_arith_section(codes, regions);
  s.raw_bytes = codes.size();
  f.sections.push_back(s);
  f.tensors.push_back(raw_tensor("m", static_cast<uint8_t>(DType::i8), {4, 8}, 0, 0, codes));
  CHECK(parse_artifact(f.encode(), "ok.ptz").tensors.at(0).data == codes);

  RawFile old = f;
  old.minor = 0;
  CHECK_THROWS_WITH(parse_artifact(old.encode(), "old.ptz"), Contains("arith needs version 1.1"));
  RawFile shuffled = f;
  shuffled.sections[0].shuffle = 2;
  CHECK_THROWS_WITH(parse_artifact(shuffled.encode(), "shuffled.ptz"), Contains("arith sections are not shuffled"));
  RawFile flipped = f;
  flipped.sections[0].stored.back() ^= 1;
  CHECK_THROWS_WITH(parse_artifact(flipped.encode(), "flipped.ptz"),
                    Contains("flipped.ptz: cannot decode section 'main' (arith"));
}

// Artifact container: round trips, the writer's input checks, atomic writes, and the byte layout of
// formats/ARTIFACT.md (checked against the independent encoder in test_artifact_util.h).
#include <catch2/catch.hpp>

#include <sys/resource.h>
#include <sys/stat.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "formats/artifact.h"
#include "formats/codec.h"
#include "formats/error.h"
#include "tests/formats/test_artifact_util.h"

using namespace ptool;
using namespace ptool::testing;
using Catch::Matchers::Contains;

namespace {

const std::vector<DType> kAllDTypes = {DType::f32, DType::f16, DType::bf16, DType::f64, DType::i8,  DType::u8,
                                       DType::i16, DType::u16, DType::i32,  DType::u32, DType::i64, DType::u64};
const std::vector<Codec> kAllCodecs = {Codec::none, Codec::zlib, Codec::zstd, Codec::brotli};

std::vector<uint8_t> random_bytes(std::mt19937_64& rng, size_t n, bool compressible = true) {
  std::vector<uint8_t> v(n);
  // Compressible on purpose (few distinct values), so the codecs do real work.
  for (auto& b : v) b = static_cast<uint8_t>(compressible ? rng() % 7 : rng());
  return v;
}

TensorRecord make_tensor(std::mt19937_64& rng, std::string name, DType dtype, std::vector<int64_t> shape,
                         std::string section) {
  TensorRecord t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.section = std::move(section);
  t.data = random_bytes(rng, static_cast<size_t>(t.numel()) * dtype_size(dtype));
  return t;
}

Artifact random_artifact(std::mt19937_64& rng, WriteOptions& opt) {
  Artifact a;
  a.stage = static_cast<Stage>(1 + rng() % 3);
  a.metadata = {{"config", {{"model_dim", 8 * (1 + rng() % 4)}}}, {"provenance", {{"seed", rng() % 1000}}}};
  const std::vector<std::string> sections = {"main", "q", "fp16", "misc"};
  const size_t n = rng() % 12;
  for (size_t i = 0; i < n; ++i) {
    std::vector<int64_t> shape(rng() % 5);
    for (auto& d : shape) d = rng() % 10 == 0 ? 0 : static_cast<int64_t>(1 + rng() % 6);
    TensorRecord t = make_tensor(rng, "blocks." + std::to_string(i) + (rng() % 4 == 0 ? ".poids\u00e9" : ".w"),
                                 kAllDTypes[rng() % kAllDTypes.size()], shape, sections[rng() % sections.size()]);
    if (rng() % 4 == 0) {
      t.scheme = rng() % 2 ? "int8_per_row" : "int6_packed";
      t.scheme_version = static_cast<uint32_t>(1 + rng() % 3);
      t.data = random_bytes(rng, rng() % 100);
    }
    a.tensors.push_back(std::move(t));
  }
  const std::vector<uint8_t> strides = {0, 1, 2, 3, 4, 8};
  const std::vector<uint32_t> aligns = {1, 2, 4, 8, 64, 256};
  opt = {};
  opt.default_codec.codec = kAllCodecs[rng() % kAllCodecs.size()];
  for (const std::string& s : sections)
    if (rng() % 3)
      opt.sections.push_back({s, {kAllCodecs[rng() % kAllCodecs.size()], static_cast<int>(1 + rng() % 5), 0},
                              strides[rng() % strides.size()], aligns[rng() % aligns.size()]});
  return a;
}

void check_same(const Artifact& got, const Artifact& want) {
  CHECK(got.stage == want.stage);
  CHECK(got.metadata == want.metadata);
  REQUIRE(got.tensors.size() == want.tensors.size());
  for (size_t i = 0; i < want.tensors.size(); ++i) {
    INFO("tensor " << want.tensors[i].name);
    CHECK(got.tensors[i] == want.tensors[i]);
  }
}

Artifact round_trip(const Artifact& a, const WriteOptions& opt = {}) {
  const std::vector<uint8_t> bytes = serialize_artifact(a, opt);
  return parse_artifact(bytes, "roundtrip.ptc");
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Round trips

TEST_CASE("random artifacts round-trip through serialize and parse", "[artifact][roundtrip]") {
  std::mt19937_64 rng(20240520);
  for (int iter = 0; iter < 200; ++iter) {
    WriteOptions opt;
    const Artifact a = random_artifact(rng, opt);
    INFO("iteration " << iter);
    check_same(round_trip(a, opt), a);
  }
}

TEST_CASE("every dtype round-trips with every codec, shuffle on and off", "[artifact][roundtrip]") {
  std::mt19937_64 rng(7);
  for (Codec codec : kAllCodecs)
    for (uint8_t shuffle : {0, 2, 4, 8}) {
      Artifact a;
      for (DType d : kAllDTypes) {
        const std::string n(dtype_name(d));
        a.tensors.push_back(make_tensor(rng, n + ".matrix", d, {3, 5}, "s"));
        a.tensors.push_back(make_tensor(rng, n + ".scalar", d, {}, "s"));
        a.tensors.push_back(make_tensor(rng, n + ".empty", d, {4, 0, 2}, "s"));
      }
      WriteOptions opt;
      opt.sections.push_back({"s", {codec, -1, 0}, shuffle, 64});
      DYNAMIC_SECTION(codec_name(codec) << " shuffle " << int(shuffle)) { check_same(round_trip(a, opt), a); }
    }
}

TEST_CASE("the empty artifact round-trips and is just its header", "[artifact][roundtrip]") {
  Artifact a;
  a.stage = Stage::packed;
  const std::vector<uint8_t> bytes = serialize_artifact(a);
  CHECK(bytes.size() == 64 + 2);  // preamble + "{}"
  const Artifact b = parse_artifact(bytes, "empty.ptz");
  CHECK(b.stage == Stage::packed);
  CHECK(b.tensors.empty());
  CHECK(b.metadata == nlohmann::json::object());
}

TEST_CASE("zero-size tensors round-trip and store no bytes whatever the codec", "[artifact][roundtrip]") {
  for (Codec codec : kAllCodecs) {
    Artifact a;
    a.tensors.push_back({"z0", {0}, DType::f32, "", 0, "zeros", {}});
    a.tensors.push_back({"z1", {3, 0, 7}, DType::bf16, "", 0, "zeros", {}});
    a.tensors.push_back({"qz", {0, 4}, DType::f32, "int8_per_row", 1, "zeros", {}});
    WriteOptions opt;
    opt.default_codec.codec = codec;
    const std::vector<uint8_t> bytes = serialize_artifact(a, opt);
    const ArtifactLayout L = parse_artifact_layout(bytes, "z.ptc");
    REQUIRE(L.sections.size() == 1);
    CHECK(L.sections[0].raw_bytes == 0);
    CHECK(L.sections[0].stored_bytes == 0);
    check_same(parse_artifact(bytes, "z.ptc"), a);
  }
}

TEST_CASE("scalars round-trip with their values", "[artifact][roundtrip]") {
  Artifact a;
  TensorRecord step{"step", {}, DType::i64, "", 0, "main", std::vector<uint8_t>(8)};
  const int64_t v = -1234567890123;
  std::memcpy(step.data.data(), &v, 8);
  a.tensors.push_back(step);
  TensorRecord lr{"lr", {}, DType::f64, "", 0, "main", std::vector<uint8_t>(8)};
  const double d = 0.0625;
  std::memcpy(lr.data.data(), &d, 8);
  a.tensors.push_back(lr);
  const Artifact b = round_trip(a);
  CHECK(b.at("step").shape.empty());
  CHECK(b.at("step").numel() == 1);
  int64_t got;
  std::memcpy(&got, b.at("step").data.data(), 8);
  CHECK(got == v);
  double gd;
  std::memcpy(&gd, b.at("lr").data.data(), 8);
  CHECK(gd == d);
}

TEST_CASE("metadata with nested config, unicode and numbers round-trips exactly", "[artifact][roundtrip]") {
  Artifact a;
  a.metadata = nlohmann::json::parse(R"({
    "config": {"vocab_size": 1024, "model_dim": 512, "rope_base": 10000.0, "tie_embeddings": true,
               "schedule": [0, 1, 1, 1, 2], "activation": "relu\u00b2"},
    "tokenizer_sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "provenance": {"ptool_version": "0.1.0", "command": "ptool train --seed 1", "seed": 1,
                   "data_shards": ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]}})");
  a.tensors.push_back({"w", {2}, DType::f16, "", 0, "main", {1, 2, 3, 4}});
  check_same(round_trip(a), a);
}

TEST_CASE("metadata nested exactly as deep as the reader allows round-trips", "[artifact][roundtrip]") {
  nlohmann::json deep = 1;
  for (int i = 0; i < 63; ++i) deep = nlohmann::json::array({deep});  // the 1 sits inside 64 containers
  Artifact a;
  a.metadata = {{"deep", deep}};
  check_same(round_trip(a), a);
}

TEST_CASE("tensor order is kept when tensors of different sections interleave", "[artifact][roundtrip]") {
  std::mt19937_64 rng(3);
  Artifact a;
  for (int i = 0; i < 9; ++i)
    a.tensors.push_back(make_tensor(rng, "t" + std::to_string(i), DType::f32, {i + 1}, i % 3 == 0 ? "a" : (i % 3 == 1 ? "b" : "c")));
  WriteOptions opt;
  opt.sections = {{"a", {Codec::zstd, 3, 0}, 4, 64}, {"b", {Codec::brotli, 5, 0}, 0, 1}, {"c", {Codec::zlib, 6, 0}, 2, 8}};
  const std::vector<uint8_t> bytes = serialize_artifact(a, opt);
  check_same(parse_artifact(bytes, "x"), a);
  const ArtifactLayout L = parse_artifact_layout(bytes, "x");
  REQUIRE(L.sections.size() == 3);
  CHECK(L.sections[0].name == "a");  // sections in order of first use
  CHECK(L.sections[1].name == "b");
  CHECK(L.sections[2].name == "c");
  CHECK(L.sections[0].codec == Codec::zstd);
  CHECK(L.sections[0].shuffle_stride == 4);
  CHECK(L.sections[1].alignment == 1);
  CHECK(L.sections[2].alignment == 8);
}

TEST_CASE("sections without options use the default codec, and unused section options are ignored",
          "[artifact][roundtrip]") {
  std::mt19937_64 rng(5);
  Artifact a;
  a.tensors.push_back(make_tensor(rng, "w", DType::f32, {64}, "main"));
  WriteOptions opt;
  opt.default_codec = {Codec::brotli, 4, 0};
  opt.sections.push_back({"never_used", {Codec::zlib, 1, 0}, 0, 64});
  const std::vector<uint8_t> bytes = serialize_artifact(a, opt);
  const ArtifactLayout L = parse_artifact_layout(bytes, "x");
  REQUIRE(L.sections.size() == 1);
  CHECK(L.sections[0].codec == Codec::brotli);
  CHECK(L.sections[0].stored_bytes < L.sections[0].raw_bytes);
  check_same(parse_artifact(bytes, "x"), a);
}

TEST_CASE("byte shuffle groups the bytes of each element", "[artifact][shuffle]") {
  Artifact a;
  a.tensors.push_back({"w", {5}, DType::u16, "", 0, "s", {0x01, 0xA1, 0x02, 0xA2, 0x03, 0xA3, 0x04, 0xA4, 0x05, 0xA5}});
  WriteOptions opt;
  opt.sections.push_back({"s", {Codec::none, -1, 0}, 2, 64});
  const std::vector<uint8_t> bytes = serialize_artifact(a, opt);
  const ArtifactLayout L = parse_artifact_layout(bytes, "x");
  const std::vector<uint8_t> stored(bytes.begin() + L.sections[0].file_offset, bytes.end());
  CHECK(stored == std::vector<uint8_t>{0x01, 0x02, 0x03, 0x04, 0x05, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5});
  check_same(parse_artifact(bytes, "x"), a);
}

TEST_CASE("byte shuffle with a stride that does not divide the length keeps the tail in place", "[artifact][shuffle]") {
  Artifact a;
  a.tensors.push_back({"w", {7}, DType::u8, "", 0, "s", {1, 2, 3, 4, 5, 6, 7}});
  WriteOptions opt;
  opt.sections.push_back({"s", {Codec::none, -1, 0}, 3, 64});
  const std::vector<uint8_t> bytes = serialize_artifact(a, opt);
  const std::vector<uint8_t> stored(bytes.end() - 7, bytes.end());
  CHECK(stored == std::vector<uint8_t>{1, 4, 2, 5, 3, 6, 7});
  check_same(parse_artifact(bytes, "x"), a);
}

TEST_CASE("serialization is deterministic", "[artifact][roundtrip]") {
  std::mt19937_64 rng(11), rng2(11);
  WriteOptions o1, o2;
  const Artifact a = random_artifact(rng, o1), b = random_artifact(rng2, o2);
  CHECK(serialize_artifact(a, o1) == serialize_artifact(b, o2));
}

// ---------------------------------------------------------------------------------------------------------------
// The byte layout

TEST_CASE("the writer produces exactly the bytes the spec describes", "[artifact][spec]") {
  Artifact a;
  a.stage = Stage::quantized;
  a.metadata = {{"config", {{"vocab_size", 8}}}};
  const auto x = iota_bytes(24, 1), y = iota_bytes(16, 101), z = iota_bytes(10, 50);
  a.tensors.push_back({"a", {2, 3}, DType::f32, "", 0, "main", x});
  a.tensors.push_back({"q", {4, 5}, DType::f32, "int8_per_row", 3, "second", z});
  a.tensors.push_back({"b", {4}, DType::f32, "", 0, "main", y});

  RawFile f;
  f.stage = 2;
  f.metadata = a.metadata.dump();
  RawSection main;
  main.stored.assign(80, 0);
  std::copy(x.begin(), x.end(), main.stored.begin());
  std::copy(y.begin(), y.end(), main.stored.begin() + 64);
  main.raw_bytes = 80;
  RawSection second;
  second.name = "second";
  second.stored = z;
  second.raw_bytes = 10;
  f.sections = {main, second};
  f.tensors.push_back(raw_tensor("a", 0, {2, 3}, 0, 0, x));
  RawTensor q = raw_tensor("q", 0, {4, 5}, 1, 0, z);
  q.scheme = "int8_per_row";
  q.scheme_version = 3;
  f.tensors.push_back(q);
  f.tensors.push_back(raw_tensor("b", 0, {4}, 0, 64, y));

  const std::vector<uint8_t> want = f.encode();
  CHECK(serialize_artifact(a) == want);
  CHECK(std::memcmp(want.data(), "PTOOLART", 8) == 0);
  check_same(parse_artifact(want, "spec.ptq"), a);

  const ArtifactLayout L = parse_artifact_layout(want, "spec.ptq");
  CHECK(L.version_major == 1);
  CHECK(L.version_minor == 0);
  CHECK(L.stage == Stage::quantized);
  CHECK(L.file_bytes == want.size());
  CHECK(L.metadata_bytes == f.metadata.size());
  CHECK(L.sections[0].file_offset % 64 == 0);
  CHECK(L.sections[0].file_offset >= L.header_bytes);
  CHECK(L.sections[0].file_offset - L.header_bytes < 64);
  CHECK(L.sections[1].file_offset % 64 == 0);
  CHECK(L.tensors[2].offset == 64);
  CHECK(L.tensors[1].section == 1);
}

// ---------------------------------------------------------------------------------------------------------------
// API helpers

TEST_CASE("dtype sizes and names", "[artifact][api]") {
  const std::vector<std::pair<std::string, size_t>> want = {{"f32", 4}, {"f16", 2}, {"bf16", 2}, {"f64", 8},
                                                            {"i8", 1},  {"u8", 1},  {"i16", 2},  {"u16", 2},
                                                            {"i32", 4}, {"u32", 4}, {"i64", 8},  {"u64", 8}};
  for (size_t i = 0; i < kAllDTypes.size(); ++i) {
    CHECK(dtype_name(kAllDTypes[i]) == want[i].first);
    CHECK(dtype_size(kAllDTypes[i]) == want[i].second);
    CHECK(static_cast<size_t>(kAllDTypes[i]) == i);
  }
  CHECK(dtype_size(static_cast<DType>(200)) == 0);
  CHECK(stage_name(Stage::checkpoint) == "checkpoint");
  CHECK(stage_name(Stage::quantized) == "quantized");
  CHECK(stage_name(Stage::packed) == "packed");
}

TEST_CASE("numel is the product of the shape, 1 for a scalar, -1 when invalid", "[artifact][api]") {
  TensorRecord t;
  CHECK(t.numel() == 1);
  t.shape = {3, 4, 5};
  CHECK(t.numel() == 60);
  t.shape = {3, 0, 5};
  CHECK(t.numel() == 0);
  t.shape = {-1, 2};
  CHECK(t.numel() == -1);
  t.shape = {1ll << 40, 1ll << 40};
  CHECK(t.numel() == -1);
}

TEST_CASE("find returns null for a missing tensor and at names it", "[artifact][api]") {
  Artifact a;
  a.tensors.push_back({"w", {1}, DType::u8, "", 0, "main", {7}});
  CHECK(a.find("w") == &a.tensors[0]);
  CHECK(a.find("nope") == nullptr);
  CHECK(a.at("w").data == std::vector<uint8_t>{7});
  CHECK_THROWS_WITH(a.at("nope"), Contains("no tensor 'nope'"));
}

// ---------------------------------------------------------------------------------------------------------------
// The writer refuses bad input before touching the disk

TEST_CASE("the writer refuses invalid artifacts with a message naming the tensor", "[artifact][writer]") {
  TempDir dir;
  const std::string path = dir / "bad.ptc";
  const auto refused = [&](const Artifact& a, const std::string& phrase, const WriteOptions& opt = {}) {
    CHECK_THROWS_WITH(write_artifact(path, a, opt), Contains(path + ": cannot write artifact: ") && Contains(phrase));
    CHECK(dir.entries().empty());
  };
  const TensorRecord ok{"w", {2}, DType::f32, "", 0, "main", std::vector<uint8_t>(8)};
  Artifact a;
  a.tensors = {ok, ok};
  refused(a, "duplicate tensor name 'w'");
  a.tensors = {ok};
  a.tensors[0].data.resize(7);
  refused(a, "tensor 'w': data has 7 bytes but shape [2] x f32 needs 2 x 4");
  a.tensors = {ok};
  a.tensors[0].shape = {-2};
  refused(a, "negative dimension");
  a.tensors = {ok};
  a.tensors[0].shape = std::vector<int64_t>(9, 1);
  refused(a, "rank 9");
  a.tensors = {ok};
  a.tensors[0].name = "";
  refused(a, "empty name");
  a.tensors = {ok};
  a.tensors[0].section = "";
  refused(a, "section name: empty name");
  a.tensors = {ok};
  a.tensors[0].dtype = static_cast<DType>(77);
  refused(a, "unknown dtype 77");
  a.tensors = {ok};
  a.metadata = nlohmann::json::array();
  refused(a, "metadata must be a JSON object");
  a.metadata = {{"tokenizer_sha256", "ABC"}};
  refused(a, "tokenizer_sha256");
  a.metadata = {{"bad", "\xff"}};
  refused(a, "metadata cannot be written as JSON");
  a.metadata = {{"lr", std::numeric_limits<double>::infinity()}};
  refused(a, "metadata holds a number that is not finite");
  nlohmann::json deep = 1;
  for (int i = 0; i < 65; ++i) deep = nlohmann::json::array({deep});
  a.metadata = {{"deep", deep}};
  refused(a, "metadata nested deeper than 64 levels");
  a.metadata = nlohmann::json::object();
  a.stage = static_cast<Stage>(9);
  refused(a, "unknown stage 9");
  a.stage = Stage::checkpoint;
  WriteOptions opt;
  opt.sections = {{"main", {}, 0, 64}, {"main", {}, 0, 64}};
  refused(a, "section options for 'main' are given twice", opt);
  opt.sections = {{"main", {}, 0, 48}};
  refused(a, "alignment 48 is not a power of two", opt);
  opt.sections = {{"main", {Codec::zstd, 3, 30}, 0, 64}};
  refused(a, "zstd window_log 30 exceeds the artifact limit of 27", opt);
  opt.sections = {{"main", {Codec::zlib, 42, 0}, 0, 64}};
  refused(a, "section 'main': zlib level 42", opt);
}

// ---------------------------------------------------------------------------------------------------------------
// Files and atomic writes

TEST_CASE("write_artifact writes the file, returns its size, and read_artifact reads it back", "[artifact][file]") {
  TempDir dir;
  std::mt19937_64 rng(99);
  WriteOptions opt;
  Artifact a = random_artifact(rng, opt);
  a.tensors.push_back(make_tensor(rng, "extra", DType::bf16, {3, 3}, "main"));
  const std::string path = dir / "model.ptc";
  const uint64_t n = write_artifact(path, a, opt);
  CHECK(n == std::filesystem::file_size(path));
  CHECK(dir.entries() == std::vector<std::string>{"model.ptc"});
  check_same(read_artifact(path), a);
  ArtifactLayout L;
  check_same(read_artifact(path, L), a);
  CHECK(L.file_bytes == n);
}

TEST_CASE("write_artifact replaces an existing file", "[artifact][file]") {
  TempDir dir;
  const std::string path = dir / "model.ptc";
  Artifact a;
  a.tensors.push_back({"w", {1}, DType::u8, "", 0, "main", {1}});
  write_artifact(path, a);
  a.tensors[0].data = {2};
  write_artifact(path, a);
  CHECK(read_artifact(path).at("w").data == std::vector<uint8_t>{2});
  CHECK(dir.entries() == std::vector<std::string>{"model.ptc"});
}

TEST_CASE("a failed rename leaves no temp file and no target", "[artifact][atomic]") {
  TempDir dir;
  const std::string path = dir / "model.ptc";
  std::filesystem::create_directory(path);  // the target is a directory: rename() fails after the write
  Artifact a;
  a.tensors.push_back({"w", {4}, DType::f32, "", 0, "main", std::vector<uint8_t>(16, 1)});
  CHECK_THROWS_WITH(write_artifact(path, a), Contains(path + ": cannot write artifact: rename of "));
  CHECK(dir.entries() == std::vector<std::string>{"model.ptc"});
  CHECK(std::filesystem::is_directory(path));
  CHECK(std::filesystem::is_empty(path));
}

TEST_CASE("a write that runs out of space leaves no temp file and keeps the old target", "[artifact][atomic]") {
  TempDir dir;
  const std::string path = dir / "model.ptc";
  Artifact old;
  old.tensors.push_back({"w", {1}, DType::u8, "", 0, "main", {42}});
  write_artifact(path, old);
  const auto before = std::filesystem::file_size(path);

  std::mt19937_64 rng(1);
  Artifact big;
  big.tensors.push_back(make_tensor(rng, "big", DType::f32, {4096}, "main"));
  // Simulate a full disk: file size limit of 4 KiB, SIGXFSZ ignored so write() fails with EFBIG.
  struct rlimit saved {};
  REQUIRE(getrlimit(RLIMIT_FSIZE, &saved) == 0);
  auto* old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
  std::string message;
  try {
    write_artifact(path, big);
  } catch (const Error& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  CHECK_THAT(message, Contains(path + ": cannot write artifact: write to ") && Contains("File too large"));
  CHECK(dir.entries() == std::vector<std::string>{"model.ptc"});
  CHECK(std::filesystem::file_size(path) == before);
  CHECK(read_artifact(path).at("w").data == std::vector<uint8_t>{42});
}

TEST_CASE("writing into a missing directory fails without creating anything", "[artifact][atomic]") {
  TempDir dir;
  const std::string path = dir / "no/such/dir/model.ptc";
  CHECK_THROWS_WITH(write_artifact(path, Artifact{}), Contains("cannot create temp file") && Contains("No such file"));
  CHECK(dir.entries().empty());
}

TEST_CASE("writing into an unwritable directory fails without creating anything", "[artifact][atomic]") {
  if (::geteuid() == 0) {
    WARN("running as root: directory permissions are not enforced, skipped");
    return;
  }
  TempDir dir;
  std::filesystem::create_directory(dir / "ro");
  std::filesystem::permissions(dir / "ro", std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
  CHECK_THROWS_WITH(write_artifact(dir / "ro/model.ptc", Artifact{}), Contains("Permission denied"));
  std::filesystem::permissions(dir / "ro", std::filesystem::perms::owner_all);
  CHECK(std::filesystem::is_empty(dir / "ro"));
}

TEST_CASE("reading a missing file or a directory gives a one-line error naming it", "[artifact][file]") {
  TempDir dir;
  CHECK_THROWS_WITH(read_artifact(dir / "missing.ptc"), Contains("missing.ptc: cannot open: No such file"));
  CHECK_THROWS_WITH(read_artifact(dir.path.string()), Contains(": is a directory, not an artifact"));
  std::ofstream(dir / "empty.ptc").close();
  CHECK_THROWS_WITH(read_artifact(dir / "empty.ptc"), Contains("empty.ptc: empty file"));
}

// The golden v1.0 artifact, testdata/golden_v1.ptc: every future reader must load it and see exactly these
// values. The hidden test at the bottom regenerates it (and the fuzz seed corpus); see testdata/README.md.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "formats/artifact.h"
#include "formats/error.h"
#include "tests/formats/test_artifact_util.h"

using namespace ptool;
using namespace ptool::testing;

namespace {

const std::string kGolden = PTOOL_SOURCE_DIR "/testdata/golden_v1.ptc";

template <class T>
std::vector<uint8_t> le_bytes(const std::vector<T>& values) {
  std::vector<uint8_t> out;
  for (T v : values) {
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    le(out, bits, sizeof(T));
  }
  return out;
}

template <class T>
std::vector<T> values_of(const TensorRecord& t) {
  REQUIRE(t.data.size() % sizeof(T) == 0);
  std::vector<T> out(t.data.size() / sizeof(T));
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t bits = 0;
    for (size_t k = 0; k < sizeof(T); ++k) bits |= static_cast<uint64_t>(t.data[i * sizeof(T) + k]) << (8 * k);
    std::memcpy(&out[i], &bits, sizeof(T));
  }
  return out;
}

TensorRecord tensor(std::string name, DType d, std::vector<int64_t> shape, std::string section, std::vector<uint8_t> data,
                    std::string scheme = "", uint32_t scheme_version = 0) {
  return {std::move(name), std::move(shape), d, std::move(scheme), scheme_version, std::move(section), std::move(data)};
}

// The content of the golden file. Changing this function does not change the file: the test below then fails,
// which is the point. Add a golden_v1_1.ptc (or v2) instead.
Artifact golden_artifact() {
  Artifact a;
  a.stage = Stage::quantized;
  a.metadata = nlohmann::json::parse(R"({
    "config": {"vocab_size": 16, "model_dim": 8, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
               "mlp_mult": 2, "tie_embeddings": true, "rope_base": 10000.0, "logit_softcap": 30.0},
    "tokenizer_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "provenance": {"ptool_version": "0.1.0", "command": "test_formats [regenerate]", "seed": 1337,
                   "data_shards": ["fineweb_train_000000.bin"],
                   "quantizer": {"int8_per_row": {"clip_percentile": 99.99984}}, "note": "caf\u00e9 \u2713"}})");
  std::vector<float> emb(128);
  for (int i = 0; i < 128; ++i) emb[i] = static_cast<float>(i - 64) * 0.25f;
  std::vector<uint16_t> f16(8), bf16(8);
  for (int i = 0; i < 8; ++i) {
    f16[i] = static_cast<uint16_t>(0x3C00 + i);
    bf16[i] = static_cast<uint16_t>(0x3F80 + i);
  }
  std::vector<uint8_t> q8(160), q6(176);
  for (int i = 0; i < 160; ++i) q8[i] = static_cast<uint8_t>((i * 7 + 3) & 0xFF);
  for (int i = 0; i < 176; ++i) q6[i] = static_cast<uint8_t>((i * 37 + 11) & 0xFF);

  // main: codec none
  a.tensors.push_back(tensor("tok_emb.weight", DType::f32, {16, 8}, "main", le_bytes(emb)));
  a.tensors.push_back(tensor("step", DType::i64, {}, "main", le_bytes<int64_t>({1234567890123})));
  a.tensors.push_back(tensor("empty", DType::f32, {0, 8}, "main", {}));
  // fp16: zlib, shuffle 2, alignment 16
  a.tensors.push_back(tensor("blocks.0.attn_scale", DType::f16, {8}, "fp16", le_bytes(f16)));
  a.tensors.push_back(tensor("blocks.0.mlp_scale", DType::bf16, {8}, "fp16", le_bytes(bf16)));
  a.tensors.push_back(tensor("blocks.0.resid_mix", DType::f64, {2, 2}, "fp16", le_bytes<double>({1.0, 0.5, -0.25, 2.0})));
  // q: zstd, alignment 1; scheme tensors
  a.tensors.push_back(tensor("blocks.0.attn.qkv.weight", DType::f32, {16, 8}, "q", q8, "int8_per_row", 1));
  a.tensors.push_back(tensor("blocks.0.mlp.fc.weight", DType::bf16, {16, 12}, "q", q6, "int6_packed", 2));
  // misc: brotli, shuffle 4
  a.tensors.push_back(tensor("i8s", DType::i8, {4}, "misc", le_bytes<int8_t>({-128, -1, 0, 127})));
  a.tensors.push_back(tensor("u8s", DType::u8, {3}, "misc", le_bytes<uint8_t>({0, 128, 255})));
  a.tensors.push_back(tensor("i16s", DType::i16, {5}, "misc", le_bytes<int16_t>({-32768, -1, 0, 1, 32767})));
  a.tensors.push_back(tensor("u16s", DType::u16, {3}, "misc", le_bytes<uint16_t>({0, 1, 65535})));
  a.tensors.push_back(tensor("i32s", DType::i32, {2, 2}, "misc",
                             le_bytes<int32_t>({std::numeric_limits<int32_t>::min(), -7, 7, std::numeric_limits<int32_t>::max()})));
  a.tensors.push_back(tensor("u32s", DType::u32, {3}, "misc", le_bytes<uint32_t>({0, 1, 4294967295u})));
  a.tensors.push_back(tensor("i64s", DType::i64, {2}, "misc",
                             le_bytes<int64_t>({std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()})));
  a.tensors.push_back(tensor("u64s", DType::u64, {2}, "misc", le_bytes<uint64_t>({0, std::numeric_limits<uint64_t>::max()})));
  return a;
}

WriteOptions golden_options() {
  WriteOptions o;
  o.sections = {{"main", {Codec::none, -1, 0}, 0, 64},
                {"fp16", {Codec::zlib, 9, 0}, 2, 16},
                {"q", {Codec::zstd, 19, 0}, 0, 1},
                {"misc", {Codec::brotli, 11, 0}, 4, 8}};
  return o;
}

std::vector<uint8_t> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("the golden v1.0 file loads with every value as written", "[artifact][golden]") {
  ArtifactLayout L;
  const Artifact a = read_artifact(kGolden, L);

  // Header.
  CHECK(L.version_major == 1);
  CHECK(L.version_minor == 0);
  CHECK(a.stage == Stage::quantized);
  CHECK(L.file_bytes < 10000);
  CHECK(L.file_bytes == std::filesystem::file_size(kGolden));

  // Metadata, value by value.
  CHECK(a.metadata["config"]["vocab_size"] == 16);
  CHECK(a.metadata["config"]["model_dim"] == 8);
  CHECK(a.metadata["config"]["tie_embeddings"] == true);
  CHECK(a.metadata["config"]["rope_base"] == 10000.0);
  CHECK(a.metadata["config"]["logit_softcap"] == 30.0);
  CHECK(a.metadata["tokenizer_sha256"] == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
  CHECK(a.metadata["provenance"]["seed"] == 1337);
  CHECK(a.metadata["provenance"]["data_shards"][0] == "fineweb_train_000000.bin");
  CHECK(a.metadata["provenance"]["quantizer"]["int8_per_row"]["clip_percentile"] == 99.99984);
  CHECK(a.metadata["provenance"]["note"] == "caf\u00e9 \u2713");

  // Sections: one per codec.
  REQUIRE(L.sections.size() == 4);
  CHECK(L.sections[0].name == "main");
  CHECK(L.sections[0].codec == Codec::none);
  CHECK(L.sections[1].name == "fp16");
  CHECK(L.sections[1].codec == Codec::zlib);
  CHECK(L.sections[1].shuffle_stride == 2);
  CHECK(L.sections[1].alignment == 16);
  CHECK(L.sections[2].name == "q");
  CHECK(L.sections[2].codec == Codec::zstd);
  CHECK(L.sections[2].alignment == 1);
  CHECK(L.sections[3].name == "misc");
  CHECK(L.sections[3].codec == Codec::brotli);
  CHECK(L.sections[3].shuffle_stride == 4);
  CHECK(L.sections[0].raw_bytes == 576);  // tok_emb [0, 512), step [512, 520), empty at 576 (64-aligned)
  for (const auto& s : L.sections) CHECK(s.file_offset % 64 == 0);

  // Tensor table.
  REQUIRE(a.tensors.size() == 16);
  const std::vector<std::string> names = {"tok_emb.weight", "step", "empty", "blocks.0.attn_scale", "blocks.0.mlp_scale",
                                          "blocks.0.resid_mix", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc.weight",
                                          "i8s", "u8s", "i16s", "u16s", "i32s", "u32s", "i64s", "u64s"};
  for (size_t i = 0; i < names.size(); ++i) CHECK(a.tensors[i].name == names[i]);

  const auto& emb = a.at("tok_emb.weight");
  CHECK(emb.dtype == DType::f32);
  CHECK(emb.shape == std::vector<int64_t>{16, 8});
  CHECK(emb.section == "main");
  CHECK(emb.scheme.empty());
  const auto e = values_of<float>(emb);
  REQUIRE(e.size() == 128);
  for (int i = 0; i < 128; ++i) CHECK(e[i] == static_cast<float>(i - 64) * 0.25f);
  CHECK(e.front() == -16.0f);
  CHECK(e.back() == 15.75f);

  CHECK(a.at("step").shape.empty());
  CHECK(values_of<int64_t>(a.at("step")) == std::vector<int64_t>{1234567890123});
  CHECK(a.at("empty").shape == std::vector<int64_t>{0, 8});
  CHECK(a.at("empty").data.empty());

  const auto h = values_of<uint16_t>(a.at("blocks.0.attn_scale"));
  const auto b = values_of<uint16_t>(a.at("blocks.0.mlp_scale"));
  for (int i = 0; i < 8; ++i) {
    CHECK(h[i] == 0x3C00 + i);
    CHECK(b[i] == 0x3F80 + i);
  }
  CHECK(a.at("blocks.0.attn_scale").dtype == DType::f16);
  CHECK(a.at("blocks.0.mlp_scale").dtype == DType::bf16);
  CHECK(a.at("blocks.0.attn_scale").section == "fp16");
  CHECK(values_of<double>(a.at("blocks.0.resid_mix")) == std::vector<double>{1.0, 0.5, -0.25, 2.0});

  const auto& q8 = a.at("blocks.0.attn.qkv.weight");
  CHECK(q8.scheme == "int8_per_row");
  CHECK(q8.scheme_version == 1);
  CHECK(q8.dtype == DType::f32);
  CHECK(q8.shape == std::vector<int64_t>{16, 8});
  CHECK(q8.section == "q");
  REQUIRE(q8.data.size() == 160);
  for (int i = 0; i < 160; ++i) CHECK(q8.data[i] == static_cast<uint8_t>((i * 7 + 3) & 0xFF));
  const auto& q6 = a.at("blocks.0.mlp.fc.weight");
  CHECK(q6.scheme == "int6_packed");
  CHECK(q6.scheme_version == 2);
  CHECK(q6.dtype == DType::bf16);
  CHECK(q6.shape == std::vector<int64_t>{16, 12});
  REQUIRE(q6.data.size() == 176);
  for (int i = 0; i < 176; ++i) CHECK(q6.data[i] == static_cast<uint8_t>((i * 37 + 11) & 0xFF));

  CHECK(values_of<int8_t>(a.at("i8s")) == std::vector<int8_t>{-128, -1, 0, 127});
  CHECK(values_of<uint8_t>(a.at("u8s")) == std::vector<uint8_t>{0, 128, 255});
  CHECK(values_of<int16_t>(a.at("i16s")) == std::vector<int16_t>{-32768, -1, 0, 1, 32767});
  CHECK(values_of<uint16_t>(a.at("u16s")) == std::vector<uint16_t>{0, 1, 65535});
  CHECK(values_of<int32_t>(a.at("i32s")) ==
        std::vector<int32_t>{std::numeric_limits<int32_t>::min(), -7, 7, std::numeric_limits<int32_t>::max()});
  CHECK(values_of<uint32_t>(a.at("u32s")) == std::vector<uint32_t>{0, 1, 4294967295u});
  CHECK(values_of<int64_t>(a.at("i64s")) ==
        std::vector<int64_t>{std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()});
  CHECK(values_of<uint64_t>(a.at("u64s")) == std::vector<uint64_t>{0, std::numeric_limits<uint64_t>::max()});
  for (const auto& t : a.tensors)
    if (t.section == "misc") CHECK(t.scheme.empty());

  // And as a whole: exactly the artifact the generator describes.
  const Artifact want = golden_artifact();
  CHECK(a.metadata == want.metadata);
  for (size_t i = 0; i < want.tensors.size(); ++i) CHECK(a.tensors[i] == want.tensors[i]);
}

TEST_CASE("the golden file re-written by this writer has the same layout and checksums", "[artifact][golden]") {
  // The compressed bytes depend on the codec libraries' versions; the layout rules do not.
  const std::vector<uint8_t> bytes = file_bytes(kGolden);
  const ArtifactLayout L = parse_artifact_layout(bytes, kGolden);
  const Artifact a = parse_artifact(bytes, kGolden);
  const ArtifactLayout L2 = parse_artifact_layout(serialize_artifact(a, golden_options()), "rewritten");
  CHECK(L2.header_bytes == L.header_bytes);
  REQUIRE(L2.tensors.size() == L.tensors.size());
  for (size_t i = 0; i < L.tensors.size(); ++i) {
    CHECK(L2.tensors[i].offset == L.tensors[i].offset);
    CHECK(L2.tensors[i].checksum == L.tensors[i].checksum);
  }
  for (size_t i = 0; i < L.sections.size(); ++i) CHECK(L2.sections[i].raw_bytes == L.sections[i].raw_bytes);
}

TEST_CASE("regenerate golden_v1.ptc and the fuzz seed corpus", "[.regenerate]") {
  const std::string corpus = PTOOL_SOURCE_DIR "/fuzz/corpus_artifact";
  std::filesystem::create_directories(corpus);
  const uint64_t n = write_artifact(kGolden, golden_artifact(), golden_options());
  WARN("wrote " << kGolden << " (" << n << " bytes)");
  REQUIRE(n < 10000);
  std::filesystem::copy_file(kGolden, corpus + "/golden_v1.ptc", std::filesystem::copy_options::overwrite_existing);

  write_artifact(corpus + "/empty.ptc", Artifact{});
  Artifact small;
  small.stage = Stage::packed;
  small.metadata = {{"config", {{"vocab_size", 4}}}};
  small.tensors.push_back({"w", {2, 2}, DType::f16, "", 0, "main", {0, 60, 0, 188, 0, 0, 0, 56}});
  small.tensors.push_back({"q", {3}, DType::f32, "int8_per_row", 1, "q", {1, 2, 3, 0, 0, 128}});
  for (Codec c : {Codec::zlib, Codec::zstd, Codec::brotli}) {
    WriteOptions o;
    o.default_codec = {c, -1, 0};
    o.sections.push_back({"q", {c, -1, 0}, 2, 4});
    write_artifact(corpus + "/small_" + std::string(codec_name(c)) + ".ptz", small, o);
  }
  Artifact coded = small;
  std::vector<uint8_t> codes_and_scales{1, 255, 0, 3, 2, 0, 0, 253, 0, 1, 1, 0, 0, 60, 0, 56};
  coded.tensors.push_back({"m", {3, 4}, DType::i8, "int6_per_row", 1, "codes", codes_and_scales});
  WriteOptions arith;
  arith.sections.push_back({"codes", {Codec::arith, -1, 0}, 0, 1});
  write_artifact(corpus + "/small_arith.ptz", coded, arith);
  RawFile future = base_file();
  future.minor = 3;
  future.tensors[0].extra = {1, 2};
  future.header_extension = {0xEE};
  const auto bytes = future.encode();
  std::ofstream(corpus + "/minor_future.ptc", std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

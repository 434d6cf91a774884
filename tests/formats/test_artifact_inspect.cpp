// The summary behind `ptool inspect`: header, metadata, tensor table, byte breakdown, checksums.
#include <catch2/catch.hpp>

#include "formats/artifact_inspect.h"
#include "formats/error.h"
#include "tests/formats/test_artifact_util.h"

using namespace ptool;
using namespace ptool::testing;
using Catch::Matchers::Contains;

namespace {
const std::string kGolden = PTOOL_SOURCE_DIR "/testdata/golden_v1.ptc";
}

TEST_CASE("inspect summarises the golden file and counts every verified checksum", "[artifact][inspect]") {
  const auto s = inspect_artifact(kGolden);
  CHECK(s["version"] == "1.0");
  CHECK(s["stage"] == "quantized");
  CHECK(s["tensors"].size() == 16);
  CHECK(s["sections"].size() == 4);
  CHECK(s["checksums"]["verified"] == 1 + 4 + 16);
  CHECK(s["checksums"]["ok"] == true);
  CHECK(s["metadata"]["config"]["vocab_size"] == 16);
  CHECK(s["tensors"][0]["name"] == "tok_emb.weight");
  CHECK(s["tensors"][0]["shape"] == nlohmann::ordered_json::array({16, 8}));
  CHECK(s["tensors"][0]["bytes"] == 512);
  CHECK(s["tensors"][6]["scheme"] == "int8_per_row");
  CHECK(s["sections"][3]["codec"] == "brotli");

  // The byte breakdown adds up to the file size.
  const auto& b = s["bytes"];
  uint64_t stored = 0;
  for (const auto& x : s["sections"]) stored += x["stored_bytes"].get<uint64_t>();
  CHECK(b["stored"] == stored);
  CHECK(b["header"].get<uint64_t>() + b["padding"].get<uint64_t>() + stored == b["total"].get<uint64_t>());
  CHECK(b["total"] == s["file_bytes"]);
  CHECK(b["fits_budget"] == true);
}

TEST_CASE("inspect text shows header, tables, byte breakdown and the checksum verdict", "[artifact][inspect]") {
  const std::string text = format_summary_text(inspect_artifact(kGolden));
  CHECK_THAT(text, Contains("format    PTOOLART 1.0, stage quantized"));
  CHECK_THAT(text, Contains("tensors (16)"));
  CHECK_THAT(text, Contains("blocks.0.attn.qkv.weight"));
  CHECK_THAT(text, Contains("int8_per_row v1"));
  CHECK_THAT(text, Contains("sections (4)"));
  CHECK_THAT(text, Contains("section misc"));
  CHECK_THAT(text, Contains("16,000,000-byte budget"));
  CHECK_THAT(text, Contains("checksums: all 21 checksums OK (1 header, 4 sections, 16 tensors)"));
  CHECK_THAT(text, Contains("\"tokenizer_sha256\""));
}

TEST_CASE("inspect JSON is one line that parses back to the summary", "[artifact][inspect]") {
  const auto s = inspect_artifact(kGolden);
  const std::string line = format_summary_json(s);
  CHECK(line.find('\n') == line.size() - 1);
  CHECK(nlohmann::ordered_json::parse(line) == s);
}

TEST_CASE("inspect reports an artifact over budget", "[artifact][inspect]") {
  const auto s = inspect_artifact(kGolden, 1000);
  CHECK(s["bytes"]["fits_budget"] == false);
  CHECK(s["bytes"]["headroom"].get<int64_t>() < 0);
  CHECK_THAT(format_summary_text(s), Contains("OVER by"));
}

TEST_CASE("inspect refuses a corrupt artifact with the reader's one-line error", "[artifact][inspect]") {
  TempDir dir;
  RawFile f = base_file();
  f.tensors[1].checksum ^= 1;
  const auto bytes = f.encode();
  const std::string path = dir / "bad.ptc";
  FILE* fp = std::fopen(path.c_str(), "wb");
  std::fwrite(bytes.data(), 1, bytes.size(), fp);
  std::fclose(fp);
  CHECK_THROWS_WITH(inspect_artifact(path), Contains(path + ": tensor checksum mismatch for tensor 'b'"));
}

// The corrupt-file matrix (ANCHORS.md §2.3 item 6): one hand-made file per reader error kind, each refused with
// a one-line message that names the file and says what is wrong, distinct from every other kind's message.
#include <catch2/catch.hpp>

#include <functional>
#include <string>
#include <vector>

#include "formats/artifact.h"
#include "formats/codec.h"
#include "formats/error.h"
#include "tests/formats/test_artifact_util.h"

using namespace ptool;
using namespace ptool::testing;
using Catch::Matchers::Contains;

namespace {

struct Case {
  std::string kind;
  std::vector<uint8_t> bytes;
  std::string phrase;  // the stable phrase of ARTIFACT.md §6 this case must produce
};

std::string message_of(const std::vector<uint8_t>& bytes) {
  try {
    parse_artifact(bytes, "corrupt.ptc");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A one-section file whose section uses `codec`: the base tensors, compressed.
RawFile coded_file(Codec codec) {
  RawFile f = base_file();
  f.sections[0].codec = static_cast<uint8_t>(codec);
  f.sections[0].stored = compress(f.sections[0].stored, {codec, -1, 0});
  return f;
}

std::vector<Case> corrupt_cases() {
  std::vector<Case> cases;
  const auto add = [&](std::string kind, std::vector<uint8_t> bytes, std::string phrase) {
    cases.push_back({std::move(kind), std::move(bytes), std::move(phrase)});
  };
  const auto edit = [&](std::string kind, const std::function<void(RawFile&)>& change, std::string phrase) {
    RawFile f = base_file();
    change(f);
    add(std::move(kind), f.encode(), std::move(phrase));
  };
  const std::vector<uint8_t> good = base_file().encode();
  const uint64_t H = good[16] | (good[17] << 8);

  // Not an artifact at all.
  add("empty file", {}, "empty file");
  add("git lfs pointer",
      bytes_of("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a21\nsize 15999872\n"), "Git LFS pointer");
  add("html page", bytes_of("<!DOCTYPE html>\n<html><head><title>404 Not Found</title>"), "HTML page");
  add("html page without doctype", bytes_of("\r\n  <HTML><body>rate limited</body></HTML>"), "HTML page");
  add("zip archive", bytes_of(std::string("PK\x03\x04\x14\x00\x00\x00", 8) + "archive/data.pkl"), "zip archive");
  {
    const std::string json = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
    std::vector<uint8_t> st;
    le(st, json.size(), 8);
    st.insert(st.end(), json.begin(), json.end());
    le(st, 0, 4);
    add("safetensors file", st, "safetensors file");
  }
  add("gguf file", bytes_of(std::string("GGUF\x03\x00\x00\x00", 8) + std::string(64, '\0')), "bad magic");
  add("short foreign file", bytes_of("hi\n"), "bad magic");

  // Truncation, at each level.
  add("magic cut short", {good.begin(), good.begin() + 5}, "truncated:");
  add("preamble cut short", {good.begin(), good.begin() + 40}, "truncated:");
  add("header cut short", {good.begin(), good.begin() + H - 5}, "truncated:");
  add("data cut short", {good.begin(), good.end() - 3}, "truncated:");

  // Preamble.
  edit("major version 2", [](RawFile& f) { f.major = 2; }, "unsupported major version 2.0");
  edit("major version 0", [](RawFile& f) { f.major = 0; f.minor = 9; }, "unsupported major version 0.9");
  edit("byte-swapped version", [](RawFile& f) { f.major = 0x0100; }, "byte-swapped");
  edit("header length below the preamble", [](RawFile& f) { f.header_bytes = 40; }, "smaller than the preamble");
  edit("header byte flipped after checksumming", [](RawFile& f) { f.after_checksum = [](auto& b) { b[66] ^= 0x20; }; },
       "header checksum mismatch");
  edit("header checksum field wrong", [](RawFile& f) { f.header_checksum = 0x1234; }, "header checksum mismatch");
  edit("trailing bytes", [](RawFile& f) { f.after_checksum = [](auto& b) { b.push_back(0); }; }, "trailing bytes");
  edit("stage 0", [](RawFile& f) { f.stage = 0; }, "unknown stage 0");
  edit("stage 4", [](RawFile& f) { f.stage = 4; }, "unknown stage 4");

  // Metadata.
  edit("metadata not JSON", [](RawFile& f) { f.metadata = R"({"config":)"; }, "not valid JSON");
  edit("metadata not UTF-8", [](RawFile& f) { f.metadata = "{\"a\":\"\xff\"}"; }, "not valid JSON");
  edit("metadata an array", [](RawFile& f) { f.metadata = "[1,2]"; }, "not a JSON object");
  edit("metadata too deep",
       [](RawFile& f) { f.metadata = "{\"x\":" + std::string(100, '[') + std::string(100, ']') + "}"; },
       "nested deeper");
  edit("metadata number out of range", [](RawFile& f) { f.metadata = R"({"lr":1e999})"; }, "not valid JSON");
  edit("metadata bad tokenizer hash", [](RawFile& f) { f.metadata = R"({"tokenizer_sha256":"abc"})"; },
       "tokenizer_sha256");
  edit("metadata longer than the header", [](RawFile& f) { f.metadata_bytes = 100000; }, "does not fit in the header");

  // Tables.
  edit("section count too large", [](RawFile& f) { f.section_count = 0xFFFFFFFFu; }, "section count 4294967295 cannot fit");
  edit("tensor count too large", [](RawFile& f) { f.tensor_count = 1000000; }, "cannot fit");
  edit("section record size wrong", [](RawFile& f) { f.sections[0].record_bytes = 50; }, "record size");
  edit("tensor record size wrong", [](RawFile& f) { f.tensors[1].record_bytes = 44; }, "record size");
  edit("record runs past the header", [H](RawFile& f) { f.header_bytes = H - 3; }, "runs past the end of the header");
  edit("extra header bytes in 1.0", [](RawFile& f) { f.header_extension = {0, 0, 0, 0}; }, "unexplained header bytes");
  edit("empty tensor name", [](RawFile& f) { f.tensors[1].name = ""; }, "empty name");
  edit("tensor name not UTF-8", [](RawFile& f) { f.tensors[1].name = "b\xc3"; }, "not valid UTF-8");
  edit("section name not UTF-8", [](RawFile& f) { f.sections[0].name = "\xed\xa0\x80"; }, "not valid UTF-8");
  edit("tensor name with NUL", [](RawFile& f) { f.tensors[1].name = std::string("b\0c", 3); }, "contains a NUL byte");
  edit("duplicate tensor name", [](RawFile& f) { f.tensors[1].name = "a"; }, "duplicate tensor name 'a'");
  edit("duplicate section name", [](RawFile& f) {
    RawSection s = f.sections[0];
    f.sections.push_back(s);
    f.tensors[1].section = 1;
    f.tensors[1].offset = 0;
  }, "duplicate section name 'main'");

  // Sections.
  edit("unknown codec", [](RawFile& f) { f.sections[0].codec = 9; }, "unknown codec 9");
  edit("alignment not a power of two", [](RawFile& f) { f.sections[0].alignment = 48; }, "not a power of two");
  edit("alignment too large", [](RawFile& f) { f.sections[0].alignment = 8192; }, "not a power of two");
  edit("section offset wrong", [](RawFile& f) { f.sections[0].file_offset = 1024; }, "section offset 1024");
  edit("section past the end of the file", [](RawFile& f) { f.sections[0].stored_bytes = 1000; },
       "past the end of the file");
  edit("bytes after the last section", [](RawFile& f) { f.trailing = {0, 0, 0}; }, "unexplained bytes after");
  edit("bytes after a header with no sections", [](RawFile& f) {
    f.sections.clear();
    f.tensors.clear();
    f.trailing = {7};
  }, "unexplained bytes after");
  edit("non-zero padding before a section", [](RawFile& f) { f.padding_byte = 0xAA; }, "non-zero padding at file offset");
  edit("raw length differs from stored for codec none", [](RawFile& f) { f.sections[0].raw_bytes = 81; }, "stored length");
  edit("raw length 0 with stored bytes", [](RawFile& f) {
    f.sections[0].codec = 1;
    f.sections[0].raw_bytes = 0;
  }, "stored length");
  edit("section holding no tensors", [](RawFile& f) {
    RawSection s;
    s.name = "unused";
    s.stored = {1, 2};
    s.raw_bytes = 2;
    f.sections.push_back(s);
  }, "holds no tensors");

  // Tensors.
  edit("unknown dtype", [](RawFile& f) { f.tensors[0].dtype = 12; }, "unknown dtype 12");
  edit("rank 9", [](RawFile& f) { f.tensors[0].dims = {1, 1, 1, 1, 1, 1, 2, 3, 1}; }, "rank 9");
  edit("element count overflows", [](RawFile& f) { f.tensors[0].dims = {1ull << 32, 1ull << 32}; }, "overflows");
  edit("dimension overflows int64", [](RawFile& f) { f.tensors[0].dims = {1ull << 63}; }, "overflows");
  edit("section index out of range", [](RawFile& f) { f.tensors[1].section = 3; }, "section index 3");
  edit("length inconsistent with shape", [](RawFile& f) { f.tensors[0].length = 20; }, "does not match its shape");
  edit("misaligned tensor", [](RawFile& f) { f.tensors[1].offset = 32; }, "misaligned");
  edit("hole between tensors", [](RawFile& f) { f.tensors[1].offset = 128; }, "leaves a hole");
  edit("overlapping tensors", [](RawFile& f) {
    f.sections[0].alignment = 8;
    f.tensors[1].offset = 16;
  }, "overlaps the previous tensor");
  edit("tensor past the end of its section", [](RawFile& f) {
    f.tensors[1].dims = {8};
    f.tensors[1].length = 32;
  }, "past the end of section");
  edit("raw bytes after the last tensor", [](RawFile& f) {
    f.sections[0].stored.resize(96, 0);
    f.sections[0].raw_bytes = 96;
  }, "after its last tensor");

  // Data.
  edit("section checksum wrong", [](RawFile& f) { f.sections[0].checksum = 1; }, "section checksum mismatch");
  edit("stored byte flipped", [](RawFile& f) {
    f.after_checksum = [](auto& b) { b.back() ^= 0x01; };
  }, "section checksum mismatch");
  edit("non-zero padding between tensors", [](RawFile& f) { f.sections[0].stored[30] = 7; }, "non-zero padding in section");
  edit("tensor checksum wrong", [](RawFile& f) { f.tensors[1].checksum ^= 1; }, "tensor checksum mismatch for tensor 'b'");
  edit("tensor byte changed", [](RawFile& f) { f.sections[0].stored[70] ^= 0xFF; }, "tensor checksum mismatch for tensor 'b'");
  for (Codec c : {Codec::zlib, Codec::zstd, Codec::brotli}) {
    const std::string name(codec_name(c));
    {
      RawFile f = coded_file(c);
      f.sections[0].stored = iota_bytes(20, 0xC0);
      add(name + " stream that is garbage", f.encode(), "cannot decode");
    }
    {
      RawFile f = coded_file(c);
      f.sections[0].stored.resize(f.sections[0].stored.size() - 4);
      add(name + " stream cut short", f.encode(), "cannot decode");
    }
    {
      // Declares 2^40 raw bytes (a decompression bomb by declaration): refused before anything is allocated.
      RawFile f = coded_file(c);
      f.sections[0].raw_bytes = 1ull << 40;
      f.tensors[1].scheme = "blob";
      f.tensors[1].length = (1ull << 40) - 64;
      add(name + " stream shorter than declared", f.encode(), "cannot decode");
    }
    {
      RawFile f = coded_file(c);
      f.sections[0].alignment = 8;
      f.sections[0].raw_bytes = 40;
      f.tensors[1].offset = 24;
      add(name + " stream longer than declared", f.encode(), "cannot decode");
    }
  }
  return cases;
}

}  // namespace

TEST_CASE("the base file of the corrupt matrix is valid", "[artifact][corrupt]") {
  const Artifact a = parse_artifact(base_file().encode(), "base.ptc");
  REQUIRE(a.tensors.size() == 2);
  CHECK(a.at("a").data == iota_bytes(24, 1));
  CHECK(a.at("b").data == iota_bytes(16, 101));
  for (Codec c : {Codec::zlib, Codec::zstd, Codec::brotli})
    CHECK(parse_artifact(coded_file(c).encode(), "coded.ptc").at("b").data == iota_bytes(16, 101));
}

TEST_CASE("each corrupt file is refused with a one-line message of its own kind naming the file",
          "[artifact][corrupt]") {
  for (const Case& c : corrupt_cases()) {
    DYNAMIC_SECTION(c.kind) {
      CHECK_THROWS_WITH(parse_artifact(c.bytes, "corrupt.ptc"), Contains("corrupt.ptc: ") && Contains(c.phrase));
      const std::string m = message_of(c.bytes);
      CHECK(m.find('\n') == std::string::npos);
      CHECK(m.rfind("corrupt.ptc: ", 0) == 0);
    }
  }
}

TEST_CASE("error messages of different kinds are distinct", "[artifact][corrupt]") {
  const auto cases = corrupt_cases();
  std::vector<std::string> messages;
  for (const Case& c : cases) messages.push_back(message_of(c.bytes));
  for (size_t i = 0; i < cases.size(); ++i)
    for (size_t j = 0; j < cases.size(); ++j) {
      if (cases[i].phrase == cases[j].phrase || cases[i].phrase.find(cases[j].phrase) != std::string::npos ||
          cases[j].phrase.find(cases[i].phrase) != std::string::npos)
        continue;
      INFO(cases[i].kind << ": " << messages[i]);
      INFO("must not contain the phrase of " << cases[j].kind << ": " << cases[j].phrase);
      CHECK(messages[i].find(cases[j].phrase) == std::string::npos);
    }
}

TEST_CASE("every truncation of a valid file is reported as truncated", "[artifact][corrupt]") {
  RawFile f = base_file();
  f.sections[0].codec = 2;
  f.sections[0].stored = compress(f.sections[0].stored, {Codec::zstd, 3, 0});
  const std::vector<uint8_t> good = f.encode();
  REQUIRE_NOTHROW(parse_artifact(good, "t.ptc"));
  for (size_t n = 1; n < good.size(); ++n) {
    const std::vector<uint8_t> cut(good.begin(), good.begin() + n);
    INFO("length " << n);
    CHECK_THROWS_WITH(parse_artifact(cut, "t.ptc"), Contains("t.ptc: truncated:"));
  }
}

TEST_CASE("every single-bit flip of a valid file is detected", "[artifact][corrupt]") {
  // Bits of the header are covered by the header checksum, bits of the data by the section checksum.
  RawFile f = base_file();
  const std::vector<uint8_t> good = f.encode();
  for (size_t i = 0; i < good.size(); ++i)
    for (int bit : {0, 7}) {
      std::vector<uint8_t> bad = good;
      bad[i] ^= static_cast<uint8_t>(1 << bit);
      INFO("byte " << i << " bit " << bit);
      CHECK_THROWS_AS(parse_artifact(bad, "flip.ptc"), Error);
    }
}

TEST_CASE("a tensor checksum error names the file, the tensor, the section and the byte range", "[artifact][corrupt]") {
  RawFile f = base_file();
  f.tensors[1].checksum = 42;
  CHECK_THROWS_WITH(parse_artifact(f.encode(), "model.ptq"),
                    Contains("model.ptq: tensor checksum mismatch for tensor 'b'") &&
                        Contains("stored 0x000000000000002a") && Contains("section 'main', raw bytes [64, 80)"));
}

TEST_CASE("a section past the end of the file names the section and the byte range", "[artifact][corrupt]") {
  RawFile f = base_file();
  f.sections[0].stored_bytes = 1000;
  CHECK_THROWS_WITH(parse_artifact(f.encode(), "x.ptz"),
                    Contains("x.ptz: section 'main' (#0) needs file bytes [") && Contains("+1000) but the file has"));
}

TEST_CASE("a truncated data area says how many bytes were declared and found", "[artifact][corrupt]") {
  const std::vector<uint8_t> good = base_file().encode();
  const std::vector<uint8_t> cut(good.begin(), good.end() - 10);
  CHECK_THROWS_WITH(parse_artifact(cut, "x.ptc"),
                    Contains("truncated: the header declares " + std::to_string(good.size()) + " bytes but the file has " +
                             std::to_string(cut.size())));
}

TEST_CASE("a codec failure names the section, its codec and its file bytes", "[artifact][corrupt]") {
  RawFile f = coded_file(Codec::zstd);
  f.sections[0].stored = iota_bytes(20, 0xC0);
  CHECK_THROWS_WITH(parse_artifact(f.encode(), "x.ptz"),
                    Contains("x.ptz: cannot decode section 'main' (zstd, file bytes [") && Contains("zstd data is corrupt"));
}

TEST_CASE("an unsupported major version names both versions", "[artifact][corrupt]") {
  RawFile f = base_file();
  f.major = 3;
  f.minor = 2;
  CHECK_THROWS_WITH(parse_artifact(f.encode(), "new.ptc"),
                    Contains("unsupported major version 3.2 (this reader reads 1.x"));
}

TEST_CASE("names with control characters are escaped so the message stays on one line", "[artifact][corrupt]") {
  RawFile f = base_file();
  f.tensors[1].name = "a";
  f.tensors[0].name = "a\nb";
  f.tensors[1].name = "a\nb";
  const std::string m = message_of(f.encode());
  CHECK_THAT(m, Contains("duplicate tensor name 'a\\x0ab'"));
  CHECK(m.find('\n') == std::string::npos);
}

TEST_CASE("a newer minor version with extended records and header loads", "[artifact][version]") {
  RawFile f = base_file();
  f.minor = 7;
  f.sections[0].extra = {1, 2, 3, 4, 5};
  f.tensors[0].extra = {9, 9};
  f.header_extension = {0xEE, 0xEE, 0xEE};
  const Artifact a = parse_artifact(f.encode(), "future.ptc");
  REQUIRE(a.tensors.size() == 2);
  CHECK(a.at("a").data == iota_bytes(24, 1));
  CHECK(a.at("b").data == iota_bytes(16, 101));
  CHECK(a.metadata["config"]["vocab_size"] == 8);
}

TEST_CASE("a 1.0 file with extended records is refused", "[artifact][version]") {
  RawFile f = base_file();
  f.tensors[0].extra = {9, 9};
  CHECK_THROWS_WITH(parse_artifact(f.encode(), "x.ptc"), Contains("tensor record #0 at offset") && Contains("record size 63, expected 61"));
}

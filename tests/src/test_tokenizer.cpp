// Tokenizer wrapper and the BPB byte look-up tables (REFERENCE.md §2.1-§2.2), checked against byte counts
// computed independently from decoded text, on the challenge's two models and on the project's own fixture.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "formats/error.h"
#include "src/tokenizer.h"

namespace fs = std::filesystem;
using ptool::ByteLuts;
using ptool::Error;
using ptool::PieceType;
using ptool::Tokenizer;

namespace {

const std::string kSpace = "\xE2\x96\x81";  // "▁"

fs::path shared_data() { return fs::path(PTOOL_SOURCE_DIR) / ".." / "shared" / "data"; }
fs::path fixture_model() { return fs::path(PTOOL_SOURCE_DIR) / "testdata" / "tiny_sp.model"; }

// Loads a model or returns false after a WARN, so that tests skip cleanly when data is missing.
bool load_or_skip(const fs::path& p, std::unique_ptr<Tokenizer>& out) {
  if (!fs::exists(p)) {
    WARN("skipped: " << p.string() << " not found");
    return false;
  }
  out = std::make_unique<Tokenizer>(Tokenizer::load(p.string()));
  return true;
}

// The stream a shard would hold for these documents: BOS before each, ids concatenated.
std::vector<uint32_t> stream_of(const Tokenizer& tok, const std::vector<std::string>& docs) {
  std::vector<uint32_t> s;
  for (const auto& d : docs) {
    s.push_back(static_cast<uint32_t>(tok.bos_id()));
    const auto ids = tok.encode(d);
    s.insert(s.end(), ids.begin(), ids.end());
  }
  return s;
}

bool has_unk(const Tokenizer& tok, const std::string& doc) {
  for (uint32_t id : tok.encode(doc))
    if (static_cast<int32_t>(id) == tok.unk_id()) return true;
  return false;
}

// ASCII texts the sp1024 alphabet covers (it has no + = [ ] { } < > * _ @ # ~ ^ ` or backslash), already in
// normal form (single spaces, no leading/trailing whitespace, NFKC-stable), so their UTF-8 length is the
// byte count the metric must report.
const std::vector<std::string> kAsciiDocs = {
    "In the beginning God created the heaven and the earth.",
    "Hello world",
    "The quick brown fox jumps over the lazy dog; 1234567890 - 42 is 1234567848?",
    "Shards are little-endian: magic 20240520, version 1, then uint16 tokens (BOS is 1).",
    "x",
};
const std::vector<std::string> kUnicodeDocs = {
    "The caf\xC3\xA9 costs 3.50\xE2\x82\xAC \xE2\x80\x94 na\xC3\xAFve Z\xC3\xBCrich \xE6\x9D\xB1\xE4\xBA\xAC",
    "hello \xF0\x9F\x98\x80 world",
    "\xCE\x91\xCE\xB8\xCE\xAE\xCE\xBD\xCE\xB1 \xD0\x9C\xD0\xBE\xD1\x81\xD0\xBA\xD0\xB2\xD0\xB0 \xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87",
};

size_t total_size(const std::vector<std::string>& docs) {
  size_t n = 0;
  for (const auto& d : docs) n += d.size();
  return n;
}

// Independent byte count: the UTF-8 length of each document's decoded (normalized) text.
uint64_t decoded_bytes(const Tokenizer& tok, const std::vector<std::string>& docs) {
  uint64_t n = 0;
  for (const auto& d : docs) n += tok.decode(tok.encode(d)).size();
  return n;
}

// Per-token check: the bytes of target k are the growth of the decoded prefix of its document.
// Valid for vocabularies whose pieces are whole characters (no byte pieces splitting a character).
void check_per_token(const Tokenizer& tok, const ByteLuts& luts, const std::string& doc) {
  const auto ids = tok.encode(doc);
  size_t prev_len = 0;
  for (size_t k = 0; k < ids.size(); ++k) {
    const std::vector<uint32_t> prefix(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k) + 1);
    const size_t len = tok.decode(prefix).size();
    const uint32_t prev = k == 0 ? static_cast<uint32_t>(tok.bos_id()) : ids[k - 1];
    INFO("doc '" << doc << "' token " << k << " piece '" << tok.piece(ids[k]) << "'");
    CHECK(luts.target_bytes(prev, ids[k]) == len - prev_len);
    prev_len = len;
  }
}

// Checks every entry of the tables against the rule of REFERENCE.md §2.1, piece by piece.
void check_lut_rule(const Tokenizer& tok, const ByteLuts& luts) {
  for (uint32_t id = 0; id < tok.vocab_size(); ++id) {
    const PieceType t = tok.piece_type(id);
    const std::string p = tok.piece(id);
    INFO("id " << id << " piece '" << p << "' type " << ptool::piece_type_name(t));
    if (t == PieceType::control || t == PieceType::unknown || t == PieceType::unused) {
      CHECK(luts.base_bytes[id] == 0);
      CHECK(luts.is_boundary[id] == 1);
      CHECK(luts.has_leading_space[id] == 0);
    } else if (t == PieceType::byte) {
      CHECK(luts.base_bytes[id] == 1);
      CHECK(luts.is_boundary[id] == 0);
      CHECK(luts.has_leading_space[id] == 0);
    } else {
      const bool space = p.rfind(kSpace, 0) == 0;
      CHECK(luts.is_boundary[id] == 0);
      CHECK(luts.has_leading_space[id] == (space ? 1 : 0));
      CHECK(luts.base_bytes[id] == p.size() - (space ? 3 : 0));
    }
  }
}

// The LUT total over a BOS-prefixed stream equals the decoded bytes; for normal-form docs also their length.
void check_stream_bytes(const Tokenizer& tok, const ByteLuts& luts, const std::vector<std::string>& docs,
                        bool normal_form) {
  const auto s = stream_of(tok, docs);
  const uint64_t lut = ptool::count_target_bytes(luts, s);
  CHECK(lut == decoded_bytes(tok, docs));
  if (normal_form) CHECK(lut == total_size(docs));
}

}  // namespace

TEST_CASE("sha256 hex of bytes", "[tokenizer]") {
  CHECK(ptool::sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(ptool::sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("loading a missing or foreign model fails naming the file", "[tokenizer]") {
  const auto dir = fs::temp_directory_path() / ("ptool_test_tok_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto missing = (dir / "missing.model").string();
  try {
    Tokenizer::load(missing);
    FAIL("expected Error");
  } catch (const Error& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains(missing));
  }
  for (const std::string& content : {std::string(), std::string("this is not a protobuf \xFF\xFF\xFF\x01\x02"),
                                     std::string(1024, '\x08')}) {
    const auto p = (dir / "bad.model").string();
    std::ofstream(p, std::ios::binary) << content;
    try {
      Tokenizer::load(p);
      FAIL("expected Error for content of " << content.size() << " bytes");
    } catch (const Error& e) {
      const std::string msg = e.what();
      CHECK_THAT(msg, Catch::Contains(p));
      CHECK(msg.find('\n') == std::string::npos);
    }
  }
  fs::remove_all(dir);
}

TEST_CASE("challenge model sp1024: identity, pieces, unk", "[tokenizer][data]") {
  std::unique_ptr<Tokenizer> tok;
  if (!load_or_skip(shared_data() / "fineweb_1024_bpe.model", tok)) return;
  CHECK(tok->sha256() == "849ea920119b5135ace5016137e82ab397738fc29d723d5f9a6b74c4e31af191");
  CHECK(tok->vocab_size() == 1024);
  CHECK(tok->pad_id() == 0);
  CHECK(tok->bos_id() == 1);
  CHECK(tok->eos_id() == 2);
  CHECK(tok->unk_id() == 3);
  CHECK(tok->piece_type(0) == PieceType::control);
  CHECK(tok->piece_type(1) == PieceType::control);
  CHECK(tok->piece_type(2) == PieceType::control);
  CHECK(tok->piece_type(3) == PieceType::unknown);
  CHECK(tok->piece_to_id(kSpace) == 940);
  CHECK(tok->piece_to_id("no such piece") == -1);
  CHECK_THROWS_AS(tok->piece_type(1024), Error);
  size_t byte_pieces = 0;
  for (uint32_t id = 0; id < tok->vocab_size(); ++id) byte_pieces += tok->piece_type(id) == PieceType::byte;
  CHECK(byte_pieces == 0);
  // Characters outside its alphabet become <unk>; a run of them fuses into one.
  CHECK(tok->encode("\xE6\x9D\xB1") == std::vector<uint32_t>{3});
  CHECK(tok->encode("\xE6\x9D\xB1\xE4\xBA\xAC") == std::vector<uint32_t>{3});
  CHECK(tok->encode("Hello world") == std::vector<uint32_t>{982, 211, 944, 706});
  CHECK(tok->decode(std::vector<uint32_t>{982, 211, 944, 706}) == "Hello world");
}

TEST_CASE("challenge model sp8192: identity and byte pieces at 4-259", "[tokenizer][data]") {
  std::unique_ptr<Tokenizer> tok;
  if (!load_or_skip(shared_data() / "fineweb_8192_bpe.model", tok)) return;
  CHECK(tok->sha256() == "4e979c92754cc9d7bdebd9dfe5edf3fc0b41b38714b394e4297fa851e3afd516");
  CHECK(tok->vocab_size() == 8192);
  CHECK(tok->bos_id() == 1);
  CHECK(tok->unk_id() == 3);
  for (uint32_t id = 0; id < tok->vocab_size(); ++id) {
    const bool byte = tok->piece_type(id) == PieceType::byte;
    CHECK(byte == (id >= 4 && id <= 259));
  }
  CHECK(tok->piece(4) == "<0x00>");
  CHECK(tok->piece(259) == "<0xFF>");
  CHECK(tok->piece_to_id(kSpace) >= 0);
  // Unknown characters fall back to their UTF-8 bytes.
  CHECK(tok->encode("\xE6\x9D\xB1") == std::vector<uint32_t>{4 + 0xE6, 4 + 0x9D, 4 + 0xB1});
}

TEST_CASE("byte tables: size, rule per piece and target bytes (sp1024)", "[tokenizer][bpb][data]") {
  std::unique_ptr<Tokenizer> tok;
  if (!load_or_skip(shared_data() / "fineweb_1024_bpe.model", tok)) return;
  const ByteLuts luts = ptool::build_byte_luts(*tok);
  REQUIRE(luts.size() == 1024);
  CHECK(ptool::build_byte_luts(*tok, 10).size() == 1024);
  const ByteLuts wide = ptool::build_byte_luts(*tok, 1100);
  REQUIRE(wide.size() == 1100);
  for (uint32_t id = 1024; id < 1100; ++id) {
    CHECK(wide.base_bytes[id] == 0);
    CHECK(wide.is_boundary[id] == 1);
    CHECK(wide.has_leading_space[id] == 0);
  }
  check_lut_rule(*tok, luts);

  const uint32_t bos = 1, unk = 3, world = 706, bare = 940, H = 982;
  REQUIRE(tok->piece(world) == kSpace + "world");
  CHECK(luts.base_bytes[bare] == 0);
  CHECK(luts.has_leading_space[bare] == 1);
  CHECK(luts.target_bytes(H, world) == 6);    // the space counts after an ordinary token
  CHECK(luts.target_bytes(bos, world) == 5);  // ... but not after BOS (a boundary)
  CHECK(luts.target_bytes(unk, world) == 5);  // ... nor after <unk>
  CHECK(luts.target_bytes(H, bare) == 1);
  CHECK(luts.target_bytes(H, bos) == 0);      // a BOS target has NLL but no bytes
  CHECK(luts.target_bytes(H, unk) == 0);      // <unk> loses its bytes
}

TEST_CASE("byte tables agree with decoded text (sp1024)", "[tokenizer][bpb][data]") {
  std::unique_ptr<Tokenizer> tok;
  if (!load_or_skip(shared_data() / "fineweb_1024_bpe.model", tok)) return;
  const ByteLuts luts = ptool::build_byte_luts(*tok);
  for (const auto& d : kAsciiDocs) REQUIRE_FALSE(has_unk(*tok, d));
  check_stream_bytes(*tok, luts, kAsciiDocs, true);
  for (const auto& d : kAsciiDocs) check_per_token(*tok, luts, d);
  // Whitespace is normalized: tabs, newlines and runs of spaces become one space; ends are trimmed.
  check_stream_bytes(*tok, luts, {"  a\tb\n\nc   d  "}, false);
  CHECK(ptool::count_target_bytes(luts, stream_of(*tok, {"  a\tb\n\nc   d  "})) == 7);

  // <unk> counts 0 bytes, and the space of the word after it is lost too: the challenge's rule, pinned.
  const std::string cafe = "The caf\xC3\xA9 costs";  // 15 bytes; "é" is not in the sp1024 alphabet
  const auto ids = tok->encode(cafe);
  REQUIRE(std::count(ids.begin(), ids.end(), 3u) == 1);
  CHECK(ptool::count_target_bytes(luts, stream_of(*tok, {cafe})) == 12);
  CHECK_THAT(tok->decode(ids), Catch::Contains("\xE2\x81\x87"));  // decoded <unk> is " ⁇ "
}

TEST_CASE("byte tables agree with decoded text (sp8192, byte fallback)", "[tokenizer][bpb][data]") {
  std::unique_ptr<Tokenizer> tok;
  if (!load_or_skip(shared_data() / "fineweb_8192_bpe.model", tok)) return;
  const ByteLuts luts = ptool::build_byte_luts(*tok);
  REQUIRE(luts.size() == 8192);
  check_lut_rule(*tok, luts);
  check_stream_bytes(*tok, luts, kAsciiDocs, true);
  check_stream_bytes(*tok, luts, kUnicodeDocs, true);
  for (const auto& d : kAsciiDocs) check_per_token(*tok, luts, d);
  // Every byte piece counts exactly one byte, so bytes outside the vocabulary are not lost.
  for (const auto& d : kUnicodeDocs) CHECK_FALSE(has_unk(*tok, d));
}

TEST_CASE("byte tables agree with decoded text (project fixture)", "[tokenizer][bpb]") {
  std::unique_ptr<Tokenizer> tok;
  if (!load_or_skip(fixture_model(), tok)) return;
  CHECK(tok->vocab_size() == 512);
  CHECK(tok->piece_to_id(kSpace) >= 0);
  for (uint32_t id = 0; id < tok->vocab_size(); ++id)
    CHECK((tok->piece_type(id) == PieceType::byte) == (id >= 4 && id <= 259));
  const ByteLuts luts = ptool::build_byte_luts(*tok);
  check_lut_rule(*tok, luts);
  check_stream_bytes(*tok, luts, kAsciiDocs, true);
  check_stream_bytes(*tok, luts, kUnicodeDocs, true);
}

TEST_CASE("count_target_bytes: every position after the first, all id widths", "[tokenizer][bpb]") {
  ByteLuts l;
  l.base_bytes = {0, 0, 3, 2, 1};
  l.has_leading_space = {0, 0, 1, 0, 1};
  l.is_boundary = {1, 1, 0, 0, 0};
  const std::vector<uint16_t> t16 = {1, 2, 3, 2, 1, 4, 4};
  // targets: 2 after BOS (3), 3 (2), 2 after 3 (3+1), BOS (0), 4 after BOS (1), 4 after 4 (1+1)
  const uint64_t want = 3 + 2 + 4 + 0 + 1 + 2;
  CHECK(ptool::count_target_bytes(l, t16) == want);
  const std::vector<uint32_t> t32(t16.begin(), t16.end());
  CHECK(ptool::count_target_bytes(l, t32) == want);
  const std::vector<int32_t> ti(t16.begin(), t16.end());
  CHECK(ptool::count_target_bytes(l, ti) == want);
  CHECK(ptool::count_target_bytes(l, std::vector<uint16_t>{}) == 0);
  CHECK(ptool::count_target_bytes(l, std::vector<uint16_t>{2}) == 0);
  CHECK_THROWS_AS(ptool::count_target_bytes(l, std::vector<uint16_t>{1, 5}), Error);
  CHECK_THROWS_AS(ptool::count_target_bytes(l, std::vector<int32_t>{1, -1}), Error);
}

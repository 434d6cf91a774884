// Tokenizer training (src/data/train_tokenizer.h) with the challenge's SentencePiece settings.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "formats/error.h"
#include "src/data/train_tokenizer.h"
#include "src/tokenizer.h"
#include "test_temp_dir.h"

namespace fs = std::filesystem;
using ptool::Error;
namespace data = ptool::data;

namespace {

struct TrainTempDir : ptool_test::TempDir {
  TrainTempDir() : TempDir("train_tok") {}
};

std::string corpus(size_t docs, bool spaces, uint32_t seed) {
  static const char* words[] = {"in",    "the",  "beginning", "created", "heaven", "and",  "earth", "was",
                                "without", "form", "void",    "darkness", "upon",  "face", "of",    "deep",
                                "spirit", "moved", "waters",  "said",    "let",    "there", "be",   "light"};
  std::mt19937 rng(seed);
  std::string s;
  for (size_t i = 0; i < docs; ++i) {
    const size_t n = 5 + rng() % 60;
    for (size_t w = 0; w < n; ++w) {
      if (w && spaces) s += (rng() % 13 == 0) ? "\n" : " ";
      s += words[rng() % 24];
      if (rng() % 17 == 0) s += std::to_string(rng() % 1000);
    }
    s += ".\n\n";
  }
  return s;
}

}  // namespace

TEST_CASE("trainer arguments are the challenge's", "[data][tokenizer]") {
  data::TrainTokenizerOptions o;
  o.vocab_size = 1024;
  std::map<std::string, std::string> a;
  for (const auto& [k, v] : data::tokenizer_trainer_args(o)) a[k] = v;
  CHECK(a["model_type"] == "bpe");
  CHECK(a["vocab_size"] == "1024");
  CHECK(a["character_coverage"] == "0.999");
  CHECK(a["byte_fallback"] == "true");
  CHECK(a["split_digits"] == "true");
  CHECK(a["normalization_rule_name"] == "nmt_nfkc");
  CHECK(a["add_dummy_prefix"] == "false");
  CHECK(a["pad_id"] == "0");
  CHECK(a["bos_id"] == "1");
  CHECK(a["eos_id"] == "2");
  CHECK(a["unk_id"] == "3");
  CHECK(a["hard_vocab_limit"] == "false");
}

TEST_CASE("train a small BPE tokenizer", "[data][tokenizer]") {
  TrainTempDir dir;
  data::TrainTokenizerOptions o;
  o.inputs = {dir.write("c.txt", corpus(300, true, 1))};
  o.vocab_size = 400;
  o.out_prefix = dir.file("tok");
  o.threads = 1;
  const auto r = data::train_tokenizer(o);
  CHECK(r.model_path == dir.file("tok.model"));
  CHECK(fs::exists(r.model_path));
  CHECK(fs::exists(r.vocab_path));
  CHECK(r.documents == 300);
  CHECK(r.sentences == 300);
  CHECK(r.too_long == 0);
  CHECK(r.has_space_piece);
  CHECK(r.vocab_size == 400);
  CHECK(r.sha256 == ptool::sha256_file_hex(r.model_path));

  const auto tok = ptool::Tokenizer::load(r.model_path);
  CHECK(tok.vocab_size() == 400);
  CHECK(tok.sha256() == r.sha256);
  CHECK(tok.bos_id() == 1);
  CHECK(tok.unk_id() == 3);
  for (uint32_t id = 0; id < tok.vocab_size(); ++id)
    CHECK((tok.piece_type(id) == ptool::PieceType::byte) == (id >= 4 && id <= 259));
  // Digits are split; characters never seen fall back to bytes, so text round-trips.
  for (uint32_t id : tok.encode("1234567")) CHECK(tok.piece(id).find_first_of("0123456789") == tok.piece(id).size() - 1);
  const std::string text = "let there be light, caf\xC3\xA9 \xE6\x9D\xB1 1776";
  CHECK(tok.decode(tok.encode(text)) == text);

  // The .vocab lists every piece with its score, one per line.
  std::ifstream v(r.vocab_path);
  size_t lines = 0;
  for (std::string line; std::getline(v, line);) ++lines;
  CHECK(lines == 400);

  // Same input, same settings, one thread: the same model bytes.
  o.out_prefix = dir.file("again");
  CHECK(data::train_tokenizer(o).sha256 == r.sha256);
}

TEST_CASE("tokenizer training limits and checks", "[data][tokenizer]") {
  TrainTempDir dir;
  data::TrainTokenizerOptions o;
  o.inputs = {dir.write("c.txt", corpus(200, true, 2))};
  o.vocab_size = 350;
  o.threads = 1;

  SECTION("documents over max_sentence_length are counted") {
    o.out_prefix = dir.file("long");
    o.max_sentence_length = 200;
    const auto r = data::train_tokenizer(o);
    CHECK(r.too_long > 0);
    CHECK(r.too_long < r.sentences);
  }
  SECTION("max_documents reads a prefix of the corpus") {
    o.out_prefix = dir.file("few");
    o.max_documents = 50;
    CHECK(data::train_tokenizer(o).documents == 50);
  }
  SECTION("a vocabulary without a standalone space piece is refused unless allowed") {
    o.inputs = {dir.write("nospace.txt", corpus(200, false, 3))};
    o.out_prefix = dir.file("nospace");
    CHECK_THROWS_WITH(data::train_tokenizer(o), Catch::Contains("\xE2\x96\x81"));
    CHECK_FALSE(fs::exists(dir.file("nospace.model")));
    o.require_space_piece = false;
    const auto r = data::train_tokenizer(o);
    CHECK_FALSE(r.has_space_piece);
    CHECK(fs::exists(r.model_path));
  }
  SECTION("bad requests fail without writing") {
    o.out_prefix = dir.file("bad");
    o.vocab_size = 5;
    CHECK_THROWS_AS(data::train_tokenizer(o), Error);
    o.vocab_size = 70000;
    CHECK_THROWS_AS(data::train_tokenizer(o), Error);
    o.vocab_size = 350;
    o.inputs = {dir.write("empty.txt", "\n \n\n")};
    CHECK_THROWS_AS(data::train_tokenizer(o), Error);
    o.inputs = {dir.write("bad.jsonl", "{\"text\": \"a b\"}\nnot json\n")};
    CHECK_THROWS_WITH(data::train_tokenizer(o), Catch::Contains("bad.jsonl:2"));
    CHECK_FALSE(fs::exists(dir.file("bad.model")));
    CHECK_FALSE(fs::exists(dir.file("bad.vocab")));
  }
}

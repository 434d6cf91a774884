// Corpus -> shards (src/data/make_shards.h) and shard statistics (src/data/shard_stats.h).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "formats/error.h"
#include "formats/shard.h"
#include "src/data/make_shards.h"
#include "src/data/shard_stats.h"
#include "src/tokenizer.h"
#include "test_temp_dir.h"

namespace fs = std::filesystem;
using ptool::Error;
using ptool::Tokenizer;
namespace data = ptool::data;

namespace {

struct ShardsTempDir : ptool_test::TempDir {
  ShardsTempDir() : TempDir("mkshards") {}
  std::set<std::string> listing(const std::string& sub) const {
    std::set<std::string> s;
    for (const auto& e : fs::directory_iterator(path / sub)) s.insert(e.path().filename().string());
    return s;
  }
};

// The project's own tokenizer fixture (testdata/tiny_sp.model, remade by the command in testdata/README.md).
const Tokenizer& fixture() {
  static const Tokenizer tok = Tokenizer::load(std::string(PTOOL_SOURCE_DIR) + "/testdata/tiny_sp.model");
  return tok;
}

std::vector<std::string> sample_docs(size_t n, uint32_t seed) {
  static const char* words[] = {"and", "the", "light", "was", "good", "God", "divided", "waters", "from", "firmament",
                                "evening", "morning", "day", "night", "caf\xC3\xA9", "3", "42", "1776", "upon", "earth"};
  std::mt19937 rng(seed);
  std::vector<std::string> docs;
  for (size_t i = 0; i < n; ++i) {
    std::string d;
    const size_t len = 1 + rng() % 40;
    for (size_t w = 0; w < len; ++w) {
      if (w) d += (rng() % 11 == 0) ? "\n" : " ";
      d += words[rng() % 20];
    }
    d += ".";
    docs.push_back(d);
  }
  return docs;
}

std::string as_text(const std::vector<std::string>& docs) {
  std::string s;
  for (const auto& d : docs) s += d + "\n\n";
  return s;
}

std::vector<uint16_t> concat(const std::vector<std::string>& files) {
  std::vector<uint16_t> all;
  for (const auto& f : files) {
    const auto s = ptool::Shard::open(f);
    all.insert(all.end(), s.tokens().begin(), s.tokens().end());
  }
  return all;
}

std::vector<uint16_t> expected_stream(const Tokenizer& tok, const std::vector<std::string>& docs, size_t from,
                                      size_t to) {
  std::vector<uint16_t> s;
  for (size_t i = from; i < to; ++i) {
    s.push_back(static_cast<uint16_t>(tok.bos_id()));
    for (uint32_t id : tok.encode(docs[i])) s.push_back(static_cast<uint16_t>(id));
  }
  return s;
}

}  // namespace

TEST_CASE("make_shards splits val/train, prefixes BOS and caps shard size", "[data][shards]") {
  ShardsTempDir dir;
  const auto docs = sample_docs(40, 1);
  data::MakeShardsOptions o;
  o.inputs = {dir.write("corpus.txt", as_text(docs))};
  o.out_dir = dir.file("out");
  o.prefix = "bib";
  o.val_docs = 7;
  o.shard_tokens = 50;
  const auto r = data::make_shards(o, fixture());

  const auto val = expected_stream(fixture(), docs, 0, 7);
  const auto train = expected_stream(fixture(), docs, 7, docs.size());
  CHECK(r.docs_val == 7);
  CHECK(r.docs_train == 33);
  CHECK(r.tokens_val == val.size());
  CHECK(r.tokens_train == train.size());
  CHECK(concat(r.val_files) == val);
  CHECK(concat(r.train_files) == train);
  REQUIRE(r.val_files.size() == (val.size() + 49) / 50);
  REQUIRE(r.train_files.size() == (train.size() + 49) / 50);
  for (size_t i = 0; i < r.train_files.size(); ++i) {
    char want[64];
    std::snprintf(want, sizeof(want), "bib_train_%06zu.bin", i);
    CHECK(fs::path(r.train_files[i]).filename() == want);
    const size_t n = ptool::shard_token_count(r.train_files[i]);
    CHECK(n == (i + 1 < r.train_files.size() ? 50 : train.size() - 50 * i));
  }
  CHECK(fs::path(r.val_files[0]).filename() == "bib_val_000000.bin");
  // Only final shards remain in the folder: no staging files.
  for (const auto& name : dir.listing("out")) CHECK_THAT(name, Catch::Matches("bib_(val|train)_\\d{6}\\.bin"));

  // Statistics over val then train: one document per BOS, targets = tokens - 1, bytes = decoded text bytes.
  std::vector<std::string> files = r.val_files;
  files.insert(files.end(), r.train_files.begin(), r.train_files.end());
  const auto s = data::shard_stats(files, fixture());
  uint64_t text_bytes = 0, doc_tokens = 0;
  for (const auto& d : docs) {
    const auto ids = fixture().encode(d);
    doc_tokens += ids.size();
    text_bytes += fixture().decode(ids).size();
  }
  CHECK(s.shards == files.size());
  CHECK(s.documents == docs.size());
  CHECK(s.tokens == docs.size() + doc_tokens);
  CHECK(s.targets == s.tokens - 1);
  CHECK(s.bytes == text_bytes);
  CHECK(s.unk_tokens == 0);
  CHECK(s.tokens_per_byte() == Approx(static_cast<double>(s.targets) / static_cast<double>(s.bytes)));
}

TEST_CASE("make_shards output does not depend on the thread count", "[data][shards]") {
  ShardsTempDir dir;
  const auto docs = sample_docs(3000, 2);
  data::MakeShardsOptions o;
  o.inputs = {dir.write("corpus.txt", as_text(docs))};
  o.val_docs = 100;
  o.shard_tokens = 20000;
  std::vector<uint16_t> first;
  for (unsigned threads : {1u, 3u, 8u}) {
    o.threads = threads;
    o.out_dir = dir.file("out" + std::to_string(threads));
    const auto r = data::make_shards(o, fixture());
    auto all = concat(r.val_files);
    const auto tr = concat(r.train_files);
    all.insert(all.end(), tr.begin(), tr.end());
    if (first.empty())
      first = all;
    else
      CHECK(all == first);
  }
  CHECK(first == expected_stream(fixture(), docs, 0, docs.size()));
}

TEST_CASE("make_shards reads JSONL, keeps empty documents, and can put everything in val", "[data][shards]") {
  ShardsTempDir dir;
  data::MakeShardsOptions o;
  o.inputs = {dir.write("docs.jsonl", "{\"text\": \"In the beginning\"}\n{\"text\": \"\"}\n{\"text\": \"caf\\u00e9\"}\n")};
  o.out_dir = dir.file("out");
  o.val_docs = 50000;  // the challenge default; more than the corpus holds
  const auto r = data::make_shards(o, fixture());
  CHECK(r.docs_val == 3);
  CHECK(r.docs_train == 0);
  CHECK(r.train_files.empty());
  REQUIRE(r.val_files.size() == 1);
  CHECK(fs::path(r.val_files[0]).filename() == "fineweb_val_000000.bin");
  CHECK(concat(r.val_files) == expected_stream(fixture(), {"In the beginning", "", "caf\xC3\xA9"}, 0, 3));
}

TEST_CASE("make_shards replaces stale shards of its prefix only", "[data][shards]") {
  ShardsTempDir dir;
  fs::create_directories(dir.file("out"));
  for (const char* name : {"p_train_000099.bin", "p_val_000005.bin", "q_train_000000.bin", "p_train_notes.bin"})
    ptool::write_shard(dir.file(std::string("out/") + name), std::vector<uint16_t>{1, 2});
  data::MakeShardsOptions o;
  o.inputs = {dir.write("c.txt", as_text(sample_docs(5, 3)))};
  o.out_dir = dir.file("out");
  o.prefix = "p";
  o.val_docs = 2;
  const auto r = data::make_shards(o, fixture());
  CHECK(r.removed_stale.size() == 2);
  CHECK(dir.listing("out") ==
        std::set<std::string>{"p_val_000000.bin", "p_train_000000.bin", "q_train_000000.bin", "p_train_notes.bin"});
}

TEST_CASE("make_shards failures leave the output folder as it was", "[data][shards]") {
  ShardsTempDir dir;
  fs::create_directories(dir.file("out"));
  ptool::write_shard(dir.file("out/p_train_000000.bin"), std::vector<uint16_t>{1, 2, 3});
  std::string jsonl;
  for (const auto& d : sample_docs(2000, 4)) jsonl += "{\"text\": \"" + d.substr(0, d.find('\n')) + "\"}\n";
  jsonl += "{\"txt\": \"oops\"}\n";
  data::MakeShardsOptions o;
  o.inputs = {dir.write("c.jsonl", jsonl)};
  o.out_dir = dir.file("out");
  o.prefix = "p";
  o.val_docs = 10;
  o.shard_tokens = 100;  // many shards are staged before the bad line is reached
  o.threads = 1;
  try {
    data::make_shards(o, fixture());
    FAIL("expected Error");
  } catch (const Error& e) {
    CHECK_THAT(std::string(e.what()), Catch::StartsWith(o.inputs[0] + ":2001:"));
  }
  CHECK(dir.listing("out") == std::set<std::string>{"p_train_000000.bin"});
  CHECK(ptool::shard_token_count(dir.file("out/p_train_000000.bin")) == 3);

  o.inputs = {dir.write("empty.txt", "\n\n  \n")};
  CHECK_THROWS_WITH(data::make_shards(o, fixture()), Catch::Contains("no documents"));
  o.inputs = {dir.write("ok.txt", "a b c\n")};
  o.shard_tokens = 0;
  CHECK_THROWS_AS(data::make_shards(o, fixture()), Error);
  o.shard_tokens = 10;
  o.prefix = "a/b";
  CHECK_THROWS_AS(data::make_shards(o, fixture()), Error);
}

TEST_CASE("stats accumulate across span boundaries as one sequence", "[data][stats]") {
  const auto luts = ptool::build_byte_luts(fixture());
  const auto stream = expected_stream(fixture(), sample_docs(50, 5), 0, 50);
  data::StatsAccumulator whole(luts, fixture().bos_id(), fixture().unk_id());
  whole.add(stream);
  data::StatsAccumulator parts(luts, fixture().bos_id(), fixture().unk_id());
  const std::span<const uint16_t> all(stream);
  parts.add(all.subspan(0, 17));
  parts.add(all.subspan(17, 0));
  parts.add(all.subspan(17, 1));
  parts.add(all.subspan(18));
  CHECK(parts.stats().tokens == whole.stats().tokens);
  CHECK(parts.stats().targets == whole.stats().targets);
  CHECK(parts.stats().bytes == whole.stats().bytes);
  CHECK(parts.stats().documents == 50);
  CHECK(whole.stats().targets == stream.size() - 1);
  CHECK(whole.stats().bytes == ptool::count_target_bytes(luts, stream));
}

TEST_CASE("stats refuse token ids outside the vocabulary, naming file and position", "[data][stats]") {
  ShardsTempDir dir;
  const auto p = dir.file("x_val_000000.bin");
  ptool::write_shard(p, std::vector<uint16_t>{1, 5, 511, 512, 7});
  try {
    data::shard_stats({p}, fixture());
    FAIL("expected Error");
  } catch (const Error& e) {
    const std::string m = e.what();
    CHECK_THAT(m, Catch::Contains(p) && Catch::Contains("position 3") && Catch::Contains("512"));
  }
  CHECK_THROWS_AS(data::expand_globs({dir.file("nothing_*.bin")}), Error);
}

TEST_CASE("stats of the challenge's val shard: 390,178 tokens, 997,500 bytes", "[data][stats]") {
  const fs::path d = fs::path(PTOOL_SOURCE_DIR) / ".." / "shared" / "data";
  const auto shard = (d / "text_sp1024" / "text_val_000000.bin").string();
  const auto model = (d / "fineweb_1024_bpe.model").string();
  if (!fs::exists(shard) || !fs::exists(model)) {
    WARN("skipped: " << shard << " or " << model << " not found (shared data missing)");
    return;
  }
  const auto tok = Tokenizer::load(model);
  const auto s = data::shard_stats(data::expand_globs({(d / "text_sp1024" / "text_val_*.bin").string()}), tok);
  CHECK(s.shards == 1);
  CHECK(s.tokens == 390178);
  CHECK(s.targets == 390177);
  CHECK(s.bytes == 997500);    // data/README.md: standard-eval target bytes by the challenge rule
  CHECK(s.documents == 4165);  // measured: BOS count
  CHECK(s.unk_tokens == 680);  // measured
}

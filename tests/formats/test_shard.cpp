// Token shards (formats/shard.h): round trip, every header/size error, vocab check, glob order, real data.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "formats/error.h"
#include "formats/shard.h"

namespace fs = std::filesystem;
using ptool::Error;

namespace {

struct ShardTempDir {
  fs::path path;
  ShardTempDir() {
    path = fs::temp_directory_path() / ("ptool_test_shard_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~ShardTempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_raw(const std::string& path, const std::vector<int32_t>& header, const std::vector<uint16_t>& tokens,
               size_t extra_bytes = 0) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(header.size() * 4));
  f.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 2));
  for (size_t i = 0; i < extra_bytes; ++i) f.put('\0');
}

std::vector<int32_t> header_for(int32_t count, int32_t magic = ptool::kShardMagic, int32_t version = ptool::kShardVersion) {
  std::vector<int32_t> h(256, 0);
  h[0] = magic;
  h[1] = version;
  h[2] = count;
  return h;
}

// The message of the Error thrown by fn; fails the test when nothing (or something else) is thrown.
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("expected ptool::Error");
  return {};
}

void check_one_line_naming(const std::string& msg, const std::string& path) {
  INFO(msg);
  CHECK(msg.find('\n') == std::string::npos);
  CHECK(msg.find(path) != std::string::npos);
}

std::vector<uint16_t> read_payload(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<uint16_t> out((bytes.size() - 1024) / 2);
  if (!out.empty()) std::memcpy(out.data(), bytes.data() + 1024, out.size() * 2);
  return out;
}

}  // namespace

TEST_CASE("shard write/open round trip", "[shard]") {
  ShardTempDir dir;
  for (size_t n : {size_t{0}, size_t{1}, size_t{4097}, size_t{100000}}) {
    std::vector<uint16_t> toks(n);
    std::mt19937 rng(static_cast<uint32_t>(n));
    for (auto& t : toks) t = static_cast<uint16_t>(rng());
    if (n > 0) toks.back() = 65535;
    const std::string p = dir.file("rt_" + std::to_string(n) + ".bin");
    ptool::write_shard(p, toks);
    CHECK(fs::file_size(p) == 1024 + 2 * n);
    CHECK(ptool::shard_token_count(p) == n);
    const auto s = ptool::Shard::open(p);
    CHECK(s.path() == p);
    REQUIRE(s.size() == n);
    CHECK(std::equal(toks.begin(), toks.end(), s.tokens().begin()));
    // Byte layout: little-endian int32 header words, then little-endian uint16 tokens.
    std::ifstream f(p, std::ios::binary);
    unsigned char hdr[1024];
    f.read(reinterpret_cast<char*>(hdr), 1024);
    CHECK((hdr[0] | hdr[1] << 8 | hdr[2] << 16 | hdr[3] << 24) == 20240520);
    CHECK((hdr[4] | hdr[5] << 8 | hdr[6] << 16 | hdr[7] << 24) == 1);
    CHECK(static_cast<size_t>(hdr[8] | hdr[9] << 8 | hdr[10] << 16 | hdr[11] << 24) == n);
    CHECK(std::all_of(hdr + 12, hdr + 1024, [](unsigned char c) { return c == 0; }));
    CHECK(read_payload(p) == toks);
  }
  // Only the final files remain: the temporary file was renamed away.
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    ++files;
    CHECK(e.path().extension() == ".bin");
  }
  CHECK(files == 4);
}

TEST_CASE("shard overwrite is atomic and move keeps the mapping", "[shard]") {
  ShardTempDir dir;
  const std::string p = dir.file("a.bin");
  std::vector<uint16_t> first(1000, 7), second(10, 9);
  ptool::write_shard(p, first);
  auto s = ptool::Shard::open(p);
  ptool::write_shard(p, second);  // rename replaces the name; the open mapping still sees the old file
  CHECK(s.size() == 1000);
  CHECK(s.tokens()[999] == 7);
  ptool::Shard moved = std::move(s);
  CHECK(moved.size() == 1000);
  CHECK(moved.tokens()[0] == 7);
  moved = ptool::Shard::open(p);
  CHECK(moved.size() == 10);
  CHECK(moved.tokens()[9] == 9);
}

TEST_CASE("write_shard errors name the file and leave nothing", "[shard]") {
  ShardTempDir dir;
  const std::string p = dir.file("missing_dir/x.bin");
  std::vector<uint16_t> toks(5, 1);
  const auto msg = error_of([&] { ptool::write_shard(p, toks); });
  check_one_line_naming(msg, p);
  CHECK_FALSE(fs::exists(p));
}

TEST_CASE("shard open errors: one line each, naming the file", "[shard]") {
  ShardTempDir dir;

  SECTION("missing file") {
    const auto p = dir.file("nope.bin");
    const auto msg = error_of([&] { ptool::Shard::open(p); });
    check_one_line_naming(msg, p);
    CHECK_THAT(msg, Catch::Contains("cannot open"));
  }
  SECTION("a folder") {
    const auto msg = error_of([&] { ptool::Shard::open(dir.path.string()); });
    check_one_line_naming(msg, dir.path.string());
  }
  SECTION("empty file: truncated header") {
    const auto p = dir.file("empty.bin");
    std::ofstream(p).close();
    const auto msg = error_of([&] { ptool::Shard::open(p); });
    check_one_line_naming(msg, p);
    CHECK_THAT(msg, Catch::Contains("truncated shard header"));
  }
  SECTION("truncated header") {
    const auto p = dir.file("short.bin");
    auto h = header_for(0);
    h.resize(100);
    write_raw(p, h, {});
    const auto msg = error_of([&] { ptool::Shard::open(p); });
    check_one_line_naming(msg, p);
    CHECK_THAT(msg, Catch::Contains("truncated shard header") && Catch::Contains("400 bytes"));
    CHECK_THROWS_AS(ptool::shard_token_count(p), Error);
  }
  SECTION("bad magic") {
    const auto p = dir.file("magic.bin");
    write_raw(p, header_for(2, 20240521), {1, 2});
    const auto msg = error_of([&] { ptool::Shard::open(p); });
    check_one_line_naming(msg, p);
    CHECK_THAT(msg, Catch::Contains("magic 20240521") && Catch::Contains("20240520"));
  }
  SECTION("bad version") {
    const auto p = dir.file("version.bin");
    write_raw(p, header_for(2, ptool::kShardMagic, 2), {1, 2});
    const auto msg = error_of([&] { ptool::Shard::open(p); });
    check_one_line_naming(msg, p);
    CHECK_THAT(msg, Catch::Contains("version 2"));
  }
  SECTION("negative count") {
    const auto p = dir.file("negative.bin");
    write_raw(p, header_for(-3), {});
    const auto msg = error_of([&] { ptool::Shard::open(p); });
    check_one_line_naming(msg, p);
    CHECK_THAT(msg, Catch::Contains("-3"));
  }
  SECTION("truncated payload") {
    const auto p = dir.file("trunc.bin");
    write_raw(p, header_for(10), std::vector<uint16_t>(9, 1));
    const auto msg = error_of([&] { ptool::Shard::open(p); });
    check_one_line_naming(msg, p);
    CHECK_THAT(msg, Catch::Contains("truncated shard") && Catch::Contains("10 tokens") &&
                        Catch::Contains("1044 bytes") && Catch::Contains("1042 bytes"));
  }
  SECTION("odd trailing byte") {
    const auto p = dir.file("trail.bin");
    write_raw(p, header_for(10), std::vector<uint16_t>(10, 1), 1);
    const auto msg = error_of([&] { ptool::Shard::open(p); });
    check_one_line_naming(msg, p);
    CHECK_THAT(msg, Catch::Contains("1 bytes of trailing data"));
  }
  SECTION("count too small for the payload") {
    const auto p = dir.file("more.bin");
    write_raw(p, header_for(3), std::vector<uint16_t>(10, 1));
    const auto msg = error_of([&] { ptool::Shard::open(p); });
    check_one_line_naming(msg, p);
    CHECK_THAT(msg, Catch::Contains("trailing data"));
  }
}

TEST_CASE("check_vocab names the file, position and id of the first bad token", "[shard]") {
  ShardTempDir dir;
  const auto p = dir.file("vocab.bin");
  std::vector<uint16_t> toks(10000, 5);
  toks[7001] = 1024;
  toks[9000] = 2000;
  ptool::write_shard(p, toks);
  const auto s = ptool::Shard::open(p);
  CHECK_NOTHROW(s.check_vocab(2001));
  CHECK_NOTHROW(s.check_vocab(65536));
  const auto msg = error_of([&] { s.check_vocab(1024); });
  check_one_line_naming(msg, p);
  CHECK_THAT(msg, Catch::Contains("token id 1024") && Catch::Contains("position 7001") &&
                      Catch::Contains("byte offset 15026") && Catch::Contains("1024"));
  CHECK(ptool::find_token_at_or_above(s.tokens(), 1024) == 7001);
  CHECK(ptool::find_token_at_or_above(s.tokens(), 1025) == 9000);
  CHECK(ptool::find_token_at_or_above(s.tokens(), 2001) == 10000);
  CHECK(ptool::find_token_at_or_above(s.tokens(), 6) == 7001);
  CHECK(ptool::find_token_at_or_above(s.tokens(), 5) == 0);
}

TEST_CASE("expand_glob sorts byte-wise and refuses empty matches", "[shard]") {
  ShardTempDir dir;
  for (const char* name : {"x_train_000002.bin", "x_train_000000.bin", "x_train_000010.bin", "x_train_000001.bin",
                           "x_val_000000.bin", "X_train_000005.bin"})
    ptool::write_shard(dir.file(name), std::vector<uint16_t>{static_cast<uint16_t>(std::strlen(name))});
  const auto got = ptool::expand_glob(dir.file("*_train_*.bin"));
  const std::vector<std::string> want = {dir.file("X_train_000005.bin"), dir.file("x_train_000000.bin"),
                                         dir.file("x_train_000001.bin"), dir.file("x_train_000002.bin"),
                                         dir.file("x_train_000010.bin")};
  CHECK(got == want);
  CHECK(ptool::expand_glob(dir.file("x_val_000000.bin")) == std::vector<std::string>{dir.file("x_val_000000.bin")});

  const auto pat = dir.file("y_*.bin");
  auto msg = error_of([&] { ptool::expand_glob(pat); });
  check_one_line_naming(msg, pat);
  CHECK_THAT(msg, Catch::Contains("no files match"));
  const auto lit = dir.file("y.bin");
  msg = error_of([&] { ptool::expand_glob(lit); });
  check_one_line_naming(msg, lit);
  CHECK_THAT(msg, Catch::Contains("no such file"));
}

TEST_CASE("load_tokens concatenates the matches in sorted order", "[shard]") {
  ShardTempDir dir;
  ptool::write_shard(dir.file("d_train_000001.bin"), std::vector<uint16_t>{4, 5});
  ptool::write_shard(dir.file("d_train_000000.bin"), std::vector<uint16_t>{1, 2, 3});
  ptool::write_shard(dir.file("d_train_000002.bin"), std::vector<uint16_t>{});
  ptool::write_shard(dir.file("d_train_000003.bin"), std::vector<uint16_t>{6});
  CHECK(ptool::load_tokens(dir.file("d_train_*.bin")) == std::vector<uint16_t>{1, 2, 3, 4, 5, 6});
  // A defective shard among the matches fails the whole load with its name.
  write_raw(dir.file("d_train_000004.bin"), header_for(5), {1});
  const auto msg = error_of([&] { ptool::load_tokens(dir.file("d_train_*.bin")); });
  check_one_line_naming(msg, dir.file("d_train_000004.bin"));
}

TEST_CASE("real challenge shard: text_val_000000.bin", "[shard][data]") {
  const fs::path data = fs::path(PTOOL_SOURCE_DIR) / ".." / "shared" / "data";
  const auto p = (data / "text_sp1024" / "text_val_000000.bin").string();
  if (!fs::exists(p)) {
    WARN("skipped: " << p << " not found (shared data missing)");
    return;
  }
  const auto s = ptool::Shard::open(p);
  CHECK(s.size() == 390178);
  CHECK(ptool::shard_token_count(p) == 390178);
  CHECK(s.tokens()[0] == 1);  // BOS before the first document
  CHECK_NOTHROW(s.check_vocab(1024));
  CHECK_THROWS_AS(s.check_vocab(100), Error);
  CHECK(ptool::load_tokens((data / "text_sp1024" / "text_val_*.bin").string()).size() == 390178);
}

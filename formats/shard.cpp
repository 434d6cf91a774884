#include "formats/shard.h"

#include "formats/atomic_file.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>

#include "formats/error.h"

namespace ptool {

static_assert(std::endian::native == std::endian::little, "ptool reads little-endian shards in place");

namespace {

std::string sys_error() { return std::strerror(errno); }

// Closes a descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Opens and validates a shard; returns the open descriptor, the file size and the token count.
struct ShardFile {
  Fd fd;
  size_t file_bytes = 0;
  size_t count = 0;
};

void read_exact(int fd, void* dst, size_t n, const std::string& path) {
  auto* p = static_cast<char*>(dst);
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, p + done, n - done, static_cast<off_t>(done));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw Error(path + ": cannot read shard header: " + sys_error());
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  if (done != n)
    throw Error(path + ": truncated shard header (file has " + std::to_string(done) + " bytes, the header needs " +
                std::to_string(n) + ")");
}

void open_validated(const std::string& path, ShardFile& out) {
  out.fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (out.fd.fd < 0) throw Error(path + ": cannot open shard: " + sys_error());
  struct stat st {};
  if (::fstat(out.fd.fd, &st) != 0) throw Error(path + ": cannot stat shard: " + sys_error());
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file");
  const size_t file_bytes = static_cast<size_t>(st.st_size);
  if (file_bytes < kShardHeaderBytes)
    throw Error(path + ": truncated shard header (file has " + std::to_string(file_bytes) +
                " bytes, the header needs " + std::to_string(kShardHeaderBytes) + ")");
  int32_t header[kShardHeaderWords];
  read_exact(out.fd.fd, header, sizeof(header), path);
  if (header[0] != kShardMagic)
    throw Error(path + ": not a token shard (magic " + std::to_string(header[0]) + ", expected " +
                std::to_string(kShardMagic) + ")");
  if (header[1] != kShardVersion)
    throw Error(path + ": unsupported shard version " + std::to_string(header[1]) + " (expected " +
                std::to_string(kShardVersion) + ")");
  if (header[2] < 0) throw Error(path + ": negative token count " + std::to_string(header[2]) + " in shard header");
  const size_t count = static_cast<size_t>(header[2]);
  const size_t expected = kShardHeaderBytes + 2 * count;
  if (file_bytes < expected)
    throw Error(path + ": truncated shard: header says " + std::to_string(count) + " tokens (" +
                std::to_string(expected) + " bytes) but the file has " + std::to_string(file_bytes) + " bytes");
  if (file_bytes > expected)
    throw Error(path + ": shard has " + std::to_string(file_bytes - expected) +
                " bytes of trailing data: header says " + std::to_string(count) + " tokens (" +
                std::to_string(expected) + " bytes) but the file has " + std::to_string(file_bytes) + " bytes");
  out.file_bytes = file_bytes;
  out.count = count;
}

bool has_glob_chars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

}  // namespace

Shard Shard::open(const std::string& path) {
  ShardFile f;
  open_validated(path, f);
  Shard s;
  s.path_ = path;
  s.count_ = f.count;
  s.map_bytes_ = f.file_bytes;
  void* m = ::mmap(nullptr, f.file_bytes, PROT_READ, MAP_SHARED, f.fd.fd, 0);
  if (m == MAP_FAILED) throw Error(path + ": cannot map shard: " + sys_error());
  s.map_ = m;
  // Tokens are read front to back by every consumer.
  ::madvise(m, f.file_bytes, MADV_SEQUENTIAL);
  s.tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(m) + kShardHeaderBytes);
  return s;
}

Shard::Shard(Shard&& o) noexcept
    : path_(std::move(o.path_)),
      map_(std::exchange(o.map_, nullptr)),
      map_bytes_(std::exchange(o.map_bytes_, 0)),
      tokens_(std::exchange(o.tokens_, nullptr)),
      count_(std::exchange(o.count_, 0)) {}

Shard& Shard::operator=(Shard&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_bytes_);
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_bytes_ = std::exchange(o.map_bytes_, 0);
    tokens_ = std::exchange(o.tokens_, nullptr);
    count_ = std::exchange(o.count_, 0);
  }
  return *this;
}

Shard::~Shard() {
  if (map_) ::munmap(map_, map_bytes_);
}

size_t find_token_at_or_above(std::span<const uint16_t> tokens, uint32_t vocab) {
  if (vocab > 0xFFFF) return tokens.size();
  const auto limit = static_cast<uint16_t>(vocab);
  // Blockwise max (vectorizes) so that the common all-valid case stays fast; locate only on a hit.
  constexpr size_t kBlock = 4096;
  for (size_t i = 0; i < tokens.size(); i += kBlock) {
    const size_t end = std::min(tokens.size(), i + kBlock);
    uint16_t mx = 0;
    for (size_t j = i; j < end; ++j) mx = std::max(mx, tokens[j]);
    if (mx >= limit)
      for (size_t j = i; j < end; ++j)
        if (tokens[j] >= limit) return j;
  }
  return tokens.size();
}

void Shard::check_vocab(uint32_t vocab) const {
  const size_t pos = find_token_at_or_above(tokens(), vocab);
  if (pos == count_) return;
  throw Error(path_ + ": token id " + std::to_string(tokens_[pos]) + " at position " + std::to_string(pos) +
              " (byte offset " + std::to_string(kShardHeaderBytes + 2 * pos) + ") is not below the vocabulary size " +
              std::to_string(vocab));
}

size_t shard_token_count(const std::string& path) {
  ShardFile f;
  open_validated(path, f);
  return f.count;
}

void write_shard(const std::string& path, std::span<const uint16_t> tokens) {
  if (tokens.size() > kShardMaxTokens)
    throw Error(path + ": " + std::to_string(tokens.size()) + " tokens do not fit one shard (at most " +
                std::to_string(kShardMaxTokens) + ")");
  int32_t header[kShardHeaderWords] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());

  std::vector<uint8_t> bytes(sizeof(header) + tokens.size() * sizeof(uint16_t));
  std::memcpy(bytes.data(), header, sizeof(header));
  if (!tokens.empty()) std::memcpy(bytes.data() + sizeof(header), tokens.data(), tokens.size() * sizeof(uint16_t));
  write_file_atomic(path, bytes, "shard");
}

std::vector<std::string> expand_glob(const std::string& pattern) {
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> out;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  ::globfree(&g);
  if (rc == GLOB_NOSPACE) throw Error(pattern + ": out of memory while expanding the pattern");
  if (rc == GLOB_ABORTED) throw Error(pattern + ": read error while expanding the pattern");
  if (out.empty()) {
    if (has_glob_chars(pattern)) throw Error(pattern + ": no files match this pattern");
    throw Error(pattern + ": no such file");
  }
  // glob(3) sorts by the locale's collation; sort byte-wise like Python's sorted(glob(...)).
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint16_t> load_tokens(const std::string& pattern) {
  const auto files = expand_glob(pattern);
  size_t total = 0;
  for (const auto& f : files) total += shard_token_count(f);
  std::vector<uint16_t> out;
  out.reserve(total);
  for (const auto& f : files) {
    Shard s = Shard::open(f);
    out.insert(out.end(), s.tokens().begin(), s.tokens().end());
  }
  return out;
}

}  // namespace ptool

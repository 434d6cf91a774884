// The challenge's token shard format (REFERENCE.md §1.1): 256 x int32 LE header
// (magic 20240520, version 1, token count), then uint16 LE tokens; file size must match exactly.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ptool {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderWords = 256;
inline constexpr size_t kShardHeaderBytes = kShardHeaderWords * 4;
inline constexpr size_t kShardMaxTokens = (size_t{1} << 31) - 1;  // header count is an int32

// A memory-mapped, validated shard. Tokens are read in place (read-only, shared mapping).
// Every error is a one-line ptool::Error that starts with the file's path.
class Shard {
 public:
  // Validates: the file opens, holds a full 1024-byte header, magic 20240520, version 1,
  // 0 <= count, and file size == 1024 + 2*count exactly. Header words 3..255 are not checked.
  static Shard open(const std::string& path);
  Shard(Shard&&) noexcept;
  Shard& operator=(Shard&&) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard();
  const std::string& path() const { return path_; }
  size_t size() const { return count_; }
  std::span<const uint16_t> tokens() const { return {tokens_, count_}; }
  // Throws Error naming the file, the position (token index) and the id of the first token >= vocab.
  void check_vocab(uint32_t vocab) const;

 private:
  Shard() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  size_t count_ = 0;
};

// Validates the header and file size of a shard without mapping it; returns its token count.
size_t shard_token_count(const std::string& path);

// Index of the first token >= vocab in tokens, or tokens.size() when all are below vocab.
size_t find_token_at_or_above(std::span<const uint16_t> tokens, uint32_t vocab);

// Atomic write (temp file in the same folder + fsync + rename + fsync of the folder).
// Throws Error naming the file; never leaves a partial file at `path`.
void write_shard(const std::string& path, std::span<const uint16_t> tokens);
// Expands a glob pattern (glob(3)) to the matching paths in byte-wise sorted order;
// throws Error when nothing matches.
std::vector<std::string> expand_glob(const std::string& pattern);
// Concatenation of every shard matching the pattern, in sorted order.
std::vector<uint16_t> load_tokens(const std::string& pattern);

}  // namespace ptool

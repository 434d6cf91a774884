// The challenge's token shard format (REFERENCE.md §1.1): 256 x int32 LE header
// (magic 20240520, version 1, token count), then uint16 LE tokens; file size must match exactly.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace ptool {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 256 * 4;

// A memory-mapped, validated shard. Tokens are read in place.
class Shard {
 public:
  static Shard open(const std::string& path);  // throws Error naming the file on any defect
  Shard(Shard&&) noexcept;
  Shard& operator=(Shard&&) noexcept;
  ~Shard();
  const std::string& path() const { return path_; }
  size_t size() const { return count_; }
  std::span<const uint16_t> tokens() const { return {tokens_, count_}; }
  // Throws Error naming the file and position of the first token id >= vocab.
  void check_vocab(uint32_t vocab) const;

 private:
  Shard() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  size_t count_ = 0;
};

// Atomic write (temp file + fsync + rename).
void write_shard(const std::string& path, std::span<const uint16_t> tokens);
// Expands a glob pattern to the sorted list of matching files; throws Error when nothing matches.
std::vector<std::string> expand_glob(const std::string& pattern);
// Concatenation of every shard matching the pattern, in sorted order.
std::vector<uint16_t> load_tokens(const std::string& pattern);

}  // namespace ptool

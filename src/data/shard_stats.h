// Statistics of token shards under a tokenizer: documents, tokens, scored targets and their bytes
// by the challenge's BPB rule (REFERENCE.md §2.1-§2.2).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "src/tokenizer.h"

namespace ptool::data {

struct ShardStats {
  uint64_t shards = 0;
  uint64_t documents = 0;   // BOS tokens
  uint64_t tokens = 0;
  uint64_t targets = 0;     // every position after the first, over the concatenation of the shards
  uint64_t bytes = 0;       // bytes of those targets: base_bytes[y] + (leading_space[y] && !boundary[x])
  uint64_t unk_tokens = 0;  // tokens equal to the tokenizer's unk id
  // targets / bytes: multiply nats per token by this and divide by ln 2 to get bits per byte.
  double tokens_per_byte() const { return bytes ? static_cast<double>(targets) / static_cast<double>(bytes) : 0.0; }
};

// Accumulates statistics over a stream of token spans as if they were one concatenated sequence.
class StatsAccumulator {
 public:
  StatsAccumulator(const ByteLuts& luts, int32_t bos_id, int32_t unk_id);
  // Ids must be < luts.size() (validate first, e.g. with Shard::check_vocab).
  void add(std::span<const uint16_t> tokens);
  const ShardStats& stats() const { return stats_; }
  ShardStats& stats() { return stats_; }

 private:
  const ByteLuts& luts_;
  int32_t bos_id_, unk_id_;
  int32_t prev_ = -1;  // last token of the previous span, -1 before the first
  ShardStats stats_;
};

// Expands each pattern (sorted within a pattern, patterns in the order given); Error when one matches nothing.
std::vector<std::string> expand_globs(const std::vector<std::string>& patterns);

// Opens each shard, validates it (and that every id < tok.vocab_size(), Error naming file and position)
// and accumulates the statistics over the concatenation in the order given.
ShardStats shard_stats(const std::vector<std::string>& files, const Tokenizer& tok);

}  // namespace ptool::data

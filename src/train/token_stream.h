// The reference's deterministic training-batch stream (REFERENCE.md §1.4, train_gpt.py `TokenStream`
// and `DistributedTokenLoader`): the train shards in sorted order, concatenated and wrapped around
// forever, no sampling.
//
// take(n): the next n tokens of the endless concatenation. As in the reference, the position only moves
// to the next shard when more tokens are requested and the current one is exhausted, so after a take that
// ends exactly at a shard's end the state is (that shard, its size). Empty shards are skipped.
//
// next_batch(global_tokens, seq_len, grad_accum_steps, rank, world):
//   local = global_tokens / (world · grad_accum_steps)        (integer division, as the reference)
//   the stream yields one chunk of (local + 1) · world tokens; rank r uses chunk[r·(local+1), (r+1)·(local+1));
//   x = span[:-1], y = span[1:], both [local] = [local / seq_len rows, seq_len] int32.
// Every rank consumes the whole chunk, so all ranks' streams stay in step. local must be a positive
// multiple of seq_len (the reference's reshape(-1, seq_len) fails otherwise).
//
// The caller owns the token memory (e.g. a vector of ptool::Shard, whose tokens() spans stay valid while
// the Shards live) and passes the shards in sorted order (ptool::expand_glob sorts).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace ptool::train {

struct TokenStreamState {
  uint64_t shard_index = 0;  // current shard
  uint64_t offset = 0;       // tokens of it already consumed (may equal its size)
  uint64_t num_shards = 0;   // checked on restore
  uint64_t fingerprint = 0;  // FNV-1a of the shard sizes, checked on restore
  bool operator==(const TokenStreamState&) const = default;
};

struct TokenBatch {
  std::vector<int32_t> x, y;  // [rows · seq_len] each, row-major
  int64_t rows = 0, seq_len = 0;
};

class TokenStream {
 public:
  // Throws ptool::Error when there is no shard or every shard is empty.
  explicit TokenStream(std::vector<std::span<const uint16_t>> shards);

  // Writes the next n tokens (widened to int32) to out; out == nullptr just advances.
  void take(int64_t n, int32_t* out);
  void skip(int64_t n) { take(n, nullptr); }

  // Tokens per rank per micro-batch for these settings; throws ptool::Error (naming the numbers) unless
  // it is a positive multiple of seq_len.
  static int64_t local_tokens(int64_t global_tokens, int64_t seq_len, int64_t grad_accum_steps, int world);

  // Fills x and y (local_tokens(...) int32 each, caller-owned; no allocation after the first call).
  void next_batch(int64_t global_tokens, int64_t seq_len, int64_t grad_accum_steps, int rank, int world,
                  int32_t* x, int32_t* y);
  // Convenience form that allocates the batch.
  TokenBatch next_batch(int64_t global_tokens, int64_t seq_len, int64_t grad_accum_steps, int rank, int world);

  TokenStreamState state() const;
  // Throws ptool::Error when the state belongs to a different shard list or points past a shard's end.
  void restore(const TokenStreamState& st);

  size_t num_shards() const { return shards_.size(); }
  uint64_t total_tokens() const { return total_; }
  uint64_t fingerprint() const { return fingerprint_; }

 private:
  std::vector<std::span<const uint16_t>> shards_;
  uint64_t total_ = 0;
  uint64_t fingerprint_ = 0;
  size_t idx_ = 0;
  size_t pos_ = 0;
  std::vector<int32_t> scratch_;
};

}  // namespace ptool::train

#include "src/train/token_stream.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "formats/error.h"

namespace ptool::train {

namespace {
uint64_t fnv1a_u64(uint64_t h, uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= (v >> (8 * i)) & 0xFFu;
    h *= 0x100000001B3ull;
  }
  return h;
}
}  // namespace

TokenStream::TokenStream(std::vector<std::span<const uint16_t>> shards) : shards_(std::move(shards)) {
  if (shards_.empty()) throw Error("token stream: no train shards");
  uint64_t h = fnv1a_u64(0xCBF29CE484222325ull, shards_.size());
  for (const auto& s : shards_) {
    total_ += s.size();
    h = fnv1a_u64(h, s.size());
  }
  fingerprint_ = h;
  if (total_ == 0) throw Error("token stream: all " + std::to_string(shards_.size()) + " train shards are empty");
}

void TokenStream::take(int64_t n, int32_t* out) {
  if (n < 0) throw Error("token stream: negative token count");
  auto remaining = static_cast<uint64_t>(n);
  while (remaining > 0) {
    const auto& sh = shards_[idx_];
    const size_t avail = sh.size() - pos_;
    if (avail == 0) {
      idx_ = (idx_ + 1) % shards_.size();
      pos_ = 0;
      continue;
    }
    const size_t k = static_cast<size_t>(std::min<uint64_t>(remaining, avail));
    if (out) {
      const uint16_t* src = sh.data() + pos_;
      for (size_t i = 0; i < k; ++i) out[i] = static_cast<int32_t>(src[i]);
      out += k;
    }
    pos_ += k;
    remaining -= k;
  }
}

int64_t TokenStream::local_tokens(int64_t global_tokens, int64_t seq_len, int64_t grad_accum_steps, int world) {
  if (world <= 0 || grad_accum_steps <= 0 || seq_len <= 0 || global_tokens <= 0)
    throw Error("token stream: bad batch settings (global_tokens " + std::to_string(global_tokens) + ", seq_len " +
                std::to_string(seq_len) + ", grad_accum_steps " + std::to_string(grad_accum_steps) + ", world " +
                std::to_string(world) + ")");
  const int64_t local = global_tokens / (static_cast<int64_t>(world) * grad_accum_steps);
  if (local <= 0 || local % seq_len != 0)
    throw Error("token stream: global_tokens " + std::to_string(global_tokens) + " / (world " +
                std::to_string(world) + " x grad_accum_steps " + std::to_string(grad_accum_steps) + ") = " +
                std::to_string(local) + " tokens per micro-batch, not a positive multiple of seq_len " +
                std::to_string(seq_len));
  return local;
}

void TokenStream::next_batch(int64_t global_tokens, int64_t seq_len, int64_t grad_accum_steps, int rank, int world,
                             int32_t* x, int32_t* y) {
  const int64_t local = local_tokens(global_tokens, seq_len, grad_accum_steps, world);
  if (rank < 0 || rank >= world)
    throw Error("token stream: rank " + std::to_string(rank) + " outside world " + std::to_string(world));
  const int64_t span = local + 1;
  scratch_.resize(static_cast<size_t>(span));
  skip(static_cast<int64_t>(rank) * span);
  take(span, scratch_.data());
  skip(static_cast<int64_t>(world - 1 - rank) * span);
  std::memcpy(x, scratch_.data(), static_cast<size_t>(local) * sizeof(int32_t));
  std::memcpy(y, scratch_.data() + 1, static_cast<size_t>(local) * sizeof(int32_t));
}

TokenBatch TokenStream::next_batch(int64_t global_tokens, int64_t seq_len, int64_t grad_accum_steps, int rank,
                                   int world) {
  const int64_t local = local_tokens(global_tokens, seq_len, grad_accum_steps, world);
  TokenBatch b;
  b.x.resize(static_cast<size_t>(local));
  b.y.resize(static_cast<size_t>(local));
  b.rows = local / seq_len;
  b.seq_len = seq_len;
  next_batch(global_tokens, seq_len, grad_accum_steps, rank, world, b.x.data(), b.y.data());
  return b;
}

TokenStreamState TokenStream::state() const { return {idx_, pos_, shards_.size(), fingerprint_}; }

void TokenStream::restore(const TokenStreamState& st) {
  if (st.num_shards != shards_.size() || st.fingerprint != fingerprint_)
    throw Error("token stream: saved position belongs to a different shard list (" + std::to_string(st.num_shards) +
                " shards, fingerprint " + std::to_string(st.fingerprint) + "; now " +
                std::to_string(shards_.size()) + " shards, fingerprint " + std::to_string(fingerprint_) + ")");
  if (st.shard_index >= shards_.size() || st.offset > shards_[st.shard_index].size())
    throw Error("token stream: saved position (shard " + std::to_string(st.shard_index) + ", offset " +
                std::to_string(st.offset) + ") is outside the shards");
  idx_ = static_cast<size_t>(st.shard_index);
  pos_ = static_cast<size_t>(st.offset);
}

}  // namespace ptool::train

#include "src/data/shard_stats.h"

#include "formats/shard.h"

namespace ptool::data {

StatsAccumulator::StatsAccumulator(const ByteLuts& luts, int32_t bos_id, int32_t unk_id)
    : luts_(luts), bos_id_(bos_id), unk_id_(unk_id) {}

void StatsAccumulator::add(std::span<const uint16_t> tokens) {
  if (tokens.empty()) return;
  uint64_t bos = 0, unk = 0, bytes = 0;
  const uint16_t* t = tokens.data();
  const size_t n = tokens.size();
  for (size_t i = 0; i < n; ++i) {
    bos += (t[i] == bos_id_);
    unk += (t[i] == unk_id_);
  }
  if (prev_ >= 0) bytes += luts_.target_bytes(static_cast<uint32_t>(prev_), t[0]);
  for (size_t i = 1; i < n; ++i) bytes += luts_.target_bytes(t[i - 1], t[i]);
  stats_.targets += prev_ >= 0 ? n : n - 1;
  stats_.tokens += n;
  stats_.documents += bos;
  stats_.unk_tokens += unk;
  stats_.bytes += bytes;
  prev_ = t[n - 1];
}

std::vector<std::string> expand_globs(const std::vector<std::string>& patterns) {
  std::vector<std::string> files;
  for (const auto& p : patterns) {
    auto f = expand_glob(p);
    files.insert(files.end(), f.begin(), f.end());
  }
  return files;
}

ShardStats shard_stats(const std::vector<std::string>& files, const Tokenizer& tok) {
  const ByteLuts luts = build_byte_luts(tok);
  StatsAccumulator acc(luts, tok.bos_id(), tok.unk_id());
  for (const auto& f : files) {
    const Shard s = Shard::open(f);
    s.check_vocab(tok.vocab_size());
    acc.add(s.tokens());
    ++acc.stats().shards;
  }
  return acc.stats();
}

}  // namespace ptool::data

// Corpus -> challenge-format token shards (REFERENCE.md §1.1-§1.2, download_hf_docs_and_tokenize.py):
// the first val_docs documents go to <prefix>_val_%06d.bin, the rest to <prefix>_train_%06d.bin;
// each document is prefixed with BOS (no EOS); documents are concatenated and may straddle shards;
// a shard holds at most shard_tokens tokens; the val/train switch starts a new shard.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "src/data/documents.h"
#include "src/tokenizer.h"

namespace ptool::data {

struct MakeShardsOptions {
  std::vector<std::string> inputs;
  InputFormat format = InputFormat::auto_detect;
  std::string out_dir;
  std::string prefix = "fineweb";
  uint64_t val_docs = 50'000;
  uint64_t shard_tokens = 100'000'000;
  unsigned threads = 0;  // encoding threads; 0: hardware concurrency
};

struct MakeShardsResult {
  uint64_t docs_val = 0, docs_train = 0;
  uint64_t tokens_val = 0, tokens_train = 0;
  std::vector<std::string> val_files, train_files;
  std::vector<std::string> removed_stale;  // earlier <prefix>_{val,train}_*.bin files that were replaced
};

// Called now and then while reading: input bytes done, input bytes total, documents, tokens so far.
using ShardsProgressFn = std::function<void(uint64_t done, uint64_t total, uint64_t docs, uint64_t tokens)>;

// Writes the shards. Shards are staged under temporary names and renamed into place only when every
// document was read and encoded: on error nothing is left in out_dir except what was there before.
// On success any earlier <prefix>_val_*.bin / <prefix>_train_*.bin not rewritten by this run is removed.
MakeShardsResult make_shards(const MakeShardsOptions& opt, const Tokenizer& tok, const ShardsProgressFn& progress = {});

}  // namespace ptool::data

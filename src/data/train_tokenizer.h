// Trains a SentencePiece BPE tokenizer with the challenge's settings (REFERENCE.md §1.3):
// model_type=bpe, character_coverage=0.999, byte_fallback=true, split_digits=true,
// normalization_rule_name=nmt_nfkc, add_dummy_prefix=false, pad 0, bos 1, eos 2, unk 3,
// hard_vocab_limit=false. Like download_hf_docs_and_tokenize.py, each document (NUL -> space,
// stripped, empty ones skipped) is one training sentence.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/data/documents.h"

namespace ptool::data {

struct TrainTokenizerOptions {
  std::vector<std::string> inputs;
  InputFormat format = InputFormat::auto_detect;
  uint32_t vocab_size = 0;
  std::string out_prefix;              // writes <out_prefix>.model and <out_prefix>.vocab
  uint64_t input_sentence_size = 0;    // 0: every document; else SentencePiece samples this many
  uint64_t max_documents = 0;          // 0: all; else only the first N documents are read
  uint64_t max_sentence_length = 4192; // bytes; SentencePiece's default (longer documents are skipped)
  unsigned threads = 0;                // 0: hardware concurrency
  bool require_space_piece = true;     // Error when the vocab lacks a standalone "▁" piece
  bool verbose = false;                // show SentencePiece's own log
};

struct TrainTokenizerResult {
  std::string model_path, vocab_path;
  uint32_t vocab_size = 0;             // of the trained model (can be below the request: hard_vocab_limit=false)
  std::string sha256;
  uint64_t documents = 0;              // documents read
  uint64_t sentences = 0;              // non-empty documents given to the trainer
  uint64_t too_long = 0;               // of those, longer than max_sentence_length (SentencePiece skips them)
  bool has_space_piece = false;
};

// Trains, then writes the .model and .vocab atomically. Throws Error (and writes nothing) on failure,
// including a vocab without a standalone "▁" when require_space_piece (REFERENCE.md §2.1, issue #897).
TrainTokenizerResult train_tokenizer(const TrainTokenizerOptions& opt);

// The SentencePiece trainer arguments used for the options (for logs and tests).
std::vector<std::pair<std::string, std::string>> tokenizer_trainer_args(const TrainTokenizerOptions& opt);

}  // namespace ptool::data

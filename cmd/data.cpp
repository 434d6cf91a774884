// ptool data: corpus -> tokenizer, corpus -> token shards, and shard statistics.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cmd/commands.h"
#include "src/data/make_shards.h"
#include "src/data/progress.h"
#include "src/data/shard_stats.h"
#include "src/data/train_tokenizer.h"
#include "src/tokenizer.h"

namespace ptool::cmd {

namespace {

std::string with_commas(uint64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

void add_stats(CLI::App& data) {
  struct Opts {
    std::vector<std::string> shards;
    std::string tokenizer;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = data.add_subcommand("stats", "count documents, tokens, scored targets and their bytes in token shards");
  sub->footer(
      "Targets are every position after the first over the concatenation of the shards (in argument order, each\n"
      "glob sorted); their bytes follow the challenge's rule: base_bytes[y] + (leading space of y and x not a\n"
      "boundary token). tokens_per_byte = targets / bytes, so val_bpb = val_loss / ln 2 * tokens_per_byte.");
  sub->add_option("shards", o->shards, "shard files or glob patterns (quote globs), e.g. 'data/fineweb_val_*.bin'")
      ->required();
  sub->add_option("--tokenizer", o->tokenizer, "SentencePiece .model the shards were made with")->required();
  sub->add_flag("--json", o->json, "print one JSON object (documents, tokens, targets, bytes, unk_tokens, "
                                   "tokens_per_byte, shards) instead of a table");
  sub->callback([o] {
    const Tokenizer tok = Tokenizer::load(o->tokenizer);
    const auto files = data::expand_globs(o->shards);
    const data::ShardStats s = data::shard_stats(files, tok);
    if (o->json) {
      nlohmann::json j = {{"documents", s.documents}, {"tokens", s.tokens},         {"targets", s.targets},
                          {"bytes", s.bytes},         {"unk_tokens", s.unk_tokens}, {"tokens_per_byte", s.tokens_per_byte()},
                          {"shards", s.shards}};
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    std::printf("tokenizer        %s (vocab %u, sha256 %s)\n", tok.path().c_str(), tok.vocab_size(), tok.sha256().c_str());
    std::printf("shards           %s\n", with_commas(s.shards).c_str());
    std::printf("documents        %s\n", with_commas(s.documents).c_str());
    std::printf("tokens           %s\n", with_commas(s.tokens).c_str());
    std::printf("targets          %s\n", with_commas(s.targets).c_str());
    std::printf("bytes            %s\n", with_commas(s.bytes).c_str());
    std::printf("unk_tokens       %s\n", with_commas(s.unk_tokens).c_str());
    std::printf("tokens_per_byte  %.6f  (bytes per token %.5f)\n", s.tokens_per_byte(),
                s.targets ? static_cast<double>(s.bytes) / static_cast<double>(s.targets) : 0.0);
  });
}

void add_shards(CLI::App& data) {
  struct Opts {
    data::MakeShardsOptions m;
    std::string tokenizer;
    std::string format = "auto";
    bool quiet = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = data.add_subcommand("shards", "tokenize a text or JSONL corpus into challenge-format token shards");
  sub->footer(
      "Writes <out-dir>/<prefix>_val_000000.bin ... (the first --val-docs documents) and\n"
      "<prefix>_train_000000.bin ... (the rest): 1024-byte header (magic 20240520, version 1, count), then uint16\n"
      "tokens; a BOS before each document, no EOS; documents may straddle shards. Text input: documents are\n"
      "separated by blank lines. JSONL input: one object per line with a string field \"text\".\n"
      "Earlier <prefix>_val_*/<prefix>_train_* shards in --out-dir are replaced; on error nothing is written.");
  sub->add_option("inputs", o->m.inputs, "corpus files")->required()->check(CLI::ExistingFile);
  sub->add_option("--tokenizer", o->tokenizer, "SentencePiece .model to encode with")->required();
  sub->add_option("--out-dir", o->m.out_dir, "output folder (created if missing)")->required();
  sub->add_option("--prefix", o->m.prefix, "shard name prefix")->capture_default_str();
  sub->add_option("--val-docs", o->m.val_docs, "number of leading documents that form the validation split")
      ->capture_default_str();
  sub->add_option("--shard-tokens", o->m.shard_tokens, "maximum tokens per shard")->capture_default_str();
  sub->add_option("--format", o->format, "input format: auto (.jsonl/.ndjson/.json are JSONL, else text), text, jsonl")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}))
      ->capture_default_str();
  sub->add_option("--threads", o->m.threads, "encoding threads (0: all cores)")->capture_default_str();
  sub->add_flag("--quiet", o->quiet, "no progress output");
  sub->callback([o] {
    o->m.format = data::parse_input_format(o->format);
    const Tokenizer tok = Tokenizer::load(o->tokenizer);
    data::Progress bar("shards", 5.0, !o->quiet);
    auto detail = [](uint64_t docs, uint64_t tokens) { return with_commas(docs) + " docs, " + with_commas(tokens) + " tokens"; };
    uint64_t last_done = 0, last_total = 0, last_docs = 0, last_tokens = 0;
    const auto r = data::make_shards(o->m, tok, [&](uint64_t done, uint64_t total, uint64_t docs, uint64_t tokens) {
      last_done = done, last_total = total, last_docs = docs, last_tokens = tokens;
      bar.update(done, total, detail(docs, tokens));
    });
    bar.finish(last_done, last_total, detail(last_docs, last_tokens));
    std::printf("val:   %s documents, %s tokens, %zu shard%s\n", with_commas(r.docs_val).c_str(),
                with_commas(r.tokens_val).c_str(), r.val_files.size(), r.val_files.size() == 1 ? "" : "s");
    std::printf("train: %s documents, %s tokens, %zu shard%s\n", with_commas(r.docs_train).c_str(),
                with_commas(r.tokens_train).c_str(), r.train_files.size(), r.train_files.size() == 1 ? "" : "s");
    for (const auto& f : r.val_files) std::printf("wrote %s\n", f.c_str());
    for (const auto& f : r.train_files) std::printf("wrote %s\n", f.c_str());
    for (const auto& f : r.removed_stale) std::printf("removed stale %s\n", f.c_str());
    if (r.docs_train == 0)
      std::fprintf(stderr, "ptool: warning: all %s documents went to the validation split (--val-docs %s); "
                           "no train shard was written\n",
                   with_commas(r.docs_val).c_str(), with_commas(o->m.val_docs).c_str());
  });
}

void add_tokenizer(CLI::App& data) {
  struct Opts {
    data::TrainTokenizerOptions t;
    std::string format = "auto";
    bool allow_no_space = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = data.add_subcommand("tokenizer", "train a SentencePiece BPE tokenizer with the challenge's settings");
  sub->footer(
      "Settings (REFERENCE.md 1.3): model_type=bpe character_coverage=0.999 byte_fallback=true split_digits=true\n"
      "normalization_rule_name=nmt_nfkc add_dummy_prefix=false pad 0 bos 1 eos 2 unk 3 hard_vocab_limit=false.\n"
      "Each document (text: blank-line separated; JSONL: field \"text\") is one training sentence; SentencePiece\n"
      "skips documents longer than --max-sentence-length bytes. Writes PREFIX.model and PREFIX.vocab.");
  sub->add_option("inputs", o->t.inputs, "corpus files")->required()->check(CLI::ExistingFile);
  sub->add_option("--vocab-size", o->t.vocab_size, "vocabulary size (a ceiling: hard_vocab_limit=false)")->required();
  sub->add_option("--out", o->t.out_prefix, "output prefix: writes PREFIX.model and PREFIX.vocab")->required();
  sub->add_option("--format", o->format, "input format: auto (.jsonl/.ndjson/.json are JSONL, else text), text, jsonl")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}))
      ->capture_default_str();
  sub->add_option("--input-sentence-size", o->t.input_sentence_size,
                  "documents SentencePiece samples for training (0: all)")
      ->capture_default_str();
  sub->add_option("--max-docs", o->t.max_documents, "read only the first N documents (0: all)")->capture_default_str();
  sub->add_option("--max-sentence-length", o->t.max_sentence_length,
                  "longest document in bytes the trainer accepts (SentencePiece default)")
      ->capture_default_str();
  sub->add_option("--threads", o->t.threads, "trainer threads (0: all cores)")->capture_default_str();
  sub->add_flag("--allow-no-space-piece", o->allow_no_space,
                "keep a vocabulary without a standalone \"\xE2\x96\x81\" piece (warn instead of failing)");
  sub->add_flag("--verbose", o->t.verbose, "show SentencePiece's training log");
  sub->callback([o] {
    o->t.format = data::parse_input_format(o->format);
    o->t.require_space_piece = !o->allow_no_space;
    const auto r = data::train_tokenizer(o->t);
    if (r.too_long)
      std::fprintf(stderr,
                   "ptool: warning: %s of %s documents are longer than %s bytes and were skipped by the trainer "
                   "(raise --max-sentence-length to use them)\n",
                   with_commas(r.too_long).c_str(), with_commas(r.sentences).c_str(),
                   with_commas(o->t.max_sentence_length).c_str());
    if (!r.has_space_piece)
      std::fprintf(stderr, "ptool: warning: the vocabulary has no standalone \"\xE2\x96\x81\" piece; spaces will cost "
                           "byte tokens\n");
    if (r.vocab_size != o->t.vocab_size)
      std::fprintf(stderr, "ptool: warning: the trained vocabulary has %u pieces (requested %u)\n", r.vocab_size,
                   o->t.vocab_size);
    std::printf("wrote %s (vocab %u, sha256 %s)\n", r.model_path.c_str(), r.vocab_size, r.sha256.c_str());
    std::printf("wrote %s\n", r.vocab_path.c_str());
    std::printf("documents: %s read, %s non-empty, %s trained on", with_commas(r.documents).c_str(),
                with_commas(r.sentences).c_str(), with_commas(r.sentences - r.too_long).c_str());
    if (o->t.input_sentence_size && o->t.input_sentence_size < r.sentences - r.too_long)
      std::printf(" (SentencePiece samples %s of them)", with_commas(o->t.input_sentence_size).c_str());
    std::printf("\n");
  });
}

}  // namespace

void add_data(CLI::App& app) {
  auto* data = app.add_subcommand("data", "token shards, tokenizers and statistics");
  data->require_subcommand(1);
  add_stats(*data);
  add_shards(*data);
  add_tokenizer(*data);
}

}  // namespace ptool::cmd

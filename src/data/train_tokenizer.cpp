#include "src/data/train_tokenizer.h"

#include <fcntl.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "formats/error.h"
#include "src/tokenizer.h"

namespace ptool::data {

namespace {

// Feeds documents to the SentencePiece trainer, prepared as download_hf_docs_and_tokenize.py does:
// NUL -> space, surrounding whitespace stripped, empty documents skipped.
class DocumentSentences : public sentencepiece::SentenceIterator {
 public:
  DocumentSentences(DocumentReader& reader, const TrainTokenizerOptions& opt, TrainTokenizerResult& r)
      : reader_(reader), opt_(opt), r_(r) {
    advance();
  }
  bool done() const override { return done_; }
  void Next() override { advance(); }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return status_; }
  const std::string& error() const { return error_; }

 private:
  void advance() {
    try {
      for (;;) {
        if (opt_.max_documents && r_.documents >= opt_.max_documents) {
          done_ = true;
          return;
        }
        if (!reader_.next(value_)) {
          done_ = true;
          return;
        }
        ++r_.documents;
        std::replace(value_.begin(), value_.end(), '\0', ' ');
        const auto b = value_.find_first_not_of(" \t\n\r\f\v");
        if (b == std::string::npos) continue;
        const auto e = value_.find_last_not_of(" \t\n\r\f\v");
        value_ = value_.substr(b, e - b + 1);
        ++r_.sentences;
        if (value_.size() > opt_.max_sentence_length) ++r_.too_long;
        return;
      }
    } catch (const std::exception& ex) {
      // The trainer sees a failed status; the message is rethrown as a ptool::Error afterwards.
      error_ = ex.what();
      status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kInternal, error_);
      done_ = true;
    }
  }

  DocumentReader& reader_;
  const TrainTokenizerOptions& opt_;
  TrainTokenizerResult& r_;
  std::string value_;
  bool done_ = false;
  sentencepiece::util::Status status_;
  std::string error_;
};

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(path + ": cannot create temporary file " + tmp + ": " + std::strerror(errno));
  const char* p = bytes.data();
  size_t n = bytes.size();
  bool ok = true;
  while (n > 0 && ok) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      ok = false;
      break;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  const int saved = errno;
  ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno ? errno : saved);
    ::unlink(tmp.c_str());
    throw Error(path + ": cannot write file: " + why);
  }
}

}  // namespace

std::vector<std::pair<std::string, std::string>> tokenizer_trainer_args(const TrainTokenizerOptions& opt) {
  const unsigned threads = opt.threads ? opt.threads : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::pair<std::string, std::string>> a = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"character_coverage", "0.999"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"normalization_rule_name", "nmt_nfkc"},
      {"add_dummy_prefix", "false"},
      {"pad_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"unk_id", "3"},
      {"hard_vocab_limit", "false"},
      {"input_sentence_size", std::to_string(opt.input_sentence_size)},
      {"max_sentence_length", std::to_string(opt.max_sentence_length)},
      {"num_threads", std::to_string(threads)},
      {"minloglevel", opt.verbose ? "0" : "2"},  // ptool reports skipped documents itself
  };
  return a;
}

TrainTokenizerResult train_tokenizer(const TrainTokenizerOptions& opt) {
  if (opt.vocab_size < 8) throw Error("--vocab-size " + std::to_string(opt.vocab_size) + " is too small");
  if (opt.vocab_size > 65536)
    throw Error("--vocab-size " + std::to_string(opt.vocab_size) + " does not fit uint16 token shards (at most 65536)");
  if (opt.out_prefix.empty()) throw Error("no output prefix given");
  TrainTokenizerResult r;
  r.model_path = opt.out_prefix + ".model";
  r.vocab_path = opt.out_prefix + ".vocab";

  DocumentReader reader(opt.inputs, opt.format);
  DocumentSentences sentences(reader, opt, r);
  std::unordered_map<std::string, std::string> kwargs;
  for (const auto& [k, v] : tokenizer_trainer_args(opt)) kwargs[k] = v;
  std::string serialized;
  const auto st = sentencepiece::SentencePieceTrainer::Train(kwargs, &sentences, &serialized);
  if (!sentences.error().empty()) throw Error(sentences.error());
  if (!st.ok()) throw Error("SentencePiece training failed: " + st.ToString());
  if (r.sentences == 0) throw Error("no non-empty documents in the input files");

  Tokenizer tok = Tokenizer::from_bytes(serialized, r.model_path);
  r.vocab_size = tok.vocab_size();
  r.sha256 = tok.sha256();
  r.has_space_piece = tok.piece_to_id("\xE2\x96\x81") >= 0;
  if (!r.has_space_piece && opt.require_space_piece)
    throw Error("the trained vocabulary has no standalone \"\xE2\x96\x81\" piece, so every space would cost byte "
                "tokens and the challenge's byte count would be inflated (REFERENCE.md §2.1); use more or other "
                "training text, or pass --allow-no-space-piece");

  std::ostringstream vocab;
  for (uint32_t id = 0; id < tok.vocab_size(); ++id)
    vocab << tok.piece(id) << '\t' << tok.processor().GetScore(static_cast<int>(id)) << '\n';
  write_file_atomic(r.model_path, serialized);
  write_file_atomic(r.vocab_path, vocab.str());
  return r;
}

}  // namespace ptool::data

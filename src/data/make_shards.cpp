#include "src/data/make_shards.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <thread>

#include "formats/error.h"
#include "formats/shard.h"

namespace ptool::data {

namespace fs = std::filesystem;

namespace {

std::string shard_name(const std::string& prefix, const char* split, size_t index) {
  char num[32];
  std::snprintf(num, sizeof(num), "%06zu", index);
  return prefix + "_" + split + "_" + num + ".bin";
}

// Buffers tokens and writes full shards to staging files.
class ShardWriter {
 public:
  ShardWriter(const MakeShardsOptions& opt) : opt_(opt) { buf_.reserve(std::min<uint64_t>(opt.shard_tokens, 1u << 24)); }
  ~ShardWriter() {
    if (!committed_)
      for (const auto& s : staged_) {
        std::error_code ec;
        fs::remove(s.tmp, ec);
      }
  }

  void set_split(bool val) {
    if (val != val_) flush();
    val_ = val;
  }

  void append(std::span<const uint16_t> toks) {
    while (!toks.empty()) {
      const size_t take = std::min<uint64_t>(toks.size(), opt_.shard_tokens - buf_.size());
      buf_.insert(buf_.end(), toks.begin(), toks.begin() + static_cast<std::ptrdiff_t>(take));
      toks = toks.subspan(take);
      if (buf_.size() == opt_.shard_tokens) flush();
    }
  }

  void flush() {
    if (buf_.empty()) return;
    const char* split = val_ ? "val" : "train";
    size_t& index = val_ ? n_val_ : n_train_;
    const std::string final_path = (fs::path(opt_.out_dir) / shard_name(opt_.prefix, split, index)).string();
    const std::string tmp = (fs::path(opt_.out_dir) / ("." + shard_name(opt_.prefix, split, index) + ".partial")).string();
    staged_.push_back({tmp, final_path, val_});
    write_shard(tmp, buf_);
    ++index;
    buf_.clear();
  }

  // Renames every staged file into place and removes stale shards of the same prefix.
  void commit(MakeShardsResult& r) {
    flush();
    std::vector<std::string> finals;
    for (const auto& s : staged_) finals.push_back(s.final_path);
    for (const char* split : {"val", "train"}) {
      const std::string head = opt_.prefix + "_" + split + "_";
      for (const auto& e : fs::directory_iterator(opt_.out_dir)) {
        const std::string name = e.path().filename().string();
        if (name.size() != head.size() + 10 || name.compare(0, head.size(), head) != 0 || !name.ends_with(".bin"))
          continue;
        if (std::find(finals.begin(), finals.end(), e.path().string()) != finals.end()) continue;
        fs::remove(e.path());
        r.removed_stale.push_back(e.path().string());
      }
    }
    for (const auto& s : staged_) {
      std::error_code ec;
      fs::rename(s.tmp, s.final_path, ec);
      if (ec) throw Error(s.final_path + ": cannot rename staged shard into place: " + ec.message());
      (s.val ? r.val_files : r.train_files).push_back(s.final_path);
    }
    committed_ = true;
  }

 private:
  struct Staged {
    std::string tmp, final_path;
    bool val;
  };
  const MakeShardsOptions& opt_;
  std::vector<uint16_t> buf_;
  bool val_ = true;
  size_t n_val_ = 0, n_train_ = 0;
  std::vector<Staged> staged_;
  bool committed_ = false;
};

// Encodes a batch of documents on several threads; out[i] = BOS + ids(docs[i]).
void encode_batch(const Tokenizer& tok, const std::vector<std::string>& docs, std::vector<std::vector<uint16_t>>& out,
                  unsigned threads) {
  out.resize(docs.size());
  const auto bos = static_cast<uint16_t>(tok.bos_id());
  std::vector<std::exception_ptr> errors(threads);
  auto work = [&](unsigned t) {
    try {
      for (size_t i = t; i < docs.size(); i += threads) {
        const auto ids = tok.encode(docs[i]);
        auto& o = out[i];
        o.clear();
        o.reserve(ids.size() + 1);
        o.push_back(bos);
        for (uint32_t id : ids) o.push_back(static_cast<uint16_t>(id));
      }
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  if (threads <= 1 || docs.size() < 2) {
    errors.resize(1);
    threads = 1;
    work(0);
  } else {
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back(work, t);
    for (auto& th : pool) th.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace

MakeShardsResult make_shards(const MakeShardsOptions& opt, const Tokenizer& tok, const ShardsProgressFn& progress) {
  if (opt.shard_tokens == 0) throw Error("--shard-tokens must be positive");
  if (opt.shard_tokens > kShardMaxTokens)
    throw Error("--shard-tokens " + std::to_string(opt.shard_tokens) + " exceeds the shard format's limit of " +
                std::to_string(kShardMaxTokens) + " tokens");
  if (opt.prefix.empty() || opt.prefix.find('/') != std::string::npos)
    throw Error("--prefix '" + opt.prefix + "' must be a non-empty file name without '/'");
  if (tok.bos_id() < 0) throw Error(tok.path() + ": the tokenizer has no BOS piece, which every document needs");
  if (opt.out_dir.empty()) throw Error("no output folder given");
  std::error_code ec;
  fs::create_directories(opt.out_dir, ec);
  if (ec) throw Error(opt.out_dir + ": cannot create output folder: " + ec.message());

  DocumentReader reader(opt.inputs, opt.format);
  const unsigned threads = opt.threads ? opt.threads : std::max(1u, std::thread::hardware_concurrency());
  // Batches of about 1 MB of text per thread keep every thread busy and memory small.
  const size_t batch_bytes = size_t{1} << 20;
  const size_t batch_text = batch_bytes * threads;

  MakeShardsResult r;
  ShardWriter writer(opt);
  std::vector<std::string> docs;
  std::vector<std::vector<uint16_t>> encoded;
  uint64_t doc_index = 0;
  bool eof = false;
  while (!eof) {
    docs.clear();
    size_t text = 0;
    std::string doc;
    while (text < batch_text) {
      if (!reader.next(doc)) {
        eof = true;
        break;
      }
      text += doc.size() + 1;
      docs.push_back(std::move(doc));
      doc = std::string();
    }
    encode_batch(tok, docs, encoded, threads);
    for (size_t i = 0; i < docs.size(); ++i, ++doc_index) {
      const bool val = doc_index < opt.val_docs;
      writer.set_split(val);
      writer.append(encoded[i]);
      (val ? r.docs_val : r.docs_train) += 1;
      (val ? r.tokens_val : r.tokens_train) += encoded[i].size();
    }
    if (progress) progress(reader.bytes_read(), reader.total_bytes(), doc_index, r.tokens_val + r.tokens_train);
  }
  if (doc_index == 0) throw Error("no documents found in the input files (" + std::to_string(opt.inputs.size()) + " files)");
  writer.commit(r);
  return r;
}

}  // namespace ptool::data

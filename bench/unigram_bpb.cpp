// The unigram level of a validation set: bits per byte of a model that predicts every token from its
// frequency alone (fitted on the training shards with add-one smoothing, and on the validation set itself,
// which no unigram model can beat). The floor a trained model must go well below.
//   unigram_bpb --train 'train_*.bin' --val 'val_*.bin' --tokenizer m.model [--json]
#include <cmath>
#include <cstdio>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "formats/shard.h"
#include "src/tokenizer.h"

using namespace ptool;

int main(int argc, char** argv) {
  CLI::App app{"unigram bits per byte of a validation set"};
  std::string train_glob, val_glob, tok_path;
  bool json = false;
  app.add_option("--train", train_glob)->required();
  app.add_option("--val", val_glob)->required();
  app.add_option("--tokenizer", tok_path)->required();
  app.add_flag("--json", json);
  CLI11_PARSE(app, argc, argv);
  try {
    Tokenizer tok = Tokenizer::load(tok_path);
    const uint32_t V = tok.vocab_size();
    auto luts = build_byte_luts(tok, V);
    std::vector<double> train_count(V, 1.0), val_count(V, 0.0);  // add-one smoothing for the train fit
    for (auto& f : expand_glob(train_glob)) {
      auto s = Shard::open(f);
      s.check_vocab(V);
      for (uint16_t t : s.tokens()) train_count[t] += 1;
    }
    auto val = load_tokens(val_glob);
    for (size_t i = 1; i < val.size(); ++i) val_count[val[i]] += 1;
    double train_total = 0, val_total = 0;
    for (uint32_t v = 0; v < V; ++v) {
      train_total += train_count[v];
      val_total += val_count[v];
    }
    double nll_train_fit = 0, nll_val_fit = 0;
    for (size_t i = 1; i < val.size(); ++i) {
      nll_train_fit -= std::log(train_count[val[i]] / train_total);
      nll_val_fit -= std::log(val_count[val[i]] / val_total);
    }
    const double bytes = static_cast<double>(count_target_bytes(luts, std::span<const uint16_t>(val)));
    const double bpb_train = nll_train_fit / (std::log(2.0) * bytes), bpb_val = nll_val_fit / (std::log(2.0) * bytes);
    if (json) {
      std::printf("%s\n", nlohmann::json{{"targets", val.size() - 1}, {"bytes", bytes},
                                         {"unigram_bpb_train_fit", bpb_train}, {"unigram_bpb_val_fit", bpb_val}}
                              .dump()
                              .c_str());
    } else {
      std::printf("targets %zu bytes %.0f unigram bpb: %.4f (fitted on train), %.4f (fitted on val itself)\n",
                  val.size() - 1, bytes, bpb_train, bpb_val);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unigram_bpb: error: %s\n", e.what());
    return 1;
  }
}

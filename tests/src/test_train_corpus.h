// A small learnable training corpus (two train shards, one val shard, the project's tokenizer) and the micro
// model and quick options that the trainer tests run; shared by tests/src and the GPU tests in tests/kernels.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "formats/shard.h"
#include "src/model/config.h"
#include "src/train/trainer.h"

namespace ptool_test {

using namespace ptool;

// The project's own small tokenizer (testdata/README.md says how it is made).
inline std::string test_tokenizer() { return std::string(PTOOL_SOURCE_DIR) + "/testdata/tiny_sp.model"; }

struct Corpus {
  std::filesystem::path dir;
  train::TrainInputs in;
  explicit Corpus(const std::string& name) {
    dir = std::filesystem::temp_directory_path() / ("ptool_trainer_" + name + "_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    // A learnable stream: a repeating pattern with noise, ids below the tokenizer's vocabulary.
    std::mt19937 rng(11);
    std::vector<uint16_t> train(20000), val(2000);
    for (size_t i = 0; i < train.size(); ++i) train[i] = static_cast<uint16_t>(rng() % 8 == 0 ? 1 : 4 + (i % 17));
    for (size_t i = 0; i < val.size(); ++i) val[i] = static_cast<uint16_t>(rng() % 8 == 0 ? 1 : 4 + (i % 17));
    write_shard((dir / "x_train_000000.bin").string(), std::span<const uint16_t>(train).first(12000));
    write_shard((dir / "x_train_000001.bin").string(), std::span<const uint16_t>(train).subspan(12000));
    write_shard((dir / "x_val_000000.bin").string(), val);
    in.train_files = expand_glob((dir / "x_train_*.bin").string());
    in.val_files = {(dir / "x_val_000000.bin").string()};
    in.tokenizer_path = test_tokenizer();
  }
  ~Corpus() { std::filesystem::remove_all(dir); }
};

inline model::ModelConfig micro() {
  auto c = model::preset("tiny");
  c.vocab_size = 512;
  c.d_model = 32;
  c.train_seq_len = 32;
  return c;
}

inline train::TrainOptions quick(int64_t steps) {
  train::TrainOptions o;
  o.steps = steps;
  o.batch_tokens = 256;
  o.warmdown_iters = 4;
  o.val_tokens = 512;
  o.deterministic_time = true;
  o.ema_decay = 0.9;
  return o;
}

}  // namespace ptool_test

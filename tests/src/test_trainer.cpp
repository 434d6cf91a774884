#include <catch2/catch.hpp>

#include <filesystem>
#include <random>

#include "formats/artifact.h"
#include "formats/error.h"
#include "formats/shard.h"
#include "src/model/load.h"
#include "src/ops/bf16.h"
#include "src/train/trainer.h"
#include "tests/src/test_train_corpus.h"

using namespace ptool;
using namespace ptool_test;
namespace fs = std::filesystem;

namespace {

std::vector<float> weights_of(const std::string& path) { return model::load_model(path).weights; }

// How many of a checkpoint record's values are not bfloat16 values.
int64_t off_bf16_grid(const Artifact& a, const std::string& name) {
  const TensorRecord* r = a.find(name);
  REQUIRE(r != nullptr);
  int64_t off = 0;
  for (float v : model::tensor_values(*r)) off += !is_bf16_value(v);
  return off;
}

}  // namespace

TEST_CASE("resume continues bit-exactly: 2N steps equal N + resume + N", "[train][resume]") {
  Corpus corpus("resume");
  auto cfg = micro();
  cfg.embed_bf16 = true;  // its rounded weights and moments must come back exactly too
  // One straight run of 8 steps that writes a checkpoint every 4; the step-4 file is copied aside when
  // step 5 is logged (before the step-8 write replaces it).
  auto straight = corpus.in;
  straight.out_path = (corpus.dir / "straight.ptc").string();
  auto opt = quick(8);
  opt.checkpoint_every = 4;
  opt.log_every = 1;
  train::TrainCallbacks cb;
  cb.on_step = [&](const train::StepLog& s) {
    if (s.step == 5) fs::copy_file(straight.out_path, corpus.dir / "step4.ptc");
  };
  auto a = train::train(cfg, opt, straight, cb);

  auto resumed = corpus.in;
  resumed.out_path = (corpus.dir / "resumed.ptc").string();
  resumed.resume_path = (corpus.dir / "step4.ptc").string();
  auto c = train::train(cfg, opt, resumed);

  REQUIRE(a.losses.size() == 8);
  REQUIRE(c.losses.size() == 4);
  for (int i = 0; i < 4; ++i) CHECK(c.losses[i] == a.losses[4 + i]);
  CHECK(weights_of(straight.out_path) == weights_of(resumed.out_path));
  CHECK(c.val_loss == a.val_loss);
}

TEST_CASE("training lowers the loss on a learnable stream", "[train]") {
  Corpus corpus("learn");
  auto opt = quick(30);
  opt.warmdown_iters = 10;
  opt.ema_decay = 0;
  auto in = corpus.in;
  in.out_path = (corpus.dir / "m.ptc").string();
  auto r = train::train(micro(), opt, in);
  REQUIRE(r.losses.size() == 30);
  CHECK(r.losses.back() < r.losses.front() - 1.0);
  // The checkpoint carries the config, the tokenizer identity and the provenance.
  auto art = read_artifact(in.out_path);
  CHECK(art.stage == Stage::checkpoint);
  CHECK(art.metadata.at("tokenizer").at("sha256").get<std::string>().size() == 64);
  CHECK(art.metadata.at("provenance").at("train_files").size() == 2);
}

TEST_CASE("QAT trains through the STE and EMA/SWA replace the final weights", "[train][qat]") {
  Corpus corpus("qat");
  auto opt = quick(6);
  opt.qat_bits = 6;
  opt.ema_decay = 0;
  opt.swa_every = 2;
  opt.swa_start = 2.0;
  auto in = corpus.in;
  in.out_path = (corpus.dir / "q.ptc").string();
  auto r = train::train(micro(), opt, in);
  CHECK(r.losses.size() == 6);
  auto art = read_artifact(in.out_path);
  CHECK(art.find("swa/tok_emb.weight") != nullptr);
  CHECK(art.find("train/tok_emb.weight") != nullptr);
}

TEST_CASE("embed_bf16 training keeps tok_emb and its Adam moments in bf16, through EMA too", "[train]") {
  Corpus corpus("embed_bf16");
  for (bool bf16 : {false, true}) {
    INFO("embed_bf16 " << bf16);
    auto cfg = micro();
    cfg.embed_bf16 = bf16;
    auto in = corpus.in;
    in.out_path = (corpus.dir / (bf16 ? "bf16.ptc" : "fp32.ptc")).string();
    train::train(cfg, quick(4), in);  // EMA 0.9: the final weights are an fp32 average
    const Artifact a = read_artifact(in.out_path);
    for (const char* name : {"tok_emb.weight", "train/tok_emb.weight", "adam_m/tok_emb.weight",
                             "adam_v/tok_emb.weight"}) {
      INFO(name);
      if (bf16)
        CHECK(off_bf16_grid(a, name) == 0);
      else
        CHECK(off_bf16_grid(a, name) > 1000);  // so the check above can fail
    }
    CHECK(off_bf16_grid(a, "blocks.0.attn.c_q.weight") > 1000);  // the fp32 masters stay fp32
    CHECK(off_bf16_grid(a, "ema/tok_emb.weight") > 1000);        // the EMA shadow is fp32, as in the reference
  }
}

TEST_CASE("a NaN loss stops training with a clear message", "[train]") {
  Corpus corpus("nan");
  auto opt = quick(5);
  opt.matrix_lr = 1e30;
  opt.scalar_lr = 1e30;
  opt.tied_embed_lr = 1e30;
  auto in = corpus.in;
  in.out_path = (corpus.dir / "nan.ptc").string();
  CHECK_THROWS_WITH(train::train(micro(), opt, in), Catch::Contains("training stopped"));
  CHECK_FALSE(fs::exists(in.out_path));
}

TEST_CASE("bad training inputs are refused before any work", "[train]") {
  Corpus corpus("bad");
  auto opt = quick(2);
  opt.batch_tokens = 100;  // not a multiple of seq_len
  CHECK_THROWS_WITH(train::train(micro(), opt, corpus.in), Catch::Contains("multiple of"));
  auto cfg = micro();
  cfg.vocab_size = 16;  // shards hold ids up to 20
  CHECK_THROWS_WITH(train::train(cfg, quick(2), corpus.in), Catch::Contains("is not below the vocabulary size 16"));
}

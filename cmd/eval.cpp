#include <cstdio>

#include "cmd/commands.h"
#include "cmd/progress.h"
#include "formats/error.h"
#include "formats/shard.h"
#include "src/eval/evaluate.h"
#include "src/model/load.h"
#include "src/ops/device.h"
#include "src/tokenizer.h"

namespace ptool::cmd {

namespace {

struct EvalArgs {
  std::string model, val_glob, tokenizer, device = "cpu";
  int64_t seq_len = 0, stride = 0, batch_seqs = 16, max_tokens = 0;
  bool ttt = false, json = false, ignore_tokenizer_mismatch = false;
  eval::TttOptions ttt_opt;
};

void run_eval(const EvalArgs& a) {
  auto lm = model::load_model(a.model);
  Tokenizer tok = Tokenizer::load(a.tokenizer);
  if (!lm.tokenizer_sha256.empty() && lm.tokenizer_sha256 != tok.sha256() && !a.ignore_tokenizer_mismatch)
    throw Error(a.model + " was trained with tokenizer sha256 " + lm.tokenizer_sha256.substr(0, 12) + "…, but " +
                a.tokenizer + " is " + tok.sha256().substr(0, 12) + "… (--ignore-tokenizer-mismatch to go on)");
  const auto luts = build_byte_luts(tok, static_cast<uint32_t>(lm.config.vocab_size));
  std::vector<uint16_t> val;
  for (auto& f : expand_glob(a.val_glob)) {
    Shard s = Shard::open(f);
    s.check_vocab(static_cast<uint32_t>(lm.config.vocab_size));
    val.insert(val.end(), s.tokens().begin(), s.tokens().end());
  }
  if (a.max_tokens > 0 && static_cast<int64_t>(val.size()) > a.max_tokens + 1) val.resize(a.max_tokens + 1);
  const int64_t L = a.seq_len > 0 ? a.seq_len : lm.config.train_seq_len;

  auto backend = make_backend(a.device);
  model::Model<float> m(lm.config, *backend);
  m.load_params(lm.weights.data());
  ProgressBar bar(a.ttt ? "ttt" : "eval");
  auto progress = [&](int64_t done, int64_t total) { bar.update(done, total); };
  eval::EvalResult r;
  std::string mode;
  if (a.ttt) {
    mode = "ttt";
    r = eval::eval_ttt(m, val, L, a.stride > 0 ? a.stride : 64, luts, a.batch_seqs, a.ttt_opt, nullptr, progress);
  } else if (a.stride > 0) {
    mode = "sliding";
    r = eval::eval_sliding(m, val, L, a.stride, luts, a.batch_seqs, progress);
  } else {
    mode = "standard";
    r = eval::eval_standard(m, val, L, luts, a.batch_seqs, progress);
  }
  bar.finish();
  if (a.json) {
    nlohmann::json j = {{"val_loss", r.val_loss()}, {"val_bpb", r.val_bpb()}, {"tokens", r.tokens},
                        {"bytes", r.bytes},         {"seconds", r.seconds},   {"mode", mode},
                        {"seq_len", L},             {"stage", std::string(stage_name(lm.stage))}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("mode:%s seq_len:%lld val_loss:%.8f val_bpb:%.8f tokens:%llu bytes:%llu seconds:%.2f\n", mode.c_str(),
                static_cast<long long>(L), r.val_loss(), r.val_bpb(), static_cast<unsigned long long>(r.tokens),
                static_cast<unsigned long long>(r.bytes), r.seconds);
  }
}

}  // namespace

void add_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* c = app.add_subcommand("eval", "evaluate val_loss and val_bpb of any artifact (checkpoint, quantized, packed)");
  c->add_option("model", a->model, "artifact to evaluate")->required();
  c->add_option("--val", a->val_glob, "validation shards (glob)")->required();
  c->add_option("--tokenizer", a->tokenizer, "SentencePiece .model (its byte table gives the bytes)")->required();
  c->add_option("--seq-len", a->seq_len, "window length (0: the model's train_seq_len; longer uses NTK RoPE)")
      ->capture_default_str();
  c->add_option("--stride", a->stride, "sliding-window stride (0: standard non-overlapping eval)")
      ->capture_default_str();
  c->add_option("--batch-seqs", a->batch_seqs, "windows per forward pass")->capture_default_str();
  c->add_option("--max-tokens", a->max_tokens, "evaluate only the first N targets (0: all)")->capture_default_str();
  c->add_option("--device", a->device, kDeviceHelp)->capture_default_str();
  c->add_flag("--json", a->json, "print one JSON object: val_loss, val_bpb, tokens, bytes, seconds");
  c->add_flag("--ignore-tokenizer-mismatch", a->ignore_tokenizer_mismatch,
              "evaluate even if the tokenizer differs from the one recorded in the artifact");
  c->add_flag("--ttt", a->ttt, "score-first test-time training over chunks (uses --stride, default 64)");
  c->add_option("--ttt-chunk", a->ttt_opt.chunk_tokens, "TTT chunk size in tokens")->capture_default_str();
  c->add_option("--ttt-epochs", a->ttt_opt.epochs, "TTT epochs per chunk")->capture_default_str();
  c->add_option("--ttt-lr", a->ttt_opt.lr, "TTT SGD learning rate (cosine across chunks)")->capture_default_str();
  c->add_option("--ttt-momentum", a->ttt_opt.momentum, "TTT SGD momentum")->capture_default_str();
  c->add_option("--ttt-clip", a->ttt_opt.grad_clip, "TTT gradient-norm clip")->capture_default_str();
  c->add_option("--ttt-batch-seqs", a->ttt_opt.batch_seqs, "TTT sequences per step")->capture_default_str();
  c->add_option("--ttt-freeze-blocks", a->ttt_opt.freeze_blocks, "TTT keeps the embedding and the first N blocks fixed")
      ->capture_default_str();
  c->callback([a] { run_eval(*a); });
}

}  // namespace ptool::cmd

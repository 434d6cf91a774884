#include <cstdio>

#include "cmd/commands.h"
#include "cmd/model_config.h"
#include "cmd/progress.h"
#include "formats/error.h"
#include "formats/shard.h"
#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/ops/device.h"
#include "src/train/trainer.h"

namespace ptool::cmd {

namespace {

struct TrainArgs {
  ModelConfigArgs model;
  std::string train_glob, val_glob, tokenizer, out = "model.ptc", resume, device = "cpu";
  bool json = false;
  train::TrainOptions opt;
  std::vector<std::string> argv;
};

void run_train(TrainArgs& a) {
  const model::ModelConfig cfg = resolve_model_config(a.model);
  train::TrainInputs in;
  in.train_files = expand_glob(a.train_glob);
  in.val_files = expand_glob(a.val_glob);
  in.tokenizer_path = a.tokenizer;
  in.out_path = a.out;
  in.resume_path = a.resume;
  in.command_line = a.argv;
  a.opt.device = a.device;

  ProgressBar bar("train");
  train::TrainCallbacks cb;
  cb.on_step = [&](const train::StepLog& s) {
    bar.clear();
    if (!a.json)
      std::printf("step:%lld/%lld train_loss:%.4f train_time:%.0fms step_avg:%.2fms tok/s:%.0f\n",
                  static_cast<long long>(s.step), static_cast<long long>(s.total), s.train_loss, s.train_ms,
                  s.step_avg_ms, s.tokens_per_s);
    std::fflush(stdout);
    bar.update(s.step, s.total, "loss " + std::to_string(s.train_loss).substr(0, 6));
  };
  cb.on_val = [&](const train::ValLog& v) {
    bar.clear();
    if (!a.json)
      std::printf("step:%lld val_loss:%.4f val_bpb:%.4f\n", static_cast<long long>(v.step), v.val_loss, v.val_bpb);
    std::fflush(stdout);
  };
  cb.on_note = [&](const std::string& n) {
    bar.clear();
    std::fprintf(stderr, "%s\n", n.c_str());
  };
  if (!a.json)
    std::printf("model: %lld virtual layers over %lld blocks, d_model %lld, params %lld\n",
                static_cast<long long>(cfg.virtual_layers()), static_cast<long long>(cfg.physical_blocks),
                static_cast<long long>(cfg.d_model), static_cast<long long>(model::make_layout(cfg).total));
  auto r = train::train(cfg, a.opt, in, cb);
  bar.finish();
  if (a.json) {
    nlohmann::json curve = nlohmann::json::array();
    for (auto& v : r.val_curve) curve.push_back({{"step", v.step}, {"val_loss", v.val_loss}, {"val_bpb", v.val_bpb}});
    nlohmann::json j = {{"steps", r.steps_done},          {"train_seconds", r.train_seconds},
                        {"train_loss", r.final_train_loss}, {"val_loss", r.val_loss},
                        {"val_bpb", r.val_bpb},           {"val_tokens", r.val_tokens},
                        {"val_bytes", r.val_bytes},       {"val_curve", curve},
                        {"out", a.out}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("final val_loss:%.4f val_bpb:%.4f steps:%lld train_time:%.1fs -> %s\n", r.val_loss, r.val_bpb,
                static_cast<long long>(r.steps_done), r.train_seconds, a.out.c_str());
  }
}

}  // namespace

void add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* c = app.add_subcommand("train", "train a model from token shards into a float checkpoint");
  add_model_config_options(*c, a->model);
  c->add_option("--train", a->train_glob, "training shards (glob)")->required();
  c->add_option("--val", a->val_glob, "validation shards (glob)")->required();
  c->add_option("--tokenizer", a->tokenizer, "SentencePiece .model the shards were made with")->required();
  c->add_option("--out", a->out, "output checkpoint")->capture_default_str();
  c->add_option("--resume", a->resume, "continue training from this checkpoint (bit-exact)");
  c->add_option("--device", a->device, kDeviceHelp)->capture_default_str();
  c->add_flag("--json", a->json, "print one JSON summary instead of log lines");
  auto& o = a->opt;
  c->add_option("--steps", o.steps, "training steps")->capture_default_str();
  c->add_option("--max-seconds", o.max_seconds, "wall-clock cap on training time (0: none)")->capture_default_str();
  c->add_option("--batch-tokens", o.batch_tokens, "tokens per optimizer step")->capture_default_str();
  c->add_option("--seq-len", o.seq_len, "training sequence length (0: the model's train_seq_len)")->capture_default_str();
  c->add_option("--grad-accum", o.grad_accum, "micro-batches per step")->capture_default_str();
  c->add_option("--seed", o.seed, "initialisation seed")->capture_default_str();
  c->add_option("--matrix-lr", o.matrix_lr, "Muon learning rate")->capture_default_str();
  c->add_option("--scalar-lr", o.scalar_lr, "Adam learning rate of scalars")->capture_default_str();
  c->add_option("--tied-embed-lr", o.tied_embed_lr, "Adam learning rate of the tied embedding")->capture_default_str();
  c->add_option("--embed-lr", o.embed_lr, "Adam learning rate of an untied embedding")->capture_default_str();
  c->add_option("--head-lr", o.head_lr, "Adam learning rate of an untied head")->capture_default_str();
  c->add_option("--muon-momentum", o.muon_momentum, "Muon momentum after warm-up")->capture_default_str();
  c->add_option("--muon-momentum-start", o.muon_momentum_start, "Muon momentum at step 0")->capture_default_str();
  c->add_option("--muon-momentum-warmup", o.muon_momentum_warmup, "steps of momentum warm-up")->capture_default_str();
  c->add_option("--ns-steps", o.ns_steps, "Newton-Schulz iterations")->capture_default_str();
  c->add_flag("--muon-row-normalize", o.muon_row_normalize, "MuonEq-R: normalise update rows before NS");
  c->add_flag("--muon-bf16", o.muon_bf16,
              "Newton-Schulz in bf16 with fp32 accumulation, as the reference runs it (fp32 when off)");
  c->add_option("--muon-wd", o.muon_wd, "Muon decoupled weight decay")->capture_default_str();
  c->add_option("--adam-wd", o.adam_wd, "AdamW decoupled weight decay")->capture_default_str();
  c->add_option("--warmdown-iters", o.warmdown_iters, "linear warmdown length in steps")->capture_default_str();
  c->add_option("--warmdown-frac", o.warmdown_frac, "warmdown as a fraction of the run (overrides iters if > 0)")
      ->capture_default_str();
  c->add_option("--min-lr", o.min_lr, "floor of the lr multiplier in the fraction form")->capture_default_str();
  c->add_option("--grad-clip", o.grad_clip, "global gradient-norm clip (0: off)")->capture_default_str();
  c->add_option("--ema", o.ema_decay, "EMA decay (0: off), e.g. 0.997")->capture_default_str();
  c->add_option("--swa-every", o.swa_every, "SWA checkpoint interval in steps (0: off)")->capture_default_str();
  c->add_option("--swa-start", o.swa_start, "SWA collects once lr_mul falls below this")->capture_default_str();
  c->add_option("--qat-bits", o.qat_bits, "QAT: STE fake-quant bits of block matrices (0: off; 6 = int6)")
      ->capture_default_str();
  c->add_option("--qat-start", o.qat_start, "QAT switches on once lr_mul < this (>= 1: from step 0)")
      ->capture_default_str();
  c->add_option("--val-every", o.val_every, "validate every N steps (0: only at the end)")->capture_default_str();
  c->add_option("--val-tokens", o.val_tokens, "validate on the first N tokens (0: all)")->capture_default_str();
  c->add_option("--log-every", o.log_every, "log a line every N steps")->capture_default_str();
  c->add_option("--checkpoint-every", o.checkpoint_every, "write --out every N steps (0: only at the end)")
      ->capture_default_str();
  c->callback([a] {
    a->argv = invocation();
    run_train(*a);
  });
}

}  // namespace ptool::cmd

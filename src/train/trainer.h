// The training loop (REFERENCE.md §3.3, §4): the reference's deterministic token stream, Muon for block
// matrices and Adam for embeddings and scalars, warmdown by steps or wall clock, clipping, EMA/SWA, QAT
// with the quantizer's own fake-quant, periodic validation, checkpoints that resume bit-exactly.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/train/param_store.h"

namespace ptool::train {

struct TrainOptions {
  int64_t steps = 200;               // iterations (the wall clock may stop training earlier)
  double max_seconds = 0;            // 0: no wall-clock cap
  int64_t batch_tokens = 8192;       // global tokens per optimizer step
  int64_t seq_len = 0;               // 0: the model's train_seq_len
  int64_t grad_accum = 1;            // micro-batches per step
  uint64_t seed = 1337;
  // Learning rates (REFERENCE.md §3.3).
  double matrix_lr = 0.04, scalar_lr = 0.04, tied_embed_lr = 0.05, embed_lr = 0.6, head_lr = 0.008;
  double muon_momentum = 0.95, muon_momentum_start = 0.85;
  int64_t muon_momentum_warmup = 500;
  int ns_steps = 5;
  bool muon_row_normalize = false;
  bool muon_bf16 = false;            // Newton-Schulz in bf16 like the reference (fast on a GPU); false: fp32
  double muon_wd = 0, adam_wd = 0;
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  int64_t warmdown_iters = 1200;     // baseline warmdown (steps, or the wall-clock estimate under a cap)
  double warmdown_frac = 0;          // > 0: the wall-clock-fraction form instead
  double min_lr = 0;
  double grad_clip = 0;              // 0: off
  double ema_decay = 0;              // 0: off; the EMA replaces the weights at the end
  int64_t swa_every = 0;             // 0: off; the SWA average replaces the weights at the end
  double swa_start = 0.5;            // lr_mul threshold below which SWA collects
  int qat_bits = 0;                  // 0: off; 6 or 8: STE fake-quant of block matrices in the forward
  double qat_start = 1.0;            // QAT switches on once lr_mul < qat_start (>= 1: from step 0)
  int64_t val_every = 0;             // 0: only at the end
  int64_t val_tokens = 0;            // 0: the whole validation set
  int64_t val_batch_seqs = 16;
  int64_t log_every = 10;
  int64_t checkpoint_every = 0;      // 0: only at the end
  bool deterministic_time = false;   // log timings but never let them change the schedule (tests)
  std::string device = "cpu";        // cpu | cuda

  nlohmann::json to_json() const;
  static TrainOptions from_json(const nlohmann::json& j);
};

struct TrainInputs {
  std::vector<std::string> train_files;  // sorted shard paths
  std::vector<std::string> val_files;
  std::string tokenizer_path;
  std::string out_path;                  // final checkpoint (float stage)
  std::string resume_path;               // "" or a checkpoint to continue
  std::vector<std::string> command_line;
};

struct StepLog {
  int64_t step = 0, total = 0;
  double train_loss = 0, lr_mul = 0, train_ms = 0, step_avg_ms = 0, tokens_per_s = 0;
};
struct ValLog {
  int64_t step = 0;
  double val_loss = 0, val_bpb = 0;
};

struct TrainResult {
  int64_t steps_done = 0;
  double train_seconds = 0;
  double final_train_loss = 0;
  double val_loss = 0, val_bpb = 0;
  uint64_t val_tokens = 0, val_bytes = 0;
  std::vector<ValLog> val_curve;
  std::vector<double> losses;            // every step's mean train loss
  bool stopped_on_nan = false;
};

struct TrainCallbacks {
  std::function<void(const StepLog&)> on_step;
  std::function<void(const ValLog&)> on_val;
  std::function<void(const std::string&)> on_note;
};

// The optimizer's view of a model's parameters: one slice per tensor, in layout order, with its group.
ParamStore make_param_store(const model::ParamLayout& layout);

TrainResult train(const model::ModelConfig& config, const TrainOptions& opt, const TrainInputs& in,
                  const TrainCallbacks& cb = {});

}  // namespace ptool::train

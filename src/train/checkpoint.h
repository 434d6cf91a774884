// Training checkpoints: the float stage of the artifact. Holds the weights (the EMA/SWA average at the end
// of a run), and for resume the raw weights, Muon momentum, Adam moments and step, EMA, SWA, the token
// stream position and the schedule clock, so `--resume` continues bit-exactly.
#pragma once
#include <string>
#include <vector>

#include "src/model/config.h"
#include "src/train/adam.h"
#include "src/train/muon.h"
#include "src/train/param_store.h"
#include "src/train/schedule.h"
#include "src/train/token_stream.h"
#include "src/train/trainer.h"

namespace ptool::train {

struct TrainState {
  int64_t step = 0;
  double elapsed_ms = 0;
  TokenStreamState stream;
  bool qat_announced = false;
};

struct CheckpointInfo {
  model::ModelConfig config;
  TrainOptions options;
  std::string tokenizer_sha256, tokenizer_path;
  std::vector<std::string> train_files, val_files, command_line;
};

// final_weights (nullptr: the raw weights) are what eval and quantize read.
void save_checkpoint(const std::string& path, const CheckpointInfo& info, const TrainState& st,
                     const ParamStore& params, const Muon& muon, const Adam& adam, const std::vector<float>& ema,
                     const Swa& swa, const float* final_weights);
// Restores everything save_checkpoint wrote; refuses a checkpoint of another model config.
TrainState load_checkpoint(const std::string& path, const model::ModelConfig& config, ParamStore& params, Muon& muon,
                           Adam& adam, std::vector<float>& ema, Swa& swa);

}  // namespace ptool::train

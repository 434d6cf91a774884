// `ptool quantize`: a float artifact in, a quantized artifact out. Each tensor's scheme comes from the
// first matching rule (src/quant/rules.h); GPTQ and Hessian-aware SDClip get Hessians from calibration
// (training shards or self-generated sequences).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "formats/artifact.h"
#include "src/model/load.h"
#include "src/quant/report.h"
#include "src/quant/rules.h"

namespace ptool::pipeline {

struct CalibrationOptions {
  std::vector<std::string> files;  // training shards; empty with generate_seqs == 0: no calibration
  int64_t batches = 16;
  int64_t seq_len = 0;             // 0: the model's train_seq_len
  int64_t batch_seqs = 8;
  int64_t generate_seqs = 0;       // > 0: sample this many sequences from the model instead of shards
  double temperature = 0.8;
  uint64_t seed = 42;
  std::string device = "cpu";      // backend of the calibration forward passes (src/ops/device.h)
};

// Fit to budget: the SDClip k of each tensor group (embed / attn / mlp / other) is chosen so that the packed
// model plus `code_bytes` lands just under `bytes` with the least sensitivity-weighted error (sensitivity =
// trace(H)/cols when Hessians exist, else 1). Only tensors whose rule clips by SDClip take part.
// The allocation works on order-0 entropy estimates; each attempt then quantizes the whole model (GPTQ
// included), packs it with `codec` and rescales the estimate target by budget / packed bytes, keeping the
// largest result that fits. `ptool pack --codec auto` never stores more than `codec` alone, so the packed
// artifact fits too.
struct FitOptions {
  double bytes = 0;                 // 0: off
  uint64_t code_bytes = 0;          // bytes of code that count against the budget
  std::string codec = "arith";      // the pack codec the fit measures with
  double tolerance = 0.01;          // done once the packed total is within this fraction under the budget
  int max_attempts = 6;
  double k_min = 4, k_max = 40;     // the k grid (geometric)
  int k_steps = 16;
};

struct QuantizeResult {
  Artifact artifact;                          // stage quantized
  std::vector<quant::TensorReport> reports;   // per tensor, in layout order
  double est_bytes = 0;                       // sum of estimated compressed bytes
  nlohmann::json fit;                         // the chosen k per group when fitting
};

using Log = std::function<void(const std::string&)>;

// True when some tensor's rule needs a Hessian (GPTQ or hsdclip).
bool needs_hessians(const model::LoadedModel& m, const quant::RuleSet& rules);

QuantizeResult quantize_model(const model::LoadedModel& m, const quant::RuleSet& rules, const CalibrationOptions& calib,
                              const FitOptions& fit = {}, const Log& log = {});

}  // namespace ptool::pipeline

// What a training step does after the backward pass: gradient clipping, Muon, Adam, EMA, SWA, and the QAT
// forward weights before it. Two implementations behind one interface:
// - host: gradients come down to the host, src/train's CPU optimizers run, the weights go back up (the
//   oracle; used for the CPU backend);
// - device (CUDA backend, kernels/cuda_optim.h): parameters, gradients, momentum, Adam moments, EMA and the SWA
//   sum stay on the GPU; the host copies in OptimizerState are refreshed only by sync_to_host() (checkpoints,
//   the end of training). No host sync inside step().
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "src/model/model.h"
#include "src/train/adam.h"
#include "src/train/muon.h"
#include "src/train/param_store.h"
#include "src/train/schedule.h"

namespace ptool::train {

// The optimizer state as checkpoints hold it (host memory).
struct OptimizerState {
  explicit OptimizerState(ParamStore p, bool ema_on, int64_t swa_every, double swa_start);
  ParamStore params;
  Muon muon;
  Adam adam;
  std::vector<float> ema;  // empty: EMA off
  Swa swa;
};

struct StepSettings {
  MuonConfig muon;
  AdamConfig adam;
  double grad_clip = 0;  // 0: off
  double ema_decay = 0;  // used when the state has an EMA
  bool swa_take = false;  // add the new weights to the SWA sum
};

class OptimizerStep {
 public:
  virtual ~OptimizerStep() = default;
  // The weights the forward pass should read under QAT: the parameters with every Muon matrix fake-quantized to
  // `bits` per row (quant::fake_quantize_rows), in backend memory, valid until the next call.
  virtual const float* fake_quantized_weights(int bits) = 0;
  // One optimizer step from the model's gradients; the model's parameters hold the new weights afterwards.
  virtual void step(const StepSettings& s) = 0;
  // Brings the host state (parameters, momentum, moments, EMA, SWA) up to date with the backend's.
  virtual void sync_to_host() = 0;
};

// Uploads state.params into the model and returns the step for its backend: the device implementation on a
// CUDA backend, the host one otherwise. `state` and `m` must outlive the result.
std::unique_ptr<OptimizerStep> make_optimizer_step(model::Model<float>& m, OptimizerState& state);
std::unique_ptr<OptimizerStep> make_host_optimizer_step(model::Model<float>& m, OptimizerState& state);
#ifdef PTOOL_HAVE_CUDA
// Throws ptool::Error unless m runs on a CUDA backend.
std::unique_ptr<OptimizerStep> make_device_optimizer_step(model::Model<float>& m, OptimizerState& state);
#endif

}  // namespace ptool::train

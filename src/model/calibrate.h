// GPTQ calibration: Hessians H = sum over batches of X^T X / n_batches for the input X of every linear layer
// (REFERENCE.md §5.5), from training tokens or from sequences the model samples itself. A looped block
// accumulates one H over all its visits; the tied embedding is calibrated on the final hidden states.
#pragma once
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "src/model/model.h"

namespace ptool::model {

struct Hessian {
  int64_t cols = 0;
  std::vector<double> H;   // cols x cols, row-major
  int64_t batches = 0;
};
using HessianMap = std::map<std::string, Hessian>;

// Runs `batches` forward passes of [batch_seqs, seq_len] over consecutive tokens and returns H per weight. On a
// CUDA backend H accumulates on the device (kernels/cuda_hessian.h) and is downloaded once; elsewhere on the host.
HessianMap collect_hessians(Model<float>& m, std::span<const uint16_t> tokens, int64_t seq_len, int64_t batch_seqs,
                            int64_t batches);

// Samples `n_seqs` sequences of `seq_len` tokens from the model at `temperature` (the first token uniform),
// with a fixed seed: the self-generated calibration set of the AR-GPTQ records.
std::vector<uint16_t> generate_calibration_tokens(Model<float>& m, int64_t n_seqs, int64_t seq_len, double temperature,
                                                  uint64_t seed);

}  // namespace ptool::model

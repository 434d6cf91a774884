// val_loss and val_bpb of a model over a token stream: standard, sliding window and score-first TTT
// (REFERENCE.md §2, §7). All sums are float64. bpb = total NLL / (ln 2 * total bytes).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "src/eval/windows.h"
#include "src/model/model.h"
#include "src/tokenizer.h"

namespace ptool::eval {

struct EvalResult {
  double nll_sum = 0;     // nats
  uint64_t tokens = 0;    // scored targets
  uint64_t bytes = 0;     // bytes of the scored targets by the challenge rule
  double seconds = 0;
  double val_loss() const { return tokens ? nll_sum / static_cast<double>(tokens) : 0.0; }
  double val_bpb() const;
};

struct TttOptions {
  int64_t chunk_tokens = 32768;
  int epochs = 3;
  double lr = 0.002;
  double momentum = 0.9;
  double grad_clip = 1.0;
  int64_t batch_seqs = 32;
  int64_t freeze_blocks = 0;   // physical blocks 0..freeze_blocks-1 (and the embedding) stay fixed
};

using Progress = std::function<void(int64_t done, int64_t total)>;

// Scores `windows` over `tokens` (targets are tokens[1..]); batches equal-length windows.
// Per-target losses are written to `per_target` (size tokens.size() - 1) when given.
EvalResult score_windows(model::Model<float>& m, std::span<const uint16_t> tokens, const std::vector<Window>& windows,
                         const ByteLuts& luts, int64_t batch_seqs, std::vector<double>* per_target = nullptr,
                         const Progress& progress = {});

EvalResult eval_standard(model::Model<float>& m, std::span<const uint16_t> tokens, int64_t seq_len,
                         const ByteLuts& luts, int64_t batch_seqs, const Progress& progress = {});
EvalResult eval_sliding(model::Model<float>& m, std::span<const uint16_t> tokens, int64_t seq_len, int64_t stride,
                        const ByteLuts& luts, int64_t batch_seqs, const Progress& progress = {});
// Score-first TTT (§7.3): each chunk's windows are scored before the model trains on that chunk; the
// last chunk is never trained on. Modifies the model's weights. Per-target losses as in score_windows.
EvalResult eval_ttt(model::Model<float>& m, std::span<const uint16_t> tokens, int64_t seq_len, int64_t stride,
                    const ByteLuts& luts, int64_t batch_seqs, const TttOptions& opt,
                    std::vector<double>* per_target = nullptr, const Progress& progress = {});

}  // namespace ptool::eval

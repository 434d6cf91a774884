#include "src/eval/evaluate.h"

#include <chrono>
#include <cmath>
#include <numbers>

#include "formats/error.h"
#include "src/eval/ttt_sgd.h"

namespace ptool::eval {

double EvalResult::val_bpb() const {
  return bytes ? nll_sum / (std::numbers::ln2 * static_cast<double>(bytes)) : 0.0;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

EvalResult score_windows(model::Model<float>& m, std::span<const uint16_t> tokens, const std::vector<Window>& windows,
                         const ByteLuts& luts, int64_t batch_seqs, std::vector<double>* per_target,
                         const Progress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  if (batch_seqs < 1) throw Error("eval batch must hold at least one sequence");
  if (per_target) per_target->assign(tokens.size() > 0 ? tokens.size() - 1 : 0, 0.0);
  EvalResult r;
  std::vector<int32_t> x, y;
  std::vector<double> losses;
  size_t i = 0;
  while (i < windows.size()) {
    // A batch of consecutive windows of equal length and scored suffix: only the suffix reaches the head.
    const int64_t len = windows[i].len, from = windows[i].score_from;
    size_t j = i;
    while (j < windows.size() && windows[j].len == len && windows[j].score_from == from &&
           static_cast<int64_t>(j - i) < batch_seqs)
      ++j;
    const int64_t B = static_cast<int64_t>(j - i), S = len - from;
    x.resize(B * len);
    y.resize(B * len);
    losses.resize(B * S);
    for (int64_t b = 0; b < B; ++b) {
      const Window& w = windows[i + b];
      if (w.start < 0 || w.start + w.len + 1 > static_cast<int64_t>(tokens.size()))
        throw Error("eval window runs past the end of the tokens");
      for (int64_t p = 0; p < len; ++p) {
        x[b * len + p] = tokens[w.start + p];
        y[b * len + p] = tokens[w.start + p + 1];
      }
    }
    m.forward(x.data(), y.data(), B, len, losses.data(), from);
    for (int64_t b = 0; b < B; ++b) {
      const Window& w = windows[i + b];
      for (int64_t p = from; p < len; ++p) {
        const int64_t k = b * len + p;
        const double loss = losses[b * S + (p - from)];
        r.nll_sum += loss;
        r.tokens += 1;
        r.bytes += luts.target_bytes(static_cast<uint32_t>(x[k]), static_cast<uint32_t>(y[k]));
        if (per_target) (*per_target)[w.start + p] = loss;
      }
    }
    i = j;
    if (progress) progress(static_cast<int64_t>(i), static_cast<int64_t>(windows.size()));
  }
  r.seconds = seconds_since(t0);
  return r;
}

EvalResult eval_standard(model::Model<float>& m, std::span<const uint16_t> tokens, int64_t seq_len,
                         const ByteLuts& luts, int64_t batch_seqs, const Progress& progress) {
  const int64_t n_targets = tokens.empty() ? 0 : static_cast<int64_t>(tokens.size()) - 1;
  auto w = standard_windows(n_targets, seq_len);
  if (w.empty()) throw Error("validation set has fewer than seq_len + 1 tokens");
  return score_windows(m, tokens, w, luts, batch_seqs, nullptr, progress);
}

EvalResult eval_sliding(model::Model<float>& m, std::span<const uint16_t> tokens, int64_t seq_len, int64_t stride,
                        const ByteLuts& luts, int64_t batch_seqs, const Progress& progress) {
  const int64_t n_targets = tokens.empty() ? 0 : static_cast<int64_t>(tokens.size()) - 1;
  return score_windows(m, tokens, sliding_windows(n_targets, seq_len, stride), luts, batch_seqs, nullptr, progress);
}

namespace {

// Which parameters TTT may change: everything but the embedding and the first `freeze` physical blocks.
std::vector<uint8_t> trainable_mask(const model::ParamLayout& L, int64_t freeze) {
  std::vector<uint8_t> mask(L.total, 1);
  if (freeze <= 0) return mask;
  for (auto& s : L.specs) {
    bool frozen = s.name == "tok_emb.weight";
    for (int64_t b = 0; b < freeze; ++b)
      if (s.name.rfind("blocks." + std::to_string(b) + ".", 0) == 0) frozen = true;
    if (frozen) std::fill(mask.begin() + s.offset, mask.begin() + s.offset + s.numel, 0);
  }
  return mask;
}

}  // namespace

EvalResult eval_ttt(model::Model<float>& m, std::span<const uint16_t> tokens, int64_t seq_len, int64_t stride,
                    const ByteLuts& luts, int64_t batch_seqs, const TttOptions& opt, std::vector<double>* per_target,
                    const Progress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  if (opt.chunk_tokens < 1) throw Error("TTT chunk size must be positive");
  const int64_t n_targets = tokens.empty() ? 0 : static_cast<int64_t>(tokens.size()) - 1;
  const auto windows = sliding_windows(n_targets, seq_len, stride);
  const int64_t C = opt.chunk_tokens;
  const int64_t n_chunks = (n_targets + C - 1) / C;
  std::vector<std::vector<Window>> by_chunk(n_chunks);
  for (auto& w : windows) by_chunk[(w.start + w.score_from) / C].push_back(w);

  const auto sgd = make_ttt_sgd(m, trainable_mask(m.layout(), opt.freeze_blocks), opt.momentum, opt.grad_clip);
  std::vector<int32_t> x, y;
  EvalResult total;
  if (per_target) per_target->assign(n_targets, 0.0);
  std::vector<double> chunk_losses;
  for (int64_t c = 0; c < n_chunks; ++c) {
    // 1. Score: the chunk's windows, with the weights trained on earlier chunks only.
    EvalResult r = score_windows(m, tokens, by_chunk[c], luts, batch_seqs, per_target ? &chunk_losses : nullptr);
    total.nll_sum += r.nll_sum;
    total.tokens += r.tokens;
    total.bytes += r.bytes;
    if (per_target)
      for (auto& win : by_chunk[c])
        for (int64_t p = win.score_from; p < win.len; ++p) (*per_target)[win.start + p] = chunk_losses[win.start + p];
    if (progress) progress(c + 1, n_chunks);
    if (c == n_chunks - 1) break;  // the last chunk is never trained on
    // 2. Train on the chunk just scored: SGD with momentum, cosine lr across chunks, clipped.
    const int64_t begin = c * C, end = std::min(n_targets, begin + C);
    const int64_t n_seqs = (end - begin) / seq_len;
    if (n_seqs == 0) continue;
    const double lr = opt.lr * 0.5 * (1.0 + std::cos(std::numbers::pi * static_cast<double>(c) /
                                                      static_cast<double>(std::max<int64_t>(1, n_chunks - 1))));
    for (int e = 0; e < opt.epochs; ++e) {
      for (int64_t s0 = 0; s0 < n_seqs; s0 += opt.batch_seqs) {
        const int64_t B = std::min(opt.batch_seqs, n_seqs - s0);
        x.resize(B * seq_len);
        y.resize(B * seq_len);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t p = 0; p < seq_len; ++p) {
            const int64_t t = begin + (s0 + b) * seq_len + p;
            x[b * seq_len + p] = tokens[t];
            y[b * seq_len + p] = tokens[t + 1];
          }
        m.zero_grads();  // the loss stays in the backend: no wait for the device per step
        m.accumulate_gradients(x.data(), y.data(), B, seq_len, 1.0f / static_cast<float>(B * seq_len));
        sgd->step(static_cast<float>(lr));
        m.round_bf16_params();  // the reference's SGD writes its bf16 tok_emb back in bf16
      }
    }
  }
  m.take_loss_sum();  // the training losses are not reported; this also surfaces a device error
  total.seconds = seconds_since(t0);
  return total;
}

}  // namespace ptool::eval

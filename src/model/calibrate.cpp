#include "src/model/calibrate.h"

#include <Eigen/Dense>
#include <cmath>
#include <random>

#include "formats/error.h"
#ifdef PTOOL_HAVE_CUDA
#include <optional>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_hessian.h"
#endif

namespace ptool::model {

namespace {

// H += X^T X in double on the host (every backend but CUDA).
void add_on_host(Hessian& h, Backend<float>& be, const float* X, int64_t rows, int64_t cols, std::vector<float>& host) {
  host.resize(rows * cols);
  be.download(host.data(), X, rows * cols);
  if (h.H.empty()) h.H.assign(cols * cols, 0.0);
  Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> Xm(host.data(), rows, cols);
  Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> Hm(h.H.data(), cols, cols);
  const Eigen::MatrixXd Xd = Xm.cast<double>();
  Hm.noalias() += Xd.transpose() * Xd;
}

}  // namespace

HessianMap collect_hessians(Model<float>& m, std::span<const uint16_t> tokens, int64_t seq_len, int64_t batch_seqs,
                            int64_t batches) {
  if (seq_len < 1 || batch_seqs < 1 || batches < 1) throw Error("calibration sizes must be positive");
  const int64_t need = batches * batch_seqs * seq_len + 1;
  if (static_cast<int64_t>(tokens.size()) < need)
    throw Error("calibration needs " + std::to_string(need) + " tokens, got " + std::to_string(tokens.size()));
  HessianMap hs;
  const int64_t N = batch_seqs * seq_len;
  std::vector<int32_t> x(N), y(N);
  std::vector<float> host;
#ifdef PTOOL_HAVE_CUDA
  // On a CUDA backend the sums stay on the device (in the forward passes' stream order) until the end.
  std::optional<CudaHessians> gpu;
  if (is_cuda_backend(m.backend())) gpu.emplace(m.backend());
#endif
  for (int64_t b = 0; b < batches; ++b) {
    for (int64_t i = 0; i < N; ++i) {
      x[i] = tokens[b * N + i];
      y[i] = tokens[b * N + i + 1];
    }
    m.forward(x.data(), y.data(), batch_seqs, seq_len);
    std::map<std::string, bool> seen_this_batch;
    m.visit_linear_inputs([&](const std::string& w, const float* X, int64_t rows, int64_t cols) {
      Hessian& h = hs[w];
      h.cols = cols;
#ifdef PTOOL_HAVE_CUDA
      if (gpu)
        gpu->add(w, X, rows, cols);
      else
#endif
        add_on_host(h, m.backend(), X, rows, cols, host);
      if (!seen_this_batch[w]) {
        h.batches += 1;  // a looped block's visits in one batch count as one batch
        seen_this_batch[w] = true;
      }
    });
  }
#ifdef PTOOL_HAVE_CUDA
  if (gpu)
    for (auto& [name, H] : gpu->download()) hs.at(name).H = std::move(H);
#endif
  for (auto& [name, h] : hs)
    for (auto& v : h.H) v /= static_cast<double>(h.batches);
  return hs;
}

std::vector<uint16_t> generate_calibration_tokens(Model<float>& m, int64_t n_seqs, int64_t seq_len, double temperature,
                                                  uint64_t seed) {
  if (temperature <= 0) throw Error("calibration temperature must be positive");
  const int64_t V = m.config().vocab_size;
  const double cap = m.config().logit_softcap;
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> seqs(n_seqs);
  for (auto& s : seqs) s.push_back(static_cast<int32_t>(rng() % V));
  std::vector<int32_t> x, y;
  std::vector<float> logits(V);
  std::vector<double> p(V);
  for (int64_t t = 1; t < seq_len; ++t) {
    // Full-prefix forward (no KV cache), as the reference helper does.
    x.assign(n_seqs * t, 0);
    y.assign(n_seqs * t, 0);
    for (int64_t b = 0; b < n_seqs; ++b) std::copy(seqs[b].begin(), seqs[b].end(), x.begin() + b * t);
    m.forward(x.data(), y.data(), n_seqs, t);
    for (int64_t b = 0; b < n_seqs; ++b) {
      m.backend().download(logits.data(), m.logits() + ((b * t) + t - 1) * V, V);
      double mx = -1e300;
      for (int64_t v = 0; v < V; ++v) {
        double z = logits[v];
        if (cap > 0) z = cap * std::tanh(z / cap);
        p[v] = z / temperature;
        mx = std::max(mx, p[v]);
      }
      for (auto& q : p) q = std::exp(q - mx);
      std::discrete_distribution<int32_t> dist(p.begin(), p.end());
      seqs[b].push_back(dist(rng));
    }
  }
  std::vector<uint16_t> out;
  for (auto& s : seqs)
    for (int32_t v : s) out.push_back(static_cast<uint16_t>(v));
  return out;
}

}  // namespace ptool::model

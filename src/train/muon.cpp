#include "src/train/muon.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include <Eigen/Dense>

#include "formats/error.h"
#include "src/ops/bf16.h"

namespace ptool::train {

namespace {
using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

void round_all(Mat& m) { m = m.unaryExpr([](float v) { return round_to_bf16(v); }); }

// Polar Express tuples, REFERENCE.md §4.2 (R10/2026-04-23…, ported from PR #1344).
constexpr NsCoeffs kPolarExpress[5] = {
    {8.156554524902461, -22.48329292557795, 15.878769915207462},
    {4.042929935166739, -2.808917465908714, 0.5000178451051316},
    {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
    {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
    {2.3465413258596377, -1.7097828382687081, 0.42323551169305323},
};
}  // namespace

NsConfig NsConfig::quintic(int steps) {
  NsConfig c;
  c.coeffs = {{3.4445, -4.7750, 2.0315}};
  c.steps = steps;
  return c;
}

NsConfig NsConfig::polar_express(int steps) {
  NsConfig c;
  c.coeffs.assign(std::begin(kPolarExpress), std::end(kPolarExpress));
  c.steps = std::clamp(steps, 0, 5);
  return c;
}

double muon_shape_scale(int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return 1.0;
  return std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(cols)));
}

double muon_momentum_at(int64_t step, double start, double end, int64_t warmup_steps) {
  const double frac =
      warmup_steps > 0 ? std::min(static_cast<double>(step) / static_cast<double>(warmup_steps), 1.0) : 1.0;
  return (1.0 - frac) * start + frac * end;
}

void newton_schulz(const float* G, int64_t rows, int64_t cols, const NsConfig& cfg, float* out, bool bf16) {
  if (rows <= 0 || cols <= 0)
    throw Error("newton_schulz: bad shape " + std::to_string(rows) + "x" + std::to_string(cols));
  if (cfg.steps > 0 && cfg.coeffs.empty()) throw Error("newton_schulz: no coefficients");
  const bool transposed = rows > cols;
  const int64_t r = transposed ? cols : rows;  // X is r x c with r <= c
  const int64_t c = transposed ? rows : cols;

  Eigen::Map<const Mat> Gm(G, rows, cols);
  Mat X = transposed ? Mat(Gm.transpose()) : Mat(Gm);
  if (bf16) round_all(X);  // X = G.bfloat16()
  double ss = 0.0;
  for (int64_t i = 0; i < X.size(); ++i) ss += static_cast<double>(X.data()[i]) * X.data()[i];
  float denom;
  if (bf16) {
    denom = round_to_bf16(round_to_bf16(static_cast<float>(std::sqrt(ss))) + static_cast<float>(cfg.eps));
    X = X.unaryExpr([denom](float v) { return round_to_bf16(v / denom); });
  } else {
    denom = static_cast<float>(std::sqrt(ss) + cfg.eps);
    X /= denom;
  }

  Mat A(r, r), B(r, r), T(r, r), BX(r, c);
  const size_t ncoef = cfg.coeffs.size();
  for (int k = 0; k < cfg.steps; ++k) {
    const NsCoeffs& co = cfg.coeffs[std::min(static_cast<size_t>(k), ncoef - 1)];
    const float a = static_cast<float>(co.a), b = static_cast<float>(co.b), cc = static_cast<float>(co.c);
    A.noalias() = X * X.transpose();
    if (bf16) {
      round_all(A);
      Mat cA = (cc * A).unaryExpr([](float v) { return round_to_bf16(v); });
      T.noalias() = cA * A;
      round_all(T);
      B = (b * A + T).unaryExpr([](float v) { return round_to_bf16(v); });
      BX.noalias() = B * X;
      round_all(BX);
      X = (a * X + BX).unaryExpr([](float v) { return round_to_bf16(v); });
    } else {
      T.noalias() = A * A;
      B = b * A + cc * T;
      BX.noalias() = B * X;
      X = a * X + BX;
    }
  }

  Eigen::Map<Mat> Om(out, rows, cols);
  if (transposed)
    Om = X.transpose();
  else
    Om = X;
}

void muon_update(float* W, const float* G, float* buf, int64_t batch, int64_t rows, int64_t cols,
                 const MuonConfig& cfg, std::vector<float>& scratch) {
  if (batch <= 0 || rows <= 0 || cols <= 0) return;
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(cols);
  if (scratch.size() < n) scratch.resize(n);
  float* U = scratch.data();
  const float mu = static_cast<float>(cfg.momentum);
  const float lr = static_cast<float>(cfg.lr);
  const float decay = static_cast<float>(1.0 - cfg.lr * cfg.weight_decay);
  const float scale = static_cast<float>(muon_shape_scale(rows, cols));

  for (int64_t m = 0; m < batch; ++m) {
    float* w = W + m * n;
    const float* g = G + m * n;
    float* bu = buf + m * n;
    // Multiply-adds are explicit fmas (what GCC's contraction made of them): the device step matches bit for bit.
    for (size_t i = 0; i < n; ++i) bu[i] = std::fma(bu[i], mu, g[i]);  // buf.mul_(μ).add_(g)
    if (cfg.nesterov) {
      for (size_t i = 0; i < n; ++i) U[i] = std::fma(mu, bu[i], g[i]);  // g.add(buf, alpha=μ)
    } else {
      std::memcpy(U, bu, n * sizeof(float));
    }
    if (cfg.row_normalize) {
      for (int64_t r = 0; r < rows; ++r) {
        float* row = U + r * cols;
        double ss = 0.0;
        for (int64_t j = 0; j < cols; ++j) ss += static_cast<double>(row[j]) * row[j];
        const float nrm = std::max(static_cast<float>(std::sqrt(ss)), 1e-7f);
        for (int64_t j = 0; j < cols; ++j) row[j] /= nrm;
      }
    }
    newton_schulz(U, rows, cols, cfg.ns, U, cfg.bf16);
    for (size_t i = 0; i < n; ++i) U[i] *= scale;
    if (cfg.bf16)
      for (size_t i = 0; i < n; ++i) U[i] = round_to_bf16(U[i]);
    if (cfg.weight_decay != 0.0)
      for (size_t i = 0; i < n; ++i) w[i] *= decay;
    for (size_t i = 0; i < n; ++i) w[i] = std::fma(-lr, U[i], w[i]);
  }
}

Muon::Muon(const ParamStore& params) : buf_(params.zeros_like()) {
  for (size_t i = 0; i < params.num_slices(); ++i) {
    const Slice& s = params.slices()[i];
    if (s.group != Group::muon) continue;
    if (s.ndim() < 2)
      throw Error("muon: tensor '" + s.name + "' has " + std::to_string(s.ndim()) +
                  " dimension(s); Muon needs a matrix (or a batch of matrices)");
    muon_slices_.push_back(i);
  }
}

void Muon::step(ParamStore& params, const ParamStore& grads, const MuonConfig& cfg) {
  step_slices(params, grads, cfg, muon_slices_);
}

void Muon::step_slices(ParamStore& params, const ParamStore& grads, const MuonConfig& cfg,
                       const std::vector<size_t>& slice_indices) {
  buf_.check_same_layout(params, "muon: parameters");
  buf_.check_same_layout(grads, "muon: gradients");
  for (size_t idx : slice_indices) {
    if (idx >= params.num_slices()) throw Error("muon: slice index out of range");
    const Slice& s = params.slices()[idx];
    if (s.group != Group::muon) throw Error("muon: tensor '" + s.name + "' is not in the muon group");
    if (s.numel == 0) continue;
    muon_update(params.data() + s.offset, grads.data() + s.offset, buf_.data() + s.offset, s.batch(), s.rows(),
                s.cols(), cfg, scratch_);
  }
}

}  // namespace ptool::train

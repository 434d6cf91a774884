#include "src/quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <Eigen/Dense>

#include "formats/error.h"
#include "src/quant/fp16.h"
#include "src/quant/rtn.h"

namespace ptool::quant {

using MatD = Eigen::MatrixXd;  // column-major
using RowMatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// ---------------------------------------------------------------------------------------------- Hessian

HessianAccumulator::HessianAccumulator(int64_t cols) : cols_(cols) {
  if (cols <= 0) throw Error("Hessian accumulator needs a positive column count, got " + std::to_string(cols));
  h_.assign(static_cast<size_t>(cols * cols), 0.0);
}

void HessianAccumulator::add(const float* X, int64_t tokens) {
  if (tokens < 0) throw Error("Hessian accumulator: negative token count");
  Eigen::Map<MatD> H(h_.data(), cols_, cols_);
  // X row-major [tokens, cols] is X^T column-major [cols, tokens]: each column a token.
  Eigen::Map<const Eigen::MatrixXf> Xt(X, cols_, tokens);
  constexpr int64_t kChunk = 256;
  for (int64_t t0 = 0; t0 < tokens; t0 += kChunk) {
    const int64_t n = std::min(kChunk, tokens - t0);
    const MatD chunk = Xt.middleCols(t0, n).cast<double>();
    H.selfadjointView<Eigen::Lower>().rankUpdate(chunk);
  }
  tokens_ += tokens;
}

void HessianAccumulator::add_gram(const double* G, int64_t tokens) {
  for (int64_t i = 0; i < cols_ * cols_; ++i) h_[i] += G[i];
  tokens_ += tokens;
}

void HessianAccumulator::add_gram(const float* G, int64_t tokens) {
  for (int64_t i = 0; i < cols_ * cols_; ++i) h_[i] += static_cast<double>(G[i]);
  tokens_ += tokens;
}

void HessianAccumulator::merge(const HessianAccumulator& o) {
  if (o.cols_ != cols_)
    throw Error("Hessian merge: " + std::to_string(o.cols_) + " columns into " + std::to_string(cols_));
  for (size_t i = 0; i < h_.size(); ++i) h_[i] += o.h_[i];
  batches_ += o.batches_;
  tokens_ += o.tokens_;
}

std::vector<double> HessianAccumulator::finalize() const {
  if (batches_ <= 0) throw Error("Hessian accumulator: finalize() before any calibration batch was counted");
  // add() fills the lower triangle only; add_gram() fills both. Rebuild from the lower triangle
  // (column-major storage: element (i, j) at j*cols + i).
  std::vector<double> out(h_.size());
  const double inv = 1.0 / static_cast<double>(batches_);
  for (int64_t j = 0; j < cols_; ++j)
    for (int64_t i = j; i < cols_; ++i) {
      const double v = h_[j * cols_ + i] * inv;
      out[i * cols_ + j] = v;
      out[j * cols_ + i] = v;
    }
  return out;
}

double HessianAccumulator::trace() const {
  if (batches_ <= 0) throw Error("Hessian accumulator: trace() before any calibration batch was counted");
  double t = 0;
  for (int64_t i = 0; i < cols_; ++i) t += h_[i * cols_ + i];
  return t / static_cast<double>(batches_);
}

// ------------------------------------------------------------------------------------------------ GPTQ

bool upper_cholesky_of_inverse(const double* A, int64_t n, std::vector<double>& U, double min_pivot) {
  const MatD B = Eigen::Map<const RowMatD>(A, n, n).reverse();  // J A J
  Eigen::LLT<MatD> llt(B);
  if (llt.info() != Eigen::Success) return false;
  const MatD& L = llt.matrixLLT();
  for (int64_t i = 0; i < n; ++i)
    if (!(L(i, i) * L(i, i) >= min_pivot)) return false;
  MatD Linv = MatD::Identity(n, n);
  llt.matrixL().solveInPlace(Linv);
  // U = J Linv J: U(i, j) = Linv(n-1-i, n-1-j), upper triangular, U^T U = J (L L^T)^-1 J = A^-1.
  U.assign(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) {
      const double v = Linv(n - 1 - i, n - 1 - j);
      if (!std::isfinite(v)) return false;
      U[i * n + j] = v;
    }
  for (int64_t i = 0; i < n; ++i)
    if (!(U[i * n + i] > 0)) return false;
  return true;
}

double hessian_weighted_error(const float* W, const float* What, int64_t rows, int64_t cols, const double* H) {
  using RowMatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const MatD E =
      (Eigen::Map<const RowMatF>(W, rows, cols) - Eigen::Map<const RowMatF>(What, rows, cols)).cast<double>();
  const Eigen::Map<const RowMatD> Hm(H, cols, cols);
  return (E * Hm).cwiseProduct(E).sum();
}

namespace {

// The GPTQ sweep over permuted weights Wp [rows, cols] with U = chol_upper(H^-1); returns codes (permuted
// column order, column-major) and adds GPTQ's proxy loss.
std::vector<int8_t> gptq_sweep(MatD Wp, const MatD& U, const Eigen::ArrayXd& s, int R, int64_t block,
                               double& loss) {
  const int64_t rows = Wp.rows(), cols = Wp.cols();
  std::vector<int8_t> Q(static_cast<size_t>(rows * cols));
  loss = 0;
  for (int64_t i1 = 0; i1 < cols; i1 += block) {
    const int64_t i2 = std::min(i1 + block, cols), cnt = i2 - i1;
    MatD W1 = Wp.middleCols(i1, cnt);
    MatD Err1(rows, cnt);
    for (int64_t j = 0; j < cnt; ++j) {
      const double d = U(i1 + j, i1 + j);
      Eigen::ArrayXd w = W1.col(j).array();
      Eigen::ArrayXd q(rows);
      for (int64_t r = 0; r < rows; ++r) {
        q[r] = std::clamp(std::nearbyint(w[r] / s[r]), static_cast<double>(-R), static_cast<double>(R));
        Q[(i1 + j) * rows + r] = static_cast<int8_t>(q[r]);
      }
      const Eigen::ArrayXd diff = w - q * s;
      loss += diff.square().sum() / (d * d);
      Err1.col(j) = (diff / d).matrix();
      if (j + 1 < cnt)
        W1.rightCols(cnt - j - 1).noalias() -= Err1.col(j) * U.block(i1 + j, i1 + j + 1, 1, cnt - j - 1);
    }
    if (i2 < cols) Wp.rightCols(cols - i2).noalias() -= Err1 * U.block(i1, i2, cnt, cols - i2);
  }
  return Q;
}

std::vector<int8_t> rtn_sweep(const MatD& Wp, const Eigen::ArrayXd& s, int R) {
  const int64_t rows = Wp.rows(), cols = Wp.cols();
  std::vector<int8_t> Q(static_cast<size_t>(rows * cols));
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t r = 0; r < rows; ++r)
      Q[j * rows + r] = static_cast<int8_t>(
          std::clamp(std::nearbyint(Wp(r, j) / s[r]), static_cast<double>(-R), static_cast<double>(R)));
  return Q;
}

}  // namespace

GptqResult gptq_quantize(std::string_view name, const float* W, int64_t rows, int64_t cols, const double* H,
                         const QuantSpec& spec_in, const Log& log) {
  const std::string tname(name);
  auto fail = [&](const std::string& what) { return Error("tensor '" + tname + "': GPTQ: " + what); };
  QuantSpec spec = spec_in;
  spec.gptq = true;
  try {
    check_spec(spec);
  } catch (const Error& e) {
    throw fail(e.what());
  }
  if (rows <= 0 || cols <= 0) throw fail("empty matrix");
  if (!H) throw fail("no Hessian");
  for (int64_t i = 0; i < rows * cols; ++i)
    if (!std::isfinite(W[i])) throw fail("weight element " + std::to_string(i) + " is not finite");
  for (int64_t i = 0; i < cols * cols; ++i)
    if (!std::isfinite(H[i])) throw fail("Hessian element " + std::to_string(i) + " is not finite");
  const GptqOptions& opt = spec.gptq_options;
  const int R = spec.range();

  GptqResult res;
  QuantizedTensor& t = res.tensor;
  t.name = tname;
  t.scheme = scheme_name(spec);
  t.scheme_version = kSchemeVersion;
  t.layout = Layout::per_row;
  t.bits = spec.bits;
  t.shape = {rows, cols};
  t.info["clip"] = std::string(clip_name(spec.clip));
  t.info["bits"] = spec.bits;
  t.info["gptq"] = true;
  nlohmann::json notes = nlohmann::json::array();
  auto note = [&](const std::string& msg) {
    notes.push_back(msg);
    if (log) log("tensor '" + tname + "': " + msg);
  };

  const Eigen::Map<const RowMatD> Hin(H, cols, cols);
  MatD Hs = 0.5 * (Hin + Hin.transpose());
  std::vector<char> dead(static_cast<size_t>(cols), 0);
  int64_t n_dead = 0;
  for (int64_t j = 0; j < cols; ++j)
    if (Hs(j, j) == 0) {
      dead[j] = 1;
      Hs(j, j) = 1;
      ++n_dead;
    }
  if (n_dead) t.info["dead_columns"] = n_dead;
  const double mean_diag = Hs.diagonal().mean();

  std::vector<int64_t> perm(static_cast<size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return Hs(a, a) > Hs(b, b); });

  MatD Wp(rows, cols);
  MatD Hp(cols, cols);
  for (int64_t j = 0; j < cols; ++j) {
    const int64_t src = perm[j];
    for (int64_t r = 0; r < rows; ++r) Wp(r, j) = dead[src] ? 0.0 : static_cast<double>(W[r * cols + src]);
    for (int64_t i = 0; i < cols; ++i) Hp(i, j) = Hs(perm[i], src);
  }

  // Cholesky of the damped, permuted H, retried with 10x the damping.
  std::vector<double> Uv;
  bool ok = false;
  double percdamp = opt.percdamp;
  for (int attempt = 0; attempt <= opt.max_retries; ++attempt, percdamp *= 10) {
    res.damp = percdamp * mean_diag;
    RowMatD A = Hp;  // symmetric, so storage order does not matter
    A.diagonal().array() += res.damp;
    if (upper_cholesky_of_inverse(A.data(), cols, Uv, 0.5 * res.damp)) {
      ok = true;
      break;
    }
    if (attempt < opt.max_retries) {
      ++res.retries;
      note("Cholesky failed (H not positive definite) with damping " + std::to_string(percdamp) +
           " x mean(diag H); retrying with " + std::to_string(percdamp * 10));
    }
  }
  t.info["percdamp"] = ok ? percdamp : opt.percdamp;
  if (!ok) {
    res.fell_back = true;
    note("Cholesky failed " + std::to_string(opt.max_retries + 1) +
         " times (H is not positive definite even with damping); fell back to round-to-nearest");
  }
  const MatD U = ok ? MatD(Eigen::Map<const RowMatD>(Uv.data(), cols, cols)) : MatD();

  // Candidate scales: one set, or one per percentile for the search.
  std::vector<double> ps;
  if (spec.clip == Clip::search) ps = spec.percentiles;
  else ps = {spec.clip == Clip::clean ? spec.percentile : 1.0};
  double best = INFINITY;
  std::vector<int8_t> best_q;
  try {
    for (double p : ps) {
      std::vector<uint16_t> scales = row_scales(W, rows, cols, spec, p, H);
      Eigen::ArrayXd s(rows);
      for (int64_t r = 0; r < rows; ++r) s[r] = static_cast<double>(half_to_float(scales[r]));
      double loss = 0;
      std::vector<int8_t> Q = ok ? gptq_sweep(Wp, U, s, R, opt.block_size, loss) : rtn_sweep(Wp, s, R);
      double sse = 0;
      for (int64_t j = 0; j < cols; ++j)
        for (int64_t r = 0; r < rows; ++r) {
          const double e = Wp(r, j) - static_cast<double>(Q[j * rows + r]) * s[r];
          sse += e * e;
        }
      const double mse = sse / static_cast<double>(rows * cols);
      if (mse < best) {
        best = mse;
        best_q = std::move(Q);
        t.scales_f16 = std::move(scales);
        res.proxy_loss = loss;
        if (spec.clip == Clip::search || spec.clip == Clip::clean) t.info["percentile"] = p;
      }
    }
  } catch (const Error& e) {
    throw fail(e.what());
  }
  if (spec.clip == Clip::sdclip || spec.clip == Clip::hsdclip) t.info["k"] = spec.k;
  if (spec.clip == Clip::hsdclip) t.info["lambda"] = spec.lambda;
  // Undo the permutation: permuted column j is original column perm[j].
  t.codes.resize(static_cast<size_t>(rows * cols));
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t r = 0; r < rows; ++r) t.codes[r * cols + perm[j]] = best_q[j * rows + r];
  t.info["retries"] = res.retries;
  if (res.fell_back) t.info["fell_back_to_rtn"] = true;
  if (!notes.empty()) t.info["notes"] = notes;
  return res;
}

}  // namespace ptool::quant

// Full-Hessian GPTQ (REFERENCE.md §5.5, IST-DASLab gptq.py) and the Hessian accumulator that feeds it.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "src/quant/quantized_tensor.h"
#include "src/quant/spec.h"

namespace ptool::quant {

using Log = std::function<void(const std::string&)>;

// H = (sum over calibration batches of X^T X) / batches for one linear layer, X = its input activations
// flattened to [tokens, cols]. Divided by the number of batches, not tokens (§5.5). A looped layer calls
// add() once per visit and end_batch() once per batch, so all its visits share one H. Accumulates in double.
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t cols);

  int64_t cols() const { return cols_; }
  int64_t batches() const { return batches_; }
  int64_t tokens() const { return tokens_; }

  // H += X^T X, X row-major [tokens, cols], fp32.
  void add(const float* X, int64_t tokens);
  // H += G, a Gram matrix X^T X computed elsewhere (e.g. on the GPU): [cols, cols] row-major, symmetric.
  void add_gram(const double* G, int64_t tokens);
  void add_gram(const float* G, int64_t tokens);
  void end_batch() { ++batches_; }
  void add_batch(const float* X, int64_t tokens) {
    add(X, tokens);
    end_batch();
  }
  // Sums another accumulator (e.g. of another rank) into this one: H, batches and tokens.
  void merge(const HessianAccumulator& other);

  // H / batches, [cols, cols] row-major, symmetric. Throws Error when no batch was counted.
  std::vector<double> finalize() const;
  // trace(finalize()): the tensor's sensitivity used to rank tensors for mixed bits.
  double trace() const;

 private:
  int64_t cols_;
  int64_t batches_ = 0;
  int64_t tokens_ = 0;
  std::vector<double> h_;  // lower triangle is authoritative until finalize()
};

struct GptqResult {
  QuantizedTensor tensor;   // per-row layout, scheme "int{bits}_gptq_{clip}"
  double damp = 0;          // damping added to the diagonal in the successful attempt
  int retries = 0;          // Cholesky failures before it (damping x10 each)
  bool fell_back = false;   // every attempt failed: round-to-nearest with the same scales
  double proxy_loss = 0;    // GPTQ's own loss: sum over columns of |w_j - q_j s|^2 / U_jj^2
};

// GPTQ of W [rows, cols] (row-major, cols = input dim) given H [cols, cols] (row-major; symmetrised as
// (H + H^T)/2). Steps: dead columns (diag 0) get H_jj = 1 and W_j = 0; damping percdamp*mean(diag) on the
// diagonal; act-order (descending diag, stable); U = upper Cholesky factor of H^-1; per-row fp16 scales from
// spec.clip computed on the ORIGINAL W; 128-column lazy blocks with intra-block error feedback; codes returned
// in the original column order. With Clip::search the whole loop runs for every percentile and the one with the
// smallest mean((W_perm - Q s)^2) is kept. A failed Cholesky retries with 10x the damping, up to
// spec.gptq_options.max_retries times, each reported through `log` and in tensor.info["notes"].
// Clip::clean here means the single-percentile scale fp16(max(quantile_p(|W_r|)/R, floor)) used for rounding
// (W is not clamped; GPTQ has no fp32-scale step). Runs in double, so codes are not bit-identical to the fp32
// torch reference (the RTN schemes are).
GptqResult gptq_quantize(std::string_view name, const float* W, int64_t rows, int64_t cols, const double* H,
                         const QuantSpec& spec, const Log& log = {});

// Upper-triangular U with U^T U = A^-1 for symmetric positive-definite A [n, n] (row-major in and out).
// Computed as J L^-1 J with L L^T = J A J (J reverses the order): one Cholesky and one triangular inverse.
// Returns false when the Cholesky fails or a pivot L_ii^2 is below min_pivot. (For A = H + d I with H
// positive semi-definite every pivot is >= d, so GPTQ passes d/2: a smaller pivot means H is indefinite or
// singular beyond what the damping covers, e.g. [[1, 2], [2, 1]] + I, which factors with a pivot of 4e-16.)
bool upper_cholesky_of_inverse(const double* A, int64_t n, std::vector<double>& U, double min_pivot = 0);

// tr((W - What) H (W - What)^T): the layer-output error GPTQ minimises. H [cols, cols] row-major.
double hessian_weighted_error(const float* W, const float* What, int64_t rows, int64_t cols, const double* H);

}  // namespace ptool::quant

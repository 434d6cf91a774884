// Synthetic "realistic" quantized weight codes for codec work before a trained model exists.
//
// A weight matrix W (rows = output features, cols = input features) is drawn as
//     W[r][c] = row_std[r] * col_scale[c] * (sqrt(lr) * L[r][c] + sqrt(1 - lr) * N[r][c])
// with L a unit-variance rank-`low_rank` product U·V, N unit-variance Student-t noise (per-row
// degrees of freedom, some rows Gaussian), row_std ~ lognormal(row_log_sigma), col_scale ~
// lognormal(col_log_sigma) (input channels of different scale; the main 2-D structure), and then
// quantized per row with SDClip (REFERENCE.md §5.5): s_r = fp16(max(k·std(W_r)/R, 1e-10)),
// q = clamp(round(W/s_r), -R, R). Deterministic for a given seed on every platform (own RNG and
// Box-Muller, no std::*_distribution).
//
// The structure parameters are guesses, not measurements: re-run codec benchmarks on real codes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ptool {

struct SyntheticTensorSpec {
  std::string name;   // e.g. "blocks.3.attn.c_q.weight"
  std::string group;  // e.g. "attn.c_q" (REFERENCE.md §6.1 per-group names)
  int64_t rows = 0;
  int64_t cols = 0;
  int bits = 6;                // R = 2^(bits-1) - 1
  double clip_sigmas = 12.85;  // SDClip k
};

struct SyntheticWeightOptions {
  double row_log_sigma = 0.5;       // per-row std ~ exp(N(0, row_log_sigma^2))
  double col_log_sigma = 0.25;      // per-column scale ~ exp(N(0, col_log_sigma^2)); 0 = none
  int low_rank = 16;                // rank of the correlated component; 0 = none
  double low_rank_share = 0.15;     // share of the variance in the low-rank component
  double gaussian_row_share = 0.5;  // rows with Gaussian noise; the others Student-t
  int min_dof = 4;                  // Student-t rows draw dof uniformly from [min_dof, max_dof]
  int max_dof = 10;
};

// Named settings: "iid" (Gaussian, no structure at all), "default" (the values above),
// "strong" (col_log_sigma 0.4, low_rank_share 0.3, heavier tails). Throws Error on an unknown name.
SyntheticWeightOptions synthetic_preset(const std::string& name);

// The baseline model's quantized matrices (REFERENCE.md §3.1): `layers` blocks of c_q 512x512,
// c_k 256x512, c_v 256x512, attn.proj 512x512, mlp.fc 1024x512, mlp.proj 512x1024 (int6, k=12.85)
// plus tok_emb 1024x512 (int8, k=20). Listed as tok_emb first, then block by block.
std::vector<SyntheticTensorSpec> baseline_code_specs(int layers = 9, int dim = 512, int vocab = 1024);

struct QuantizedCodes {
  std::string name;
  std::string group;
  int64_t rows = 0;
  int64_t cols = 0;
  int bits = 0;
  std::vector<int8_t> codes;  // rows*cols, row-major
  std::vector<float> scales;  // per row (fp16-representable values)
};

// rows*cols float weights (row-major) as described above.
std::vector<float> synthetic_weights(int64_t rows, int64_t cols, const SyntheticWeightOptions& opt, uint64_t seed);

// SDClip per-row quantization: s_r = fp16(max(k·std(W_r)/R, 1e-10)) with the unbiased row std.
QuantizedCodes sdclip_quantize(const std::vector<float>& w, int64_t rows, int64_t cols, int bits, double clip_sigmas);

QuantizedCodes synthetic_codes(const SyntheticTensorSpec& spec, const SyntheticWeightOptions& opt, uint64_t seed);
std::vector<QuantizedCodes> synthetic_model_codes(const std::vector<SyntheticTensorSpec>& specs,
                                                  const SyntheticWeightOptions& opt, uint64_t seed);

}  // namespace ptool

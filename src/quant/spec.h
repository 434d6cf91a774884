// What a quantizer does to one tensor: the clip rule that sets the per-row scales, the bit width, and
// whether full-Hessian GPTQ (instead of round-to-nearest) chooses the codes. REFERENCE.md §5.
//
// Every scheme here is symmetric: codes q in [-R, R], R = 2^(bits-1) - 1 (int8 127, int7 63, int6 31,
// int5 15), stored one per int8 byte (the entropy coder removes the unused high bits, §5.2), with one
// fp16 scale per row of a 2-D tensor (per tensor otherwise). Dequantization is always q * scale.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ptool::quant {

// How the per-row scale s_r is chosen (W_r = row r, R as above, fp16() = round to half, ties to even).
enum class Clip : uint8_t {
  // Baseline int8_clean_per_row_v1 (§5.1) with R generalised: clip_r = quantile(|W_r|, p), W clamped to
  // +-clip_r, s_r = max(clip_r/R, 1/R) in fp32, q = clamp(round(W_clamped / s_r)) computed with the fp32
  // scale, s_r stored as fp16 (so the dequantized value uses fp16(s_r): the reference does exactly this).
  // Tensors that are not 2-D get one fp32 scale clip/R (1.0 when clip = 0) and no floor.
  clean,
  // s_r = fp16(max(rowmax_r/R, floor)), floor default 1/R; q computed with the fp16 scale (§5.2 "row-max").
  rowmax,
  // The STE fake-quant of §5.3: s_r = fp16(max(rowmax_r, 1/R)/R), i.e. floor 1/R^2. fake_quantize_rows()
  // produces bit for bit what dequantize() gives for this scheme, so QAT trains on exactly the export.
  ste_rowmax,
  // GPTQ-lite (§5.4): for each p in `percentiles` (default 0.9990, 0.9995, 0.9999, 0.99999, 1.0):
  // clip_r = quantile(|W_r|, p) (p = 1: row max), s_r = fp16(max(clip_r/R, 1/R)), q with the fp16 scale;
  // the p with the smallest whole-matrix MSE wins (one p per matrix; the first on ties).
  search,
  // SDClip (§5.5): s_r = fp16(max(k * std(W_r) / R, 1e-10)), std unbiased over the ORIGINAL row.
  sdclip,
  // Hessian-aware SDClip (§5.5): s_r = fp16(max(k * std(W_r) * (1 + lambda (imp_r - 1)) / R, 1e-10)) with
  // col_imp = diag(H')/mean(diag(H')) (H' = H with dead columns set to 1 and the base damping added,
  // original column order, diag clamped to >= 1e-8), imp_r = mean_c |W_rc| col_imp_c normalised to mean 1.
  hsdclip,
};

std::string_view clip_name(Clip c);      // "clean", "rowmax", "ste_rowmax", "search", "sdclip", "hsdclip"
// Also accepts "gptq_lite" for search. Throws Error listing the names.
Clip parse_clip(std::string_view name);

struct GptqOptions {
  double percdamp = 0.01;     // damping = percdamp * mean(diag H) added to the diagonal
  int64_t block_size = 128;   // lazy-batch block width
  bool act_order = true;      // process columns by descending diag(H) (stable order on ties)
  int max_retries = 4;        // a failed Cholesky retries with damping x10, this many times; then RTN
};

struct QuantSpec {
  int bits = 6;               // 2..8
  Clip clip = Clip::sdclip;
  bool gptq = false;          // full-Hessian GPTQ with this clip rule's scales (needs a Hessian)
  double percentile = 0.9999984;                                     // clean
  std::vector<double> percentiles = {0.9990, 0.9995, 0.9999, 0.99999, 1.0};  // search
  double k = 12.85;           // sdclip / hsdclip
  double lambda = 0.175;      // hsdclip
  // Lower bound of the scale before fp16 rounding. < 0: the reference floor of the clip rule
  // (clean/rowmax/search 1/R, ste_rowmax 1/R^2, sdclip/hsdclip 1e-10). Note the 1/R floor of the records
  // means every row whose clip value is below 1 gets scale exactly 1/R.
  double scale_floor = -1;
  GptqOptions gptq_options;

  int range() const { return (1 << (bits - 1)) - 1; }
  double floor_value() const;  // the effective floor
};

// Throws Error when the spec is out of range (bits, k, percentiles, lambda, block size, ...).
void check_spec(const QuantSpec& spec);

// The scheme name written to the artifact: "int{bits}_" + ("gptq_" if gptq) + clip name, except that
// round-to-nearest with the percentile search is "int{bits}_gptq_lite" (its name in the records).
// E.g. "int8_clean", "int6_ste_rowmax", "int6_gptq_lite", "int6_gptq_search", "int6_gptq_sdclip".
std::string scheme_name(const QuantSpec& spec);

// A scheme name taken apart. Known schemes: the names scheme_name() can produce, bits 2..8.
struct SchemeInfo {
  int bits = 0;
  Clip clip = Clip::clean;
  bool gptq = false;
  // Non-2-D tensors of this scheme carry an fp32 scale (the baseline's per-tensor int8), else fp16.
  bool tensor_scale_f32 = false;
};
SchemeInfo parse_scheme(std::string_view scheme);  // throws Error on an unknown name

constexpr uint32_t kSchemeVersion = 1;

}  // namespace ptool::quant

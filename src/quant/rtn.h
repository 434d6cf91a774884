// Round-to-nearest quantizers (every clip rule of spec.h without GPTQ), the scale rules they share with
// GPTQ, and the STE fake-quant used by QAT. The scalar reference: plain loops, float32 where the records
// compute in float32 so that codes and scales match them bit for bit.
//
// Rounding is round-half-to-even (torch.round, std::nearbyint). Divisions are true IEEE divisions: a
// kernel that replaces W / s by W * (1/s) or uses fast-math does not reproduce these codes.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "src/quant/quantized_tensor.h"
#include "src/quant/spec.h"

namespace ptool::quant {

// torch.quantile(x, p) with linear interpolation over an ascending array, step for step in float32:
//   rank = float(p) * float(n - 1); lo = trunc(rank); hi = ceil(rank); w = rank - float(lo);
//   result = w < 0.5 ? fma(w, x[hi] - x[lo], x[lo]) : fma(w - 1, x[hi] - x[lo], x[hi])
// (torch's lerp; its vectorised CPU kernel and CUDA both fuse the multiply-add). Throws on an empty array.
float quantile_sorted(std::span<const float> sorted, double p);

// Unbiased standard deviation (torch.std) computed in double, rounded to float; 0 for fewer than 2 values
// (torch gives NaN there).
float unbiased_std(std::span<const float> x);

// Hessian-aware SDClip row factors 1 + lambda (imp_r - 1) (spec.h, Clip::hsdclip). H is cols x cols,
// row-major (only the diagonal is read).
std::vector<double> hsdclip_row_factors(const float* W, int64_t rows, int64_t cols, const double* H,
                                        double percdamp, double lambda);

// fp16 row scales for every clip rule except the search (pass the percentile to use as `p` for clean and
// search; it is ignored otherwise). H is needed only for hsdclip. A scale that rounds to fp16 zero becomes
// the smallest half (2^-24) so that nothing divides by zero; one that overflows fp16 throws Error.
// For Clip::clean these are the stored scales; the codes are computed with the fp32 scale (see spec.h).
std::vector<uint16_t> row_scales(const float* W, int64_t rows, int64_t cols, const QuantSpec& spec, double p,
                                 const double* H = nullptr);

// q = clamp(round(W / half(s_r)), -R, R) for each row r.
void quantize_with_scales(const float* W, int64_t rows, int64_t cols, int bits, const uint16_t* scales_f16,
                          int8_t* codes);

// Round-to-nearest quantization of one tensor with spec.gptq ignored. 2-D tensors get per-row scales;
// any other shape is quantized as one row with one scale (fp32 for Clip::clean as in the baseline, else
// fp16). `H` (cols x cols) only for hsdclip on a 2-D tensor (a non-2-D hsdclip tensor uses factor 1).
// Throws Error naming the tensor on non-finite values, a bad spec or a missing Hessian.
QuantizedTensor quantize_rtn(std::string_view name, std::span<const int64_t> shape, std::span<const float> W,
                             const QuantSpec& spec, const double* H = nullptr);

// The STE forward of QAT (REFERENCE.md §5.3) for the scheme "int{bits}_ste_rowmax":
//   s_r = fp16(max(rowmax_r, 1/R) / R),  out = clamp(round(W / s_r), -R, R) * s_r
// out may equal W (in place). Bit for bit what dequantize(quantize_rtn(.., {bits, Clip::ste_rowmax})) gives.
// The backward of QAT is the identity (straight-through): dL/dW = dL/d(out).
void fake_quantize_rows(const float* W, int64_t rows, int64_t cols, int bits, float* out);

// The same for any round-to-nearest spec (spec.gptq must be false): out = dequantize(quantize_rtn(W)).
// Lets QAT train against exactly the scheme the quantizer will apply (clean, rowmax, sdclip, ...).
void fake_quantize_rows(const float* W, int64_t rows, int64_t cols, const QuantSpec& spec, float* out,
                        const double* H = nullptr);

// Sum of squared differences, in double.
double squared_error(std::span<const float> a, std::span<const float> b);

}  // namespace ptool::quant

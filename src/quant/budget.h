// Fitting the quantized model to a byte budget (REFERENCE.md §5.5: SDClip's k is the size knob,
// H(q) ~ b - log2 k + const; mixed int5/int6 by Hessian trace).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "src/quant/gptq.h"
#include "src/quant/quantized_tensor.h"

namespace ptool::quant {

// ---- the generic allocator: groups with discrete options, additive size model --------------------------
struct AllocationProblem {
  std::vector<std::vector<double>> bytes;  // bytes[g][o]: estimated stored bytes of group g under option o
  std::vector<std::vector<double>> loss;   // loss[g][o]: its (sensitivity-weighted) error
};
struct Allocation {
  std::vector<size_t> choice;  // option per group
  double bytes = 0;
  double loss = 0;
  bool feasible = false;       // false: even the smallest options exceed the budget (choice = smallest)
};
// Minimises sum loss subject to sum bytes <= budget: bisection on the Lagrange multiplier (each group takes
// argmin loss + lambda * bytes; this reaches the lower convex hull), then greedy single-group moves that lower
// the loss while the total stays within the budget (fills the gap the hull leaves). Throws on malformed input.
Allocation allocate_budget(const AllocationProblem& p, double budget);

// ---- fitting SDClip k (and bits) per group ------------------------------------------------------------
struct BudgetTensor {
  std::string name;
  std::string group;              // tensors of one group share one setting (e.g. "embed", "mlp", "attn")
  std::vector<int64_t> shape;     // 2-D
  std::span<const float> values;
  double sensitivity = 1;         // loss = sensitivity * sum (W - What)^2; trace(H)/cols gives the
                                  // diagonal-Hessian estimate of tr((W-What) H (W-What)^T)
  int bits = 6;                   // used by candidates with bits 0
};
struct BudgetCandidate {
  int bits = 0;                   // 0: each tensor's own bits
  double k = 12.85;               // SDClip sigmas
};
// Stored bytes of one group's quantized tensors under one candidate, e.g. the codec's output size for
// their payloads. The default estimates by order-0 entropy (report.h estimate_bytes).
using GroupSizeEstimator =
    std::function<double(const std::string& group, const std::vector<QuantizedTensor>& tensors)>;
double entropy_size_estimator(const std::string& group, const std::vector<QuantizedTensor>& tensors);

struct GroupChoice {
  std::string group;
  BudgetCandidate candidate;
  double bytes = 0;
  double loss = 0;
};
struct FitResult {
  std::vector<GroupChoice> groups;  // in order of first appearance in the tensor list
  double bytes = 0;
  double loss = 0;
  bool feasible = false;
};
// Quantizes every group with every candidate (round-to-nearest SDClip, whose entropy tracks GPTQ's), asks the
// estimator for each group's bytes, and allocates (allocate_budget). `budget_bytes` is what these tensors may
// use: the caller subtracts passthrough tensors, code bytes and container overhead first.
FitResult fit_to_budget(const std::vector<BudgetTensor>& tensors, const std::vector<BudgetCandidate>& candidates,
                        double budget_bytes, const GroupSizeEstimator& estimator = entropy_size_estimator,
                        const Log& log = {});

// n values from lo to hi, evenly spaced in log (lo, hi > 0, n >= 2; n == 1 gives {lo}).
std::vector<double> geometric_grid(double lo, double hi, int n);

// Mixed bits by sensitivity (§5.5): the n_high most sensitive tensors get high_bits (tensors flagged in
// `forced` first, e.g. recurrent layers), the rest low_bits. Ties keep the input order.
std::vector<int> bits_by_sensitivity(std::span<const double> sensitivity, size_t n_high, int low_bits,
                                     int high_bits, std::span<const char> forced = {});

}  // namespace ptool::quant

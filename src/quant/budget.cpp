#include "src/quant/budget.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "formats/error.h"
#include "src/quant/report.h"
#include "src/quant/rtn.h"

namespace ptool::quant {

namespace {

struct Totals {
  double bytes = 0, loss = 0;
};

Totals totals(const AllocationProblem& p, const std::vector<size_t>& c) {
  Totals t;
  for (size_t g = 0; g < c.size(); ++g) {
    t.bytes += p.bytes[g][c[g]];
    t.loss += p.loss[g][c[g]];
  }
  return t;
}

std::vector<size_t> pick(const AllocationProblem& p, double lambda) {
  std::vector<size_t> c(p.bytes.size());
  for (size_t g = 0; g < c.size(); ++g) {
    size_t best = 0;
    for (size_t o = 1; o < p.bytes[g].size(); ++o) {
      const double a = p.loss[g][o] + lambda * p.bytes[g][o], b = p.loss[g][best] + lambda * p.bytes[g][best];
      if (a < b || (a == b && p.bytes[g][o] < p.bytes[g][best])) best = o;
    }
    c[g] = best;
  }
  return c;
}

}  // namespace

Allocation allocate_budget(const AllocationProblem& p, double budget) {
  if (p.bytes.size() != p.loss.size()) throw Error("budget allocation: bytes and loss have different group counts");
  if (p.bytes.empty()) throw Error("budget allocation: no groups");
  for (size_t g = 0; g < p.bytes.size(); ++g) {
    if (p.bytes[g].empty() || p.bytes[g].size() != p.loss[g].size())
      throw Error("budget allocation: group " + std::to_string(g) + " has no options or mismatched sizes");
    for (size_t o = 0; o < p.bytes[g].size(); ++o)
      if (!std::isfinite(p.bytes[g][o]) || !std::isfinite(p.loss[g][o]) || p.bytes[g][o] < 0)
        throw Error("budget allocation: group " + std::to_string(g) + " option " + std::to_string(o) +
                    " has a non-finite or negative value");
  }
  Allocation a;
  // Smallest possible: per group the fewest bytes (least loss on ties).
  std::vector<size_t> smallest(p.bytes.size());
  for (size_t g = 0; g < smallest.size(); ++g) {
    size_t b = 0;
    for (size_t o = 1; o < p.bytes[g].size(); ++o)
      if (p.bytes[g][o] < p.bytes[g][b] || (p.bytes[g][o] == p.bytes[g][b] && p.loss[g][o] < p.loss[g][b])) b = o;
    smallest[g] = b;
  }
  if (totals(p, smallest).bytes > budget) {
    a.choice = smallest;
    const Totals t = totals(p, a.choice);
    a.bytes = t.bytes;
    a.loss = t.loss;
    return a;
  }
  a.feasible = true;
  std::vector<size_t> c = pick(p, 0.0);
  if (totals(p, c).bytes > budget) {
    double lo = 0, hi = 1e-12;
    while (totals(p, pick(p, hi)).bytes > budget && hi < 1e300) hi *= 4;
    c = pick(p, hi);
    if (totals(p, c).bytes > budget) c = smallest;
    for (int it = 0; it < 200 && hi > lo * (1 + 1e-12); ++it) {
      const double mid = lo == 0 ? hi / 1024 : std::sqrt(lo * hi);
      if (mid <= lo || mid >= hi) break;
      const std::vector<size_t> m = pick(p, mid);
      if (totals(p, m).bytes <= budget) {
        hi = mid;
        c = m;
      } else {
        lo = mid;
      }
    }
  }
  // Greedy fill: the single-group change with the largest loss decrease that still fits.
  for (;;) {
    const Totals t = totals(p, c);
    double best_gain = 0;
    size_t bg = 0, bo = 0;
    for (size_t g = 0; g < c.size(); ++g)
      for (size_t o = 0; o < p.bytes[g].size(); ++o) {
        if (o == c[g]) continue;
        const double nb = t.bytes - p.bytes[g][c[g]] + p.bytes[g][o];
        const double gain = p.loss[g][c[g]] - p.loss[g][o];
        if (nb <= budget && gain > best_gain) {
          best_gain = gain;
          bg = g;
          bo = o;
        }
      }
    if (best_gain <= 0) break;
    c[bg] = bo;
  }
  a.choice = c;
  const Totals t = totals(p, c);
  a.bytes = t.bytes;
  a.loss = t.loss;
  return a;
}

double entropy_size_estimator(const std::string&, const std::vector<QuantizedTensor>& tensors) {
  double b = 0;
  for (const QuantizedTensor& t : tensors) b += estimate_bytes(t);
  return b;
}

FitResult fit_to_budget(const std::vector<BudgetTensor>& tensors, const std::vector<BudgetCandidate>& candidates,
                        double budget_bytes, const GroupSizeEstimator& estimator, const Log& log) {
  if (tensors.empty()) throw Error("fit_to_budget: no tensors");
  if (candidates.empty()) throw Error("fit_to_budget: no candidates");
  if (!estimator) throw Error("fit_to_budget: no size estimator");
  std::vector<std::string> groups;
  std::vector<std::vector<size_t>> members;
  for (size_t i = 0; i < tensors.size(); ++i) {
    auto it = std::find(groups.begin(), groups.end(), tensors[i].group);
    if (it == groups.end()) {
      groups.push_back(tensors[i].group);
      members.emplace_back();
      it = groups.end() - 1;
    }
    members[static_cast<size_t>(it - groups.begin())].push_back(i);
    if (tensors[i].shape.size() != 2) throw Error("fit_to_budget: tensor '" + tensors[i].name + "' is not 2-D");
    if (!(tensors[i].sensitivity >= 0))
      throw Error("fit_to_budget: tensor '" + tensors[i].name + "' has a negative sensitivity");
  }
  AllocationProblem p;
  p.bytes.assign(groups.size(), std::vector<double>(candidates.size()));
  p.loss = p.bytes;
  for (size_t g = 0; g < groups.size(); ++g)
    for (size_t o = 0; o < candidates.size(); ++o) {
      std::vector<QuantizedTensor> qs;
      double loss = 0;
      for (size_t i : members[g]) {
        const BudgetTensor& bt = tensors[i];
        QuantSpec spec;
        spec.clip = Clip::sdclip;
        spec.bits = candidates[o].bits > 0 ? candidates[o].bits : bt.bits;
        spec.k = candidates[o].k;
        qs.push_back(quantize_rtn(bt.name, bt.shape, bt.values, spec));
        loss += bt.sensitivity * squared_error(bt.values, dequantize(qs.back()));
      }
      p.bytes[g][o] = estimator(groups[g], qs);
      p.loss[g][o] = loss;
    }
  const Allocation a = allocate_budget(p, budget_bytes);
  FitResult r;
  r.feasible = a.feasible;
  r.bytes = a.bytes;
  r.loss = a.loss;
  for (size_t g = 0; g < groups.size(); ++g) {
    r.groups.push_back({groups[g], candidates[a.choice[g]], p.bytes[g][a.choice[g]], p.loss[g][a.choice[g]]});
    if (log)
      log("budget: group " + groups[g] + " bits " + std::to_string(r.groups.back().candidate.bits) + " k " +
          std::to_string(r.groups.back().candidate.k) + " bytes " + std::to_string(r.groups.back().bytes));
  }
  if (!a.feasible && log)
    log("budget: even the smallest candidates need " + std::to_string(a.bytes) + " bytes > " +
        std::to_string(budget_bytes));
  return r;
}

std::vector<double> geometric_grid(double lo, double hi, int n) {
  if (!(lo > 0) || !(hi > 0) || n < 1) throw Error("geometric_grid: need lo, hi > 0 and n >= 1");
  if (n == 1) return {lo};
  std::vector<double> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[i] = lo * std::pow(hi / lo, static_cast<double>(i) / (n - 1));
  v.back() = hi;
  return v;
}

std::vector<int> bits_by_sensitivity(std::span<const double> sensitivity, size_t n_high, int low_bits,
                                     int high_bits, std::span<const char> forced) {
  if (!forced.empty() && forced.size() != sensitivity.size())
    throw Error("bits_by_sensitivity: 'forced' has " + std::to_string(forced.size()) + " entries for " +
                std::to_string(sensitivity.size()) + " tensors");
  std::vector<size_t> order(sensitivity.size());
  std::iota(order.begin(), order.end(), 0);
  auto is_forced = [&](size_t i) { return !forced.empty() && forced[i]; };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (is_forced(a) != is_forced(b)) return is_forced(a);
    return sensitivity[a] > sensitivity[b];
  });
  std::vector<int> bits(sensitivity.size(), low_bits);
  for (size_t i = 0; i < std::min(n_high, order.size()); ++i) bits[order[i]] = high_bits;
  return bits;
}

}  // namespace ptool::quant

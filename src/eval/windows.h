// Which targets each evaluation pass scores. Pure functions, so "every target scored exactly once" is
// testable for any sizes (REFERENCE.md §2.3 standard, §7.2 sliding window with the fixed rule).
#pragma once
#include <cstdint>
#include <vector>

namespace ptool::eval {

// A window feeds tokens[start, start + len) and scores the targets of positions [score_from, len),
// i.e. targets tokens[start + p + 1] for p in that range.
struct Window {
  int64_t start = 0;
  int64_t len = 0;
  int64_t score_from = 0;
  int64_t scored() const { return len - score_from; }
};

// Standard eval: (n_targets / L) non-overlapping full windows; the tail shorter than L is dropped.
std::vector<Window> standard_windows(int64_t n_targets, int64_t L);
// Sliding window of length L and stride S (0 < S <= L): starts 0, S, 2S, ... kept while
// start + (L - S) < n_targets; the first window scores all its positions, later ones [L - S, len).
std::vector<Window> sliding_windows(int64_t n_targets, int64_t L, int64_t S);

}  // namespace ptool::eval

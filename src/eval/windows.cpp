#include "src/eval/windows.h"

#include <algorithm>

#include "formats/error.h"

namespace ptool::eval {

std::vector<Window> standard_windows(int64_t n_targets, int64_t L) {
  if (L < 1) throw Error("eval sequence length must be positive");
  std::vector<Window> w;
  for (int64_t s = 0; s + L <= n_targets; s += L) w.push_back({s, L, 0});
  return w;
}

std::vector<Window> sliding_windows(int64_t n_targets, int64_t L, int64_t S) {
  if (L < 1 || S < 1 || S > L) throw Error("sliding window needs 0 < stride <= seq_len");
  std::vector<Window> w;
  for (int64_t s = 0; s == 0 || s + (L - S) < n_targets; s += S) {
    if (n_targets <= 0) break;
    const int64_t len = std::min(L, n_targets - s);
    w.push_back({s, len, s == 0 ? 0 : L - S});
  }
  return w;
}

}  // namespace ptool::eval

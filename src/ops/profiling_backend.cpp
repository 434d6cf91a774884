#include "src/ops/profiling_backend.h"

#include <algorithm>
#include <cstdio>

namespace ptool {

std::string format_profile(const OpProfile& profile) {
  std::vector<std::pair<std::string, OpStats>> rows(profile.begin(), profile.end());
  std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  double total = 0;
  for (const auto& r : rows) total += r.second.ms;
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-32s %8s %11s %7s %10s %9s %9s\n", "op", "calls", "ms", "share", "ms/call",
                "GB/s", "TFLOP/s");
  out += line;
  for (const auto& [op, s] : rows) {
    const double sec = s.ms / 1e3;
    std::snprintf(line, sizeof line, "%-32s %8lld %11.3f %6.1f%% %10.4f %9.1f %9.2f\n", op.c_str(),
                  static_cast<long long>(s.calls), s.ms, total > 0 ? 100.0 * s.ms / total : 0.0,
                  s.calls ? s.ms / static_cast<double>(s.calls) : 0.0, sec > 0 ? s.bytes / sec / 1e9 : 0.0,
                  sec > 0 ? s.flops / sec / 1e12 : 0.0);
    out += line;
  }
  std::snprintf(line, sizeof line, "%-32s %8s %11.3f\n", "total", "", total);
  out += line;
  return out;
}

}  // namespace ptool

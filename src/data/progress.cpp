#include "src/data/progress.h"

#include <unistd.h>

#include <cstdio>

namespace ptool::data {

Progress::Progress(std::string label, double interval_s, bool enabled)
    : label_(std::move(label)),
      interval_s_(interval_s),
      enabled_(enabled),
      tty_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

void Progress::update(uint64_t done, uint64_t total, const std::string& detail) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_).count();
  if (since < (tty_ ? 0.2 : interval_s_)) return;
  last_ = now;
  print(done, total, detail, false);
}

void Progress::finish(uint64_t done, uint64_t total, const std::string& detail) {
  if (!enabled_) return;
  // Off a terminal, a short job that never printed stays silent; the caller prints its summary.
  if (!tty_ && !printed_) return;
  print(done, total, detail, true);
}

void Progress::print(uint64_t done, uint64_t total, const std::string& detail, bool final) {
  printed_ = true;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double frac = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  const double mb_s = elapsed > 0 ? static_cast<double>(done) / 1e6 / elapsed : 0.0;
  if (tty_) {
    constexpr int kWidth = 30;
    const int fill = static_cast<int>(frac * kWidth + 0.5);
    std::string bar(static_cast<size_t>(fill), '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r%s [%s] %5.1f%% %.1f MB/s %s\x1b[K%s", label_.c_str(), bar.c_str(), 100.0 * frac, mb_s,
                 detail.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s: %.1f%% (%.1f/%.1f MB, %.1f MB/s, %.0fs) %s\n", label_.c_str(), 100.0 * frac,
                 static_cast<double>(done) / 1e6, static_cast<double>(total) / 1e6, mb_s, elapsed, detail.c_str());
  }
  std::fflush(stderr);
}

}  // namespace ptool::data

// Progress display: a redrawn bar on a terminal, nothing otherwise (log lines carry the information).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

namespace ptool::cmd {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label) : label_(std::move(label)), tty_(isatty(fileno(stderr)) != 0) {}
  ~ProgressBar() { finish(); }
  void update(int64_t done, int64_t total, const std::string& extra = "") {
    if (!tty_ || total <= 0) return;
    const int width = 30;
    const int fill = static_cast<int>(width * done / total);
    std::fprintf(stderr, "\r%s [%s%s] %lld/%lld %s\x1b[K", label_.c_str(), std::string(fill, '#').c_str(),
                 std::string(width - fill, '.').c_str(), static_cast<long long>(done), static_cast<long long>(total),
                 extra.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }
  // Clears the bar so that a log line can be printed.
  void clear() {
    if (drawn_) std::fprintf(stderr, "\r\x1b[K");
    drawn_ = false;
  }
  void finish() { clear(); }

 private:
  std::string label_;
  bool tty_;
  bool drawn_ = false;
};

}  // namespace ptool::cmd

// Progress reporting on stderr: a \r-updated bar when stderr is a terminal, otherwise a plain line
// every few seconds (so logs stay readable).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace ptool::data {

class Progress {
 public:
  // label: what is being done ("shards"); interval: seconds between plain lines when not a terminal.
  explicit Progress(std::string label, double interval_s = 5.0, bool enabled = true);
  // done/total in bytes of input; detail is appended (e.g. "1234 docs, 56789 tokens").
  void update(uint64_t done, uint64_t total, const std::string& detail);
  // Prints the final state (and ends the \r line on a terminal).
  void finish(uint64_t done, uint64_t total, const std::string& detail);

 private:
  void print(uint64_t done, uint64_t total, const std::string& detail, bool final);
  std::string label_;
  double interval_s_;
  bool enabled_;
  bool tty_;
  bool printed_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace ptool::data

// GPTQ calibration on the GPU (src/model/calibrate.cpp): H_w += X^T X for the input X of each linear weight w,
// accumulated in double on the device and downloaded once at the end, so the step loop never waits for the
// host. Plain C++ header (no CUDA includes); exists only in CUDA builds (PTOOL_HAVE_CUDA).
//
// Numerics: X (fp32) is converted to double in row chunks and added with cuBLAS DSYRK (double products and
// sums), as the CPU path adds Xd^T Xd in double: the two differ only by summation order (~1e-16 relative).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "src/ops/backend.h"

namespace ptool {

class CudaHessians {
 public:
  // Work is queued on `backend`'s stream (it must be a CUDA backend: throws ptool::Error otherwise), after the
  // forward pass that produced X and before the next one that overwrites it. X is converted to double
  // `chunk_bytes` at a time (tests make it small to cross chunk boundaries).
  explicit CudaHessians(Backend<float>& backend, size_t chunk_bytes = size_t{64} << 20);
  ~CudaHessians();
  CudaHessians(const CudaHessians&) = delete;
  CudaHessians& operator=(const CudaHessians&) = delete;

  // H_weight += X^T X for row-major X [rows, cols] in the backend's memory. A weight keeps the cols of its first
  // call (throws ptool::Error on a different one).
  void add(const std::string& weight, const float* X, int64_t rows, int64_t cols);
  // Every H (row-major cols x cols, both triangles filled); waits for the device.
  std::map<std::string, std::vector<double>> download() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptool

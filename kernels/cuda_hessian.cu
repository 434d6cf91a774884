// CudaHessians (cuda_hessian.h): fp32 -> double conversion of row chunks of X, then cuBLAS DSYRK into one
// cols x cols double accumulator per weight (lower triangle, column-major = upper triangle row-major).
#include "kernels/cuda_hessian.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>

#include "formats/error.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_internal.h"
#include "kernels/cuda_launch.h"

namespace ptool {

namespace {

void check_cublas(const char* call, cublasStatus_t st) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLAS: ") + call + " failed: " + cublasGetStatusName(st) + ": " + cublasGetStatusString(st));
}

__global__ void to_double_kernel(const float* x, int64_t n, double* y) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = x[i];
}

}  // namespace

struct CudaHessians::Impl {
  struct Acc {
    int64_t cols = 0;
    double* H = nullptr;
  };
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  double* chunk = nullptr;  // double copy of X, converted and added chunk by chunk
  size_t chunk_bytes = 0;
  std::map<std::string, Acc> accs;

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);  // destructor: errors ignored
    for (auto& [name, a] : accs) cudaFree(a.H);
    cudaFree(chunk);
    if (blas) cublasDestroy(blas);
  }
};

CudaHessians::CudaHessians(Backend<float>& backend, size_t chunk_bytes) : impl_(std::make_unique<Impl>()) {
  impl_->stream = static_cast<cudaStream_t>(cuda_stream_of(backend));
  check_cublas("cublasCreate", cublasCreate(&impl_->blas));
  check_cublas("cublasSetStream", cublasSetStream(impl_->blas, impl_->stream));
  impl_->chunk_bytes = chunk_bytes;
  PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&impl_->chunk), chunk_bytes));
}

CudaHessians::~CudaHessians() = default;

void CudaHessians::add(const std::string& weight, const float* X, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) throw Error("CudaHessians::add: empty input for " + weight);
  Impl& im = *impl_;
  auto [it, fresh] = im.accs.try_emplace(weight);
  Impl::Acc& a = it->second;
  if (fresh) {
    a.cols = cols;
    const size_t bytes = static_cast<size_t>(cols * cols) * sizeof(double);
    PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&a.H), bytes));
    PTOOL_CUDA_CHECK(cudaMemsetAsync(a.H, 0, bytes, im.stream));
  } else if (a.cols != cols) {
    throw Error("CudaHessians::add: " + weight + " had " + std::to_string(a.cols) + " columns, now " +
                std::to_string(cols));
  }
  const int64_t chunk_rows = static_cast<int64_t>(im.chunk_bytes / sizeof(double)) / cols;
  if (chunk_rows < 1)
    throw Error("CudaHessians::add: " + std::to_string(cols) + " columns do not fit the conversion chunk");
  const double one = 1.0;
  for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
    const int64_t r = std::min(chunk_rows, rows - r0);
    const int64_t n = r * cols;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
    PTOOL_LAUNCH(to_double_kernel, blocks, 256, 0, im.stream)(X + r0 * cols, n, im.chunk);
    PTOOL_CUDA_LAUNCHED("to_double", im.stream);
    // Column-major, the chunk is X^T (cols x r, ld cols): X^T X = A A^T, a rank-r update of the lower triangle.
    check_cublas("cublasDsyrk", cublasDsyrk(im.blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, static_cast<int>(cols),
                                            static_cast<int>(r), &one, im.chunk, static_cast<int>(cols), &one, a.H,
                                            static_cast<int>(cols)));
  }
}

std::map<std::string, std::vector<double>> CudaHessians::download() const {
  std::map<std::string, std::vector<double>> out;
  for (const auto& [name, a] : impl_->accs) {
    std::vector<double>& h = out[name];
    const size_t c = static_cast<size_t>(a.cols);
    h.resize(c * c);
    PTOOL_CUDA_CHECK(cudaMemcpyAsync(h.data(), a.H, c * c * sizeof(double), cudaMemcpyDeviceToHost, impl_->stream));
  }
  PTOOL_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  // The device filled the upper triangle of the row-major matrix (i <= j); mirror it.
  for (auto& [name, h] : out) {
    const size_t c = static_cast<size_t>(impl_->accs.at(name).cols);
    for (size_t i = 0; i < c; ++i)
      for (size_t j = 0; j < i; ++j) h[i * c + j] = h[j * c + i];
  }
  return out;
}

}  // namespace ptool

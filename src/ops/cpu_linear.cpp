// CPU reference: linear layers (y = x W^T). These GEMMs dominate the CPU step time, so they go through
// Eigen's blocked GEMM on row-major maps of the caller's buffers (no copies).
#include <Eigen/Core>

#include "src/ops/cpu_ops.h"

namespace ptool::cpu {

namespace {
template <class T> using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T> using CMap = Eigen::Map<const RowMajor<T>>;
template <class T> using MMap = Eigen::Map<RowMajor<T>>;
}  // namespace

template <class T> void linear_forward(const T* x, const T* W, int64_t N, int64_t K, int64_t M, T* y) {
  CMap<T> X(x, N, K);
  CMap<T> Wm(W, M, K);
  MMap<T> Y(y, N, M);
  Y.noalias() = X * Wm.transpose();
}

template <class T> void linear_backward(const T* dy, const T* x, const T* W, int64_t N, int64_t K, int64_t M,
                                        T* dx_acc, T* dW_acc) {
  CMap<T> dY(dy, N, M);
  if (dx_acc) {
    CMap<T> Wm(W, M, K);
    MMap<T> dX(dx_acc, N, K);
    dX.noalias() += dY * Wm;
  }
  if (dW_acc) {
    CMap<T> X(x, N, K);
    MMap<T> dW(dW_acc, M, K);
    dW.noalias() += dY.transpose() * X;
  }
}

template void linear_forward<float>(const float*, const float*, int64_t, int64_t, int64_t, float*);
template void linear_forward<double>(const double*, const double*, int64_t, int64_t, int64_t, double*);
template void linear_backward<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t, float*,
                                     float*);
template void linear_backward<double>(const double*, const double*, const double*, int64_t, int64_t, int64_t,
                                      double*, double*);

}  // namespace ptool::cpu

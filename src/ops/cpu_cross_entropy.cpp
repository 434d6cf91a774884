// CPU reference: logit softcap + softmax cross-entropy, evaluated in double whatever T is.
#include <Eigen/Core>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "src/ops/aligned_vector.h"
#include "src/ops/cpu_ops.h"

namespace ptool::cpu {

// With t = tanh(z/c) and zc = c t (or zc = z without a cap):
//   l = logsumexp(zc) - zc[y] ;  dl/dz_j = (softmax(zc)_j - [j == y]) * (1 - t_j^2).
template <class T> double softcap_cross_entropy(const T* z, const int32_t* targets, int64_t N, int64_t V, T cap,
                                                double* losses, T* dz, T grad_scale) {
  if (N < 0 || V <= 0) {
    throw std::invalid_argument("softcap_cross_entropy: bad shape N=" + std::to_string(N) + " V=" + std::to_string(V));
  }
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0 || targets[n] >= V) {
      throw std::out_of_range("softcap_cross_entropy: target " + std::to_string(targets[n]) + " at row " +
                              std::to_string(n) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
    }
  }
  const bool capped = cap > T(0);
  const double c = static_cast<double>(cap);
  const double gs = static_cast<double>(grad_scale);
  double total = 0.0;

#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    thread_local AlignedVector<double> tbuf, zbuf;
    if (tbuf.size() < static_cast<size_t>(V)) {
      tbuf.resize(static_cast<size_t>(V));
      zbuf.resize(static_cast<size_t>(V));
    }
    Eigen::Map<Eigen::ArrayXd> t(tbuf.data(), V);   // tanh(z / c), kept for the derivative
    Eigen::Map<Eigen::ArrayXd> zc(zbuf.data(), V);  // capped logits, then their exp, then probabilities
    const T* zr = z + n * V;
    for (int64_t j = 0; j < V; ++j) zc[j] = static_cast<double>(zr[j]);
    if (capped) {
      // tanh(x) = 1 - 2 / (1 + e^2x): Eigen vectorizes exp but not tanh for double; within 4e-16 of std::tanh.
      t = 1.0 - 2.0 / (1.0 + (zc * (2.0 / c)).exp());
      zc = c * t;
    }
    const int64_t y = targets[n];
    const double m = zc.maxCoeff();
    const double zy = zc[y];
    zc = (zc - m).exp();
    const double sum = zc.sum();
    const double lse = m + std::log(sum);
    const double loss = lse - zy;
    if (losses) losses[n] = loss;
    total += loss;
    if (dz) {
      zc /= sum;  // softmax
      zc[y] -= 1.0;
      if (capped) zc *= (1.0 - t.square());
      T* dr = dz + n * V;  // z row has been fully read above, so dz may alias z
      for (int64_t j = 0; j < V; ++j) dr[j] = static_cast<T>(gs * zc[j]);
    }
  }
  return total;
}

template double softcap_cross_entropy<float>(const float*, const int32_t*, int64_t, int64_t, float, double*, float*,
                                             float);
template double softcap_cross_entropy<double>(const double*, const int32_t*, int64_t, int64_t, double, double*,
                                              double*, double);

}  // namespace ptool::cpu

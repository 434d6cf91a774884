// The seeds' token features at the embedding (REFERENCE.md 8.1): BigramHash's bucket of each (previous, current)
// token pair, and SmearGate's blend of each position with the one before it.
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "src/ops/cpu_ops.h"

namespace ptool::cpu {

void bigram_buckets(const int32_t* tokens, int64_t B, int64_t Tn, int64_t buckets, int32_t* out) {
  if (buckets < 2)
    throw std::invalid_argument("bigram_buckets: needs at least 2 buckets, got " + std::to_string(buckets));
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* x = tokens + b * Tn;
    int32_t* o = out + b * Tn;
    if (Tn > 0) o[0] = static_cast<int32_t>(buckets - 1);
    for (int64_t t = 1; t < Tn; ++t) {
      const int64_t h = (int64_t{36313} * x[t]) ^ (int64_t{27191} * x[t - 1]);
      o[t] = static_cast<int32_t>(h % (buckets - 1));
    }
  }
}

template <class T> T smear_sigmoid(T g) { return T(1) / (T(1) + std::exp(-g)); }

template <class T> void smear_forward(const T* x, const T* g, int64_t B, int64_t Tn, int64_t D, T* y) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = Tn - 1; t >= 0; --t)  // backwards in t, so that y may alias x
      for (int64_t d = 0; d < D; ++d) {
        const T s = smear_sigmoid(g[d]);
        const int64_t i = (b * Tn + t) * D + d;
        const T prev = t > 0 ? x[i - D] : T(0);
        y[i] = (T(1) - s) * x[i] + s * prev;
      }
}

template <class T> void smear_backward(const T* dy, const T* x, const T* g, int64_t B, int64_t Tn, int64_t D,
                                       T* dx_acc, T* dg_acc) {
  std::vector<double> sums(static_cast<size_t>(D), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t d = 0; d < D; ++d) {
        const T s = smear_sigmoid(g[d]);
        const int64_t i = (b * Tn + t) * D + d;
        if (dx_acc) dx_acc[i] += (T(1) - s) * dy[i] + (t + 1 < Tn ? s * dy[i + D] : T(0));
        const T prev = t > 0 ? x[i - D] : T(0);
        sums[static_cast<size_t>(d)] += static_cast<double>(dy[i]) * static_cast<double>(prev - x[i]);
      }
  if (!dg_acc) return;
  for (int64_t d = 0; d < D; ++d) {
    const double s = static_cast<double>(smear_sigmoid(g[d]));
    dg_acc[d] += static_cast<T>(sums[static_cast<size_t>(d)] * s * (1.0 - s));
  }
}

template void smear_forward<float>(const float*, const float*, int64_t, int64_t, int64_t, float*);
template void smear_forward<double>(const double*, const double*, int64_t, int64_t, int64_t, double*);
template void smear_backward<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t, float*,
                                    float*);
template void smear_backward<double>(const double*, const double*, const double*, int64_t, int64_t, int64_t,
                                     double*, double*);

}  // namespace ptool::cpu

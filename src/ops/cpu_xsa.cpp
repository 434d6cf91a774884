// Exclusive self-attention (XSA, REFERENCE.md 8.1): attention's output minus its component along the token's own
// value vector.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "src/ops/cpu_ops.h"

namespace ptool::cpu {

namespace {

void check_xsa_shape(const char* op, int64_t H, int64_t Hkv) {
  if (H < 1 || Hkv < 1 || H % Hkv != 0)
    throw std::invalid_argument(std::string(op) + ": H (" + std::to_string(H) +
                                ") must be a positive multiple of Hkv (" + std::to_string(Hkv) + ")");
}

// r = 1 / max(|v|, eps) of one value row (F.normalize's clamp), with |v| in double; returns |v|.
template <class T> double inverse_norm(const T* v, int64_t hd, T& r) {
  double ss = 0.0;
  for (int64_t j = 0; j < hd; ++j) ss += static_cast<double>(v[j]) * static_cast<double>(v[j]);
  const double n = std::sqrt(ss);
  r = static_cast<T>(1.0 / std::max(n, kXsaEps));
  return n;
}

template <class T> double dot_unit(const T* a, const T* v, T r, int64_t hd) {  // a · (v r), in double
  double s = 0.0;
  for (int64_t j = 0; j < hd; ++j) s += static_cast<double>(a[j]) * static_cast<double>(v[j] * r);
  return s;
}

}  // namespace

template <class T> void xsa_forward(const T* att, const T* v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, T* y) {
  check_xsa_shape("xsa_forward", H, Hkv);
  const int64_t G = H / Hkv;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < Hkv; ++g) {
      const T* vr = v + (n * Hkv + g) * hd;
      T r;
      inverse_norm(vr, hd, r);
      for (int64_t h = g * G; h < (g + 1) * G; ++h) {
        const T* a = att + (n * H + h) * hd;
        T* o = y + (n * H + h) * hd;
        const T c = static_cast<T>(dot_unit(a, vr, r, hd));
        for (int64_t j = 0; j < hd; ++j) o[j] = a[j] - c * (vr[j] * r);
      }
    }
}

// With u = v r: y = a - (a·u) u, so da = dy - (dy·u) u and du = -((a·u) dy + (dy·u) a) summed over the group's
// heads; through u = v / |v|: dv = r (du - (du·u) u), or r du where the clamp holds (|v| <= eps).
template <class T> void xsa_backward(const T* dy, const T* att, const T* v, int64_t N, int64_t H, int64_t Hkv,
                                     int64_t hd, T* datt_acc, T* dv_acc) {
  check_xsa_shape("xsa_backward", H, Hkv);
  const int64_t G = H / Hkv;
  std::vector<double> du(static_cast<size_t>(hd));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < Hkv; ++g) {
      const T* vr = v + (n * Hkv + g) * hd;
      T r;
      const double norm = inverse_norm(vr, hd, r);
      std::fill(du.begin(), du.end(), 0.0);
      for (int64_t h = g * G; h < (g + 1) * G; ++h) {
        const T* a = att + (n * H + h) * hd;
        const T* d = dy + (n * H + h) * hd;
        const T c = static_cast<T>(dot_unit(a, vr, r, hd)), e = static_cast<T>(dot_unit(d, vr, r, hd));
        if (datt_acc) {
          T* o = datt_acc + (n * H + h) * hd;
          for (int64_t j = 0; j < hd; ++j) o[j] += d[j] - e * (vr[j] * r);
        }
        for (int64_t j = 0; j < hd; ++j) du[j] -= static_cast<double>(c * d[j]) + static_cast<double>(e * a[j]);
      }
      if (!dv_acc) continue;
      T* o = dv_acc + (n * Hkv + g) * hd;
      double p = 0.0;
      if (norm > kXsaEps)
        for (int64_t j = 0; j < hd; ++j) p += du[j] * static_cast<double>(vr[j] * r);
      for (int64_t j = 0; j < hd; ++j) o[j] += r * static_cast<T>(du[j] - p * static_cast<double>(vr[j] * r));
    }
}

template void xsa_forward<float>(const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*);
template void xsa_forward<double>(const double*, const double*, int64_t, int64_t, int64_t, int64_t, double*);
template void xsa_backward<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                  float*, float*);
template void xsa_backward<double>(const double*, const double*, const double*, int64_t, int64_t, int64_t, int64_t,
                                   double*, double*);

}  // namespace ptool::cpu

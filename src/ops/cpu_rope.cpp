// CPU reference: rotary position embedding, half-split (non-interleaved), optionally partial.
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "src/ops/cpu_ops.h"

namespace ptool::cpu {

namespace {

void check_rope_args(const char* op, int64_t hd, int64_t rot, double base) {
  if (rot < 0 || rot % 2 != 0 || rot > hd) {
    throw std::invalid_argument(std::string(op) + ": rotary dims " + std::to_string(rot) +
                                " must be even and in [0, head_dim = " + std::to_string(hd) + "]");
  }
  if (!(base > 0.0)) throw std::invalid_argument(std::string(op) + ": base must be > 0, got " + std::to_string(base));
}

// Rotates pairs (x[i], x[i + rot/2]) of every head by angle sign * pos * inv_freq[i].
template <class T> void rope_apply(T* x, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base,
                                   double sign) {
  const int64_t half = rot / 2;
  if (half == 0) return;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[static_cast<size_t>(i)] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rot));
  }
  std::vector<T> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
  for (int64_t t = 0; t < Tn; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(t) * inv_freq[static_cast<size_t>(i)];
      cs[static_cast<size_t>(i)] = static_cast<T>(std::cos(a));
      sn[static_cast<size_t>(i)] = static_cast<T>(sign * std::sin(a));
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        T* v = x + ((b * Tn + t) * H + h) * hd;
        for (int64_t i = 0; i < half; ++i) {
          const T c = cs[static_cast<size_t>(i)], s = sn[static_cast<size_t>(i)];
          const T x1 = v[i], x2 = v[i + half];
          v[i] = x1 * c + x2 * s;
          v[i + half] = -x1 * s + x2 * c;
        }
      }
    }
  }
}

}  // namespace

template <class T> void rope_forward(T* x, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base) {
  check_rope_args("rope_forward", hd, rot, base);
  rope_apply(x, B, Tn, H, hd, rot, base, 1.0);
}

// The rotation is orthogonal, so the gradient goes back through its transpose: the rotation by -angle.
template <class T> void rope_backward(T* dx, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base) {
  check_rope_args("rope_backward", hd, rot, base);
  rope_apply(dx, B, Tn, H, hd, rot, base, -1.0);
}

double rope_ntk_base(double base, int64_t rot, int64_t seq_len, int64_t train_seq_len) {
  if (train_seq_len <= 0) {
    throw std::invalid_argument("rope_ntk_base: train_seq_len must be > 0, got " + std::to_string(train_seq_len));
  }
  if (seq_len <= train_seq_len) return base;
  if (rot <= 2) {
    throw std::invalid_argument("rope_ntk_base: NTK rescaling needs more than 2 rotary dims, got " +
                                std::to_string(rot));
  }
  const double scale = static_cast<double>(seq_len) / static_cast<double>(train_seq_len);
  return base * std::pow(scale, static_cast<double>(rot) / static_cast<double>(rot - 2));
}

template void rope_forward<float>(float*, int64_t, int64_t, int64_t, int64_t, int64_t, double);
template void rope_forward<double>(double*, int64_t, int64_t, int64_t, int64_t, int64_t, double);
template void rope_backward<float>(float*, int64_t, int64_t, int64_t, int64_t, int64_t, double);
template void rope_backward<double>(double*, int64_t, int64_t, int64_t, int64_t, int64_t, double);

}  // namespace ptool::cpu

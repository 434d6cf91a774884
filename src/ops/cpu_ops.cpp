// CPU reference: embedding, RMSNorm, scales, activations, skips, resid_mix.
// Linear (cpu_linear.cpp), RoPE (cpu_rope.cpp), attention (cpu_attention.cpp) and the loss
// (cpu_cross_entropy.cpp) live in their own files.
#include "src/ops/cpu_ops.h"

#include <cmath>
#include <cstring>

namespace ptool::cpu {

template <class T> void embedding_forward(const T* table, const int32_t* tokens, int64_t N, int64_t D, T* out) {
  for (int64_t n = 0; n < N; ++n) {
    std::memcpy(out + n * D, table + static_cast<int64_t>(tokens[n]) * D, static_cast<size_t>(D) * sizeof(T));
  }
}

template <class T> void embedding_backward(const T* dout, const int32_t* tokens, int64_t N, int64_t D, T* dtable_acc) {
  for (int64_t n = 0; n < N; ++n) {
    T* row = dtable_acc + static_cast<int64_t>(tokens[n]) * D;
    const T* g = dout + n * D;
    for (int64_t d = 0; d < D; ++d) row[d] += g[d];
  }
}

template <class T> void rmsnorm_forward(const T* x, int64_t N, int64_t D, T eps, T* out, T* rstd) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * D;
    double ss = 0.0;  // sum of squares in double: D is small, this is cheap and exact enough for fp32
    for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(xr[d]) * static_cast<double>(xr[d]);
    const T r = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(D) + static_cast<double>(eps)));
    rstd[n] = r;
    T* o = out + n * D;
    for (int64_t d = 0; d < D; ++d) o[d] = xr[d] * r;
  }
}

// out = x r, r = (mean(x^2) + eps)^(-1/2):  dx = r dout - r^3 x mean(dout x).
template <class T> void rmsnorm_backward(const T* dout, const T* x, const T* rstd, int64_t N, int64_t D, T* dx_acc) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * D;
    const T* g = dout + n * D;
    double dot = 0.0;
    for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(g[d]) * static_cast<double>(xr[d]);
    const T r = rstd[n];
    const T c = static_cast<T>(static_cast<double>(r) * r * r * dot / static_cast<double>(D));
    T* dx = dx_acc + n * D;
    for (int64_t d = 0; d < D; ++d) dx[d] += r * g[d] - c * xr[d];
  }
}

template <class T> void channel_scale_forward(const T* x, const T* s, int64_t N, int64_t D, T* y) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t d = 0; d < D; ++d) y[n * D + d] = s[d] * x[n * D + d];
  }
}

template <class T> void channel_scale_backward(const T* dy, const T* x, const T* s, int64_t N, int64_t D,
                                               T* dx_acc, T* ds_acc) {
  for (int64_t n = 0; n < N; ++n) {
    const T* g = dy + n * D;
    if (dx_acc) {
      for (int64_t d = 0; d < D; ++d) dx_acc[n * D + d] += s[d] * g[d];
    }
    if (ds_acc) {
      for (int64_t d = 0; d < D; ++d) ds_acc[d] += g[d] * x[n * D + d];
    }
  }
}

template <class T> void head_scale_forward(const T* x, const T* g, int64_t N, int64_t H, int64_t hd, T* y) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t o = (n * H + h) * hd;
      for (int64_t i = 0; i < hd; ++i) y[o + i] = g[h] * x[o + i];
    }
  }
}

template <class T> void head_scale_backward(const T* dy, const T* x, const T* g, int64_t N, int64_t H, int64_t hd,
                                            T* dx_acc, T* dg_acc) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t o = (n * H + h) * hd;
      if (dx_acc) {
        for (int64_t i = 0; i < hd; ++i) dx_acc[o + i] += g[h] * dy[o + i];
      }
      if (dg_acc) {
        T acc = 0;
        for (int64_t i = 0; i < hd; ++i) acc += dy[o + i] * x[o + i];
        dg_acc[h] += acc;
      }
    }
  }
}

template <class T> void activation_forward(Activation a, const T* h, int64_t n, T* out) {
  if (a == Activation::relu2) {
    for (int64_t i = 0; i < n; ++i) {
      const T r = h[i] > T(0) ? h[i] : T(0);
      out[i] = r * r;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const T r = h[i] > T(0) ? h[i] : T(0.5) * h[i];
      out[i] = r * r;
    }
  }
}

template <class T> void activation_backward(Activation a, const T* dout, const T* h, int64_t n, T* dh_acc) {
  if (a == Activation::relu2) {
    // d/dh relu(h)^2 = 2 relu(h)
    for (int64_t i = 0; i < n; ++i) {
      const T r = h[i] > T(0) ? h[i] : T(0);
      dh_acc[i] += T(2) * r * dout[i];
    }
  } else {
    // f = leaky(h, 0.5): d/dh f^2 = 2 f f' = 2h (h > 0), 2 * 0.5h * 0.5 = 0.5h (h <= 0)
    for (int64_t i = 0; i < n; ++i) {
      const T d = h[i] > T(0) ? T(2) * h[i] : T(0.5) * h[i];
      dh_acc[i] += d * dout[i];
    }
  }
}

template <class T> void skip_add_forward(T* x, const T* skip, const T* w, int64_t N, int64_t D) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t d = 0; d < D; ++d) x[n * D + d] += w[d] * skip[n * D + d];
  }
}

template <class T> void skip_add_backward(const T* dy, const T* skip, const T* w, int64_t N, int64_t D,
                                          T* dskip_acc, T* dw_acc) {
  for (int64_t n = 0; n < N; ++n) {
    const T* g = dy + n * D;
    if (dskip_acc) {
      for (int64_t d = 0; d < D; ++d) dskip_acc[n * D + d] += w[d] * g[d];
    }
    if (dw_acc) {
      for (int64_t d = 0; d < D; ++d) dw_acc[d] += g[d] * skip[n * D + d];
    }
  }
}

namespace {
template <class T> T sigmoid(T g) { return T(1) / (T(1) + std::exp(-g)); }
}  // namespace

template <class T> void gated_skip_forward(const T* x, const T* skip, const T* w, const T* g, int64_t N, int64_t D,
                                           T* y) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t d = 0; d < D; ++d) {
      const T s = sigmoid(g[d]);
      const int64_t i = n * D + d;
      y[i] = s * x[i] + (T(1) - s) * w[d] * skip[i];
    }
  }
}

// y = s x + (1 - s) w k:  dx = s dy ; dk = (1 - s) w dy ; dw = (1 - s) k dy ; dg = s (1 - s) (x - w k) dy.
template <class T> void gated_skip_backward(const T* dy, const T* x, const T* skip, const T* w, const T* g,
                                            int64_t N, int64_t D, T* dx_acc, T* dskip_acc, T* dw_acc, T* dg_acc) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t d = 0; d < D; ++d) {
      const T s = sigmoid(g[d]);
      const int64_t i = n * D + d;
      const T gy = dy[i];
      if (dx_acc) dx_acc[i] += s * gy;
      if (dskip_acc) dskip_acc[i] += (T(1) - s) * w[d] * gy;
      if (dw_acc) dw_acc[d] += (T(1) - s) * skip[i] * gy;
      if (dg_acc) dg_acc[d] += s * (T(1) - s) * (x[i] - w[d] * skip[i]) * gy;
    }
  }
}

template <class T> void resid_mix_forward(const T* x, const T* x0, const T* m, int64_t N, int64_t D, T* y) {
  const T* m0 = m;
  const T* m1 = m + D;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = n * D + d;
      y[i] = m0[d] * x[i] + m1[d] * x0[i];
    }
  }
}

namespace {
// dx += (accumulate) or dx = m0 ⊙ dy; dx is written last for each element, so it may be dy itself.
template <class T> void resid_mix_backward_impl(const T* dy, const T* x, const T* x0, const T* m, int64_t N,
                                                int64_t D, T* dx, bool accumulate, T* dx0_acc, T* dm_acc) {
  const T* m0 = m;
  const T* m1 = m + D;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = n * D + d;
      const T gy = dy[i];
      if (dx0_acc) dx0_acc[i] += m1[d] * gy;
      if (dm_acc) {
        dm_acc[d] += x[i] * gy;
        dm_acc[D + d] += x0[i] * gy;
      }
      if (dx) dx[i] = accumulate ? dx[i] + m0[d] * gy : m0[d] * gy;
    }
  }
}
}  // namespace

template <class T> void resid_mix_backward(const T* dy, const T* x, const T* x0, const T* m, int64_t N, int64_t D,
                                           T* dx_acc, T* dx0_acc, T* dm_acc) {
  resid_mix_backward_impl(dy, x, x0, m, N, D, dx_acc, true, dx0_acc, dm_acc);
}

template <class T> void resid_mix_backward_set_dx(const T* dy, const T* x, const T* x0, const T* m, int64_t N,
                                                  int64_t D, T* dx, T* dx0_acc, T* dm_acc) {
  resid_mix_backward_impl(dy, x, x0, m, N, D, dx, false, dx0_acc, dm_acc);
}

template <class T> void scaled_add_forward(const T* x, const T* s, int64_t N, int64_t C, T* y) {
  const T a = s[0];
  for (int64_t i = 0; i < N * C; ++i) y[i] += a * x[i];
}

template <class T> void scaled_add_backward(const T* dy, int64_t ld_dy, const T* x, const T* s, int64_t N, int64_t C,
                                            T* dx_acc, T* ds_acc) {
  double sum = 0.0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const T g = dy[n * ld_dy + c];
      if (dx_acc) dx_acc[n * C + c] += s[0] * g;
      sum += static_cast<double>(g) * static_cast<double>(x[n * C + c]);
    }
  if (ds_acc) ds_acc[0] += static_cast<T>(sum);
}

#define PTOOL_INSTANTIATE(T)                                                                                        \
  template void embedding_forward<T>(const T*, const int32_t*, int64_t, int64_t, T*);                              \
  template void embedding_backward<T>(const T*, const int32_t*, int64_t, int64_t, T*);                             \
  template void rmsnorm_forward<T>(const T*, int64_t, int64_t, T, T*, T*);                                         \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, int64_t, int64_t, T*);                           \
  template void channel_scale_forward<T>(const T*, const T*, int64_t, int64_t, T*);                                \
  template void channel_scale_backward<T>(const T*, const T*, const T*, int64_t, int64_t, T*, T*);                 \
  template void head_scale_forward<T>(const T*, const T*, int64_t, int64_t, int64_t, T*);                          \
  template void head_scale_backward<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, T*, T*);           \
  template void activation_forward<T>(Activation, const T*, int64_t, T*);                                          \
  template void activation_backward<T>(Activation, const T*, const T*, int64_t, T*);                               \
  template void skip_add_forward<T>(T*, const T*, const T*, int64_t, int64_t);                                     \
  template void skip_add_backward<T>(const T*, const T*, const T*, int64_t, int64_t, T*, T*);                      \
  template void gated_skip_forward<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, T*);               \
  template void gated_skip_backward<T>(const T*, const T*, const T*, const T*, const T*, int64_t, int64_t, T*, T*, \
                                       T*, T*);                                                                    \
  template void resid_mix_forward<T>(const T*, const T*, const T*, int64_t, int64_t, T*);                          \
  template void resid_mix_backward<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, T*, T*, T*);      \
  template void resid_mix_backward_set_dx<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, T*, T*, T*); \
  template void scaled_add_forward<T>(const T*, const T*, int64_t, int64_t, T*);                                   \
  template void scaled_add_backward<T>(const T*, int64_t, const T*, const T*, int64_t, int64_t, T*, T*);

PTOOL_INSTANTIATE(float)
PTOOL_INSTANTIATE(double)
#undef PTOOL_INSTANTIATE

}  // namespace ptool::cpu

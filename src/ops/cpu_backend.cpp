#include <algorithm>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "src/ops/aligned_vector.h"
#include "src/ops/backend.h"
#include "src/ops/bf16.h"

namespace ptool {

namespace {

constexpr std::align_val_t kAlign{kCpuAlign};

template <class U>
U* aligned_zeroed(size_t n) {
  void* p = ::operator new[](std::max<size_t>(n, 1) * sizeof(U), kAlign);
  std::memset(p, 0, std::max<size_t>(n, 1) * sizeof(U));
  return static_cast<U*>(p);
}

template <class T>
class CpuBackend final : public Backend<T> {
 public:
  const char* name() const override { return "cpu"; }
  // 64-byte aligned: vectorised loops and Eigen's kernels take alignment-dependent paths, and results must
  // not depend on where the allocator happened to put a buffer.
  T* alloc(size_t n) override { return aligned_zeroed<T>(n); }
  void release(T* p) override { ::operator delete[](p, kAlign); }
  int32_t* alloc_index(size_t n) override { return aligned_zeroed<int32_t>(n); }
  void release_index(int32_t* p) override { ::operator delete[](p, kAlign); }
  void upload(T* dst, const T* host, size_t n) override { std::copy(host, host + n, dst); }
  void download(T* host, const T* src, size_t n) override { std::copy(src, src + n, host); }
  void upload_index(int32_t* dst, const int32_t* host, size_t n) override { std::copy(host, host + n, dst); }
  void zero(T* p, size_t n) override { std::fill(p, p + n, T(0)); }
  void copy(T* dst, const T* src, size_t n) override { std::copy(src, src + n, dst); }
  void add(T* y, const T* x, size_t n) override {
    for (size_t i = 0; i < n; ++i) y[i] += x[i];
  }
  void scale(T* y, T a, size_t n) override {
    for (size_t i = 0; i < n; ++i) y[i] *= a;
  }
  void round_bf16(T* y, size_t n) override {  // a double rounds through float first (no bf16 model runs in double)
    for (size_t i = 0; i < n; ++i) y[i] = static_cast<T>(round_to_bf16(static_cast<float>(y[i])));
  }

  void embedding_forward(const T* t, const int32_t* tok, int64_t N, int64_t D, T* out) override {
    cpu::embedding_forward(t, tok, N, D, out);
  }
  void embedding_backward(const T* d, const int32_t* tok, int64_t N, int64_t D, T* dt) override {
    cpu::embedding_backward(d, tok, N, D, dt);
  }
  void rmsnorm_forward(const T* x, int64_t N, int64_t D, T eps, T* out, T* rstd) override {
    cpu::rmsnorm_forward(x, N, D, eps, out, rstd);
  }
  void rmsnorm_backward(const T* d, const T* x, const T* rstd, int64_t N, int64_t D, T* dx) override {
    cpu::rmsnorm_backward(d, x, rstd, N, D, dx);
  }
  void linear_forward(const T* x, const T* W, int64_t N, int64_t K, int64_t M, T* y) override {
    cpu::linear_forward(x, W, N, K, M, y);
  }
  void linear_backward(const T* dy, const T* x, const T* W, int64_t N, int64_t K, int64_t M, T* dx,
                       T* dW) override {
    cpu::linear_backward(dy, x, W, N, K, M, dx, dW);
  }
  void copy_columns(const T* src, int64_t N, int64_t width, typename Backend<T>::ColumnSlice dst) override {
    const int64_t ld = dst.row_stride(width);
    for (int64_t n = 0; n < N; ++n) std::copy_n(src + n * width, width, dst.base + n * ld + dst.col);
  }
  // The ops it fuses in turn, x and xs kept in y or h (free until the norm) where the caller does not keep them:
  // the same arithmetic as the composed calls.
  void layer_entry_forward(const T* a, const T* b, const T* s, const T* skip, const T* w, const T* g, const T* x0,
                           const T* m, int64_t N, int64_t D, T eps, T* x, T* xs, T* y, T* h, T* rstd) override {
    T* xt = x ? x : y;
    this->scaled_residual_forward(a, b, s, N, D, xt);
    T* xst = xt;
    if (skip) {
      xst = xs ? xs : xt == y ? h : y;
      if (g)
        this->gated_skip_forward(xt, skip, w, g, N, D, xst);
      else
        this->scaled_residual_forward(xt, skip, w, N, D, xst);
    }
    cpu::resid_mix_forward(xst, x0, m, N, D, y);  // element by element, so y may be xst
    cpu::rmsnorm_forward(y, N, D, eps, h, rstd);
  }
  void gather_rows(const T* src, int64_t B, int64_t Tn, int64_t from, int64_t D, T* dst) override {
    const int64_t S = Tn - from;
    for (int64_t b = 0; b < B; ++b) std::copy_n(src + (b * Tn + from) * D, S * D, dst + b * S * D);
  }
  void channel_scale_forward(const T* x, const T* s, int64_t N, int64_t D, T* y) override {
    cpu::channel_scale_forward(x, s, N, D, y);
  }
  void channel_scale_backward(const T* dy, const T* x, const T* s, int64_t N, int64_t D, T* dx, T* ds) override {
    cpu::channel_scale_backward(dy, x, s, N, D, dx, ds);
  }
  void head_scale_forward(const T* x, const T* g, int64_t N, int64_t H, int64_t hd, T* y) override {
    cpu::head_scale_forward(x, g, N, H, hd, y);
  }
  void head_scale_backward(const T* dy, const T* x, const T* g, int64_t N, int64_t H, int64_t hd, T* dx,
                           T* dg) override {
    cpu::head_scale_backward(dy, x, g, N, H, hd, dx, dg);
  }
  void rope_forward(T* x, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base) override {
    cpu::rope_forward(x, B, Tn, H, hd, rot, base);
  }
  void rope_backward(T* dx, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base) override {
    cpu::rope_backward(dx, B, Tn, H, hd, rot, base);
  }
  void attention_forward(const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t H, int64_t Hkv,
                         int64_t hd, T* out, T* lse) override {
    cpu::attention_forward(q, k, v, B, Tn, H, Hkv, hd, out, lse);
  }
  void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse, int64_t B,
                          int64_t Tn, int64_t H, int64_t Hkv, int64_t hd, T* dq, T* dk, T* dv) override {
    cpu::attention_backward(dout, q, k, v, out, lse, B, Tn, H, Hkv, hd, dq, dk, dv);
  }
  void xsa_forward(const T* att, const T* v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, T* y) override {
    cpu::xsa_forward(att, v, N, H, Hkv, hd, y);
  }
  void xsa_backward(const T* dy, const T* att, const T* v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, T* datt,
                    typename Backend<T>::ColumnSlice dv) override {
    if (datt) {
      std::fill_n(datt, N * H * hd, T(0));
      cpu::xsa_backward(dy, att, v, N, H, Hkv, hd, datt, static_cast<T*>(nullptr));
    }
    if (!dv.base) return;
    const int64_t w = Hkv * hd, ld = dv.row_stride(w);
    std::vector<T> add(static_cast<size_t>(N * w), T(0));
    cpu::xsa_backward(dy, att, v, N, H, Hkv, hd, static_cast<T*>(nullptr), add.data());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < w; ++j) dv.base[n * ld + dv.col + j] += add[static_cast<size_t>(n * w + j)];
  }
  void scaled_add_forward(const T* x, const T* s, int64_t N, int64_t C, T* y) override {
    cpu::scaled_add_forward(x, s, N, C, y);
  }
  void scaled_add_backward(typename Backend<T>::ColumnSlice dy, const T* x, const T* s, int64_t N, int64_t C,
                           T* dx_acc, T* ds_acc) override {
    cpu::scaled_add_backward(dy.base + dy.col, dy.row_stride(C), x, s, N, C, dx_acc, ds_acc);
  }
  void smear_forward(const T* x, const T* g, int64_t B, int64_t Tn, int64_t D, T* y) override {
    cpu::smear_forward(x, g, B, Tn, D, y);
  }
  void smear_backward_set_dx(const T* dy, const T* x, const T* g, int64_t B, int64_t Tn, int64_t D, T* dx,
                             T* dg) override {
    std::fill_n(dx, B * Tn * D, T(0));
    cpu::smear_backward(dy, x, g, B, Tn, D, dx, dg);
  }
  void activation_forward(cpu::Activation a, const T* h, int64_t n, T* out) override {
    cpu::activation_forward(a, h, n, out);
  }
  void activation_backward(cpu::Activation a, const T* dout, const T* h, int64_t n, T* dh) override {
    cpu::activation_backward(a, dout, h, n, dh);
  }
  void skip_add_forward(T* x, const T* skip, const T* w, int64_t N, int64_t D) override {
    cpu::skip_add_forward(x, skip, w, N, D);
  }
  void skip_add_backward(const T* dy, const T* skip, const T* w, int64_t N, int64_t D, T* dskip, T* dw) override {
    cpu::skip_add_backward(dy, skip, w, N, D, dskip, dw);
  }
  void gated_skip_forward(const T* x, const T* skip, const T* w, const T* g, int64_t N, int64_t D, T* y) override {
    cpu::gated_skip_forward(x, skip, w, g, N, D, y);
  }
  void gated_skip_backward(const T* dy, const T* x, const T* skip, const T* w, const T* g, int64_t N, int64_t D,
                           T* dx, T* dskip, T* dw, T* dg) override {
    cpu::gated_skip_backward(dy, x, skip, w, g, N, D, dx, dskip, dw, dg);
  }
  void resid_mix_forward(const T* x, const T* x0, const T* m, int64_t N, int64_t D, T* y) override {
    cpu::resid_mix_forward(x, x0, m, N, D, y);
  }
  void resid_mix_backward(const T* dy, const T* x, const T* x0, const T* m, int64_t N, int64_t D, T* dx, T* dx0,
                          T* dm) override {
    cpu::resid_mix_backward(dy, x, x0, m, N, D, dx, dx0, dm);
  }
  void resid_mix_backward_set_dx(const T* dy, const T* x, const T* x0, const T* m, int64_t N, int64_t D, T* dx,
                                 T* dx0, T* dm) override {
    cpu::resid_mix_backward_set_dx(dy, x, x0, m, N, D, dx, dx0, dm);
  }
  double softcap_cross_entropy(const T* z, const int32_t* targets, int64_t N, int64_t V, T cap, double* losses,
                               T* dz, T grad_scale) override {
    return cpu::softcap_cross_entropy(z, targets, N, V, cap, losses, dz, grad_scale);
  }
  void softcap_cross_entropy_accumulate(const T* z, const int32_t* targets, int64_t N, int64_t V, T cap, T* dz,
                                        T grad_scale) override {
    losses_.resize(static_cast<size_t>(std::max<int64_t>(N, 0)));
    loss_sum_ += cpu::softcap_cross_entropy(z, targets, N, V, cap, losses_.data(), dz, grad_scale);
  }
  double take_loss_sum() override { return std::exchange(loss_sum_, 0.0); }

 private:
  std::vector<double> losses_;
  double loss_sum_ = 0;
};

}  // namespace

template <class T>
std::unique_ptr<Backend<T>> make_cpu_backend() {
  return std::make_unique<CpuBackend<T>>();
}

template std::unique_ptr<Backend<float>> make_cpu_backend<float>();
template std::unique_ptr<Backend<double>> make_cpu_backend<double>();

}  // namespace ptool

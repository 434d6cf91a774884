// A backend that runs every op on another backend and times it: per op name, the calls, the time (an OpTimer:
// the wall clock for the CPU, CUDA events for a CUDA backend) and an estimate of the op's memory traffic and
// FLOPs, so that a profile says which ops take the step's time and how close each comes to the device's
// bandwidth or its tensor-core rate (bench_train --profile).
//
// Traffic is the least an op must move: every input read once and every output written once (an accumulated
// output read and written), each tensor at the bytes per element the inner backend stores it in
// (Backend::element_bytes: 2 for the CUDA backend's bf16 buffers); temporaries, re-reads and the bf16 mode's
// conversions of fp32 GEMM operands (the weights) are not counted. FLOPs count GEMMs (2 per multiply-add) and
// attention's QK^T and PV products (causal: half the square; the backward's five products against the forward's
// two).
//
// The composite ops (qk_prep_*, scaled_residual_*, *_set, *_shared) go to the inner backend whole, so a fused
// kernel is timed as one op. Results are those of the inner backend, bit for bit.
#pragma once
#include <exception>
#include <functional>
#include <map>
#include <stdexcept>
#include <memory>
#include <string>
#include <vector>

#include "src/ops/backend.h"
#include "src/ops/op_timer.h"

namespace ptool {

struct OpStats {
  int64_t calls = 0;
  double ms = 0, bytes = 0, flops = 0;
};
using OpProfile = std::map<std::string, OpStats>;

// A table sorted by time: op, calls, ms, share of the total, ms per call, GB/s and TFLOP/s.
std::string format_profile(const OpProfile& profile);

template <class T>
class ProfilingBackend final : public Backend<T> {
 public:
  ProfilingBackend(Backend<T>& inner, std::unique_ptr<OpTimer> timer) : in_(inner), timer_(std::move(timer)) {}

  // Times fn() as one op: work on the backend's queue outside its ops (the optimizer step). Backend ops that fn
  // calls count as part of it, not on their own.
  void time_region(const std::string& name, const std::function<void()>& fn) { timed(name, 0, 0, fn); }
  // Waits for the timer and returns the totals since the last reset().
  const OpProfile& profile() {
    const std::vector<double> ms = timer_->take_ms();
    if (ms.size() != pending_.size()) {
      const std::string what = "ProfilingBackend: " + std::to_string(ms.size()) + " timed spans for " +
                               std::to_string(pending_.size()) + " ops";
      pending_.clear();
      throw std::logic_error(what);
    }
    for (size_t i = 0; i < pending_.size(); ++i) {
      OpStats& s = profile_[pending_[i].op];
      ++s.calls;
      s.ms += ms[i];
      s.bytes += pending_[i].bytes;
      s.flops += pending_[i].flops;
    }
    pending_.clear();
    return profile_;
  }
  void reset() {
    profile();
    profile_.clear();
  }

  Backend<T>& underlying() override { return in_.underlying(); }
  const Backend<T>& underlying() const override { return in_.underlying(); }
  const char* name() const override { return in_.name(); }

  T* alloc(size_t n) override { return in_.alloc(n); }
  T* alloc_operand(size_t n) override { return in_.alloc_operand(n); }
  T* alloc_activation(size_t n) override { return in_.alloc_activation(n); }
  size_t element_bytes(const T* p) const override { return in_.element_bytes(p); }
  void store_operand(T* dst, const T* src, size_t n) override {
    timed("store_operand", b(src, n) + b(dst, n), 0, [&] { in_.store_operand(dst, src, n); });
  }
  void operand_values(const T* src, size_t n, T* dst) override {
    timed("operand_values", b(src, n) + b(dst, n), 0, [&] { in_.operand_values(src, n, dst); });
  }
  void release(T* p) override { in_.release(p); }
  int32_t* alloc_index(size_t n) override { return in_.alloc_index(n); }
  void release_index(int32_t* p) override { in_.release_index(p); }
  void upload(T* dst, const T* host, size_t n) override {
    timed("upload", E * n, 0, [&] { in_.upload(dst, host, n); });
  }
  void download(T* host, const T* src, size_t n) override {
    timed("download", E * n, 0, [&] { in_.download(host, src, n); });
  }
  void upload_index(int32_t* dst, const int32_t* host, size_t n) override {
    timed("upload_index", 4.0 * n, 0, [&] { in_.upload_index(dst, host, n); });
  }
  void zero(T* p, size_t n) override { timed("zero", b(p, n), 0, [&] { in_.zero(p, n); }); }
  void copy(T* dst, const T* src, size_t n) override { timed("copy", 2 * E * n, 0, [&] { in_.copy(dst, src, n); }); }
  void add(T* y, const T* x, size_t n) override { timed("add", 2 * b(y, n) + b(x, n), 0, [&] { in_.add(y, x, n); }); }
  void scale(T* y, T a, size_t n) override { timed("scale", 2 * E * n, 0, [&] { in_.scale(y, a, n); }); }
  void round_bf16(T* y, size_t n) override { timed("round_bf16", 2 * E * n, 0, [&] { in_.round_bf16(y, n); }); }

  void embedding_forward(const T* table, const int32_t* tokens, int64_t N, int64_t D, T* out) override {
    timed("embedding_forward", E * 2 * N * D + 4.0 * N, 0, [&] { in_.embedding_forward(table, tokens, N, D, out); });
  }
  void embedding_rmsnorm_forward(const T* table, const int32_t* tokens, int64_t N, int64_t D, T eps, bool bf16_out,
                                 T* emb, T* out, T* rstd) override {
    timed("embedding_rmsnorm_forward", E * N * D + b(emb, N * D) + b(out, N * D) + (4.0 + E) * N, 0,
          [&] { in_.embedding_rmsnorm_forward(table, tokens, N, D, eps, bf16_out, emb, out, rstd); });
  }
  void embedding_backward(const T* dout, const int32_t* tokens, int64_t N, int64_t D, T* dtable) override {
    timed("embedding_backward", E * 3 * N * D + 4.0 * N, 0,
          [&] { in_.embedding_backward(dout, tokens, N, D, dtable); });
  }
  void rmsnorm_forward(const T* x, int64_t N, int64_t D, T eps, T* out, T* rstd) override {
    timed("rmsnorm_forward", b(x, N * D) + b(out, N * D) + E * N, 0,
          [&] { in_.rmsnorm_forward(x, N, D, eps, out, rstd); });
  }
  void rmsnorm_backward(const T* dout, const T* x, const T* rstd, int64_t N, int64_t D, T* dx) override {
    timed("rmsnorm_backward", b(dout, N * D) + b(x, N * D) + 2 * b(dx, N * D) + E * N, 0,
          [&] { in_.rmsnorm_backward(dout, x, rstd, N, D, dx); });
  }
  void linear_forward(const T* x, const T* W, int64_t N, int64_t K, int64_t M, T* y) override {
    timed("linear_forward", b(x, N * K) + E * M * K + b(y, N * M), 2.0 * N * K * M,
          [&] { in_.linear_forward(x, W, N, K, M, y); });
  }
  void linear_backward(const T* dy, const T* x, const T* W, int64_t N, int64_t K, int64_t M, T* dx, T* dW) override {
    timed("linear_backward", linear_backward_bytes(dy, x, N, K, M, dx, dW, true),
          linear_backward_flops(N, K, M, dx, dW), [&] { in_.linear_backward(dy, x, W, N, K, M, dx, dW); });
  }
  void channel_scale_forward(const T* x, const T* s, int64_t N, int64_t D, T* y) override {
    timed("channel_scale_forward", E * 2 * N * D, 0, [&] { in_.channel_scale_forward(x, s, N, D, y); });
  }
  void channel_scale_backward(const T* dy, const T* x, const T* s, int64_t N, int64_t D, T* dx, T* ds) override {
    timed("channel_scale_backward", b(dy, N * D) + b(x, N * D) + 2 * b(dx, N * D), 0,
          [&] { in_.channel_scale_backward(dy, x, s, N, D, dx, ds); });
  }
  void head_scale_forward(const T* x, const T* g, int64_t N, int64_t H, int64_t hd, T* y) override {
    timed("head_scale_forward", E * 2 * N * H * hd, 0, [&] { in_.head_scale_forward(x, g, N, H, hd, y); });
  }
  void head_scale_backward(const T* dy, const T* x, const T* g, int64_t N, int64_t H, int64_t hd, T* dx,
                           T* dg) override {
    timed("head_scale_backward", E * (dx ? 4 : 2) * N * H * hd, 0,
          [&] { in_.head_scale_backward(dy, x, g, N, H, hd, dx, dg); });
  }
  void rope_forward(T* x, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base) override {
    timed("rope_forward", E * 2 * B * Tn * H * hd, 0, [&] { in_.rope_forward(x, B, Tn, H, hd, rot, base); });
  }
  void rope_backward(T* dx, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base) override {
    timed("rope_backward", E * 2 * B * Tn * H * hd, 0, [&] { in_.rope_backward(dx, B, Tn, H, hd, rot, base); });
  }
  void attention_forward(const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t H, int64_t Hkv,
                         int64_t hd, T* out, T* lse) override {
    const int64_t nq = B * Tn * H * hd, nkv = B * Tn * Hkv * hd;
    timed("attention_forward", b(q, nq) + b(k, nkv) + b(v, nkv) + b(out, nq) + E * B * Tn * H,
          attention_flops(B, Tn, H, hd, 2),
          [&] { in_.attention_forward(q, k, v, B, Tn, H, Hkv, hd, out, lse); });
  }
  void attention_forward_suffix(const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t from, int64_t H,
                                int64_t Hkv, int64_t hd, T* out) override {
    const int64_t nq = B * (Tn - from) * H * hd, nkv = B * Tn * Hkv * hd;
    timed("attention_forward_suffix", b(q, nq) + b(k, nkv) + b(v, nkv) + b(out, nq),
          attention_flops(B, Tn, H, hd, 2) - attention_flops(B, from, H, hd, 2),
          [&] { in_.attention_forward_suffix(q, k, v, B, Tn, from, H, Hkv, hd, out); });
  }
  void smear_forward(const T* x, const T* g, int64_t B, int64_t Tn, int64_t D, T* y) override {
    timed("smear_forward", b(x, B * Tn * D) + b(y, B * Tn * D), 0, [&] { in_.smear_forward(x, g, B, Tn, D, y); });
  }
  void smear_backward_set_dx(const T* dy, const T* x, const T* g, int64_t B, int64_t Tn, int64_t D, T* dx,
                             T* dg) override {
    const int64_t n = B * Tn * D;
    timed("smear_backward_set_dx", b(dy, n) + b(x, n) + b(dx, n), 0,
          [&] { in_.smear_backward_set_dx(dy, x, g, B, Tn, D, dx, dg); });
  }
  void scaled_add_forward(const T* x, const T* s, int64_t N, int64_t C, T* y) override {
    timed("scaled_add_forward", b(x, N * C) + 2 * b(y, N * C), 0, [&] { in_.scaled_add_forward(x, s, N, C, y); });
  }
  void scaled_add_backward(typename Backend<T>::ColumnSlice dy, const T* x, const T* s, int64_t N, int64_t C,
                           T* dx_acc, T* ds_acc) override {
    timed("scaled_add_backward", b(dy.base, N * C) + b(x, N * C) + 2 * b(dx_acc, N * C), 0,
          [&] { in_.scaled_add_backward(dy, x, s, N, C, dx_acc, ds_acc); });
  }
  void xsa_forward(const T* att, const T* v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, T* y) override {
    timed("xsa_forward", b(att, N * H * hd) + b(v, N * Hkv * hd) + b(y, N * H * hd), 0,
          [&] { in_.xsa_forward(att, v, N, H, Hkv, hd, y); });
  }
  void xsa_backward(const T* dy, const T* att, const T* v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, T* datt,
                    typename Backend<T>::ColumnSlice dv) override {
    const int64_t nq = N * H * hd, nkv = N * Hkv * hd;
    timed("xsa_backward",
          b(dy, nq) + b(att, nq) + b(v, nkv) + (datt ? b(datt, nq) : 0) + (dv.base ? 2 * b(dv.base, nkv) : 0), 0,
          [&] { in_.xsa_backward(dy, att, v, N, H, Hkv, hd, datt, dv); });
  }
  void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse, int64_t B,
                          int64_t Tn, int64_t H, int64_t Hkv, int64_t hd, T* dq, T* dk, T* dv) override {
    timed("attention_backward", attention_backward_bytes(dout, q, k, v, out, B, Tn, H, Hkv, hd, dq, dk, dv, true),
          attention_flops(B, Tn, H, hd, 5),
          [&] { in_.attention_backward(dout, q, k, v, out, lse, B, Tn, H, Hkv, hd, dq, dk, dv); });
  }
  void attention_backward_set(const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                              int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd, T* dq, T* dk,
                              typename Backend<T>::ColumnSlice dv) override {
    timed("attention_backward_set",
          attention_backward_bytes(dout, q, k, v, out, B, Tn, H, Hkv, hd, dq, dk, dv.base, false),
          attention_flops(B, Tn, H, hd, 5),
          [&] { in_.attention_backward_set(dout, q, k, v, out, lse, B, Tn, H, Hkv, hd, dq, dk, dv); });
  }
  // Counted as attention_backward_set plus the preparations' backwards, less the scratch round trips (dq or dk
  // written, then read) of the sides the inner backend folds into attention's.
  void attention_prep_backward_set(const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                                   int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd, int64_t rot,
                                   double base, bool norm, T eps, const T* gain, T* dgain,
                                   typename Backend<T>::PrepGrad qg, typename Backend<T>::PrepGrad kg,
                                   typename Backend<T>::ColumnSlice dv, T* dq, T* dk) override {
    const typename Backend<T>::PrepFolds folds = in_.prep_backward_folds(hd);
    const int64_t nq = B * Tn * H * hd, nkv = B * Tn * Hkv * hd;
    const double q_prep = b(qg.raw, nq) + b(qg.draw.base, nq) + (norm ? E * B * Tn * H : 0);
    const double k_prep = norm ? b(kg.raw, nkv) + b(kg.draw.base, nkv) + E * B * Tn * Hkv : b(kg.draw.base, nkv);
    const double bytes = attention_backward_bytes(dout, q, k, v, out, B, Tn, H, Hkv, hd, nullptr, nullptr, dv.base,
                                                  false) +
                         q_prep + k_prep + (folds.q ? 0 : 2 * E * nq) +
                         (folds.k ? 0 : (norm ? 2 : 4) * E * nkv);  // without norm dk is rotated in place, then copied
    timed("attention_prep_backward_set", bytes, attention_flops(B, Tn, H, hd, 5), [&] {
      in_.attention_prep_backward_set(dout, q, k, v, out, lse, B, Tn, H, Hkv, hd, rot, base, norm, eps, gain, dgain,
                                      qg, kg, dv, dq, dk);
    });
  }
  typename Backend<T>::PrepFolds prep_backward_folds(int64_t hd) const override { return in_.prep_backward_folds(hd); }
  void activation_forward(cpu::Activation a, const T* h, int64_t n, T* out) override {
    timed("activation_forward", b(h, n) + b(out, n), 0, [&] { in_.activation_forward(a, h, n, out); });
  }
  void activation_backward(cpu::Activation a, const T* dout, const T* h, int64_t n, T* dh) override {
    timed("activation_backward", b(dout, n) + b(h, n) + 2 * E * n, 0,
          [&] { in_.activation_backward(a, dout, h, n, dh); });
  }
  void skip_add_forward(T* x, const T* skip, const T* w, int64_t N, int64_t D) override {
    timed("skip_add_forward", E * 3 * N * D, 0, [&] { in_.skip_add_forward(x, skip, w, N, D); });
  }
  void skip_add_backward(const T* dy, const T* skip, const T* w, int64_t N, int64_t D, T* dskip, T* dw) override {
    timed("skip_add_backward", b(dy, N * D) + 2 * b(dskip, N * D) + b(skip, N * D), 0,
          [&] { in_.skip_add_backward(dy, skip, w, N, D, dskip, dw); });
  }
  void gated_skip_forward(const T* x, const T* skip, const T* w, const T* g, int64_t N, int64_t D, T* y) override {
    timed("gated_skip_forward", b(x, N * D) + b(skip, N * D) + b(y, N * D), 0,
          [&] { in_.gated_skip_forward(x, skip, w, g, N, D, y); });
  }
  void gated_skip_backward(const T* dy, const T* x, const T* skip, const T* w, const T* g, int64_t N, int64_t D,
                           T* dx, T* dskip, T* dw, T* dg) override {
    timed("gated_skip_backward",
          b(dy, N * D) + b(x, N * D) + b(skip, N * D) + 2 * b(dx, N * D) + 2 * b(dskip, N * D), 0,
          [&] { in_.gated_skip_backward(dy, x, skip, w, g, N, D, dx, dskip, dw, dg); });
  }
  void resid_mix_forward(const T* x, const T* x0, const T* m, int64_t N, int64_t D, T* y) override {
    timed("resid_mix_forward", b(x, N * D) + b(x0, N * D) + b(y, N * D), 0,
          [&] { in_.resid_mix_forward(x, x0, m, N, D, y); });
  }
  void resid_mix_backward(const T* dy, const T* x, const T* x0, const T* m, int64_t N, int64_t D, T* dx, T* dx0,
                          T* dm) override {
    timed("resid_mix_backward",
          b(dy, N * D) + b(x, N * D) + b(x0, N * D) + 2 * b(dx, N * D) + 2 * b(dx0, N * D), 0,
          [&] { in_.resid_mix_backward(dy, x, x0, m, N, D, dx, dx0, dm); });
  }
  void layer_entry_forward(const T* a, const T* b_, const T* s, const T* skip, const T* w, const T* g, const T* x0,
                           const T* m, int64_t N, int64_t D, T eps, T* x, T* xs, T* y, T* h, T* rstd) override {
    const int64_t n = N * D;
    const double bytes = b(a, n) + b(b_, n) + b(skip, n) + b(x0, n) + b(x, n) + b(xs, n) + b(y, n) + b(h, n) + E * N;
    timed("layer_entry_forward", bytes, 0,
          [&] { in_.layer_entry_forward(a, b_, s, skip, w, g, x0, m, N, D, eps, x, xs, y, h, rstd); });
  }
  void resid_mix_rmsnorm_forward(const T* x, const T* x0, const T* m, int64_t N, int64_t D, T eps, T* y, T* h,
                                 T* rstd) override {
    timed("resid_mix_rmsnorm_forward", b(x, N * D) + b(x0, N * D) + b(y, N * D) + E * N + b(h, N * D), 0,
          [&] { in_.resid_mix_rmsnorm_forward(x, x0, m, N, D, eps, y, h, rstd); });
  }
  void qk_prep_forward(const T* raw, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base,
                       bool norm, T eps, const T* gain, T* rstd, T* x, T* out) override {
    const int64_t n = B * Tn * H * hd, rows = B * Tn * H;
    const bool both = gain && x != out;  // x == out with a gain: only out is written
    timed("qk_prep_forward",
          b(raw, n) + (gain ? b(out, n) : 0) + (both || !gain ? b(x, n) : 0) + (norm ? E * rows : 0), 0,
          [&] { in_.qk_prep_forward(raw, B, Tn, H, hd, rot, base, norm, eps, gain, rstd, x, out); });
  }
  void qk_prep_forward_suffix(const T* raw, int64_t B, int64_t Tn, int64_t from, int64_t H, int64_t hd, int64_t rot,
                              double base, bool norm, T eps, const T* gain, T* rstd, T* out) override {
    const int64_t n = B * (Tn - from) * H * hd, rows = B * (Tn - from) * H;
    timed("qk_prep_forward_suffix", b(raw, n) + b(out, n) + (norm ? E * rows : 0), 0,
          [&] { in_.qk_prep_forward_suffix(raw, B, Tn, from, H, hd, rot, base, norm, eps, gain, rstd, out); });
  }
  void qk_prep_backward(T* d, const T* raw, const T* rstd, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot,
                        double base, bool norm, typename Backend<T>::ColumnSlice draw) override {
    const int64_t n = B * Tn * H * hd;
    timed("qk_prep_backward", norm ? E * n + b(raw, n) + b(draw.base, n) + E * B * Tn * H : 2 * E * n, 0,
          [&] { in_.qk_prep_backward(d, raw, rstd, B, Tn, H, hd, rot, base, norm, draw); });
  }
  void qk_prep_backward_gain(const T* dq, const T* gain, T* dg, const T* raw, const T* rstd, int64_t B, int64_t Tn,
                             int64_t H, int64_t hd, int64_t rot, double base, bool norm, T eps,
                             typename Backend<T>::ColumnSlice draw) override {
    const int64_t n = B * Tn * H * hd;
    timed("qk_prep_backward_gain", E * n + b(raw, n) + b(draw.base, n) + (norm ? E * B * Tn * H : 0), 0,
          [&] { in_.qk_prep_backward_gain(dq, gain, dg, raw, rstd, B, Tn, H, hd, rot, base, norm, eps, draw); });
  }
  void scaled_residual_forward(const T* x, const T* o, const T* s, int64_t N, int64_t D, T* y) override {
    timed("scaled_residual_forward", b(x, N * D) + b(o, N * D) + b(y, N * D), 0,
          [&] { in_.scaled_residual_forward(x, o, s, N, D, y); });
  }
  void scaled_residual_rmsnorm_forward(const T* x, const T* o, const T* s, int64_t N, int64_t D, T eps, T* y, T* h,
                                       T* rstd) override {
    timed("scaled_residual_rmsnorm_forward", b(x, N * D) + b(o, N * D) + b(y, N * D) + b(h, N * D) + E * N, 0,
          [&] { in_.scaled_residual_rmsnorm_forward(x, o, s, N, D, eps, y, h, rstd); });
  }
  void linear_backward_set_dx(const T* dy, const T* x, const T* W, int64_t N, int64_t K, int64_t M, T* dx,
                              T* dW) override {
    timed("linear_backward_set_dx", linear_backward_bytes(dy, x, N, K, M, dx, dW, false),
          linear_backward_flops(N, K, M, dx, dW), [&] { in_.linear_backward_set_dx(dy, x, W, N, K, M, dx, dW); });
  }
  void channel_scale_backward_set_dx(const T* dy, const T* x, const T* s, int64_t N, int64_t D, T* dx,
                                     T* ds) override {
    timed("channel_scale_backward_set_dx", b(dy, N * D) + b(x, N * D) + b(dx, N * D), 0,
          [&] { in_.channel_scale_backward_set_dx(dy, x, s, N, D, dx, ds); });
  }
  void head_scale_backward_set_dx(const T* dy, const T* x, const T* g, int64_t N, int64_t H, int64_t hd, T* dx,
                                  T* dg) override {
    timed("head_scale_backward_set_dx", E * (dx ? 3 : 2) * N * H * hd, 0,
          [&] { in_.head_scale_backward_set_dx(dy, x, g, N, H, hd, dx, dg); });
  }
  void rmsnorm_backward_set(const T* dout, const T* x, const T* rstd, int64_t N, int64_t D, T* dx) override {
    timed("rmsnorm_backward_set", b(dout, N * D) + b(x, N * D) + b(dx, N * D) + E * N, 0,
          [&] { in_.rmsnorm_backward_set(dout, x, rstd, N, D, dx); });
  }
  void skip_add_backward_set(const T* dy, const T* skip, const T* w, int64_t N, int64_t D, T* dskip,
                             T* dw) override {
    timed("skip_add_backward_set", b(dy, N * D) + b(dskip, N * D) + b(skip, N * D), 0,
          [&] { in_.skip_add_backward_set(dy, skip, w, N, D, dskip, dw); });
  }
  void activation_backward_set(cpu::Activation a, const T* dout, const T* h, int64_t n, T* dh) override {
    timed("activation_backward_set", b(dout, n) + b(h, n) + b(dh, n), 0,
          [&] { in_.activation_backward_set(a, dout, h, n, dh); });
  }
  void resid_mix_backward_set_dx(const T* dy, const T* x, const T* x0, const T* m, int64_t N, int64_t D, T* dx,
                                 T* dx0, T* dm) override {
    timed("resid_mix_backward_set_dx",
          b(dy, N * D) + b(x, N * D) + b(x0, N * D) + b(dx, N * D) + 2 * b(dx0, N * D), 0,
          [&] { in_.resid_mix_backward_set_dx(dy, x, x0, m, N, D, dx, dx0, dm); });
  }
  void rmsnorm_resid_mix_backward(const T* dh, const T* y, const T* rstd, const T* x, const T* x0, const T* m,
                                  int64_t N, int64_t D, T* dx, T* dx0, T* dm, const T* dx_add, bool fold_x0) override {
    // y is not counted: a fused backward recomputes it from x and x0. Folded, dx is read but not written.
    timed("rmsnorm_resid_mix_backward",
          b(dh, N * D) + b(x, N * D) + b(x0, N * D) + (fold_x0 ? 1 : 2) * b(dx, N * D) + 2 * b(dx0, N * D) +
              b(dx_add, N * D) + E * N,
          0, [&] { in_.rmsnorm_resid_mix_backward(dh, y, rstd, x, x0, m, N, D, dx, dx0, dm, dx_add, fold_x0); });
  }
  void rmsnorm_channel_scale_backward(const T* dh, const T* y, const T* rstd, const T* o, const T* s, int64_t N,
                                      int64_t D, T* dx, T* dout, T* ds) override {
    timed("rmsnorm_channel_scale_backward",
          b(dh, N * D) + b(y, N * D) + b(o, N * D) + b(dout, N * D) + 2 * b(dx, N * D) + E * (N + 3 * D),
          0, [&] { in_.rmsnorm_channel_scale_backward(dh, y, rstd, o, s, N, D, dx, dout, ds); });
  }
  void linear_forward_shared(const T* x, int64_t N, int64_t K,
                             std::span<const typename Backend<T>::LinearOut> outs) override {
    double bytes = b(x, N * K), flops = 0;
    for (const auto& o : outs) {
      bytes += E * o.M * K + b(o.y, N * o.M);
      flops += 2.0 * N * K * o.M;
    }
    timed("linear_forward_shared", bytes, flops, [&] { in_.linear_forward_shared(x, N, K, outs); });
  }
  void copy_columns(const T* src, int64_t N, int64_t width, typename Backend<T>::ColumnSlice dst) override {
    timed("copy_columns", b(src, N * width) + b(dst.base, N * width), 0,
          [&] { in_.copy_columns(src, N, width, dst); });
  }

  void gather_rows(const T* src, int64_t B, int64_t Tn, int64_t from, int64_t D, T* dst) override {
    const int64_t n = B * (Tn - from) * D;
    timed("gather_rows", b(src, n) + b(dst, n), 0, [&] { in_.gather_rows(src, B, Tn, from, D, dst); });
  }

  double softcap_cross_entropy(const T* z, const int32_t* targets, int64_t N, int64_t V, T cap, double* losses_host,
                               T* dz, T grad_scale) override {
    double r = 0;
    timed("softcap_cross_entropy", E * N * V + b(dz, N * V), 0,
          [&] { r = in_.softcap_cross_entropy(z, targets, N, V, cap, losses_host, dz, grad_scale); });
    return r;
  }
  void softcap_cross_entropy_accumulate(const T* z, const int32_t* targets, int64_t N, int64_t V, T cap, T* dz,
                                        T grad_scale) override {
    timed("softcap_cross_entropy", E * N * V + b(dz, N * V), 0,
          [&] { in_.softcap_cross_entropy_accumulate(z, targets, N, V, cap, dz, grad_scale); });
  }
  double take_loss_sum() override { return in_.take_loss_sum(); }

 private:
  static constexpr double E = sizeof(T);
  struct Pending {
    std::string op;
    double bytes, flops;
  };

  template <class F>
  void timed(const std::string& op, double bytes, double flops, F&& f) {
    if (inside_) {  // part of a span that is already open
      f();
      return;
    }
    timer_->start();
    pending_.push_back({op, bytes, flops});
    std::exception_ptr op_error;
    inside_ = true;
    try {
      f();
    } catch (...) {
      op_error = std::current_exception();
    }
    inside_ = false;
    try {
      timer_->stop();
    } catch (...) {
      timer_->abandon();  // the span cannot be closed: start afresh (this pass's timings are lost)
      pending_.clear();
      if (!op_error) throw;
    }
    if (op_error) std::rethrow_exception(op_error);  // the op's error is the one to report
  }
  static double attention_flops(int64_t B, int64_t Tn, int64_t H, int64_t hd, int products) {
    return 2.0 * products * static_cast<double>(B) * H * (static_cast<double>(Tn) * Tn / 2) * hd;
  }
  // n elements of the tensor at p, in the bytes the inner backend stores them in (0 for a null tensor).
  double b(const T* p, int64_t n) const { return p ? static_cast<double>(in_.element_bytes(p)) * n : 0.0; }
  double linear_backward_bytes(const T* dy, const T* x, int64_t N, int64_t K, int64_t M, const T* dx, const T* dW,
                               bool dx_read) const {
    double r = b(dy, N * M);
    if (dx) r += E * M * K + (dx_read ? 2 : 1) * b(dx, N * K);
    if (dW) r += b(x, N * K) + 2 * E * M * K;
    return r;
  }
  // Inputs read once, dq, dk, dv written (and read when accumulated), lse read.
  double attention_backward_bytes(const T* dout, const T* q, const T* k, const T* v, const T* out, int64_t B,
                                  int64_t Tn, int64_t H, int64_t Hkv, int64_t hd, const T* dq, const T* dk,
                                  const T* dv, bool accumulate) const {
    const int64_t nq = B * Tn * H * hd, nkv = B * Tn * Hkv * hd, w = accumulate ? 2 : 1;
    return b(dout, nq) + b(q, nq) + b(k, nkv) + b(v, nkv) + b(out, nq) + E * B * Tn * H +
           w * (b(dq, nq) + b(dk, nkv) + b(dv, nkv));
  }
  static double linear_backward_flops(int64_t N, int64_t K, int64_t M, const T* dx, const T* dW) {
    return ((dx ? 2.0 : 0.0) + (dW ? 2.0 : 0.0)) * N * K * M;
  }

  Backend<T>& in_;
  std::unique_ptr<OpTimer> timer_;
  std::vector<Pending> pending_;
  OpProfile profile_;
  bool inside_ = false;  // a span is open
};

}  // namespace ptool

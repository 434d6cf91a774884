// The op interface the model is written against. The CPU backend forwards to the reference ops in
// cpu_ops.h; a CUDA backend implements the same virtual functions over device pointers, so the model
// code does not change when the device does. All pointers passed to a backend are its own memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "src/ops/cpu_ops.h"

namespace ptool {

template <class T>
class DeviceBuffer;

template <class T>
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // The backend that owns the memory and runs the ops: itself, or the one a wrapper (ProfilingBackend) forwards
  // to. Code that needs the concrete backend (a CUDA stream) looks there.
  virtual Backend<T>& underlying() { return *this; }
  virtual const Backend<T>& underlying() const { return *this; }

  // Memory and transfers (host <-> backend memory).
  virtual T* alloc(size_t n) = 0;
  virtual void release(T* p) = 0;
  virtual int32_t* alloc_index(size_t n) = 0;
  virtual void release_index(int32_t* p) = 0;
  virtual void upload(T* dst, const T* host, size_t n) = 0;
  virtual void download(T* host, const T* src, size_t n) = 0;
  virtual void upload_index(int32_t* dst, const int32_t* host, size_t n) = 0;
  virtual void zero(T* p, size_t n) = 0;
  virtual void copy(T* dst, const T* src, size_t n) = 0;
  virtual void add(T* y, const T* x, size_t n) = 0;     // y += x
  virtual void scale(T* y, T a, size_t n) = 0;          // y *= a
  virtual void round_bf16(T* y, size_t n) = 0;          // y = the nearest bfloat16 (ties to even), kept in T

  // Operand buffers: memory for a tensor that exists only to be a GEMM or attention input (the x or dy of the
  // linear ops; attention's q, k, v and dout), so a backend may keep it in the precision those ops round their
  // inputs to (the CUDA backend's bf16 mode: bf16, half the bytes, and no conversion before every op that reads
  // it). Only ops that name it as an output may write it (a backend that cannot write one there throws), only
  // linear ops, attention, the xsa and scaled_add ops, copy_columns and gather_rows may read it, and zero() may clear it; all else
  // reads its values through operand_values() (into plain memory) and stores them with store_operand(). Released
  // with release().
  // Default: plain memory.
  virtual T* alloc_operand(size_t n) { return alloc(n); }
  virtual void operand_values(const T* src, size_t n, T* dst) { copy(dst, src, n); }
  virtual void store_operand(T* dst, const T* src, size_t n) { copy(dst, src, n); }
  // Activation buffers: like operand buffers, but for GEMM outputs and gradients that element-wise ops read too, so
  // a backend that stores them in a lower precision rounds values (the CUDA backend's bf16 mode: bf16, as PyTorch's
  // autocast keeps linear outputs). Readable by the ops that say so: activation_forward/backward (h, dout),
  // scaled_residual(_rmsnorm)_forward (o), layer_entry_forward (b), channel_scale_backward(_set_dx) (x),
  // qk_prep_forward(_suffix)/backward (raw), rmsnorm_backward (dout), rmsnorm_resid_mix_backward (dh),
  // rmsnorm_channel_scale_backward (dh, o), copy_columns, gather_rows, and the linear ops and attention; written
  // only by ops that name them as outputs (linear ops with a written, not accumulated, output). Values through
  // operand_values()/store_operand().
  //
  // The residual stream may live in activation buffers too (the model puts it there under embed_bf16, as the
  // reference's stream has its bf16 embedding's dtype). Ops may then write a stream value into one: x0
  // (embedding_rmsnorm_forward's out), the y of scaled_residual_forward, scaled_residual_rmsnorm_forward,
  // resid_mix(_rmsnorm)_forward and gated_skip_forward, layer_entry_forward's x, xs and y (all three in one
  // storage), gather_rows' dst. The stored value is rounded, and what an op goes on to compute from it (a fused
  // norm, layer_entry_forward's next sum, even where x or xs is not written) uses the stored value, as the composed
  // ops would read it back. They may read one as a stream input: the x, x0, skip, a and y of those ops, of
  // rmsnorm_forward, rmsnorm_backward(_set), resid_mix_backward(_set_dx), skip_add_backward(_set),
  // gated_skip_backward, rmsnorm_resid_mix_backward (whose recomputed y is rounded as its y argument's storage
  // would hold it) and rmsnorm_channel_scale_backward. The stream's gradient lives where the stream does (the
  // reference's autograd keeps it in the stream's dtype): the input gradients of those backwards and of
  // channel_scale_backward(_set_dx), rmsnorm_backward(_set)'s dx, add's y and x, copy_columns' dst, and their dy,
  // dout and dx_add may be activation buffers, added into as well as written. Such an op computes what it would on
  // fp32 memory holding the stored values and stores each result rounded, once.
  virtual T* alloc_activation(size_t n) { return alloc(n); }
  // Bytes per element of the buffer at p as this backend stores it (for traffic estimates).
  virtual size_t element_bytes(const T*) const { return sizeof(T); }

  // Where an op writes a [rows, width] result: a buffer of its own (ld 0: rows `width` apart), or columns
  // [col, col + width) of the row-major matrix at base whose rows are ld elements apart (the ops that take one
  // say so). Offsets count the buffer's elements, so a slice of an operand buffer (bf16 on the GPU) is named
  // through the buffer's base pointer, never by pointer arithmetic on it.
  struct ColumnSlice {
    T* base = nullptr;
    int64_t ld = 0, col = 0;
    ColumnSlice(T* p) : base(p) {}  // implicit on purpose: a whole buffer
    ColumnSlice(T* p, int64_t ld_, int64_t col_) : base(p), ld(ld_), col(col_) {}
    int64_t row_stride(int64_t width) const { return ld ? ld : width; }
    bool whole(int64_t width) const { return row_stride(width) == width && col == 0; }
  };
  // dst's columns [col, col + width) of rows n < N = src[n, :] (src is [N, width]). src may be an operand or
  // activation buffer and dst an operand or activation buffer: values are copied as stored, rounded where dst keeps
  // fewer bits.
  virtual void copy_columns(const T* src, int64_t N, int64_t width, ColumnSlice dst) = 0;

  // Model ops (see cpu_ops.h for the contracts).
  virtual void embedding_forward(const T* table, const int32_t* tokens, int64_t N, int64_t D, T* out) = 0;
  virtual void embedding_backward(const T* dout, const int32_t* tokens, int64_t N, int64_t D, T* dtable) = 0;
  virtual void rmsnorm_forward(const T* x, int64_t N, int64_t D, T eps, T* out, T* rstd) = 0;
  // The model's x0: the embedding's rows, then their RMSNorm, in one pass where a backend can. emb = the looked-up
  // rows (for the norm's backward; null in a forward-only pass, which then never writes them), out = rmsnorm(rows)
  // with rstd per row, rounded to bf16 when bf16_out (ModelConfig::embed_bf16). The default composes
  // embedding_forward, rmsnorm_forward and round_bf16 (out holds the rows when emb is null).
  virtual void embedding_rmsnorm_forward(const T* table, const int32_t* tokens, int64_t N, int64_t D, T eps,
                                         bool bf16_out, T* emb, T* out, T* rstd) {
    T* rows = emb ? emb : out;
    embedding_forward(table, tokens, N, D, rows);
    rmsnorm_forward(rows, N, D, eps, out, rstd);
    if (bf16_out) round_bf16(out, static_cast<size_t>(N * D));
  }
  virtual void rmsnorm_backward(const T* dout, const T* x, const T* rstd, int64_t N, int64_t D, T* dx) = 0;
  virtual void linear_forward(const T* x, const T* W, int64_t N, int64_t K, int64_t M, T* y) = 0;
  virtual void linear_backward(const T* dy, const T* x, const T* W, int64_t N, int64_t K, int64_t M, T* dx,
                               T* dW) = 0;
  virtual void channel_scale_forward(const T* x, const T* s, int64_t N, int64_t D, T* y) = 0;
  virtual void channel_scale_backward(const T* dy, const T* x, const T* s, int64_t N, int64_t D, T* dx,
                                      T* ds) = 0;
  virtual void head_scale_forward(const T* x, const T* g, int64_t N, int64_t H, int64_t hd, T* y) = 0;
  virtual void head_scale_backward(const T* dy, const T* x, const T* g, int64_t N, int64_t H, int64_t hd, T* dx,
                                   T* dg) = 0;
  virtual void rope_forward(T* x, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base) = 0;
  virtual void rope_backward(T* dx, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base) = 0;
  virtual void attention_forward(const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t H, int64_t Hkv,
                                 int64_t hd, T* out, T* lse) = 0;
  virtual void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                                  int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd, T* dq, T* dk,
                                  T* dv) = 0;
  // The causal attention of the queries at positions [from, Tn) of each of B sequences only (a pass that scores
  // just each sequence's suffix): q and out hold those S = Tn - from rows per sequence, packed ([B, S, H, hd]);
  // k and v hold all Tn positions. out equals attention_forward's rows from `from` on. No lse (nothing follows).
  // q may be an operand buffer and out an operand buffer. The default spreads q into a full-length scratch (zeros
  // before `from`), runs attention_forward and gathers the rows.
  virtual void attention_forward_suffix(const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t from,
                                        int64_t H, int64_t Hkv, int64_t hd, T* out) {
    const int64_t D = H * hd;
    DeviceBuffer<T> fq(*this, static_cast<size_t>(B * Tn * D)), fo(*this, static_cast<size_t>(B * Tn * D));
    DeviceBuffer<T> lse(*this, static_cast<size_t>(B * H * Tn));
    spread_rows(q, B, Tn, from, D, fq.get());
    attention_forward(fq.get(), k, v, B, Tn, H, Hkv, hd, fo.get(), lse.get());
    gather_rows(fo.get(), B, Tn, from, D, out);
  }
  // Exclusive self-attention (cpu::xsa_forward): each head's output minus its component along the token's unit
  // value vector. att, v and y may be operand buffers; y must not alias att.
  virtual void xsa_forward(const T* att, const T* v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, T* y) = 0;
  // Its backward, in the two halves a layer needs on either side of attention's backward: with datt, the gradient of
  // att is written there (attention's dout: it may be an operand buffer); with dv.base, the gradient of v along this
  // path is added into dv (Hkv * hd columns of N rows: a ColumnSlice of an operand buffer where attention's backward
  // has just written v's gradient). dy may be an operand buffer.
  virtual void xsa_backward(const T* dy, const T* att, const T* v, int64_t N, int64_t H, int64_t Hkv, int64_t hd,
                            T* datt, ColumnSlice dv) = 0;
  // y += s[0] x over [N, C] (cpu::scaled_add_forward; s one parameter): the value embeddings joining v. y may be an
  // operand or activation buffer (it is read as well as written) and x an activation buffer. y and the backward's
  // dy hold values of bf16 tensors in the reference (v and its gradient): a backend that rounds operand buffers may
  // round them wherever they live.
  virtual void scaled_add_forward(const T* x, const T* s, int64_t N, int64_t C, T* y) = 0;
  // Its backward: dx_acc += s[0] dy, ds_acc[0] += sum dy ⊙ x. dy may be C columns of an operand buffer (a
  // ColumnSlice of N rows: v's gradient among q's and k's); x and dx_acc may be activation buffers.
  virtual void scaled_add_backward(ColumnSlice dy, const T* x, const T* s, int64_t N, int64_t C, T* dx_acc,
                                   T* ds_acc) = 0;
  // SmearGate (cpu::smear_forward) over B sequences of Tn rows: x plain; y may be a residual-stream buffer (the
  // model's x0), stored rounded. Its backward writes dx (plain; not added to) and adds to dg; dy may be a stream buffer.
  virtual void smear_forward(const T* x, const T* g, int64_t B, int64_t Tn, int64_t D, T* y) = 0;
  virtual void smear_backward_set_dx(const T* dy, const T* x, const T* g, int64_t B, int64_t Tn, int64_t D, T* dx,
                                     T* dg) = 0;
  virtual void activation_forward(cpu::Activation a, const T* h, int64_t n, T* out) = 0;
  virtual void activation_backward(cpu::Activation a, const T* dout, const T* h, int64_t n, T* dh) = 0;
  virtual void skip_add_forward(T* x, const T* skip, const T* w, int64_t N, int64_t D) = 0;
  virtual void skip_add_backward(const T* dy, const T* skip, const T* w, int64_t N, int64_t D, T* dskip,
                                 T* dw) = 0;
  virtual void gated_skip_forward(const T* x, const T* skip, const T* w, const T* g, int64_t N, int64_t D,
                                  T* y) = 0;
  virtual void gated_skip_backward(const T* dy, const T* x, const T* skip, const T* w, const T* g, int64_t N,
                                   int64_t D, T* dx, T* dskip, T* dw, T* dg) = 0;
  virtual void resid_mix_forward(const T* x, const T* x0, const T* m, int64_t N, int64_t D, T* y) = 0;
  virtual void resid_mix_backward(const T* dy, const T* x, const T* x0, const T* m, int64_t N, int64_t D, T* dx,
                                  T* dx0, T* dm) = 0;
  // A branch joins the residual stream: y = x + s ⊙ o, s per channel (y must not alias x). Its backward is
  // channel_scale_backward (for o and s) with the identity for x. The default composes the two ops it replaces.
  virtual void scaled_residual_forward(const T* x, const T* o, const T* s, int64_t N, int64_t D, T* y) {
    channel_scale_forward(o, s, N, D, y);
    add(y, x, static_cast<size_t>(N * D));
  }
  // scaled_residual_forward, then rmsnorm_forward of its result (h = rmsnorm(y), rstd per row): fused where a
  // backend can, so the new residual is read once. The default composes the two.
  virtual void scaled_residual_rmsnorm_forward(const T* x, const T* o, const T* s, int64_t N, int64_t D, T eps, T* y,
                                               T* h, T* rstd) {
    scaled_residual_forward(x, o, s, N, D, y);
    rmsnorm_forward(y, N, D, eps, h, rstd);
  }
  // resid_mix_forward, then rmsnorm_forward of its result: the attention branch's input and pre-norm in one
  // pass where a backend can. The default composes the two.
  virtual void resid_mix_rmsnorm_forward(const T* x, const T* x0, const T* m, int64_t N, int64_t D, T eps, T* y,
                                         T* h, T* rstd) {
    resid_mix_forward(x, x0, m, N, D, y);
    rmsnorm_forward(y, N, D, eps, h, rstd);
  }
  // The residual stream from one layer into the next, in one pass where a backend can: x = a + s ⊙ b (the
  // previous layer's MLP branch joining, as scaled_residual_forward), then with a skip xs = x + w ⊙ skip (a U-Net
  // skip, likewise), or with gate logits g the gated skip xs = gated_skip(x, skip, w, g) (as gated_skip_forward;
  // without a skip xs is x), then the next layer's entry y = resid_mix(xs, x0, m) and its pre-norm h = rmsnorm(y)
  // with rstd. y, h and rstd are written; x and xs where given (the backward and later skips read them; a
  // forward-only pass may pass null for what nothing reads). b may be an activation buffer and h an operand
  // buffer; the outputs must not alias the inputs.
  virtual void layer_entry_forward(const T* a, const T* b, const T* s, const T* skip, const T* w, const T* g,
                                   const T* x0, const T* m, int64_t N, int64_t D, T eps, T* x, T* xs, T* y, T* h,
                                   T* rstd) = 0;
  // Attention inputs from their projections, fused into one pass where a backend can: over [B, Tn, H, hd] rows,
  // x = rope(norm ? rmsnorm(raw) : raw) (rstd per row when norm), then out = g[h] x when gain is given (q);
  // without gain (k) out is x itself and must equal it. With gain, out may also be x when only out is wanted (no
  // backward follows): a backend then need not store x. The default composes the ops above, in this order.
  virtual void qk_prep_forward(const T* raw, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base,
                               bool norm, T eps, const T* gain, T* rstd, T* x, T* out) {
    const int64_t rows = B * Tn * H;
    if (norm)
      rmsnorm_forward(raw, rows, hd, eps, x, rstd);
    else if (x != raw)
      copy(x, raw, static_cast<size_t>(rows * hd));
    rope_forward(x, B, Tn, H, hd, rot, base);
    if (gain) head_scale_forward(x, gain, B * Tn, H, hd, out);
  }
  // qk_prep_forward of the positions [from, Tn) of each of B sequences alone (the queries of a pass that scores
  // just each sequence's suffix): raw, rstd and out hold those S = Tn - from rows per sequence, packed
  // ([B, S, H, hd]); each is rotated at its position in the full sequence (base as for Tn), so out equals
  // qk_prep_forward's rows from `from` on. Forward-only: x is not kept (out = g[h] x with a gain, x without).
  // out may be an operand buffer. The default spreads raw into a full-length scratch (zeros before `from`), runs
  // qk_prep_forward and gathers the rows.
  virtual void qk_prep_forward_suffix(const T* raw, int64_t B, int64_t Tn, int64_t from, int64_t H, int64_t hd,
                                      int64_t rot, double base, bool norm, T eps, const T* gain, T* rstd, T* out) {
    const int64_t D = H * hd;
    DeviceBuffer<T> fr(*this, static_cast<size_t>(B * Tn * D)), fx(*this, static_cast<size_t>(B * Tn * D));
    DeviceBuffer<T> fs(*this, static_cast<size_t>(B * Tn * H));
    spread_rows(raw, B, Tn, from, D, fr.get());
    qk_prep_forward(fr.get(), B, Tn, H, hd, rot, base, norm, eps, gain, fs.get(), fx.get(), fx.get());
    gather_rows(fx.get(), B, Tn, from, D, out);
    if (norm) gather_rows(fs.get(), B, Tn, from, H, rstd);
  }
  // Its backward from d = d/dx (after the gain's head_scale_backward; d is overwritten): back through the rotation,
  // and with norm through the norm into draw (overwritten, not accumulated; it may be an operand buffer, or
  // H * hd columns of one: a ColumnSlice of B * Tn rows). Without norm the gradient of raw is d (draw unused).
  virtual void qk_prep_backward(T* d, const T* raw, const T* rstd, int64_t B, int64_t Tn, int64_t H, int64_t hd,
                                int64_t rot, double base, bool norm, ColumnSlice draw) {
    rope_backward(d, B, Tn, H, hd, rot, base);
    if (!norm) return;
    const int64_t rows = B * Tn * H;
    const size_t n = static_cast<size_t>(rows * hd);
    DeviceBuffer<T> tmp(*this, draw.whole(H * hd) ? 0 : n);
    T* out = draw.whole(H * hd) ? draw.base : tmp.get();
    zero(out, n);
    rmsnorm_backward(d, raw, rstd, rows, hd, out);
    if (tmp.get()) copy_columns(out, B * Tn, H * hd, draw);
  }

  // q's backward through its gain as well (out = g[h] x, x = rope(norm ? rmsnorm(raw) : raw) from qk_prep_forward
  // with a gain and eps), in one pass where a backend can: from dq (the gradient of out) and x, adds sum dq x over
  // head h's elements to dg[h], then writes the gradient of raw into draw (a buffer or a slice, as
  // qk_prep_backward's draw; without norm it receives the rotated g[h] dq). x is not kept by the forward: it is
  // formed again from raw (and rstd) exactly as the forward formed it. dq is only read; raw may be an activation
  // buffer, draw an operand buffer. The default composes qk_prep_forward (for x), head_scale_backward_set_dx and
  // qk_prep_backward through scratch buffers.
  virtual void qk_prep_backward_gain(const T* dq, const T* gain, T* dg, const T* raw, const T* rstd, int64_t B,
                                     int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base, bool norm, T eps,
                                     ColumnSlice draw) {
    const size_t n = static_cast<size_t>(B * Tn * H * hd);
    DeviceBuffer<T> x(*this, n), r(*this, static_cast<size_t>(B * Tn * H)), d(*this, n);
    qk_prep_forward(raw, B, Tn, H, hd, rot, base, norm, eps, nullptr, r.get(), x.get(), x.get());
    head_scale_backward_set_dx(dq, x.get(), gain, B * Tn, H, hd, d.get(), dg);
    qk_prep_backward(d.get(), raw, rstd, B, Tn, H, hd, rot, base, norm, draw);
    if (!norm) copy_columns(d.get(), B * Tn, H * hd, draw);
  }

  // The backwards above with the input gradient written instead of added (dx = ..., not dx += ...), for a buffer
  // that would otherwise be zeroed first: a backend can skip the zeroing pass and the read of zeros. Parameter
  // gradients (dW, ds, dg) still accumulate. The defaults zero the input gradient and call the accumulating op.
  virtual void linear_backward_set_dx(const T* dy, const T* x, const T* W, int64_t N, int64_t K, int64_t M, T* dx,
                                      T* dW) {
    if (dx) zero(dx, static_cast<size_t>(N * K));
    linear_backward(dy, x, W, N, K, M, dx, dW);
  }
  virtual void channel_scale_backward_set_dx(const T* dy, const T* x, const T* s, int64_t N, int64_t D, T* dx,
                                             T* ds) {
    if (dx) zero(dx, static_cast<size_t>(N * D));
    channel_scale_backward(dy, x, s, N, D, dx, ds);
  }
  virtual void head_scale_backward_set_dx(const T* dy, const T* x, const T* g, int64_t N, int64_t H, int64_t hd,
                                          T* dx, T* dg) {
    if (dx) zero(dx, static_cast<size_t>(N * H * hd));
    head_scale_backward(dy, x, g, N, H, hd, dx, dg);
  }
  virtual void rmsnorm_backward_set(const T* dout, const T* x, const T* rstd, int64_t N, int64_t D, T* dx) {
    zero(dx, static_cast<size_t>(N * D));
    rmsnorm_backward(dout, x, rstd, N, D, dx);
  }
  virtual void skip_add_backward_set(const T* dy, const T* skip, const T* w, int64_t N, int64_t D, T* dskip, T* dw) {
    if (dskip) zero(dskip, static_cast<size_t>(N * D));
    skip_add_backward(dy, skip, w, N, D, dskip, dw);
  }
  virtual void activation_backward_set(cpu::Activation a, const T* dout, const T* h, int64_t n, T* dh) {
    if (!dh) return;
    zero(dh, static_cast<size_t>(n));
    activation_backward(a, dout, h, n, dh);
  }
  // dv may also be Hkv * hd columns of a wider operand buffer (a ColumnSlice of B * Tn rows).
  virtual void attention_backward_set(const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                                      int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd, T* dq, T* dk,
                                      ColumnSlice dv) {
    const size_t nkv = static_cast<size_t>(B * Tn * Hkv * hd);
    DeviceBuffer<T> tmp(*this, dv.base && !dv.whole(Hkv * hd) ? nkv : 0);
    T* dvw = tmp.get() ? tmp.get() : dv.base;
    if (dq) zero(dq, static_cast<size_t>(B * Tn * H * hd));
    if (dk) zero(dk, nkv);
    if (dvw) zero(dvw, nkv);
    attention_backward(dout, q, k, v, out, lse, B, Tn, H, Hkv, hd, dq, dk, dvw);
    if (tmp.get()) copy_columns(dvw, B * Tn, Hkv * hd, dv);
  }
  // Attention's backward joined to the backward of the q/k preparation in front of it (qk_prep_forward of q with
  // its gain, of k without), as a layer runs them: attention_backward_set with dq and dk into the caller's fp32
  // scratch, then qk_prep_backward_gain of dq into q's draw and qk_prep_backward of dk into k's (without norm, the
  // rotated dk copied there); v's gradient goes to dv. A backend may fold a preparation's backward into
  // attention's (prep_backward_folds says which) and then leaves that scratch unwritten.
  struct PrepGrad {
    const T* raw;     // the preparation's input (an activation buffer or fp32)
    const T* rstd;    // the forward's per-head-row rstd (norm only)
    ColumnSlice draw;  // where raw's gradient is written
  };
  virtual void attention_prep_backward_set(const T* dout, const T* q, const T* k, const T* v, const T* out,
                                           const T* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd,
                                           int64_t rot, double base, bool norm, T eps, const T* gain, T* dgain,
                                           PrepGrad qg, PrepGrad kg, ColumnSlice dv, T* dq, T* dk) {
    attention_backward_set(dout, q, k, v, out, lse, B, Tn, H, Hkv, hd, dq, dk, dv);
    qk_prep_backward_gain(dq, gain, dgain, qg.raw, qg.rstd, B, Tn, H, hd, rot, base, norm, eps, qg.draw);
    qk_prep_backward(dk, kg.raw, kg.rstd, B, Tn, Hkv, hd, rot, base, norm, kg.draw);
    if (!norm) copy_columns(dk, B * Tn, Hkv * hd, kg.draw);
  }
  // Which preparation backwards attention_prep_backward_set folds into attention's at head dim hd (the profiler
  // counts the bytes of the scratch round trips that remain).
  struct PrepFolds {
    bool q = false, k = false;
  };
  virtual PrepFolds prep_backward_folds(int64_t hd) const {
    (void)hd;
    return {};
  }
  // Here dx may also be dy itself (the residual gradient, updated in place).
  virtual void resid_mix_backward_set_dx(const T* dy, const T* x, const T* x0, const T* m, int64_t N, int64_t D,
                                         T* dx, T* dx0, T* dm) {
    const size_t n = static_cast<size_t>(N * D);
    DeviceBuffer<T> tmp(*this, dx == dy ? n : 0);
    T* out = dx == dy ? tmp.get() : dx;
    if (out) zero(out, n);
    resid_mix_backward(dy, x, x0, m, N, D, out, dx0, dm);
    if (dx == dy) copy(dx, out, n);
  }
  // The backward of h = rmsnorm(y), y = resid_mix(x, x0, m) (the attention branch's plain pre-norm), in one pass
  // where a backend can: dx holds the gradient that reaches y along the residual stream; rmsnorm's backward of dh
  // (y and rstd from the forward; a backend may recompute y = resid_mix(x, x0, m) instead of reading it) is added
  // to it, then dx is overwritten with the gradient of x and the gradients of x0 and m are added to dx0 and dm, as
  // resid_mix_backward_set_dx(dx, ..., dx, dx0, dm). dh may be an activation buffer. Two additions save passes
  // over the residual stream: dx_add (null for none), a gradient of x that arrives by another path (a U-Net
  // skip's), joins x's gradient as add(dx, dx_add) after the op would; with fold_x0 (the first layer, whose x is
  // x0) x's whole gradient then goes to x0's, as add(dx0, dx) after the op would, and dx is left as scratch. The
  // default composes those ops.
  virtual void rmsnorm_resid_mix_backward(const T* dh, const T* y, const T* rstd, const T* x, const T* x0, const T* m,
                                          int64_t N, int64_t D, T* dx, T* dx0, T* dm, const T* dx_add, bool fold_x0) {
    rmsnorm_backward(dh, y, rstd, N, D, dx);
    resid_mix_backward_set_dx(dx, x, x0, m, N, D, dx, dx0, dm);
    if (dx_add) add(dx, dx_add, static_cast<size_t>(N * D));
    if (fold_x0) add(dx0, dx, static_cast<size_t>(N * D));
  }
  // The backward of h = rmsnorm(y) (the MLP branch's plain pre-norm; y = x + s ⊙ o, the attention branch's scaled
  // residual) on into that channel scale, in one pass where a backend can: rmsnorm's backward of dh is added to dx
  // (the gradient at y, which stays the residual stream's), then as channel_scale_backward_set_dx(dx, o, s, N, D,
  // dout, ds): dout = s ⊙ dx is written and the column sums of dx ⊙ o are added to ds. dh and o may be activation
  // buffers and dout an operand buffer. The default composes those two ops.
  virtual void rmsnorm_channel_scale_backward(const T* dh, const T* y, const T* rstd, const T* o, const T* s,
                                              int64_t N, int64_t D, T* dx, T* dout, T* ds) {
    rmsnorm_backward(dh, y, rstd, N, D, dx);
    channel_scale_backward_set_dx(dx, o, s, N, D, dout, ds);
  }

  // Several linears of one input (attention's q, k and v projections): y_i = x W_i^T. A backend can prepare x once
  // for all of them (bf16 GEMMs round it to bf16 once, not once per weight). The default calls linear_forward.
  struct LinearOut {
    const T* W;
    int64_t M;
    T* y;
  };
  virtual void linear_forward_shared(const T* x, int64_t N, int64_t K, std::span<const LinearOut> outs) {
    for (const LinearOut& o : outs) linear_forward(x, o.W, N, K, o.M, o.y);
  }
  // Their backward goes through one GEMM when the weights lie one after another ([W_1; W_2; ...] is one matrix):
  // the gradients dy_i side by side are the dy of that matrix (the producers of the dy_i write their columns of
  // it through a ColumnSlice, or copy_columns places them).
  // The rows from position `from` on of each of B sequences of Tn rows (D wide), packed: dst[b, s, :] =
  // src[b, from + s, :] for s < Tn - from. src may be an operand or activation buffer and dst an operand or
  // activation buffer (values copied as stored, rounded where dst keeps fewer bits).
  virtual void gather_rows(const T* src, int64_t B, int64_t Tn, int64_t from, int64_t D, T* dst) = 0;
  // Its inverse, for the suffix ops' defaults: src's packed rows (Tn - from per sequence) to their positions in dst
  // [B, Tn, D], zeros before `from` (sequence b's suffix is the last (Tn - from) D elements of dst's row b).
  void spread_rows(const T* src, int64_t B, int64_t Tn, int64_t from, int64_t D, T* dst) {
    zero(dst, static_cast<size_t>(B * Tn * D));
    copy_columns(src, B, (Tn - from) * D, ColumnSlice(dst, Tn * D, from * D));
  }

  // Per-token losses land in host memory (double); returns their sum.
  virtual double softcap_cross_entropy(const T* z, const int32_t* targets, int64_t N, int64_t V, T cap,
                                       double* losses_host, T* dz, T grad_scale) = 0;
  // The training form: the same dz, but the batch's loss sum is added to an accumulator in backend memory
  // instead of travelling to the host, so a step of several micro-batches needs no host round trip.
  // take_loss_sum() waits for the backend, returns the sum accumulated since its last call and resets it.
  // A target outside [0, V) throws: on the CPU at once, on CUDA from the next take_loss_sum().
  virtual void softcap_cross_entropy_accumulate(const T* z, const int32_t* targets, int64_t N, int64_t V, T cap,
                                                T* dz, T grad_scale) = 0;
  virtual double take_loss_sum() = 0;
};

// The CPU reference backend (fp32 for training, double for gradient checks).
template <class T>
std::unique_ptr<Backend<T>> make_cpu_backend();

// Owning handle to backend memory: plain, an operand buffer (Backend::alloc_operand) or an activation buffer
// (Backend::alloc_activation).
enum class Storage { plain, operand, activation };

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend<T>& b, size_t n, Storage s = Storage::plain)
      : b_(&b), p_(n ? alloc(b, n, s) : nullptr), n_(n) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept : b_(o.b_), p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) { reset(); b_ = o.b_; p_ = o.p_; n_ = o.n_; o.p_ = nullptr; o.n_ = 0; }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  void reset() { if (p_) b_->release(p_); p_ = nullptr; }
  static T* alloc(Backend<T>& b, size_t n, Storage s) {
    switch (s) {
      case Storage::operand: return b.alloc_operand(n);
      case Storage::activation: return b.alloc_activation(n);
      default: return b.alloc(n);
    }
  }
  Backend<T>* b_ = nullptr;
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace ptool

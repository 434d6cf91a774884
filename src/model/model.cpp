#include "src/model/model.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "formats/error.h"

namespace ptool::model {

namespace {
template <class T>
constexpr T rms_eps() {
  return std::numeric_limits<T>::epsilon();  // F.rms_norm's default: the dtype's machine epsilon
}
}  // namespace

template <class T>
Model<T>::Model(const ModelConfig& config, Backend<T>& backend)
    : cfg_(config), be_(backend), layout_(make_layout(config)) {
  cfg_.validate();
  params_ = DeviceBuffer<T>(be_, layout_.total);
  grads_ = DeviceBuffer<T>(be_, layout_.total);
  be_.zero(grads_.get(), layout_.total);
  fwd_ = params_.get();
  tok_emb_ = layout_.at("tok_emb.weight").offset;
  if (!cfg_.tie_embeddings) lm_head_ = layout_.at("lm_head.weight").offset;
  if (cfg_.ve_layers() > 0) {
    ve_embed_ = layout_.at("ve.embed.weight").offset;
    ve_proj_ = layout_.at("ve.proj.weight").offset;
    ve_scale_ = layout_.at("ve_scale").offset;
    ve_lam_ = layout_.at("ve_layer_scales").offset;
  }
  if (cfg_.bigram_buckets > 0) {
    big_embed_ = layout_.at("bigram.embed.weight").offset;
    big_proj_ = layout_.at("bigram.proj.weight").offset;
    big_scale_ = layout_.at("bigram_scale").offset;
  }
  if (cfg_.smear_gate) smear_ = layout_.at("smear_gate").offset;
  if (cfg_.skip_count() > 0) {
    skip_w_ = layout_.at("skip_weights").offset;
    if (cfg_.skips == SkipKind::gated) skip_g_ = layout_.at("skip_gates").offset;
  }
  for (int64_t b = 0; b < cfg_.physical_blocks; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    block_.push_back({layout_.at(p + "attn.c_q.weight").offset, layout_.at(p + "attn.c_k.weight").offset,
                      layout_.at(p + "attn.c_v.weight").offset, layout_.at(p + "attn.proj.weight").offset,
                      layout_.at(p + "mlp.fc.weight").offset, layout_.at(p + "mlp.proj.weight").offset});
    // The backward treats q, k and v's projections as one [D + 2 KV, D] matrix (layer_backward).
    const Names& w = block_.back();
    if (w.c_k != w.c_q + cfg_.d_model * cfg_.d_model || w.c_v != w.c_k + cfg_.kv_dim() * cfg_.d_model)
      throw Error("parameter layout: block " + std::to_string(b) + "'s c_q, c_k and c_v are not consecutive");
  }
  for (int64_t s = 0; s < cfg_.scalar_sets(); ++s) {
    const std::string p = (cfg_.per_virtual_scalars ? "layers." : "blocks.") + std::to_string(s) + ".";
    scal_.push_back({layout_.at(p + "attn_scale").offset, layout_.at(p + "mlp_scale").offset,
                     cfg_.resid_mix ? layout_.at(p + "resid_mix").offset : -1, layout_.at(p + "attn.q_gain").offset,
                     cfg_.norm_scale ? layout_.at(p + "attn_norm_scale").offset : -1,
                     cfg_.norm_scale ? layout_.at(p + "mlp_norm_scale").offset : -1});
  }
}

template <class T>
Model<T>::~Model() {
  if (xdev_) be_.release_index(xdev_);
  if (ydev_) be_.release_index(ydev_);
  if (bdev_) be_.release_index(bdev_);
}

template <class T>
void Model<T>::load_params(const T* host) {
  be_.upload(params_.get(), host, layout_.total);
}

template <class T>
void Model<T>::store_params(T* host) {
  be_.download(host, params_.get(), layout_.total);
}

template <class T>
double Model<T>::rope_base_at(int64_t Tn) const {
  if (Tn <= cfg_.train_seq_len) return cfg_.rope_base;
  return cpu::rope_ntk_base(cfg_.rope_base, cfg_.rotary_dims(), Tn, cfg_.train_seq_len);
}

template <class T>
T Model<T>::ln_factor(int64_t v) const {
  return cfg_.ln_scale ? static_cast<T>(1.0 / std::sqrt(static_cast<double>(v + 1))) : T(1);
}

template <class T>
void Model<T>::ensure_arena(int64_t B, int64_t Tn, bool train) {
  arenaB_ = B;  // the shape of this pass (visit_linear_inputs reads it)
  arenaT_ = Tn;
  // Buffers depend only on the token count: a shorter pass (eval's tail windows) reuses the larger arena.
  if (static_cast<size_t>(B * Tn) <= arena_cap_ && (arena_train_ || !train)) return;
  const size_t N = static_cast<size_t>(B * Tn), D = cfg_.d_model, KV = cfg_.kv_dim(), Hd = cfg_.hidden(),
               H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, V = cfg_.vocab_size;
  auto buf = [&](size_t n) { return DeviceBuffer<T>(be_, n); };
  // Tensors that only GEMMs and attention read are operand buffers (bf16 in the CUDA backend's bf16 mode): the
  // pre-norm outputs when they come straight from an RMSNorm, attention's q, k, v and output, the activation, the
  // final norm, and the gradients that the backward hands only to a linear op as dy or to attention as dout (the
  // logits', v's and q/k's raw gradients among them). GEMM outputs that element-wise ops read (q/k before their
  // preparation, the branch outputs o and m, the MLP's pre-activation u, and the gradients of the activation and
  // of the plain pre-norms) are activation buffers (bf16 there too, rounded as under PyTorch's autocast).
  auto operand = [&](size_t n) { return DeviceBuffer<T>(be_, n, Storage::operand); };
  auto activation = [&](size_t n) { return DeviceBuffer<T>(be_, n, Storage::activation); };
  // The residual stream has the embedding's precision, as in the reference (whose blocks cast their scales to the
  // stream's dtype): under embed_bf16 its values are activation buffers too (rounded where the backend stores them
  // in bf16; the norms after them normalize the stored values), and so is its gradient (the reference's autograd
  // keeps it in the stream's dtype): each op that adds into it rounds what it stores.
  auto stream = [&](size_t n) { return DeviceBuffer<T>(be_, n, stream_storage()); };
  const bool plain_norms = plain_pre_norms();
  acts_.clear();
  acts_.resize(cfg_.virtual_layers());
  for (int64_t v = 0; v < cfg_.virtual_layers(); ++v) {
    LayerActs& a = acts_[v];
    if (has_skip(v)) a.x_in_buf = stream(N * D);
    if (cfg_.resid_mix) a.x_mix_buf = stream(N * D);
    a.h1 = plain_norms ? operand(N * D) : buf(N * D); a.rstd1 = buf(N);
    if (cfg_.norm_scale) { a.n1 = buf(N * D); a.n2 = buf(N * D); }
    a.q_raw = activation(N * D); a.rstd_q = buf(N * H); a.k_raw = activation(N * KV); a.rstd_k = buf(N * Hkv);
    a.q = operand(N * D); a.k = operand(N * KV); a.v = operand(N * KV); a.att = operand(N * D);
    if (cfg_.xsa(v)) a.xatt = operand(N * D);
    a.lse = buf(N * H); a.o = activation(N * D); a.x1 = stream(N * D); a.h2 = plain_norms ? operand(N * D) : buf(N * D);
    a.rstd2 = buf(N); a.u = activation(N * Hd); a.a = operand(N * Hd); a.m = activation(N * D); a.x_out = stream(N * D);
  }
  // The looked-up rows: read by the backward, and by the composed embedding stage's norm.
  emb_ = train || cfg_.token_features() ? buf(N * D) : DeviceBuffer<T>();
  if (cfg_.bigram_buckets > 0) {
    const size_t E = cfg_.bigram_dim;
    big_rows_ = buf(N * E); big_out_ = activation(N * D); big_scaled_ = activation(N * D);
    if (train) { g_big_out_ = buf(N * D); g_big_rows_ = buf(N * E); }
  }
  if (cfg_.smear_gate) normed_ = buf(N * D);
  if (cfg_.ve_layers() > 0) {
    ve_rows_ = buf(N * cfg_.ve_dim); ve_proj_out_ = activation(N * KV); ve_base_ = activation(N * KV);
    if (train) { g_ve_base_ = buf(N * KV); g_ve_proj_out_ = buf(N * KV); g_ve_rows_ = buf(N * cfg_.ve_dim); }
  }
  x0_ = stream(N * D); rstd0_ = buf(N); final_ = operand(N * D); rstdf_ = buf(N);
  logits_ = buf(N * V);
  if (train) {
    g_tmp_ = buf(N * D);
    dlogits_ = operand(N * V);
    g_x_ = stream(N * D); g_x0_ = stream(N * D); g_q_ = buf(N * D); g_k_ = buf(N * KV);
    g_qkv_ = operand(N * (D + 2 * KV));  // q, k and v's raw gradients side by side, written there by their ops
    g_att_ = operand(N * D); g_o_ = operand(N * D); g_u_ = operand(N * Hd);
    g_xatt_ = cfg_.xsa_last > 0 ? operand(N * D) : DeviceBuffer<T>();
    g_a_ = activation(N * Hd); g_m_ = operand(N * D); g_final_ = buf(N * D);
    g_h_ = plain_norms ? activation(N * D) : buf(N * D); g_h2_ = plain_norms ? activation(N * D) : buf(N * D);
    g_skip_.clear();
    for (int64_t i = 0; i < cfg_.encoder_layers(); ++i) g_skip_.push_back(stream(N * D));
  }
  if (idx_cap_ < N) {
    if (xdev_) be_.release_index(xdev_);
    if (ydev_) be_.release_index(ydev_);
    if (bdev_) be_.release_index(bdev_);
    xdev_ = be_.alloc_index(N);
    ydev_ = be_.alloc_index(N);
    bdev_ = cfg_.bigram_buckets > 0 ? be_.alloc_index(N) : nullptr;
    idx_cap_ = N;
  }
  loss_scratch_.assign(N, 0.0);
  arena_cap_ = N;
  arena_train_ = train;
}

// h = [scale ⊙] ln_factor · rmsnorm(x); `n` keeps the unscaled normed values when a learned scale exists.
template <class T>
void Model<T>::pre_norm_forward(int64_t v, const T* x, int64_t N, T* n, T* h, T* rstd, int64_t scale) {
  const int64_t D = cfg_.d_model;
  T* normed = cfg_.norm_scale ? n : h;
  be_.rmsnorm_forward(x, N, D, rms_eps<T>(), normed, rstd);
  if (cfg_.ln_scale) be_.scale(normed, ln_factor(v), N * D);
  if (cfg_.norm_scale) be_.channel_scale_forward(normed, fwd_ + scale, N, D, h);
}

// Reads the gradient w.r.t. h from g (an activation buffer only with plain pre-norms) and accumulates the gradient
// w.r.t. x into dx.
template <class T>
void Model<T>::pre_norm_backward(int64_t v, T* g, const T* x, int64_t N, const T* n, const T* rstd, int64_t scale,
                                 T* dx) {
  const int64_t D = cfg_.d_model;
  if (cfg_.norm_scale) {
    be_.channel_scale_backward_set_dx(g, n, fwd_ + scale, N, D, g_tmp_.get(), grads_.get() + scale);
    g = g_tmp_.get();
  }
  if (cfg_.ln_scale) be_.scale(g, ln_factor(v), N * D);
  be_.rmsnorm_backward(g, x, rstd, N, D, dx);
}

template <class T>
Storage Model<T>::stream_storage() const {
  return cfg_.embed_bf16 ? Storage::activation : Storage::plain;
}

template <class T>
bool Model<T>::plain_pre_norms() const {
  return !cfg_.ln_scale && !cfg_.norm_scale;
}

template <class T>
bool Model<T>::fused_resid_mix_norm() const {
  return cfg_.resid_mix && plain_pre_norms();
}

template <class T>
bool Model<T>::skip_grad_joins_next(int64_t v) const {  // not when layer v + 1's own skip backward reads its dx first
  return skip_source(v) && v + 1 < cfg_.virtual_layers() && !has_skip(v + 1) && fused_resid_mix_norm();
}

template <class T>
bool Model<T>::fused_layer_entries() const {  // what layer_entry_forward computes: resid_mix and plain norms
  return fused_resid_mix_norm();
}

template <class T>
bool Model<T>::skip_source(int64_t v) const {  // an encoder layer whose output a decoder layer's skip reads
  const int64_t n_enc = cfg_.encoder_layers();
  return v < n_enc && v >= n_enc - cfg_.skip_count();
}

template <class T>
bool Model<T>::has_skip(int64_t v) const {
  const int64_t k = v - cfg_.encoder_layers();
  return k >= 0 && k < cfg_.skip_count();
}

// Layer v's entry from x (x0 or layer v - 1's output) as separate ops: the skip, resid_mix and the pre-norm.
template <class T>
void Model<T>::layer_entry(int64_t v, int64_t N, const T* x0, const T* x) {
  const int64_t D = cfg_.d_model, n_enc = cfg_.encoder_layers(), k = v - n_enc;
  const Scalars& s = scal_[cfg_.scalar_index(v)];
  const T* P = fwd_;
  LayerActs& a = acts_[v];
  if (has_skip(v)) {
    const T* skip = acts_[n_enc - 1 - k].x_out.get();
    T* in = a.x_in_buf.get();
    if (cfg_.skips == SkipKind::gated)
      be_.gated_skip_forward(x, skip, P + skip_w_ + k * D, P + skip_g_ + k * D, N, D, in);
    else  // skip_add_forward's x + w ⊙ skip, out of place
      be_.scaled_residual_forward(x, skip, P + skip_w_ + k * D, N, D, in);
    a.x_in = in;
  }
  a.x_mix = a.x_in;
  // Attention branch (resid_mix and a plain pre-norm in one pass).
  if (fused_resid_mix_norm()) {
    be_.resid_mix_rmsnorm_forward(a.x_in, x0, P + s.resid_mix, N, D, rms_eps<T>(), a.x_mix_buf.get(), a.h1.get(),
                                  a.rstd1.get());
    a.x_mix = a.x_mix_buf.get();
  } else {
    if (cfg_.resid_mix) {
      be_.resid_mix_forward(a.x_in, x0, P + s.resid_mix, N, D, a.x_mix_buf.get());
      a.x_mix = a.x_mix_buf.get();
    }
    pre_norm_forward(v, a.x_mix, N, a.n1.get(), a.h1.get(), a.rstd1.get(), s.attn_norm_scale);
  }
}

template <class T>
void Model<T>::layer_forward(int64_t v, int64_t B, int64_t Tn, const T* x0, const T* x, bool last,
                             int64_t score_from) {
  const int64_t N = B * Tn, D = cfg_.d_model, KV = cfg_.kv_dim(), Hd = cfg_.hidden(), H = cfg_.n_heads,
                Hkv = cfg_.n_kv_heads, hd = cfg_.head_dim();
  const Names& w = block_[cfg_.schedule[v]];
  const Scalars& s = scal_[cfg_.scalar_index(v)];
  const T* P = fwd_;
  LayerActs& a = acts_[v];
  const int64_t n_enc = cfg_.encoder_layers(), k = v - n_enc;
  a.x_pre = x;
  a.x_in = x;
  if (v > 0 && fused_layer_entries()) {
    // Layer v - 1's MLP residual add (x = its output), this layer's skip, resid_mix and pre-norm in one pass. A
    // forward-only pass keeps x only where a skip reads it, and never x + w ⊙ skip (only the backward reads it).
    const LayerActs& p = acts_[v - 1];
    const T* skip = has_skip(v) ? acts_[n_enc - 1 - k].x_out.get() : nullptr;
    const bool keep_x = backward_pass_ || skip_source(v - 1), keep_xs = backward_pass_ && skip;
    const bool gated = skip && cfg_.skips == SkipKind::gated;
    be_.layer_entry_forward(p.x1.get(), p.m.get(), P + scal_[cfg_.scalar_index(v - 1)].mlp_scale, skip,
                            skip ? P + skip_w_ + k * D : nullptr, gated ? P + skip_g_ + k * D : nullptr, x0,
                            P + s.resid_mix, N, D, rms_eps<T>(),
                            keep_x ? p.x_out.get() : nullptr, keep_xs ? a.x_in_buf.get() : nullptr,
                            a.x_mix_buf.get(), a.h1.get(), a.rstd1.get());
    if (keep_xs) a.x_in = a.x_in_buf.get();
    a.x_mix = a.x_mix_buf.get();
  } else {
    layer_entry(v, N, x0, x);
  }
  // The last layer of a pass that scores only each sequence's suffix needs the queries of those R rows alone, and
  // nothing past attention mixes positions: it goes on with them (their pre-norm packed into q's buffer, their
  // q into att's, attention's output into q's, each free then, the residual into scored_).
  const bool suffix = last && score_from > 0;
  const int64_t R = suffix ? B * (Tn - score_from) : N;
  const typename Backend<T>::LinearOut qkv[] = {
      {P + w.c_q, D, a.q_raw.get()}, {P + w.c_k, KV, a.k_raw.get()}, {P + w.c_v, KV, a.v.get()}};
  if (suffix) {
    be_.linear_forward_shared(a.h1.get(), N, D, std::span(qkv).subspan(1));
    be_.gather_rows(a.h1.get(), B, Tn, score_from, D, a.q.get());
    be_.linear_forward(a.q.get(), P + w.c_q, R, D, D, a.q_raw.get());
  } else {
    be_.linear_forward_shared(a.h1.get(), N, D, qkv);
  }
  if (const int64_t i = cfg_.ve_index(v); i >= 0)  // the value embedding joins v
    be_.scaled_add_forward(ve_base_.get(), P + ve_lam_ + i, N, KV, a.v.get());
  const double base = rope_base_at(Tn);
  const int64_t rot = cfg_.rotary_dims();
  // q before its gain is not kept: the gain's backward forms it again from q_raw.
  if (suffix)
    be_.qk_prep_forward_suffix(a.q_raw.get(), B, Tn, score_from, H, hd, rot, base, cfg_.qk_norm, rms_eps<T>(),
                               P + s.q_gain, a.rstd_q.get(), a.att.get());
  else
    be_.qk_prep_forward(a.q_raw.get(), B, Tn, H, hd, rot, base, cfg_.qk_norm, rms_eps<T>(), P + s.q_gain,
                        a.rstd_q.get(), a.q.get(), a.q.get());
  be_.qk_prep_forward(a.k_raw.get(), B, Tn, Hkv, hd, rot, base, cfg_.qk_norm, rms_eps<T>(), nullptr, a.rstd_k.get(),
                      a.k.get(), a.k.get());
  const T* att = a.proj_in();
  const T* x_mix = a.x_mix;
  if (suffix) {
    be_.attention_forward_suffix(a.att.get(), a.k.get(), a.v.get(), B, Tn, score_from, H, Hkv, hd, a.q.get());
    be_.gather_rows(x_mix, B, Tn, score_from, D, scored_.get());
    att = a.q.get();
    x_mix = scored_.get();
    if (cfg_.xsa(v)) {  // the scored rows' values into xatt (free), XSA's output into att (free too)
      be_.gather_rows(a.v.get(), B, Tn, score_from, KV, a.xatt.get());
      be_.xsa_forward(a.q.get(), a.xatt.get(), R, H, Hkv, hd, a.att.get());
      att = a.att.get();
    }
  } else {
    be_.attention_forward(a.q.get(), a.k.get(), a.v.get(), B, Tn, H, Hkv, hd, a.att.get(), a.lse.get());
    if (cfg_.xsa(v)) be_.xsa_forward(a.att.get(), a.v.get(), N, H, Hkv, hd, a.xatt.get());
  }
  be_.linear_forward(att, P + w.proj, R, D, D, a.o.get());
  // MLP branch (its pre-norm fused with the residual add when it is a plain RMSNorm).
  if (plain_pre_norms()) {
    be_.scaled_residual_rmsnorm_forward(x_mix, a.o.get(), P + s.attn_scale, R, D, rms_eps<T>(), a.x1.get(),
                                        a.h2.get(), a.rstd2.get());
  } else {
    be_.scaled_residual_forward(x_mix, a.o.get(), P + s.attn_scale, R, D, a.x1.get());
    pre_norm_forward(v, a.x1.get(), R, a.n2.get(), a.h2.get(), a.rstd2.get(), s.mlp_norm_scale);
  }
  be_.linear_forward(a.h2.get(), P + w.fc, R, D, Hd, a.u.get());
  be_.activation_forward(cfg_.activation, a.u.get(), R * Hd, a.a.get());
  be_.linear_forward(a.a.get(), P + w.mproj, R, Hd, D, a.m.get());
  if (last)  // the model's final norm, fused with the last residual add
    be_.scaled_residual_rmsnorm_forward(a.x1.get(), a.m.get(), P + s.mlp_scale, R, D, rms_eps<T>(), a.x_out.get(),
                                        final_.get(), rstdf_.get());
  else if (!fused_layer_entries())  // else the next layer's entry adds it
    be_.scaled_residual_forward(a.x1.get(), a.m.get(), P + s.mlp_scale, R, D, a.x_out.get());
}

template <class T>
void Model<T>::layer_backward(int64_t v, int64_t B, int64_t Tn, const T* x0, T* dx, T* dx0) {
  const int64_t N = B * Tn, D = cfg_.d_model, KV = cfg_.kv_dim(), Hd = cfg_.hidden(), H = cfg_.n_heads,
                Hkv = cfg_.n_kv_heads, hd = cfg_.head_dim();
  const Names& w = block_[cfg_.schedule[v]];
  const Scalars& s = scal_[cfg_.scalar_index(v)];
  const T* P = fwd_;
  T* G = grads_.get();
  LayerActs& a = acts_[v];
  const int64_t n_enc = cfg_.encoder_layers(), k = v - n_enc;
  if (skip_source(v) && !skip_grad_joins_next(v)) be_.add(dx, g_skip_[v].get(), N * D);
  // MLP branch: x_out = x1 + mlp_scale * proj(act(fc(norm(x1)))).
  be_.channel_scale_backward_set_dx(dx, a.m.get(), P + s.mlp_scale, N, D, g_m_.get(), G + s.mlp_scale);
  be_.linear_backward_set_dx(g_m_.get(), a.a.get(), P + w.mproj, N, Hd, D, g_a_.get(), G + w.mproj);
  be_.activation_backward_set(cfg_.activation, g_a_.get(), a.u.get(), N * Hd, g_u_.get());
  be_.linear_backward_set_dx(g_u_.get(), a.h2.get(), P + w.fc, N, D, Hd, g_h2_.get(), G + w.fc);
  // Then the attention branch: x1 = x_mix + attn_scale * proj(attention(...)). dx becomes d/dx1.
  if (plain_pre_norms()) {  // the MLP pre-norm's backward and attn_scale's in one pass
    be_.rmsnorm_channel_scale_backward(g_h2_.get(), a.x1.get(), a.rstd2.get(), a.o.get(), P + s.attn_scale, N, D, dx,
                                       g_o_.get(), G + s.attn_scale);
  } else {
    pre_norm_backward(v, g_h2_.get(), a.x1.get(), N, a.n2.get(), a.rstd2.get(), s.mlp_norm_scale, dx);
    be_.channel_scale_backward_set_dx(dx, a.o.get(), P + s.attn_scale, N, D, g_o_.get(), G + s.attn_scale);
  }
  be_.linear_backward_set_dx(g_o_.get(), a.proj_in(), P + w.proj, N, D, D, g_att_.get(), G + w.proj);
  // With XSA, g_att_ is the gradient of its output: attention's own output gradient goes to g_xatt_, and v's
  // gradient along XSA's path joins what attention's backward writes.
  const bool xsa = cfg_.xsa(v);
  if (xsa) be_.xsa_backward(g_att_.get(), a.att.get(), a.v.get(), N, H, Hkv, hd, g_xatt_.get(), {nullptr});
  const T* d_att = xsa ? g_xatt_.get() : g_att_.get();
  // q, k and v's projections act as one [D + 2 KV, D] matrix (consecutive in the layout): their raw gradients are
  // written side by side into the columns of g_qkv_ (rows W apart), the dy of one GEMM for dx and one for dW.
  using Slice = typename Backend<T>::ColumnSlice;
  const int64_t W = D + 2 * KV;
  be_.attention_prep_backward_set(d_att, a.q.get(), a.k.get(), a.v.get(), a.att.get(), a.lse.get(), B, Tn, H,
                                 Hkv, hd, cfg_.rotary_dims(), rope_base_at(Tn), cfg_.qk_norm, rms_eps<T>(),
                                 P + s.q_gain, G + s.q_gain, {a.q_raw.get(), a.rstd_q.get(), Slice(g_qkv_.get(), W, 0)},
                                 {a.k_raw.get(), a.rstd_k.get(), Slice(g_qkv_.get(), W, D)},
                                 Slice(g_qkv_.get(), W, D + KV), g_q_.get(), g_k_.get());
  if (xsa)
    be_.xsa_backward(g_att_.get(), a.att.get(), a.v.get(), N, H, Hkv, hd, nullptr, Slice(g_qkv_.get(), W, D + KV));
  if (const int64_t i = cfg_.ve_index(v); i >= 0)  // v's gradient also reaches the value embedding
    be_.scaled_add_backward(Slice(g_qkv_.get(), W, D + KV), ve_base_.get(), P + ve_lam_ + i, N, KV, g_ve_base_.get(),
                            G + ve_lam_ + i);
  be_.linear_backward_set_dx(g_qkv_.get(), a.h1.get(), P + w.c_q, N, D, W, g_h_.get(), G + w.c_q);
  if (fused_resid_mix_norm()) {  // both backwards in one pass; layer 0's x is x0: its gradient joins dx0's
    const T* g_skip_prev = v > 0 && skip_grad_joins_next(v - 1) ? g_skip_[v - 1].get() : nullptr;
    be_.rmsnorm_resid_mix_backward(g_h_.get(), a.x_mix, a.rstd1.get(), a.x_in, x0, P + s.resid_mix, N, D, dx, dx0,
                                   G + s.resid_mix, g_skip_prev, v == 0);
  } else {
    pre_norm_backward(v, g_h_.get(), a.x_mix, N, a.n1.get(), a.rstd1.get(), s.attn_norm_scale, dx);  // d/dx_mix
    if (cfg_.resid_mix)
      be_.resid_mix_backward_set_dx(dx, a.x_in, x0, P + s.resid_mix, N, D, dx, dx0, G + s.resid_mix);
  }
  // dx: now d/dx_in. Undo the skip connection.
  if (has_skip(v)) {
    const int64_t e = n_enc - 1 - k;
    const T* skip = acts_[e].x_out.get();
    if (cfg_.skips == SkipKind::gated) {
      be_.zero(g_tmp_.get(), N * D);
      be_.gated_skip_backward(dx, a.x_pre, skip, P + skip_w_ + k * D, P + skip_g_ + k * D, N, D, g_tmp_.get(),
                              g_skip_[e].get(), G + skip_w_ + k * D, G + skip_g_ + k * D);
      be_.copy_columns(g_tmp_.get(), N, D, dx);  // dx may be a stream buffer (bf16): copied as it stores values
    } else {
      be_.skip_add_backward_set(dx, skip, P + skip_w_ + k * D, N, D, g_skip_[e].get(), G + skip_w_ + k * D);
    }
  }
}

// ve_base = ve_scale * proj(ve_embed[x]), once per pass; each VE layer adds its own scalar times it to v.
template <class T>
void Model<T>::value_embedding_forward(int64_t N) {
  const int64_t E = cfg_.ve_dim, KV = cfg_.kv_dim();
  be_.embedding_forward(fwd_ + ve_embed_, xdev_, N, E, ve_rows_.get());
  be_.linear_forward(ve_rows_.get(), fwd_ + ve_proj_, N, E, KV, ve_proj_out_.get());
  be_.zero(ve_base_.get(), static_cast<size_t>(N * KV));
  be_.scaled_add_forward(ve_proj_out_.get(), fwd_ + ve_scale_, N, KV, ve_base_.get());
}

// From g_ve_base_, the sum over the VE layers of their scalar times v's gradient.
template <class T>
void Model<T>::value_embedding_backward(int64_t N) {
  const int64_t E = cfg_.ve_dim, KV = cfg_.kv_dim();
  T* G = grads_.get();
  be_.zero(g_ve_proj_out_.get(), static_cast<size_t>(N * KV));
  be_.scaled_add_backward(g_ve_base_.get(), ve_proj_out_.get(), fwd_ + ve_scale_, N, KV, g_ve_proj_out_.get(),
                          G + ve_scale_);
  be_.linear_backward_set_dx(g_ve_proj_out_.get(), ve_rows_.get(), fwd_ + ve_proj_, N, E, KV, g_ve_rows_.get(),
                             G + ve_proj_);
  be_.embedding_backward(g_ve_rows_.get(), xdev_, N, E, G + ve_embed_);
}

template <class T>
void Model<T>::token_features_forward(const int32_t* x, int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, D = cfg_.d_model;
  const T* P = fwd_;
  be_.embedding_forward(P + tok_emb_, xdev_, N, D, emb_.get());
  if (cfg_.bigram_buckets > 0) {  // bigram_scale * proj(bigram[bucket]) joins the token embedding
    const int64_t E = cfg_.bigram_dim;
    buckets_.resize(static_cast<size_t>(N));
    cpu::bigram_buckets(x, B, Tn, cfg_.bigram_buckets, buckets_.data());
    be_.upload_index(bdev_, buckets_.data(), N);
    be_.embedding_forward(P + big_embed_, bdev_, N, E, big_rows_.get());
    be_.linear_forward(big_rows_.get(), P + big_proj_, N, E, D, big_out_.get());
    be_.zero(big_scaled_.get(), static_cast<size_t>(N * D));
    be_.scaled_add_forward(big_out_.get(), P + big_scale_, N, D, big_scaled_.get());
    be_.add(emb_.get(), big_scaled_.get(), static_cast<size_t>(N * D));
  }
  T* normed = cfg_.smear_gate ? normed_.get() : x0_.get();
  be_.rmsnorm_forward(emb_.get(), N, D, rms_eps<T>(), normed, rstd0_.get());
  if (cfg_.smear_gate) be_.smear_forward(normed, P + smear_, B, Tn, D, x0_.get());
}

// From g_x0_; g_final_ (free by now) holds the smear gate's input gradient.
template <class T>
void Model<T>::token_features_backward(int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, D = cfg_.d_model;
  T* G = grads_.get();
  const T* g_normed = g_x0_.get();
  if (cfg_.smear_gate) {
    be_.smear_backward_set_dx(g_x0_.get(), normed_.get(), fwd_ + smear_, B, Tn, D, g_final_.get(), G + smear_);
    g_normed = g_final_.get();
  }
  be_.rmsnorm_backward_set(g_normed, emb_.get(), rstd0_.get(), N, D, g_tmp_.get());
  be_.embedding_backward(g_tmp_.get(), xdev_, N, D, G + tok_emb_);
  if (cfg_.bigram_buckets > 0) {
    const int64_t E = cfg_.bigram_dim;
    be_.zero(g_big_out_.get(), static_cast<size_t>(N * D));
    be_.scaled_add_backward(g_tmp_.get(), big_out_.get(), fwd_ + big_scale_, N, D, g_big_out_.get(), G + big_scale_);
    be_.linear_backward_set_dx(g_big_out_.get(), big_rows_.get(), fwd_ + big_proj_, N, E, D, g_big_rows_.get(),
                               G + big_proj_);
    be_.embedding_backward(g_big_rows_.get(), bdev_, N, E, G + big_embed_);
  }
}

template <class T>
double Model<T>::run(const int32_t* x, const int32_t* y, int64_t B, int64_t Tn, double* losses, T* dz,
                     T grad_scale, bool defer_loss, int64_t score_from) {
  const bool train = dz != nullptr;
  backward_pass_ = train;
  if (score_from < 0 || score_from >= std::max<int64_t>(Tn, 1) || (train && score_from > 0))
    throw Error("score_from " + std::to_string(score_from) + " must be in [0, " + std::to_string(Tn) +
                ") and 0 when training");
  ensure_arena(B, Tn, train);
  const int64_t N = B * Tn, D = cfg_.d_model, V = cfg_.vocab_size, S = Tn - score_from, R = B * S;
  for (int64_t i = 0; i < N; ++i)
    if (x[i] < 0 || x[i] >= V || ((i % Tn) >= score_from && (y[i] < 0 || y[i] >= V)))
      throw Error("token id out of range at batch position " + std::to_string(i) + " (vocab " + std::to_string(V) +
                  ")");
  be_.upload_index(xdev_, x, N);
  if (score_from == 0) {
    be_.upload_index(ydev_, y, N);
  } else {
    scored_targets_.resize(static_cast<size_t>(R));
    for (int64_t b = 0; b < B; ++b)
      std::copy(y + b * Tn + score_from, y + (b + 1) * Tn, scored_targets_.begin() + b * S);
    be_.upload_index(ydev_, scored_targets_.data(), R);
  }
  const T* P = fwd_;
  // The reference's x0 is F.rms_norm of a bf16 embedding under embed_bf16, a bf16 tensor; the backward passes
  // straight through that rounding.
  if (cfg_.token_features())
    token_features_forward(x, B, Tn);
  else
    be_.embedding_rmsnorm_forward(P + tok_emb_, xdev_, N, D, rms_eps<T>(), cfg_.embed_bf16,
                                  train ? emb_.get() : nullptr, x0_.get(), rstd0_.get());
  if (cfg_.ve_layers() > 0) value_embedding_forward(N);
  if (score_from > 0 && scored_.size() < static_cast<size_t>(R * D))
    scored_ = DeviceBuffer<T>(be_, static_cast<size_t>(N * D), stream_storage());
  const int64_t L = cfg_.virtual_layers();  // >= 1 (a schedule is never empty)
  for (int64_t v = 0; v < L; ++v)
    layer_forward(v, B, Tn, x0_.get(), v == 0 ? x0_.get() : acts_[v - 1].x_out.get(), v == L - 1, score_from);
  head_rows_ = R;
  const T* head = P + (cfg_.tie_embeddings ? tok_emb_ : lm_head_);
  be_.linear_forward(final_.get(), head, R, D, V, logits_.get());
  double sum = 0;
  if (defer_loss) {
    be_.softcap_cross_entropy_accumulate(logits_.get(), ydev_, R, V, static_cast<T>(cfg_.logit_softcap), dz, grad_scale);
  } else {
    double* l = losses ? losses : loss_scratch_.data();
    sum = be_.softcap_cross_entropy(logits_.get(), ydev_, R, V, static_cast<T>(cfg_.logit_softcap), l, dz, grad_scale);
  }
  if (!train) return sum;

  T* G = grads_.get();
  if (cfg_.skips == SkipKind::gated)  // gated_skip_backward adds into them; skip_add_backward_set writes them
    for (auto& g : g_skip_) be_.zero(g.get(), N * D);
  be_.linear_backward_set_dx(dz, final_.get(), head, N, D, V, g_final_.get(),
                      G + (cfg_.tie_embeddings ? tok_emb_ : lm_head_));
  be_.rmsnorm_backward_set(g_final_.get(), acts_.back().x_out.get(), rstdf_.get(), N, D, g_x_.get());
  be_.zero(g_x0_.get(), N * D);
  if (cfg_.ve_layers() > 0) be_.zero(g_ve_base_.get(), static_cast<size_t>(N * cfg_.kv_dim()));
  for (int64_t v = cfg_.virtual_layers() - 1; v >= 0; --v)
    layer_backward(v, B, Tn, x0_.get(), g_x_.get(), g_x0_.get());
  if (!fused_resid_mix_norm()) be_.add(g_x0_.get(), g_x_.get(), N * D);  // else layer 0 added it
  if (cfg_.token_features()) {
    token_features_backward(B, Tn);
  } else {
    be_.rmsnorm_backward_set(g_x0_.get(), emb_.get(), rstd0_.get(), N, D, g_tmp_.get());
    be_.embedding_backward(g_tmp_.get(), xdev_, N, D, G + tok_emb_);
  }
  if (cfg_.ve_layers() > 0) value_embedding_backward(N);
  return sum;
}

template <class T>
void Model<T>::round_bf16_params() {
  if (cfg_.embed_bf16)
    be_.round_bf16(params_.get() + tok_emb_, static_cast<size_t>(layout_.at("tok_emb.weight").numel));
}

template <class T>
double Model<T>::forward(const int32_t* x, const int32_t* y, int64_t B, int64_t Tn, double* losses,
                         int64_t score_from) {
  return run(x, y, B, Tn, losses, nullptr, T(0), false, score_from);
}

template <class T>
double Model<T>::forward_backward(const int32_t* x, const int32_t* y, int64_t B, int64_t Tn, T grad_scale) {
  ensure_arena(B, Tn, true);
  return run(x, y, B, Tn, nullptr, dlogits_.get(), grad_scale);
}

template <class T>
void Model<T>::accumulate_gradients(const int32_t* x, const int32_t* y, int64_t B, int64_t Tn, T grad_scale) {
  ensure_arena(B, Tn, true);
  run(x, y, B, Tn, nullptr, dlogits_.get(), grad_scale, true);
}

template <class T>
void Model<T>::visit_linear_inputs(const LinearInputVisitor& f) const {
  const int64_t N = arenaB_ * arenaT_, D = cfg_.d_model, Hd = cfg_.hidden();
  if (N == 0) throw Error("visit_linear_inputs needs a forward pass first");
  // Operand buffers may hold another precision: the visitor sees their values as T, in a scratch buffer that
  // stays allocated (queued work may still read it when this returns).
  if (visit_scratch_.size() < static_cast<size_t>(N * std::max(D, Hd)))
    visit_scratch_ = DeviceBuffer<T>(be_, static_cast<size_t>(N * std::max(D, Hd)));
  auto values = [&](const DeviceBuffer<T>& b, int64_t cols, int64_t rows) {
    be_.operand_values(b.get(), static_cast<size_t>(rows * cols), visit_scratch_.get());
    return visit_scratch_.get();
  };
  for (int64_t v = 0; v < cfg_.virtual_layers(); ++v) {
    const std::string p = "blocks." + std::to_string(cfg_.schedule[v]) + ".";
    const LayerActs& a = acts_[v];
    const T* h1 = values(a.h1, D, N);
    f(p + "attn.c_q.weight", h1, N, D);
    f(p + "attn.c_k.weight", h1, N, D);
    f(p + "attn.c_v.weight", h1, N, D);
    f(p + "attn.proj.weight", values(a.xatt.get() ? a.xatt : a.att, D, N), N, D);
    f(p + "mlp.fc.weight", values(a.h2, D, N), N, D);
    f(p + "mlp.proj.weight", values(a.a, Hd, N), N, Hd);
  }
  f(cfg_.tie_embeddings ? "tok_emb.weight" : "lm_head.weight", values(final_, D, head_rows_), head_rows_, D);
  if (cfg_.ve_layers() > 0) f("ve.proj.weight", ve_rows_.get(), N, cfg_.ve_dim);
  if (cfg_.bigram_buckets > 0) f("bigram.proj.weight", big_rows_.get(), N, cfg_.bigram_dim);
}

template class Model<float>;
template class Model<double>;

}  // namespace ptool::model

// The CPU reference of every model op, forward and backward (DESIGN.md principles 2 and 3).
//
// Conventions
// - Plain functions over row-major contiguous arrays; T is float (training) or double (gradient checks).
// - N is a token count (batch * seq), D a width. Activations are [N, D] unless stated.
// - "Accumulate" arguments (named d*_acc) are ADDED to, never overwritten, so that shared weights of a
//   depth-recurrent model collect gradient from every visit and residual branches sum naturally.
//   Other outputs are overwritten. Any d*_acc pointer may be null to skip that gradient.
// - Nothing here allocates per call except where stated: attention and cross-entropy keep thread-local
//   scratch (attention O(64 * T) per thread, cross-entropy O(V)) that grows once and is then reused.
// - Outputs may alias inputs only where stated ("may alias"); element-wise ops allow it, linear does not.
// - Bad arguments (H % Hkv != 0, odd rot or rot > hd, a target id outside [0, V)) throw std::invalid_argument /
//   std::out_of_range with a message naming the op and the offending value.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ptool::cpu {

// out[n, :] = table[tokens[n], :]; table is [V, D]. V is not passed: the caller guarantees 0 <= tokens[n] < V
// (the shard reader / model validate ids against the vocabulary once, not per op call).
template <class T> void embedding_forward(const T* table, const int32_t* tokens, int64_t N, int64_t D, T* out);
// dtable_acc[tokens[n], :] += dout[n, :]
template <class T> void embedding_backward(const T* dout, const int32_t* tokens, int64_t N, int64_t D, T* dtable_acc);

// RMSNorm without weight: out = x / sqrt(mean(x^2) + eps); rstd[n] saved for backward. out may alias x.
// Used per head (QK-norm) by viewing [N, H, hd] as [N * H, hd].
template <class T> void rmsnorm_forward(const T* x, int64_t N, int64_t D, T eps, T* out, T* rstd);
template <class T> void rmsnorm_backward(const T* dout, const T* x, const T* rstd, int64_t N, int64_t D, T* dx_acc);

// y = x W^T, x [N, K], W [M, K] (PyTorch layout), y [N, M]. No aliasing between outputs and inputs.
template <class T> void linear_forward(const T* x, const T* W, int64_t N, int64_t K, int64_t M, T* y);
// dx_acc += dy W ; dW_acc += dy^T x. Either pointer may be null to skip that gradient.
template <class T> void linear_backward(const T* dy, const T* x, const T* W, int64_t N, int64_t K, int64_t M,
                                        T* dx_acc, T* dW_acc);

// Per-channel scale: y[n, d] = s[d] * x[n, d]. y may alias x.
template <class T> void channel_scale_forward(const T* x, const T* s, int64_t N, int64_t D, T* y);
template <class T> void channel_scale_backward(const T* dy, const T* x, const T* s, int64_t N, int64_t D,
                                               T* dx_acc, T* ds_acc);

// Per-head scale (q-gain): x is [N, H, hd]; y[n, h, :] = g[h] * x[n, h, :]. y may alias x.
template <class T> void head_scale_forward(const T* x, const T* g, int64_t N, int64_t H, int64_t hd, T* y);
template <class T> void head_scale_backward(const T* dy, const T* x, const T* g, int64_t N, int64_t H, int64_t hd,
                                            T* dx_acc, T* dg_acc);

// RoPE, half-split (non-interleaved) rotation of the first `rot` dims of each head (rot even, <= hd):
// with i < rot/2, a = pos * inv_freq[i], x1 = x[i], x2 = x[i + rot/2]:
//   out[i] = x1 cos a + x2 sin a ; out[i + rot/2] = -x1 sin a + x2 cos a ; dims >= rot pass through.
// inv_freq[i] = base^(-2i/rot). x is [B, T, H, hd]; position of row t is t. In place.
// Angles and their cos/sin are computed in double, then rounded to T.
// rope_backward applies the inverse rotation to the gradient (in place).
template <class T> void rope_forward(T* x, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base);
template <class T> void rope_backward(T* dx, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base);
// NTK-aware base for evaluating at seq_len > train_seq_len (REFERENCE.md §7.2):
// base * (seq_len / train_seq_len)^(rot / (rot - 2)) when seq_len > train_seq_len, else base (rot > 2 then).
double rope_ntk_base(double base, int64_t rot, int64_t seq_len, int64_t train_seq_len);

// Causal grouped-query attention with scale 1/sqrt(hd).
// q [B, T, H, hd], k and v [B, T, Hkv, hd] (H % Hkv == 0; head h uses kv head h / (H / Hkv)),
// out [B, T, H, hd], lse [B, H, T] (log-sum-exp of the scaled scores, saved for backward; may be null when no
// backward follows, e.g. in evaluation).
template <class T> void attention_forward(const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t H,
                                          int64_t Hkv, int64_t hd, T* out, T* lse);
// Recomputes probabilities from lse (no T x T matrix kept between calls); works on blocks of 64 query rows.
template <class T> void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out,
                                           const T* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd,
                                           T* dq_acc, T* dk_acc, T* dv_acc);

// Exclusive self-attention (XSA): for token n and head h of kv group g = h / (H / Hkv), with the unit value
// u = v[n, g] / max(|v[n, g]|, kXsaEps) (F.normalize): y[n, h] = att[n, h] - (att[n, h] · u) u. att and y are
// [N, H, hd], v is [N, Hkv, hd]; y may alias att. Dot products and |v| in double.
constexpr double kXsaEps = 1e-12;
template <class T> void xsa_forward(const T* att, const T* v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, T* y);
// datt_acc += d/datt, dv_acc += d/dv (the value's gradient through u, summed over its group's heads); either may be
// null.
template <class T> void xsa_backward(const T* dy, const T* att, const T* v, int64_t N, int64_t H, int64_t Hkv,
                                     int64_t hd, T* datt_acc, T* dv_acc);

// A tensor joining another through a learned scalar (the value and bigram embeddings' scales): y += s[0] x over
// [N, C]. Its backward: dx_acc += s[0] dy, ds_acc[0] += the sum of dy ⊙ x (in double, rows in order); dy's rows are
// ld_dy elements apart (C for a dense array). dx_acc and ds_acc may be null.
template <class T> void scaled_add_forward(const T* x, const T* s, int64_t N, int64_t C, T* y);
template <class T> void scaled_add_backward(const T* dy, int64_t ld_dy, const T* x, const T* s, int64_t N, int64_t C,
                                            T* dx_acc, T* ds_acc);

// BigramHash (REFERENCE.md 8.1, v2): each position's bucket of its (previous, current) token pair, per sequence of Tn:
// out[t] = (36313 x[t] XOR 27191 x[t - 1]) mod (buckets - 1) for t >= 1, and buckets - 1 at t = 0. Host only.
void bigram_buckets(const int32_t* tokens, int64_t B, int64_t Tn, int64_t buckets, int32_t* out);
// SmearGate (v2): within each of B sequences of Tn rows of width D, y_t = (1 - s) x_t + s x_{t-1} with s = sigmoid(g)
// per channel and x_{-1} = 0. y may alias x. The backward adds into dx_acc and dg_acc (column sums in double).
template <class T> void smear_forward(const T* x, const T* g, int64_t B, int64_t Tn, int64_t D, T* y);
template <class T> void smear_backward(const T* dy, const T* x, const T* g, int64_t B, int64_t Tn, int64_t D,
                                       T* dx_acc, T* dg_acc);

enum class Activation { relu2, leaky_relu2 };  // relu(x)^2 ; leaky_relu(x, 0.5)^2. out may alias h.
template <class T> void activation_forward(Activation a, const T* h, int64_t n, T* out);
template <class T> void activation_backward(Activation a, const T* dout, const T* h, int64_t n, T* dh_acc);

// x += w ⊙ skip in place (plain U-Net skip, w [D]); gradients: dx passes through (caller handles),
// dskip_acc, dw_acc.
template <class T> void skip_add_forward(T* x, const T* skip, const T* w, int64_t N, int64_t D);
template <class T> void skip_add_backward(const T* dy, const T* skip, const T* w, int64_t N, int64_t D,
                                          T* dskip_acc, T* dw_acc);
// Gated skip: y = sigmoid(g) ⊙ x + (1 - sigmoid(g)) ⊙ w ⊙ skip, g and w [D]. y may alias x.
template <class T> void gated_skip_forward(const T* x, const T* skip, const T* w, const T* g, int64_t N, int64_t D,
                                           T* y);
template <class T> void gated_skip_backward(const T* dy, const T* x, const T* skip, const T* w, const T* g,
                                            int64_t N, int64_t D, T* dx_acc, T* dskip_acc, T* dw_acc, T* dg_acc);

// resid_mix: y = m[0, :] ⊙ x + m[1, :] ⊙ x0, m is [2, D]. y may alias x or x0.
template <class T> void resid_mix_forward(const T* x, const T* x0, const T* m, int64_t N, int64_t D, T* y);
template <class T> void resid_mix_backward(const T* dy, const T* x, const T* x0, const T* m, int64_t N, int64_t D,
                                           T* dx_acc, T* dx0_acc, T* dm_acc);
// The same with dx written (dx = m[0, :] ⊙ dy), not added to; dx may be dy itself.
template <class T> void resid_mix_backward_set_dx(const T* dy, const T* x, const T* x0, const T* m, int64_t N,
                                                  int64_t D, T* dx, T* dx0_acc, T* dm_acc);

// Softcap + cross-entropy over logits z [N, V] (cap <= 0: no softcap): l_n = -log softmax(c tanh(z/c))[y_n].
// losses[n] (double) gets each token's loss (losses may be null); returns the sum. If dz != nullptr it receives
// grad_scale * d l_n / d z (overwritten; dz may alias z), so grad_scale = 1/N gives the gradient of the mean.
// Softcap, softmax and log-sum-exp are evaluated in double whatever T is. targets[n] outside [0, V) throws.
template <class T> double softcap_cross_entropy(const T* z, const int32_t* targets, int64_t N, int64_t V, T cap,
                                                double* losses, T* dz, T grad_scale);

}  // namespace ptool::cpu

// The depth-recurrent transformer: forward and explicit backward over a Backend (DESIGN.md "Model").
// Virtual layer i runs physical block schedule[i]; shared blocks accumulate gradient from every visit.
// U-Net skips pair virtual layers: the first n_enc = V/2 layers push their outputs, decoder slot k pops
// (LIFO) before running its block.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/ops/backend.h"

namespace ptool::model {

template <class T>
class Model {
 public:
  Model(const ModelConfig& config, Backend<T>& backend);

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  Backend<T>& backend() { return be_; }
  T* params() { return params_.get(); }
  T* grads() { return grads_.get(); }
  int64_t param_count() const { return layout_.total; }

  void load_params(const T* host);   // host -> backend
  void store_params(T* host);        // backend -> host
  void zero_grads() { be_.zero(grads_.get(), layout_.total); }
  // Rounds the parameters the config keeps in bf16 (tok_emb under embed_bf16) in place, after an update that
  // does not round them itself (test-time training's SGD); a no-op otherwise.
  void round_bf16_params();
  // Weights the forward pass reads (default: params()). QAT points this at fake-quantized weights; the
  // backward then yields the straight-through gradient, accumulated into grads().
  void set_forward_weights(const T* w) { fwd_ = w ? w : params_.get(); }

  // Sum of per-token losses over B x Tn targets; per-token losses go to `losses` (host, B*Tn) when given.
  // score_from > 0 scores only positions [score_from, Tn) of each sequence (a sliding window's new targets): the
  // final norm, the head and the loss run on those B x (Tn - score_from) rows alone, `losses` gets them in
  // (sequence, position) order, and the targets before score_from are not read.
  double forward(const int32_t* x, const int32_t* y, int64_t B, int64_t Tn, double* losses = nullptr,
                 int64_t score_from = 0);
  // Forward, then backward of grad_scale * (sum of losses), accumulated into grads(). Returns the loss sum.
  double forward_backward(const int32_t* x, const int32_t* y, int64_t B, int64_t Tn, T grad_scale);
  // The same gradients, but the loss sum stays in the backend (no host round trip per micro-batch); read the
  // sum of every micro-batch since the last read with take_loss_sum().
  void accumulate_gradients(const int32_t* x, const int32_t* y, int64_t B, int64_t Tn, T grad_scale);
  double take_loss_sum() { return be_.take_loss_sum(); }

  // After forward(): calls f(weight name, X, rows, cols) with the input activations X of every linear layer
  // of every virtual layer (a looped block is visited once per loop) and of the tied/untied head, so that
  // GPTQ can accumulate H = sum X^T X. X is backend memory (host memory on the CPU backend).
  using LinearInputVisitor = std::function<void(const std::string& weight, const T* X, int64_t rows, int64_t cols)>;
  void visit_linear_inputs(const LinearInputVisitor& f) const;
  // After forward(): the softcapped-or-not raw logits [rows, vocab] (backend memory), before the softcap; rows is
  // B*Tn, or B*(Tn - score_from) when forward() scored a suffix.
  const T* logits() const { return logits_.get(); }

  // RoPE base used at sequence length Tn (NTK-rescaled above train_seq_len).
  double rope_base_at(int64_t Tn) const;

 private:
  struct Names {
    int64_t c_q, c_k, c_v, proj, fc, mproj;
  };
  struct Scalars {
    int64_t attn_scale, mlp_scale, resid_mix, q_gain, attn_norm_scale, mlp_norm_scale;
  };
  struct LayerActs {  // what backward needs from one virtual layer
    // The residual stream into the layer (the previous layer's x_out, or x0), after its skip connection and after
    // resid_mix. Each points at the one before it when the layer has no such step (no copy is made).
    const T* x_pre = nullptr;
    const T* x_in = nullptr;
    const T* x_mix = nullptr;
    // att is attention's output; with XSA, xatt is that output after XSA (the output projection's input).
    DeviceBuffer<T> x_in_buf, x_mix_buf, n1, n2, h1, rstd1, q_raw, rstd_q, k_raw, rstd_k, q, k, v, att, xatt, lse,
        o, x1, h2, rstd2, u, a, m, x_out;
    const T* proj_in() const { return xatt.get() ? xatt.get() : att.get(); }
  };

  void ensure_arena(int64_t B, int64_t Tn, bool train);
  // dz == nullptr: forward only. defer_loss: the loss sum goes to the backend's accumulator (returns 0).
  double run(const int32_t* x, const int32_t* y, int64_t B, int64_t Tn, double* losses, T* dz, T grad_scale,
             bool defer_loss = false, int64_t score_from = 0);
  // Runs virtual layer v on the residual stream x (x0: the normed embedding); its output is acts_[v].x_out. The
  // last layer also writes the final norm (final_, rstdf_).
  // last: the model's last layer (it also applies the final norm); score_from > 0 (forward only): only each
  // sequence's positions from score_from on reach the head.
  void layer_forward(int64_t v, int64_t B, int64_t Tn, const T* x0, const T* x, bool last, int64_t score_from);
  bool has_skip(int64_t v) const;
  bool skip_source(int64_t v) const;
  bool fused_layer_entries() const;
  void value_embedding_forward(int64_t N);
  void value_embedding_backward(int64_t N);
  // The embedding stage with the token features (ModelConfig::token_features): x0 = smear(rmsnorm(tok_emb[x] +
  // bigram_scale * proj(bigram[hash]))), each part where configured; and its backward from x0's gradient.
  void token_features_forward(const int32_t* x, int64_t B, int64_t Tn);
  void token_features_backward(int64_t B, int64_t Tn);
  void layer_entry(int64_t v, int64_t N, const T* x0, const T* x);
  // The pre-norms are RMSNorm alone (no ln_scale factor, no learned scale): they can fuse with the op before them
  // and write operand buffers.
  bool plain_pre_norms() const;
  // Where the residual stream lives (ensure_arena): activation buffers under embed_bf16, else plain memory.
  Storage stream_storage() const;
  // resid_mix and the attention branch's plain pre-norm run as one op each way (resid_mix_rmsnorm_forward,
  // rmsnorm_resid_mix_backward). The backward one also takes in layer 0 the final add of x0's gradient and, where
  // skip_grad_joins_next(v), encoder layer v's skip gradient (on its way into layer v + 1's input gradient, which
  // is layer v's output gradient).
  bool fused_resid_mix_norm() const;
  bool skip_grad_joins_next(int64_t v) const;
  void layer_backward(int64_t v, int64_t B, int64_t Tn, const T* x0, T* dx, T* dx0);
  T ln_factor(int64_t v) const;
  void pre_norm_forward(int64_t v, const T* x, int64_t N, T* n, T* h, T* rstd, int64_t scale);
  void pre_norm_backward(int64_t v, T* g, const T* x, int64_t N, const T* n, const T* rstd, int64_t scale, T* dx);

  ModelConfig cfg_;
  Backend<T>& be_;
  ParamLayout layout_;
  DeviceBuffer<T> params_, grads_;
  const T* fwd_ = nullptr;
  std::vector<Names> block_;     // offsets per physical block
  std::vector<Scalars> scal_;    // offsets per scalar set
  int64_t tok_emb_ = 0, lm_head_ = -1, skip_w_ = -1, skip_g_ = -1;
  int64_t ve_embed_ = -1, ve_proj_ = -1, ve_scale_ = -1, ve_lam_ = -1;  // value embeddings (ve_dim > 0)
  int64_t big_embed_ = -1, big_proj_ = -1, big_scale_ = -1, smear_ = -1;  // bigram hash, smear gate

  // Arena, sized for (B, Tn).
  int64_t arenaB_ = 0, arenaT_ = 0;  // shape of the last pass
  int64_t head_rows_ = 0;            // rows of the last pass that reached the head (final_, logits_)
  bool backward_pass_ = false;       // the pass in progress runs a backward too
  size_t arena_cap_ = 0;             // tokens the arena holds
  bool arena_train_ = false;
  std::vector<LayerActs> acts_;
  DeviceBuffer<T> scored_;  // eval: the last layer's residual input rows of the scored positions
  DeviceBuffer<T> emb_, x0_, rstd0_, final_, rstdf_, logits_, dlogits_;
  // Value embeddings: the looked-up rows, their projection, and ve_scale times it (what each VE layer adds to v).
  DeviceBuffer<T> ve_rows_, ve_proj_out_, ve_base_, g_ve_base_, g_ve_proj_out_, g_ve_rows_;
  // Bigram hash: the looked-up rows, their projection and bigram_scale times it; smear gate: its input (the normed
  // embedding).
  DeviceBuffer<T> big_rows_, big_out_, big_scaled_, g_big_out_, g_big_rows_, normed_;
  int32_t* bdev_ = nullptr;  // bigram buckets, idx_cap_ entries
  DeviceBuffer<T> g_x_, g_x0_, g_h_, g_qkv_, g_q_, g_k_, g_h2_, g_att_, g_xatt_, g_o_, g_u_, g_a_, g_m_, g_tmp_,
      g_final_;
  std::vector<DeviceBuffer<T>> g_skip_;  // gradient flowing back into each encoder output
  int32_t* xdev_ = nullptr;
  int32_t* ydev_ = nullptr;
  size_t idx_cap_ = 0;
  std::vector<double> loss_scratch_;
  std::vector<int32_t> scored_targets_;  // forward with score_from: the targets of the scored positions
  std::vector<int32_t> buckets_;         // the bigram buckets of the pass (host)
  mutable DeviceBuffer<T> visit_scratch_;  // visit_linear_inputs' values of operand buffers

 public:
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
};

}  // namespace ptool::model

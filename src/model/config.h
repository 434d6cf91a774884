// Model configuration: everything the model's shape and wiring depend on (DESIGN.md "Model").
// Stored as JSON in every artifact; unknown keys and impossible shapes are refused.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/ops/cpu_ops.h"

namespace ptool::model {

enum class SkipKind { none, plain, gated };

struct ModelConfig {
  int64_t vocab_size = 1024;
  int64_t d_model = 512;
  int64_t n_heads = 8;
  int64_t n_kv_heads = 4;
  double mlp_mult = 2.0;            // hidden = round(mlp_mult * d_model) unless mlp_hidden > 0
  int64_t mlp_hidden = 0;
  cpu::Activation activation = cpu::Activation::relu2;
  double rope_base = 10000.0;
  int64_t rope_dims = 0;            // rotated dims per head; 0 = the whole head
  bool qk_norm = true;
  double q_gain_init = 1.5;
  double logit_softcap = 30.0;      // <= 0: off
  bool tie_embeddings = true;
  double embed_init_std = 0.005;
  // The token embedding holds bf16 values, as the reference's tok_emb.weight does (REFERENCE.md 3.2: the model is
  // cast to bf16 and only the linears and control tensors go back to fp32): its weights are rounded to bf16 at
  // initialisation, after every optimizer step and when loaded, Adam's moments for it too, and the normed
  // embedding x0 is rounded to bf16 (F.rms_norm of a bf16 tensor returns bf16). The residual stream then has the
  // embedding's dtype, as the reference's does (its blocks cast their scales to the stream's dtype): the model keeps
  // it and its gradient in activation buffers, bf16 in the CUDA backend's bf16 mode (fp32 on the CPU and in the
  // fp32/tf32 modes).
  bool embed_bf16 = false;
  bool resid_mix = true;
  bool ln_scale = false;            // multiply pre-norm outputs of virtual layer i by 1/sqrt(i+1)
  bool norm_scale = false;          // learned per-channel scale after each pre-norm RMSNorm (init 1)
  SkipKind skips = SkipKind::plain;
  int64_t physical_blocks = 9;
  // Virtual layer i runs physical block schedule[i]. Empty = [0, 1, ..., physical_blocks-1].
  std::vector<int64_t> schedule;
  // Scalars (attn/mlp scale, resid_mix, q_gain) per virtual layer instead of per physical block.
  bool per_virtual_scalars = false;
  // Exclusive self-attention (XSA, REFERENCE.md 8.1) in the last xsa_last virtual layers (all of them when it is at
  // least their number): each head's attention output loses its component along the token's own value vector
  // before the output projection. No parameters.
  int64_t xsa_last = 0;
  // Value embeddings (VE, REFERENCE.md 8.1): a second token table [vocab, ve_dim] (0: none), projected to the KV
  // width and scaled by a learned scalar, joins the value projection of the last ve_last virtual layers, each through
  // a learned scalar of its own.
  int64_t ve_dim = 0;
  int64_t ve_last = 0;
  // BigramHash (REFERENCE.md 8.1, v2): a [bigram_buckets, bigram_dim] table (0: none) indexed by a hash of each
  // position's (previous, current) tokens, projected to d_model and scaled by a learned scalar, joins the token
  // embedding before its RMSNorm.
  int64_t bigram_buckets = 0;
  int64_t bigram_dim = 0;
  // SmearGate (v2): after that RMSNorm, each position blends in the one before it through a per-channel gate.
  bool smear_gate = false;
  // The "overtone" initialisation (REFERENCE.md 8.1, PR 341): scalar set i of L starts resid_mix at m0 =
  // sigmoid(3 (i / (L - 1) - 0.5)), m1 = 1 - m0 (a sigmoid schedule over depth), and the token embedding's singular
  // values are reshaped to S_k = S_1 k^(-1/2).
  bool overtone_init = false;
  int64_t train_seq_len = 1024;

  int64_t head_dim() const { return d_model / n_heads; }
  int64_t kv_dim() const { return head_dim() * n_kv_heads; }
  int64_t hidden() const;
  int64_t rotary_dims() const { return rope_dims > 0 ? rope_dims : head_dim(); }
  int64_t virtual_layers() const { return static_cast<int64_t>(schedule.size()); }
  int64_t encoder_layers() const { return virtual_layers() / 2; }
  int64_t skip_count() const;
  int64_t scalar_sets() const { return per_virtual_scalars ? virtual_layers() : physical_blocks; }
  int64_t scalar_index(int64_t virtual_layer) const;
  bool xsa(int64_t virtual_layer) const { return virtual_layer >= virtual_layers() - xsa_last; }
  bool token_features() const { return bigram_buckets > 0 || smear_gate; }  // the embedding stage is composed
  int64_t ve_layers() const { return ve_dim > 0 ? std::min(ve_last, virtual_layers()) : 0; }
  // The value embedding's index among the VE layers of virtual layer v, or -1 when it has none.
  int64_t ve_index(int64_t virtual_layer) const {
    const int64_t i = virtual_layer - (virtual_layers() - ve_layers());
    return i >= 0 ? i : -1;
  }

  // Throws Error with a message naming the key or the shape constraint that fails.
  void validate() const;
};

ModelConfig config_from_json(const nlohmann::json& j);  // unknown keys refused; schedule expanded
nlohmann::json config_to_json(const ModelConfig& c);
// KEY=VALUE overrides (the --set of ptool's commands and bench_train) applied to a config's JSON object: VALUE is
// JSON or else a bare word (`activation=leaky_relu2`). Setting physical_blocks or recurrence drops the expanded
// schedule unless schedule is set too; setting schedule drops recurrence. Throws Error for a setting without '='.
void apply_config_settings(nlohmann::json& j, const std::vector<std::string>& sets);

// Built-in presets: tiny, baseline and the depth-recurrent seed systems.
std::vector<std::string> preset_names();
ModelConfig preset(const std::string& name);  // throws Error listing the known names
std::string preset_description(const std::string& name);

}  // namespace ptool::model

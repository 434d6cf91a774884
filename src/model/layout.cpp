#include "src/model/layout.h"

#include <cmath>
#include <random>

#include <Eigen/Dense>

#include "formats/error.h"
#include "src/ops/bf16.h"

namespace ptool::model {

const ParamSpec* ParamLayout::find(const std::string& name) const {
  for (auto& s : specs)
    if (s.name == name) return &s;
  return nullptr;
}

const ParamSpec& ParamLayout::at(const std::string& name) const {
  if (auto* s = find(name)) return *s;
  throw Error("model has no parameter '" + name + "'");
}

const char* group_name(OptGroup g) {
  switch (g) {
    case OptGroup::embed: return "embed";
    case OptGroup::head: return "head";
    case OptGroup::matrix: return "matrix";
    case OptGroup::scalar: return "scalar";
  }
  return "?";
}

ParamLayout make_layout(const ModelConfig& c) {
  ParamLayout L;
  auto add = [&](std::string name, std::vector<int64_t> shape, Init init, OptGroup group) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    L.specs.push_back({std::move(name), std::move(shape), L.total, n, init, group});
    L.total += n;
  };
  const int64_t D = c.d_model, KV = c.kv_dim(), Hd = c.hidden();
  add("tok_emb.weight", {c.vocab_size, D}, Init::normal_embed, OptGroup::embed);
  for (int64_t b = 0; b < c.physical_blocks; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    add(p + "attn.c_q.weight", {D, D}, Init::uniform_fan_in, OptGroup::matrix);
    add(p + "attn.c_k.weight", {KV, D}, Init::uniform_fan_in, OptGroup::matrix);
    add(p + "attn.c_v.weight", {KV, D}, Init::uniform_fan_in, OptGroup::matrix);
    add(p + "attn.proj.weight", {D, D}, Init::zeros, OptGroup::matrix);
    add(p + "mlp.fc.weight", {Hd, D}, Init::uniform_fan_in, OptGroup::matrix);
    add(p + "mlp.proj.weight", {D, Hd}, Init::zeros, OptGroup::matrix);
  }
  // Control scalars: per physical block, or per virtual layer ("layers.i.") when not shared.
  for (int64_t s = 0; s < c.scalar_sets(); ++s) {
    const std::string p = (c.per_virtual_scalars ? "layers." : "blocks.") + std::to_string(s) + ".";
    add(p + "attn_scale", {D}, Init::ones, OptGroup::scalar);
    add(p + "mlp_scale", {D}, Init::ones, OptGroup::scalar);
    if (c.resid_mix) add(p + "resid_mix", {2, D}, Init::resid_mix, OptGroup::scalar);
    if (c.norm_scale) {
      add(p + "attn_norm_scale", {D}, Init::ones, OptGroup::scalar);
      add(p + "mlp_norm_scale", {D}, Init::ones, OptGroup::scalar);
    }
    add(p + "attn.q_gain", {c.n_heads}, Init::q_gain, OptGroup::scalar);
  }
  if (c.skip_count() > 0) {
    add("skip_weights", {c.skip_count(), D}, Init::ones, OptGroup::scalar);
    if (c.skips == SkipKind::gated) add("skip_gates", {c.skip_count(), D}, Init::zeros, OptGroup::scalar);
  }
  if (!c.tie_embeddings) add("lm_head.weight", {c.vocab_size, D}, Init::zeros, OptGroup::head);
  if (c.ve_layers() > 0) {
    add("ve.embed.weight", {c.vocab_size, c.ve_dim}, Init::ve_embed, OptGroup::embed);
    add("ve.proj.weight", {KV, c.ve_dim}, Init::zeros, OptGroup::matrix);
    add("ve_scale", {1}, Init::ve_scale, OptGroup::scalar);
    add("ve_layer_scales", {c.ve_layers()}, Init::ones, OptGroup::scalar);
  }
  if (c.bigram_buckets > 0) {
    // REFERENCE.md 8.1 zero-initialises both the table and the projection, but with both at zero neither ever gets
    // a gradient (each one's is a product with the other): the projection takes the other linears' init, as the
    // records' orthogonal init of linears presumably gave it.
    add("bigram.embed.weight", {c.bigram_buckets, c.bigram_dim}, Init::zeros, OptGroup::embed);
    add("bigram.proj.weight", {D, c.bigram_dim}, Init::uniform_fan_in, OptGroup::matrix);
    add("bigram_scale", {1}, Init::bigram_scale, OptGroup::scalar);
  }
  if (c.smear_gate) add("smear_gate", {D}, Init::zeros, OptGroup::scalar);
  return L;
}

namespace {

// The overtone initialisation (ModelConfig::overtone_init): the sigmoid schedule of resid_mix over the scalar sets,
// and the token embedding's spectrum reshaped to a power law, S_k = S_1 k^(-1/2), keeping its singular vectors.
void overtone(const ModelConfig& c, const ParamLayout& layout, float* params) {
  const int64_t L = c.scalar_sets(), D = c.d_model;
  if (c.resid_mix)
    for (int64_t i = 0; i < L; ++i) {
      const double f = L > 1 ? static_cast<double>(i) / static_cast<double>(L - 1) : 0.0;
      const float m0 = static_cast<float>(1.0 / (1.0 + std::exp(-3.0 * (f - 0.5))));
      float* m = params + layout.at((c.per_virtual_scalars ? "layers." : "blocks.") + std::to_string(i) +
                                    ".resid_mix").offset;
      std::fill(m, m + D, m0);
      std::fill(m + D, m + 2 * D, 1.0f - m0);
    }
  const ParamSpec& e = layout.at("tok_emb.weight");
  using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> W(params + e.offset, e.shape[0],
                                                                                        e.shape[1]);
  const Mat Wd = W.cast<double>();
  Eigen::BDCSVD<Mat> svd(Wd, Eigen::ComputeThinU | Eigen::ComputeThinV);
  Eigen::VectorXd S = svd.singularValues();
  for (Eigen::Index k = 1; k < S.size(); ++k) S[k] = S[0] / std::sqrt(static_cast<double>(k + 1));
  W = (svd.matrixU() * S.asDiagonal() * svd.matrixV().transpose()).cast<float>();
}

}  // namespace

void init_params(const ModelConfig& c, const ParamLayout& layout, uint64_t seed, float* params) {
  std::mt19937_64 rng(seed);
  for (auto& s : layout.specs) {
    float* p = params + s.offset;
    switch (s.init) {
      case Init::normal_embed: {
        std::normal_distribution<double> nd(0.0, c.embed_init_std);
        for (int64_t i = 0; i < s.numel; ++i) p[i] = static_cast<float>(nd(rng));
        break;
      }
      case Init::uniform_fan_in: {  // PyTorch's default Linear init: kaiming_uniform(a=sqrt 5) = U(+-1/sqrt(fan_in))
        const double bound = 1.0 / std::sqrt(static_cast<double>(s.shape.back()));
        std::uniform_real_distribution<double> ud(-bound, bound);
        for (int64_t i = 0; i < s.numel; ++i) p[i] = static_cast<float>(ud(rng));
        break;
      }
      case Init::zeros: std::fill(p, p + s.numel, 0.0f); break;
      case Init::ones: std::fill(p, p + s.numel, 1.0f); break;
      case Init::resid_mix:
        std::fill(p, p + s.numel / 2, 1.0f);
        std::fill(p + s.numel / 2, p + s.numel, 0.0f);
        break;
      case Init::q_gain: std::fill(p, p + s.numel, static_cast<float>(c.q_gain_init)); break;
      case Init::ve_embed: {
        std::normal_distribution<double> nd(0.0, 0.01);
        for (int64_t i = 0; i < s.numel; ++i) p[i] = static_cast<float>(nd(rng));
        break;
      }
      case Init::ve_scale: std::fill(p, p + s.numel, 0.1f); break;
      case Init::bigram_scale: std::fill(p, p + s.numel, 0.05f); break;
    }
  }
  if (c.overtone_init) overtone(c, layout, params);
  round_bf16_tensors(c, layout, params);  // the reference casts the initialised model to bf16
}

void round_bf16_tensors(const ModelConfig& c, const ParamLayout& layout, float* params) {
  if (!c.embed_bf16) return;
  const ParamSpec& s = layout.at("tok_emb.weight");
  for (int64_t i = 0; i < s.numel; ++i) params[s.offset + i] = round_to_bf16(params[s.offset + i]);
}

}  // namespace ptool::model

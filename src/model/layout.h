// The parameter layout of a model: every tensor's name, shape, slice of the flat buffer, initialiser and
// optimizer group. The artifact's tensor table is this table.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/model/config.h"

namespace ptool::model {

// ve_embed: N(0, 0.01); ve_scale: 0.1; bigram_scale: 0.05 (REFERENCE.md 8.1).
enum class Init { normal_embed, uniform_fan_in, zeros, ones, resid_mix, q_gain, ve_embed, ve_scale, bigram_scale };
enum class OptGroup { embed, head, matrix, scalar };  // Adam (tied embed lr), Adam (head lr), Muon, Adam (scalar lr)

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel = 0;
  Init init = Init::zeros;
  OptGroup group = OptGroup::scalar;
};

struct ParamLayout {
  std::vector<ParamSpec> specs;
  int64_t total = 0;
  const ParamSpec& at(const std::string& name) const;  // throws Error
  const ParamSpec* find(const std::string& name) const;
};

ParamLayout make_layout(const ModelConfig& c);
// Fills `params` (layout.total values) per REFERENCE.md §3.2, deterministically from the seed.
void init_params(const ModelConfig& c, const ParamLayout& layout, uint64_t seed, float* params);
// Rounds the tensors the config keeps in bf16 (tok_emb under embed_bf16) to bf16 values; a no-op otherwise.
void round_bf16_tensors(const ModelConfig& c, const ParamLayout& layout, float* params);

const char* group_name(OptGroup g);

}  // namespace ptool::model

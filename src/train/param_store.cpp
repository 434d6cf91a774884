#include "src/train/param_store.h"

#include <algorithm>
#include <array>

#include "formats/error.h"

namespace ptool::train {

namespace {
constexpr std::array<std::string_view, kNumGroups> kGroupNames = {"muon", "adam_embed", "adam_head",
                                                                  "adam_scalar", "frozen"};
constexpr std::array<std::string_view, 9> kControlPatterns = {
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain",     "skip_weight", "skip_weights"};
}  // namespace

std::string_view group_name(Group g) {
  const auto i = static_cast<size_t>(g);
  return i < kGroupNames.size() ? kGroupNames[i] : std::string_view("?");
}

Group parse_group(std::string_view name) {
  for (size_t i = 0; i < kGroupNames.size(); ++i)
    if (kGroupNames[i] == name) return static_cast<Group>(i);
  throw Error("unknown optimizer group '" + std::string(name) +
              "' (expected muon, adam_embed, adam_head, adam_scalar or frozen)");
}

bool is_control_name(std::string_view name) {
  return std::any_of(kControlPatterns.begin(), kControlPatterns.end(),
                     [&](std::string_view p) { return name.find(p) != std::string_view::npos; });
}

Group default_group(std::string_view name, size_t ndim) {
  if (name.starts_with("tok_emb")) return Group::adam_embed;
  if (name.starts_with("lm_head")) return Group::adam_head;
  if (ndim < 2 || is_control_name(name)) return Group::adam_scalar;
  return Group::muon;
}

int64_t Slice::batch() const {
  int64_t b = 1;
  for (size_t i = 0; i + 2 < shape.size(); ++i) b *= shape[i];
  return b;
}

ParamStore::ParamStore(size_t align) : align_(align == 0 ? 1 : align) {}

const Slice& ParamStore::add(std::string name, std::vector<int64_t> shape, Group group) {
  if (name.empty()) throw Error("param store: empty tensor name");
  if (index_.count(name)) throw Error("param store: duplicate tensor name '" + name + "'");
  size_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error("param store: tensor '" + name + "' has a negative dimension");
    numel *= static_cast<size_t>(d);
  }
  const size_t end = buf_.size();
  const size_t offset = (end + align_ - 1) / align_ * align_;
  buf_.resize(offset + numel, 0.0f);
  Slice s{std::move(name), std::move(shape), offset, numel, group};
  index_.emplace(s.name, slices_.size());
  slices_.push_back(std::move(s));
  return slices_.back();
}

const Slice* ParamStore::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &slices_[it->second];
}

size_t ParamStore::index_of(std::string_view name) const {
  auto it = index_.find(std::string(name));
  if (it == index_.end()) throw Error("param store: no tensor named '" + std::string(name) + "'");
  return it->second;
}

const Slice& ParamStore::slice(std::string_view name) const { return slices_[index_of(name)]; }

size_t ParamStore::num_params() const {
  size_t n = 0;
  for (const auto& s : slices_) n += s.numel;
  return n;
}

ParamStore ParamStore::zeros_like() const {
  ParamStore o(align_);
  o.slices_ = slices_;
  o.index_ = index_;
  o.buf_.assign(buf_.size(), 0.0f);
  return o;
}

bool ParamStore::same_layout(const ParamStore& o) const {
  return buf_.size() == o.buf_.size() && slices_ == o.slices_;
}

void ParamStore::check_same_layout(const ParamStore& o, std::string_view what) const {
  // Cheap checks first; the full table comparison is O(slices) and only runs when those agree.
  if (buf_.size() != o.buf_.size() || slices_.size() != o.slices_.size() || !same_layout(o))
    throw Error("param store: " + std::string(what) + " has a different layout (" +
                std::to_string(o.slices_.size()) + " tensors, " + std::to_string(o.buf_.size()) +
                " floats; expected " + std::to_string(slices_.size()) + " tensors, " +
                std::to_string(buf_.size()) + " floats)");
}

void ParamStore::copy_from(const ParamStore& o) {
  check_same_layout(o, "copy source");
  std::copy(o.buf_.begin(), o.buf_.end(), buf_.begin());
}

void ParamStore::fill(float v) { std::fill(buf_.begin(), buf_.end(), v); }

}  // namespace ptool::train

// All parameters of a model in one contiguous float buffer with named slices (DESIGN.md "Compute").
// Gradients, optimizer moments, the EMA and the SWA sum are ParamStores of the same layout
// (zeros_like), so the optimizer, clipping, averaging, all-reduce and checkpointing each become one
// loop or one call over flat memory. The slice table is what the artifact's tensor table holds.
//
// Layout: slices are laid out in the order they are added; slice i starts at the first multiple of
// `align` floats at or after the end of slice i-1 (align = 1, the default, packs them with no gaps, the
// same offsets as src/model/layout.h's ParamLayout when added in the same order). Padding floats are
// zero in every store of the layout and every operation here keeps them zero (an update of a zero
// gradient is zero), so whole-buffer operations (norms, all-reduce, EMA) may include them.
//
// Group is the optimizer tag, mapping to src/model/layout.h's OptGroup as
//   muon <-> matrix, adam_embed <-> embed, adam_head <-> head, adam_scalar <-> scalar;
// frozen slices are touched by no optimizer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ptool::train {

enum class Group : uint8_t { muon = 0, adam_embed = 1, adam_head = 2, adam_scalar = 3, frozen = 4 };
inline constexpr int kNumGroups = 5;

std::string_view group_name(Group g);              // "muon", "adam_embed", "adam_head", "adam_scalar", "frozen"
Group parse_group(std::string_view name);          // inverse; throws ptool::Error on an unknown name

// REFERENCE.md §3.3 CONTROL_TENSOR_NAME_PATTERNS (substring match): attn_scale(s), mlp_scale(s),
// resid_mix(es), q_gain, skip_weight(s).
bool is_control_name(std::string_view name);
// The baseline optimizer split (§3.3): names starting with "tok_emb" -> adam_embed, "lm_head" -> adam_head,
// ndim < 2 or a control name -> adam_scalar, any other 2-D or higher tensor -> muon. (The reference sends
// only matrices inside `blocks` to Muon; models with other top-level matrices should tag them explicitly.)
Group default_group(std::string_view name, size_t ndim);

struct Slice {
  std::string name;
  std::vector<int64_t> shape;  // empty = scalar (numel 1)
  size_t offset = 0;           // in floats from the start of the buffer
  size_t numel = 0;
  Group group = Group::frozen;

  size_t ndim() const { return shape.size(); }
  // Matrix view used by Muon: rows = shape[-2], cols = shape[-1], batch = product of leading dims.
  // Only meaningful for ndim >= 2.
  int64_t rows() const { return shape.size() >= 2 ? shape[shape.size() - 2] : 1; }
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  int64_t batch() const;
  bool operator==(const Slice&) const = default;
};

class ParamStore {
 public:
  explicit ParamStore(size_t align = 1);

  // Appends a zero-initialised slice and returns it. Throws ptool::Error on a duplicate or empty name or a
  // negative dimension. Adding grows (reallocates) the buffer: take pointers/spans after the table is built.
  const Slice& add(std::string name, std::vector<int64_t> shape, Group group);

  const std::vector<Slice>& slices() const { return slices_; }
  size_t num_slices() const { return slices_.size(); }
  const Slice* find(std::string_view name) const;      // nullptr when absent
  const Slice& slice(std::string_view name) const;     // throws ptool::Error naming the tensor
  size_t index_of(std::string_view name) const;        // throws ptool::Error naming the tensor

  // The flat buffer: size() floats including alignment padding.
  float* data() { return buf_.data(); }
  const float* data() const { return buf_.data(); }
  size_t size() const { return buf_.size(); }
  std::span<float> flat() { return buf_; }
  std::span<const float> flat() const { return buf_; }
  size_t num_params() const;  // sum of numel (no padding)
  size_t align() const { return align_; }

  std::span<float> view(const Slice& s) { return {buf_.data() + s.offset, s.numel}; }
  std::span<const float> view(const Slice& s) const { return {buf_.data() + s.offset, s.numel}; }
  std::span<float> view(std::string_view name) { return view(slice(name)); }
  std::span<const float> view(std::string_view name) const { return view(slice(name)); }

  // A store with the same slice table and an all-zero buffer (gradients, moments, EMA, SWA sums).
  ParamStore zeros_like() const;
  // Same slice table (names, shapes, offsets, groups) and buffer size.
  bool same_layout(const ParamStore& o) const;
  // Throws ptool::Error (naming `what`) unless o has the same layout.
  void check_same_layout(const ParamStore& o, std::string_view what) const;
  // Copies the values of a store of the same layout (throws otherwise).
  void copy_from(const ParamStore& o);
  void fill(float v);     // every float, padding included (use 0 to keep the padding invariant)
  void zero() { fill(0.0f); }

 private:
  size_t align_;
  std::vector<Slice> slices_;
  std::unordered_map<std::string, size_t> index_;
  std::vector<float> buf_;
};

}  // namespace ptool::train

// Per-tensor quantization rules chosen by tensor name (DESIGN.md "Quantization and packing").
//
// A rule set is an ordered list; the first rule whose conditions all hold decides the tensor. Conditions:
// a name pattern (glob over the whole name: * any run, ? one char, [abc] / [!abc] classes; or
// "re:<ECMAScript regex>" matched against the whole name), a tensor class, and element-count bounds.
//
// Rules file (JSON):
//   { "version": 1,
//     "base": "gptq",                 // optional: a preset whose rules follow the file's own ("none": none)
//     "rules": [
//       {"pattern": "*tok_emb*", "scheme": "sdclip", "gptq": true, "bits": 7, "k": 15.0},
//       {"class": "mlp", "scheme": "sdclip", "gptq": true, "bits": 6, "k": 12.0},
//       {"pattern": "re:blocks\\.[0-3]\\..*", "scheme": "gptq_lite", "bits": 6},
//       {"max_numel": 65536, "scheme": "f16"} ] }
// A bare JSON list is a rules list with base "none". Rule keys: pattern, class (embed|mlp|attn|other|control),
// min_numel, max_numel, scheme (f32|f16|clean|rowmax|ste_rowmax|gptq_lite|search|sdclip|hsdclip), gptq, bits,
// k, lambda, percentile, percentiles, scale_floor, percdamp, block_size, act_order, retries. Unknown keys,
// wrong types and out-of-range values are errors naming the file and the rule.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "src/quant/spec.h"

namespace ptool::quant {

// _classify_param of the records (REFERENCE.md §5.2): "tok_emb"/"lm_head" -> embed; ".mlp." -> mlp;
// ".attn." or ".proj." outside mlp -> attn; else other.
enum class TensorClass : uint8_t { embed, mlp, attn, other };
TensorClass classify_param(std::string_view name);
std::string_view class_name(TensorClass c);

// The baseline's control tensors (kept fp32 when small): the name contains one of
// attn_scale, attn_scales, mlp_scale, mlp_scales, resid_mix, resid_mixes, q_gain, skip_weight, skip_weights.
bool is_control_tensor(std::string_view name);

// Glob over the whole string: * any run (also empty, also '.'), ? one char, [set] / [!set] with ranges.
// Throws Error on an unterminated class.
bool glob_match(std::string_view pattern, std::string_view name);

enum class Action : uint8_t { keep_f32, keep_f16, quantize };

struct Rule {
  std::string pattern;                // "" matches every name
  std::optional<TensorClass> cls;     // require this class
  bool control = false;               // require is_control_tensor(name) (class "control" in files)
  int64_t min_numel = -1;             // -1: no bound
  int64_t max_numel = -1;
  Action action = Action::quantize;
  QuantSpec spec;                     // when action == quantize
  std::string origin;                 // "rules.json rule 3" / "preset gptq rule 2", for messages
  std::shared_ptr<const std::regex> regex;  // compiled "re:" pattern (set by the parser; else compiled on use)

  bool matches(std::string_view name, int64_t numel) const;
};

struct RuleSet {
  std::vector<Rule> rules;
  std::string origin;  // file name or "preset <name>"
};

// Presets (all start with: small control tensors (numel <= 65,536) -> f32, other small tensors -> f16):
//  baseline   everything else int8 clean (quantile 0.9999984): reproduces int8_clean_per_row_v1.
//  int6       embed int8 clean; everything else int6 clean (symmetric [-31, 31], §5.2).
//  ste        embed int8 clean; everything else int6 ste_rowmax (matches QAT's fake quant).
//  gptq_lite  embed int8 clean; everything else int6 GPTQ-lite percentile search (§5.4).
//  sdclip     round-to-nearest SDClip: embed int8 k=20, everything else int6 k=12.85.
//  gptq       GPTQ + SDClip (04-05 record): embed int8 k=20, everything else int6 k=12.85.  (default)
//  gptq_int7  GPTQ + SDClip (later records): embed int7 k=15, mlp int6 k=12, attn and other int6 k=13.
// Every GPTQ rule needs a Hessian for its tensor.
RuleSet preset_rules(std::string_view name);
std::vector<std::string> preset_names();
RuleSet default_rules();  // preset "gptq"

RuleSet parse_rules(std::string_view json_text, std::string_view origin);
RuleSet load_rules(const std::string& path);  // throws Error naming the file on I/O or parse errors

// The first matching rule; throws Error naming the tensor and the rule set when none matches.
const Rule& match_rule(const RuleSet& rules, std::string_view name, int64_t numel);

}  // namespace ptool::quant

#include "src/quant/rules.h"

#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "formats/error.h"

namespace ptool::quant {

TensorClass classify_param(std::string_view name) {
  auto has = [&](std::string_view s) { return name.find(s) != std::string_view::npos; };
  if (has("tok_emb") || has("lm_head")) return TensorClass::embed;
  if (has(".mlp.")) return TensorClass::mlp;
  if (has(".attn.") || has(".proj.")) return TensorClass::attn;  // ".proj." here is outside mlp
  return TensorClass::other;
}

std::string_view class_name(TensorClass c) {
  switch (c) {
    case TensorClass::embed: return "embed";
    case TensorClass::mlp: return "mlp";
    case TensorClass::attn: return "attn";
    case TensorClass::other: return "other";
  }
  return "unknown";
}

bool is_control_tensor(std::string_view name) {
  static constexpr std::string_view kPatterns[] = {"attn_scale", "attn_scales", "mlp_scale",
                                                   "mlp_scales", "resid_mix", "resid_mixes",
                                                   "q_gain",     "skip_weight", "skip_weights",
                                                   "ve_scale",   "ve_layer_scales", "bigram_scale",
                                                   "smear_gate"};
  for (std::string_view p : kPatterns)
    if (name.find(p) != std::string_view::npos) return true;
  return false;
}

namespace {

// Matches a [...] class at pattern[pi] (pattern[pi] == '['); sets pi past it. Throws on no closing ']'.
bool match_class(std::string_view pat, size_t& pi, char ch) {
  size_t i = pi + 1;
  bool negate = false;
  if (i < pat.size() && (pat[i] == '!' || pat[i] == '^')) {
    negate = true;
    ++i;
  }
  bool hit = false;
  bool first = true;
  while (i < pat.size() && (pat[i] != ']' || first)) {
    first = false;
    if (i + 2 < pat.size() && pat[i + 1] == '-' && pat[i + 2] != ']') {
      if (pat[i] <= ch && ch <= pat[i + 2]) hit = true;
      i += 3;
    } else {
      if (pat[i] == ch) hit = true;
      ++i;
    }
  }
  if (i >= pat.size()) throw Error("glob pattern '" + std::string(pat) + "' has an unterminated [");
  pi = i + 1;
  return hit != negate;
}

}  // namespace

bool glob_match(std::string_view pat, std::string_view s) {
  // Iterative matcher with single-star backtracking (linear in practice).
  size_t pi = 0, si = 0, star_p = std::string_view::npos, star_s = 0;
  while (si < s.size()) {
    if (pi < pat.size() && pat[pi] == '*') {
      star_p = pi++;
      star_s = si;
      continue;
    }
    if (pi < pat.size()) {
      size_t next = pi;
      bool ok = false;
      if (pat[pi] == '?') {
        ok = true;
        next = pi + 1;
      } else if (pat[pi] == '[') {
        ok = match_class(pat, next, s[si]);
      } else {
        ok = pat[pi] == s[si];
        next = pi + 1;
      }
      if (ok) {
        pi = next;
        ++si;
        continue;
      }
    }
    if (star_p == std::string_view::npos) return false;
    pi = star_p + 1;
    si = ++star_s;
  }
  while (pi < pat.size() && pat[pi] == '*') ++pi;
  if (pi < pat.size() && pat[pi] == '[') {  // validate a trailing class even when nothing is left to match
    size_t tmp = pi;
    match_class(pat, tmp, '\0');
  }
  return pi == pat.size();
}

bool Rule::matches(std::string_view name, int64_t numel) const {
  if (min_numel >= 0 && numel < min_numel) return false;
  if (max_numel >= 0 && numel > max_numel) return false;
  if (control && !is_control_tensor(name)) return false;
  if (cls && classify_param(name) != *cls) return false;
  if (pattern.empty()) return true;
  if (pattern.starts_with("re:")) {
    if (regex) return std::regex_match(name.begin(), name.end(), *regex);
    const std::regex re(pattern.substr(3), std::regex::ECMAScript);
    return std::regex_match(name.begin(), name.end(), re);
  }
  return glob_match(pattern, name);
}

// ---------------------------------------------------------------------------------------------- presets

namespace {

constexpr int64_t kKeepFloatMaxNumel = 65'536;

Rule keep_rule(Action a, bool control) {
  Rule r;
  r.action = a;
  r.control = control;
  r.max_numel = kKeepFloatMaxNumel;
  return r;
}

Rule quant_rule(std::string pattern, std::optional<TensorClass> cls, int bits, Clip clip, bool gptq, double k = 0) {
  Rule r;
  r.pattern = std::move(pattern);
  r.cls = cls;
  r.spec.bits = bits;
  r.spec.clip = clip;
  r.spec.gptq = gptq;
  if (k > 0) r.spec.k = k;
  return r;
}

// Tables the model only looks rows up in (the value and bigram embeddings; the token embedding is the tied head
// too): no linear reads them, so no Hessian exists for GPTQ: SDClip alone, at the embeddings' bits (the records'
// int8 for tensors of the "other" class).
void add_lookup_table_rules(RuleSet& rs, int bits, double k) {
  for (const char* table : {"ve.embed.weight", "bigram.embed.weight"})
    rs.rules.push_back(quant_rule(table, {}, bits, Clip::sdclip, false, k));
}

const char* const kPresetNames[] = {"baseline", "int6", "ste", "gptq_lite", "sdclip", "gptq", "gptq_int7"};

}  // namespace

std::vector<std::string> preset_names() { return {std::begin(kPresetNames), std::end(kPresetNames)}; }

RuleSet preset_rules(std::string_view name) {
  RuleSet rs;
  rs.origin = "preset " + std::string(name);
  rs.rules.push_back(keep_rule(Action::keep_f32, true));
  rs.rules.push_back(keep_rule(Action::keep_f16, false));
  const auto embed = TensorClass::embed;
  if (name == "baseline") {
    rs.rules.push_back(quant_rule("", {}, 8, Clip::clean, false));
  } else if (name == "int6") {
    rs.rules.push_back(quant_rule("", embed, 8, Clip::clean, false));
    rs.rules.push_back(quant_rule("", {}, 6, Clip::clean, false));
  } else if (name == "ste") {
    rs.rules.push_back(quant_rule("", embed, 8, Clip::clean, false));
    rs.rules.push_back(quant_rule("", {}, 6, Clip::ste_rowmax, false));
  } else if (name == "gptq_lite") {
    rs.rules.push_back(quant_rule("", embed, 8, Clip::clean, false));
    rs.rules.push_back(quant_rule("", {}, 6, Clip::search, false));
  } else if (name == "sdclip" || name == "gptq") {
    const bool g = name == "gptq";
    add_lookup_table_rules(rs, 8, 20.0);
    rs.rules.push_back(quant_rule("", embed, 8, Clip::sdclip, g, 20.0));
    rs.rules.push_back(quant_rule("", {}, 6, Clip::sdclip, g, 12.85));
  } else if (name == "gptq_int7") {
    add_lookup_table_rules(rs, 7, 15.0);
    rs.rules.push_back(quant_rule("", embed, 7, Clip::sdclip, true, 15.0));
    rs.rules.push_back(quant_rule("", TensorClass::mlp, 6, Clip::sdclip, true, 12.0));
    rs.rules.push_back(quant_rule("", {}, 6, Clip::sdclip, true, 13.0));
  } else {
    std::string names;
    for (const char* n : kPresetNames) names += std::string(names.empty() ? "" : ", ") + n;
    throw Error("unknown quantization preset '" + std::string(name) + "' (expected one of " + names + ")");
  }
  for (size_t i = 0; i < rs.rules.size(); ++i) rs.rules[i].origin = rs.origin + " rule " + std::to_string(i + 1);
  return rs;
}

RuleSet default_rules() { return preset_rules("gptq"); }

// ------------------------------------------------------------------------------------------------ files

namespace {

using nlohmann::json;

Rule parse_rule(const json& j, const std::string& where) {
  auto err = [&](const std::string& what) { return Error(where + ": " + what); };
  if (!j.is_object()) throw err("a rule must be a JSON object");
  static const std::set<std::string> kKeys = {"pattern", "class",  "min_numel",   "max_numel", "scheme",
                                              "gptq",    "bits",   "k",           "lambda",    "percentile",
                                              "percentiles", "scale_floor", "percdamp", "block_size",
                                              "act_order", "retries"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!kKeys.count(it.key())) throw err("unknown key '" + it.key() + "'");
  auto num = [&](const char* key) -> double {
    const json& v = j.at(key);
    if (!v.is_number()) throw err("'" + std::string(key) + "' must be a number");
    return v.get<double>();
  };
  auto integer = [&](const char* key) -> int64_t {
    const json& v = j.at(key);
    if (!v.is_number_integer()) throw err("'" + std::string(key) + "' must be an integer");
    return v.get<int64_t>();
  };
  auto boolean = [&](const char* key) -> bool {
    const json& v = j.at(key);
    if (!v.is_boolean()) throw err("'" + std::string(key) + "' must be true or false");
    return v.get<bool>();
  };
  auto str = [&](const char* key) -> std::string {
    const json& v = j.at(key);
    if (!v.is_string()) throw err("'" + std::string(key) + "' must be a string");
    return v.get<std::string>();
  };

  Rule r;
  r.origin = where;
  if (j.contains("pattern")) {
    r.pattern = str("pattern");
    if (r.pattern.starts_with("re:")) {
      try {
        r.regex = std::make_shared<const std::regex>(r.pattern.substr(3), std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        throw err("bad regular expression '" + r.pattern.substr(3) + "': " + e.what());
      }
    } else {
      for (size_t i = 0; i < r.pattern.size(); ++i)
        if (r.pattern[i] == '[') {
          size_t k = i;
          try {
            match_class(r.pattern, k, '\0');
          } catch (const Error& e) {
            throw err(e.what());
          }
          i = k - 1;
        }
    }
  }
  if (j.contains("class")) {
    const std::string c = str("class");
    if (c == "control") r.control = true;
    else if (c == "embed") r.cls = TensorClass::embed;
    else if (c == "mlp") r.cls = TensorClass::mlp;
    else if (c == "attn") r.cls = TensorClass::attn;
    else if (c == "other") r.cls = TensorClass::other;
    else throw err("unknown class '" + c + "' (expected embed, mlp, attn, other or control)");
  }
  if (j.contains("min_numel")) r.min_numel = integer("min_numel");
  if (j.contains("max_numel")) r.max_numel = integer("max_numel");
  if (r.min_numel < -1 || r.max_numel < -1) throw err("numel bounds must be >= 0");
  if (!j.contains("scheme")) throw err("missing 'scheme'");
  const std::string scheme = str("scheme");
  static const std::set<std::string> kQuantKeys = {"gptq", "bits", "k", "lambda", "percentile", "percentiles",
                                                   "scale_floor", "percdamp", "block_size", "act_order", "retries"};
  if (scheme == "f32" || scheme == "f16") {
    r.action = scheme == "f32" ? Action::keep_f32 : Action::keep_f16;
    for (const std::string& k : kQuantKeys)
      if (j.contains(k)) throw err("'" + k + "' does not apply to scheme " + scheme);
    return r;
  }
  try {
    r.spec.clip = parse_clip(scheme);
  } catch (const Error& e) {
    throw err(std::string(e.what()) + " or f32/f16");
  }
  QuantSpec& s = r.spec;
  if (s.clip == Clip::clean) s.bits = 8;  // the baseline's width unless the rule says otherwise
  if (j.contains("gptq")) s.gptq = boolean("gptq");
  if (j.contains("bits")) {
    const int64_t b = integer("bits");
    if (b < 2 || b > 8) throw err("bits " + std::to_string(b) + " is outside 2..8");
    s.bits = static_cast<int>(b);
  }
  if (j.contains("k")) s.k = num("k");
  if (j.contains("lambda")) s.lambda = num("lambda");
  if (j.contains("percentile")) s.percentile = num("percentile");
  if (j.contains("percentiles")) {
    const json& v = j.at("percentiles");
    if (!v.is_array() || v.empty()) throw err("'percentiles' must be a non-empty list of numbers");
    s.percentiles.clear();
    for (const json& p : v) {
      if (!p.is_number()) throw err("'percentiles' must be a non-empty list of numbers");
      s.percentiles.push_back(p.get<double>());
    }
  }
  if (j.contains("scale_floor")) {
    s.scale_floor = num("scale_floor");
    if (s.scale_floor < 0) throw err("scale_floor must be >= 0");
  }
  if (j.contains("percdamp")) s.gptq_options.percdamp = num("percdamp");
  if (j.contains("block_size")) s.gptq_options.block_size = integer("block_size");
  if (j.contains("act_order")) s.gptq_options.act_order = boolean("act_order");
  if (j.contains("retries")) {
    const int64_t n = integer("retries");
    if (n < 0 || n > 12) throw err("retries " + std::to_string(n) + " is outside 0..12");
    s.gptq_options.max_retries = static_cast<int>(n);
  }
  try {
    check_spec(s);
  } catch (const Error& e) {
    throw err(e.what());
  }
  return r;
}

}  // namespace

RuleSet parse_rules(std::string_view text, std::string_view origin_sv) {
  const std::string origin(origin_sv);
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(origin + ": not valid JSON: " + e.what());
  }
  RuleSet rs;
  rs.origin = origin;
  const json* list = &doc;
  std::string base = "none";
  if (doc.is_object()) {
    for (auto it = doc.begin(); it != doc.end(); ++it)
      if (it.key() != "version" && it.key() != "base" && it.key() != "rules")
        throw Error(origin + ": unknown top-level key '" + it.key() + "' (expected version, base, rules)");
    if (!doc.contains("version") || !doc["version"].is_number_integer() || doc["version"].get<int64_t>() != 1)
      throw Error(origin + ": \"version\": 1 is required");
    if (doc.contains("base")) {
      if (!doc["base"].is_string()) throw Error(origin + ": 'base' must be a preset name or \"none\"");
      base = doc["base"].get<std::string>();
    }
    if (!doc.contains("rules")) throw Error(origin + ": missing 'rules'");
    list = &doc["rules"];
  }
  if (!list->is_array()) throw Error(origin + ": rules must be a JSON list of rule objects");
  for (size_t i = 0; i < list->size(); ++i)
    rs.rules.push_back(parse_rule((*list)[i], origin + " rule " + std::to_string(i + 1)));
  if (base != "none") {
    RuleSet b;
    try {
      b = preset_rules(base);
    } catch (const Error& e) {
      throw Error(origin + ": base: " + e.what());
    }
    for (Rule& r : b.rules) rs.rules.push_back(std::move(r));
  }
  if (rs.rules.empty()) throw Error(origin + ": no rules");
  return rs;
}

RuleSet load_rules(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open rules file " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error("cannot read rules file " + path);
  return parse_rules(ss.str(), path);
}

const Rule& match_rule(const RuleSet& rs, std::string_view name, int64_t numel) {
  for (const Rule& r : rs.rules)
    if (r.matches(name, numel)) return r;
  throw Error("tensor '" + std::string(name) + "' (" + std::to_string(numel) + " elements) matches no rule in " +
              rs.origin);
}

}  // namespace ptool::quant

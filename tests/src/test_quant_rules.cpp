// Rules: classification, glob/regex matching, presets, rules files and their errors.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "formats/error.h"
#include "src/quant/quantizer.h"
#include "src/quant/rules.h"

using namespace ptool::quant;

TEST_CASE("classify_param follows the records' _classify_param", "[quant]") {
  CHECK(classify_param("tok_emb.weight") == TensorClass::embed);
  CHECK(classify_param("lm_head.weight") == TensorClass::embed);
  CHECK(classify_param("blocks.3.mlp.fc.weight") == TensorClass::mlp);
  CHECK(classify_param("blocks.3.mlp.proj.weight") == TensorClass::mlp);
  CHECK(classify_param("blocks.3.attn.c_q.weight") == TensorClass::attn);
  CHECK(classify_param("blocks.3.proj.weight") == TensorClass::attn);
  CHECK(classify_param("bigram.embed.weight") == TensorClass::other);
  CHECK(classify_param("skip_weights") == TensorClass::other);
  CHECK(class_name(TensorClass::mlp) == "mlp");
  CHECK(is_control_tensor("blocks.0.attn_scale"));
  CHECK(is_control_tensor("blocks.0.resid_mix"));
  CHECK(is_control_tensor("blocks.0.attn.q_gain"));
  CHECK(is_control_tensor("skip_weights"));
  CHECK_FALSE(is_control_tensor("blocks.0.attn.c_q.weight"));
}

TEST_CASE("the GPTQ presets round the value embedding table without GPTQ (no linear reads it)", "[quant]") {
  for (const char* preset : {"gptq", "gptq_int7", "sdclip"}) {
    INFO(preset);
    const RuleSet rs = preset_rules(preset);
    const Rule& ve = match_rule(rs, "ve.embed.weight", 1024 * 128);
    CHECK(ve.action == Action::quantize);
    CHECK_FALSE(ve.spec.gptq);
    CHECK(ve.spec.bits == (std::string(preset) == "gptq_int7" ? 7 : 8));
    CHECK(match_rule(rs, "ve.proj.weight", 1024 * 128).spec.gptq == (std::string(preset) != "sdclip"));
    CHECK(match_rule(rs, "ve_layer_scales", 8).action == Action::keep_f32);
  }
  CHECK(is_control_tensor("ve_scale"));
}

TEST_CASE("glob matching", "[quant]") {
  CHECK(glob_match("*", ""));
  CHECK(glob_match("*", "blocks.0.mlp.fc.weight"));
  CHECK(glob_match("*tok_emb*", "tok_emb.weight"));
  CHECK(glob_match("blocks.*.mlp.*", "blocks.10.mlp.proj.weight"));
  CHECK_FALSE(glob_match("blocks.*.mlp.*", "blocks.10.attn.c_q.weight"));
  CHECK(glob_match("blocks.?.attn.c_[qk].weight", "blocks.3.attn.c_k.weight"));
  CHECK_FALSE(glob_match("blocks.?.attn.c_[qk].weight", "blocks.3.attn.c_v.weight"));
  CHECK_FALSE(glob_match("blocks.?.attn.*", "blocks.10.attn.c_q.weight"));  // ? is one character
  CHECK(glob_match("blocks.[0-4].*", "blocks.4.x"));
  CHECK_FALSE(glob_match("blocks.[!0-4].*", "blocks.4.x"));
  CHECK(glob_match("a*b*c", "aXXbYYbZc"));
  CHECK_FALSE(glob_match("a*b*c", "aXXbYYbZ"));
  CHECK_FALSE(glob_match("weight", "tok_emb.weight"));  // whole-name match
  CHECK_THROWS_AS(glob_match("a[bc", "ab"), ptool::Error);
}

TEST_CASE("baseline preset reproduces the int8_clean_per_row_v1 split", "[quant]") {
  const RuleSet rs = preset_rules("baseline");
  auto action = [&](const char* name, int64_t numel) { return match_rule(rs, name, numel).action; };
  CHECK(action("blocks.0.attn_scale", 512) == Action::keep_f32);
  CHECK(action("blocks.0.resid_mix", 1024) == Action::keep_f32);
  CHECK(action("skip_weights", 2048) == Action::keep_f32);
  CHECK(action("blocks.0.attn.q_gain", 8) == Action::keep_f32);
  CHECK(action("blocks.0.small_bias", 65536) == Action::keep_f16);
  CHECK(action("blocks.0.attn.c_k.weight", 512 * 256) == Action::quantize);
  const Rule& emb = match_rule(rs, "tok_emb.weight", 1024 * 512);
  CHECK(emb.spec.bits == 8);
  CHECK(emb.spec.clip == Clip::clean);
  CHECK(emb.spec.percentile == 0.9999984);
  // A large control tensor is quantized, as in the baseline (the control rule is bounded by 65,536).
  CHECK(action("blocks.0.attn_scale", 65537) == Action::quantize);
}

TEST_CASE("gptq presets: embeddings and block matrices", "[quant]") {
  const RuleSet g = default_rules();
  CHECK(g.origin == "preset gptq");
  const Rule& emb = match_rule(g, "tok_emb.weight", 8192 * 512);
  CHECK((emb.spec.bits == 8 && emb.spec.k == 20.0 && emb.spec.gptq && emb.spec.clip == Clip::sdclip));
  const Rule& mlp = match_rule(g, "blocks.2.mlp.fc.weight", 512 * 2048);
  CHECK((mlp.spec.bits == 6 && mlp.spec.k == 12.85 && mlp.spec.gptq));
  const RuleSet g7 = preset_rules("gptq_int7");
  CHECK(match_rule(g7, "tok_emb.weight", 8192 * 512).spec.bits == 7);
  CHECK(match_rule(g7, "blocks.2.mlp.fc.weight", 512 * 2048).spec.k == 12.0);
  CHECK(match_rule(g7, "blocks.2.attn.c_q.weight", 512 * 512).spec.k == 13.0);
  CHECK(match_rule(preset_rules("ste"), "blocks.2.attn.c_q.weight", 512 * 512).spec.clip == Clip::ste_rowmax);
  CHECK(preset_names().size() == 7);
  CHECK_THROWS_WITH(preset_rules("int3"), Catch::Contains("unknown quantization preset 'int3'"));
}

TEST_CASE("rules file: parsing, first match wins, base preset appended", "[quant]") {
  const char* text = R"({
    "version": 1,
    "base": "baseline",
    "rules": [
      {"pattern": "*tok_emb*", "scheme": "sdclip", "gptq": true, "bits": 7, "k": 15.0},
      {"class": "mlp", "scheme": "gptq_lite", "bits": 5, "percentiles": [0.999, 1.0]},
      {"pattern": "re:blocks\\.[0-3]\\.attn\\..*", "scheme": "hsdclip", "k": 13, "lambda": 0.2, "percdamp": 0.05},
      {"class": "control", "max_numel": 100000, "scheme": "f32"},
      {"min_numel": 1000000, "scheme": "rowmax", "bits": 4, "scale_floor": 0}
    ]})";
  const RuleSet rs = parse_rules(text, "my.json");
  CHECK(rs.rules.size() == 5 + preset_rules("baseline").rules.size());
  const Rule& emb = match_rule(rs, "tok_emb.weight", 1 << 20);
  CHECK(emb.origin == "my.json rule 1");
  CHECK((emb.spec.bits == 7 && emb.spec.k == 15.0 && emb.spec.gptq));
  const Rule& mlp = match_rule(rs, "blocks.1.mlp.fc.weight", 1 << 18);
  CHECK((mlp.spec.clip == Clip::search && mlp.spec.bits == 5 && mlp.spec.percentiles.size() == 2));
  const Rule& att = match_rule(rs, "blocks.3.attn.c_q.weight", 1 << 18);
  CHECK((att.spec.clip == Clip::hsdclip && att.spec.lambda == 0.2 && att.spec.gptq_options.percdamp == 0.05));
  CHECK(match_rule(rs, "blocks.4.attn.c_q.weight", 1 << 18).origin.starts_with("preset baseline"));
  CHECK(match_rule(rs, "blocks.9.attn_scale", 70000).action == Action::keep_f32);
  const Rule& big = match_rule(rs, "blocks.9.attn.c_q.weight", 2000000);
  CHECK((big.spec.clip == Clip::rowmax && big.spec.scale_floor == 0.0));
  // A bare list has no base: a tensor nothing matches is an error naming it.
  const RuleSet bare = parse_rules(R"([{"pattern": "a.*", "scheme": "f16"}])", "bare.json");
  CHECK(match_rule(bare, "a.b", 3).action == Action::keep_f16);
  CHECK_THROWS_WITH(match_rule(bare, "b.c", 3), Catch::Contains("tensor 'b.c'") && Catch::Contains("bare.json"));
  // The clean scheme defaults to 8 bits.
  CHECK(parse_rules(R"([{"scheme": "clean"}])", "c").rules[0].spec.bits == 8);
}

TEST_CASE("rules file errors name the file and the rule", "[quant]") {
  struct Bad {
    const char* text;
    const char* message;
  };
  const Bad bad[] = {
      {"{", "not valid JSON"},
      {R"({"rules": []})", "\"version\": 1 is required"},
      {R"({"version": 2, "rules": []})", "\"version\": 1 is required"},
      {R"({"version": 1, "rules": [], "extra": 1})", "unknown top-level key 'extra'"},
      {R"({"version": 1})", "missing 'rules'"},
      {R"({"version": 1, "rules": {}})", "must be a JSON list"},
      {R"({"version": 1, "base": "nope", "rules": []})", "unknown quantization preset"},
      {R"([])", "no rules"},
      {R"([1])", "rule 1: a rule must be a JSON object"},
      {R"([{"pattern": "*"}])", "rule 1: missing 'scheme'"},
      {R"([{"scheme": "f16"}, {"scheme": "int4"}])", "rule 2: unknown clip rule 'int4'"},
      {R"([{"scheme": "sdclip", "bits": 9}])", "bits 9 is outside 2..8"},
      {R"([{"scheme": "sdclip", "bits": 6.5}])", "'bits' must be an integer"},
      {R"([{"scheme": "sdclip", "k": -1}])", "SDClip k"},
      {R"([{"scheme": "sdclip", "k": "big"}])", "'k' must be a number"},
      {R"([{"scheme": "sdclip", "gptq": 1}])", "'gptq' must be true or false"},
      {R"([{"scheme": "sdclip", "bitz": 6}])", "unknown key 'bitz'"},
      {R"([{"scheme": "f16", "bits": 6}])", "'bits' does not apply to scheme f16"},
      {R"([{"scheme": "clean", "percentile": 1.5}])", "outside (0, 1]"},
      {R"([{"scheme": "gptq_lite", "percentiles": []}])", "non-empty list"},
      {R"([{"scheme": "rowmax", "scale_floor": -1}])", "scale_floor must be >= 0"},
      {R"([{"scheme": "rowmax", "retries": 20}])", "retries 20"},
      {R"([{"scheme": "rowmax", "block_size": 0}])", "block size 0"},
      {R"([{"pattern": "re:(", "scheme": "f16"}])", "bad regular expression"},
      {R"([{"pattern": "a[b", "scheme": "f16"}])", "unterminated ["},
      {R"([{"class": "conv", "scheme": "f16"}])", "unknown class 'conv'"},
      {R"([{"max_numel": -5, "scheme": "f16"}])", "numel bounds"},
  };
  for (const Bad& b : bad) {
    INFO(b.text);
    CHECK_THROWS_WITH(parse_rules(b.text, "r.json"), Catch::Contains("r.json") && Catch::Contains(b.message));
  }
  CHECK_THROWS_WITH(load_rules("/nonexistent/rules.json"), Catch::Contains("cannot open rules file"));
}

TEST_CASE("load_rules reads a file", "[quant]") {
  const std::string path = std::string(PTOOL_BINARY_DIR) + "/test_quant_rules.json";
  {
    std::ofstream out(path);
    out << R"({"version": 1, "base": "sdclip", "rules": [{"pattern": "x", "scheme": "f32"}]})";
  }
  const RuleSet rs = load_rules(path);
  CHECK(rs.origin == path);
  CHECK(match_rule(rs, "x", 1 << 20).action == Action::keep_f32);
  CHECK(match_rule(rs, "y", 1 << 20).spec.clip == Clip::sdclip);
  std::remove(path.c_str());
}

TEST_CASE("quantize_by_rules on a small model with the baseline preset", "[quant]") {
  const RuleSet rs = preset_rules("baseline");
  const std::vector<float> big(300 * 256, 0.01f), small(512, 1.0f);
  const int64_t mat[] = {300, 256}, vec[] = {512};
  QuantizedTensor a = quantize_by_rules(rs, "blocks.0.attn.c_q.weight", mat, big);
  CHECK(a.scheme == "int8_clean");
  CHECK(a.info.at("rule") == "preset baseline rule 3");
  QuantizedTensor b = quantize_by_rules(rs, "blocks.0.attn_scale", vec, small);
  CHECK(b.layout == Layout::f32);
  QuantizedTensor c = quantize_by_rules(rs, "blocks.0.norm_bias", vec, small);
  CHECK(c.layout == Layout::f16);
  CHECK(dequantize(c)[0] == 1.0f);
}

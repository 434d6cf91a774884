#include "src/model/config.h"

#include <cmath>
#include <set>

#include "formats/error.h"

namespace ptool::model {

using nlohmann::json;

int64_t ModelConfig::hidden() const {
  return mlp_hidden > 0 ? mlp_hidden : static_cast<int64_t>(std::llround(mlp_mult * static_cast<double>(d_model)));
}

int64_t ModelConfig::skip_count() const {
  if (skips == SkipKind::none) return 0;
  return std::min(encoder_layers(), virtual_layers() - encoder_layers());
}

int64_t ModelConfig::scalar_index(int64_t v) const { return per_virtual_scalars ? v : schedule.at(v); }

void ModelConfig::validate() const {
  auto fail = [](const std::string& m) { throw Error("model config: " + m); };
  if (vocab_size < 2 || vocab_size > 65536) fail("vocab_size must be in 2..65536");
  if (d_model < 1) fail("d_model must be positive");
  if (n_heads < 1 || d_model % n_heads != 0) fail("d_model must be a multiple of n_heads");
  if (n_kv_heads < 1 || n_heads % n_kv_heads != 0) fail("n_heads must be a multiple of n_kv_heads");
  if (head_dim() % 2 != 0) fail("head_dim (d_model / n_heads) must be even for RoPE");
  if (rope_dims < 0 || rope_dims > head_dim() || rotary_dims() % 2 != 0)
    fail("rope_dims must be even and at most head_dim");
  if (rope_base <= 1.0) fail("rope_base must be > 1");
  if (hidden() < 1) fail("MLP hidden size must be positive");
  if (physical_blocks < 1) fail("physical_blocks must be positive");
  if (schedule.empty()) fail("schedule is empty");
  std::set<int64_t> used;
  for (int64_t b : schedule) {
    if (b < 0 || b >= physical_blocks)
      fail("schedule names block " + std::to_string(b) + " but there are " + std::to_string(physical_blocks));
    used.insert(b);
  }
  if (static_cast<int64_t>(used.size()) != physical_blocks) fail("a physical block is never used by the schedule");
  if (embed_init_std <= 0) fail("embed_init_std must be positive");
  if (train_seq_len < 1) fail("train_seq_len must be positive");
  if (xsa_last < 0) fail("xsa_last must be >= 0");
  if (ve_dim < 0 || ve_last < 0) fail("ve_dim and ve_last must be >= 0");
  if ((ve_dim > 0) != (ve_last > 0))
    fail("ve_dim and ve_last go together: both positive, or both 0 (no value embeddings)");
  if (bigram_buckets < 0 || bigram_dim < 0) fail("bigram_buckets and bigram_dim must be >= 0");
  if ((bigram_buckets > 0) != (bigram_dim > 0))
    fail("bigram_buckets and bigram_dim go together: both positive, or both 0 (no bigram hash)");
  if (bigram_buckets == 1) fail("bigram_buckets must be at least 2 (the first position has a bucket of its own)");
  if (embed_bf16 && token_features())
    fail("embed_bf16 does not combine with bigram_buckets or smear_gate (the embedding stage is then fp32)");
}

namespace {

std::string activation_name(cpu::Activation a) { return a == cpu::Activation::relu2 ? "relu2" : "leaky_relu2"; }
cpu::Activation parse_activation(const std::string& s) {
  if (s == "relu2") return cpu::Activation::relu2;
  if (s == "leaky_relu2") return cpu::Activation::leaky_relu2;
  throw Error("model config: activation must be relu2 or leaky_relu2, got '" + s + "'");
}
std::string skip_name(SkipKind k) { return k == SkipKind::none ? "none" : k == SkipKind::plain ? "plain" : "gated"; }
SkipKind parse_skip(const std::string& s) {
  if (s == "none") return SkipKind::none;
  if (s == "plain") return SkipKind::plain;
  if (s == "gated") return SkipKind::gated;
  throw Error("model config: skips must be none, plain or gated, got '" + s + "'");
}

// "recurrence": {"entry": E, "shared": S, "loops": N, "exit": X}: E unique blocks, S shared blocks run N
// times in order, X unique exit blocks.
void expand_recurrence(const json& r, ModelConfig& c) {
  for (auto& [k, v] : r.items())
    if (k != "entry" && k != "shared" && k != "loops" && k != "exit")
      throw Error("model config: unknown key 'recurrence." + k + "'");
  int64_t entry = r.value("entry", 0), shared = r.at("shared").get<int64_t>(), loops = r.at("loops").get<int64_t>(),
          exit = r.value("exit", 0);
  if (entry < 0 || shared < 1 || loops < 1 || exit < 0) throw Error("model config: recurrence counts must be positive");
  c.physical_blocks = entry + shared + exit;
  c.schedule.clear();
  for (int64_t i = 0; i < entry; ++i) c.schedule.push_back(i);
  for (int64_t l = 0; l < loops; ++l)
    for (int64_t i = 0; i < shared; ++i) c.schedule.push_back(entry + i);
  for (int64_t i = 0; i < exit; ++i) c.schedule.push_back(entry + shared + i);
}

}  // namespace

ModelConfig config_from_json(const json& j) {
  if (!j.is_object()) throw Error("model config: expected a JSON object");
  static const std::set<std::string> known = {
      "vocab_size", "d_model", "n_heads", "n_kv_heads", "mlp_mult", "mlp_hidden", "activation", "rope_base",
      "rope_dims", "qk_norm", "q_gain_init", "logit_softcap", "tie_embeddings", "embed_init_std", "embed_bf16",
      "resid_mix", "ln_scale", "norm_scale", "skips", "physical_blocks", "schedule", "recurrence",
      "per_virtual_scalars", "train_seq_len", "xsa_last", "ve_dim", "ve_last", "bigram_buckets",
      "bigram_dim", "smear_gate", "overtone_init"};
  for (auto& [k, v] : j.items())
    if (!known.count(k)) throw Error("model config: unknown key '" + k + "'");
  ModelConfig c;
  try {
    c.vocab_size = j.value("vocab_size", c.vocab_size);
    c.d_model = j.value("d_model", c.d_model);
    c.n_heads = j.value("n_heads", c.n_heads);
    c.n_kv_heads = j.value("n_kv_heads", c.n_kv_heads);
    c.mlp_mult = j.value("mlp_mult", c.mlp_mult);
    c.mlp_hidden = j.value("mlp_hidden", c.mlp_hidden);
    if (j.contains("activation")) c.activation = parse_activation(j["activation"].get<std::string>());
    c.rope_base = j.value("rope_base", c.rope_base);
    c.rope_dims = j.value("rope_dims", c.rope_dims);
    c.qk_norm = j.value("qk_norm", c.qk_norm);
    c.q_gain_init = j.value("q_gain_init", c.q_gain_init);
    c.logit_softcap = j.value("logit_softcap", c.logit_softcap);
    c.tie_embeddings = j.value("tie_embeddings", c.tie_embeddings);
    c.embed_init_std = j.value("embed_init_std", c.embed_init_std);
    c.embed_bf16 = j.value("embed_bf16", c.embed_bf16);
    c.resid_mix = j.value("resid_mix", c.resid_mix);
    c.ln_scale = j.value("ln_scale", c.ln_scale);
    c.norm_scale = j.value("norm_scale", c.norm_scale);
    if (j.contains("skips")) c.skips = parse_skip(j["skips"].get<std::string>());
    c.physical_blocks = j.value("physical_blocks", c.physical_blocks);
    c.per_virtual_scalars = j.value("per_virtual_scalars", c.per_virtual_scalars);
    c.train_seq_len = j.value("train_seq_len", c.train_seq_len);
    c.xsa_last = j.value("xsa_last", c.xsa_last);
    c.ve_dim = j.value("ve_dim", c.ve_dim);
    c.ve_last = j.value("ve_last", c.ve_last);
    c.bigram_buckets = j.value("bigram_buckets", c.bigram_buckets);
    c.bigram_dim = j.value("bigram_dim", c.bigram_dim);
    c.smear_gate = j.value("smear_gate", c.smear_gate);
    c.overtone_init = j.value("overtone_init", c.overtone_init);
    if (j.contains("schedule") && j.contains("recurrence"))
      throw Error("model config: give either 'schedule' or 'recurrence', not both");
    if (j.contains("schedule")) {
      c.schedule = j["schedule"].get<std::vector<int64_t>>();
    } else if (j.contains("recurrence")) {
      expand_recurrence(j["recurrence"], c);
    }
  } catch (const json::exception& e) {
    throw Error(std::string("model config: ") + e.what());
  }
  if (c.schedule.empty())
    for (int64_t i = 0; i < c.physical_blocks; ++i) c.schedule.push_back(i);
  c.validate();
  return c;
}

void apply_config_settings(json& j, const std::vector<std::string>& sets) {
  auto is_set = [&](const std::string& key) {
    for (const auto& s : sets)
      if (s.rfind(key + "=", 0) == 0) return true;
    return false;
  };
  for (const auto& s : sets) {
    const size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0) throw Error("--set expects KEY=VALUE, got '" + s + "'");
    const std::string key = s.substr(0, eq), text = s.substr(eq + 1);
    json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded()) value = text;
    if ((key == "physical_blocks" || key == "recurrence") && !is_set("schedule")) j.erase("schedule");
    if (key == "schedule") j.erase("recurrence");
    j[key] = value;
  }
}

json config_to_json(const ModelConfig& c) {
  return json{{"vocab_size", c.vocab_size},
              {"d_model", c.d_model},
              {"n_heads", c.n_heads},
              {"n_kv_heads", c.n_kv_heads},
              {"mlp_mult", c.mlp_mult},
              {"mlp_hidden", c.mlp_hidden},
              {"activation", activation_name(c.activation)},
              {"rope_base", c.rope_base},
              {"rope_dims", c.rope_dims},
              {"qk_norm", c.qk_norm},
              {"q_gain_init", c.q_gain_init},
              {"logit_softcap", c.logit_softcap},
              {"tie_embeddings", c.tie_embeddings},
              {"embed_init_std", c.embed_init_std},
              {"embed_bf16", c.embed_bf16},
              {"resid_mix", c.resid_mix},
              {"ln_scale", c.ln_scale},
              {"norm_scale", c.norm_scale},
              {"skips", skip_name(c.skips)},
              {"physical_blocks", c.physical_blocks},
              {"schedule", c.schedule},
              {"per_virtual_scalars", c.per_virtual_scalars},
              {"train_seq_len", c.train_seq_len},
              {"xsa_last", c.xsa_last},
              {"ve_dim", c.ve_dim},
              {"ve_last", c.ve_last},
              {"bigram_buckets", c.bigram_buckets},
              {"bigram_dim", c.bigram_dim},
              {"smear_gate", c.smear_gate},
              {"overtone_init", c.overtone_init}};
}

}  // namespace ptool::model

// Built-in model presets. Each is a JSON config, so `ptool train --config` can start from a copy.
#include <map>

#include "formats/error.h"
#include "src/model/config.h"

namespace ptool::model {

namespace {

struct Preset {
  const char* description;
  const char* json;
};

const std::map<std::string, Preset>& presets() {
  static const std::map<std::string, Preset> table = {
      {"tiny",
       {"2 blocks x 64 wide, 4 heads / 2 KV heads: trains in seconds on 2 CPU cores",
        R"({"d_model": 64, "n_heads": 4, "n_kv_heads": 2, "mlp_mult": 2, "physical_blocks": 2,
            "train_seq_len": 128, "embed_init_std": 0.005})"}},
      {"tiny_recurrent",
       {"tiny with depth recurrence: 1 entry + 1 shared block x 3 loops + 1 exit, per-virtual-layer scalars",
        R"({"d_model": 64, "n_heads": 4, "n_kv_heads": 2, "mlp_mult": 2, "train_seq_len": 128,
            "recurrence": {"entry": 1, "shared": 1, "loops": 3, "exit": 1}, "per_virtual_scalars": true,
            "skips": "gated"})"}},
      {"baseline",
       {"the challenge baseline (REFERENCE.md 3.1): 9 x 512, 8 heads / 4 KV, MLP 2x ReLU^2, tied, softcap 30, "
        "bf16 token embedding",
        R"({"vocab_size": 1024, "d_model": 512, "n_heads": 8, "n_kv_heads": 4, "mlp_mult": 2,
            "physical_blocks": 9, "train_seq_len": 1024, "embed_bf16": true})"}},
      {"hybrid_recurrent",
       {"PR 341: 1 unique entry + 4 shared blocks x 5 loops + 1 unique exit, per-virtual-layer scalars, U-Net, "
        "overtone init (sigmoid-scheduled resid_mix, power-law embedding spectrum)",
        R"({"d_model": 512, "n_heads": 8, "n_kv_heads": 4, "mlp_mult": 2,
            "recurrence": {"entry": 1, "shared": 4, "loops": 5, "exit": 1}, "per_virtual_scalars": true,
            "train_seq_len": 1024, "overtone_init": true})"}},
      {"recursive_4x7",
       {"PR 927: 4 shared blocks looped 7 times, width 1024, 32 heads / 8 KV, U-Net across loops, XSA in the last "
        "4 loops, 128-wide value embeddings in the last 2, BigramHash 10240 x 128, SmearGate",
        R"({"d_model": 1024, "n_heads": 32, "n_kv_heads": 8, "mlp_mult": 2,
            "recurrence": {"shared": 4, "loops": 7}, "train_seq_len": 2048, "xsa_last": 16,
            "ve_dim": 128, "ve_last": 8, "bigram_buckets": 10240, "bigram_dim": 128, "smear_gate": true})"}},
      {"ultimate_recurrent",
       {"PR 298 (core): 3 unique layers x 3 passes, width 768, 8 heads / 2 KV, RoPE base 500000, per-pass scalars",
        R"({"d_model": 768, "n_heads": 8, "n_kv_heads": 2, "mlp_mult": 2, "rope_base": 500000,
            "recurrence": {"shared": 3, "loops": 3}, "per_virtual_scalars": true, "train_seq_len": 2048})"}},
      {"dart",
       {"PR 345 (core): one shared block looped 4 times with resid_mix and U-Net skips across loops, seq 256",
        R"({"d_model": 512, "n_heads": 8, "n_kv_heads": 4, "mlp_mult": 2,
            "recurrence": {"shared": 1, "loops": 4}, "per_virtual_scalars": true, "train_seq_len": 256})"}},
      {"deq_loop",
       {"PR 1783 (core): 11 layers with layers 3-5 run 4 times, LeakyReLU(0.5)^2, partial RoPE 16/64, gated skips",
        R"({"d_model": 512, "n_heads": 8, "n_kv_heads": 4, "mlp_mult": 4, "activation": "leaky_relu2",
            "rope_dims": 16, "q_gain_init": 5.0, "skips": "gated", "physical_blocks": 11,
            "schedule": [0,1,2,3,4,5,3,4,5,3,4,5,3,4,5,6,7,8,9,10], "train_seq_len": 2048})"}},
  };
  return table;
}

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (auto& [k, v] : presets()) names.push_back(k);
  return names;
}

ModelConfig preset(const std::string& name) {
  auto it = presets().find(name);
  if (it == presets().end()) {
    std::string known;
    for (auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw Error("unknown preset '" + name + "' (known: " + known + ")");
  }
  return config_from_json(nlohmann::json::parse(it->second.json));
}

std::string preset_description(const std::string& name) {
  auto it = presets().find(name);
  return it == presets().end() ? std::string() : it->second.description;
}

}  // namespace ptool::model

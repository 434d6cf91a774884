// ptool config [--preset NAME | --config FILE]: prints the full model config (every key, the schedule expanded),
// a starting point for --config; and resolve_model_config, which train uses too.
#include "cmd/model_config.h"

#include <cstdio>
#include <fstream>
#include <memory>

#include "cmd/commands.h"
#include "formats/error.h"
#include "src/model/layout.h"

namespace ptool::cmd {

model::ModelConfig resolve_model_config(const std::string& preset, const std::string& config_file) {
  if (!preset.empty() && !config_file.empty()) throw Error("give --preset or --config, not both");
  if (config_file.empty()) return model::preset(preset.empty() ? "tiny" : preset);
  std::ifstream f(config_file);
  if (!f) throw Error("cannot open config file " + config_file);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw Error(config_file + ": not valid JSON: " + e.what());
  }
  try {
    return model::config_from_json(j);
  } catch (const Error& e) {
    throw Error(config_file + ": " + e.what());
  }
}

std::string preset_help() {
  std::string help = "built-in model preset:";
  for (auto& n : model::preset_names()) help += "\n  " + n + ": " + model::preset_description(n);
  return help + "\n(default: tiny)";
}

void add_config(CLI::App& app) {
  struct Args {
    std::string preset, config_file;
  };
  auto a = std::make_shared<Args>();
  auto* c = app.add_subcommand("config", "print a model config with every key (edit it, then train --config FILE)");
  c->add_option("--preset", a->preset, preset_help());
  c->add_option("--config", a->config_file, "model config JSON file to check and complete (instead of --preset)");
  c->callback([a] {
    const model::ModelConfig cfg = resolve_model_config(a->preset, a->config_file);
    std::printf("%s\n", model::config_to_json(cfg).dump(2).c_str());
    std::fprintf(stderr, "%lld parameters\n", static_cast<long long>(model::make_layout(cfg).total));
  });
}

}  // namespace ptool::cmd

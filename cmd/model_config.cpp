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

namespace {

std::string preset_name(const ModelConfigArgs& a) { return a.preset.empty() ? "tiny" : a.preset; }

nlohmann::json base_config(const ModelConfigArgs& a) {
  if (!a.preset.empty() && !a.config_file.empty()) throw Error("give --preset or --config, not both");
  if (a.config_file.empty()) return model::config_to_json(model::preset(preset_name(a)));
  std::ifstream f(a.config_file);
  if (!f) throw Error("cannot open config file " + a.config_file);
  try {
    return nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw Error(a.config_file + ": not valid JSON: " + e.what());
  }
}

}  // namespace

model::ModelConfig resolve_model_config(const ModelConfigArgs& a) {
  nlohmann::json j = base_config(a);
  if (!j.is_object()) throw Error(a.config_file + ": model config: expected a JSON object");
  model::apply_config_settings(j, a.sets);
  const std::string origin = a.config_file.empty() ? "preset " + preset_name(a) : a.config_file;
  try {
    return model::config_from_json(j);
  } catch (const Error& e) {
    throw Error(origin + (a.sets.empty() ? "" : " with --set") + ": " + e.what());
  }
}

std::string preset_help() {
  std::string help = "built-in model preset:";
  for (auto& n : model::preset_names()) help += "\n  " + n + ": " + model::preset_description(n);
  return help + "\n(default: tiny)";
}

void add_model_config_options(CLI::App& app, ModelConfigArgs& a) {
  app.add_option("--preset", a.preset, preset_help());
  app.add_option("--config", a.config_file, "model config JSON file (instead of --preset; `ptool config` prints one)");
  app.add_option("--set", a.sets,
                 "override one model key, KEY=VALUE (repeatable; VALUE is JSON or a bare word), e.g.\n"
                 "--set embed_bf16=false --set mlp_mult=3 --set 'recurrence={\"shared\":2,\"loops\":3}'")
      ->allow_extra_args(false);
}

void add_config(CLI::App& app) {
  auto a = std::make_shared<ModelConfigArgs>();
  auto* c = app.add_subcommand("config", "print a model config with every key (edit it, then train --config FILE)");
  add_model_config_options(*c, *a);
  c->callback([a] {
    const model::ModelConfig cfg = resolve_model_config(*a);
    std::printf("%s\n", model::config_to_json(cfg).dump(2).c_str());
    std::fprintf(stderr, "%lld parameters\n", static_cast<long long>(model::make_layout(cfg).total));
  });
}

}  // namespace ptool::cmd

// The model config a command was given: a built-in preset or a JSON file of ptool's model keys, and --set
// overrides of single keys.
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "src/model/config.h"

namespace ptool::cmd {

struct ModelConfigArgs {
  std::string preset, config_file;
  std::vector<std::string> sets;  // KEY=VALUE; VALUE is JSON, or else taken as a string
};

// Adds --preset, --config and --set to a subcommand.
void add_model_config_options(CLI::App& app, ModelConfigArgs& a);
// --preset NAME or --config FILE (not both; neither: the tiny preset), then each --set in order. Setting
// physical_blocks or recurrence drops the base's schedule (unless schedule is set too); setting schedule drops its
// recurrence. Throws Error naming the file, the preset or the key.
model::ModelConfig resolve_model_config(const ModelConfigArgs& a);

}  // namespace ptool::cmd

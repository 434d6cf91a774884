// The model config a command was given: a built-in preset or a JSON file of ptool's model keys.
#pragma once
#include <string>

#include "src/model/config.h"

namespace ptool::cmd {

// --preset NAME or --config FILE (not both; neither: the tiny preset). Throws Error naming the file or key.
model::ModelConfig resolve_model_config(const std::string& preset, const std::string& config_file);
// The --preset option's help: every preset with its description.
std::string preset_help();

}  // namespace ptool::cmd
